"""Checkpoints: one directory per step, written whole into a temp sibling and renamed into place.

Layout of ``RUN_DIR/checkpoints/step_00000100/``::

    model.safetensors      weights (elm_data.model.weights.save_model; `elm-data export hf` reads it)
    model_config.json      OpenELMConfig.to_dict()
    training_state.pt      optimizer + scheduler state and RNG states (plain tensors/dicts, weights_only)
    stream_state.pt        the stream loader's state_dict (resumes the exact batch sequence)
    trainer_state.json     step, tokens, per-source ledger, manifest id, config fingerprint

A directory named ``step_*`` therefore exists only once complete (invariant 5); leftovers of an interrupted
write are hidden ``.step_*.tmp-*`` folders, removed by the next save.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import publish_modes, replace_dir
from elm_data.model.weights import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model

CHECKPOINTS = "checkpoints"
TRAINING_STATE, STREAM_STATE, TRAINER_STATE = "training_state.pt", "stream_state.pt", "trainer_state.json"
STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ElmDataError, ValueError):
    """A checkpoint that is missing, incomplete or does not belong to this run."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    stream_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; returns its directory. ``keep`` prunes older step directories."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_model(model, tmp)
        torch.save(
            {"optimizer": optimizer_state, "scheduler": scheduler_state, "rng": rng_state()}, tmp / TRAINING_STATE
        )
        torch.save(stream_state, tmp / STREAM_STATE)
        (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=2, sort_keys=True) + "\n")
        publish_modes(tmp)  # mkdtemp made it 0700: the umask's modes, like any other tool
        replace_dir(tmp, final)  # re-saving a step (after a resume) swaps the old one out atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old_dir in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old_dir, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, or from a run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise CheckpointError(f"{path} is neither a checkpoint directory nor a run directory with checkpoints")
    return checkpoints[-1]


def load_checkpoint(path: str | Path, model: torch.nn.Module, map_location: str | torch.device = "cpu") -> dict:
    """Load weights into ``model`` (in place) and return the rest: ``trainer``, ``optimizer``, ``scheduler``,
    ``rng`` and ``stream`` states. Every file is read with ``weights_only=True``."""
    path = resolve_checkpoint(path)
    expected = (WEIGHTS_FILE, CONFIG_FILE, TRAINING_STATE, STREAM_STATE, TRAINER_STATE)
    missing = [name for name in expected if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    saved = _read(path, WEIGHTS_FILE, lambda: load_model(path))
    target = getattr(model, "_orig_mod", model)
    if saved.config.to_dict() != target.config.to_dict():
        raise CheckpointError(f"checkpoint {path} holds a different model config than this run's")
    target.load_state_dict(saved.state_dict(), strict=True)
    training = _read(
        path, TRAINING_STATE, lambda: torch.load(path / TRAINING_STATE, map_location=map_location, weights_only=True)
    )
    stream = _read(path, STREAM_STATE, lambda: torch.load(path / STREAM_STATE, weights_only=True))
    trainer = _read(path, TRAINER_STATE, lambda: json.loads((path / TRAINER_STATE).read_text()))
    if not isinstance(training, dict) or not {"optimizer", "scheduler", "rng"} <= set(training):
        raise CheckpointError(f"checkpoint {path}: {TRAINING_STATE} does not hold a training state")
    return {
        "path": path,
        "trainer": trainer,
        "optimizer": training["optimizer"],
        "scheduler": training["scheduler"],
        "rng": training["rng"],
        "stream": stream,
    }


def _read(path: Path, name: str, read):
    """``read()``, or one line naming the damaged file. Never suggests loading it unsafely."""
    try:
        return read()
    except CheckpointError:
        raise
    except Exception as error:  # corrupt zip, truncated safetensors, a pickle that is not plain data, bad JSON
        raise CheckpointError(
            f"checkpoint {path}: {name} is damaged or not a checkpoint file ({type(error).__name__}); "
            "resume from another checkpoint"
        ) from error
