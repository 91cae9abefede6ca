"""The resumable training stream: partitions → verified blocks → per-document pass → sequences → whole batches.

``TokenStream`` is an ``IterableDataset`` that yields whole batches; ``StreamLoader`` wraps it in a
``DataLoader(batch_size=None)``, hands batches out in global order and keeps the state (one cursor per
partition) and the per-source ledger. Which reader makes which batch is fixed by the plan (``plan.py``):
rank ``r`` of ``R`` and worker ``w`` of ``W`` read only their own partitions, so each block is read once
by one reader, and every ``R × W`` dividing the partition count yields the same global batches.

Integrity: every block's sha256 is checked before any of its records is fed (``reading.py``), every
document's pass outcome must equal the manifest's (kept, same token and segment counts), the manifest must
recompute its own id (``Manifest``; again in each worker, which must also see the parent's manifest id),
and the tokenizer's sha256 must equal the manifest's. Any mismatch stops the stream with an error.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.tokenizer import LlamaTokenizer, TokenizerMismatch, resolve_tokenizer

from .ledger import StreamStats
from .partition import Cursor, PartitionWalk
from .plan import NATURAL, BatchPlan, Plan, PlanConfig, PlanError, default_partitions, manifest_mode, manifest_weights
from .reading import DocumentFetcher, StreamIntegrityError
from .sequences import LAYOUTS, FramedDoc, frame_segments

STATE_VERSION = 2


def _resolve_weights(weights: str | dict[str, float] | None, info: dict[str, Any]) -> dict[str, float] | None:
    if weights is None:
        return manifest_weights(info)
    if isinstance(weights, str):
        if weights != NATURAL:
            raise PlanError(f"weights must be 'natural', a mapping or None, got {weights!r}")
        return None
    return {str(k): float(v) for k, v in dict(weights).items()}


def _tokenizer_for(tokenizer: str | LlamaTokenizer | None, info: dict[str, Any]) -> LlamaTokenizer:
    if not isinstance(tokenizer, LlamaTokenizer):
        return resolve_tokenizer(tokenizer, None, info)
    expected = (info.get("tokenizer") or {}).get("sha256")
    if expected and tokenizer.sha256 != expected:
        raise TokenizerMismatch(
            f"tokenizer {tokenizer.uri} has sha256 {tokenizer.sha256}, but the manifest was counted with {expected}"
        )
    return tokenizer


def first_batch_of(p: int, global_batch: int, partitions: int) -> int:
    """Partition ``p``'s next batch when the stream stands at ``global_batch``: its batches before it."""
    return max(0, -(-(global_batch - p) // partitions))


class TokenStream(IterableDataset):
    """Whole batches of a manifest's kept documents: deterministic, partitioned over ranks and workers, resumable.

    Each batch is a dict: ``input_ids`` LongTensor[B, seq_len + 1]; ``spans`` (when ``provenance``): per
    sequence, a list of ``{source, subset, shard_sha256, doc_id, index, doc_start, doc_end, start, end}``
    (window positions ``[start, end)`` hold the document's framed tokens ``[doc_start, doc_end)``, framed =
    BOS + ids + EOS per kept segment); ``tokens_by_source`` non-pad tokens per ``"source/subset"``;
    ``segment_ids`` (when ``document_masks``) LongTensor[B, seq_len + 1], -1 on padding; ``batch_index``
    (global), ``partition``, ``pad_tokens``, ``discarded_tokens`` (ints). At the end of a finite stream a
    partition's last batch may be short and a partition whose data ended gives empty batches (B = 0).
    """

    def __init__(
        self,
        manifest_dir: str | Path,
        *,
        batch_size: int,
        seq_len: int | None = None,
        mode: str | None = None,
        weights: str | dict[str, float] | None = None,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        tokenizer: str | LlamaTokenizer | None = None,
        epochs: int | None = 1,
        provenance: bool = True,
        document_masks: bool | None = None,
        partitions: int | None = None,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise PlanError(f"rank {rank} is outside world_size {world_size}")
        self.manifest_dir = Path(manifest_dir)
        manifest = Manifest(self.manifest_dir)
        info = manifest.info
        self.manifest_id = manifest.manifest_id
        self.sequences = SequenceConfig.from_dict(info.get("sequences"))
        self.filters = FilterConfig.from_dict(info.get("filters"))
        self.config = PlanConfig(
            mode=mode or manifest_mode(info),
            seq_len=int(self.sequences.seq_len if seq_len is None else seq_len),
            batch_size=int(batch_size),
            seed=int(info.get("seed", 0) if seed is None else seed),
            weights=_resolve_weights(weights, info),
            epochs=epochs,
        )
        if partitions is None:
            partitions = default_partitions(manifest, self.config)
        self.config = replace(self.config, partitions=int(partitions))
        self._manifest: Manifest | None = manifest
        self._plan: Plan | None = None
        self.plan().readers_layout(rank, world_size, 1)  # validates mode, weights and the layout now
        self.tokenizer = _tokenizer_for(tokenizer, info)
        self.rank, self.world_size = rank, world_size
        self.provenance = provenance
        self.document_masks = self.sequences.document_masks if document_masks is None else document_masks
        self.start_global_batch = 0  # the next global batch of rank 0 (set by resume); a multiple of world_size
        self.cursors: dict[int, Cursor] = {}  # partition -> cursor at start_global_batch (absent: its start)
        self.batches_per_item = 1  # batches a reader sends per DataLoader item
        self.numpy = False  # send numpy arrays (workers) instead of tensors
        self._stats = StreamStats(self.config.mode)

    def for_readers(self, batches_per_item: int, numpy: bool) -> TokenStream:
        """A copy for the DataLoader's readers (the caller's stream keeps its settings)."""
        reader = copy.copy(self)
        reader.batches_per_item, reader.numpy = batches_per_item, numpy
        return reader

    def __getstate__(self) -> dict[str, Any]:  # the manifest is reopened (and re-checked) in each worker
        return dict(self.__dict__, _manifest=None, _plan=None)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            manifest = Manifest(self.manifest_dir)
            if manifest.manifest_id != self.manifest_id:
                raise StreamIntegrityError(
                    f"{self.manifest_dir} now holds manifest {manifest.manifest_id}, but this stream was "
                    f"started on {self.manifest_id} (rebuilt while running?); refusing to mix them"
                )
            self._manifest = manifest
        return self._manifest

    def plan(self) -> Plan:
        """The plan of this stream's manifest and config, made once per process."""
        if self._plan is None:
            self._plan = Plan(self.manifest, self.config)
        return self._plan

    def stats(self) -> dict[str, Any]:
        """Padding fraction, discarded tokens (CoreNet truncation), sequences: over the batches handed out."""
        return self._stats.to_dict() | {"seq_len": self.config.seq_len, "batch_size": self.config.batch_size}

    def _cursor(self, walk: PartitionWalk, first: int) -> Cursor:
        cursor = self.cursors.get(walk.p)
        if cursor is None and first == 0:
            return walk.start()
        if cursor is None or cursor["batch"] != first:
            raise PlanError(
                f"stream state has no cursor for partition {walk.p} at its batch {first} "
                f"(global batch {self.start_global_batch}); it was saved at another position"
            )
        return cursor

    def _planned(self, plan: Plan, partitions: list[int]) -> Iterator[tuple[int, BatchPlan, Cursor]]:
        """``(partition, batch, cursor after it)`` for this reader's partitions, in global batch order."""
        P, start, rounds = plan.partitions, self.start_global_batch, plan.rounds()
        walks = {p: PartitionWalk(plan, p) for p in partitions}
        firsts = {p: first_batch_of(p, start, P) for p in partitions}
        batches = {p: walks[p].batches(self._cursor(walks[p], firsts[p])) for p in partitions}
        if not partitions or not any(s.kept_docs for s in plan.sources):
            return
        t = min(firsts.values())
        while rounds is None or t < rounds:
            for p in partitions:
                if t >= firsts[p]:
                    bp, cursor = next(batches[p], (None, None))
                    if bp is None:
                        bp, cursor = walks[p].empty(t), {"batch": t + 1, "done": True}
                    yield p, bp, cursor
            t += 1

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.start_global_batch % self.world_size:
            raise PlanError(f"start_global_batch {self.start_global_batch} is not a multiple of {self.world_size}")
        plan = self.plan()
        mine = plan.readers_layout(self.rank, self.world_size, workers)[worker]
        item: list[dict[str, Any]] = []
        for batch in self._batches(plan, self._planned(plan, mine)):
            if self.batches_per_item == 1:
                yield batch
                continue
            item.append(batch)
            if len(item) == self.batches_per_item:
                yield item
                item = []
        if item:
            yield item

    def _batches(self, plan: Plan, planned: Iterator[tuple[int, BatchPlan, Cursor]]) -> Iterator[dict[str, Any]]:
        """Read, tokenize and lay out each planned batch; a document spanning batches is tokenized once."""
        manifest = self.manifest
        fetchers: dict[int, DocumentFetcher] = {}
        caches: dict[int, dict[tuple[int, int], FramedDoc]] = {}
        doc_pass = DocumentPass(self.filters, self.sequences, self.tokenizer, num_threads=1)
        layout = LAYOUTS[self.config.mode]
        span = self.config.units_per_batch
        as_array = (lambda a: a) if self.numpy else torch.from_numpy
        shards, sources = manifest.shards, plan.sources

        def span_base(doc) -> dict[str, Any]:
            src = sources[doc.src]
            return {"source": src.source, "subset": src.subset, "shard_sha256": shards[doc.shard].sha256,
                    "doc_id": doc.doc_id, "index": doc.index}  # fmt: skip

        try:
            for p, bp, cursor in planned:
                fetcher = fetchers.setdefault(p, DocumentFetcher(manifest))
                cache = caches.setdefault(p, {})
                missing = [d for d in bp.docs if (d.shard, d.index) not in cache]
                results = doc_pass.process([fetcher.fetch(d) for d in missing]) if missing else []
                for doc, result in zip(missing, results, strict=True):
                    self._check(doc, result, shards)
                    cache[(doc.shard, doc.index)] = frame_segments(result.segments)
                rows = layout(bp, lambda d, c=cache: c[(d.shard, d.index)], span_base, self.config.window,
                              self.sequences.pad_id, self.document_masks)  # fmt: skip
                caches[p] = {(d.shard, d.index): cache[(d.shard, d.index)] for d in bp.docs
                             if d.start + d.units > bp.start + span}  # fmt: skip
                batch: dict[str, Any] = {
                    "input_ids": as_array(rows.input_ids),
                    "tokens_by_source": rows.tokens_by_source,
                    "batch_index": bp.batch,
                    "partition": p,
                    "cursor": cursor,
                    "pad_tokens": rows.pad_tokens,
                    "discarded_tokens": rows.discarded_tokens,
                }
                if self.provenance:
                    batch["spans"] = rows.spans
                if rows.segment_ids is not None:
                    batch["segment_ids"] = as_array(rows.segment_ids)
                yield batch
        finally:
            for fetcher in fetchers.values():
                fetcher.close()  # a stream stopped early (or failing) leaves no shard open

    @staticmethod
    def _check(doc, result, shards) -> None:
        if not result.kept or result.tokens != doc.tokens or len(result.segments) != doc.segments:
            raise StreamIntegrityError(
                f"document {doc.doc_id} (shard {doc.shard}, record {doc.index}, {shards[doc.shard].uri}): "
                f"the pass now gives {result.status} with {result.tokens} tokens in {len(result.segments)} "
                f"segment(s); the manifest recorded kept, {doc.tokens} tokens, {doc.segments} segment(s) "
                "(filter or tokenizer drift: rebuild the manifest)"
            )


def _as_is(batch: Any) -> Any:
    """The DataLoader's collate step: batches are already whole (spans stay plain lists, no conversion pass)."""
    return batch
