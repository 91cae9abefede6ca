"""The training loop as components: a manifest's token stream into an OpenELM, with checkpoints and a receipt
log.

:func:`train` (``elm-data train``, the demo) drives a :class:`Trainer`: ``setup`` (seed, data, model,
optimizer, schedule), ``restore`` when resuming, ``run`` (``step`` until done, ``save`` on the way),
``finish``. One :class:`~.checkpoint.Checkpointer` saves and restores every stateful part, so a run killed and
resumed from a checkpoint trains bit-identically to one that never stopped. Under torchrun every rank runs
every method (the collectives are inside); only rank 0 writes the log and the checkpoints. ``elm-data
compress`` is the same Trainer with a palettization hook (compress.py).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import output_lock, write_atomic
from elm_data.manifests.manifest import Manifest
from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.pipeline.stream import StreamLoader, TokenStream
from elm_data.pipeline.stream.consumed import ConsumedTokens
from elm_data.pipeline.stream.receipt import chain, genesis, step_digest, stream_batch_digest
from elm_data.pipeline.tokenizer import PAD_ID, LlamaTokenizer, resolve_tokenizer

from . import distributed as D
from .checkpoint import (
    MODEL,
    STREAM,
    Checkpointer,
    ModelPart,
    OptimizerPart,
    Part,
    RngPart,
    StreamPart,
    TrainState,
    list_checkpoints,
    resolve_checkpoint,
)
from .config import ConfigError, TrainConfig
from .hardware import autocast, autocast_dtype, device_description, mfu, peak_flops, pick_device
from .health import RunHealth, progress_postfix
from .heldout_eval import evaluate_heldout, load_heldout_set
from .loss import loss_sums, split_inputs_labels
from .optim import build_optimizer, build_scheduler
from .runlog import LOG_FILE, RunLog, code_version, effective_steps, read_log
from .trackers import open_trackers


class TrainingError(ElmDataError, RuntimeError):
    """A run that cannot start or continue (bad config, missing data, mismatched checkpoint)."""


@dataclass
class RunResult:
    """What :func:`train` did. ``losses``/``steps`` cover this invocation; first/last loss the whole run."""

    run_dir: Path
    final_step: int
    first_loss: float | None
    last_loss: float | None
    checkpoint: Path | None
    tokens: int = 0
    consumed: dict[str, int] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped_early: str | None = None  # why the run ended before max_steps (data exhausted, stop_after)
    rank: int = 0  # this process's rank under torchrun (only rank 0 writes the log and checkpoints)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (model initialisation; never the data order)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- set-up pieces (also used by bench/, export/evaluate.py and benchmarks/bench_trainer.py) ---------------
def load_tokenizer(config: TrainConfig, manifest: Manifest) -> LlamaTokenizer:
    """The tokenizer the manifest was built with (its sha256 is checked), found as the pipeline finds it:
    flag/config
    > $ELM_DATA_TOKENIZER > the manifest's location > the cache, by the manifest's sha256. A missing or
    mismatched
    one is the tokenizer's own ``ElmDataError``."""
    return resolve_tokenizer(None, config.tokenizer_location, manifest.info)


def build_loader(config: TrainConfig, manifest: Manifest | Path, tokenizer: LlamaTokenizer, info: D.DistInfo):
    """The stream loader for this rank: ``TokenStream`` over the manifest (one already open is not opened
    again), wrapped in ``StreamLoader``."""
    stream = TokenStream(
        manifest,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        mode=config.mode,
        weights=config.weights,
        # None: the manifest's seed, exactly as `elm-data stream` (config.seed is the model's)
        seed=config.data_seed,
        rank=info.rank,
        world_size=info.world_size,
        tokenizer=tokenizer,
        epochs=config.epochs,
        provenance=True,
        document_masks=config.document_masks,
        partitions=config.partitions,
        network=config.network(),
    )
    return StreamLoader(stream, num_workers=config.num_workers)


