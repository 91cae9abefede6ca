"""Watching a run: the health fields of step records, the progress line, TensorBoard and W&B offline
trackers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from elm_data.trainer.core.config import ConfigError, TrainConfig
from elm_data.trainer.core.health import HEALTH_FIELDS, RunHealth, progress_postfix
from elm_data.trainer.core.loop import train
from elm_data.trainer.core.runlog import effective_steps, read_log
from elm_data.trainer.core.trackers import INSTALL_HINT, Trackers, open_trackers, record_scalars
from elm_data.trainer.proof.audit import verify_run

SMALL_MODEL = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32}


def small_config(manifest: Path, **overrides) -> TrainConfig:
    settings = {
        "manifest": str(manifest),
        "model": SMALL_MODEL,
        "seq_len": 32,
        "batch_size": 2,
        "max_steps": 6,
        "warmup_steps": 2,
        "lr": 3e-3,
        "epochs": None,
        "precision": "fp32",
        "distributed": "none",
    }
    return TrainConfig(**{**settings, **overrides})


def rolling_mean(values: list[float], window: int) -> list[float]:
    """The oracle: each value's mean with the ``window - 1`` before it (fewer at the start), by cumulative
    sums."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under ``log_dir``, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    return {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in tags}


# ---- quick: the pieces
# ----------------------------------------------------------------------------------------
def test_loss_mean_is_the_running_mean_and_a_resume_continues_it():
    losses = [float(x) for x in np.random.default_rng(0).uniform(2, 8, 30)]
    health = RunHealth(torch.device("cpu"), window=7)
    means = [health.fields(loss, 0.0, 1.0)["loss_mean"] for loss in losses]
    assert means == pytest.approx(rolling_mean(losses, 7), rel=1e-12)
    # a resume from step 20: the log's records after it are superseded, the window starts from the 7 before
    records = [{"event": "step", "step": i + 1, "loss": loss} for i, loss in enumerate(losses[:25])]
    records.append({"event": "resume", "from_step": 20})
    resumed = RunHealth(torch.device("cpu"), window=7)
    resumed.resume(records)
    assert [resumed.fields(loss, 0.0, 1.0)["loss_mean"] for loss in losses[20:]] == pytest.approx(means[20:])


def test_stall_share_and_peak_memory():
    fields = RunHealth(torch.device("cpu")).fields(3.0, data_wait_s=0.25, step_time_s=1.0)
    assert fields["data_share"] == 0.25 and set(fields) == set(HEALTH_FIELDS)
    import resource

    assert fields["peak_memory_bytes"] >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 * 0.99


def test_progress_line_names_the_largest_shares():
    record = {
        "loss": 3.21,
        "loss_mean": 3.5,
        "tokens_per_s": 1234.0,
        "data_share": 0.125,
        "tokens_by_source": {"a/x": 10, "b/y": 60, "c/z": 20, "d/w": 5, "e/v": 5},
    }
    line = progress_postfix(record)
    assert "loss 3.210 (mean 3.500)" in line and "1,234 tok/s" in line and "stall 12%" in line
    assert "b/y 60% c/z 20% a/x 10% d/w 5% +1 more 5%" in line


def test_tracker_section_is_strict_and_a_missing_package_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="tensorboard"):
        TrainConfig.from_dict({"manifest": "m", "trackers": {"tensorbord": True}})
    with pytest.raises(ConfigError, match="trackers.wandb: expected true/false"):
        TrainConfig.from_dict({"manifest": "m", "trackers": {"wandb": "yes"}})
    config = TrainConfig.from_dict({"manifest": "m", "trackers": {"tensorboard": True}})
    assert TrainConfig.from_dict(config.to_dict()).trackers == config.trackers  # as the log records it
    # resumable either way
    assert config.fingerprint() == TrainConfig.from_dict({"manifest": "m"}).fingerprint()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name)
    )
    with pytest.raises(ConfigError) as refused:
        open_trackers(config.trackers, tmp_path, {})
    assert INSTALL_HINT in str(refused.value) and "\n" not in str(refused.value)
    assert not open_trackers(config.trackers, tmp_path, {}, enabled=False).writers  # other ranks open none


