"""One error contract: a user error is one line `error: …` and exit 2, a bug a traceback with a hint (exit 1).

A check that runs and finds a difference (verify, audit-run --verify) also exits 1, after printing what
differs.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import click
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
    code, err = _cli(
        capsys, "build", "manifest", mixture, "--out", tmp_path / "m", "--tokenizer", tokenizer_path
    )
    _one_line_error(code, err, needle)
    assert not (tmp_path / "m").exists()


def _train_config(tmp_path: Path, manifest: Path | str, **settings) -> Path:
    raw = {
        "manifest": str(manifest),
        "model": "tiny",
        "seq_len": 32,
        "batch_size": 2,
        "max_steps": 2,
    } | settings
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("settings", "needle"), [({"lr": "fast"}, "lr: "), ({"model": "tiny2"}, "model: ")])
def test_bad_training_config_values(capsys, tmp_path, settings, needle):
    code, err = _cli(
        capsys, "train", _train_config(tmp_path, tmp_path / "m", **settings), "--out", tmp_path / "run"
    )
    _one_line_error(code, err, needle, "train.yaml")


def test_unknown_subset_in_training_weights(capsys, sample_manifest, tmp_path):
    config = _train_config(tmp_path, sample_manifest, weights={"nope/none": 1.0})
    code, err = _cli(capsys, "train", config, "--out", tmp_path / "run", "--no-progress")
    _one_line_error(code, err, "nope/none")


@pytest.mark.slow  # builds a run first (test_trainer_units' damaged-state test is the quick one)
def test_corrupt_checkpoint(capsys, sample_manifest, tmp_path):
    from elm_data.trainer.core.checkpoint import CHECKPOINTS, STREAM_STATE, TRAINER_STATE, TRAINING_STATE

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
    from elm_data.trainer.core.checkpoint import CheckpointError
    from elm_data.trainer.core.config import ConfigError
    from elm_data.trainer.core.loop import TrainingError

    try:  # the stream's planner: a module of the stream package, or (before it) of pipeline/
        plan = importlib.import_module("elm_data.pipeline.stream.plan")
    except ImportError:
        plan = importlib.import_module("elm_data.pipeline.plan")
    for error in (
        BuildFailed,
        WorkerDied,
        ShardChanged,
        plan.PlanError,
        CheckpointError,
        ConfigError,
        TrainingError,
    ):
        assert issubclass(error, ElmDataError), error


def test_unknown_source_in_a_mixture_is_one_line(capsys, sample_dir, tokenizer_path, tmp_path):
    mixture = _mixture(sample_dir, tmp_path / "mix.yaml")
    mixture.write_text(mixture.read_text().replace("source: redpajama", "source: nowhere", 1))
    code, err = _cli(
        capsys, "build", "manifest", mixture, "--out", tmp_path / "m", "--tokenizer", tokenizer_path
    )
    _one_line_error(code, err, "unknown source/subset nowhere/")
    assert "error: 'unknown" not in err  # the message itself, not a KeyError's repr


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ElmDataError("sources[0]: bad"), "sources[0]: bad"),
        (FileNotFoundError(2, "No such file or directory", "/x/y"), "No such file or directory: /x/y"),
        (PermissionError(13, "Permission denied", "/x"), "Permission denied: /x"),
        (ElmDataError("s3://KEY:SECRET@bucket/a missing"), "s3://bucket/a missing"),
        (ValueError("a bug"), None),
        (KeyError("a bug"), None),
    ],
)
def test_which_errors_are_the_users(error, line):
    from elm_data.core.commands import user_error_message

    assert user_error_message(error) == line


def test_a_command_run_alone_reports_a_user_error_in_one_line_exit_2(tmp_path):
    """The folder CLIs catch nothing: the command class turns a user error into click's one-line error."""
    from click.testing import CliRunner

    from elm_data.manifests.cli import verify

    result = CliRunner().invoke(verify, [str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'nowhere'}: no such manifest directory"
    ]


def test_a_check_that_finds_a_difference_exits_1(capsys, sample_manifest, monkeypatch):
    import elm_data.manifests.verify as verify

    class Differs:
        ok, shards_checked = False, 1

        def summary(self) -> str:
            return "mismatch: a shard"

    monkeypatch.setattr(verify, "verify_manifest", lambda *a, **k: Differs())
    code, err = _cli(capsys, "verify", sample_manifest)
    assert code == 1 and "mismatch: a shard" in err and "error:" not in err


def test_every_command_is_made_with_the_one_error_path():
    from elm_data.cli import COMMANDS, cli
    from elm_data.core.commands import Command

    ctx = click.Context(cli)
    plain = []
    for group, commands in COMMANDS.items():
        for name in commands:
            command = (
                cli.get_command(ctx, name)
                if not group
                else cli.get_command(ctx, group).get_command(ctx, name)
            )
            if not isinstance(command, Command):
                plain.append(f"{group} {name}".strip())
    assert plain == []


def test_help_lists_the_exit_codes(capsys):
    assert run(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Exit codes: 0 done; 1 a check found a difference" in out and "2 a usage or user error" in out


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
    args = [
        "build",
        "manifest",
        str(sample_dir / "mixture.yaml"),
        "--out",
        str(out),
        "--tokenizer",
        tokenizer_path,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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


@pytest.mark.parametrize(
    ("quality", "needle"),
    [
        ({"name": "nope"}, "unknown quality filter 'nope'"),
        ({"name": "c4_quality", "params": {"nope": 1}}, "no parameter(s) ['nope']"),
    ],
)
def test_an_unknown_quality_filter_or_parameter_is_one_line(
    capsys, sample_dir, tokenizer_path, tmp_path, quality, needle
):
    mixture = _mixture(sample_dir, tmp_path / "mix.yaml")
    raw = yaml.safe_load(mixture.read_text())
    raw.setdefault("filters", {})["quality"] = [quality]
    mixture.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, err = _cli(
        capsys, "build", "manifest", mixture, "--out", tmp_path / "m", "--tokenizer", tokenizer_path
    )
    _one_line_error(code, err, needle)


def test_a_damaged_manifest_json_is_one_line(capsys, sample_manifest, tmp_path):
    import shutil

    damaged = Path(shutil.copytree(sample_manifest, tmp_path / "m"))
    (damaged / "manifest.json").write_text('{"manifest_id": ')
    for command in ("verify", "stream"):
        code, err = _cli(capsys, command, damaged)
        _one_line_error(code, err, "manifest.json", "not valid JSON")
