"""The stream's plan: partitions of the manifest's blocks and the global order of batches, from the manifest alone.

The plan is a pure function of (manifest, mode, seq_len, batch_size, weights, seed, epochs, partitions).
The manifest's blocks with kept documents (its *units*) are dealt to ``P = partitions`` partitions:
each source's units in manifest order are cut into ``P`` contiguous runs of about equal kept tokens, so
every partition holds about ``1/P`` of every source and each unit belongs to exactly one partition.
Each partition mixes its own sources (``partition.py``) into its own batches; partition ``p``'s
``t``-th batch is global batch ``t * P + p``. Rank ``r`` of ``R`` takes global batches ``b ≡ r (mod R)``,
i.e. partitions ``p ≡ r (mod R)``, and within a rank DataLoader worker ``w`` of ``W`` takes the
partitions of its slots ``q ≡ w (mod W)`` (``p = q * R + r``): any ``R × W`` dividing ``P`` yields the
same global batches, and every unit is read by one reader only.

A finite stream (natural mode, ``epochs`` set) runs ``rounds`` rounds of ``P`` batches; a partition
whose data ended gives empty batches (0 sequences) until the last round, so every rank and worker
sees the same number of batches.

Units: in ``packed`` mode a kept document occupies ``tokens + 2 * segments`` consecutive token slots
(each kept segment framed as BOS + ids + EOS) of the partition's continuous stream, cut into windows
of ``seq_len + 1``; in ``corenet`` mode each kept segment (piece) is one sequence of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from elm_data.core.errors import ElmDataError
from elm_data.core.settings import Settings, SettingsError
from elm_data.manifests.manifest import Manifest, ShardRecord, counts_by_subset
from elm_data.manifests.mixture import resolved_weights
from elm_data.pipeline.config import SEQUENCE_MODES

NATURAL = "natural"
MAX_DEFAULT_PARTITIONS = 64  # divisible by every power-of-two ranks × workers up to 64
UNITS_PER_PARTITION = 4  # the default keeps at least this many units per partition on average


class PlanError(ElmDataError, ValueError):
    """The requested plan cannot be made from this manifest."""


@dataclass(frozen=True)
class PlanConfig(Settings):
    """Everything besides the manifest that fixes the stream (recorded in state dicts and a run's log header,
    read back with :meth:`from_mapping`, which refuses unknown keys and wrong types)."""

    mode: str
    seq_len: int
    batch_size: int
    seed: int
    weights: dict[str, float] | None = None  # token shares per "source/subset"; None: natural (each doc once/epoch)
    epochs: int | None = 1  # natural mode only; None = endless. Weighted mode is always endless.
    partitions: int = MAX_DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        try:
            self.check_types("plan")
        except SettingsError as error:
            raise PlanError(str(error)) from None
        if self.mode not in SEQUENCE_MODES:
            raise PlanError(f"sequence mode must be one of {SEQUENCE_MODES}, got {self.mode!r}")
        if self.seq_len < 1 or self.batch_size < 1:
            raise PlanError("seq_len and batch_size must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise PlanError("epochs must be >= 1 or None (endless)")
        if self.partitions < 1:
            raise PlanError(f"partitions must be >= 1, got {self.partitions}")
        if self.weights is not None and any(w < 0 for w in self.weights.values()):
            raise PlanError(f"mixing weights must be >= 0, got {self.weights}")

    @property
    def window(self) -> int:
        """Tokens per sequence: seq_len inputs + 1 for the shifted labels."""
        return self.seq_len + 1

    @property
    def natural(self) -> bool:
        return self.weights is None

    @property
    def units_per_batch(self) -> int:
        return self.batch_size * self.window if self.mode == "packed" else self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = None if self.weights is None else dict(sorted(self.weights.items()))
        return d


@dataclass(frozen=True)
class Unit:
    """Blocks of one shard with kept documents, dealt to one partition and read by one reader."""

    shard: int
    blocks: tuple[int, ...]
    kept_docs: int
    units: int  # stream units of its kept documents (token slots in packed mode, sequences in corenet mode)
    tokens: int  # framed tokens of its kept documents (kept tokens + BOS/EOS per segment)


@dataclass(frozen=True)
class SourcePlan:
    """One source/subset of the manifest: its shards (manifest order), units and kept totals."""

    key: str  # "source/subset"
    source: str
    subset: str
    shards: tuple[int, ...]
    units: tuple[Unit, ...]
    kept_docs: int
    kept_tokens: int
    kept_segments: int


class PlannedDoc(NamedTuple):
    """One kept document at its place in its partition's stream."""

    src: int  # position in Plan.sources
    shard: int
    index: int  # row/line in the shard
    doc_id: str
    tokens: int  # kept tokens, no BOS/EOS
    segments: int  # kept segments (pieces)
    start: int  # first unit in the partition's stream (token slot in packed mode, sequence in corenet mode)
    units: int


@dataclass
class BatchPlan:
    """The documents that fill one batch of a partition, in stream order."""

    batch: int  # global batch index
    start: int  # first unit of the batch in its partition's stream
    sequences: int  # sequences in this batch (< batch_size only at the end of a finite partition; may be 0)
    docs: list[PlannedDoc] = field(default_factory=list)


