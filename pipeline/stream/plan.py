"""The stream's plan: partitions of the manifest's blocks and the global order of batches, from the manifest
alone.

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

import contextlib
import ctypes
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from elm_data.core.errors import ElmDataError
from elm_data.core.settings import Settings, SettingsError, nearest
from elm_data.manifests.manifest import Manifest
from elm_data.manifests.mixture import resolved_weights
from elm_data.manifests.shard_records import counts_by_subset
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
    # token shares per "source/subset"; None: natural (each doc once/epoch)
    weights: dict[str, float] | None = None
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


UNIT_FIELDS = ("shard", "lo", "hi", "kept_docs", "units", "tokens")


class Units:
    """A sequence of :class:`Unit` held as arrays (``UNIT_FIELDS``; a unit's blocks are those of ``[lo, hi)``
    of its shard that hold kept stream units, ``readable[offsets[shard] + b]``): a plan costs a few numbers
    per block, not Python objects. Indexing with an int or iterating makes the :class:`Unit`; a slice or
    :meth:`take` a view.
    """

    __slots__ = (*UNIT_FIELDS, "readable", "offsets")

    def __init__(self, columns: dict[str, np.ndarray], readable: np.ndarray, offsets: np.ndarray):
        for name in UNIT_FIELDS:
            setattr(self, name, columns[name])
        self.readable, self.offsets = readable, offsets

    def take(self, index: Any) -> Units:
        return Units({n: getattr(self, n)[index] for n in UNIT_FIELDS}, self.readable, self.offsets)

    def __len__(self) -> int:
        return len(self.shard)

    def blocks(self, i: int) -> tuple[int, ...]:
        shard, lo, hi = int(self.shard[i]), int(self.lo[i]), int(self.hi[i])
        if hi - lo == 1:
            return (lo,)
        first = int(self.offsets[shard])
        return tuple(b for b in range(lo, hi) if self.readable[first + b])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.take(i)
        i = range(len(self))[i]
        return Unit(
            int(self.shard[i]),
            self.blocks(i),
            int(self.kept_docs[i]),
            int(self.units[i]),
            int(self.tokens[i]),
        )

    def __iter__(self) -> Iterator[Unit]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class SourcePlan:
    """One source/subset of the manifest: its shards (manifest order), units and kept totals."""

    key: str  # "source/subset"
    source: str
    subset: str
    shards: tuple[int, ...]
    units: Units
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
    # the kept records of the document's block: what the block's reader decodes (its ledger rows are read and
    # checked once, by the walk; one set shared by the block's documents)
    block_kept: frozenset[int] = frozenset()


@dataclass
class BatchPlan:
    """The documents that fill one batch of a partition, in stream order."""

    batch: int  # global batch index
    start: int  # first unit of the batch in its partition's stream
    sequences: int  # sequences in this batch (< batch_size only at the end of a finite partition; may be 0)
    docs: list[PlannedDoc] = field(default_factory=list)


# a shard is dealt as one unit when every reader of a part would re-read more than this
SHARED_READ_LIMIT = 0.01


def manifest_units(manifest: Manifest, packed: bool, source_of_shard: np.ndarray) -> tuple[Units, np.ndarray]:
    """Every unit of the manifest, grouped by source (``source_of_shard``) and in manifest order within each,
    with the bounds of each source's run (``units[bounds[s]:bounds[s + 1]]``). A unit is one block with kept
    stream units, or one whole shard when reading a part of it costs blocks every reader must load (parquet
    magic and footer: blocks without records) above ``SHARED_READ_LIMIT`` of its bytes. Array work, no object
    per block, and few temporaries (every process of a run plans)."""
    counts = manifest.block_counts
    kept_docs, segments = counts.column("kept_docs"), counts.column("kept_segments")
    framed = counts.column("kept_tokens") + 2 * segments
    units = framed if packed else segments
    readable = (kept_docs > 0) & (units > 0)
    picked = np.flatnonzero(readable)
    shard_of = (np.searchsorted(counts.offsets, picked, side="right") - 1).astype(np.int32)
    if np.any(np.diff(source_of_shard[shard_of]) < 0):  # sources interleaved in the manifest: group them
        order = np.argsort(source_of_shard[shard_of], kind="stable")
        picked, shard_of = picked[order], shard_of[order]
    whole = _whole_shards(manifest, counts)
    if whole[shard_of].any():
        # blocks of one unit share a key
        key = np.where(whole[shard_of], -1 - shard_of.astype(np.int64), picked)
        starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        ends = np.concatenate([starts[1:], [len(picked)]]).astype(np.int64)
    else:  # every unit is one block
        starts = ends = None
    shard = shard_of if starts is None else shard_of[starts]
    first = counts.offsets[shard]
    lo = picked if starts is None else picked[starts]
    hi = picked if ends is None else picked[ends - 1]

    def summed(values: np.ndarray) -> np.ndarray:
        if starts is None or not len(starts):
            return values[picked]
        return np.add.reduceat(values[picked], starts)

    columns = {
        "shard": shard,
        "lo": (lo - first).astype(np.int32),
        "hi": (hi - first + 1).astype(np.int32),
        "kept_docs": summed(kept_docs),
        "units": summed(units),
        "tokens": summed(framed),
    }
    bounds = np.searchsorted(source_of_shard[shard], np.arange(source_of_shard.max(initial=0) + 2))
    return Units(columns, readable, counts.offsets), bounds


def _whole_shards(manifest: Manifest, counts) -> np.ndarray:
    """Per shard: whether its blocks without records (parquet magic, footer) exceed ``SHARED_READ_LIMIT`` of
    it."""
    bare = np.flatnonzero(counts.column("records") == 0)
    owner = np.searchsorted(counts.offsets, bare, side="right") - 1
    nbytes = counts.column("end")[bare] - counts.column("start")[bare]
    shared = np.zeros(len(counts.offsets) - 1, dtype=np.int64)
    np.add.at(shared, owner, nbytes)
    return shared > SHARED_READ_LIMIT * np.array([r.size_bytes for r in manifest.shards], dtype=np.float64)


_SOURCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # manifest -> {mode: sources}, made once


def manifest_sources(manifest: Manifest, mode: str = "packed") -> list[SourcePlan]:
    """The manifest's source/subsets in order of first appearance, with their shards, units and kept totals
    (made once per manifest object and mode)."""
    made = _SOURCES.setdefault(manifest, {})
    if mode not in made:
        made[mode] = _make_sources(manifest, mode)
    return made[mode]


def _make_sources(manifest: Manifest, mode: str) -> list[SourcePlan]:
    grouped: dict[str, list] = {}
    for rec in manifest.shards:
        grouped.setdefault(rec.key, []).append(rec)
    counts = counts_by_subset(manifest.shards)
    source_of_shard = np.zeros(len(manifest.shards), dtype=np.int64)
    for i, recs in enumerate(grouped.values()):
        source_of_shard[[r.shard for r in recs]] = i
    units, bounds = manifest_units(manifest, mode == "packed", source_of_shard)
    return [
        SourcePlan(
            key=key,
            source=recs[0].source,
            subset=recs[0].subset,
            shards=tuple(r.shard for r in recs),
            units=units[int(bounds[i]) : int(bounds[i + 1])],
            kept_docs=counts[key].docs_kept,
            kept_tokens=counts[key].tokens,
            kept_segments=counts[key].segments,
        )
        for i, (key, recs) in enumerate(grouped.items())
    ]


def manifest_weights(manifest: Manifest) -> dict[str, float] | None:
    """Mixing weights of the manifest's mixture entries (a subset without one keeps its natural share of the
    tokens: :func:`~elm_data.manifests.mixture.resolved_weights`), or None when no entry sets one."""
    kept = {key: counts.tokens for key, counts in counts_by_subset(manifest.shards).items()}
    return resolved_weights(manifest.info["mixture"], kept)


def manifest_mode(info: dict[str, Any]) -> str:
    return info["sequences"]["mode"]


def check_mode_available(info: dict[str, Any], mode: str) -> None:
    """CoreNet pieces are only counted when the manifest was built in corenet mode."""
    if mode == "corenet" and manifest_mode(info) != "corenet":
        raise PlanError(
            "this manifest was built in packed mode, so it records whole documents and not CoreNet's "
            "2048-word pieces; rebuild it with `sequences: {mode: corenet}` in the mixture to stream corenet "
            "sequences"
        )


def default_partitions(manifest: Manifest, config: PlanConfig) -> int:
    """The largest power of two <= 64 that leaves at least ``UNITS_PER_PARTITION`` units per partition and
    with which weighted mode can meet its weights (``config.partitions`` is ignored). No :class:`Plan` is
    made: each candidate deals the units and fits the weights only (:func:`draw_weights`)."""
    check_mode_available(manifest.info, config.mode)
    sources = manifest_sources(manifest, config.mode)
    units = sum(len(s.units) for s in sources)
    p = 1
    while p * 2 <= MAX_DEFAULT_PARTITIONS and p * 2 * UNITS_PER_PARTITION <= units:
        p *= 2
    if config.weights is None:
        return p
    weights = source_weights(sources, config.weights)
    while p > 1:
        try:
            draw_weights(sources, weights, deal_units(sources, p))
            return p
        except PlanError:
            p //= 2
    return p


def source_weights(sources: list[SourcePlan], weights: Mapping[str, float] | None) -> list[float]:
    """Each source's mixing weight, in order: ``weights``' (0 where not named), or its kept tokens (natural
    shares) when None. Raises :class:`PlanError` for a name no source has, a weighted source without kept
    documents, or weights that are all zero."""
    keys = [s.key for s in sources]
    if weights is None:
        return [float(s.kept_tokens) for s in sources]
    unknown = sorted(set(weights) - set(keys))
    if unknown:
        guess = nearest(unknown[0], keys)
        hint = f" (did you mean {guess!r} for {unknown[0]!r}?)" if guess else ""
        raise PlanError(f"weights name source/subsets not in the manifest: {unknown}; it has {keys}{hint}")
    out = [float(weights.get(k, 0.0)) for k in keys]
    empty = [s.key for s, w in zip(sources, out, strict=True) if w > 0 and s.kept_docs == 0]
    if empty:
        raise PlanError(f"source/subsets with a weight but no kept documents: {empty}")
    if not any(w > 0 for w in out):
        raise PlanError("all mixing weights are zero")
    return out


def draw_weights(
    sources: list[SourcePlan], weights: list[float], units: list[list[Units]]
) -> list[list[float]]:
    """``[p][s]``: weighted mode draws source ``s`` in partition ``p`` ∝ its token share there / its mean
    framed tokens per document there; the shares (:func:`partition_shares`) average to the mix over all
    partitions. ``units``: :func:`deal_units`' ``[p][s]``. Raises :class:`PlanError` when the partitions
    cannot meet them."""
    tokens = np.array([[run.tokens.sum() for run in runs] for runs in units], dtype=np.float64)
    docs = np.array([[run.kept_docs.sum() for run in runs] for runs in units], dtype=np.float64)
    weights_array = np.array(weights)
    held = (docs > 0) & (weights_array[None, :] > 0)
    lacking = [p for p in range(len(units)) if not held[p].any()]
    if lacking:
        named = [s.key for s, w in zip(sources, weights, strict=True) if w > 0]
        raise PlanError(
            f"stream partitions {lacking[:8]} of {len(units)} hold no documents of the weighted sources "
            f"{named} (they have fewer blocks than partitions): stream with fewer partitions (--partitions) "
            "or "
            "rebuild the manifest with smaller blocks (--block-bytes)"
        )
    shares = partition_shares(held, weights_array, [s.key for s in sources])
    return (shares * np.divide(docs, tokens, out=np.zeros_like(docs), where=tokens > 0)).tolist()


def source_runs(units: Units, partitions: int) -> list[Units]:
    """Cut one source's units (in order) into ``partitions`` contiguous runs of about equal stream units: a
    unit goes to the run its middle falls in."""
    total = int(units.units.sum())
    if not total:
        return [units] + [units[0:0]] * (partitions - 1)
    middle = (np.cumsum(units.units) - units.units) + units.units / 2
    run = np.minimum(partitions - 1, (middle * partitions / total).astype(np.int64))
    bounds = np.searchsorted(run, np.arange(partitions + 1), side="left")
    return [units[int(bounds[k]) : int(bounds[k + 1])] for k in range(partitions)]


def deal_units(sources: list[SourcePlan], partitions: int) -> list[list[Units]]:
    """``[p][s]``: the units of source ``s`` that partition ``p`` owns.

    Each source is cut into contiguous runs (:func:`source_runs`); run ``k`` goes to partition
    ``(k + shift_s) % P``, where ``shift_s`` is chosen, largest source first, to keep the partitions'
    loads as even as possible (least sum of squared loads): sources with fewer units than partitions would
    otherwise pile up in the same partitions. A pure function of the manifest and ``P``.
    """
    runs = [source_runs(s.units, partitions) for s in sources]
    sizes = np.array([[run.units.sum() for run in per] for per in runs], dtype=np.float64).reshape(
        len(sources), partitions
    )
    # [shift, partition]
    rotate = (np.arange(partitions)[None, :] - np.arange(partitions)[:, None]) % partitions
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
    partitions is the target mix to within ``SHARE_TOLERANCE`` (iterative proportional fitting; every
    partition makes the same tokens per round, so the stream as a whole then follows the weights). Raises
    :class:`PlanError` when no such shares exist."""
    target = weights / weights.sum()
    shares = held * target[None, :]
    # A source held by k of P partitions has a mean share of at most k / P (each partition's shares sum to 1):
    # when that is short of its target by more than the tolerance, no fitting converges, so none is tried (at
    # start-up).
    hopeless = (target - held.sum(axis=0) / len(held)).max() > SHARE_TOLERANCE
    for _ in range(0 if hopeless else 20_000):
        shares /= shares.sum(axis=1, keepdims=True)
        mean = shares.mean(axis=0)
        if np.abs(mean - target).max() <= SHARE_TOLERANCE:
            return shares
        shares *= np.divide(target, mean, out=np.zeros_like(target), where=mean > 0)[None, :]
    short = [
        f"{k} (weight share {t:.3f}, in {int(h.sum())} of {len(held)} partitions)"
        for k, t, h in zip(keys, target, held.T, strict=True)
        if t > h.sum() / len(held)
    ]
    raise PlanError(
        f"the mixing weights cannot be met with {len(held)} partitions: "
        f"{short or 'sources held too unevenly'}; "
        "stream with fewer partitions (--partitions) or rebuild the manifest with smaller blocks "
        "(--block-bytes)"
    )


