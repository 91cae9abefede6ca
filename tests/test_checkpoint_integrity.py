"""Checkpoints say what they hold: every file's sha256 is recorded and checked before it is loaded (resume,
export), each damaged file is blamed by name in one line, and equal tensors are saved as equal bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from test_trainer_units import small_model

from elm_data.cli import run as cli_run
from elm_data.model.weights import CONFIG_FILE, WEIGHTS_FILE, save_model
from elm_data.trainer.core import checkpoint as ckpt
from elm_data.trainer.core.config import TrainConfig
from elm_data.trainer.core.optim import build_optimizer


def _checkpoint(run_dir: Path) -> Path:
    model = small_model()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
    model(torch.randint(0, 100, (1, 8))).sum().backward()
    optimizer.step()
    states = {"optimizer": optimizer.state_dict(), "scheduler": {"x": 1}}
    return ckpt.save_checkpoint(run_dir, 2, model, states, {"pos": [1]}, {"tokens": 64})


def _flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_trainer_state_records_the_sha256_of_every_other_file(tmp_path):
    path = _checkpoint(tmp_path)
    files = json.loads((path / ckpt.TRAINER_STATE).read_text())["files"]
    names = [p.name for p in path.iterdir() if p.name != ckpt.TRAINER_STATE]
    assert files == {name: _sha256(path / name) for name in names}  # hashlib over the bytes on disk
    assert sorted(files) == sorted([WEIGHTS_FILE, CONFIG_FILE, ckpt.TRAINING_STATE, ckpt.STREAM_STATE])


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE, ckpt.TRAINING_STATE, ckpt.STREAM_STATE])
def test_a_flipped_byte_in_any_file_is_refused_at_resume_naming_it(tmp_path, name):
    path = _checkpoint(tmp_path)
    _flip_byte(path / name, offset_from_end=100 if name != CONFIG_FILE else 5)
    with pytest.raises(ckpt.CheckpointError, match=f"{name} does not match the sha256") as error:
        ckpt.read_checkpoint(path)
    assert "\n" not in str(error.value)


def test_a_flipped_weight_byte_is_refused_by_export_in_one_line(tmp_path, capsys):
    path = _checkpoint(tmp_path)
    _flip_byte(path / WEIGHTS_FILE)  # a byte of the last tensor's data: safetensors itself cannot tell
    assert cli_run(["export", "hf", str(path), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{WEIGHTS_FILE} does not match the sha256" in err, err
    assert not (tmp_path / "hf" / WEIGHTS_FILE).exists()


def test_damaged_weights_without_digests_are_one_line_at_export(tmp_path, capsys):
    model_dir = tmp_path / "model"
    save_model(small_model(), model_dir)  # a model directory: no trainer_state.json, so no digests
    data = bytearray((model_dir / WEIGHTS_FILE).read_bytes())
    data[8:16] = b"\x00garbage"  # inside the JSON header
    (model_dir / WEIGHTS_FILE).write_bytes(bytes(data))
    assert cli_run(["export", "hf", str(model_dir), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and WEIGHTS_FILE in err, err


@pytest.mark.parametrize(
    "edit, blamed",
    [
        (lambda c: json.dumps(c | {"model_dim": 128}), f"{WEIGHTS_FILE} does not fit {CONFIG_FILE}"),
        (lambda c: "{not json", f"{CONFIG_FILE} is damaged"),
        (lambda c: json.dumps(c | {"modle_dim": 1}), f"{CONFIG_FILE} is damaged"),
    ],
)
def test_an_edited_model_config_is_blamed_on_the_config(tmp_path, edit, blamed):
    path = _checkpoint(tmp_path)
    config = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(edit(config))
    with pytest.raises(ckpt.CheckpointError, match=f"{CONFIG_FILE} does not match the sha256"):
        ckpt.read_checkpoint(path)  # first of all, its recorded sha256
    state = json.loads((path / ckpt.TRAINER_STATE).read_text())
    del state["files"]  # as a checkpoint from before digests: the config is still the one blamed
    (path / ckpt.TRAINER_STATE).write_text(json.dumps(state))
    with pytest.raises(ckpt.CheckpointError, match=blamed) as error:
        ckpt.read_checkpoint(path)
    assert f"{WEIGHTS_FILE} is damaged" not in str(error.value)
    with pytest.raises(ckpt.CheckpointError, match=blamed):
        ckpt.load_checkpoint_model(path)  # export's way in


def test_equal_tensors_are_saved_as_equal_bytes(tmp_path):
    model = small_model()
    saved = [save_model(model, tmp_path / f"save{i}").read_bytes() for i in range(8)]
    # the metadata map was written in hash order: 1 in 2 differ
    assert all(data == saved[0] for data in saved[1:])
    again = small_model()  # equal tensors in another module
    assert save_model(again, tmp_path / "again").read_bytes() == saved[0]


# ---- resuming stands exactly where the checkpoint was saved
# ------------------------------------------------------
def test_iterating_the_stream_loader_never_draws_from_torchs_global_rng(sample_manifest, tokenizer_path):
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    loader = StreamLoader(TokenStream(sample_manifest, batch_size=2, seq_len=32, tokenizer=tokenizer_path))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    for _ in range(2):  # a fresh iteration each time (as a resumed trainer makes one)
        next(iter(loader))
        assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow  # trains three short runs
def test_a_resumed_run_steps_from_the_rng_state_its_checkpoint_saved(sample_manifest, tmp_path, monkeypatch):
    from test_trainer_run import small_config

    from elm_data.trainer.core import loop

    seen: list[torch.Tensor] = []
    real_step = loop.train_step
    monkeypatch.setattr(
        loop, "train_step", lambda *a, **k: seen.append(torch.get_rng_state()) or real_step(*a, **k)
    )
    config = small_config(sample_manifest, max_steps=4, tokens_per_step=2 * 2 * 32)
    straight = loop.train(config, out_dir=tmp_path / "straight", progress=False)
    at_straight = list(seen)
    first = loop.train(config, out_dir=tmp_path / "resumed", stop_after=2, progress=False)
    seen.clear()
    second = loop.train(config, resume=first.run_dir, progress=False)
    saved = torch.load(first.checkpoint / ckpt.TRAINING_STATE, weights_only=True)["rng"]["torch"]
    assert torch.equal(seen[0], saved)  # step 3 starts from the state step 2's checkpoint holds
    assert all(torch.equal(a, b) for a, b in zip(seen, at_straight[2:], strict=True))
    assert first.losses + second.losses == straight.losses  # still bitwise the uninterrupted run


# ---- the checkpointer's parts are a mapping: a trainer adds or drops one without changing it
# --------------------
class Counter:
    """A stateful part the Checkpointer knows nothing of."""

    def __init__(self, count: int = 0) -> None:
        self.count = count

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


class Position(Counter):
    """Stands in for the stream loader (the part every checkpoint holds in stream_state.pt)."""

    def state_dict(self) -> dict[str, list[int]]:
        return {"pos": [self.count]}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        self.count = state["pos"][0]


def _checkpointer(run_dir: Path, **parts) -> ckpt.Checkpointer:
    from elm_data.trainer.core.distributed import DistInfo

    info = DistInfo()
    parts = {"model": ckpt.ModelPart(small_model(), info), "stream": Position(7)} | parts
    return ckpt.Checkpointer(
        run_dir, parts, manifest_id="m" * 64, config=TrainConfig(), info=info, device="cpu"
    )


def test_the_checkpointer_saves_and_restores_whatever_parts_it_is_given(tmp_path):
    saving = _checkpointer(tmp_path, counter=Counter(3), scheduler=Counter(9))
    path = saving.save(ckpt.TrainState(receipt="r", step=2, tokens=64), {"a/b": 64})
    assert sorted(torch.load(path / ckpt.TRAINING_STATE, weights_only=True)) == ["counter", "scheduler"]
    assert torch.load(path / ckpt.STREAM_STATE, weights_only=True) == {"pos": [7]}

    loading = _checkpointer(tmp_path, counter=Counter(), stream=Position())  # drops the scheduler: ignored
    state, stream = loading.load(path)
    assert (state.step, state.tokens, loading.parts["counter"].count, stream) == (2, 64, 3, {"pos": [7]})
    assert loading.parts["stream"].count == 7
    with pytest.raises(ckpt.CheckpointError, match=r"holds no state of \['ema'\]"):
        _checkpointer(tmp_path, counter=Counter(), ema=Counter()).load(path)
    with pytest.raises(ValueError, match="stream"):
        ckpt.Checkpointer(
            tmp_path, {"model": Counter()}, manifest_id="m", config=TrainConfig(), info=None, device="cpu"
        )


@pytest.mark.slow  # trains three short runs
def test_a_trainer_that_adds_and_drops_a_part_resumes_bit_identically(sample_manifest, tmp_path):
    """A Trainer subclass adds a part (a step counter) and drops one (the RNGs: nothing in a step draws)
    through ``checkpoint_parts`` alone: its checkpoint holds exactly its parts, a resume restores them and
    trains the steps of the uninterrupted run; the plain Trainer, whose parts every checkpoint of its own
    holds, refuses it."""
    from test_trainer_run import small_config

    from elm_data.trainer.core import loop
    from elm_data.trainer.core.distributed import DistInfo

    class CountingTrainer(loop.Trainer):
        def checkpoint_parts(self):
            self.counter = getattr(self, "counter", Counter())
            parts = super().checkpoint_parts()
            del parts["rng"]
            return parts | {"counter": self.counter}

        def after_step(self) -> None:
            self.counter.count += 1

    def run(trainer_class, run_dir, resume=None, stop_after=None):
        trainer = trainer_class(config, torch.device("cpu"), DistInfo(), run_dir=run_dir, progress=False)
        trainer.setup()
        if resume is not None:
            trainer.restore(ckpt.resolve_checkpoint(resume))
        return trainer, trainer.finish(trainer.run(stop_after))

    config = small_config(sample_manifest, max_steps=4, checkpoint_every=2)
    plain, straight = run(loop.Trainer, tmp_path / "plain")
    assert sorted(torch.load(straight.checkpoint / ckpt.TRAINING_STATE, weights_only=True)) == sorted(
        set(plain.checkpoint_parts()) - {"model", "stream"}
    )  # every part of the plain trainer is saved, none left out
    first, stopped = run(CountingTrainer, tmp_path / "counting", stop_after=2)
    assert sorted(torch.load(stopped.checkpoint / ckpt.TRAINING_STATE, weights_only=True)) == [
        "counter",
        "optimizer",
        "scheduler",
    ]
    second, resumed = run(CountingTrainer, tmp_path / "counting", resume=stopped.checkpoint)
    assert second.counter.count == 4 and resumed.final_step == 4
    assert stopped.losses + resumed.losses == straight.losses
    with pytest.raises(ckpt.CheckpointError, match=r"holds no state of \['rng'\]"):
        run(loop.Trainer, tmp_path / "plain-from-counting", resume=stopped.checkpoint)


# ---- a full disk at a checkpoint: one line naming it
# -------------------------------------------------------------
def _small_filesystems_work() -> bool:
    """Whether this machine lets a process mount a tmpfs in a mount namespace of its own (unshare -rm)."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        "mount -t tmpfs -o size=1m tmpfs /mnt",
    ]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def _run_in_small_filesystems(sizes: list[str], argv: list[str], tmp_path: Path):
    """Run ``argv`` in a private mount namespace where ``tmp_path/fs{i}`` are tmpfs of ``sizes[i]`` (real
    ENOSPC)."""
    import subprocess

    mounts = []
    for i, size in enumerate(sizes):
        (tmp_path / f"fs{i}").mkdir()
        mounts.append(f"mount -t tmpfs -o size={size} tmpfs {tmp_path / f'fs{i}'}")
    script = " && ".join(mounts) + ' && exec "$@"'
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


