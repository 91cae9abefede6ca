"""The documents of a reader's next batches, fetched, passed and framed together: one encode call per step.

A batch needs the framed tokens of its documents. Handling each batch's new documents on their own costs one
``DocumentPass.process`` (one SentencePiece call) and one array conversion per batch: thousands of small calls
at small batch sizes. Instead the reader looks ahead along its planned batches, in global order, in *steps* of
about ``LOOKAHEAD_TOKENS`` planned tokens (:func:`steps`), and :class:`PassedAhead` handles a step's new
documents at once: fetched in plan order (each partition's fetcher still reads forward, one document after the
other, as before), passed in ONE call, each checked against its ledger row, and framed into one array (a view
per document). A framed document is held until the last batch that needs it is made.

What a batch holds is unchanged (the same documents, tokens and spans); only *when* a document is read and
tokenized changes. Errors keep their place: when a document cannot be fetched or passed, or its pass outcome
differs from the ledger, the documents planned before it are still handed out, and the error is raised by the
batch that needs it, exactly as without lookahead (fetch and pass errors before ledger-check errors, as
the per-batch order was). ``LOOKAHEAD_TOKENS = 0`` makes every batch one step (the per-batch path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from elm_data.pipeline.document_pass import DocumentPass, PassResult, PendingPass
from elm_data.sources.document import Document

from .plan import BatchPlan, PlannedDoc
from .reading import DocumentFetcher, StreamIntegrityError
from .sequences import FramedDoc, frame_documents

# planned tokens (stream units) whose new documents are fetched and passed together
LOOKAHEAD_TOKENS = 1 << 16

Planned = tuple[int, BatchPlan, Any]  # (partition, batch plan, cursor after it)
Key = tuple[int, int, int]  # (shard, record index, stream position) of a document: one occurrence of it


def _key(doc: PlannedDoc) -> Key:
    # a weighted stream draws a document again after its source restarts
    return doc.shard, doc.index, doc.start


def steps(planned: Iterable[Planned], budget: int) -> Iterator[list[Planned]]:
    """``planned`` in consecutive runs whose documents starting in them hold about ``budget`` units (at least
    one batch per run: with ``budget`` <= 0, one run per batch). When the plan fails (a ledger refused as it
    is read), the batches planned before the failure come out first, then the error, as without lookahead."""
    run: list[Planned] = []
    units = 0
    items = iter(planned)
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except Exception:
            if run:
                yield run
            raise
        run.append(item)
        units += sum(d.units for d in item[1].docs if d.start >= item[1].start)
        if units >= budget:
            yield run
            run, units = [], 0
    if run:
        yield run


def check_against_ledger(doc: PlannedDoc, result: PassResult, shards) -> None:
    """Invariant 2, document by document: what the pass gives now is the kept document the ledger recorded."""
    if not result.kept or result.tokens != doc.tokens or len(result.segments) != doc.segments:
        raise StreamIntegrityError(
            f"document {doc.doc_id} (shard {doc.shard}, record {doc.index}, {shards[doc.shard].uri}): "
            f"the pass now gives {result.status} with {result.tokens} tokens in {len(result.segments)} "
            f"segment(s); the manifest recorded kept, {doc.tokens} tokens, {doc.segments} segment(s) "
            "(filter or tokenizer drift: rebuild the manifest)"
        )


@dataclass
class Step:
    """A run's documents in flight: claimed (``wanted``, in the order its batches need them), ``fetched`` (a
    prefix of them: a fetch failure stops it) and their pass (``passing``: its tokenizer call running on the
    pass thread, or the failure of its cheap rules)."""

    wanted: list[tuple[int, PlannedDoc]]
    fetched: list[Document]
    passing: tuple[PendingPass, Future] | Exception | None


class PassedAhead:
    """Per partition, the framed documents of the batches planned next, until the last batch that needs each.

    ``halt``: the first fetch or pass failure in plan order (nothing after it is fetched); ``refused``: the
    documents whose pass outcome the ledger check refused, with that error.
    """

    def __init__(self, doc_pass: DocumentPass, fetcher: Callable[[int], DocumentFetcher], shards):
        self.doc_pass, self.fetcher, self.shards = doc_pass, fetcher, shards
        self.held: dict[int, dict[Key, FramedDoc]] = {}
        self.halt: Exception | None = None
        self.refused: dict[Key, Exception] = {}
        self.pool: ThreadPoolExecutor | None = None  # the pass thread, made on first use

    def prepare(self, run: list[Planned]) -> None:
        """Fetch, pass, check and frame the documents of ``run`` not held yet, in the order the batches need
        them."""
        self.settle(self.fetch(run))

    def fetch(self, run: list[Planned]) -> Step:
        """Fetch ``run``'s documents not held yet (this thread), in the order its batches need them, and start
        their pass: its cheap rules here, its SentencePiece call on the pass thread (which holds no GIL: the
        caller reads and lays out meanwhile, the only Python running). Nothing is fetched once a fetch or
        pass failed (``halt``)."""
        wanted: list[tuple[int, PlannedDoc]] = []
        fetched: list[Document] = []
        if self.halt is not None:
            return Step(wanted, fetched, None)
        for p, planned, _ in run:
            held = self.held.setdefault(p, {})
            for d in planned.docs:
                if _key(d) not in held and _key(d) not in self.refused:
                    held[_key(d)] = None  # type: ignore[assignment]  # claimed: framed when settled
                    wanted.append((p, d))
        for p, d in wanted:
            try:
                fetched.append(self.fetcher(p).fetch(d))
            except Exception as error:  # raised by the batch that needs this document (see framed)
                self.halt = error
                break
        return Step(wanted, fetched, self._start_pass(fetched) if fetched else None)

    def settle(self, step: Step) -> None:
        """Wait for ``step``'s tokenizer call, finish and frame its pass, check each result against its ledger
        row and hold what passes."""
        try:
            results = self._finish_pass(step.passing) if step.passing is not None else []
        except Exception:
            results = self._one_by_one(step.fetched)
        framed = frame_documents([r.segments for r in results])
        for (p, d), result, fd in zip(step.wanted, results, framed, strict=False):
            try:
                check_against_ledger(d, result, self.shards)
            except StreamIntegrityError as error:
                self.refused[_key(d)] = error
                del self.held[p][_key(d)]
                continue
            self.held[p][_key(d)] = fd
        for p, d in step.wanted[len(results) :]:  # not fetched or not passed: never framed
            del self.held[p][_key(d)]

    def _start_pass(self, docs: list[Document]) -> tuple[PendingPass, Future] | Exception:
        """The pass's cheap rules here, its tokenizer call on the pass thread (which then holds no GIL, so
        the only Python running is this thread's). A failure is kept for :meth:`settle`, in plan order."""
        try:
            pending = self.doc_pass.prepare(docs)
        except Exception as error:
            return error
        return pending, self._thread().submit(self.doc_pass.encode, pending.texts)

    @staticmethod
    def _finish_pass(passing: tuple[PendingPass, Future] | Exception) -> list[PassResult]:
        if isinstance(passing, Exception):
            raise passing
        pending, encoding = passing
        return pending.finish(encoding.result())

    def _one_by_one(self, docs: list[Document]) -> list[PassResult]:
        """The pass one document at a time up to the one that fails: its error is the first in plan order (it
        precedes any fetch failure of a later step), so it becomes ``halt``."""
        results: list[PassResult] = []
        for doc in docs:
            try:
                results += self.doc_pass.process([doc])
            except Exception as error:
                self.halt = error
                break
        return results

    def _thread(self) -> ThreadPoolExecutor:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elm-data-pass")
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def framed(self, p: int, planned: BatchPlan) -> dict[Key, FramedDoc]:
        """Partition ``p``'s held documents, holding every one of ``planned``; else the error that stopped one
        (a fetch or pass failure first, then the first refused document in the batch's order)."""
        held = self.held.get(p, {})
        missing = [_key(d) for d in planned.docs if _key(d) not in held]
        if missing:
            if any(key not in self.refused for key in missing):  # not fetched or not passed
                if self.halt is None:
                    raise RuntimeError(f"batch {planned.batch}: documents {missing} were never prepared")
                raise self.halt
            raise self.refused[missing[0]]
        return held

    def release(self, p: int, planned: BatchPlan, batch_end: int) -> None:
        """Drop the documents of ``planned`` that no later batch of partition ``p`` needs."""
        held = self.held[p]
        for d in planned.docs:
            if d.start + d.units <= batch_end:
                held.pop(_key(d), None)
