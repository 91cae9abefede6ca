"""A node-local cache of remote blocks, content-addressed by sha256: a second pass over a corpus fetches
nothing.

Opt-in (:func:`configure_cache` or a config's ``cache:`` section). A block lives at ``DIR/ab/<sha256>`` and is
served only when its bytes still hash to its name (a damaged entry is removed and fetched again), so the
cache can never feed bytes the manifest does not name; a block too large to hold in memory is stored from and
served as a file (:meth:`BlockCache.put_file`, :meth:`BlockCache.open`), checked in one streamed read. Entries
are written whole (``core/outputs.py``,
atomic rename), so any number of processes of a node may read and fill it at once; eviction runs under an
exclusive file lock (``DIR/.evict.lock``) and removes the least recently used entries (a hit refreshes an
entry's mtime) until the cache holds at most ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from elm_data.core.errors import InvalidValue
from elm_data.core.outputs import atomic_file, write_atomic

EVICT_EVERY = 16  # evict after each 1/16 of max_bytes written by this process
CHUNK = 8 << 20  # bytes per read when a large entry is checked or copied


@dataclass(frozen=True)
class CacheConfig:
    """``dir``: the cache's folder (one per node; None = no cache); ``max_bytes``: its size limit."""

    dir: str | None = None
    max_bytes: int = 64 << 30

    def __post_init__(self) -> None:
        if self.dir is not None and not isinstance(self.dir, str):
            raise InvalidValue(f"cache.dir: expected a folder path, got {self.dir!r}")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise InvalidValue(f"cache.max_bytes: expected an integer >= 1, got {self.max_bytes!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, where: str = "cache") -> CacheConfig:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"dir", "max_bytes"}:
            raise InvalidValue(f"{where}: expected a mapping with keys dir, max_bytes, got {raw!r}")
        return cls(**raw)


class BlockCache:
    """Verified blocks by sha256 under ``root``, at most ``max_bytes`` (least recently used go first)."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), max_bytes
        self.hits = self.misses = 0
        self._written = 0

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def get(self, sha256: str) -> bytes | None:
        """The block's bytes when cached and intact (then marked recently used), else None."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink(missing_ok=True)  # damaged on disk: never served, fetched again
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: the bytes read are still verified
            os.utime(path)
        self.hits += 1
        return data

    def open(self, sha256: str) -> BinaryIO | None:
        """The block as an open file (at its start) when cached and intact, checked in one streamed read (then
        marked recently used), else None. The file stays readable if the entry is evicted meanwhile."""
        path = self.path(sha256)
        try:
            f = open(path, "rb")  # noqa: SIM115 (handed to the caller, who closes it)
        except FileNotFoundError:
            self.misses += 1
            return None
        digest = hashlib.sha256()
        while chunk := f.read(CHUNK):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            f.close()
            path.unlink(missing_ok=True)  # damaged on disk: never served, fetched again
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        self.hits += 1
        f.seek(0)
        return f

    def put(self, sha256: str, data: bytes) -> None:
        """Keep verified ``data`` (whose sha256 the caller checked) unless the cache already holds it."""
        if len(data) > self.max_bytes or self.path(sha256).exists():
            return
        write_atomic(self.path(sha256), data)
        self._wrote(len(data))

    def put_file(self, sha256: str, f: BinaryIO, size: int) -> None:
        """Keep the verified ``size`` bytes of file ``f`` (copied in chunks; ``f`` is left at its start)."""
        if size > self.max_bytes or self.path(sha256).exists():
            return
        f.seek(0)
        with atomic_file(self.path(sha256)) as out:
            shutil.copyfileobj(f, out, CHUNK)
        f.seek(0)
        self._wrote(size)

    def _wrote(self, size: int) -> None:
        self._written += size
        if self._written >= self.max_bytes // EVICT_EVERY:
            self._written = 0
            self.evict()

    def evict(self) -> int:
        """Remove least recently used entries until at most ``max_bytes`` are held; returns the bytes
        freed."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".evict.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = []
            for sub in self.root.iterdir():
                if sub.is_dir() and len(sub.name) == 2:
                    for f in sub.iterdir():
                        if not f.name.startswith("."):
                            st = f.stat()
                            entries.append((st.st_mtime_ns, st.st_size, f))
            total, freed = sum(e[1] for e in entries), 0
            for _, size, f in sorted(entries):
                if total <= self.max_bytes:
                    break
                f.unlink(missing_ok=True)
                total, freed = total - size, freed + size
        return freed


_state: dict[str, Any] = {"config": CacheConfig(), "cache": None, "pid": None}


def configure_cache(config: CacheConfig | None) -> None:
    """Use ``config`` for this process' remote block reads (``CacheConfig()`` or None: no cache)."""
    _state.update(config=config or CacheConfig(), cache=None, pid=None)


def cache_config() -> CacheConfig:
    return _state["config"]


def active_cache() -> BlockCache | None:
    """This process' cache, or None when caching is off."""
    config = _state["config"]
    if config.dir is None:
        return None
    if _state["cache"] is None or _state["pid"] != os.getpid():  # a forked worker counts its own hits
        _state.update(cache=BlockCache(os.path.expanduser(config.dir), config.max_bytes), pid=os.getpid())
    return _state["cache"]
