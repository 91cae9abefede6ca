"""Hugging Face modeling code of an elm-data OpenELM export (copied into every export; needs torch +
transformers).

``AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)`` runs this file: no network, no
elm-data. Parameter names are those of the published ``apple/OpenELM-*`` checkpoints (``transformer.*``; with
tied embeddings the head is the embedding matrix and no ``lm_head.weight`` is stored). The arithmetic is
elm-data's OpenELM (``elm_data.model``): RMSNorm in float32 cast to the input dtype before the (promoting)
weight product, q/k RMSNorm per head, RoPE (half rotation) in float32 at absolute positions, grouped-query
SDPA, SwiGLU. Tests hold its logits and greedy ``generate`` equal to elm-data's forward and KV-cache
generation (and, under bf16 autocast, to CoreNet's order of operations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .hf_configuration import OpenELMConfig

# transformers renamed the cache argument and output field from `past_key_values` to `cache` (5.2x); take
# both.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class OpenELMRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # times the weight with type promotion: under bf16 autocast a bf16 q/k times float32 weights is
        # float32
        normed = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)
        return normed * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (j, j + d/2) of ``x`` [B, H, T, d] by ``positions`` [T] in float32; returns x's dtype."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / base ** (torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = torch.outer(positions.float(), inv_freq).repeat(1, 2)
    x32 = x.float()
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * angles.cos() + rotated * angles.sin()).to(x.dtype)


class OpenELMAttention(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.q_heads, self.kv_heads = config.num_query_heads[layer_idx], config.num_kv_heads[layer_idx]
        self.base = config.rope_freq_constant
        width = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.model_dim, width, bias=False)
        if config.normalize_qk_projections:
            self.q_norm = OpenELMRMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = OpenELMRMSNorm(self.head_dim, config.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = nn.Linear(self.q_heads * self.head_dim, config.model_dim, bias=False)

    def forward(self, x, positions, mask, cache) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.q_heads, self.kv_heads, self.kv_heads], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, positions, self.base), rope(k, positions, self.base)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class OpenELMFeedForward(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        hidden = config.ffn_dims[layer_idx]
        self.proj_1 = nn.Linear(config.model_dim, 2 * hidden, bias=False)
        self.proj_2 = nn.Linear(hidden, config.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(F.silu(gate) * up)


class OpenELMDecoderLayer(nn.Module):
    def __init__(self, config: OpenELMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = OpenELMRMSNorm(config.model_dim, config.norm_eps)
        self.attn = OpenELMAttention(config, layer_idx)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim, config.norm_eps)
        self.ffn = OpenELMFeedForward(config, layer_idx)

    def forward(self, x, positions, mask, cache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["OpenELMDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Only for weights absent from a checkpoint: N(0, 0.02) linears/embeddings, unit norms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, OpenELMRMSNorm):
            nn.init.ones_(module.weight)


class OpenELMModel(OpenELMPreTrainedModel):
    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(
            OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers)
        )
        self.norm = OpenELMRMSNorm(config.model_dim, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(self, input_ids, attention_mask=None, cache=None, use_cache=None, **kwargs):
        """Final hidden states [B, T, model_dim] and the cache (a transformers ``Cache``, created if
        asked)."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        positions = torch.arange(past, past + length, device=input_ids.device)
        mask = attention_bias(attention_mask, past, length, input_ids.device)
        x = self.token_embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, positions, mask, cache)
        return self.norm(x), cache


def attention_bias(attention_mask, past: int, length: int, device) -> torch.Tensor | None:
    """Boolean [B, 1, T, past + T] mask (True = attend): causal, never onto padded keys, each query sees
    itself.

    None when SDPA's own causal flag suffices (no padding, and no cache or a single new token).
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and (past == 0 or length == 1):
        return None
    query_pos = torch.arange(past, past + length, device=device)[:, None]
    key_pos = torch.arange(past + length, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None]
    if padded:
        allowed = allowed & attention_mask[:, None, -(past + length) :].bool()
    allowed = allowed | (key_pos == query_pos)[None]
    return allowed[:, None]


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        self.lm_head = None
        if not config.share_input_output_layers:
            self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.token_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        cache=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        hidden, cache = self.transformer(input_ids, attention_mask, cache, use_cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        head = self.transformer.token_embeddings.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, head)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})


__all__ = ["OpenELMForCausalLM", "OpenELMModel", "OpenELMPreTrainedModel"]