def _units_of(block: dict[str, Any], packed: bool) -> int:
    return block["kept_tokens"] + 2 * block["kept_segments"] if packed else block["kept_segments"]


SHARED_READ_LIMIT = 0.01  # a shard is dealt as one unit when every reader of a part would re-read more than this


def shard_units(record: ShardRecord, packed: bool) -> list[Unit]:
    """A shard's units: one per block with kept documents, or the whole shard as one unit when reading a part
    costs blocks every reader must load (parquet magic and footer) above ``SHARED_READ_LIMIT`` of its bytes."""
    kept = [b for b, blk in enumerate(record.blocks) if blk["kept_docs"] and _units_of(blk, packed)]
    shared = sum(blk["end"] - blk["start"] for blk in record.blocks if not blk["records"])
    parts = [(b,) for b in kept] if shared <= SHARED_READ_LIMIT * record.size_bytes else [tuple(kept)] * bool(kept)
    return [
        Unit(record.shard, part, sum(record.blocks[b]["kept_docs"] for b in part),
             sum(_units_of(record.blocks[b], packed) for b in part),
             sum(_units_of(record.blocks[b], True) for b in part))
        for part in parts
    ]  # fmt: skip


def manifest_sources(manifest: Manifest, mode: str = "packed") -> list[SourcePlan]:
    """The manifest's source/subsets in order of first appearance, with their shards, units and kept totals."""
    grouped: dict[str, list] = {}
    for rec in manifest.shards:
        grouped.setdefault(rec.key, []).append(rec)
    counts = counts_by_subset(manifest.shards)
    packed = mode == "packed"
    return [
        SourcePlan(
            key=key,
            source=recs[0].source,
            subset=recs[0].subset,
            shards=tuple(r.shard for r in recs),
            units=tuple(u for r in recs for u in shard_units(r, packed)),
            kept_docs=counts[key].docs_kept,
            kept_tokens=counts[key].tokens,
            kept_segments=counts[key].segments,
        )
        for key, recs in grouped.items()
    ]


def manifest_weights(manifest: Manifest) -> dict[str, float] | None:
    """Mixing weights of the manifest's mixture entries (a subset without one keeps its natural share of the tokens:
    :func:`~elm_data.manifests.mixture.resolved_weights`), or None when no entry sets one."""
    kept = {key: counts.tokens for key, counts in counts_by_subset(manifest.shards).items()}
    return resolved_weights(manifest.info["mixture"], kept)


def manifest_mode(info: dict[str, Any]) -> str:
    return info["sequences"]["mode"]


def check_mode_available(info: dict[str, Any], mode: str) -> None:
    """CoreNet pieces are only counted when the manifest was built in corenet mode."""
    if mode == "corenet" and manifest_mode(info) != "corenet":
        raise PlanError(
            "this manifest was built in packed mode, so it records whole documents and not CoreNet's "
            "2048-word pieces; rebuild it with `sequences: {mode: corenet}` in the mixture to stream corenet sequences"
        )


def default_partitions(manifest: Manifest, config: PlanConfig) -> int:
    """The largest power of two <= 64 that leaves at least ``UNITS_PER_PARTITION`` units per partition and
    with which weighted mode can meet its weights (``config.partitions`` is ignored)."""
    units = sum(len(shard_units(r, config.mode == "packed")) for r in manifest.shards)
    p = 1
    while p * 2 <= MAX_DEFAULT_PARTITIONS and p * 2 * UNITS_PER_PARTITION <= units:
        p *= 2
    while p > 1:
        try:
            Plan(manifest, replace(config, partitions=p))
            return p
        except PlanError:
            p //= 2
    return p


def source_runs(units: tuple[Unit, ...], partitions: int) -> list[list[Unit]]:
    """Cut one source's units (in order) into ``partitions`` contiguous runs of about equal stream units."""
    total = sum(u.units for u in units)
    runs: list[list[Unit]] = [[] for _ in range(partitions)]
    before = 0
    for u in units:
        middle = before + u.units / 2
        runs[min(partitions - 1, int(middle * partitions / total))].append(u)
        before += u.units
    return runs


def deal_units(sources: list[SourcePlan], partitions: int) -> list[list[list[Unit]]]:
    """``[p][s]``: the units of source ``s`` that partition ``p`` owns.

    Each source is cut into contiguous runs (:func:`source_runs`); run ``k`` goes to partition
    ``(k + shift_s) % P``, where ``shift_s`` is chosen, largest source first, to keep the partitions'
    loads as even as possible (least sum of squared loads): sources with fewer units than partitions would
    otherwise pile up in the same partitions. A pure function of the manifest and ``P``.
    """
    runs = [source_runs(s.units, partitions) for s in sources]
    sizes = np.array([[sum(u.units for u in run) for run in per] for per in runs], dtype=np.float64).reshape(
        len(sources), partitions
    )
    rotate = (np.arange(partitions)[None, :] - np.arange(partitions)[:, None]) % partitions  # [shift, partition]
    loads = np.zeros(partitions)
    shifts = [0] * len(sources)
    for s in sorted(range(len(sources)), key=lambda i: (-sizes[i].sum(), i)):
        candidates = loads[None, :] + sizes[s][rotate]
        shifts[s] = int(np.argmin((candidates**2).sum(axis=1)))  # the most even loads (least sum of squares)
        loads = candidates[shifts[s]]
    return [[runs[s][(p - shifts[s]) % partitions] for s in range(len(sources))] for p in range(partitions)]


