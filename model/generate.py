"""Greedy and sampled text generation with a KV cache, for quick qualitative checks of a checkpoint."""

from __future__ import annotations

import torch

from elm_data.core.errors import InvalidValue

from .openelm import OpenELM


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V]: argmax when ``temperature`` is 0, else sampling
    from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens."""
    if temperature < 0:
        raise InvalidValue(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        threshold = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    probabilities = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: OpenELM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Extend ``input_ids`` [B, T] by up to ``max_new_tokens`` tokens; returns [B, T + new].

    The prompt is run once, then one token per step through the KV cache. Sequences that produced
    ``eos_token_id`` keep emitting it; generation stops early once all have. With ``return_logits`` the
    per-step last-position logits [B, V] are returned too (for checking the cache against a full forward).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InvalidValue("input_ids must be a non-empty [batch, seq_len] tensor")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.config.rope_max_length:
        raise InvalidValue(
            f"prompt + new tokens ({total}) exceed rope_max_length {model.config.rope_max_length}"
        )
    was_training = model.training
    model.eval()
    cache = model.new_cache(input_ids.shape[0], max_length=total, device=input_ids.device)
    tokens = input_ids
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    step_logits: list[torch.Tensor] = []
    next_input = input_ids
    for _ in range(max_new_tokens):
        logits = model(next_input, cache=cache)[:, -1]
        step_logits.append(logits.float())
        next_token = sample_next(logits, temperature, top_k, generator)
        if eos_token_id is not None:
            next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
            finished |= next_token == eos_token_id
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        next_input = next_token[:, None]
        if eos_token_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return (tokens, step_logits) if return_logits else tokens


def generate_text(model: OpenELM, tokenizer, prompt: str, max_new_tokens: int = 32, **kwargs) -> str:
    """Decode a continuation of ``prompt`` with a tokenizer exposing ``encode``/``decode`` (BOS prepended)."""
    ids = [model.config.bos_token_id, *tokenizer.encode(prompt)]
    device = model.token_embeddings.weight.device
    out = generate(model, torch.tensor([ids], device=device), max_new_tokens, **kwargs)
    return tokenizer.decode(out[0, len(ids) :].tolist())
