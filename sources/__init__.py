"""Readers for the public corpora OpenELM was pretrained on, in their native on-disk formats.

Entry points: ``read_shard(uri, source, subset)`` yields a :class:`Document` or a counted :class:`Rejection`
for every record of a shard; ``get_subset``/``all_subsets``/``OPENELM_TARGETS`` are the registry;
``write_sample_corpus(out_dir)`` writes small shards of every source plus their ``mixture.yaml``. They load on
first use, so importing the package stays cheap.
"""

from __future__ import annotations

from elm_data.core.lazy import lazy_attributes
from elm_data.sources.document import Document, Provenance, Rejection

_ENTRY_POINTS = {
    "read_shard": "readers",
    "sha256_of": "readers",
    "size_of": "readers",
    "get_subset": "registry",
    "all_subsets": "registry",
    "OPENELM_TARGETS": "registry",
    "write_sample_corpus": "sample",
}

__all__ = ["Document", "Provenance", "Rejection", *_ENTRY_POINTS]
__getattr__, __dir__ = lazy_attributes(__name__, _ENTRY_POINTS)
