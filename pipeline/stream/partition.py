"""One partition's stream: its units mixed by source, packed into batches, resumable from a small cursor.

A partition's documents come from its own units only. Natural mode spreads each source's kept documents
evenly over the partition's epoch (:func:`~.mixing.proportional_draws`, phases seeded per partition and
epoch; epoch ``e > 0`` visits the units in a seeded permutation); weighted mode draws each next source by
its weight (:class:`~.mixing.WeightedDraws`, seeded per partition) and restarts an exhausted source.

A *cursor* is the state at a batch boundary, in plain types (it is saved in checkpoints):
``{"batch": t, "head_start": u, "mixer": m}`` — the partition's next batch ``t``, the first unit ``u`` of
the document that holds the batch's first unit, and the mixer's state just before that document was
drawn (natural: ``{"epoch", "drawn"}``; weighted: ``{"draws", "drawn"}``; ``drawn``: documents taken
per source). ``{"batch": t, "done": True}`` marks a partition whose data has ended. Resuming from a
cursor reads the ledger of the units it needs and nothing before: its cost does not grow with ``t``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypedDict

from .mixing import WeightedDraws, derive_seed, permutation, proportional_draws
from .plan import BatchPlan, Plan, PlanError, PlannedDoc, Units


class Mixer(TypedDict, total=False):
    """Where a partition's source draws stand: natural mode's ``epoch``, or weighted mode's ``draws`` so far,
    and the documents ``drawn`` from each source (in this epoch, natural mode)."""

    epoch: int
    draws: int
    drawn: list[int]


class Cursor(TypedDict, total=False):
    """A partition's position before its batch ``batch``: the head document's first unit and the mixer before
    it was drawn, or ``done`` once its data has ended. Plain types: saved in the stream state."""

    batch: int
    head_start: int
    mixer: Mixer
    done: bool


LEDGER_COLUMNS = ["index", "doc_id", "tokens", "segments"]


def _kept_rows(table) -> list[tuple]:
    """The ``LEDGER_COLUMNS`` of a ledger block's kept records, in record order (plain Python: a block holds
    few rows, and pyarrow's compute module costs ~30 ms of start-up)."""
    cols = table.select([*LEDGER_COLUMNS, "status"]).to_pydict()
    return [row[:-1] for row in zip(*cols.values(), strict=True) if row[-1] == "kept"]


