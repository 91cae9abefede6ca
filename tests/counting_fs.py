"""A stand-in for a remote object store (hf://, s3://): fsspec's memory filesystem under ``counting://``
that logs every byte read, from any process (DataLoader workers are forked: they inherit the store and
append to the same log file)."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import fsspec
from fsspec.implementations.memory import MemoryFileSystem


class _CountedFile(io.BytesIO):
    def __init__(self, data: bytes, path: str, log: str):
        super().__init__(data)
        self.path, self.log = path, log

    def _count(self, n: int) -> None:
        if n:
            with open(self.log, "a") as f:  # one short append per read: atomic enough across processes
                f.write(f"{self.path}\t{n}\n")

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._count(len(data))
        return data

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self._count(n)
        return n


class CountingFileSystem(MemoryFileSystem):
    protocol = "counting"
    store: dict = {}  # its own store, apart from memory://
    pseudo_dirs = [""]
    log_path: str = os.devnull

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("counting://") :] if path.startswith("counting://") else path
        return super()._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:
            return super()._open(path, mode, **kwargs)
        path = self._strip_protocol(path)
        return _CountedFile(self.cat_file(path), path, self.log_path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        # a ranged read (whole-file reads are counted by the file read)
        if start is not None or end is not None:
            _CountedFile(b"", self._strip_protocol(path), self.log_path)._count(len(data))
        return data


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)


def upload(tree: Path, root: str) -> None:
    """Copy every file under ``tree`` to ``counting://root/...`` (same relative paths)."""
    for path in tree.rglob("*"):
        if path.is_file():
            CountingFileSystem().pipe_file(f"{root}/{path.relative_to(tree).as_posix()}", path.read_bytes())


def bytes_read(log: Path) -> Counter:
    """Bytes read per path since the log was created."""
    counts: Counter = Counter()
    if log.exists():
        for line in log.read_text().splitlines():
            path, n = line.split("\t")
            counts[path] += int(n)
    return counts
