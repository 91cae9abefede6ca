"""`elm-data trace --doc`: the rows at which a run consumed a document, from the plan alone, equal a brute-force
scan of the batches the run's stream hands out."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_trainer_run import small_config

from elm_data.manifests.manifest import Manifest
from elm_data.trainer.audit import AuditError
from elm_data.trainer.cli import trace as trace_command
from elm_data.trainer.distributed import DistInfo
from elm_data.trainer.loop import build_loader, load_tokenizer, train
from elm_data.trainer.trace import trace_doc

STEPS, ACCUM = 12, 2


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
                    found[ref].append((step, batch["batch_index"], 0, micro, row, s["shard_sha256"], s["index"],
                                       s["start"], s["end"], s["doc_start"], s["doc_end"]))  # fmt: skip
    return found


@pytest.mark.parametrize("weights", ["natural", None])  # natural order; the manifest's weights (documents repeat)
def test_trace_doc_equals_a_brute_force_scan(sample_manifest, tmp_path, weights):
    overrides = {"weights": weights, "epochs": 1} if weights else {}
    config = small_config(sample_manifest, max_steps=STEPS, tokens_per_step=2 * ACCUM * 32, log_every=5, **overrides)
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
    assert trace_doc(run, f"{key}:no-such-document") == []
    with pytest.raises(AuditError, match="not in the run's manifest"):
        trace_doc(run, "nowhere/none:doc")
    result = CliRunner().invoke(trace_command, [str(run), "--doc", "bad-ref"])
    assert result.exit_code == 1 and "SOURCE/SUBSET:DOC_ID" in result.output