class PartitionWalk:
    """The batches of partition ``p`` from any cursor, with the cursor after each."""

    def __init__(self, plan: Plan, p: int):
        self.plan, self.p = plan, p
        self.config = plan.config
        self.runs: list[Units] = plan.units[p]
        self.kept = [int(run.kept_docs.sum()) for run in self.runs]
        self.weighted: WeightedDraws | None = None
        if plan.draw_weights is not None:
            self.weighted = WeightedDraws(plan.draw_weights[p], derive_seed(self.config.seed, "mix", p))

    def start(self) -> Cursor:
        zero = [0] * len(self.runs)
        mixer = {"epoch": 0, "drawn": zero} if self.config.natural else {"draws": 0, "drawn": zero}
        return {"batch": 0, "head_start": 0, "mixer": mixer}

    # -- documents ---------------------------------------------------------------------------------
    def _draws(self, mixer: Mixer) -> Iterator[tuple[int, int, int, Mixer]]:
        """``(source, epoch, position in that epoch, mixer state before this draw)`` for every next
        document."""
        c = self.config
        drawn = list(mixer["drawn"])
        if c.natural:
            epoch = mixer["epoch"]
            while (c.epochs is None or epoch < c.epochs) and any(self.kept):
                for i in proportional_draws(self.kept, derive_seed(c.seed, "mix", self.p, epoch), drawn):
                    yield i, epoch, drawn[i], {"epoch": epoch, "drawn": list(drawn)}
                    drawn[i] += 1
                epoch, drawn = epoch + 1, [0] * len(drawn)
            return
        if self.weighted is None:
            return
        n = mixer["draws"]
        while True:
            i = self.weighted.source_at(n)
            epoch, k = divmod(drawn[i], self.kept[i])
            yield i, epoch, k, {"draws": n, "drawn": list(drawn)}
            drawn[i] += 1
            n += 1

    def _epoch_run(self, src: int, epoch: int) -> Units:
        """Source ``src``'s units in the order this partition reads them in ``epoch``."""
        run = self.runs[src]
        if epoch:
            run = run.take(permutation(len(run), self.config.seed, self.plan.sources[src].key, self.p, epoch))
        return run

    def block_order(self, src: int) -> Iterator[tuple[int, int]]:
        """Every ``(shard, block)`` source ``src`` reads, in order, epoch after epoch (what read-ahead
        fetches)."""
        epoch = 0
        while (self.config.epochs is None or epoch < self.config.epochs) and len(self.runs[src]):
            run = self._epoch_run(src, epoch)
            for i in range(len(run)):
                shard = int(run.shard[i])
                yield from ((shard, b) for b in run.blocks(i))
            epoch += 1

    def _source_docs(self, src: int, epoch: int, k: int) -> Iterator[tuple]:
        """Kept documents of source ``src`` in this partition's ``epoch``, from its ``k``-th on."""
        run = self._epoch_run(src, epoch)
        counts = self.plan.manifest.block_counts
        kept_docs = counts.column("kept_docs")
        for i in range(len(run)):
            if k >= run.kept_docs[i]:  # the whole unit lies before the k-th document
                k -= int(run.kept_docs[i])
                continue
            shard = int(run.shard[i])
            for block in run.blocks(i):
                in_block = int(kept_docs[counts.offsets[shard] + block])
                if k >= in_block:
                    k -= in_block
                    continue
                table = self.plan.manifest.block_documents(shard, block)
                rows = _kept_rows(table)
                kept = frozenset(row[0] for row in rows)  # the block's kept records, wherever the walk starts
                for row in rows[k:]:
                    yield shard, *row, kept
                k = 0

    def docs(self, cursor: Cursor) -> Iterator[tuple[PlannedDoc, Mixer]]:
        """Documents from the cursor's head document on, each with the mixer state before it was drawn."""
        packed = self.config.mode == "packed"
        start = cursor["head_start"]
        sources: dict[int, list] = {}  # src -> [epoch, next position, iterator]
        for src, epoch, k, before in self._draws(cursor["mixer"]):
            current = sources.get(src)
            if current is None or current[0] != epoch or current[1] != k:
                current = sources[src] = [epoch, k, self._source_docs(src, epoch, k)]
            shard, index, doc_id, tokens, segments, block_kept = next(current[2])
            current[1] += 1
            units = tokens + 2 * segments if packed else segments
            yield PlannedDoc(src, shard, index, doc_id, tokens, segments, start, units, block_kept), before
            start += units

    # -- batches -----------------------------------------------------------------------------------
    def batches(self, cursor: Cursor) -> Iterator[tuple[BatchPlan, Cursor]]:
        """``(batch, cursor after it)`` from the cursor on, until the partition's data ends."""
        if cursor.get("done"):
            return
        span, t = self.config.units_per_batch, cursor["batch"]
        pending: list[tuple[PlannedDoc, Mixer]] = []  # documents overlapping batch t
        for doc, before in self.docs(cursor):
            while doc.start >= (t + 1) * span:
                yield self._batch(t, pending), self._cursor(t + 1, pending, (doc, before))
                t += 1
                pending = [x for x in pending if x[0].start + x[0].units > t * span]
            pending.append((doc, before))
        while pending:  # the data ended: what is left, in batches of which the last may be short
            end = max(d.start + d.units for d, _ in pending)
            batch = self._batch(t, pending, end)
            t += 1
            pending = [x for x in pending if x[0].start + x[0].units > t * span]
            yield batch, self._cursor(t, pending, None)

    def _batch(self, t: int, pending: list, end: int | None = None) -> BatchPlan:
        c = self.config
        span = c.units_per_batch
        sequences = c.batch_size
        if end is not None:
            units = min(end - t * span, span)
            sequences = -(-units // c.window) if c.mode == "packed" else units
        return BatchPlan(t * self.plan.partitions + self.p, t * span, sequences, [d for d, _ in pending])

    def _cursor(self, t: int, pending: list, following: tuple | None) -> Cursor:
        """The cursor of batch ``t``: its head document is the first still open, else the one that follows."""
        span = self.config.units_per_batch
        head = next((x for x in pending if x[0].start + x[0].units > t * span), following)
        if head is None:
            return {"batch": t, "done": True}
        return {"batch": t, "head_start": head[0].start, "mixer": head[1]}

    def empty(self, t: int) -> BatchPlan:
        """Batch ``t`` of a partition whose data has ended: no sequences (keeps every reader in step)."""
        return BatchPlan(t * self.plan.partitions + self.p, t * self.config.units_per_batch, 0, [])


def first_batch_of(p: int, global_batch: int, partitions: int) -> int:
    """Partition ``p``'s next batch when the stream stands at ``global_batch``: its batches before it."""
    return max(0, -(-(global_batch - p) // partitions))


def planned_batches(
    plan: Plan, partitions: Iterable[int], global_batch: int = 0, cursors: Mapping[int, Cursor] | None = None
) -> Iterator[tuple[int, BatchPlan, Cursor]]:
    """``(partition, batch, cursor after it)`` for ``partitions``, in global batch order from ``global_batch``
    on.

    ``cursors[p]``: partition ``p``'s cursor at its first batch at or after ``global_batch``
    (:func:`first_batch_of`); absent means the partition's start, which is only right when that first
    batch is 0. A partition whose data ended gives empty batches until the last round of a finite stream, so
    every reader yields the same number of batches per round. A pure function of its arguments.
    """
    partitions, cursors = list(partitions), cursors or {}
    P, rounds = plan.partitions, plan.rounds()
    walks = {p: PartitionWalk(plan, p) for p in partitions}
    firsts = {p: first_batch_of(p, global_batch, P) for p in partitions}
    batches = {
        p: walks[p].batches(_cursor_at(walks[p], firsts[p], cursors.get(p), global_batch)) for p in partitions
    }
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


def _cursor_at(walk: PartitionWalk, first: int, cursor: Cursor | None, global_batch: int) -> Cursor:
    """The cursor partition ``walk.p`` resumes from at its batch ``first``; an error when it stands
    elsewhere."""
    if cursor is None and first == 0:
        return walk.start()
    if cursor is None or cursor["batch"] != first:
        raise PlanError(
            f"stream state has no cursor for partition {walk.p} at its batch {first} "
            f"(global batch {global_batch}); it was saved at another position"
        )
    return cursor
