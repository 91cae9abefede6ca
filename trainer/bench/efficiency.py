"""The training-efficiency matrix: tokens/s, MFU, memory, loader stall and loss per dollar across settings.

``elm-data bench train MATRIX.yaml --out DIR`` (or :func:`run_matrix`) trains every cell of the product of the
YAML's ``axes`` for the same token budget, each on the real stream (``TokenStream``/``StreamLoader`` over a
manifest), and writes ``cells.jsonl`` (one line per finished cell, as it finishes), ``results.csv``,
``results.json`` and the plots (:mod:`elm_data.trainer.bench.efficiency_plots`). Invariants:

- every cell of the product appears in the output exactly once: ``status`` is ``ok``, or ``unsupported``/``oom``/
  ``failed`` with a ``reason`` (nothing is dropped);
- tokens/s, MFU and the stall fraction cover the timed steps only (after ``timing_skip_steps``); tokens are label
  positions of all processes; the stall fraction is time blocked in ``next(loader)`` over the whole step time;
- MFU = tokens/s x :func:`elm_data.trainer.core.flops.flops_per_token` / (peak x processes), the peak from the YAML's
  ``peak_flops`` (by device-name fragment) and then ``trainer/core/hardware.py``'s table; unknown peak -> null + note;
- dollars use ``usd_per_device_hour`` (by device-name fragment) x processes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import io
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from elm_data.core.outputs import write_atomic
from elm_data.core.settings import Settings, SettingsError, check_keys, load_mapping, resolve_path

from ..core import distributed as D
from ..core.config import ConfigError, TrainConfig
from ..core.flops import flops_per_token
from ..core.hardware import autocast_dtype, device_description, mfu, peak_flops, pick_device

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
    "cell", *AXES, "status", "reason", "device", "parameters", "steps", "timed_steps", "tokens", "tokens_per_s",
    "flops_per_token", "achieved_tflops", "peak_flops", "mfu", "mfu_note", "peak_memory_mib", "memory_kind",
    "loader_wait_s", "step_time_s", "stall_fraction", "first_loss", "loss_at_budget", "usd_per_hour",
    "tokens_per_usd", "usd_for_budget", "loss_drop_per_usd", "on_frontier", "wall_s",
)  # fmt: skip
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
OUTPUT_FILES = ("results.csv", "results.json", "cells.jsonl", "throughput.png", "frontier.png")


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
    threads: int | None = None  # torch intra-op threads (None: torch's default); 1 is steadier on a shared CPU
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
        for axis, allowed in (("attention", ATTENTION), ("precision", PRECISION), ("distributed", DISTRIBUTED)):
            bad = [v for v in self.axes.get(axis, []) if v not in allowed]
            if bad:
                raise MatrixError(f"axes.{axis}: {bad} not among {list(allowed)}")
        if self.token_budget <= 0 or self.timing_skip_steps < 0 or self.min_timed_steps < 1:
            raise MatrixError("token_budget and min_timed_steps must be positive, timing_skip_steps >= 0")
        try:  # PyYAML reads 1.0e11 (no sign in the exponent) as a string
            self.peak_flops = {k: None if v is None else float(v) for k, v in self.peak_flops.items()}
            self.usd_per_device_hour = {k: None if v is None else float(v) for k, v in self.usd_per_device_hour.items()}
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

    def train_config(self, cell: Cell, manifest_dir: Path) -> TrainConfig:
        """The TrainConfig of one cell: ``train:`` settings, then the cell's axes, then the cell's step count."""
        steps = self.steps_for(cell)
        model = cell.model
        if cell.attention == "eager":
            model = {"name": model, "attention": "eager"} if isinstance(model, str) else {**model, "attention": "eager"}
        settings = {"epochs": None, "warmup_steps": round(self.warmup_fraction * steps), **self.train}
        settings.update(
            manifest=str(manifest_dir), model=model, batch_size=cell.batch_size, seq_len=cell.seq_len,
            precision="fp32" if cell.precision == "fp32" else "bf16", compile=cell.compile,
            gradient_checkpointing=cell.gradient_checkpointing, distributed=cell.distributed, max_steps=steps,
            tokens_per_step=None, device=self.device,
        )  # fmt: skip
        return TrainConfig.from_dict(settings, base_dir=self.base_dir)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def lookup(table: dict[str, Any], device_name: str) -> tuple[bool, Any]:
    """``(found, value)`` for the first key of ``table`` that occurs in ``device_name`` (case-insensitive)."""
    for fragment, value in table.items():
        if fragment.lower() in device_name.lower():
            return True, value
    return False, None


def resolve_peak(matrix: Matrix, device: torch.device) -> tuple[float | None, str]:
    """Peak FLOP/s of one device and a note: the YAML's ``peak_flops`` first, then trainer/core/hardware.py."""
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    found, value = lookup(matrix.peak_flops, name)
    if found:
        return (
            (float(value), f"peak from the matrix ({value:.3g} FLOP/s)")
            if value
            else (None, f"no peak FLOP/s for {name} (set to null in the matrix): MFU n/a")
        )
    peak = peak_flops(device)
    if peak is None:
        return None, f"no peak FLOP/s known for {name}: set peak_flops.{'cpu' if device.type == 'cpu' else name}"
    return peak, "dense bf16 peak from trainer/core/hardware.py"


