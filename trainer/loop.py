"""The training loop: a manifest's token stream into an OpenELM, with checkpoints and a data-transparent log.

Read top to bottom: :func:`train` sets up (seed, data, model, optimizer, resume), then runs
:func:`train_step` ``max_steps`` times, logging and checkpointing as it goes.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from elm_data.core.errors import ElmDataError
from elm_data.manifests.manifest import Manifest
from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.pipeline.stream import StreamLoader, TokenStream, merge_states
from elm_data.pipeline.stream.receipt import chain, genesis, step_digest, stream_batch_digest
from elm_data.pipeline.tokenizer import PAD_ID, LlamaTokenizer, resolve_tokenizer

from . import distributed as D
from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint, set_rng_state
from .config import ConfigError, TrainConfig
from .hardware import autocast, autocast_dtype, device_description, mfu, peak_flops, pick_device
from .loss import loss_sums, split_inputs_labels
from .optim import build_optimizer, build_scheduler
from .runlog import LOG_FILE, RunLog, code_version, effective_steps, read_log


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
    ledger: dict[str, int] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stopped_early: str | None = None  # why the run ended before max_steps (data exhausted, stop_after)
    rank: int = 0  # this process's rank under torchrun (only rank 0 writes the log and checkpoints)


@dataclass
class StepStats:
    loss: float
    ce_loss: float
    z_loss: float
    grad_norm: float
    counted_tokens: int  # label positions that count (not pad), all ranks
    positions: int  # label positions (batch x seq_len), all ranks
    tokens_by_source: Counter
    data_wait_s: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- set-up pieces (also used by benchmarks/bench_trainer.py) ----------------------------------------------
def load_tokenizer(config: TrainConfig, manifest: Manifest) -> LlamaTokenizer:
    """The tokenizer the manifest was built with (its sha256 is checked), found as the pipeline finds it."""
    try:  # flag/config > $ELM_DATA_TOKENIZER > the manifest's location > the cache, by the manifest's sha256
        return resolve_tokenizer(None, config.tokenizer, manifest.info)
    except (ValueError, RuntimeError) as error:
        raise TrainingError(str(error)) from error


def build_loader(config: TrainConfig, manifest_dir: Path, tokenizer: LlamaTokenizer, info: D.DistInfo):
    """The stream loader for this rank: ``TokenStream`` over the manifest, wrapped in ``StreamLoader``."""
    stream = TokenStream(
        manifest_dir,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        mode=config.mode,
        weights=config.weights,
        seed=config.data_seed,  # None: the manifest's seed, exactly as `elm-data stream` (config.seed is the model's)
        rank=info.rank,
        world_size=info.world_size,
        tokenizer=tokenizer,
        epochs=config.epochs,
        provenance=True,
        document_masks=config.document_masks,
        partitions=config.partitions,
    )
    return StreamLoader(stream, num_workers=config.num_workers)


def build_model(config: TrainConfig, device: torch.device) -> OpenELM:
    model_config: OpenELMConfig = config.model_config()
    if config.seq_len > model_config.rope_max_length:
        raise ConfigError(
            f"seq_len {config.seq_len} exceeds the model's rope_max_length {model_config.rope_max_length}"
        )
    model = OpenELM(model_config).to(device)
    model.gradient_checkpointing = config.gradient_checkpointing
    return model


# ---- one optimizer step ------------------------------------------------------------------------------------
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
        return StepStats(0.0, 0.0, 0.0, 0.0, 0, positions, Counter(), 0.0)
    # DDP/FSDP average gradients over ranks; scale so the result is the mean over all counted tokens.
    denominator = max(counted, 1) / info.world_size
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for i, ((inputs, labels), batch) in enumerate(zip(pairs, batches, strict=True)):
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        segment_ids = batch.get("segment_ids")
        kwargs = {"segment_ids": segment_ids[:, :-1].to(device)} if segment_ids is not None else {}
        last = i == len(pairs) - 1
        with D.gradient_sync(model, enabled=last):  # reduce gradients across ranks once, on the last one
            with autocast(device, amp_dtype):
                logits = model(inputs, **kwargs)
            parts = loss_sums(logits, labels, PAD_ID)
            (parts.total(config.z_loss) / denominator).backward()
        sums += torch.stack([parts.ce.detach(), parts.z.detach()]).double()
    D.all_reduce_sum(sums, info)
    # Under FSDP the gradients are sharded DTensors: the norm is reduced over ranks (a DTensor itself).
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ce, z = (sums / max(counted, 1)).tolist()
    by_source: Counter = Counter()
    for batch in batches:
        by_source.update(batch.get("tokens_by_source") or {})
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


# ---- the run -----------------------------------------------------------------------------------------------
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
    """
    if max_steps is not None:
        config = config.replace(max_steps=max_steps)
    if out_dir is not None:
        config = config.replace(out_dir=str(Path(out_dir).resolve()))
    device = pick_device(config.device)
    info = D.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    try:
        return _run(config, resume, device, info, stop_after, progress)
    finally:
        D.shutdown(info)


