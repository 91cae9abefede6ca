"""Checkpoints: every stateful part of a run in one directory per step, which appears whole or not at all.

Layout of ``RUN_DIR/checkpoints/step_00000100/``::

    model.safetensors      weights (elm_data.model.weights.save_model; `elm-data export hf` reads it)
    model_config.json      OpenELMConfig.to_dict()
    training_state.pt      optimizer + scheduler state and RNG states (plain tensors/dicts, weights_only)
    stream_state.pt        the stream loader's state_dict, every rank's merged into one (resumes the exact
    batches) trainer_state.json     step, tokens, consumed per source, receipt chain head, manifest id, config
    + fingerprint,
                           and ``files``: the sha256 of each file above (checked before any of them is loaded)

Invariant 5: a directory named ``step_*`` exists only once complete. It is filled as a hidden temp sibling and
published whole by ``elm_data.core.outputs.staged_dir`` (the umask's modes, then an atomic swap when re-saving
a step); leftovers of an interrupted write are ``.step_*.tmp-*`` folders, removed by the next save.

:class:`Checkpointer` is the trainer's one way in and out: ``save`` and ``load`` cover every part it is given
by name (the trainer's: model, optimizer, scheduler, stream, RNGs) and a :class:`TrainState`, and ``load``
refuses a checkpoint of another run. The file-level functions below serve it and the tools that read
checkpoints (export, eval, audit-run, tests).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np
import torch

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import staged_dir
from elm_data.model.openelm import OpenELM
from elm_data.model.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WeightsError,
    load_model,
    read_config_file,
    save_model,
)
from elm_data.pipeline.stream import merge_states
from elm_data.pipeline.stream.state import StreamState, check_state

from . import distributed as D
from .config import TrainConfig

CHECKPOINTS = "checkpoints"
TRAINING_STATE, STREAM_STATE, TRAINER_STATE = "training_state.pt", "stream_state.pt", "trainer_state.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
# trainer_state.json's ``files`` covers these
DIGESTED = (WEIGHTS_FILE, CONFIG_FILE, TRAINING_STATE, STREAM_STATE)


class CheckpointError(ElmDataError, ValueError):
    """A checkpoint that is missing, incomplete or does not belong to this run."""


def step_dir_name(step: int) -> str:
    """``step_00000100``: zero-padded, so names sort as steps do."""
    return f"step_{step:08d}"


# ---- RNG states
# ---------------------------------------------------------------------------------------------
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
    """Restore what :func:`rng_state` saved (its tensors may have been loaded onto a GPU: RNG states live on
    CPU)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(value):
    """Python's RNG state with its nested lists (as saved) turned back into tuples."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class TrainerState(TypedDict, total=False):
    """``trainer_state.json``: what the trainer saves beside the parts (``files``: sha256 of each ``DIGESTED``
    file; ``step`` and ``files`` are added by :func:`save_checkpoint`)."""

    step: int
    tokens: int
    consumed: dict[str, int]
    manifest_id: str
    fingerprint: str
    config: dict[str, Any]
    receipt: str
    files: dict[str, str]


# ---- checkpoint directories
# ---------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    states: Mapping[str, Any],
    stream_state: StreamState,
    trainer_state: TrainerState,
    keep: int | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; returns its directory. ``states``: the other parts' states by
    name (``training_state.pt``: the optimizer's, the scheduler's, the RNGs', ...). ``keep`` prunes older step
    directories."""
    root = Path(run_dir) / CHECKPOINTS
    for stale in root.glob(".step_*.tmp-*"):  # what a killed save left (staged_dir's temp names)
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    with staged_dir(final) as tmp:  # re-saving a step (after a resume) swaps the old one out atomically
        save_model(model, tmp)
        torch.save(dict(states), tmp / TRAINING_STATE)
        torch.save(stream_state, tmp / STREAM_STATE)
        state: TrainerState = {**trainer_state, "step": step, "files": file_digests(tmp)}
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
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
        raise CheckpointError(
            f"{path} is neither a checkpoint directory nor a run directory with checkpoints"
        )
    return checkpoints[-1]


