"""Entry points a package names in its ``__init__`` but imports only when first used (PEP 562).

A folder's ``__init__`` lists its few public names and the module each lives in; importing the package then
costs nothing (no torch, no Beam, no pyarrow until a name is used), and every name still resolves from the
package: ``from elm_data.manifests import build_manifest``. A name must differ from its package's module names
(a submodule, once imported, would shadow it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_attributes(
    package: str, entry_points: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``entry_points`` map a public name to its module."""

    def __getattr__(name: str) -> Any:
        module = entry_points.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *entry_points})

    return __getattr__, __dir__


class _HiddenPandas:
    """A ``sys.meta_path`` finder that makes ``import pandas`` fail (used for one call only)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas hidden from pyarrow's implicit probe")
        return None


def pyarrow_without_implicit_pandas() -> None:
    """Stop pyarrow from importing pandas on its own in this process (~47 MiB of RSS, ~0.2 CPU-s).

    pyarrow asks once, lazily, whether pandas is installed (at the first ``pa.array`` of a Python list, to
    check whether the list is a pandas object) and imports it then. When that first probe finds no pandas,
    pyarrow imports it again only where pandas is really used (``to_pandas``, ``from_pandas``), after which
    all is as usual. So pandas is hidden from that first probe only; nothing changes where pandas was imported
    already. For processes that use no pandas objects (``elm-data stream``).
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    sys.meta_path.insert(0, _HiddenPandas)
    try:
        pa.array([0])  # pyarrow's probe: finds no pandas, and does not look again on its own
    finally:
        sys.meta_path.remove(_HiddenPandas)
