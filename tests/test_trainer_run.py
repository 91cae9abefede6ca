"""End-to-end trainer runs on the sample manifest: learning, the log, resume, audit-run, the CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from elm_data.manifests.manifest import Manifest
from elm_data.trainer.cli import audit_run as audit_run_command
from elm_data.trainer.cli import train as train_command
from elm_data.trainer.core.checkpoint import CheckpointError, list_checkpoints
from elm_data.trainer.core.config import TrainConfig
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.loop import TrainingError, build_loader, load_tokenizer, train
from elm_data.trainer.core.runlog import effective_steps, read_log
from elm_data.trainer.proof.audit import audit_run

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
STEPS = 20  # of the learning run: 2 micro-batches of 2 x 64 tokens each
SMALL_MODEL = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32}


def small_config(manifest: Path, **overrides) -> TrainConfig:
    settings = {
        "manifest": str(manifest),
        "model": SMALL_MODEL,
        "seq_len": 32,
        "batch_size": 2,
        "max_steps": 8,
        "warmup_steps": 2,
        "lr": 3e-3,
        "epochs": None,
        "precision": "fp32",
        "distributed": "none",
        "seed": 0,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def learning_run(sample_manifest, tmp_path_factory):
    """One short run through the CLI (so the command, the log and the loop are exercised together)."""
    out = tmp_path_factory.mktemp("trainer") / "run"
    cfg = small_config(
        sample_manifest, max_steps=STEPS, warmup_steps=3, seq_len=64, tokens_per_step=2 * 2 * 64
    )
    cfg = cfg.to_dict()
    path = out.parent / "learn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(train_command, [str(path), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out, TrainConfig.from_yaml(path)


@pytest.mark.slow  # trains end to end (the learning_run fixture: 20 steps through the CLI)
def test_loss_falls_on_the_sample_manifest(learning_run):
    run_dir, _ = learning_run
    steps = effective_steps(read_log(run_dir))
    losses = [r["loss"] for r in steps]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert first > 9.0  # ~ln(32000) at initialisation
    assert last < first - 2.0, losses


@pytest.mark.slow  # uses the learning_run fixture
def test_log_names_the_data_and_counts_every_batch(learning_run, sample_manifest, tokenizer_path):
    run_dir, config = learning_run
    records = read_log(run_dir)
    header = records[0]
    assert header["event"] == "header"
    assert header["manifest_id"] == Manifest(sample_manifest).manifest_id
    assert header["tokenizer"]["sha256"] == hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()
    assert header["config"]["max_steps"] == STEPS and header["config"]["model"] == SMALL_MODEL
    assert header["model_config"]["num_transformer_layers"] == 2
    assert header["parameters"] == config.model_config().num_parameters()
    assert header["code_version"]["elm_data"] and "git_commit" in header["code_version"]
    assert header["grad_accum_steps"] == 2 and header["stream_state"]["global_batches"] == 0

    # replay the same stream independently: the log's cumulative per-source tokens are its batches' sums
    loader = build_loader(
        config, config.manifest_dir, load_tokenizer(config, Manifest(sample_manifest)), DistInfo()
    )
    iterator = iter(loader)
    expected: Counter = Counter()
    steps = effective_steps(records)
    for record in steps:
        step_sum: Counter = Counter()
        for _ in range(2):  # two micro-batches per step
            step_sum.update(next(iterator)["tokens_by_source"])
        expected.update(step_sum)
        assert record["step_tokens_by_source"] == dict(step_sum)
        assert record["tokens_by_source"] == dict(sorted(expected.items())), record["step"]
        assert record["tokens"] == 2 * 2 * 64 and record["mfu"] is None  # CPU: no known peak
        assert record["lr"] > 0 and record["grad_norm"] > 0 and record["tokens_per_s"] > 0
    assert len(expected) >= 2  # the sample mixes several sources
    assert steps[-1]["tokens_total"] == STEPS * 2 * 2 * 64
    assert records[-1]["event"] == "end"


@pytest.mark.slow  # uses the learning_run fixture
def test_audit_run_compares_consumption_with_manifest_and_targets(learning_run, sample_manifest):
    run_dir, _ = learning_run
    report = audit_run(run_dir)
    ledger = effective_steps(read_log(run_dir))[-1]["tokens_by_source"]
    kept: Counter = Counter()
    for shard in Manifest(sample_manifest).shards:
        kept[shard.key] += shard.tokens
    rows = {r.key: r for r in report.rows}
    assert set(rows) == set(kept) | set(ledger)
    assert report.consumed_total == sum(ledger.values()) and report.last_step == STEPS
    for key, row in rows.items():
        assert row.consumed_tokens == ledger.get(key, 0)
        assert row.kept_tokens == kept[key]
        assert row.fraction_consumed == pytest.approx(ledger.get(key, 0) / kept[key])
        assert row.share == pytest.approx(ledger.get(key, 0) / report.consumed_total)
        if row.target_share is not None:
            assert row.deviation == pytest.approx(row.share - row.target_share)
    shares = [r.target_share for r in report.rows if r.target_share is not None]
    if shares:
        assert sum(shares) == pytest.approx(1.0)

    table = CliRunner().invoke(audit_run_command, [str(run_dir)])
    assert table.exit_code == 0, table.output
    biggest = max(ledger, key=ledger.get)
    assert biggest in table.output and f"{ledger[biggest]:,}" in table.output
    as_json = CliRunner().invoke(audit_run_command, [str(run_dir), "--format", "json"])
    assert json.loads(as_json.output)["consumed_total"] == report.consumed_total


@pytest.mark.slow  # trains three runs end to end
def test_resume_reproduces_the_uninterrupted_run_bitwise(sample_manifest, tmp_path):
    config = small_config(sample_manifest, max_steps=6, tokens_per_step=2 * 2 * 32)
    straight = train(config, out_dir=tmp_path / "straight", progress=False)

    first = train(config, out_dir=tmp_path / "resumed", stop_after=3, progress=False)
    assert (
        first.final_step == 3
        and first.stopped_early
        and list_checkpoints(first.run_dir)[-1].name.endswith("3")
    )
    # the interrupted process logged a step past its checkpoint before "dying": resume must supersede it
    with (first.run_dir / "log.jsonl").open("a") as log:
        log.write(json.dumps({"event": "step", "step": 4, "loss": -1.0, "tokens_by_source": {}}) + "\n")
    second = train(config, resume=first.run_dir, progress=False)

    assert second.steps == [4, 5, 6] and second.final_step == 6
    assert first.losses + second.losses == straight.losses  # exact float equality
    logged = [r["loss"] for r in effective_steps(read_log(first.run_dir))]
    assert logged == straight.losses
    a = load_file(straight.checkpoint / "model.safetensors")
    b = load_file(second.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.consumed == straight.consumed and second.tokens == straight.tokens
    assert json.loads((second.checkpoint / "model_config.json").read_text())["num_transformer_layers"] == 2


@pytest.mark.slow  # trains end to end
def test_run_refuses_mismatched_resume_and_reused_run_dir(sample_manifest, tmp_path):
    config = small_config(sample_manifest, max_steps=2)
    done = train(config, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config, out_dir=tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="different training settings"):
        train(config.replace(lr=1e-2), resume=done.checkpoint, progress=False)


def test_cli_reports_user_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("manifest: nowhere\nlearnin_rate: 3\n")
    result = CliRunner().invoke(train_command, [str(bad)])
    assert result.exit_code == 2 and "learnin_rate" in result.output and "Traceback" not in result.output
    missing = tmp_path / "missing.yaml"
    missing.write_text("manifest: nowhere\nmodel: tiny\n")
    result = CliRunner().invoke(train_command, [str(missing), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a manifest directory" in result.output


def test_shipped_configs_load():
    demo = TrainConfig.from_yaml(CONFIGS / "demo.yaml")
    assert demo.model == "tiny" and demo.seq_len == 256 and demo.max_steps <= 200
    for size, lr in {"270M": 5.3e-3, "450M": 3.9e-3, "1_1B": 2.4e-3, "3B": 1.2e-3}.items():
        config = TrainConfig.from_yaml(CONFIGS / f"openelm_{size}.yaml")
        assert config.peak_lr == lr and config.seq_len == 2048 and config.warmup_steps == 5000
        assert config.grad_accum_steps(world_size=128) == 1 and config.grad_accum_steps(world_size=8) == 16
        assert config.model_config().num_parameters() > 2e8


@pytest.mark.slow  # trains a step end to end
def test_restore_refuses_a_bad_stream_state_before_changing_anything(sample_manifest, tmp_path):
    from elm_data.pipeline.stream.plan import PlanError
    from elm_data.trainer.core.checkpoint import STREAM_STATE, file_digests
    from elm_data.trainer.core.loop import Trainer

    config = small_config(sample_manifest, max_steps=1)
    done = train(config, out_dir=tmp_path / "run", progress=False)
    stream_state = torch.load(done.checkpoint / STREAM_STATE, weights_only=True)
    torch.save({**stream_state, "version": 2}, done.checkpoint / STREAM_STATE)
    # its digest too: a checkpoint
    trainer_state = json.loads((done.checkpoint / "trainer_state.json").read_text())
    # consistent in itself, of a stream state not resumable
    trainer_state["files"] |= file_digests(done.checkpoint)
    (done.checkpoint / "trainer_state.json").write_text(json.dumps(trainer_state))
    trainer = Trainer(config, torch.device("cpu"), DistInfo(), run_dir=tmp_path / "other", progress=False)
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(PlanError, match="version 2"):
        trainer.restore(done.checkpoint)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and trainer.state.step == 0
