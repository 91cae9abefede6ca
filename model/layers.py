"""The building blocks of one OpenELM decoder layer: rotary embedding, GQA attention, SwiGLU FFN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import OpenELMConfig


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (parameter ``weight``) in CoreNet's/Hugging Face's order: normalise in float32, cast the
    normalised value to the input's dtype, then multiply by the weight with ordinary type promotion.

    The order matters in bf16 once the weights are not all ones: multiplying in float32 before the cast
    differs. The result's dtype is the promotion of the input's and the weight's: equal dtypes (float32,
    whole-model bf16) keep it; under bf16 autocast with float32 weights a bf16 input (the q/k projections)
    comes out float32, as in CoreNet's ``general_gpt.py`` (``tests/test_model_autocast.py`` holds the logits
    to that order).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), self.normalized_shape, None, self.eps).to(x.dtype)
        return normed * self.weight


def rope_tables(head_dim: int, base: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin tables [len(positions), head_dim] for RoPE in the NeoX half-rotation layout.

    Computed per forward call (cheap) rather than stored, so meta-device construction, ``.to(bfloat16)`` and
    ``torch.compile`` never touch their precision.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    inv_freq = 1.0 / (base**exponents)
    angles = torch.outer(positions.float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, heads, T, head_dim] (pairs (j, j + head_dim/2)) in float32; returns x's dtype."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class LayerKVCache:
    """Keys (already rotated) and values of one attention layer, preallocated to ``max_length`` positions."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, max_length: int, dtype, device) -> None:
        shape = (batch, kv_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + keys.shape[-2]
        if end > self.keys.shape[-2]:
            raise ValueError(f"KV cache full: {end} positions > capacity {self.keys.shape[-2]}")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    """Causal grouped-query attention with per-head q/k RMSNorm; widths set by the layer-wise scaling."""

    def __init__(self, config: OpenELMConfig, layer_index: int) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.eager = config.attention == "eager"
        self.num_query_heads = config.num_query_heads[layer_index]
        self.num_kv_heads = config.num_kv_heads[layer_index]
        total_heads = self.num_query_heads + 2 * self.num_kv_heads
        # Output rows: all query heads, then the key heads, then the value heads (the checkpoints' layout).
        self.qkv_proj = nn.Linear(config.model_dim, total_heads * self.head_dim, bias=False)
        if config.normalize_qk_projections:
            self.q_norm = RMSNorm(self.head_dim, eps=config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = nn.Linear(self.num_query_heads * self.head_dim, config.model_dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        queries, keys, values = qkv.split([self.num_query_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        if self.q_norm is not None:
            queries, keys = self.q_norm(queries), self.k_norm(keys)
        cos, sin = rope
        queries, keys = apply_rope(queries, cos, sin), apply_rope(keys, cos, sin)
        offset = cache.length if cache is not None else 0
        if cache is not None:
            keys, values = cache.append(keys, values)
        if mask is not None:
            attn_kwargs = {"attn_mask": mask}
        elif offset == 0:
            attn_kwargs = {"is_causal": length > 1}
        elif length == 1:
            attn_kwargs = {}  # one new query sees every cached position
        else:
            attn_kwargs = {"attn_mask": causal_mask(length, offset, x.device)}
        attend = eager_attention if self.eager else F.scaled_dot_product_attention
        out = attend(queries, keys, values, enable_gqa=True, **attn_kwargs)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


def eager_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as explicit matmuls and a float32 softmax (``attention: eager``).

    Same arguments and result (GQA: query head h reads key/value head h // (query heads / kv heads)).
    """
    if enable_gqa and keys.shape[1] != queries.shape[1]:
        repeat = queries.shape[1] // keys.shape[1]
        keys, values = keys.repeat_interleave(repeat, dim=1), values.repeat_interleave(repeat, dim=1)
    scores = (queries @ keys.transpose(-2, -1)).float() * queries.shape[-1] ** -0.5
    if is_causal:
        attn_mask = causal_mask(queries.shape[-2], keys.shape[-2] - queries.shape[-2], queries.device)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(values.dtype) @ values


def causal_mask(length: int, offset: int, device: torch.device) -> torch.Tensor:
    """Boolean [length, offset + length] mask: query i (at position offset + i) sees keys 0 .. offset + i."""
    query_pos = torch.arange(offset, offset + length, device=device)[:, None]
    key_pos = torch.arange(offset + length, device=device)[None, :]
    return key_pos <= query_pos


class FeedForward(nn.Module):
    """SwiGLU: proj_2(silu(gate) * up), where proj_1's first half of rows is the gate and second half the
    up."""

    def __init__(self, config: OpenELMConfig, layer_index: int) -> None:
        super().__init__()
        hidden = config.ffn_dims[layer_index]
        self.proj_1 = nn.Linear(config.model_dim, 2 * hidden, bias=False)
        self.proj_2 = nn.Linear(hidden, config.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: OpenELMConfig, layer_index: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.model_dim, eps=config.norm_eps)
        self.attn = Attention(config, layer_index)
        self.ffn_norm = RMSNorm(config.model_dim, eps=config.norm_eps)
        self.ffn = FeedForward(config, layer_index)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, mask, cache)
        return x + self.ffn(self.ffn_norm(x))