@dataclass
class SavedCheckpoint:
    """A checkpoint as read from disk: the saved model (on CPU), the stream state, and the other parts' states
    by name (``states``: ``training_state.pt``)."""

    path: Path
    model: OpenELM
    trainer: TrainerState
    states: dict[str, Any]
    stream: StreamState


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> SavedCheckpoint:
    """Read every file of a checkpoint (or of a run's newest), each checked against the sha256 its
    ``trainer_state.json`` records and loaded with ``weights_only=True``; a missing, changed or damaged file
    is a :class:`CheckpointError` naming it."""
    path = resolve_checkpoint(path)
    missing = [name for name in (*DIGESTED, TRAINER_STATE) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    trainer = read_trainer_state(path)
    check_digests(path, trainer, DIGESTED, "resume from another checkpoint")
    model = _read_model(path)
    training = _read(
        path,
        TRAINING_STATE,
        lambda: torch.load(path / TRAINING_STATE, map_location=map_location, weights_only=True),
    )
    stream = read_stream_state(path)
    if not isinstance(training, dict) or not all(isinstance(name, str) for name in training):
        raise CheckpointError(f"checkpoint {path}: {TRAINING_STATE} does not hold a training state")
    return SavedCheckpoint(path, model, trainer, training, stream)


def file_digests(directory: Path) -> dict[str, str]:
    """``{name: sha256}`` of the checkpoint files in ``directory`` that ``trainer_state.json`` covers."""
    digests = {}
    for name in DIGESTED:
        with (directory / name).open("rb") as handle:
            digests[name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def check_digests(path: Path, trainer: TrainerState, names: tuple[str, ...], advice: str) -> bool:
    """Each of ``names`` must have the sha256 that ``trainer_state.json`` records, else a
    :class:`CheckpointError` naming the file. False (nothing checked) for a checkpoint written before
    checkpoints carried digests."""
    recorded = trainer.get("files")
    if recorded is None:
        return False
    if not isinstance(recorded, dict):
        raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE} 'files' is not a table of sha256 digests")
    for name in names:
        with (path / name).open("rb") as handle:
            actual = hashlib.file_digest(handle, "sha256").hexdigest()
        if recorded.get(name) != actual:
            raise CheckpointError(
                f"checkpoint {path}: {name} does not match the sha256 its {TRAINER_STATE} records "
                f"(changed or damaged since it was saved); {advice}"
            )
    return True


def load_checkpoint_model(path: str | Path) -> OpenELM:
    """The model of a checkpoint directory (its files checked against their recorded sha256 first) or of any
    directory or file :func:`~elm_data.model.weights.load_model` reads; a damaged or changed file is one
    line."""
    path = Path(path)
    if not (path / TRAINER_STATE).is_file():
        return load_model(path)
    check_digests(path, read_trainer_state(path), (WEIGHTS_FILE, CONFIG_FILE), "export another checkpoint")
    return _read_model(path)


def _read_model(path: Path) -> OpenELM:
    """The weights of checkpoint ``path`` under its ``model_config.json``: each file blamed for its own
    damage, and weights that do not fit the config said to disagree with it."""
    config = _read(path, CONFIG_FILE, lambda: read_config_file(path / CONFIG_FILE))
    try:
        return load_model(path, config=config)
    except WeightsError as error:
        if "do not match the config" not in str(error):
            raise _damaged(path, WEIGHTS_FILE, error) from error
        raise CheckpointError(
            f"checkpoint {path}: {WEIGHTS_FILE} does not fit {CONFIG_FILE} ({error})"
        ) from error


def read_trainer_state(path: str | Path) -> TrainerState:
    """``trainer_state.json`` of checkpoint directory ``path``; missing or damaged: a
    :class:`CheckpointError`."""
    path = Path(path)
    state = _read(path, TRAINER_STATE, lambda: json.loads((path / TRAINER_STATE).read_text()))
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE} does not hold a trainer state")
    return state


def read_stream_state(path: str | Path) -> StreamState:
    """The merged stream state of checkpoint directory ``path`` (``weights_only``); missing or damaged: a
    :class:`CheckpointError`."""
    path = Path(path)
    state = _read(path, STREAM_STATE, lambda: torch.load(path / STREAM_STATE, weights_only=True))
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: {STREAM_STATE} does not hold a stream state")
    return state


def _read(path: Path, name: str, read):
    """``read()``, or one line naming the damaged file. Never suggests loading it unsafely."""
    try:
        return read()
    except CheckpointError:
        raise
    # corrupt zip, truncated safetensors, a pickle that is not plain data, bad JSON
    except Exception as error:
        raise _damaged(path, name, error) from error


