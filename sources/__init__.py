"""Readers for the public corpora OpenELM was pretrained on, in their native on-disk formats.

``read_shard``, ``sha256_of``, ``size_of`` (readers.py), ``get_subset``/``all_subsets``/``OPENELM_TARGETS``
(registry.py) and ``write_sample_corpus`` (sample.py) are also importable from here; they load lazily so
that importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from elm_data.sources.document import Document, Provenance, Rejection

_LAZY = {
    "read_shard": "readers",
    "sha256_of": "readers",
    "size_of": "readers",
    "get_subset": "registry",
    "all_subsets": "registry",
    "OPENELM_TARGETS": "registry",
    "write_sample_corpus": "sample",
}

__all__ = ["Document", "Provenance", "Rejection", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"elm_data.sources.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'elm_data.sources' has no attribute {name!r}")
