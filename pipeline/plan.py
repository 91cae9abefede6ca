"""The stream's plan: the global order of kept documents, sequences and batches, from the manifest alone.

The plan is a pure function of (manifest, mode, seq_len, batch_size, weights, seed, epochs). It reads
``documents.parquet`` one shard (row group) at a time and never the corpus, so it is cheap to walk and
its memory stays flat however large the corpus. Every DataLoader worker walks the same plan and only
reads and tokenizes the documents of the batches it owns.

Units: in ``packed`` mode a kept document occupies ``tokens + 2 * segments`` consecutive token slots
(each kept segment framed as BOS + ids + EOS) of one continuous stream cut into windows of
``seq_len + 1``; in ``corenet`` mode each kept segment (piece) is one sequence of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import pyarrow.compute as pc

from elm_data.errors import ElmDataError
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.config import SEQUENCE_MODES
from elm_data.pipeline.mixing import derive_seed, permutation, proportional_interleave, weighted_interleave

NATURAL = "natural"


class PlanError(ElmDataError, ValueError):
    """The requested plan cannot be made from this manifest."""


@dataclass(frozen=True)
class SourcePlan:
    """One source/subset of the manifest: its shards (manifest order) and kept totals."""

    key: str  # "source/subset"
    source: str
    subset: str
    shards: tuple[int, ...]
    kept_docs: int
    kept_tokens: int
    kept_segments: int


@dataclass(frozen=True)
class PlanConfig:
    """Everything besides the manifest that fixes the stream (recorded in state dicts)."""

    mode: str
    seq_len: int
    batch_size: int
    seed: int
    weights: dict[str, float] | None = None  # token shares per "source/subset"; None: natural (each doc once/epoch)
    epochs: int | None = 1  # natural mode only; None = endless. Weighted mode is always endless.

    def __post_init__(self) -> None:
        if self.mode not in SEQUENCE_MODES:
            raise PlanError(f"sequence mode must be one of {SEQUENCE_MODES}, got {self.mode!r}")
        if self.seq_len < 1 or self.batch_size < 1:
            raise PlanError("seq_len and batch_size must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise PlanError("epochs must be >= 1 or None (endless)")

    @property
    def window(self) -> int:
        """Tokens per sequence: seq_len inputs + 1 for the shifted labels."""
        return self.seq_len + 1

    @property
    def natural(self) -> bool:
        return self.weights is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = None if self.weights is None else dict(sorted(self.weights.items()))
        return d


class PlannedDoc(NamedTuple):
    """One kept document at its place in the stream."""

    src: int  # position in Plan.sources
    shard: int
    index: int  # row/line in the shard
    doc_id: str
    tokens: int  # kept tokens, no BOS/EOS
    segments: int  # kept segments (pieces)
    start: int  # first unit (token slot in packed mode, sequence in corenet mode)
    units: int


@dataclass
class BatchPlan:
    """The documents that fill one global batch, in stream order."""

    batch: int  # global batch index
    start: int  # first unit of the batch
    sequences: int  # sequences in this batch (< batch_size only for the last batch of a finite stream)
    docs: list[PlannedDoc] = field(default_factory=list)


def manifest_sources(manifest: Manifest) -> list[SourcePlan]:
    """The manifest's source/subsets in order of first appearance, with their shards and kept totals."""
    grouped: dict[str, list] = {}
    for rec in manifest.shards:
        grouped.setdefault(rec.key, []).append(rec)
    return [
        SourcePlan(
            key=key,
            source=recs[0].source,
            subset=recs[0].subset,
            shards=tuple(r.shard for r in recs),
            kept_docs=sum(r.docs_kept for r in recs),
            kept_tokens=sum(r.tokens for r in recs),
            kept_segments=sum(r.segments for r in recs),
        )
        for key, recs in grouped.items()
    ]


def manifest_weights(info: dict[str, Any]) -> dict[str, float] | None:
    """Mixing weights recorded in the manifest's mixture entries, or None when none is set."""
    entries = info.get("mixture")
    if isinstance(entries, dict):
        entries = entries.get("entries") or entries.get("sources")
    if entries is None:
        entries = info.get("entries") or info.get("sources") or []
    weights: dict[str, float] = {}
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and e.get("weight") is not None:
            key = f"{e['source']}/{e.get('subset') or 'default'}"
            weights[key] = weights.get(key, 0.0) + float(e["weight"])
    return weights or None


def manifest_mode(info: dict[str, Any]) -> str:
    return (info.get("sequences") or {}).get("mode", "packed")


def check_mode_available(info: dict[str, Any], mode: str) -> None:
    """CoreNet pieces are only counted when the manifest was built in corenet mode."""
    if mode == "corenet" and manifest_mode(info) != "corenet":
        raise PlanError(
            "this manifest was built in packed mode, so it records whole documents and not CoreNet's "
            "2048-word pieces; rebuild it with `sequences: {mode: corenet}` in the mixture to stream corenet sequences"
        )


