"""Sequence forming on planned batches: BOS/EOS framing, packed windows, CoreNet truncation and padding."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_manifest import synthetic_manifest

from elm_data.pipeline.stream.partition import PartitionWalk
from elm_data.pipeline.stream.plan import BatchPlan, Plan, PlanConfig, PlannedDoc
from elm_data.pipeline.stream.sequences import frame_segments, layout_corenet, layout_packed
from elm_data.pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID


def fake_segments(doc: PlannedDoc) -> list[list[int]]:
    """Distinct, recognisable ids per document: segment sizes that add up to the planned token count."""
    rng = np.random.default_rng(doc.shard * 100_000 + doc.index)
    cuts = sorted(rng.choice(np.arange(1, doc.tokens), size=doc.segments - 1, replace=False).tolist())
    ids = rng.integers(3, 31999, size=doc.tokens).tolist()
    bounds = [0, *cuts, doc.tokens]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def base(doc: PlannedDoc) -> dict:
    return {
        "source": "s",
        "subset": str(doc.src),
        "shard_sha256": "x",
        "doc_id": doc.doc_id,
        "index": doc.index,
    }


def test_frame_segments_places_bos_and_eos():
    fd = frame_segments([[5, 6, 7], [8]])
    assert fd.ids.tolist() == [BOS_ID, 5, 6, 7, EOS_ID, BOS_ID, 8, EOS_ID]
    assert fd.starts.tolist() == [0, 5, 8] and fd.segments == 2


@pytest.mark.parametrize("masks", [False, True])
def test_packed_windows_form_one_continuous_stream_per_partition(tmp_path, masks):
    m = synthetic_manifest(tmp_path / "p", {"a/x": [30, 20], "b/y": [25]})
    window = 128
    plan = Plan(m, PlanConfig(mode="packed", seq_len=window - 1, batch_size=3, seed=0, partitions=2))
    framed = {}
    for p in range(plan.partitions):
        walk = PartitionWalk(plan, p)
        docs = [d for d, _ in walk.docs(walk.start())]
        expected = np.concatenate([frame_segments(fake_segments(d)).ids for d in docs])
        rows, pads, by_source = [], 0, {}
        for bp, _ in walk.batches(walk.start()):
            out = layout_packed(
                bp,
                lambda d: framed.setdefault(d, frame_segments(fake_segments(d))),
                base,
                window,
                document_masks=masks,
            )
            assert out.input_ids.shape == (bp.sequences, window)
            for row, spans in zip(out.input_ids, out.spans, strict=True):
                covered = 0
                for span in spans:
                    fd = framed[next(d for d in bp.docs if d.doc_id == span["doc_id"])]
                    assert (
                        row[span["start"] : span["end"]] == fd.ids[span["doc_start"] : span["doc_end"]]
                    ).all()
                    assert span["start"] == covered  # spans tile the row from its start, in order
                    covered = span["end"]
            if masks:
                seg = out.segment_ids
                assert (seg[:, 0] == 0).all()
                assert ((seg == -1) == (out.input_ids == PAD_ID)).all()
                # a new segment starts exactly at every BOS after position 0
                starts = np.diff(seg, axis=1) == 1
                assert (starts == (out.input_ids[:, 1:] == BOS_ID)).all()
            rows.append(out.input_ids)
            pads += out.pad_tokens
            for k, v in out.tokens_by_source.items():
                by_source[k] = by_source.get(k, 0) + v
        flat = np.concatenate(rows).reshape(-1)
        assert (flat[: len(expected)] == expected).all()  # nothing lost at document ends, no padding inside
        assert (flat[len(expected) :] == PAD_ID).all() and pads == len(flat) - len(expected) < window
        assert sum(by_source.values()) == sum(d.tokens + 2 for d in docs)


def test_corenet_rows_truncate_and_pad(tmp_path):
    window = 9
    docs = [PlannedDoc(0, 0, 0, "d0", 3, 1, 0, 1), PlannedDoc(0, 0, 1, "d1", 20, 2, 1, 2)]
    segs = {"d0": [[10, 11, 12]], "d1": [[20] * 12, list(range(30, 38))]}
    bp = BatchPlan(0, 0, 3, docs)
    out = layout_corenet(bp, lambda d: frame_segments(segs[d.doc_id]), base, window, document_masks=True)
    assert out.input_ids.tolist() == [
        [BOS_ID, 10, 11, 12, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        [BOS_ID] + [20] * 8,  # 14 framed tokens cut to 9: the EOS is cut too, as CoreNet does
        [BOS_ID, *range(30, 38)],  # exactly 10 framed → 9
    ]
    assert out.discarded_tokens == (14 - 9) + (10 - 9)
    assert out.pad_tokens == 4
    assert out.tokens_by_source == {"s/0": 5 + 9 + 9}
    assert out.spans[1] == [base(docs[1]) | {"doc_start": 0, "doc_end": 9, "start": 0, "end": 9}]
    assert out.spans[2][0]["doc_start"] == 14 and out.spans[2][0]["doc_end"] == 23
    assert out.segment_ids[0].tolist() == [0] * 5 + [-1] * 4


def test_layout_checks_the_plan(tmp_path):
    bp = BatchPlan(0, 0, 1, [PlannedDoc(0, 0, 0, "d0", 3, 1, 0, 5)])
    with pytest.raises(RuntimeError, match="framed tokens"):
        layout_packed(bp, lambda d: frame_segments([[1, 2]]), base, 8)
    with pytest.raises(RuntimeError, match="pieces"):
        layout_corenet(bp, lambda d: frame_segments([[1], [2]]), base, 8)