needs_small_filesystems = pytest.mark.skipif(
    not _small_filesystems_work(), reason="needs unshare -rm and tmpfs mounts (user namespaces)"
)

SAVE_IN_SMALL_FILESYSTEMS = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from test_trainer_units import small_model
from elm_data.core.errors import DiskFull
from elm_data.trainer.core import checkpoint as ckpt
from elm_data.trainer.core.config import TrainConfig
from elm_data.trainer.core.optim import build_optimizer

model = small_model()  # 8.2 MB of weights, 2 x that of AdamW state once stepped
optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
model(torch.randint(0, 100, (1, 8))).sum().backward()
optimizer.step()
out = {}
for run_dir in sys.argv[2:]:
    try:
        ckpt.save_checkpoint(run_dir, 1, model, {"optimizer": optimizer.state_dict()}, {}, {"tokens": 1})
        out[run_dir] = "saved"
    except DiskFull as error:
        out[run_dir] = str(error)
print(json.dumps(out))
"""


@needs_small_filesystems
@pytest.mark.slow
def test_a_full_disk_at_any_checkpoint_file_is_one_line_naming_the_checkpoint(tmp_path):
    import sys

    tests = str(Path(__file__).parent)
    runs = [str(tmp_path / f"fs{i}" / "run") for i in range(2)]
    # 4 MiB: the weights (safetensors) do not fit; 12 MiB: they do, the optimizer state (torch.save) does not
    done = _run_in_small_filesystems(
        ["4m", "12m"], [sys.executable, "-c", SAVE_IN_SMALL_FILESYSTEMS, tests, *runs], tmp_path
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    for run in runs:
        message = outcome[run]
        assert message.startswith(f"disk full: no space left to write {run}/checkpoints/step_00000001 ("), (
            message
        )
        assert "\n" not in message


@needs_small_filesystems
@pytest.mark.slow  # trains in a subprocess until its first checkpoint
def test_train_on_a_full_disk_exits_2_with_one_line(sample_manifest, tmp_path):
    import sys

    import yaml
    from test_trainer_run import small_config

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(small_config(sample_manifest, max_steps=2).to_dict()))
    # 20 MiB: the log and the weights (16 MiB) fit, the optimizer state does not
    run = tmp_path / "fs0" / "run"
    argv = [sys.executable, "-m", "elm_data", "train", str(config), "--out", str(run), "--no-progress"]
    done = _run_in_small_filesystems(["20m"], argv, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    # one line, no trace
    assert lines == [line for line in done.stderr.splitlines() if "rror" in line], done.stderr
    assert lines[0].startswith(f"error: disk full: no space left to write {run}/checkpoints/step_00000002"), (
        lines
    )


@needs_small_filesystems
@pytest.mark.slow  # builds in a subprocess until the disk is full
def test_a_manifest_build_on_a_full_disk_names_the_path(sample_dir, tmp_path):
    import sys

    out = tmp_path / "fs0" / "manifest"
    argv = [
        sys.executable,
        "-m",
        "elm_data",
        "build",
        "manifest",
        str(sample_dir / "mixture.yaml"),
        "--out",
        str(out),
    ]
    done = _run_in_small_filesystems(["64k"], argv, tmp_path)
    errors = [line for line in done.stderr.splitlines() if "rror" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: disk full: no space left to write {out}"), errors
