"""AdamW with OpenELM's parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, as CoreNet's ``no_decay_bn_filter_bias``: decay on parameters with two or more
    dimensions (linear weights and the token embedding), none on 1-D parameters (RMSNorm weights, biases)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; the learning rate is set by :func:`build_scheduler`."""
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.peak_lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=fused,
    )


def lr_at(
    step: int, *, peak: float, warmup_steps: int, max_steps: int, init: float = 1e-6, min_ratio: float = 0.1
):
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up from ``init`` (step 0) to ``peak`` (step ``warmup_steps``), then a cosine from ``peak``
    down to ``min_ratio * peak``, reached exactly at the last step (``max_steps - 1``) and held after it.
    """
    if step < warmup_steps:
        return init + (peak - init) * step / warmup_steps
    floor = min_ratio * peak
    decay_steps = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose factor times the peak is :func:`lr_at`; ``scheduler.step()`` once per optimizer
    step."""
    peak = config.peak_lr

    def factor(step: int) -> float:
        return (
            lr_at(
                step,
                peak=peak,
                warmup_steps=config.warmup_steps,
                max_steps=config.max_steps,
                init=config.warmup_init_lr,
                min_ratio=config.min_lr_ratio,
            )
            / peak
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
