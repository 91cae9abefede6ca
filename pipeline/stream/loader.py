"""``StreamLoader``: the stream's batches in global order from any number of DataLoader workers, and its
state.

The loader owns the position (``global_batches`` and one cursor per partition), the tokens consumed per
source and the stats of what it handed out; the ``TokenStream`` it reads is never changed. The state's
format and :func:`~.state.merge_states` are in ``state.py``; resuming reads from the cursors on, never the
past.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from elm_data.core.procs import dataloader_worker_init
from elm_data.sources import remote

from .consumed import ConsumedTokens, StreamStats
from .dataset import StreamBatch, TokenStream
from .partition import Cursor
from .plan import PlanError
from .process_readers import process_readers
from .sequences import Span
from .state import StreamState, check_state, stream_state


class StreamLoader:
    """``DataLoader(stream.readers(...), batch_size=None)`` that hands batches out in global order with exact
    state.

    With workers, each worker sends ``batches_per_item`` of its batches per DataLoader item (default: enough
    for about ``ITEM_TOKENS`` token slots), so the DataLoader's per-item cost (about 0.6 ms of the main
    process' CPU) is paid once per item; workers send numpy arrays (a pipe copy, cheaper than shared-memory
    tensors) and the loader reorders the batches of one round of items by ``batch_index``.

    Invariants: batch ``global_batches + rank`` is always the next one handed out; after each batch,
    ``global_batches`` grows by ``world_size``, its partition's cursor is the one after it, ``consumed`` and
    :meth:`stats` count it. Iterating again continues where the last iteration stopped. Iterating never draws
    from torch's global RNG (the DataLoader's base seed comes from a generator of its own), so a trainer that
    restores its RNGs and then iterates stands exactly where it was saved.

    ``tensors``: the batches' arrays are torch tensors (default), else numpy arrays. With ``tensors=False``
    (``elm-data stream``) no DataLoader is made, with workers or without, and the process never imports torch
    (its import is ~1.1-1.5 CPU-s and ~190 MiB of RSS).
    """

    ITEM_TOKENS = 1 << 17

    def __init__(
        self,
        stream: TokenStream,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        multiprocessing_context: str | None = None,
        pin_memory: bool = False,
        batches_per_item: int | None = None,
        worker_init_fn=dataloader_worker_init,
        tensors: bool = True,
    ):
        if batches_per_item is not None and batches_per_item < 1:
            raise PlanError(f"batches_per_item must be >= 1, got {batches_per_item}")
        # fails now, not later
        stream.plan().readers_layout(stream.rank, stream.world_size, max(1, num_workers))
        self.stream = stream
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.pin_memory = pin_memory
        self.worker_init_fn = worker_init_fn
        self.tensors = tensors
        if batches_per_item is None:
            slots = stream.config.batch_size * stream.config.window
            batches_per_item = max(1, math.ceil(self.ITEM_TOKENS / slots)) if num_workers else 1
        self.batches_per_item = batches_per_item
        self.global_batches = 0
        self.cursors: dict[int, Cursor] = {}
        self.batches = 0
        self.consumed = ConsumedTokens()
        self._handed_out = StreamStats(stream.config.mode, stream.config.window)
        self.remote: dict[str, Any] = {}  # remote reads of every reader (retries, bytes fetched, from cache)

    def _loader(self) -> Iterable[Any]:
        """The readers' items (numpy arrays): read in this process without workers (as a ``DataLoader`` with
        ``num_workers=0`` would; it draws no RNG), else from worker processes: torch-free ones
        (``process_readers``, the same items in the same order) when no tensors are asked for, else a
        ``DataLoader``'s."""
        readers = self.stream.readers(
            self.global_batches, self.cursors, batches_per_item=self.batches_per_item, numpy=True
        )
        if not self.num_workers:
            return readers
        if not self.tensors:  # numpy batches: worker processes without torch's import
            return process_readers(
                readers,
                self.num_workers,
                self.prefetch_factor or 2,
                self.worker_init_fn,
                self.multiprocessing_context,
            )
        from .torch_data import data_loader

        return data_loader(
            readers,
            self.num_workers,
            self.prefetch_factor or 2,
            self.worker_init_fn,
            self.multiprocessing_context,
        )

    def __iter__(self) -> Iterator[StreamBatch]:
        rank = self.stream.rank
        # as DataLoader(pin_memory=True): a no-op without a GPU
        pin = self.pin_memory and self.tensors and _cuda()
        waiting: dict[int, StreamBatch] = {}  # batches of the current round of items, by global index
        for item in self._loader():
            for batch in item if isinstance(item, list) else (item,):
                waiting[batch["batch_index"]] = batch
            while (expected := self.global_batches + rank) in waiting:
                yield self._hand_out(waiting.pop(expected), pin)
        if waiting:
            raise RuntimeError(
                f"stream out of order: batches {sorted(waiting)} arrived, {expected} never did"
            )

    def _hand_out(self, batch: StreamBatch, pin: bool) -> StreamBatch:
        """Make the batch's arrays tensors (pinned with ``pin``) and move the position and the counts past
        it."""
        for key in ("input_ids", "segment_ids"):
            if self.tensors and isinstance(batch.get(key), np.ndarray):
                batch[key] = _from_numpy(batch[key])
            if pin and key in batch:
                batch[key] = batch[key].pin_memory()
        self.cursors[batch["partition"]] = batch.pop("cursor")
        self.global_batches += self.stream.world_size
        self.batches += 1
        self.consumed.add(batch["tokens_by_source"])
        if "remote_reads" in batch:
            self.remote = remote.add_counts(self.remote, batch.pop("remote_reads"))
        self._handed_out.add(batch)
        return batch

    def stats(self) -> dict[str, Any]:
        """Padding fraction, discarded tokens (CoreNet truncation), sequences: over the batches this loader
        handed out (since it was made; a resumed run's earlier batches are in ``consumed`` only)."""
        config = self.stream.config
        stats = self._handed_out.to_dict() | {"seq_len": config.seq_len, "batch_size": config.batch_size}
        return stats | ({"remote": self.remote} if self.remote else {})

    def state_dict(self) -> StreamState:
        s = self.stream
        layout = (self.batches, s.rank, s.world_size)
        return stream_state(
            s.manifest_id, s.config, self.global_batches, self.cursors, self.consumed.to_dict(), layout
        )

    def load_state_dict(self, state: StreamState) -> None:
        """Make the next batch exactly the one an uninterrupted run would hand out next.

        ``state``: this rank's own state (same ``world_size``), or :func:`~.state.merge_states` of all ranks'
        states (any ``world_size`` dividing the partition count that also divides ``global_batches``); a
        merged state's ``consumed`` counts the whole run, so only rank 0 takes it over (summing the ranks'
        counts then gives the run's total).
        """
        s = self.stream
        check_state(state, s.manifest_id, s.config, s.rank, s.world_size)
        merged = state.get("rank") is None
        self.global_batches = int(state["global_batches"])
        self.cursors = {int(p): c for p, c in state["cursors"].items()}
        self.batches = self.global_batches // s.world_size
        self.consumed = ConsumedTokens(state["consumed"] if not merged or s.rank == 0 else {})


def _cuda() -> bool:
    from .torch_data import cuda_available

    return cuda_available()


def _from_numpy(array: np.ndarray) -> Any:
    from .torch_data import from_numpy

    return from_numpy(array)


def take_sequences(loader: StreamLoader, n: int) -> Iterator[tuple[np.ndarray, list[Span]]]:
    """The next ``n`` sequences (token ids, spans) the loader hands out, in order."""
    count = 0
    if n <= 0:
        return
    for batch in loader:
        spans = batch.get("spans") or [[] for _ in range(len(batch["input_ids"]))]
        for ids, seq_spans in zip(np.asarray(batch["input_ids"]), spans, strict=True):
            yield ids, seq_spans
            count += 1
            if count >= n:
                return