def resolve_price(matrix: Matrix, device: torch.device) -> float | None:
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    found, value = lookup(matrix.usd_per_device_hour, name)
    return float(value) if found and value is not None else None


# ---- why a cell cannot run here ----------------------------------------------------------------------------
def precheck(cell: Cell, device: torch.device, world_size: int) -> str | None:
    """The reason this cell cannot run in this process, or None."""
    if cell.processes != world_size:
        launch = "without torchrun" if cell.processes == 1 else f"under torchrun --nproc-per-node {cell.processes}"
        return f"needs {cell.processes} process(es), this run has {world_size}: run the matrix {launch}"
    if cell.distributed in ("ddp", "fsdp") and world_size == 1:
        return f"{cell.distributed} with 1 process is the unwrapped model (the trainer wraps only under torchrun)"
    if cell.distributed == "none" and world_size > 1:
        return f"distributed=none with {world_size} processes trains {world_size} unsynchronised models"
    if cell.precision == "fp8":
        return fp8_unsupported(device)
    return None


def fp8_unsupported(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "fp8 needs a CUDA GPU of compute capability >= 8.9"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"fp8 needs compute capability >= 8.9, {torch.cuda.get_device_name(device)} has less"
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "fp8 needs torchao (pip install torchao), which is not installed"
    return None


def attention_context(attention: str):
    """``sdpa_kernel`` restricted to one backend; ``sdpa`` (torch chooses) and ``eager`` change nothing here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}  # fmt: skip
    return sdpa_kernel([backends[attention]]) if attention in backends else contextlib.nullcontext()


# ---- memory ------------------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """Peak MiB since :func:`reset_peak_memory`: CUDA allocated tensors, or the process' resident high-water."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "process RSS high-water (VmHWM), whole process"
    return None, "unavailable"


# ---- one cell ----------------------------------------------------------------------------------------------
@dataclass
class Timings:
    """Per-step loader wait, step time (wait included), label positions and loss."""

    waits: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train_cell(config: TrainConfig, cell: Cell, env: dict[str, Any]) -> tuple[Timings, int]:
    """Train one cell for ``config.max_steps`` steps on the real stream; returns timings and the parameter count."""
    from ..core.loop import build_loader, build_model, seed_everything, train_step
    from ..core.optim import build_optimizer, build_scheduler

    device, info = env["device"], env["info"]
    seed_everything(config.seed)
    model = build_model(config, device)
    if cell.precision == "fp8":
        from torchao.float8 import convert_to_float8_training

        def float8_ok(module, _name) -> bool:  # float8 matmuls need both dimensions divisible by 16
            return isinstance(module, torch.nn.Linear) and module.in_features % 16 == module.out_features % 16 == 0

        convert_to_float8_training(model, module_filter_fn=float8_ok)
    wrapped = D.wrap_model(model, config.distributed, info, device)
    optimizer = build_optimizer(model, config, fused=device.type == "cuda" or None)
    scheduler = build_scheduler(optimizer, config)
    if config.compile:
        wrapped = torch.compile(wrapped)
    wrapped.train()
    amp_dtype = autocast_dtype(device, config.precision)
    iterator = iter(build_loader(config, config.manifest_dir, env["tokenizer"], info))
    timings = Timings()
    steps = tqdm(range(config.max_steps), desc=env.get("cell_label", "cell"), unit="step", leave=False,
                 disable=not (env.get("progress") and info.is_main), dynamic_ncols=True)  # fmt: skip
    try:
        with attention_context(cell.attention):
            for _ in steps:
                started = time.perf_counter()
                batch = next(iterator, None)
                if batch is None:
                    raise RuntimeError(f"the stream ran out after {len(timings.times)} steps (epochs={config.epochs})")
                waited = time.perf_counter() - started
                stats = train_step(
                    wrapped, optimizer, [batch], config, device, amp_dtype, info, model.config.vocab_size
                )
                scheduler.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timings.waits.append(waited)
                timings.times.append(time.perf_counter() - started)
                timings.tokens.append(stats.positions)
                timings.losses.append(stats.loss)
    finally:
        steps.close()
        iterator.close()  # stops the DataLoader's workers
    return timings, sum(p.numel() for p in model.parameters())


def measure(matrix: Matrix, cell: Cell, timings: Timings, env: dict[str, Any], model_config) -> dict[str, Any]:
    """Throughput, MFU, stall, loss and cost figures of a finished cell from its timed steps."""
    skip = matrix.timing_skip_steps
    timed_time, timed_tokens = sum(timings.times[skip:]), sum(timings.tokens[skip:])
    tokens_per_s = timed_tokens / timed_time
    fpt = flops_per_token(model_config, cell.seq_len)
    peak, note = env["peak"]
    row = {
        "steps": len(timings.times), "timed_steps": len(timings.times) - skip, "tokens": sum(timings.tokens),
        "tokens_per_s": tokens_per_s, "flops_per_token": fpt, "achieved_tflops": tokens_per_s * fpt / 1e12,
        "peak_flops": peak, "mfu": mfu(tokens_per_s, fpt, peak, cell.processes), "mfu_note": note,
        "loader_wait_s": sum(timings.waits[skip:]), "step_time_s": timed_time,
        "stall_fraction": sum(timings.waits[skip:]) / timed_time,
        "first_loss": timings.losses[0], "loss_at_budget": timings.losses[-1],
    }  # fmt: skip
    return row | costs(env["price"], cell.processes, tokens_per_s, row)


def costs(price: float | None, processes: int, tokens_per_s: float, row: dict[str, Any]) -> dict[str, Any]:
    """Dollar figures at ``price`` $/device-hour: the token budget's cost, tokens and loss drop per dollar."""
    if price is None:
        return {"usd_per_hour": None, "tokens_per_usd": None, "usd_for_budget": None, "loss_drop_per_usd": None}
    per_hour = price * processes
    usd = row["tokens"] / tokens_per_s / 3600 * per_hour
    drop = (row["first_loss"] - row["loss_at_budget"]) / usd if usd > 0 else None
    return {"usd_per_hour": per_hour, "tokens_per_usd": tokens_per_s * 3600 / per_hour if per_hour else None,
            "usd_for_budget": usd, "loss_drop_per_usd": drop}  # fmt: skip


def classify(error: BaseException) -> tuple[str, str]:
    """``(status, reason)`` of a cell that raised."""
    text = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower():
        return "oom", text
    if "no viable backend" in text.lower() or "no available kernel" in text.lower():
        return "unsupported", text
    return "failed", text


def run_cell(matrix: Matrix, index: int, cell: Cell, env: dict[str, Any]) -> dict[str, Any]:
    """One output row: the cell's settings, then its measurements or why it has none."""
    device = env["device"]
    row: dict[str, Any] = {"cell": index, **cell.settings(), "device": env["device_name"], "memory_kind": None}
    reason = env["unavailable"] or precheck(cell, device, env["info"].world_size)
    if reason:
        return row | {"status": "unsupported", "reason": reason}
    started = time.perf_counter()
    try:
        config = matrix.train_config(cell, env["manifest_dir"])
        reset_peak_memory(device)
        timings, parameters = train_cell(config, cell, env)
        figures = measure(matrix, cell, timings, env, config.model_config())
        row |= {"status": "ok", "reason": "", "parameters": parameters} | figures
        row["peak_memory_mib"], row["memory_kind"] = peak_memory(device)
        row["losses"] = timings.losses
    except Exception as error:  # OOM included: recorded, never dropped
        row["status"], row["reason"] = classify(error)
    finally:
        release(device)
    return row | {"wall_s": time.perf_counter() - started}


def release(device: torch.device) -> None:
    """Free what a cell left behind (compiled graphs, cached CUDA blocks) before the next one."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- the matrix --------------------------------------------------------------------------------------------
@dataclass
class MatrixResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    main: bool = True  # rank 0 (the one that writes the files and reports)

    def counts(self) -> dict[str, int]:
        return {status: sum(r["status"] == status for r in self.rows) for status in STATUSES}


def prepare_out(out_dir: Path) -> None:
    """Create ``out_dir``; refuse to clobber an earlier matrix's files."""
    taken = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if taken:
        raise MatrixError(f"{out_dir} already holds a matrix ({', '.join(taken)}): choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def environment(matrix: Matrix, tokenizer_override: str | None = None) -> dict[str, Any]:
    """What every cell shares: device, process group, tokenizer, manifest, peak FLOP/s and price."""
    from elm_data.manifests.manifest import Manifest

    from ..core.loop import load_tokenizer

    if matrix.threads:
        torch.set_num_threads(matrix.threads)
    unavailable = None
    try:
        device = pick_device(matrix.device)
    except ConfigError as error:  # e.g. a GPU matrix on a machine without CUDA: every cell says so
        device, unavailable = torch.device("cpu"), str(error)
    info = D.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    manifest_dir = matrix.manifest_dir()
    probe = TrainConfig(manifest=str(manifest_dir), tokenizer=tokenizer_override or matrix.train.get("tokenizer"))
    tokenizer = load_tokenizer(probe, Manifest(manifest_dir))
    return {
        "device": device,
        "device_name": f"{matrix.device} (unavailable)" if unavailable else device_description(device),
        "info": info,
        "tokenizer": tokenizer,
        "manifest_dir": manifest_dir,
        "peak": resolve_peak(matrix, device),
        "price": resolve_price(matrix, device),
        "unavailable": unavailable,
    }


def run_matrix(
    matrix: Matrix, out_dir: str | Path, tokenizer: str | None = None, echo=print, progress: bool = False
) -> MatrixResult:
    """Run every cell, appending each row to ``cells.jsonl`` as it finishes; then the CSV, JSON and plots.

    ``progress``: a bar (stderr, rank 0) over each cell's steps, with its rate and time left."""
    out_dir = Path(out_dir)
    env = environment(matrix, tokenizer) | {"progress": progress}
    main = env["info"].is_main
    if main:
        prepare_out(out_dir)
    rows = []
    try:
        cells = list(matrix.cells())
        for index, cell in enumerate(cells):
            env["cell_label"] = f"cell {index + 1}/{len(cells)}"
            row = run_cell(matrix, index, cell, env)
            rows.append(row)
            if main:
                with (out_dir / "cells.jsonl").open("a") as handle:
                    handle.write(json.dumps(row, default=str) + "\n")
                echo(summary_line(row))
    finally:
        D.shutdown(env["info"])
    mark_frontier(rows)
    if main:
        write_outputs(out_dir, matrix, rows, env)
    return MatrixResult(out_dir, rows, main)


def summary_line(row: dict[str, Any]) -> str:
    settings = " ".join(f"{axis}={row[axis]}" for axis in AXES)
    if row["status"] != "ok":
        return f"[{row['cell']}] {settings}: {row['status']}: {row['reason']}"
    mfu_text = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
    return (
        f"[{row['cell']}] {settings}: {row['tokens_per_s']:,.0f} tok/s, MFU {mfu_text}, "
        f"stall {row['stall_fraction']:.1%}, loss {row['loss_at_budget']:.3f}"
    )


def mark_frontier(rows: list[dict[str, Any]]) -> None:
    """``on_frontier``: no other cell reaches a loss as low for a budget as cheap, one of them strictly."""
    priced = [r for r in rows if r["status"] == "ok" and r.get("usd_for_budget") is not None]
    for row in rows:
        row["on_frontier"] = None
    for row in priced:
        row["on_frontier"] = not any(
            o is not row
            and o["usd_for_budget"] <= row["usd_for_budget"]
            and o["loss_at_budget"] <= row["loss_at_budget"]
            and (o["usd_for_budget"], o["loss_at_budget"]) != (row["usd_for_budget"], row["loss_at_budget"])
            for o in priced
        )


def write_outputs(out_dir: Path, matrix: Matrix, rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """``results.csv`` (COLUMNS; empty where a cell has no figure), ``results.json`` and the plots, each whole."""
    from ..core.runlog import code_version
    from .efficiency_plots import plot_frontier, plot_throughput

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in COLUMNS})
    write_atomic(out_dir / "results.csv", table.getvalue())
    header = {"device": env["device_name"], "torch": torch.__version__, "threads": torch.get_num_threads(),
              "code_version": code_version(), "manifest_dir": str(env["manifest_dir"]),
              "peak_flops": env["peak"][0], "peak_note": env["peak"][1], "usd_per_device_hour": env["price"],
              "matrix": {k: v for k, v in dataclasses.asdict(matrix).items() if k != "base_dir"}}  # fmt: skip
    write_atomic(out_dir / "results.json", json.dumps({"environment": header, "cells": rows}, indent=2, default=str))
    plot_throughput(rows, out_dir / "throughput.png")
    plot_frontier(rows, out_dir / "frontier.png")
