"""The demo's short run: audit-run explains a subset that got 0 tokens (its weighted share of so few
steps)."""

from __future__ import annotations

import json

import pytest

from elm_data.manifests.manifest import Manifest
from elm_data.manifests.shard_records import counts_by_subset
from elm_data.trainer.proof.audit import audit_run


def _fake_run(run_dir, manifest_dir, consumed: dict[str, int], step: int, weights=None) -> None:
    run_dir.mkdir()
    info = Manifest(manifest_dir)
    header = {
        "event": "header",
        "manifest_id": info.manifest_id,
        "manifest_dir": str(manifest_dir),
        "config": {"weights": weights},
    }
    record = {
        "event": "step",
        "step": step,
        "tokens_total": sum(consumed.values()),
        "tokens_by_source": consumed,
    }
    (run_dir / "log.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")


def test_audit_run_explains_a_subset_with_zero_tokens(sample_manifest, tmp_path):
    consumed = {"refinedweb/default": 9000, "pile/default": 2400, "redpajama/c4": 2600}
    _fake_run(tmp_path / "run", sample_manifest, consumed, step=20)
    audit = audit_run(tmp_path / "run")
    notes = [n for n in audit.notes if n.startswith("dolma/wiki:")]
    assert len(notes) == 1, audit.notes
    assert "weight 0.2% x 14,000 tokens in 20 steps = ~34 expected" in notes[0], notes[0]
    assert "a likely draw at this scale" in notes[0] and "expect its first document after ~" in notes[0]
    assert not [n for n in audit.notes if n.startswith("refinedweb/default:")]
    assert "dolma/wiki: 0 tokens" in audit.format_table()


def _zero_note(audit, key: str) -> str:
    (note,) = [n for n in audit.notes if n.startswith(f"{key}:")]
    return note


@pytest.mark.llama  # LLaMA-2 token counts of the sample
@pytest.mark.parametrize("scale", [2, 20])  # ~20 documents drawn; ~200 documents drawn
def test_zero_tokens_warn_only_when_improbable(llama_sample_manifest, tmp_path, scale):
    """pile/default's weight share is 207/1784 = 11.6%: with ~20 documents drawn none of them is pile's with
    probability 0.884**20 ~ 0.08 (a likely draw, not a warning, although its expected tokens exceed one of its
    documents); with ~200, 0.884**200 ~ 2e-11 (the weights are suspect)."""
    per_doc = {"refinedweb/default": 19276 / 15, "redpajama/c4": 27518 / 17, "dolma/stack": 31480 / 16}
    consumed = {"refinedweb/default": 9000 * scale, "redpajama/c4": 2600 * scale, "dolma/stack": 3400 * scale}
    _fake_run(tmp_path / "run", llama_sample_manifest, consumed, step=10 * scale)
    audit = audit_run(tmp_path / "run")
    kept = {k: c.tokens for k, c in counts_by_subset(Manifest(llama_sample_manifest).shards).items()}
    assert kept["pile/default"] == 51137 and {k: round(kept[k] / v) for k, v in per_doc.items()} == {
        "refinedweb/default": 15,
        "redpajama/c4": 17,
        "dolma/stack": 16,
    }
    share = 207 / sum(e["weight"] for e in Manifest(llama_sample_manifest).info["mixture"])
    draws = sum(consumed[k] / v for k, v in per_doc.items())
    expected_tokens = share * sum(consumed.values())
    note = _zero_note(audit, "pile/default")
    assert (
        f"= ~{expected_tokens:,.0f} expected" in note and f"~{share * draws:.1f} of ~{draws:,.0f}" in note
    ), note
    assert f"P(none drawn) = {(1 - share) ** draws:.2g}" in note, note
    assert expected_tokens > kept["pile/default"] / 25  # more than one of its documents expected, both times
    if scale == 2:
        assert "check the run's weights" not in note and "a likely draw" in note, note
    else:
        assert note.endswith("improbable: check the run's weights"), note


def test_a_zero_weight_is_named_as_such(sample_manifest, tmp_path):
    _fake_run(
        tmp_path / "run",
        sample_manifest,
        {"refinedweb/default": 5000},
        step=5,
        weights={"refinedweb/default": 1.0, "dolma/wiki": 0.0},
    )
    notes = audit_run(tmp_path / "run").notes
    assert any(n == "dolma/wiki: 0 tokens: its mixing weight is 0" for n in notes), notes


@pytest.mark.slow
def test_the_demo_runs_every_stage_quickly(tokenizer_path, tmp_path):
    import time

    from elm_data.demo import run_demo

    cpu = time.process_time()
    paths = run_demo(tmp_path / "demo", tokenizer=tokenizer_path, steps=3)
    assert all(p.exists() for p in paths.values())
    from elm_data.demo import DEMO_TRAINING
    from elm_data.manifests.manifest import Manifest
    from elm_data.trainer.core.runlog import read_log

    # the demo's mixture holds out
    held = [r for r in read_log(paths["training run"]) if r["event"] == "heldout"]
    manifest = Manifest(paths["manifest"])
    with_docs = {
        r.key
        for r in manifest.shards
        for row in manifest.documents(r.shard).to_pylist()
        if row["status"] == "heldout" and row["tokens"] <= DEMO_TRAINING["heldout_tokens"]
    }
    assert (
        [r["step"] for r in held] == [3]
        and set(held[0]["loss_by_source"]) == with_docs
        and len(with_docs) >= 5
    )
    assert time.process_time() - cpu < 120  # the whole demo is ~50 CPU-s at 20 steps on this 2-core VM
