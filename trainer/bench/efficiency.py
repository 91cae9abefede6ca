"""The training-efficiency matrix: tokens/s, MFU, memory, loader stall and loss per dollar across settings.

``elm-data bench train MATRIX.yaml --out DIR`` (or :func:`run_matrix`) trains every cell of the product of the
YAML's ``axes`` (:mod:`.matrix`) for the same token budget, each through the trainer itself
(:class:`CellTrainer`, a :class:`~..core.loop.Trainer` subclass, on the real stream) into a run log of its own
(``runs/cell_NNN/``), and writes ``cells.jsonl`` (one line per finished cell, as it finishes),
``results.csv``, ``results.json`` and the plots (:mod:`.efficiency_plots`). Invariants:

- every cell of the product appears in the output exactly once: ``status`` is ``ok``, or
``unsupported``/``oom``/
  ``failed`` with a ``reason`` (nothing is dropped);
- tokens/s, MFU and the stall fraction cover the timed steps only (after ``timing_skip_steps``); tokens are
label
  positions of all processes; the stall fraction is time blocked in ``next(loader)`` over the whole step time;
- MFU = tokens/s x :func:`elm_data.trainer.core.flops.flops_per_token` / (peak x processes), the peak from the
YAML's
  ``peak_flops`` (by device-name fragment) and then ``trainer/core/hardware.py``'s table; unknown peak -> null
  + note;
- dollars use ``usd_per_device_hour`` (by device-name fragment) x processes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from elm_data.core.outputs import write_atomic
from elm_data.manifests.manifest import Manifest

from ..core import distributed as D
from ..core.config import ConfigError, TrainConfig
from ..core.flops import flops_per_token
from ..core.hardware import device_description, mfu, peak_flops
from ..core.loop import StepStats, Trainer, load_tokenizer, start_processes
from ..core.runlog import code_version
from .matrix import AXES, COLUMNS, OUTPUT_FILES, RUNS_DIR, STATUSES, Cell, Matrix, MatrixError


def lookup(table: dict[str, Any], device_name: str) -> tuple[bool, Any]:
    """``(found, value)`` for the first key of ``table`` that occurs in ``device_name`` (case-insensitive)."""
    for fragment, value in table.items():
        if fragment.lower() in device_name.lower():
            return True, value
    return False, None


def resolve_peak(matrix: Matrix, device: torch.device) -> tuple[float | None, str]:
    """Peak FLOP/s of one device and a note: the YAML's ``peak_flops`` first, then
    trainer/core/hardware.py."""
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
        return (
            None,
            f"no peak FLOP/s known for {name}: set peak_flops.{'cpu' if device.type == 'cpu' else name}",
        )
    return peak, "dense bf16 peak from trainer/core/hardware.py"


def resolve_price(matrix: Matrix, device: torch.device) -> float | None:
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    found, value = lookup(matrix.usd_per_device_hour, name)
    return float(value) if found and value is not None else None


# ---- why a cell cannot run here ----------------------------------------------------------------------------
def precheck(cell: Cell, device: torch.device, world_size: int) -> str | None:
    """The reason this cell cannot run in this process, or None."""
    if cell.processes != world_size:
        launch = (
            "without torchrun" if cell.processes == 1 else f"under torchrun --nproc-per-node {cell.processes}"
        )
        return f"needs {cell.processes} process(es), this run has {world_size}: run the matrix {launch}"
    if cell.distributed in ("ddp", "fsdp") and world_size == 1:
        unwrapped = "is the unwrapped model (the trainer wraps only under torchrun)"
        return f"{cell.distributed} with 1 process {unwrapped}"
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
    """``sdpa_kernel`` restricted to one backend; ``sdpa`` (torch chooses) and ``eager`` change nothing
    here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    return sdpa_kernel([backends[attention]]) if attention in backends else contextlib.nullcontext()