def build_model(config: TrainConfig, device: torch.device) -> OpenELM:
    """A freshly initialised OpenELM (draws from torch's RNG) of the config's shape, on ``device``."""
    model_config: OpenELMConfig = config.model_config()
    if config.seq_len > model_config.rope_max_length:
        raise ConfigError(
            f"seq_len {config.seq_len} exceeds the model's rope_max_length {model_config.rope_max_length}"
        )
    model = OpenELM(model_config).to(device)
    model.gradient_checkpointing = config.gradient_checkpointing
    return model


def start_processes(device_setting: str) -> tuple[torch.device, D.DistInfo]:
    """The device a run trains on and its process group: ``device_setting`` picked (a :class:`ConfigError`
    when unavailable), the group joined under torchrun, then this rank's own GPU. Undo with
    ``D.shutdown(info)``."""
    device = pick_device(device_setting)
    info = D.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    return device, info


def refuse_used_run_dir(run_dir: Path, info: D.DistInfo, hint: str) -> None:
    """A fresh run never appends to another run's log (invariant 5: nothing is clobbered unasked)."""
    if info.is_main and (run_dir / LOG_FILE).exists():
        raise TrainingError(f"{run_dir} already holds a run: {hint}")


def run_lock(run_dir: Path, info: D.DistInfo):
    """One run per run directory: rank 0 holds an exclusive lock on it (``.NAME.lock`` beside it, as a build
    holds its output's) from before the directory is checked until the run ends; a second run into it is
    refused."""
    return output_lock(run_dir, "training run") if info.is_main else contextlib.nullcontext()


def copy_source_log(checkpoint_dir: Path, run_dir: Path, info: D.DistInfo) -> None:
    """A run resumed into another directory starts its log with the log of the run that wrote the checkpoint
    (its complete records), so the new log alone is the whole receipt: ``audit-run --verify`` follows it from
    step 1 and the resume record supersedes the steps the source logged past the checkpoint."""
    source = checkpoint_dir.parent.parent / LOG_FILE
    if not info.is_main or not source.is_file() or source.parent.resolve() == run_dir.resolve():
        return
    refuse_used_run_dir(run_dir, info, "resume into a directory that holds no run, or continue that run")
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    complete = lines if not lines or lines[-1].endswith("\n") else lines[:-1]  # a killed writer's cut line
    write_atomic(run_dir / LOG_FILE, "".join(complete))


