"""Counts, the one counter: every record read in one bucket, through adds, merges and shard records."""

from __future__ import annotations

import random

from elm_data.manifests.shard_records import ShardRecord, counts_by_subset, totals_of
from elm_data.pipeline.counts import RECORD_FIELDS, Counts
from elm_data.pipeline.document_pass import PassResult
from elm_data.sources.document import Document, Provenance, Rejection


def outcome(rng: random.Random, i: int) -> PassResult | Rejection:
    """A random kept, held-out, filtered or rejected outcome (rejections standing for 1 to 3 records; a
    held-out one is a kept result whose doc id says ``held``)."""
    kind = rng.choice(("kept", "heldout", "filtered", "rejected"))
    if kind == "rejected":
        reason = rng.choice(("malformed_json", "missing_text"))
        return Rejection("s", "a", "mem://x", i, reason, count=rng.randint(1, 3))
    prov = Provenance(
        "s", "a", "mem://x", "f" * 64, i, f"{'held' if kind == 'heldout' else 'id'}{i}", None, "cc-by"
    )
    doc = Document("w" * rng.randint(1, 50), prov)
    pieces = [rng.choice((None, "min_tokens", "min_characters")) for _ in range(rng.randint(1, 4))]
    if kind in ("kept", "heldout"):
        pieces[0] = None
        segments = [[7] * rng.randint(1, 9) for reason in pieces if reason is None]
        return PassResult(doc, "kept", None, segments, tuple(pieces))
    pieces = [p or "min_tokens" for p in pieces]
    return PassResult(doc, "filtered", pieces[0], [], tuple(pieces))


def tally(items: list[PassResult | Rejection]) -> Counts:
    counts = Counts()
    for item in items:
        if isinstance(item, Rejection):
            counts.add_rejection(item)
        else:
            counts.add_result(item, count_pieces=True, heldout=_held(item))
    return counts


def _held(item: PassResult) -> bool:
    return item.document.provenance.doc_id.startswith("held")


def oracle(items: list[PassResult | Rejection]) -> dict:
    """The same figures counted by hand from the list of outcomes."""
    kept = [i for i in items if isinstance(i, PassResult) and i.status == "kept" and not _held(i)]
    held = [i for i in items if isinstance(i, PassResult) and _held(i)]
    filtered = [i for i in items if isinstance(i, PassResult) and i.status == "filtered"]
    rejected = [i for i in items if isinstance(i, Rejection)]
    by = {}
    for name, group, size in (("filtered", filtered, lambda _: 1), ("rejected", rejected, lambda r: r.count)):
        by[name] = {}
        for item in group:
            by[name][item.reason] = by[name].get(item.reason, 0) + size(item)
    pieces = {}
    for item in kept + held + filtered:
        for reason in item.piece_reasons:
            if reason is not None:
                pieces[reason] = pieces.get(reason, 0) + 1
    return {
        "docs_read": len(kept) + len(held) + len(filtered) + sum(r.count for r in rejected),
        "docs_kept": len(kept),
        "docs_filtered": len(filtered),
        "docs_rejected": sum(r.count for r in rejected),
        "filtered_by_reason": dict(sorted(by["filtered"].items())),
        "rejected_by_reason": dict(sorted(by["rejected"].items())),
        "pieces_filtered_by_reason": dict(sorted(pieces.items())),
        "chars": sum(len(i.document.text) for i in kept),
        "tokens": sum(len(s) for i in kept for s in i.segments),
        "segments": sum(len(i.segments) for i in kept),
        "docs_heldout": len(held),
        "heldout_tokens": sum(len(s) for i in held for s in i.segments),
    }


def test_adds_and_merges_match_a_hand_count():
    rng = random.Random(15)
    items = [outcome(rng, i) for i in range(300)]
    whole = tally(items)
    assert whole.to_dict() == oracle(items)
    assert whole.docs_read == whole.docs_kept + whole.docs_heldout + whole.docs_filtered + whole.docs_rejected
    assert whole.docs_heldout > 0
    cuts = sorted(rng.sample(range(1, len(items)), 4))
    parts = [tally(items[a:b]) for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]
    assert Counts.sum(parts) == whole
    assert parts[0] + parts[1] + parts[2] + parts[3] + parts[4] == whole
    before = parts[0].to_dict()
    assert (parts[0] + parts[1]).to_dict() == oracle(items[: cuts[1]])
    assert parts[0].to_dict() == before  # + leaves its operands alone
    assert parts[0].merge(parts[1]) is parts[0]  # merge adds in place
    assert parts[0].to_dict() == oracle(items[: cuts[1]])
    assert Counts.sum([]) == Counts() and Counts().docs_read == 0


def test_packed_mode_counts_no_pieces():
    rng = random.Random(1)
    results = [item for item in (outcome(rng, i) for i in range(50)) if isinstance(item, PassResult)]
    counts = Counts()
    for r in results:
        counts.add_result(r)
    assert counts.pieces_filtered_by_reason == {}
    assert counts.docs_read == len(results)


def test_shard_records_round_trip_and_add_up():
    rng = random.Random(2)
    records = []
    for shard in range(6):
        counts = tally([outcome(rng, i) for i in range(rng.randint(0, 40))])
        subset = "ab"[shard % 2]
        records.append(ShardRecord(shard, "s", subset, "mem://x", 10, "0" * 64, "cc-by", **counts.to_dict()))
        assert records[-1].counts == counts and records[-1].counts_add_up()
        assert list(counts.to_dict()) == list(RECORD_FIELDS)
    by_subset = counts_by_subset(records)
    assert list(by_subset) == ["s/a", "s/b"]
    assert by_subset["s/a"] == Counts.sum(r.counts for r in records[::2])
    totals = totals_of(records)
    assert totals == Counts.sum(by_subset.values()).to_dict() | {"shards": 6, "size_bytes": 60}
    for name in ("docs_read", "docs_kept", "docs_filtered", "docs_rejected", "chars", "tokens", "segments"):
        assert totals[name] == sum(getattr(r, name) for r in records)  # the sum the totals always were
    records[0].docs_read += 1
    assert not records[0].counts_add_up()
