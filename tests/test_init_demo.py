"""The demo's short run: audit-run explains a subset that got 0 tokens (its weighted share of so few steps)."""

from __future__ import annotations

import json

import pytest

from elm_data.manifests.manifest import Manifest
from elm_data.trainer.audit import audit_run


def _fake_run(run_dir, manifest_dir, consumed: dict[str, int], step: int, weights=None) -> None:
    run_dir.mkdir()
    info = Manifest(manifest_dir)
    header = {"event": "header", "manifest_id": info.manifest_id, "manifest_dir": str(manifest_dir),
              "config": {"weights": weights}}  # fmt: skip
    record = {"event": "step", "step": step, "tokens_total": sum(consumed.values()), "tokens_by_source": consumed}
    (run_dir / "log.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(record) + "\n")


def test_audit_run_explains_a_subset_with_zero_tokens(sample_manifest, tmp_path):
    consumed = {"refinedweb/default": 9000, "pile/default": 2400, "redpajama/c4": 2600}
    _fake_run(tmp_path / "run", sample_manifest, consumed, step=20)
    audit = audit_run(tmp_path / "run")
    notes = [n for n in audit.notes if n.startswith("dolma/wiki:")]
    assert len(notes) == 1, audit.notes
    assert "weight 0.2% x 14,000 tokens in 20 steps = ~34" in notes[0], notes[0]
    assert "under one of its documents" in notes[0] and "expect its first after ~" in notes[0]
    assert not [n for n in audit.notes if n.startswith("refinedweb/default:")]
    assert "dolma/wiki: 0 tokens" in audit.format_table()


def test_a_zero_weight_is_named_as_such(sample_manifest, tmp_path):
    _fake_run(tmp_path / "run", sample_manifest, {"refinedweb/default": 5000}, step=5,
              weights={"refinedweb/default": 1.0, "dolma/wiki": 0.0})  # fmt: skip
    notes = audit_run(tmp_path / "run").notes
    assert any(n == "dolma/wiki: 0 tokens: its mixing weight is 0" for n in notes), notes


@pytest.mark.slow
def test_the_demo_runs_every_stage_quickly(tokenizer_path, tmp_path):
    import time

    from elm_data.demo import run_demo

    cpu = time.process_time()
    paths = run_demo(tmp_path / "demo", tokenizer=tokenizer_path, steps=3)
    assert all(p.exists() for p in paths.values())
    assert time.process_time() - cpu < 120  # the whole demo is ~50 CPU-s at 20 steps on this 2-core VM