# ---- one optimizer step ------------------------------------------------------------------------------------
@dataclass
class StepStats:
    """One optimizer step's numbers; the losses are means over the step's counted label positions, all
    ranks."""

    loss: float
    ce_loss: float
    z_loss: float
    grad_norm: float
    counted_tokens: int  # label positions that count (not pad), all ranks
    positions: int  # label positions (batch x seq_len), all ranks
    tokens_by_source: ConsumedTokens  # this rank's tokens of the step per source
    data_wait_s: float
    step_time_s: float = 0.0  # the whole step, data wait included (set by Trainer.step)
    lr: float = 0.0  # the learning rate the step used (set by Trainer.step)

    @property
    def tokens_per_s(self) -> float:
        """Label positions per second of the whole step (0 before the step is timed)."""
        return self.positions / self.step_time_s if self.step_time_s else 0.0


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[dict[str, Any]],
    config: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    info: D.DistInfo,
    vocab_size: int,
) -> StepStats:
    """Forward/backward over the micro-batches of one step (gradient accumulation), clip, update.

    Each micro-batch contributes its *summed* loss divided by the step's counted tokens (all micro-batches,
    all ranks), so accumulating k micro-batches equals one batch k times as large.
    """
    pairs = [split_inputs_labels(b["input_ids"], vocab_size, PAD_ID) for b in batches]
    local = [sum(int((labels != PAD_ID).sum()) for _, labels in pairs), sum(lab.numel() for _, lab in pairs)]
    counted, positions = (int(v) for v in D.all_reduce_sum(torch.tensor(local, device=device), info).tolist())
    if counted == 0:  # every rank's batches are empty (the end of a finite stream): no update at all
        return StepStats(0.0, 0.0, 0.0, 0.0, 0, positions, ConsumedTokens(), 0.0)
    # DDP/FSDP average gradients over ranks; scale so the result is the mean over all counted tokens.
    denominator = max(counted, 1) / info.world_size
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for i, ((inputs, labels), batch) in enumerate(zip(pairs, batches, strict=True)):
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        segment_ids = batch.get("segment_ids")
        kwargs = {"segment_ids": segment_ids[:, :-1].to(device)} if segment_ids is not None else {}
        with D.gradient_sync(model, enabled=i == len(pairs) - 1):  # reduce across ranks once, on the last one
            with autocast(device, amp_dtype):
                logits = model(inputs, **kwargs)
            parts = loss_sums(logits, labels, PAD_ID)
            (parts.total(config.z_loss) / denominator).backward()
        sums += torch.stack([parts.ce.detach(), parts.z.detach()]).double()
    D.all_reduce_sum(sums, info)
    # Under FSDP the gradients are sharded DTensors: the norm is reduced over ranks (a DTensor itself).
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), config.grad_clip if config.grad_clip > 0 else math.inf
    )
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ce, z = (sums / max(counted, 1)).tolist()
    by_source = ConsumedTokens()
    for batch in batches:
        # a stream batch always has it; a synthetic one may not
        by_source.add(batch.get("tokens_by_source", {}))
    return StepStats(
        loss=ce + config.z_loss * z,
        ce_loss=ce,
        z_loss=z,
        grad_norm=float(grad_norm),
        counted_tokens=counted,
        positions=positions,
        tokens_by_source=by_source,
        data_wait_s=0.0,
    )