class Plan:
    """Walks the deterministic order of kept documents, sequences and batches."""

    def __init__(self, manifest: Manifest, config: PlanConfig):
        check_mode_available(manifest.info, config.mode)
        self.manifest = manifest
        self.config = config
        self.sources = manifest_sources(manifest)
        keys = [s.key for s in self.sources]
        if config.weights is None:
            # natural: token shares as they are; each source's kept documents are spread evenly over the pass
            # (proportional_interleave), so all sources run out together
            self.weights = [float(s.kept_tokens) for s in self.sources]
            self.draw_weights = [float(s.kept_docs) for s in self.sources]
        else:
            unknown = sorted(set(config.weights) - set(keys))
            if unknown:
                raise PlanError(f"weights name source/subsets not in the manifest: {unknown}; it has {keys}")
            self.weights = [float(config.weights.get(k, 0.0)) for k in keys]
            empty = [s.key for s, w in zip(self.sources, self.weights, strict=True) if w > 0 and s.kept_docs == 0]
            if empty:
                raise PlanError(f"source/subsets with a weight but no kept documents: {empty}")
            if not any(w > 0 for w in self.weights):
                raise PlanError("all mixing weights are zero")
            # weights are token shares: draw a source ∝ weight / its mean framed tokens per document
            self.draw_weights = [
                w * s.kept_docs / (s.kept_tokens + 2 * s.kept_segments) if w > 0 else 0.0
                for s, w in zip(self.sources, self.weights, strict=True)
            ]

    @property
    def units_per_batch(self) -> int:
        c = self.config
        return c.batch_size * c.window if c.mode == "packed" else c.batch_size

    def shard_order(self, src: int, epoch: int) -> list[int]:
        """A source's shards: manifest order in epoch 0, a seeded permutation in later epochs."""
        shards = list(self.sources[src].shards)
        if epoch == 0:
            return shards
        return [shards[i] for i in permutation(len(shards), self.config.seed, self.sources[src].key, epoch)]

    def _source_docs(self, src: int, epoch: int) -> Iterator[tuple]:
        """Kept documents of one source in one epoch: (shard, index, doc_id, tokens, segments)."""
        for shard in self.shard_order(src, epoch):
            table = self.manifest.documents(shard, columns=["status", "index", "doc_id", "tokens", "segments"])
            table = table.filter(pc.equal(table["status"], "kept"))
            cols = table.select(["index", "doc_id", "tokens", "segments"]).to_pydict()
            columns = (cols["index"], cols["doc_id"], cols["tokens"], cols["segments"])
            for index, doc_id, tokens, segments in zip(*columns, strict=True):
                yield shard, index, doc_id, tokens, segments

    def _mixed(self) -> Iterator[tuple[int, tuple]]:
        c = self.config
        cursors: list[Callable[[int], Iterator[tuple]]] = [
            (lambda e, s=s: self._source_docs(s, e)) for s in range(len(self.sources))
        ]
        if not c.natural:
            yield from weighted_interleave(cursors, self.draw_weights, derive_seed(c.seed, "mix"), restart=True)
            return
        epoch = 0
        while c.epochs is None or epoch < c.epochs:
            # natural mode: all sources share the global epoch; each epoch has its own draw order
            per_epoch = [self._source_docs(s, epoch) for s in range(len(self.sources))]
            counts = [s.kept_docs for s in self.sources]
            if not any(counts):
                return  # nothing kept at all: an endless stream would spin forever
            yield from proportional_interleave(per_epoch, counts, derive_seed(c.seed, "mix", epoch))
            epoch += 1

    def docs(self) -> Iterator[PlannedDoc]:
        """Every kept document in stream order with its first unit (lazy; flat memory)."""
        start = 0
        packed = self.config.mode == "packed"
        for src, (shard, index, doc_id, tokens, segments) in self._mixed():
            units = tokens + 2 * segments if packed else segments
            if units == 0:
                continue
            yield PlannedDoc(src, shard, index, doc_id, tokens, segments, start, units)
            start += units

    def batches(self, owns: Callable[[int], bool] = lambda b: True, start_batch: int = 0) -> Iterator[BatchPlan]:
        """The batches for which ``owns(batch)`` is true, from ``start_batch`` on, with their documents.

        Batches not owned cost only the plan walk: no document is read or tokenized for them.
        """
        span = self.units_per_batch
        batch_size = self.config.batch_size
        open_batches: list[BatchPlan] = []  # owned batches still receiving documents, in order
        next_batch = start_batch  # first batch index not yet considered for opening
        end = 0
        for doc in self.docs():
            end = doc.start + doc.units
            last = (end - 1) // span
            if open_batches:  # batches entirely before this document are complete
                first = doc.start // span
                while open_batches and open_batches[0].batch < first:
                    yield open_batches.pop(0)
            if last >= next_batch:
                for b in range(max(doc.start // span, next_batch), last + 1):
                    if owns(b):
                        open_batches.append(BatchPlan(b, b * span, batch_size))
                next_batch = last + 1
            for bp in open_batches:  # every open batch overlaps this document (documents are contiguous)
                bp.docs.append(doc)
        # finite stream: the last batch may hold fewer sequences
        for bp in open_batches:
            bp.sequences = self._sequences_in(end - bp.start)
            yield bp

    def _sequences_in(self, units: int) -> int:
        c = self.config
        units = min(units, self.units_per_batch)
        return -(-units // c.window) if c.mode == "packed" else units