def release_freed_heap() -> None:
    """Hand the heap that planning's temporary arrays freed back to the OS (glibc keeps it otherwise, and
    every process of a run plans: at 10⁶ blocks ~40 MiB of each process's RSS). A no-op where there is no
    glibc."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(0)


class Plan:
    """The partitions of a manifest's units, the mixing weights, and the global batch order."""

    def __init__(self, manifest: Manifest, config: PlanConfig):
        check_mode_available(manifest.info, config.mode)
        self.manifest = manifest
        self.config = config
        self.sources = manifest_sources(manifest, config.mode)
        self.weights = source_weights(self.sources, config.weights)
        self.units = deal_units(self.sources, config.partitions)  # [p][s]: units of source s in partition p
        weighted = config.weights is not None
        self.draw_weights = draw_weights(self.sources, self.weights, self.units) if weighted else None
        release_freed_heap()

    @property
    def partitions(self) -> int:
        return self.config.partitions

    def partition_batches(self, p: int) -> int | None:
        """Batches partition ``p`` makes before its data ends (None: endless)."""
        c = self.config
        if not c.natural or c.epochs is None:
            return None
        units = sum(int(run.units.sum()) for run in self.units[p]) * c.epochs
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
        return [
            [q * world_size + rank for q in range(P // world_size) if q % workers == w]
            for w in range(workers)
        ]