SHARE_TOLERANCE = 1e-4  # how far the stream's long-run token share of a source may be from its weight share


def partition_shares(held: np.ndarray, weights: np.ndarray, keys: list[str]) -> np.ndarray:
    """Token shares ``[P, S]``: each partition's sum to 1 over the sources it holds, and their mean over the
    partitions is the target mix to within ``SHARE_TOLERANCE`` (iterative proportional fitting; every partition
    makes the same tokens per round, so the stream as a whole then follows the weights). Raises
    :class:`PlanError` when no such shares exist."""
    target = weights / weights.sum()
    shares = held * target[None, :]
    for _ in range(20_000):
        shares /= shares.sum(axis=1, keepdims=True)
        mean = shares.mean(axis=0)
        if np.abs(mean - target).max() <= SHARE_TOLERANCE:
            return shares
        shares *= np.divide(target, mean, out=np.zeros_like(target), where=mean > 0)[None, :]
    short = [f"{k} (weight share {t:.3f}, in {int(h.sum())} of {len(held)} partitions)"
             for k, t, h in zip(keys, target, held.T, strict=True) if t > h.sum() / len(held)]  # fmt: skip
    raise PlanError(
        f"the mixing weights cannot be met with {len(held)} partitions: {short or 'sources held too unevenly'}; "
        "stream with fewer partitions (--partitions) or rebuild the manifest with smaller blocks (--block-bytes)"
    )


class Plan:
    """The partitions of a manifest's units, the mixing weights, and the global batch order."""

    def __init__(self, manifest: Manifest, config: PlanConfig):
        check_mode_available(manifest.info, config.mode)
        self.manifest = manifest
        self.config = config
        self.sources = manifest_sources(manifest, config.mode)
        keys = [s.key for s in self.sources]
        if config.weights is None:
            self.weights = [float(s.kept_tokens) for s in self.sources]
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
        self.units = deal_units(self.sources, config.partitions)  # [p][s]: units of source s in partition p
        self.draw_weights = None if config.weights is None else self._draw_weights()

    def _draw_weights(self) -> list[list[float]]:
        """``[p][s]``: weighted mode draws source ``s`` in partition ``p`` ∝ its token share there / its mean framed
        tokens per document there; the shares (:func:`partition_shares`) average to the mix over all partitions."""
        tokens = np.array([[sum(u.tokens for u in run) for run in runs] for runs in self.units], dtype=np.float64)
        docs = np.array([[sum(u.kept_docs for u in run) for run in runs] for runs in self.units], dtype=np.float64)
        weights = np.array(self.weights)
        held = (docs > 0) & (weights[None, :] > 0)
        lacking = [p for p in range(self.partitions) if not held[p].any()]
        if lacking:
            named = [s.key for s, w in zip(self.sources, self.weights, strict=True) if w > 0]
            raise PlanError(
                f"stream partitions {lacking[:8]} of {self.partitions} hold no documents of the weighted sources "
                f"{named} (they have fewer blocks than partitions): stream with fewer partitions (--partitions) or "
                "rebuild the manifest with smaller blocks (--block-bytes)"
            )
        shares = partition_shares(held, weights, [s.key for s in self.sources])
        return (shares * np.divide(docs, tokens, out=np.zeros_like(docs), where=tokens > 0)).tolist()

    @property
    def partitions(self) -> int:
        return self.config.partitions

    def partition_batches(self, p: int) -> int | None:
        """Batches partition ``p`` makes before its data ends (None: endless)."""
        c = self.config
        if not c.natural or c.epochs is None:
            return None
        units = sum(u.units for run in self.units[p] for u in run) * c.epochs
        return -(-units // c.units_per_batch)

    def rounds(self) -> int | None:
        """Rounds of ``P`` global batches in a finite stream (None: endless)."""
        counts = [self.partition_batches(p) for p in range(self.partitions)]
        return None if None in counts else max(counts, default=0)

    def readers_layout(self, rank: int, world_size: int, workers: int) -> list[list[int]]:
        """Partitions read by ``rank``'s worker, for each worker (``workers`` >= 1), in slot order."""
        P = self.partitions
        if P % (world_size * workers):
            raise PlanError(
                f"the stream has {P} partitions, which {world_size} rank(s) × {workers} worker(s) = "
                f"{world_size * workers} readers do not divide; choose ranks × workers dividing {P} "
                "(partitions are fixed by the plan so that every layout yields the same batches)"
            )
        return [[q * world_size + rank for q in range(P // world_size) if q % workers == w] for w in range(workers)]
