"""`elm-data trace --doc`: the rows at which a run consumed a document, from the plan alone, equal a
brute-force scan of the batches the run's stream hands out."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_trainer_run import small_config

from elm_data.manifests.manifest import Manifest
from elm_data.trainer.cli import trace as trace_command
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.loop import build_loader, load_tokenizer, train
from elm_data.trainer.proof.records import AuditError
from elm_data.trainer.proof.trace import trace_doc

pytestmark = pytest.mark.slow  # each test trains a run end to end first

STEPS, ACCUM = 12, 2


def brute_batches(config, manifest: Path, steps: int) -> list[dict]:
    """The batches the run consumed in its first ``steps`` steps, replayed from the stream."""
    loader = build_loader(config, config.manifest_dir, load_tokenizer(config, Manifest(manifest)), DistInfo())
    iterator = iter(loader)
    return [next(iterator) for _ in range(steps * ACCUM)]


def brute_force(config, manifest: Path, steps: int) -> dict[str, list[tuple]]:
    """Replay the run's stream and scan every span of every batch it consumed."""
    loader = build_loader(config, config.manifest_dir, load_tokenizer(config, Manifest(manifest)), DistInfo())
    found: dict[str, list[tuple]] = defaultdict(list)
    iterator = iter(loader)
    for step in range(1, steps + 1):
        for micro in range(ACCUM):
            batch = next(iterator)
            for row, spans in enumerate(batch["spans"]):
                for s in spans:
                    ref = f"{s['source']}/{s['subset']}:{s['doc_id']}"
                    found[ref].append(
                        (
                            step,
                            batch["batch_index"],
                            0,
                            micro,
                            row,
                            s["shard_sha256"],
                            s["index"],
                            s["start"],
                            s["end"],
                            s["doc_start"],
                            s["doc_end"],
                        )
                    )
    return found


# natural order; the manifest's weights (documents repeat)
@pytest.mark.parametrize("weights", ["natural", None])
def test_trace_doc_equals_a_brute_force_scan(sample_manifest, tmp_path, weights):
    overrides = {"weights": weights, "epochs": 1} if weights else {}
    config = small_config(
        sample_manifest, max_steps=STEPS, tokens_per_step=2 * ACCUM * 32, log_every=5, **overrides
    )
    run = train(config, out_dir=tmp_path / "run", progress=False).run_dir
    found = brute_force(config, sample_manifest, STEPS)
    assert len(found) >= 2
    multi_step = [ref for ref, rows in found.items() if len({r[0] for r in rows}) > 1]
    assert multi_step  # a document whose tokens span steps (or repeat)
    for ref in [*multi_step[:3], *list(found)[:3]]:
        hits = [tuple(h.to_dict().values()) for h in trace_doc(run, ref)]
        assert hits == found[ref], ref
    ref = multi_step[0]
    result = CliRunner().invoke(trace_command, [str(run), "--doc", ref, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [tuple(h.values()) for h in json.loads(result.output)] == found[ref]
    table = CliRunner().invoke(trace_command, [str(run), "--doc", ref])
    assert table.exit_code == 0 and f"{len(found[ref])} row(s)" in table.output


def test_trace_doc_of_an_unconsumed_or_unknown_document(sample_manifest, tmp_path):
    config = small_config(sample_manifest, max_steps=1, tokens_per_step=2 * ACCUM * 32)
    run = train(config, out_dir=tmp_path / "run", progress=False).run_dir
    key = Manifest(sample_manifest).shards[0].key
    with pytest.raises(AuditError, match="no such document"):
        trace_doc(run, f"{key}:no-such-document")
    result = CliRunner().invoke(trace_command, [str(run), "--doc", f"{key}:no-such-document"])
    assert result.exit_code == 2 and "no such document" in result.output
    consumed = {
        f"{s['source']}/{s['subset']}:{s['doc_id']}"
        for b in brute_batches(config, sample_manifest, 1)
        for row in b["spans"]
        for s in row
    }
    ledger = Manifest(sample_manifest).documents(0).to_pylist()
    kept = [f"{key}:{d['doc_id']}" for d in ledger if d["status"] == "kept"]
    never = next(ref for ref in kept if ref not in consumed)
    result = CliRunner().invoke(trace_command, [str(run), "--doc", never])
    assert result.exit_code == 0 and "never consumed by this run: 0 rows" in result.output, result.output
    with pytest.raises(AuditError, match="not in the run's manifest"):
        trace_doc(run, "nowhere/none:doc")
    result = CliRunner().invoke(trace_command, [str(run), "--doc", "bad-ref"])
    assert result.exit_code == 2 and "SOURCE/SUBSET:DOC_ID" in result.output


def test_trace_text_finds_a_planted_span_in_the_right_document_and_steps(
    sample_manifest, tokenizer, tmp_path
):
    import numpy as np

    pytest.importorskip("pydivsufsort")  # the suffix-array library (pip install pydivsufsort)
    from elm_data.trainer.proof.trace import open_text_index, trace_text

    config = small_config(
        sample_manifest, max_steps=STEPS, tokens_per_step=2 * ACCUM * 32, weights="natural", epochs=1
    )
    run = train(config, out_dir=tmp_path / "run", progress=False).run_dir
    index = open_text_index(run, tokenizer=tokenizer)
    assert (run / "trace_index" / "sa.npy").is_file() and index.bytes_per_token == 6.0
    assert np.array_equal(np.sort(index.sa), np.arange(len(index.tokens)))  # a permutation: a suffix array
    # the document the run consumed most of, and a stretch of its middle decoded back to text
    doc = max(index.docs, key=lambda d: d["length"])
    ids = index.tokens[doc["offset"] : doc["offset"] + doc["length"]].astype(int).tolist()
    at = doc["length"] // 3
    planted = tokenizer.decode(ids[at : at + 24])
    query = tokenizer.encode(f"Completely unrelated words first, then: {planted}")
    spans = trace_text(index, query, min_tokens=8, top=3)
    assert spans and spans[0]["length"] >= 20, spans
    best = spans[0]["occurrences"]
    hit = next(o for o in best if o["ref"] == doc["ref"] and o["index"] == doc["index"])
    assert abs(hit["doc_offset"] - at) <= 2
    # the steps are those whose rows held that stretch, as trace --doc says
    rows = [
        h
        for h in trace_doc(run, doc["ref"])
        if h.doc_start < hit["doc_offset"] + spans[0]["length"] and h.doc_end > hit["doc_offset"]
    ]
    assert hit["steps"] == sorted({h.step for h in rows}) and hit["steps"]
    # unrelated text: nothing long
    assert trace_text(index, tokenizer.encode("zqxj vvkw pqqq"), min_tokens=8) == []
    result = CliRunner().invoke(
        trace_command, [str(run), "--text", planted, "--min-tokens", "8", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert any(o["ref"] == doc["ref"] for o in json.loads(result.output)[0]["occurrences"])