def _damaged(path: Path, name: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path}: {name} is damaged or not a checkpoint file ({type(error).__name__}); "
        "use another checkpoint"
    )


# ---- the trainer's checkpointer
# -----------------------------------------------------------------------------
@dataclass
class TrainState:
    """The trainer's own counters: the consumption receipt's chain head (a fresh run's: the genesis head of
    its manifest and plan), optimizer steps taken and label positions consumed."""

    receipt: str
    step: int = 0
    tokens: int = 0


class Part(Protocol):
    """A stateful part of a run as the :class:`Checkpointer` sees it (torch's optimizers and schedulers are
    parts as they are). ``state_dict`` is called on every rank (it may be collective); a part may also have
    ``check(state, path)``, which refuses a saved state before any part of the run is changed."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


# the parts every checkpoint holds, in files of their own (export and eval read them)
MODEL, STREAM = "model", "stream"


class ModelPart:
    """The OpenELM's weights (``model.safetensors`` + ``model_config.json``); under FSDP2 (the same module,
    sharded in place) gathered to full tensors on rank 0 for saving, and each rank's shard put back on
    load."""

    def __init__(self, model: torch.nn.Module, info: D.DistInfo) -> None:
        self.model, self.info = model, info

    def state_dict(self) -> torch.nn.Module:
        """The module to save: the model itself, or under FSDP a full copy on CPU (filled on rank 0 only)."""
        if not D.is_fsdp(self.model):
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        with torch.device("meta"):
            cpu_model = OpenELM(self.model.config)
        if self.info.is_main:
            cpu_model.load_state_dict(full, assign=True)
        return cpu_model

    def check(self, saved: OpenELM, path: Path) -> None:
        """The saved weights must be of this run's model shape."""
        if saved.config.to_dict() != self.model.config.to_dict():
            raise CheckpointError(f"checkpoint {path} holds a different model config than this run's")

    def load_state_dict(self, saved: OpenELM) -> None:
        _load_model_state(self.model, saved.state_dict())


