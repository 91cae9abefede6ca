"""torchrun integration: process group set-up, DDP/FSDP wrapping, and cross-rank reductions.

Single-process runs (``python``, tests, the demo) never touch ``torch.distributed``. Under ``torchrun`` the
environment variables RANK / WORLD_SIZE / LOCAL_RANK select the process group: NCCL on GPUs, gloo on CPU.
Each rank reads its own slice of the stream (``TokenStream(rank=, world_size=)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process :class:`DistInfo`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP or FSDP (one unit per decoder layer, full sharding) around ``model``; unchanged when single-process.

    FSDP is code-path ready but untested here (no multi-GPU machine); its checkpoints gather a full
    state dict on rank 0.
    """
    if not info.enabled or strategy == "none":
        return model
    if strategy in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        import functools

        from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        from elm_data.model.layers import DecoderLayer

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={DecoderLayer})
        precision = None
        if device.type == "cuda":
            precision = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return FullyShardedDataParallel(
            model, auto_wrap_policy=policy, mixed_precision=precision, device_id=device, use_orig_params=True
        )
    raise ValueError(f"unknown distributed strategy {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The OpenELM inside DDP/FSDP/torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
