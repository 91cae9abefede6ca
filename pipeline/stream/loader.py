"""``StreamLoader``: the stream's batches in global order from any number of DataLoader workers, and its state.

``state_dict()`` → ``{"version", "manifest_id", "plan", "global_batches", "batches", "rank", "world_size",
"cursors", "ledger"}`` in plain types. ``global_batches``: global batches consumed by the whole run (all
ranks in lockstep), i.e. the next batch of rank ``r`` is ``global_batches + r``; ``cursors``: for each
partition this rank has read from, its cursor after the last batch handed out (``partition.py``).
:func:`merge_states` joins the states of all ranks into one, which any ``ranks × workers`` dividing the
partition count can resume from exactly; resuming reads from the cursors on, never the past.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from elm_data.core.procs import dataloader_worker_init

from .dataset import STATE_VERSION, TokenStream, _as_is
from .ledger import Ledger
from .plan import PlanError


class StreamLoader:
    """``DataLoader(stream, batch_size=None)`` that hands batches out in global order and keeps exact state.

    With workers, each worker sends ``batches_per_item`` of its batches per DataLoader item (default: enough
    for about ``ITEM_TOKENS`` token slots), so the DataLoader's per-item cost (about 0.6 ms of the main
    process' CPU) is paid once per item; workers send numpy arrays (a pipe copy, cheaper than shared-memory
    tensors) and the loader reorders the batches of one round of items by ``batch_index``.
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
    ):
        if batches_per_item is not None and batches_per_item < 1:
            raise PlanError(f"batches_per_item must be >= 1, got {batches_per_item}")
        stream.plan().readers_layout(stream.rank, stream.world_size, max(1, num_workers))  # fails now, not later
        self.stream = stream
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.pin_memory = pin_memory
        self.worker_init_fn = worker_init_fn
        if batches_per_item is None:
            slots = stream.config.batch_size * stream.config.window
            batches_per_item = max(1, math.ceil(self.ITEM_TOKENS / slots)) if num_workers else 1
        self.batches_per_item = batches_per_item
        self.global_batches = stream.start_global_batch
        self.cursors: dict[int, dict[str, Any]] = dict(stream.cursors)
        self.batches = 0
        self.ledger = Ledger()

    def _loader(self) -> DataLoader:
        stream = self.stream
        stream.start_global_batch, stream.cursors = self.global_batches, dict(self.cursors)
        kwargs: dict[str, Any] = {}
        if self.num_workers:
            kwargs = {"prefetch_factor": self.prefetch_factor or 2, "worker_init_fn": self.worker_init_fn,
                      "multiprocessing_context": self.multiprocessing_context}  # fmt: skip
        readers = stream.for_readers(self.batches_per_item, numpy=self.num_workers > 0)
        return DataLoader(readers, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers, **kwargs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.stream
        window = stream.config.window
        pin = self.pin_memory and torch.cuda.is_available()  # as DataLoader(pin_memory=True): a no-op without a GPU
        waiting: dict[int, dict[str, Any]] = {}  # batches of the current round of items, by global index
        for item in self._loader():
            for batch in item if isinstance(item, list) else (item,):
                waiting[batch["batch_index"]] = batch
            while (expected := self.global_batches + stream.rank) in waiting:
                batch = waiting.pop(expected)
                for key in ("input_ids", "segment_ids"):
                    if isinstance(batch.get(key), np.ndarray):
                        batch[key] = torch.from_numpy(batch[key])
                    if pin and key in batch:
                        batch[key] = batch[key].pin_memory()
                self.cursors[batch["partition"]] = batch.pop("cursor")
                self.global_batches += stream.world_size
                self.batches += 1
                self.ledger.add(batch["tokens_by_source"])
                stream._stats.add_batch(len(batch["input_ids"]), window, batch["pad_tokens"],
                                        batch["discarded_tokens"], batch["tokens_by_source"])  # fmt: skip
                yield batch
        if waiting:
            raise RuntimeError(f"stream out of order: batches {sorted(waiting)} arrived, {expected} never did")

    def state_dict(self) -> dict[str, Any]:
        s = self.stream
        return {
            "version": STATE_VERSION,
            "manifest_id": s.manifest_id,
            "plan": s.config.to_dict(),
            "global_batches": self.global_batches,
            "batches": self.batches,
            "rank": s.rank,
            "world_size": s.world_size,
            "cursors": {str(p): c for p, c in sorted(self.cursors.items())},
            "ledger": self.ledger.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next batch exactly the one an uninterrupted run would hand out next.

        ``state``: this rank's own state (same ``world_size``), or :func:`merge_states` of all ranks' states
        (any ``world_size`` dividing the partition count that also divides ``global_batches``).
        """
        s = self.stream
        if state.get("version") != STATE_VERSION:
            raise PlanError(f"stream state version {state.get('version')} is not {STATE_VERSION}; start a new run")
        if state.get("manifest_id") != s.manifest_id:
            saved_id = state.get("manifest_id")
            raise PlanError(f"stream state is for manifest {saved_id}, the stream reads {s.manifest_id}")
        mine, saved = s.config.to_dict(), state.get("plan") or {}
        differ = sorted(k for k in mine if saved.get(k) != mine[k])
        if differ:
            detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {mine[k]!r}" for k in differ)
            raise PlanError(f"stream state was saved with a different plan ({detail})")
        global_batches = int(state["global_batches"])
        if global_batches % s.world_size:
            raise PlanError(f"cannot resume at global batch {global_batches} with world_size {s.world_size}")
        merged = state.get("rank") is None
        if not merged and (state["rank"], state["world_size"]) != (s.rank, s.world_size):
            raise PlanError("a single rank's stream state resumes only that rank; merge all ranks' states first")
        self.global_batches = s.start_global_batch = global_batches
        self.cursors = s.cursors = {int(p): c for p, c in state.get("cursors", {}).items()}
        self.batches = global_batches // s.world_size
        self.ledger = Ledger(state.get("ledger") or {} if not merged or s.rank == 0 else {})


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One stream state from every rank's (saved at the same step): all cursors, the ledger summed."""
    first = states[0]
    if len({s["global_batches"] for s in states}) != 1 or len({s["manifest_id"] for s in states}) != 1:
        raise PlanError("stream states of different steps or manifests cannot be merged")
    ledger = Ledger()
    cursors: dict[str, Any] = {}
    for s in states:
        ledger.add(s.get("ledger") or {})
        cursors.update(s.get("cursors") or {})
    merged = {k: v for k, v in first.items() if k not in ("rank", "world_size", "batches")}
    return merged | {"cursors": dict(sorted(cursors.items(), key=lambda kv: int(kv[0]))), "ledger": ledger.to_dict()}


def take_sequences(stream: TokenStream, n: int) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """The first ``n`` sequences (token ids, spans) of a stream, in order (single process)."""
    count = 0
    if n <= 0:
        return
    for batch in StreamLoader(stream):
        spans = batch.get("spans") or [[] for _ in range(len(batch["input_ids"]))]
        for ids, seq_spans in zip(batch["input_ids"].numpy(), spans, strict=True):
            yield ids, seq_spans
            count += 1
            if count >= n:
                return