def test_tensorboard_reads_back_what_the_trackers_got(tmp_path):
    pytest.importorskip("tensorboard")
    records = [
        {
            "event": "step",
            "step": s,
            "loss": 10.0 / s,
            "mfu": None,
            "receipt": "ab",
            "tokens": 64,
            "tokens_by_source": {"redpajama/c4": 64 * s},
        }
        for s in range(1, 6)
    ]
    trackers = open_trackers(TrainConfig(manifest="m", trackers={"tensorboard": True}).trackers, tmp_path, {})
    for record in records:
        trackers.log(record["step"], record)
    trackers.close()
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"loss", "tokens", "tokens_by_source/redpajama/c4"}  # nulls and text left out
    assert scalars["loss"] == pytest.approx({s: 10.0 / s for s in range(1, 6)}, rel=1e-7)  # stored as float32
    assert scalars["tokens_by_source/redpajama/c4"] == {s: 64 * s for s in range(1, 6)}
    assert record_scalars({"step": 1, "ok": True, "x": 2}) == {"x": 2.0} and not Trackers([]).writers


# ---- end to end
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow  # trains 6 steps (~10 s)
def test_a_run_logs_health_and_tensorboard_holds_the_same_scalars(sample_manifest, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    path = tmp_path / "watch.yaml"
    path.write_text(
        yaml.safe_dump({**small_config(sample_manifest).to_dict(), "trackers": {"tensorboard": True}})
    )
    result = train(TrainConfig.from_yaml(path), out_dir=tmp_path / "run", progress=True)
    steps = effective_steps(read_log(result.run_dir))
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]  # the live line, as last drawn
    # progress, ETA, health
    assert "6/6" in bar and "<00:00" in bar and "stall" in bar and "tok/s" in bar, bar
    shares = progress_postfix(steps[-1]).split(" | ")[-1]
    assert shares in bar and any(key in shares for key in steps[-1]["tokens_by_source"]), bar
    assert [s["step"] for s in steps] == list(range(1, 7))
    losses = [s["loss"] for s in steps]
    assert [s["loss_mean"] for s in steps] == pytest.approx(rolling_mean(losses, 20), rel=1e-12)
    for s in steps:
        assert (
            s["data_share"] == pytest.approx(s["data_wait_s"] / s["step_time_s"]) and 0 <= s["data_share"] < 1
        )
        assert s["peak_memory_bytes"] > 50 * 2**20  # a process holding torch and a model
    assert verify_run(result.run_dir).ok  # the measured fields leave the receipt as it was
    scalars = tensorboard_scalars(result.run_dir / "tensorboard")
    for s in steps:
        for tag, value in record_scalars(s).items():
            assert math.isclose(scalars[tag][s["step"]], value, rel_tol=1e-6), (tag, s["step"])
    assert {"loss", "loss_mean", "lr", "grad_norm", "data_share", "tokens_per_s", "peak_memory_bytes"} <= set(
        scalars
    )


@pytest.mark.slow  # trains 4 steps and starts W&B's service (~15 s)
def test_wandb_offline_run_files_exist_when_enabled(sample_manifest, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: nothing may reach the network
    config = small_config(
        sample_manifest, max_steps=4, trackers={"wandb": True, "wandb_project": "watch-test"}
    )
    result = train(config, out_dir=tmp_path / "run", progress=False)
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    data = list(runs[0].glob("run-*.wandb"))
    assert len(data) == 1 and data[0].stat().st_size > 0
    # wandb 0.2x+ ships no Python reader of its records (its core is Go); the history items' keys are stored
    # as text
    written = data[0].read_bytes()
    assert all(key.encode() in written for key in ("loss_mean", "data_share", "tokens_by_source/"))
