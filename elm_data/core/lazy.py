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


def lazy_attributes(package: str, entry_points: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``entry_points`` map a public name to its module."""

    def __getattr__(name: str) -> Any:
        module = entry_points.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *entry_points})

    return __getattr__, __dir__