class OptimizerPart:
    """The optimizer's state: its ``state_dict`` (one process, DDP), or under FSDP the full state keyed by
    parameter name (torch.distributed.checkpoint's full state dict), re-sharded onto each rank's parameters on
    load."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        if not D.is_fsdp(self.model):
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, self.optimizer, options=options)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        _load_optimizer_state(self.model, self.optimizer, saved)


class StreamPart:
    """The stream loader's position: every rank's state merged into one on save (resumable on any ranks x
    workers that divide the stream's partitions); on load, checked against this rank's stream first
    (``PlanError``)."""

    def __init__(self, loader, info: D.DistInfo) -> None:
        self.loader, self.info = loader, info

    def state_dict(self) -> StreamState:
        return merge_states(D.gather_objects(self.loader.state_dict(), self.info))

    def check(self, saved: StreamState, path: Path) -> None:
        stream = self.loader.stream
        check_state(saved, stream.manifest_id, stream.config, stream.rank, stream.world_size)

    def load_state_dict(self, saved: StreamState) -> None:
        self.loader.load_state_dict(saved)


class RngPart:
    """The process's RNGs (Python, numpy, torch, CUDA): put back last, so nothing draws between a resume and
    the first step."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        set_rng_state(saved)


class Checkpointer:
    """Saves and restores the stateful parts of one run as a checkpoint directory (see the module docstring).

    ``parts`` names them (:class:`Part`s), in the order a load restores them: the trainer's are ``model``
    (:class:`ModelPart`), ``optimizer``, ``scheduler``, ``stream`` (:class:`StreamPart`) and ``rng``
    (:class:`RngPart`, last); ``model`` and ``stream`` are required (they have files of their own), every
    other part is an entry of ``training_state.pt`` under its name, so a trainer adds or drops one without
    changing this class (``Trainer.checkpoint_parts``). Besides the parts, a :class:`TrainState`. A checkpoint
    is bound to its run by the manifest id and the config fingerprint, and ``load`` refuses any other, or one
    without a part of this run. Both methods are collective under torchrun (every rank calls them); only rank
    0 writes, so the files are those of a one-process run.
    """

    def __init__(
        self,
        run_dir: Path,
        parts: Mapping[str, Part],
        *,
        manifest_id: str,
        config: TrainConfig,
        info: D.DistInfo,
        device: torch.device,
    ) -> None:
        missing = sorted({MODEL, STREAM} - set(parts))
        if missing:
            raise ValueError(f"a checkpoint needs the parts {missing}")
        self.run_dir, self.manifest_id, self.config, self.info, self.device = (
            run_dir,
            manifest_id,
            config,
            info,
            device,
        )
        self.parts = dict(parts)

    def save(self, state: TrainState, consumed: dict[str, int]) -> Path | None:
        """Write checkpoint ``state.step``; returns its directory on rank 0, None on the other ranks.

        ``consumed``: tokens per source over the whole run and all ranks, recorded as the checkpoint's
        ``consumed``.
        """
        trainer_state: TrainerState = {
            "tokens": state.tokens,
            "consumed": consumed,
            "manifest_id": self.manifest_id,
            "fingerprint": self.config.fingerprint(),
            "config": self.config.to_dict(),
            "receipt": state.receipt,
        }
        # every rank: may be collective
        states = {name: part.state_dict() for name, part in self.parts.items()}
        model, stream = states.pop(MODEL), states.pop(STREAM)
        path = None
        if self.info.is_main:
            keep = self.config.keep_checkpoints
            path = save_checkpoint(self.run_dir, state.step, model, states, stream, trainer_state, keep=keep)
        D.barrier(self.info)
        return path

    def load(self, path: str | Path) -> tuple[TrainState, StreamState]:
        """Restore every part from checkpoint ``path``; returns its :class:`TrainState` and stream state as
        saved.

        Refuses a checkpoint of another manifest, other training settings or another model, or one that lacks
        a part (:class:`CheckpointError`), or a stream state this stream cannot resume (``PlanError``), before
        anything is changed; then restores the parts in order (the RNGs last, so nothing after this call draws
        before training).
        """
        saved = read_checkpoint(path, map_location=self.device)
        states = {**saved.states, MODEL: saved.model, STREAM: saved.stream}
        self._check_belongs(saved, states)
        for name, part in self.parts.items():
            part.load_state_dict(states[name])
        trainer = saved.trainer
        state = TrainState(
            step=int(trainer["step"]), tokens=int(trainer["tokens"]), receipt=trainer["receipt"]
        )
        return state, saved.stream

    def _check_belongs(self, saved: SavedCheckpoint, states: dict[str, Any]) -> None:
        """The checkpoint must be of this run: same manifest, same training settings (fingerprint), a state
        for every part, and each part's own check (same model shape, a stream state this rank's stream can
        resume)."""
        manifest_id = saved.trainer.get("manifest_id")
        if manifest_id != self.manifest_id:
            raise CheckpointError(
                f"checkpoint {saved.path} was trained on manifest {manifest_id}, this config names "
                f"{self.manifest_id}"
            )
        if saved.trainer.get("fingerprint") != self.config.fingerprint():
            raise CheckpointError(f"checkpoint {saved.path} was written under different training settings")
        missing = [name for name in self.parts if name not in states]
        if missing:
            raise CheckpointError(
                f"checkpoint {saved.path} holds no state of {missing} (a run without them saved it)"
            )
        for name, part in self.parts.items():
            check = getattr(part, "check", None)
            if check is not None:
                check(states[name], saved.path)


def _load_model_state(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Full weights into ``model``: copied in place (one process, DDP: every rank reads the same file), or,
    under FSDP, each rank keeping its own shard of every tensor."""
    if not D.is_fsdp(model):
        model.load_state_dict(full, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True))


def _load_optimizer_state(model, optimizer, saved: dict[str, Any]) -> None:
    """Restore the optimizer: a plain ``state_dict`` (one process, DDP) or, under FSDP, the full name-keyed
    state that :meth:`OptimizerPart.state_dict` saved, re-sharded onto this rank's parameters."""
    if not D.is_fsdp(model):
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    try:
        set_optimizer_state_dict(
            model, optimizer, optim_state_dict=saved, options=StateDictOptions(full_state_dict=True)
        )
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(
            f"the checkpoint's optimizer state cannot be loaded into this FSDP run ({error})"
        ) from error
