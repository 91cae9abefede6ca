"""Record what a consumer of a manifest reads: ``manifest.json`` leaves, ``shards.parquet`` columns, ledger
files.

``with recording() as reads:`` wraps every manifest opened inside it: ``Manifest.info`` becomes a dict that
logs each leaf taken out of it (``filters.min_tokens``, ``mixture[].weight``; a list of scalars as a whole),
its shard records log each field read (``shards.parquet:tokens``), ``Manifest.documents`` /
``block_documents`` log ``documents/*.parquet``, and ``Manifest.blocks`` / ``block_counts`` log
``blocks.parquet``. Reads made while checking the manifest (any frame of
``manifests/identity.py`` or ``manifests/merkle.py`` on the stack) are not consumption and are not logged.
A field read later by new code is logged the same way, so the enumerating test sees it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elm_data.manifests import manifest as manifest_module

CHECKING = ("manifests/identity.py", "manifests/merkle.py")
LEDGER = "documents/*.parquet"
BLOCKS = "blocks.parquet"
SHARD_FIELDS = frozenset(f.name for f in dataclasses.fields(manifest_module.ShardRecord))


def _checking() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(CHECKING):
            return True
        frame = frame.f_back
    return False


class Reads(set):
    def note(self, path: str) -> None:
        if not _checking():
            self.add(path)


def _contain(value: Any, path: str, reads: Reads) -> Any:
    """Containers wrapped once, in place, so what a caller changes through one access the next one sees."""
    if isinstance(value, dict) and not isinstance(value, RecordedDict):
        return RecordedDict(value, path, reads)
    if isinstance(value, list) and not isinstance(value, RecordedList):
        return RecordedList(value, path, reads)
    return value


def _taken(value: Any, path: str, reads: Reads) -> Any:
    """Log ``value`` as read at ``path`` when it is a leaf (a list of scalars counts as one leaf)."""
    if isinstance(value, list) and not all(isinstance(v, dict) for v in value):
        reads.note(path)  # C code such as json.dumps reads a list's items directly
    elif not isinstance(value, dict | list):
        reads.note(path)
    return value


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class RecordedDict(dict):
    def __init__(self, raw: dict, path: str, reads: Reads):
        super().__init__({k: _contain(v, _join(path, k), reads) for k, v in raw.items()})
        self._path, self._reads = path, reads

    def __getitem__(self, key):
        return _taken(dict.__getitem__(self, key), _join(self._path, key), self._reads)

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, _contain(value, _join(self._path, key), self._reads))

    def get(self, key, default=None):
        if dict.__contains__(self, key):
            return self[key]
        self._reads.note(_join(self._path, key))  # asking for an absent field is reading it
        return default

    def __iter__(self):
        return iter(list(dict.keys(self)))

    def keys(self):
        return list(self)

    def items(self):
        return [(k, self[k]) for k in dict.keys(self)]

    def values(self):
        return [self[k] for k in dict.keys(self)]

    def __eq__(self, other):
        self.items()
        return dict.__eq__(self, other)

    __hash__ = None


class RecordedList(list):
    def __init__(self, raw: list, path: str, reads: Reads):
        super().__init__(_contain(v, f"{path}[]", reads) for v in raw)
        self._path, self._reads = path, reads

    def __getitem__(self, index):
        return _taken(list.__getitem__(self, index), f"{self._path}[]", self._reads)

    def __iter__(self):
        return iter([_taken(v, f"{self._path}[]", self._reads) for v in list.__iter__(self)])


class RecordedShard(manifest_module.ShardRecord):
    reads: Reads | None = None

    def __getattribute__(self, name: str):
        if name in SHARD_FIELDS:
            reads = type(self).reads
            if reads is not None:
                reads.note(f"shards.parquet:{name}")
        return super().__getattribute__(name)


@contextmanager
def recording() -> Iterator[Reads]:
    """Every manifest opened inside logs what is read from it into the yielded set."""
    reads = Reads()
    Manifest = manifest_module.Manifest
    original = {
        "read_info": manifest_module._read_manifest_info,
        "record": manifest_module.ShardRecord,
        "block_documents": Manifest.block_documents,
        "documents": Manifest.documents,
        "blocks": Manifest.blocks,
        "block_counts": Manifest.block_counts,
    }

    def read_info(path):
        return RecordedDict(original["read_info"](path), "", reads)

    def block_documents(self, *args, **kwargs):
        reads.note(LEDGER)
        return original["block_documents"](self, *args, **kwargs)

    def documents(self, *args, **kwargs):
        reads.note(LEDGER)
        return original["documents"](self, *args, **kwargs)

    def blocks(self, *args, **kwargs):
        reads.note(BLOCKS)
        return original["blocks"](self, *args, **kwargs)

    def block_counts(self):
        reads.note(BLOCKS)
        return original["block_counts"].fget(self)

    RecordedShard.reads = reads
    manifest_module._read_manifest_info = read_info
    manifest_module.ShardRecord = RecordedShard
    Manifest.block_documents, Manifest.documents = block_documents, documents
    Manifest.blocks, Manifest.block_counts = blocks, property(block_counts)
    try:
        yield reads
    finally:
        RecordedShard.reads = None
        manifest_module._read_manifest_info = original["read_info"]
        manifest_module.ShardRecord = original["record"]
        Manifest.block_documents, Manifest.documents = original["block_documents"], original["documents"]
        Manifest.blocks, Manifest.block_counts = original["blocks"], original["block_counts"]
