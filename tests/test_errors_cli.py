"""One error contract: a user error is one line `error: …` and exit 2, a bug a traceback with a hint (exit 1)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from elm_data.cli import run
from elm_data.core.errors import ElmDataError


@pytest.fixture(autouse=True)
def _keep_sigterm():
    """run() installs the CLI's SIGTERM handler; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = run([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


def _mixture(sample_dir: Path, path: Path, **changes) -> Path:
    raw = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    for entry in raw["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    for key, value in changes.items():
        if key == "weight":
            raw["sources"][0]["weight"] = value
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("changes", "needle"),
    [({"weight": -3}, "sources[0].weight"), ({"sequences": {"seq_len": 0}}, "sequences.seq_len")],
)
def test_bad_mixture_values(capsys, sample_dir, tokenizer_path, tmp_path, changes, needle):
    mixture = _mixture(sample_dir, tmp_path / "mix.yaml", **changes)
    code, err = _cli(capsys, "build", "manifest", mixture, "--out", tmp_path / "m", "--tokenizer", tokenizer_path)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "m").exists()


def _train_config(tmp_path: Path, manifest: Path | str, **settings) -> Path:
    raw = {"manifest": str(manifest), "model": "tiny", "seq_len": 32, "batch_size": 2, "max_steps": 2} | settings
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("settings", "needle"), [({"lr": "fast"}, "lr: "), ({"model": "tiny2"}, "model: ")])
def test_bad_training_config_values(capsys, tmp_path, settings, needle):
    code, err = _cli(capsys, "train", _train_config(tmp_path, tmp_path / "m", **settings), "--out", tmp_path / "run")
    _one_line_error(code, err, needle, "train.yaml")


def test_unknown_subset_in_training_weights(capsys, sample_manifest, tmp_path):
    config = _train_config(tmp_path, sample_manifest, weights={"nope/none": 1.0})
    code, err = _cli(capsys, "train", config, "--out", tmp_path / "run", "--no-progress")
    _one_line_error(code, err, "nope/none")


def test_corrupt_checkpoint(capsys, sample_manifest, tmp_path):
    from elm_data.trainer.checkpoint import CHECKPOINTS, STREAM_STATE, TRAINER_STATE, TRAINING_STATE

    step = tmp_path / "run" / CHECKPOINTS / "step_00000001"
    step.mkdir(parents=True)
    for name in ("model.safetensors", "model_config.json", TRAINING_STATE, STREAM_STATE):
        (step / name).write_bytes(b"\x80\x04 not a checkpoint")
    (step / TRAINER_STATE).write_text("{}")
    config = _train_config(tmp_path, sample_manifest)
    code, err = _cli(capsys, "train", config, "--resume", step, "--no-progress")
    _one_line_error(code, err, str(step))
    assert "weights_only" not in err


def test_stream_seq_len_zero_is_refused(capsys, sample_manifest):
    code, err = _cli(capsys, "stream", sample_manifest, "--seq-len", "0")
    _one_line_error(code, err, "--seq-len")


def test_disk_full_is_one_line(capsys, sample_manifest, monkeypatch, tmp_path):
    import elm_data.manifests.croissant as croissant

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "croissant.json"))

    monkeypatch.setattr(croissant, "export_croissant", full)
    code, err = _cli(capsys, "export", "croissant", sample_manifest, "--out", tmp_path / "croissant.json")
    _one_line_error(code, err, "No space left on device", "croissant.json")


def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys, sample_manifest, monkeypatch):
    import elm_data.manifests.croissant as croissant

    monkeypatch.setattr(croissant, "export_croissant", lambda *a, **k: {}["boom"])
    code, err = _cli(capsys, "export", "croissant", sample_manifest)
    assert code == 1
    assert "Traceback" in err and "KeyError" in err and "please report it" in err


def test_debug_shows_the_traceback_of_a_user_error(capsys, tmp_path):
    config = _train_config(tmp_path, tmp_path / "m", lr="fast")
    code, err = _cli(capsys, "--debug", "train", config)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_user_error_types_share_one_root():
    import importlib

    from elm_data.manifests.build import BuildFailed, WorkerDied
    from elm_data.manifests.workspace import ShardChanged
    from elm_data.trainer.checkpoint import CheckpointError
    from elm_data.trainer.config import ConfigError
    from elm_data.trainer.loop import TrainingError

    try:  # the stream's planner: a module of the stream package, or (before it) of pipeline/
        plan = importlib.import_module("elm_data.pipeline.stream.plan")
    except ImportError:
        plan = importlib.import_module("elm_data.pipeline.plan")
    for error in (BuildFailed, WorkerDied, ShardChanged, plan.PlanError, CheckpointError, ConfigError, TrainingError):
        assert issubclass(error, ElmDataError), error


_STALLED = """
import sys, time
import elm_data.manifests.build as build
real = build.process_shard

def stall(task, *args, **kwargs):
    if task.shard == 1:
        print("stalled", flush=True)
        time.sleep(600)
    return real(task, *args, **kwargs)

build.process_shard = stall
from elm_data.cli import run
sys.exit(run(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_stops_a_build_cleanly_with_a_message(sample_dir, tokenizer_path, tmp_path):
    out = tmp_path / "m"
    args = ["build", "manifest", str(sample_dir / "mixture.yaml"), "--out", str(out), "--tokenizer", tokenizer_path]
    proc = subprocess.Popen([sys.executable, "-c", _STALLED, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout.readline().strip() == "stalled"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert (Path(str(out) + ".partial") / "shard-00000.json").exists()  # the committed shard is kept