# ---- the trainer -------------------------------------------------------------------------------------------
class Trainer:
    """One run: :meth:`setup`, optionally :meth:`restore`, then :meth:`run` (:meth:`step` after :meth:`step`,
    :meth:`save` on the way) and :meth:`finish`.

    Owns the parts — the stream loader, the model (``model``: the OpenELM; ``module``: what a step calls,
    DDP/FSDP- wrapped, maybe compiled), the optimizer and LR schedule, the log — and a :class:`TrainState`
    (step, tokens, receipt head). Subclasses change a run through the hooks :meth:`build_model`,
    :meth:`training_module`, :meth:`autocast_dtype`, :meth:`after_step`, :meth:`header_fields`,
    :meth:`checkpoint_parts` and :meth:`make_checkpointer`.
    """

    task = "train"

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        info: D.DistInfo,
        *,
        run_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.config, self.device, self.info, self.progress = config, device, info, progress
        self.run_dir = run_dir or config.run_dir
        self.resumed_from: Path | None = None  # the checkpoint this invocation continues
        self.restarted = False  # whether it starts again a run that stopped before its first checkpoint
        self.until = config.max_steps  # the step this invocation stops at (run's stop_after)

    # ---- setup and restore
    def setup(self) -> None:
        """Seed, data, model, optimizer, schedule, checkpointer — in this order, which fixes a fresh run's RNG
        draws."""
        config = self.config
        seed_everything(config.seed)
        self.manifest = Manifest(config.manifest_dir)  # verified on open (invariant 6)
        self.tokenizer = load_tokenizer(config, self.manifest)
        self.model = self.build_model()
        self.check_vocabulary()
        self.loader = build_loader(config, self.manifest, self.tokenizer, self.info)
        # FSDP2 shards ``model`` in place: build the optimizer after this
        self.module = self.training_module()
        self.optimizer = build_optimizer(self.model, config, fused=self.device.type == "cuda" or None)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.amp_dtype = self.autocast_dtype()
        self.accum = config.grad_accum_steps(self.info.world_size)
        self.plan = self.loader.stream.config.to_dict()
        self.flops_per_token = self.model.config.flops_per_token(config.seq_len)
        self.peak_flops = peak_flops(self.device)
        # the receipt's chain head
        self.state = TrainState(receipt=genesis(self.manifest.manifest_id, self.plan))
        self.stream_start = self.loader.state_dict()
        self.checkpointer = self.make_checkpointer()
        self.heldout = load_heldout_set(
            self.manifest, self.tokenizer, config.seq_len, config.heldout_docs, config.heldout_tokens
        )
        self.evaluated_at: int | None = None  # the step of the last held-out evaluation

    def restore(self, checkpoint_dir: Path) -> None:
        """Continue from ``checkpoint_dir``: every part as it was saved (the checkpointer checks it is this
        run's)."""
        self.state, self.stream_start = self.checkpointer.load(checkpoint_dir)
        self.resumed_from = checkpoint_dir

    def restart(self) -> None:
        """Start again from step 0 in a run directory whose run stopped before its first checkpoint (its log
        gets a resume record from step 0); refused when that run had another manifest or other training
        settings."""
        header = next((r for r in read_log(self.run_dir) if r.get("event") == "header"), None)
        self.restarted = True
        if header is None:
            return  # killed before its header was written: the log starts over with one
        try:
            logged = TrainConfig.from_dict(header.get("config") or {}).fingerprint()
        except (ConfigError, TypeError):
            logged = None
        if header.get("manifest_id") != self.manifest.manifest_id or logged != self.config.fingerprint():
            raise TrainingError(
                f"{self.run_dir} holds a run of another manifest or other training settings: choose another "
                "--out"
            )

    def check_vocabulary(self) -> None:
        """Every token id the tokenizer can emit must have an embedding row (checked once, before any
        step)."""
        if self.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"the model's vocab_size {self.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}"
            )

    # ---- hooks
    def build_model(self) -> torch.nn.Module:
        """The OpenELM to train, freshly initialised."""
        return build_model(self.config, self.device)

    def training_module(self) -> torch.nn.Module:
        """What a step calls: ``model`` wrapped for DDP/FSDP (one process: as is), compiled if asked, in train
        mode."""
        module = D.wrap_model(self.model, self.config.distributed, self.info, self.device)
        if self.config.compile:
            module = torch.compile(module)
        return module.train()

    def autocast_dtype(self) -> torch.dtype | None:
        """The mixed-precision compute dtype of a forward (None: as the weights)."""
        return autocast_dtype(self.device, self.config.precision)

    def after_step(self) -> None:
        """Called after each optimizer and schedule step (compress: the palettizer's step)."""

    def checkpoint_parts(self) -> dict[str, Part]:
        """The stateful parts a checkpoint saves and a resume restores, by name, in restore order (the RNGs
        last); a subclass adds or drops one here (``model`` and ``stream`` stay)."""
        return {
            MODEL: ModelPart(self.model, self.info),
            "optimizer": OptimizerPart(self.model, self.optimizer),
            "scheduler": self.scheduler,
            STREAM: StreamPart(self.loader, self.info),
            "rng": RngPart(),
        }

    def make_checkpointer(self) -> Checkpointer | None:
        """The run's checkpointer over :meth:`checkpoint_parts` (None: the run keeps no checkpoints)."""
        return Checkpointer(
            self.run_dir,
            self.checkpoint_parts(),
            manifest_id=self.manifest.manifest_id,
            config=self.config,
            info=self.info,
            device=self.device,
        )

    def header_fields(self) -> dict[str, Any]:
        """The log header: what data, tokenizer, settings, model, code and hardware this run uses."""
        config, info = self.config, self.info
        return {
            "manifest_id": self.manifest.manifest_id,
            "manifest_dir": str(config.manifest_dir),
            "tokenizer": self.tokenizer.describe(),
            "config": config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "code_version": code_version(),
            "device": device_description(self.device),
            "world_size": info.world_size,
            "grad_accum_steps": self.accum,
            "tokens_per_step": config.batch_size * config.seq_len * self.accum * info.world_size,
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak_flops,
        }

    # ---- the run
    def run(self, stop_after: int | None = None) -> RunResult:
        """Step until ``max_steps`` (or ``stop_after`` steps in all: an interruption that keeps the schedule)
        or until the data runs out; checkpoint every ``checkpoint_every`` steps and once at the end."""
        config = self.config
        self.until = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
        self.open_log()
        self.open_watchers()
        self.batches = iter(self.loader)
        result = RunResult(self.run_dir, self.state.step, None, None, self.resumed_from, rank=self.info.rank)
        saved_at = self.state.step if self.resumed_from is not None else None
        with self.progress_bar() as bar:
            while self.state.step < self.until:
                stats = self.step()
                if stats is None:
                    result.stopped_early = (
                        f"data exhausted after {self.state.step} steps (epochs={config.epochs})"
                    )
                    break
                result.steps.append(self.state.step)
                result.losses.append(stats.loss)
                bar.update(1)
                if self.last_record:
                    bar.set_postfix_str(progress_postfix(self.last_record), refresh=False)
                if config.heldout_every and self.state.step % config.heldout_every == 0:
                    self.log_heldout()
                every = config.checkpoint_every
                if every and self.state.step % every == 0 and self.state.step < self.until:
                    result.checkpoint, saved_at = self.save(), self.state.step
        if self.state.step != self.evaluated_at:
            self.log_heldout()  # and at the end
        if self.state.step != saved_at:
            result.checkpoint = self.save()
        if stop_after is not None and self.state.step == stop_after < config.max_steps:
            result.stopped_early = f"stopped after step {self.state.step} (stop_after)"
        return result

    def step(self) -> StepStats | None:
        """One optimizer step over ``accum`` micro-batches, then the counters and the step's log record.

        Returns None, having trained nothing, when the data runs out before the step's last micro-batch.
        """
        started = time.perf_counter()
        batches = list(itertools.islice(self.batches, self.accum))
        waited = time.perf_counter() - started
        if len(batches) < self.accum:
            return None
        lr = self.optimizer.param_groups[0]["lr"]
        stats = train_step(
            self.module,
            self.optimizer,
            batches,
            self.config,
            self.device,
            self.amp_dtype,
            self.info,
            self.vocab_size,
        )
        self.scheduler.step()
        self.after_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats.lr, stats.data_wait_s, stats.step_time_s = lr, waited, time.perf_counter() - started
        self.state.step += 1
        self.state.tokens += stats.positions  # a finite stream's last batch may be short
        self.state.receipt = chain(self.state.receipt, self.step_digest(batches))
        if not math.isfinite(stats.loss):
            raise TrainingError(f"loss became {stats.loss} at step {self.state.step}")
        self.log_step(stats)
        return stats

    def save(self) -> Path | None:
        """Checkpoint every part at the current step (collective) and log it; None without a checkpointer, and
        on ranks other than 0."""
        if self.checkpointer is None:
            return None
        path = self.checkpointer.save(self.state, self.consumed())
        if path is not None:
            self.log.write("checkpoint", step=self.state.step, path=str(path))
        return path

    def finish(self, result: RunResult, **end_fields: Any) -> RunResult:
        """Write the log's end record (with what ``audit-run --verify`` needs) and close the log; fill the
        result."""
        state = self.state
        self.log.write(
            "end",
            step=state.step,
            tokens_total=state.tokens,
            stopped_early=result.stopped_early,
            checkpoint=str(result.checkpoint) if result.checkpoint else None,
            receipt=state.receipt,
            manifest_id=self.manifest.manifest_id,
            merkle_root=self.manifest.info["merkle_root"],
            plan=self.plan,
            batches_per_step=self.accum * self.info.world_size,
            steps=state.step,
            **end_fields,
        )
        self.log.close()
        self.trackers.close()
        result.final_step, result.tokens, result.consumed = state.step, state.tokens, self.consumed()
        if self.info.is_main:
            logged = effective_steps(read_log(self.run_dir))
            if logged:
                result.first_loss, result.last_loss = logged[0]["loss"], logged[-1]["loss"]
        return result

    # ---- pieces of the run
    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding: stream ids at or above it (the pad id) are mapped by the loss's
        split."""
        return self.model.config.vocab_size

    def consumed(self) -> dict[str, int]:
        """Tokens consumed per source/subset by the whole run so far, summed over ranks (collective)."""
        return D.sum_counts(self.loader.consumed, self.info)

    def step_digest(self, batches: list[dict[str, Any]]) -> bytes:
        """The step's digest for the consumption receipt: every rank's batch digests, in global batch
        order."""
        mine = [(int(b["batch_index"]), stream_batch_digest(b, self.plan["mode"])) for b in batches]
        every = sorted(d for part in D.gather_objects(mine, self.info) for d in part)
        return step_digest(d for _, d in every)

    def open_log(self) -> None:
        """Open the log: a header for a fresh run (or a resume into an empty directory), a resume record after
        a restore (step records after it supersede those the interrupted run logged past its checkpoint)."""
        # a killed writer's cut last line is dropped
        self.log = RunLog(self.run_dir, enabled=self.info.is_main)
        has_header = self.info.is_main and any(r.get("event") == "header" for r in read_log(self.run_dir))
        fields = self.header_fields()
        if not has_header and self.resumed_from is None:
            self.log.write("header", **fields, stream_state=self.stream_start, receipt=self.state.receipt)
            return
        if not has_header:  # a bare checkpoint (no log beside it): the steps before it are in no log here
            self.log.write(
                "header", **fields, stream_state=self.stream_start, resumed_from=str(self.resumed_from)
            )
        resumed = {
            "from_step": self.state.step,
            "checkpoint": str(self.resumed_from) if self.resumed_from else None,
            "receipt": self.state.receipt,
        }
        if self.restarted:
            resumed["restarted"] = "the run stopped before its first checkpoint: it starts again from step 0"
        self.log.write("resume", **resumed, **fields)

    def open_watchers(self) -> None:
        """The step records' health fields (their loss window seeded from the log when resuming) and the
        config's trackers (rank 0), opened after the log."""
        self.health, self.last_record = RunHealth(self.device), None
        if self.info.is_main:
            self.health.resume(read_log(self.run_dir))
        first = self.state.step + 1
        self.trackers = open_trackers(
            self.config.trackers,
            self.run_dir,
            self.config.to_dict(),
            first_step=first,
            enabled=self.info.is_main,
        )

    def log_step(self, stats: StepStats) -> None:
        """The step's record every ``log_every`` steps and at the last, else its receipt head alone
        (collective)."""
        step, info = self.state.step, self.info
        if step % self.config.log_every and step != self.until:
            # every step's head, even between
            self.log.write("receipt", step=step, receipt=self.state.receipt)
            return
        record = dict(
            step=step,
            loss=stats.loss,
            ce_loss=stats.ce_loss,
            z_loss=stats.z_loss,
            lr=stats.lr,
            grad_norm=stats.grad_norm,
            tokens=stats.positions,
            counted_tokens=stats.counted_tokens,
            tokens_total=self.state.tokens,
            tokens_per_s=stats.tokens_per_s,
            mfu=mfu(stats.tokens_per_s, self.flops_per_token, self.peak_flops, info.world_size),
            data_wait_s=stats.data_wait_s,
            step_time_s=stats.step_time_s,
            step_tokens_by_source=D.sum_counts(stats.tokens_by_source, info),
            tokens_by_source=self.consumed(),
            receipt=self.state.receipt,
            # this rank's, since it started
            **({"remote_reads": self.loader.remote} if self.loader.remote else {}),
            **self.health.fields(stats.loss, stats.data_wait_s, stats.step_time_s),
        )
        self.log.write("step", **record)
        self.trackers.log(step, record)
        self.last_record = record

    def log_heldout(self) -> None:
        """Evaluate the model as it is now on the held-out set (every rank: a sharded forward is collective)
        and log a ``heldout`` record (rank 0); nothing when the manifest holds no document out
        (``heldout_eval.py``)."""
        if not self.heldout or self.state.step == 0:
            return
        started = time.perf_counter()
        rows = self.config.heldout_batch_size or self.config.batch_size
        record = evaluate_heldout(self.model, self.heldout, self.device, self.amp_dtype, rows)
        record["eval_time_s"] = time.perf_counter() - started
        self.log.write("heldout", step=self.state.step, **record)
        self.trackers.log(self.state.step, {f"heldout_{name}": value for name, value in record.items()})
        self.evaluated_at = self.state.step

    def progress_bar(self) -> tqdm:
        """A tqdm bar over the run's ``max_steps`` on rank 0 (disabled elsewhere, or without ``progress``)."""
        return tqdm(
            total=self.config.max_steps,
            initial=self.state.step,
            disable=not (self.progress and self.info.is_main),
            unit="step",
            dynamic_ncols=True,
            desc=self.task,
        )


