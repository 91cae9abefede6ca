"""Read-ahead: a partition reader fetches its next remote blocks in background threads, so latency is hidden.

For each source of a partition the order its blocks are read in is known from the plan alone
(:meth:`~.partition.PartitionWalk.block_order`). When the reader asks for a block, the read-ahead drops the
predictions up to it and schedules the following blocks of that source on a per-process thread pool, as
long as the bytes fetched ahead and not yet used stay within the process' budget (``readahead_bytes``;
at least one block is always allowed). A fetched block is verified against its sha256 in the thread
(``sources.blocks.fetch_verified``: node cache, retries) and used by the reader in place of a
synchronous read; a failed fetch raises when, and only when, the reader asks for that block.

Invariants: only blocks of the partition's own units are fetched, each at most once per prediction, so a
natural pass still reads each shard byte once (a resumed or multi-epoch pass whose first block is not
where the prediction starts re-synchronises, wasting at most the budget); bytes fetched ahead and not
yet used never exceed the budget plus one block; local shards are not read ahead, nor is a block larger than
the whole budget. A block over ``SPILL_BYTES`` is fetched ahead into a temp file (``fetch_verified``), so
what a reader holds in memory stays bounded whatever its blocks' size.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from elm_data.sources import remote
from elm_data.sources.blocks import Block, fetch_verified

from .partition import PartitionWalk

READAHEAD_BYTES = 64 << 20  # default budget per reader process
READAHEAD_THREADS = 4
_settings = {"bytes": READAHEAD_BYTES, "threads": READAHEAD_THREADS}
_pool: dict[str, object] = {"pid": None, "executor": None}
_lock = threading.Lock()
_in_flight = [0]  # bytes fetched ahead in this process and not yet used or dropped


def _after_fork_in_child() -> None:  # a forked DataLoader worker: its own lock, threads and budget
    global _lock
    _lock = threading.Lock()
    _pool.update(pid=None, executor=None)
    _in_flight[0] = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure_readahead(max_bytes: int | None = None, threads: int | None = None) -> None:
    """This process' read-ahead budget in bytes (0: off) and fetch threads."""
    if max_bytes is not None:
        _settings["bytes"] = int(max_bytes)
    if threads is not None:
        _settings["threads"] = max(1, int(threads))


def readahead_settings() -> dict[str, int]:
    return dict(_settings)


def _executor() -> ThreadPoolExecutor:
    with _lock:
        if _pool["pid"] != os.getpid():  # a forked worker starts its own threads and its own budget
            _pool.update(pid=os.getpid(), executor=ThreadPoolExecutor(_settings["threads"], "elm-readahead"))
            _in_flight[0] = 0
        return _pool["executor"]  # type: ignore[return-value]


class ReadAhead:
    """The read-ahead of one partition reader. The reader calls :meth:`at` when a source moves to a block; its
    views call the object itself (``(uri, block, i)``, the ``ahead`` hook of ``open_verified``) for the
    bytes."""

    def __init__(self, walk: PartitionWalk):
        self.walk, self.manifest = walk, walk.plan.manifest
        # source -> its blocks from the last one asked on
        self.orders: dict[int, Iterator[tuple[int, int]]] = {}
        # source -> (shard, block) fetched ahead, in order
        self.queues: dict[int, deque[tuple[int, int]]] = {}
        self.ready: dict[tuple[int, int], tuple[Future, int]] = {}  # (shard, block) -> (fetch, bytes)
        self.remote: dict[int, bool] = {}  # shard -> read from a remote store
        self.shard_of: dict[str, int] = {}  # uri -> shard, for every shard a fetch was submitted for

    def at(self, src: int, shard: int, block: int) -> None:
        """Source ``src`` reads ``(shard, block)`` next: drop what was fetched for it before, fetch what
        follows."""
        if _settings["bytes"] <= 0 or not self._is_remote(shard):
            return
        queue = self.queues.setdefault(src, deque())
        # a prediction that did not come true: its bytes are dropped
        while queue and queue[0] != (shard, block):
            self._drop(queue.popleft())
        if queue:
            queue.popleft()  # fetched already: it stays in ``ready`` until the view takes it
        else:
            self._resync(src, (shard, block))
        self._schedule(src)

    def warm(self) -> None:
        """Fetch the first blocks of every source of the partition now (its reader starts at the
        beginning)."""
        if _settings["bytes"] <= 0:
            return
        for src, run in enumerate(self.walk.runs):
            if len(run) and self._is_remote(int(run.shard[0])):
                self.queues.setdefault(src, deque())
                self.orders[src] = self.walk.block_order(src)
                self._schedule(src)

    def __call__(self, uri: str, block: Block, i: int) -> tuple[bytes, int] | None:
        shard = self.shard_of.get(uri)
        entry = self.ready.pop((shard, i), None) if shard is not None else None
        if entry is None:
            return None
        future, size = entry
        _release(size, None)
        return future.result()  # a failed fetch raises here, when its block is asked for

    def _drop(self, key: tuple[int, int]) -> None:
        entry = self.ready.pop(key, None)
        if entry is not None:
            _release(entry[1], entry[0])

    def _resync(self, src: int, key: tuple[int, int]) -> None:
        """Move the source's prediction just past ``key`` (its first block, a resumed or re-ordered pass)."""
        order = self.orders.get(src)
        for _ in range(2):
            if order is not None and any(k == key for k in order):
                self.orders[src] = order
                return
            order = self.walk.block_order(src)  # from the start again, once
        self.orders.pop(src, None)

    def _is_remote(self, shard: int) -> bool:
        if shard not in self.remote:
            self.remote[shard] = remote.is_remote(remote.filesystem(self.manifest.shards[shard].uri)[0])
        return self.remote[shard]

    def _schedule(self, src: int) -> None:
        queue, order = self.queues[src], self.orders.get(src)
        while order is not None and (_in_flight[0] < _settings["bytes"] or not queue):
            key = next(order, None)
            if key is None:
                return
            shard, b = key
            raw = self.manifest.blocks(shard)[b]
            block = Block(raw["start"], raw["end"], raw["sha256"], raw["first_record"], raw["records"])
            if not self._is_remote(shard) or block.end - block.start > _settings["bytes"]:
                # read when asked for (a local shard, a block larger than the budget): no further ahead
                return
            if key in self.ready:  # the order came round to a block still held: all ahead is fetched (an
                # endless stream over a corpus smaller than the budget would otherwise loop here forever)
                return
            size = block.end - block.start
            with _lock:
                _in_flight[0] += size
            uri = self.manifest.shards[shard].uri
            self.shard_of[uri] = shard
            self.ready[key] = (_executor().submit(fetch_verified, uri, block, b), size)
            queue.append(key)

    def close(self) -> None:
        for key in list(self.ready):
            self._drop(key)
        self.queues.clear()


def _close_spilled(future: Future) -> None:
    """A dropped fetch's temp file (a block over ``SPILL_BYTES``) is closed, not left to the collector."""
    if not future.cancelled() and future.exception() is None and not isinstance(future.result()[0], bytes):
        future.result()[0].close()


def _release(size: int, future: Future | None) -> None:
    if future is not None:
        future.cancel()  # a fetch not started yet is not made; a running one finishes and is dropped
        future.add_done_callback(_close_spilled)
    with _lock:
        _in_flight[0] -= size