def _run(config, resume, device, info, stop_after, progress) -> RunResult:
    seed_everything(config.seed)
    checkpoint_dir = resolve_checkpoint(resume) if resume is not None else None
    run_dir = config.run_dir
    if checkpoint_dir is not None and config.out_dir is None:
        run_dir = checkpoint_dir.parent.parent  # RUN_DIR/checkpoints/step_N
    if checkpoint_dir is None and info.is_main and (run_dir / LOG_FILE).exists():
        raise TrainingError(
            f"{run_dir} already holds a run: pass --resume {run_dir} to continue it (from its newest checkpoint), "
            "or choose another --out"
        )

    manifest_dir = config.manifest_dir
    try:
        manifest = Manifest(manifest_dir)
    except (FileNotFoundError, ValueError) as error:
        raise TrainingError(str(error)) from error
    tokenizer = load_tokenizer(config, manifest)
    model = build_model(config, device)
    model_config = model.config
    loader = build_loader(config, manifest_dir, tokenizer, info)

    step, tokens_total = 0, 0
    plan_config = loader.stream.config.to_dict()
    receipt: str | None = genesis(manifest.manifest_id, plan_config)  # the consumption receipt's chain head
    state = None
    if checkpoint_dir is not None:  # full weights into every rank's model before DDP/FSDP takes it over
        state = load_checkpoint(checkpoint_dir, model, map_location=device)
        saved = state["trainer"]
        if saved.get("manifest_id") != manifest.manifest_id:
            raise CheckpointError(
                f"checkpoint {checkpoint_dir} was trained on manifest {saved.get('manifest_id')}, "
                f"this config names {manifest.manifest_id}"
            )
        if saved.get("fingerprint") and saved["fingerprint"] != config.fingerprint():
            raise CheckpointError(f"checkpoint {checkpoint_dir} was written under different training settings")
        # one state for the whole run (every rank's partition cursors): resumable on any ranks × workers
        # that divide the stream's partitions
        loader.load_state_dict(state["stream"])
        step, tokens_total = int(saved["step"]), int(saved["tokens"])
        receipt = saved.get("receipt")  # None: a checkpoint from before receipts (the chain is not continued)

    amp_dtype = autocast_dtype(device, config.precision)
    wrapped = D.wrap_model(model, config.distributed, info, device)
    # After wrapping: FSDP2 has made the parameters sharded DTensors (DDP and one process leave them as is).
    optimizer = build_optimizer(model, config, fused=device.type == "cuda" or None)
    scheduler = build_scheduler(optimizer, config)
    if state is not None:
        _load_optimizer_state(wrapped, optimizer, state["optimizer"], checkpoint_dir)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    if config.compile:
        wrapped = torch.compile(wrapped)
    wrapped.train()
    accum = config.grad_accum_steps(info.world_size)
    flops_per_token = model_config.flops_per_token(config.seq_len)
    peak = peak_flops(device)

    log = RunLog(run_dir, enabled=info.is_main)
    common = {
        "manifest_id": manifest.manifest_id,
        "manifest_dir": str(manifest_dir),
        "tokenizer": tokenizer.describe(),
        "config": config.to_dict(),
        "model_config": model_config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "code_version": code_version(),
        "device": device_description(device),
        "world_size": info.world_size,
        "grad_accum_steps": accum,
        "tokens_per_step": config.batch_size * config.seq_len * accum * info.world_size,
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
    }
    if checkpoint_dir is None:
        log.write("header", **common, stream_state=loader.state_dict(), receipt=receipt)
    else:
        if not (run_dir / LOG_FILE).exists() or (run_dir / LOG_FILE).stat().st_size == 0:
            log.write("header", **common, stream_state=state["stream"], resumed_from=str(checkpoint_dir))
        log.write("resume", from_step=step, checkpoint=str(checkpoint_dir), receipt=receipt, **common)

    result = RunResult(
        run_dir=run_dir, final_step=step, first_loss=None, last_loss=None, checkpoint=checkpoint_dir, rank=info.rank
    )
    iterator = iter(loader)
    target = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        disable=not (progress and info.is_main),
        unit="step",
        dynamic_ncols=True,
        desc="train",
    )
    last_checkpoint_step = step if checkpoint_dir is not None else None

    def checkpoint_now() -> Path | None:
        ledger = _global_ledger(loader, info)
        trainer_state = {
            "tokens": tokens_total,
            "ledger": ledger,
            "manifest_id": manifest.manifest_id,
            "fingerprint": config.fingerprint(),
            "config": config.to_dict(),
            "receipt": receipt,
        }
        model_to_save, optim_state = _full_states(wrapped, model, optimizer, info)
        path = None
        stream_states = D.gather_objects(loader.state_dict(), info)
        if info.is_main:
            stream_state = merge_states(stream_states)
            path = save_checkpoint(
                run_dir,
                step,
                model_to_save,
                optim_state,
                scheduler.state_dict(),
                stream_state,
                trainer_state,
                keep=config.keep_checkpoints,
            )
            log.write("checkpoint", step=step, path=str(path))
        D.barrier(info)
        return path

    try:
        while step < target:
            started = time.perf_counter()
            batches = []
            for _ in range(accum):
                try:
                    batches.append(next(iterator))
                except StopIteration:
                    break
            waited = time.perf_counter() - started
            if len(batches) < accum:
                result.stopped_early = f"data exhausted after {step} steps (epochs={config.epochs})"
                break
            lr = optimizer.param_groups[0]["lr"]
            stats = train_step(wrapped, optimizer, batches, config, device, amp_dtype, info, model_config.vocab_size)
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            step += 1
            if receipt is not None:
                receipt = chain(receipt, _step_digest(batches, loader.stream.config.mode, info))
            step_positions = stats.positions  # a finite stream's last batch may be short
            tokens_total += step_positions
            if not math.isfinite(stats.loss):
                raise TrainingError(f"loss became {stats.loss} at step {step}")
            result.steps.append(step)
            result.losses.append(stats.loss)
            tokens_per_s = step_positions / elapsed
            if step % config.log_every == 0 or step == target:
                log.write(
                    "step",
                    step=step,
                    loss=stats.loss,
                    ce_loss=stats.ce_loss,
                    z_loss=stats.z_loss,
                    lr=lr,
                    grad_norm=stats.grad_norm,
                    tokens=step_positions,
                    counted_tokens=stats.counted_tokens,
                    tokens_total=tokens_total,
                    tokens_per_s=tokens_per_s,
                    mfu=mfu(tokens_per_s, flops_per_token, peak, info.world_size),
                    data_wait_s=waited,
                    step_time_s=elapsed,
                    step_tokens_by_source=_global_sum(stats.tokens_by_source, info),
                    tokens_by_source=_global_ledger(loader, info),
                    receipt=receipt,
                )
            elif receipt is not None:  # every step's chain head is logged, even between logged steps
                log.write("receipt", step=step, receipt=receipt)
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < target:
                result.checkpoint = checkpoint_now()
                last_checkpoint_step = step
    finally:
        bar.close()
    if step != last_checkpoint_step:
        result.checkpoint = checkpoint_now()
    if stop_after is not None and step == stop_after and step < config.max_steps:
        result.stopped_early = f"stopped after step {step} (stop_after)"
    log.write(
        "end",
        step=step,
        tokens_total=tokens_total,
        stopped_early=result.stopped_early,
        checkpoint=str(result.checkpoint) if result.checkpoint else None,
        receipt=receipt,
        manifest_id=manifest.manifest_id,
        merkle_root=manifest.info.get("merkle_root"),
        plan=plan_config,
        batches_per_step=accum * info.world_size,
        steps=step,
    )
    log.close()

    result.final_step = step
    result.tokens = tokens_total
    result.ledger = _global_ledger(loader, info)
    if info.is_main:
        logged = effective_steps(read_log(run_dir))
        if logged:
            result.first_loss, result.last_loss = logged[0]["loss"], logged[-1]["loss"]
    return result