# ---- the entry point ---------------------------------------------------------------------------------------
def start_of(config: TrainConfig, resume: str | Path | None) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to continue or None). ``resume`` is a checkpoint, a run directory (its
    newest checkpoint) or a run directory that stopped before its first checkpoint (None: it starts again at
    step 0). Without an ``out_dir`` a resumed run continues in its checkpoint's (or its own) run directory."""
    if resume is None:
        return config.run_dir, None
    resume = Path(resume)
    if (resume / LOG_FILE).is_file() and not list_checkpoints(resume):  # stopped before its first checkpoint
        return (config.run_dir if config.out_dir is not None else resume), None
    checkpoint_dir = resolve_checkpoint(resume)
    return (config.run_dir if config.out_dir is not None else checkpoint_dir.parent.parent), checkpoint_dir


def _fresh_start_hint(run_dir: Path) -> str:
    """What to do about a run directory that already holds a run, for a fresh start into it."""
    if list_checkpoints(run_dir):
        return f"pass --resume {run_dir} to continue it (from its newest checkpoint), or choose another --out"
    return f"it stopped before its first checkpoint: pass --resume {run_dir} to start it again from step 0"


def train(
    config: TrainConfig,
    resume: str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    max_steps: int | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> RunResult:
    """Train per ``config``; ``resume`` is a checkpoint directory or a run directory (its newest checkpoint).

    ``max_steps``/``out_dir`` override the config. ``stop_after`` ends the run (with a checkpoint) after
    that many total steps without changing the schedule: an interruption, as used by the resume test.
    Without ``out_dir`` a resumed run continues in the checkpoint's run directory.
    """
    if max_steps is not None:
        config = config.replace(max_steps=max_steps)
    if out_dir is not None:
        config = config.replace(out_dir=str(Path(out_dir).resolve()))
    device, info = start_processes(config.device)
    try:
        run_dir, checkpoint_dir = start_of(config, resume)
        with run_lock(run_dir, info):
            restart = (
                checkpoint_dir is None and resume is not None and Path(resume).resolve() == run_dir.resolve()
            )
            if checkpoint_dir is None and not restart:
                refuse_used_run_dir(run_dir, info, _fresh_start_hint(run_dir))
            if checkpoint_dir is not None:
                copy_source_log(checkpoint_dir, run_dir, info)
            trainer = Trainer(config, device, info, run_dir=run_dir, progress=progress)
            trainer.setup()
            if checkpoint_dir is not None:
                trainer.restore(checkpoint_dir)
            elif restart:
                trainer.restart()
            return trainer.finish(trainer.run(stop_after))
    finally:
        D.shutdown(info)