# ---- memory ------------------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """Peak MiB since :func:`reset_peak_memory`: CUDA allocated tensors, or the process' resident
    high-water."""
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

    def add(self, stats: StepStats) -> None:
        self.waits.append(stats.data_wait_s)
        self.times.append(stats.step_time_s)
        self.tokens.append(stats.positions)
        self.losses.append(stats.loss)


class CellTrainer(Trainer):
    """One cell of the matrix, trained by the :class:`~..core.loop.Trainer` exactly as ``elm-data train``
    trains: its set-up, step, receipt and log, changed only through its hooks — the model converted for fp8
    training (torchao) in :meth:`build_model`, no checkpoints, the cell's settings in the log header — and
    each step's timings kept (:meth:`step`). :meth:`train` runs it under the cell's attention backend.

    Its run directory holds an ordinary run log (``log.jsonl``): ``audit-run --verify`` checks what the cell
    consumed, as for any run."""

    task = "bench"

    def __init__(self, config: TrainConfig, cell: Cell, env: dict[str, Any], run_dir: Path) -> None:
        super().__init__(
            config, env["device"], env["info"], run_dir=run_dir, progress=env.get("progress", False)
        )
        self.cell, self.label, self.timings = cell, env.get("cell_label", "cell"), Timings()

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        if self.cell.precision == "fp8":
            from torchao.float8 import convert_to_float8_training

            def float8_ok(module, _name) -> bool:  # float8 matmuls need both dimensions divisible by 16
                return (
                    isinstance(module, torch.nn.Linear)
                    and module.in_features % 16 == module.out_features % 16 == 0
                )

            convert_to_float8_training(model, module_filter_fn=float8_ok)
        return model

    def make_checkpointer(self) -> None:
        return None

    def header_fields(self) -> dict[str, Any]:
        return {"task": self.task, **super().header_fields(), "cell": self.cell.settings()}

    def step(self) -> StepStats | None:
        stats = super().step()
        if stats is not None:
            self.timings.add(stats)
        return stats

    def progress_bar(self) -> tqdm:
        bar = super().progress_bar()
        bar.set_description(self.label, refresh=False)
        bar.leave = False
        return bar

    def train(self) -> Timings:
        """Set up, run ``max_steps`` steps and finish the log; a stream that runs out first is an error."""
        self.setup()
        try:
            with attention_context(self.cell.attention):
                result = self.finish(self.run())
        finally:
            if hasattr(self, "batches"):
                self.batches.close()  # stops the DataLoader's workers
            if hasattr(self, "log"):
                self.log.close()  # idempotent: finish closed it unless a step raised
        if result.stopped_early:
            raise RuntimeError(
                f"the stream ran out after {result.final_step} steps (epochs={self.config.epochs})"
            )
        return self.timings


def train_cell(config: TrainConfig, cell: Cell, env: dict[str, Any], run_dir: Path) -> tuple[Timings, int]:
    """Train one cell for ``config.max_steps`` steps on the real stream; returns timings and the parameter
    count."""
    trainer = CellTrainer(config, cell, env, run_dir)
    timings = trainer.train()
    return timings, sum(p.numel() for p in trainer.model.parameters())


def measure(
    matrix: Matrix, cell: Cell, timings: Timings, env: dict[str, Any], model_config
) -> dict[str, Any]:
    """Throughput, MFU, stall, loss and cost figures of a finished cell from its timed steps."""
    skip = matrix.timing_skip_steps
    timed_time, timed_tokens = sum(timings.times[skip:]), sum(timings.tokens[skip:])
    tokens_per_s = timed_tokens / timed_time
    fpt = flops_per_token(model_config, cell.seq_len)
    peak, note = env["peak"]
    row = {
        "steps": len(timings.times),
        "timed_steps": len(timings.times) - skip,
        "tokens": sum(timings.tokens),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "achieved_tflops": tokens_per_s * fpt / 1e12,
        "peak_flops": peak,
        "mfu": mfu(tokens_per_s, fpt, peak, cell.processes),
        "mfu_note": note,
        "loader_wait_s": sum(timings.waits[skip:]),
        "step_time_s": timed_time,
        "stall_fraction": sum(timings.waits[skip:]) / timed_time,
        "first_loss": timings.losses[0],
        "loss_at_budget": timings.losses[-1],
    }
    return row | costs(env["price"], cell.processes, tokens_per_s, row)


def costs(price: float | None, processes: int, tokens_per_s: float, row: dict[str, Any]) -> dict[str, Any]:
    """Dollar figures at ``price`` $/device-hour: the token budget's cost, tokens and loss drop per dollar."""
    if price is None:
        return {
            "usd_per_hour": None,
            "tokens_per_usd": None,
            "usd_for_budget": None,
            "loss_drop_per_usd": None,
        }
    per_hour = price * processes
    usd = row["tokens"] / tokens_per_s / 3600 * per_hour
    drop = (row["first_loss"] - row["loss_at_budget"]) / usd if usd > 0 else None
    return {
        "usd_per_hour": per_hour,
        "tokens_per_usd": tokens_per_s * 3600 / per_hour if per_hour else None,
        "usd_for_budget": usd,
        "loss_drop_per_usd": drop,
    }


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
    row: dict[str, Any] = {
        "cell": index,
        **cell.settings(),
        "device": env["device_name"],
        "memory_kind": None,
    }
    reason = env["unavailable"] or precheck(cell, device, env["info"].world_size)
    if reason:
        return row | {"status": "unsupported", "reason": reason}
    started = time.perf_counter()
    try:
        config = matrix.train_config(cell, env["manifest_dir"], tokenizer=env["tokenizer"])
        reset_peak_memory(device)
        row["run_dir"] = str(env["out_dir"] / RUNS_DIR / f"cell_{index:03d}")
        timings, parameters = train_cell(config, cell, env, Path(row["run_dir"]))
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
    """What every cell shares: device and process group (as ``elm-data train`` sets them up), the manifest and
    its tokenizer (checked once, before any cell), peak FLOP/s and price."""
    if matrix.threads:
        torch.set_num_threads(matrix.threads)
    unavailable = None
    try:
        device, info = start_processes(matrix.device)
    except ConfigError as error:  # e.g. a GPU matrix on a machine without CUDA: every cell says so
        (device, info), unavailable = start_processes("cpu"), str(error)
    manifest_dir = matrix.manifest_dir()
    tokenizer = tokenizer_override or matrix.train.get("tokenizer")
    load_tokenizer(TrainConfig(manifest=str(manifest_dir), tokenizer=tokenizer), Manifest(manifest_dir))
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
    env = environment(matrix, tokenizer) | {"progress": progress, "out_dir": out_dir}
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
    """``results.csv`` (COLUMNS; empty where a cell has no figure), ``results.json`` and the plots, each
    whole."""
    from .efficiency_plots import plot_frontier, plot_throughput

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in COLUMNS})
    write_atomic(out_dir / "results.csv", table.getvalue())
    header = {
        "device": env["device_name"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "code_version": code_version(),
        "manifest_dir": str(env["manifest_dir"]),
        "peak_flops": env["peak"][0],
        "peak_note": env["peak"][1],
        "usd_per_device_hour": env["price"],
        "matrix": {k: v for k, v in dataclasses.asdict(matrix).items() if k != "base_dir"},
    }
    write_atomic(
        out_dir / "results.json", json.dumps({"environment": header, "cells": rows}, indent=2, default=str)
    )
    plot_throughput(rows, out_dir / "throughput.png")
    plot_frontier(rows, out_dir / "frontier.png")
