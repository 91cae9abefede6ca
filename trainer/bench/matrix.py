"""An efficiency matrix as written: its YAML (:class:`Matrix`: shared training settings, the axes whose
product gives the cells, peak FLOP/s and prices), its cells (:class:`Cell`), and the columns of its results.

Below both the runner (:mod:`.efficiency`) and the plots (:mod:`.efficiency_plots`). A matrix that cannot be
used as written is a :class:`MatrixError` (a user error) when it is read, before any cell runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elm_data.core.settings import Settings, SettingsError, check_keys, load_mapping, resolve_path

from ..core.config import TrainConfig

AXES = (
    "model",
    "batch_size",
    "seq_len",
    "attention",
    "precision",
    "compile",
    "gradient_checkpointing",
    "distributed",
    "processes",
)
ATTENTION = ("sdpa", "flash", "efficient", "math", "cudnn", "eager")
PRECISION = ("fp32", "bf16", "fp8")
DISTRIBUTED = ("none", "ddp", "fsdp")
STATUSES = ("ok", "unsupported", "oom", "failed")
COLUMNS = (
    "cell",
    *AXES,
    "status",
    "reason",
    "device",
    "parameters",
    "steps",
    "timed_steps",
    "tokens",
    "tokens_per_s",
    "flops_per_token",
    "achieved_tflops",
    "peak_flops",
    "mfu",
    "mfu_note",
    "peak_memory_mib",
    "memory_kind",
    "loader_wait_s",
    "step_time_s",
    "stall_fraction",
    "first_loss",
    "loss_at_budget",
    "usd_per_hour",
    "tokens_per_usd",
    "usd_for_budget",
    "loss_drop_per_usd",
    "on_frontier",
    "wall_s",
)
NUMERIC = (
    "parameters",
    "steps",
    "timed_steps",
    "tokens",
    "tokens_per_s",
    "flops_per_token",
    "achieved_tflops",
    "peak_flops",
    "mfu",
    "peak_memory_mib",
    "loader_wait_s",
    "step_time_s",
    "stall_fraction",
    "first_loss",
    "loss_at_budget",
    "usd_per_hour",
    "tokens_per_usd",
    "usd_for_budget",
    "loss_drop_per_usd",
    "wall_s",
)
RUNS_DIR = "runs"  # OUT/runs/cell_NNN/log.jsonl: each cell's run log
OUTPUT_FILES = ("results.csv", "results.json", "cells.jsonl", "throughput.png", "frontier.png", RUNS_DIR)


class MatrixError(SettingsError):
    """A matrix YAML that cannot be used as written."""


@dataclass(frozen=True)
class Cell:
    """One combination of settings; ``model`` is a size name or a TrainConfig ``model`` mapping."""

    model: Any
    batch_size: int
    seq_len: int
    attention: str = "sdpa"
    precision: str = "fp32"
    compile: bool = False
    gradient_checkpointing: bool = False
    distributed: str = "none"
    processes: int = 1

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else str(self.model.get("name", "custom"))

    def settings(self) -> dict[str, Any]:
        return {axis: (self.model_name if axis == "model" else getattr(self, axis)) for axis in AXES}


@dataclass
class Matrix(Settings):
    """A matrix YAML: shared training settings, the axes whose product gives the cells, peaks and prices."""

    axes: dict[str, Any]  # axis -> a value or a list of values
    manifest: str | None = None
    device: str = "auto"
    token_budget: int = 8192
    timing_skip_steps: int = 2
    min_timed_steps: int = 3
    warmup_fraction: float = 0.1
    # torch intra-op threads (None: torch's default); 1 is steadier on a shared CPU
    threads: int | None = None
    train: dict[str, Any] = field(default_factory=dict)
    peak_flops: dict[str, Any] = field(default_factory=dict)  # numbers (or strings like 1.0e11: see validate)
    usd_per_device_hour: dict[str, Any] = field(default_factory=dict)
    base_dir: str = field(default=".", metadata={"setting": False})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> Matrix:
        path = Path(path)
        raw = load_mapping(path, "matrix")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            matrix = cls.from_mapping(raw, base_dir=str(path.resolve().parent))
            matrix.validate()
        except SettingsError as error:
            raise MatrixError(f"matrix {path}: {error}") from None
        return matrix

    def validate(self) -> None:
        unknown = sorted(set(self.axes) - set(AXES))
        if unknown:
            raise MatrixError(f"unknown axes {unknown}; axes are {list(AXES)}")
        self.axes = {axis: _as_list(values) for axis, values in self.axes.items()}
        check_keys(self.train, TrainConfig.setting_types(), "train")
        for axis in ("model", "batch_size", "seq_len"):
            if not self.axes.get(axis):
                raise MatrixError(f"axes.{axis} must list at least one value")
        for axis, allowed in (
            ("attention", ATTENTION),
            ("precision", PRECISION),
            ("distributed", DISTRIBUTED),
        ):
            bad = [v for v in self.axes.get(axis, []) if v not in allowed]
            if bad:
                raise MatrixError(f"axes.{axis}: {bad} not among {list(allowed)}")
        if self.token_budget <= 0 or self.timing_skip_steps < 0 or self.min_timed_steps < 1:
            raise MatrixError("token_budget and min_timed_steps must be positive, timing_skip_steps >= 0")
        try:  # PyYAML reads 1.0e11 (no sign in the exponent) as a string
            self.peak_flops = {k: None if v is None else float(v) for k, v in self.peak_flops.items()}
            self.usd_per_device_hour = {
                k: None if v is None else float(v) for k, v in self.usd_per_device_hour.items()
            }
        except (TypeError, ValueError) as error:
            raise MatrixError(f"peak_flops / usd_per_device_hour values must be numbers: {error}") from error

    def cells(self) -> list[Cell]:
        """The product of the axes, in ``AXES`` order (the last axis varies fastest)."""
        names = [axis for axis in AXES if axis in self.axes]
        return [
            Cell(**dict(zip(names, values, strict=True)))
            for values in itertools.product(*(self.axes[n] for n in names))
        ]

    def manifest_dir(self) -> Path:
        if not self.manifest:
            raise MatrixError("no manifest: set `manifest:` in the matrix or pass --manifest")
        return Path(resolve_path(self.manifest, self.base_dir))

    def steps_for(self, cell: Cell) -> int:
        """Optimizer steps that cover the token budget (at least the skipped plus the minimum timed steps)."""
        per_step = cell.batch_size * cell.seq_len * cell.processes
        return max(math.ceil(self.token_budget / per_step), self.timing_skip_steps + self.min_timed_steps)

    def train_config(self, cell: Cell, manifest_dir: Path, tokenizer: str | None = None) -> TrainConfig:
        """The TrainConfig of one cell: ``train:`` settings, then the cell's axes, then the cell's step count;
        ``tokenizer`` (a location) replaces the ``train:`` section's."""
        steps = self.steps_for(cell)
        model = cell.model
        if cell.attention == "eager":
            model = (
                {"name": model, "attention": "eager"}
                if isinstance(model, str)
                else {**model, "attention": "eager"}
            )
        settings = {"epochs": None, "warmup_steps": round(self.warmup_fraction * steps), **self.train}
        settings.update(
            manifest=str(manifest_dir),
            model=model,
            batch_size=cell.batch_size,
            seq_len=cell.seq_len,
            precision="fp32" if cell.precision == "fp32" else "bf16",
            compile=cell.compile,
            gradient_checkpointing=cell.gradient_checkpointing,
            distributed=cell.distributed,
            max_steps=steps,
            tokens_per_step=None,
            device=self.device,
        )
        if tokenizer is not None:
            settings["tokenizer"] = tokenizer
        return TrainConfig.from_dict(settings, base_dir=self.base_dir)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
