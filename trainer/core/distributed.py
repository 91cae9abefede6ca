"""torchrun integration: process group set-up, DDP/FSDP wrapping, and cross-rank reductions.

Single-process runs (``python``, tests, the demo) never touch ``torch.distributed``. Under ``torchrun`` the
environment variables RANK / WORLD_SIZE / LOCAL_RANK select the process group: NCCL on GPUs, gloo on CPU.
Each rank reads its own slice of the stream (``TokenStream(rank=, world_size=)``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from elm_data.model.weights import uncompiled
from elm_data.pipeline.stream.consumed import ConsumedTokens


@dataclass(frozen=True)
class DistInfo:
    """This process's place under torchrun (rank 0 of 1 when single-process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process: collectives go through ``torch.distributed``."""
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
    """DDP, or FSDP2 (``fully_shard`` on each decoder layer, then the root); unchanged when single-process.

    Build the optimizer *after* this call: FSDP2 turns the parameters into sharded DTensors in place (same
    module object, global shapes, so the weight-decay groups are unchanged). On GPUs FSDP keeps bf16 compute
    parameters and reduces gradients in fp32. Both run on CPU with gloo (tested, 2 processes).
    """
    if not info.enabled or strategy == "none":
        return model
    if strategy in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(device.type, (info.world_size,))
        policy = MixedPrecisionPolicy()
        if device.type == "cuda":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        return fully_shard(model, mesh=mesh, mp_policy=policy)
    raise ValueError(f"unknown distributed strategy {strategy!r}")


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` (or what torch.compile wraps) is sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(uncompiled(model), FSDPModule)


def gradient_sync(model: nn.Module, enabled: bool):
    """A context that skips (``enabled=False``) or keeps the cross-rank gradient reduction of a backward.

    DDP: ``no_sync()``; FSDP2: ``set_requires_gradient_sync``; single process: nothing to do.
    """
    inner = uncompiled(model)
    if enabled:
        if hasattr(inner, "set_requires_gradient_sync"):
            inner.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if hasattr(inner, "no_sync"):
        return inner.no_sync()
    if hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``tensor`` summed over ranks, in place (returned for chaining); unchanged in one process."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_counts(counts: Mapping[str, int], info: DistInfo) -> dict[str, int]:
    """Per-key counts summed over ranks, sorted by key; every rank gets the sum (a collective under
    torchrun)."""
    total = ConsumedTokens()
    for part in gather_objects(dict(counts), info):
        total.add(part)
    return total.to_dict()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has published a checkpoint)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group that :func:`init_distributed` joined."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