def _step_digest(batches: list[dict[str, Any]], mode: str, info: D.DistInfo) -> bytes:
    """The step's digest for the consumption receipt: every rank's batch digests, in global batch order."""
    mine = [(int(b["batch_index"]), stream_batch_digest(b, mode)) for b in batches]
    every = sorted(d for part in D.gather_objects(mine, info) for d in part)
    return step_digest(d for _, d in every)


def _global_sum(counts: dict[str, int], info: D.DistInfo) -> dict[str, int]:
    """Per-source token counts summed over ranks (every rank gets the sum)."""
    total: Counter = Counter()
    for part in D.gather_objects(dict(counts), info):
        total.update(part)
    return dict(sorted(total.items()))


def _global_ledger(loader, info: D.DistInfo) -> dict[str, int]:
    """Tokens consumed per source/subset so far, summed over ranks."""
    return _global_sum(loader.ledger, info)


def _full_states(wrapped, model, optimizer, info: D.DistInfo):
    """(model to save, optimizer state): under FSDP both are gathered to full tensors on rank 0 (every rank
    must call this); the optimizer state is then keyed by parameter name (torch.distributed.checkpoint's
    full state dict) rather than by parameter index."""
    if not D.is_fsdp(wrapped):
        return model, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    with torch.device("meta"):
        cpu_model = OpenELM(model.config)
    if info.is_main:
        cpu_model.load_state_dict(full, assign=True)
    return cpu_model, optim_state


def _load_optimizer_state(wrapped, optimizer, saved: dict[str, Any], checkpoint_dir: Path) -> None:
    """Restore the optimizer: a plain ``state_dict`` (one process, DDP) or, under FSDP, the full
    name-keyed state that :func:`_full_states` saved, re-sharded onto this rank's parameters."""
    if not D.is_fsdp(wrapped):
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    inner = getattr(wrapped, "_orig_mod", wrapped)
    try:
        set_optimizer_state_dict(
            inner, optimizer, optim_state_dict=saved, options=StateDictOptions(full_state_dict=True)
        )
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir}: its optimizer state cannot be loaded into this FSDP run ({error})"
        ) from error
