"""Errors keep their place in the stream's lookahead (``pipeline/stream/ahead.py``), whatever fails where.

The pass is split: its cheap rules (``DocumentPass.prepare``) run on the reading thread when a step is
fetched, its tokenizer call (``DocumentPass.encode``) on the pass thread, and the step is settled after the
next step was fetched. Every way a document can fail (its fetch, its cheap rules, the tokenizer call, the
ledger check), alone and in every pair over a few positions, against the per-batch oracle: each batch's new
documents fetched, passed and checked on their own, before the next batch is looked at. Fast: stand-in
documents and tokenizer, no manifest.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.stream.ahead import PassedAhead, steps
from elm_data.pipeline.stream.plan import BatchPlan, PlannedDoc
from elm_data.sources.document import Document, Provenance

UNITS_PER_BATCH, DOC_UNITS, DOCS = 10, 4, 40  # a document spans up to two batches
KINDS = ("fetch", "prepare", "encode", "ledger")
POSITIONS = (2, 8, 9, 30)  # doc 2 spans batches 0 and 1; docs 8 and 9 share batch 3; doc 30: a later step


class Failures(dict):
    """doc index -> how it fails."""


class StandInTokenizer:
    def __init__(self, failures: Failures):
        self.failures = failures

    def encode_batch(self, texts, num_threads=1, arrays=False):
        if any(self.failures.get(_index_of(t)) == "encode" for t in texts):
            raise RuntimeError(f"encode failed on {[t for t in texts if self.failures.get(_index_of(t))]}")
        return [list(range(len(t))) for t in texts]


class FailingRules(DocumentPass):
    def _pre_token_reason(self, text, doc_id):
        if self.tokenizer.failures.get(_index_of(text)) == "prepare":
            raise ValueError(f"cheap rules failed on {doc_id}")
        return super()._pre_token_reason(text, doc_id)


def _index_of(text: str) -> int:
    return int(text.split()[1])


def _text(index: int) -> str:
    return f"document {index} text"


class Fetcher:
    def __init__(self, failures: Failures):
        self.failures = failures

    def fetch(self, d: PlannedDoc) -> Document:
        if self.failures.get(d.index) == "fetch":
            raise OSError(f"fetch failed on {d.doc_id}")
        prov = Provenance("s", "sub", "file:///s0", "0" * 64, d.index, d.doc_id, None, "cc")
        return Document(_text(d.index), prov)


def _plan(failures: Failures) -> list[tuple[int, BatchPlan, None]]:
    docs = [
        PlannedDoc(
            0, 0, i, f"d{i}", len(_text(i)) + (failures.get(i) == "ledger"), 1, i * DOC_UNITS, DOC_UNITS
        )
        for i in range(DOCS)
    ]
    batches = []
    for b in range(DOCS * DOC_UNITS // UNITS_PER_BATCH):
        lo, hi = b * UNITS_PER_BATCH, (b + 1) * UNITS_PER_BATCH
        in_batch = [d for d in docs if d.start < hi and d.start + d.units > lo]
        batches.append((0, BatchPlan(b, lo, 1, in_batch), None))
    return batches


def _ahead(failures: Failures) -> PassedAhead:
    doc_pass = FailingRules(
        FilterConfig(min_characters=1, min_tokens=1), SequenceConfig(), StandInTokenizer(failures)
    )
    fetcher = Fetcher(failures)
    return PassedAhead(doc_pass, lambda p: fetcher, [SimpleNamespace(uri="file:///s0")])


def _handed_out(ahead: PassedAhead, run: list) -> list[tuple[int, str]]:
    out = []
    for p, planned, _ in run:
        try:
            held = ahead.framed(p, planned)
        except Exception as error:
            return [*out, (planned.batch, f"{type(error).__name__}: {error}")]
        out.append((planned.batch, str([held[d.shard, d.index, d.start].ids.tolist() for d in planned.docs])))
        ahead.release(p, planned, planned.start + UNITS_PER_BATCH)
    return out


def per_batch(failures: Failures) -> list[tuple[int, str]]:
    """The oracle: one batch at a time, its documents settled before the next batch is fetched."""
    ahead, out = _ahead(failures), []
    for item in _plan(failures):
        ahead.prepare([item])
        out += _handed_out(ahead, [item])
        if "Error" in out[-1][1]:
            break
    ahead.close()
    return out


def stepped(failures: Failures, budget: int) -> list[tuple[int, str]]:
    """As the stream's reader (``dataset._BatchMaker.run``): step k+1 fetched (its cheap rules run, its
    tokenizer call started) before step k is settled and its batches handed out."""
    ahead, out, previous = _ahead(failures), [], None
    for run in [*steps(_plan(failures), budget), None]:
        current = (run, ahead.fetch(run)) if run is not None else None
        if previous is not None:
            ahead.settle(previous[1])
            out += _handed_out(ahead, previous[0])
            if "Error" in out[-1][1]:
                break
        previous = current
    ahead.close()
    return out


def _cases():
    positions = POSITIONS
    yield {}
    for kind, i in itertools.product(KINDS, positions):
        yield {i: kind}
    for (k1, i), (k2, j) in itertools.product(itertools.product(KINDS, positions), repeat=2):
        if i < j:
            yield {i: k1, j: k2}


@pytest.mark.parametrize("budget", [0, 3 * UNITS_PER_BATCH, 1 << 16])
def test_every_failure_and_pair_of_failures_stops_the_stream_where_one_batch_at_a_time_does(budget):
    checked = 0
    for case in _cases():
        failures = Failures(case)
        want = per_batch(failures)
        assert stepped(failures, budget) == want, case
        if case:  # the oracle itself: the first batch holding a failing document raises, none before
            first = min(i * DOC_UNITS // UNITS_PER_BATCH for i in case)
            assert [b for b, _ in want] == list(range(first + 1)) and "Error" in want[-1][1], case
        checked += 1
    n = len(POSITIONS)
    assert checked == 1 + len(KINDS) * n + len(KINDS) ** 2 * n * (n - 1) // 2


def test_a_failure_of_the_cheap_rules_is_raised_by_its_batch_with_its_own_error():
    failures = Failures({13: "prepare", 30: "fetch"})
    got = stepped(failures, 1 << 16)  # one step holds all: the fetch failure of doc 30 is found first
    assert got[-1] == (13 * DOC_UNITS // UNITS_PER_BATCH, "ValueError: cheap rules failed on d13")
    failures = Failures({13: "encode", 30: "prepare"})
    got = stepped(failures, 1 << 16)
    assert got[-1][0] == 13 * DOC_UNITS // UNITS_PER_BATCH and got[-1][1].startswith("RuntimeError: encode")
