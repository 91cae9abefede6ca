"""Next-token cross-entropy with z-loss, ignoring padding, as sums so gradient accumulation stays exact.

Inputs and labels. A stream sequence ``x`` holds ``seq_len + 1`` ids; the model reads ``x[:, :-1]`` and
is scored on ``x[:, 1:]``. Labels equal to the pad id (``PAD_ID``, 32000) are ignored by both terms.

Padding in the inputs. CoreNet pads with id 32000 and gives the model a 32128-row vocabulary, so the pad
id has its own (never-trained-towards) embedding row. A model with LLaMA's 32000 rows has no row 32000, so
:func:`split_inputs_labels` maps pad ids *in the inputs* to id 0 (``<unk>``). That changes no counted loss:
padding only ever trails real tokens in a sequence (CoreNet mode pads the tail; packed mode has none), so
an input pad sits at position t only if every later position is pad too. Its own prediction (label
``x[t+1]`` = pad) is ignored, and attention is causal, so no real position ever looks at it. The last real
token's label is a pad as well and is likewise ignored. Any other out-of-vocabulary id is an error.

z-loss (PaLM; CoreNet ``use_z_loss`` with ``z_loss_eps`` 1e-4) adds ``1e-4 * logsumexp(logits)^2`` per
counted position, pulling the softmax normaliser towards 1. CoreNet zeroes the logits of ignored positions
and still adds their ``log(V)^2`` to the sum (a constant without gradient); we leave ignored positions out,
so the value differs from CoreNet's on padded batches while the gradients are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from elm_data.pipeline.tokenizer import PAD_ID  # the one pad id (re-exported here for the loss's callers)

INPUT_PAD_REPLACEMENT = 0


def split_inputs_labels(
    ids: torch.Tensor, vocab_size: int, pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` from ``[B, seq_len + 1]`` stream ids; input pads mapped into the vocabulary."""
    inputs, labels = ids[:, :-1], ids[:, 1:]
    if pad_id >= vocab_size:
        inputs = inputs.masked_fill(inputs == pad_id, INPUT_PAD_REPLACEMENT)
    if inputs.numel() and (int(inputs.max()) >= vocab_size or int(inputs.min()) < 0):
        raise ValueError(
            f"token id outside the model vocabulary [0, {vocab_size}) (pad id {pad_id} excepted)"
        )
    return inputs, labels


@dataclass
class LossSums:
    """Summed loss terms over counted (non-pad) label positions of one micro-batch."""

    ce: torch.Tensor  # sum of -log p(label)
    z: torch.Tensor  # sum of logsumexp(logits)^2
    count: torch.Tensor  # number of counted positions

    def total(self, z_weight: float) -> torch.Tensor:
        return self.ce + z_weight * self.z


def loss_sums(logits: torch.Tensor, labels: torch.Tensor, pad_id: int = PAD_ID) -> LossSums:
    """Cross-entropy and z-loss sums in float32 over ``labels != pad_id`` (logits ``[B, T, V]``)."""
    logits = logits.float()
    counted = labels != pad_id
    # one fused log-softmax serves both terms: -log p(label), and logsumexp = logit - log p at any index
    log_probs = torch.log_softmax(logits, dim=-1)
    lse = logits[..., 0] - log_probs[..., 0]
    target = log_probs.gather(-1, labels.masked_fill(~counted, 0).unsqueeze(-1)).squeeze(-1)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    ce = torch.where(counted, -target, zero).sum()
    z = torch.where(counted, lse * lse, zero).sum()
    return LossSums(ce=ce, z=z, count=counted.sum())


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, z_weight: float = 1e-4, pad_id: int = PAD_ID
) -> torch.Tensor:
    """Mean cross-entropy plus ``z_weight`` times mean squared log-normaliser over counted positions."""
    sums = loss_sums(logits, labels, pad_id)
    return sums.total(z_weight) / sums.count.clamp(min=1)
