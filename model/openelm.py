"""OpenELM decoder-only language model: token ids in, next-token logits out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import OpenELMConfig
from .layers import DecoderLayer, LayerKVCache, RMSNorm, rope_tables


class KVCache:
    """Per-layer key/value caches for incremental decoding (see :mod:`elm_data.model.generate`)."""

    def __init__(self, layers: list[LayerKVCache]) -> None:
        self.layers = layers

    @property
    def length(self) -> int:
        return self.layers[0].length


class OpenELM(nn.Module):
    """OpenELM with layer-wise scaling; parameter names and layouts match the published checkpoints.

    ``forward(input_ids[B, T]) -> logits[B, T, vocab_size]``. Ids must lie in ``[0, vocab_size)``: the trainer
    maps padding ids before calling. Packed documents can be isolated with ``segment_ids`` (block-diagonal
    causal mask); RoPE is relative, so positions need no reset at document boundaries.
    """

    def __init__(self, config: OpenELMConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embeddings = nn.Embedding(
            config.vocab_size, config.model_dim, padding_idx=config.padding_index
        )
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_transformer_layers))
        self.norm = RMSNorm(config.model_dim, eps=config.norm_eps)
        self.lm_head = None
        if not config.share_input_output_layers:
            self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CoreNet initialisation: N(0, fan_in^-1/2) linears, N(0, d^-1/2) embeddings, unit norms, and
        N(0, d^-1/2 (2L)^-1/2) for the residual-branch outputs (out_proj, ffn.proj_2)."""
        cfg = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features**-0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = cfg.model_dim**-0.5 * (2 * cfg.num_transformer_layers) ** -0.5
        for layer in self.layers:
            nn.init.normal_(layer.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(layer.ffn.proj_2.weight, std=residual_std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype=None, device=None) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_length`` (default: context)
        tokens."""
        weight = self.token_embeddings.weight
        max_length = max_length or self.config.max_context_length
        return KVCache(
            [
                LayerKVCache(
                    batch_size,
                    layer.attn.num_kv_heads,
                    self.config.head_dim,
                    max_length,
                    dtype or weight.dtype,
                    device or weight.device,
                )
                for layer in self.layers
            ]
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab_size].

        segment_ids: optional [B, T] document number of each token; tokens attend only within their segment.
        attention_mask: optional [B, T], 1 for real tokens and 0 for padding (padded keys are never attended).
        cache: optional :class:`KVCache`; the new keys/values are appended and positions continue from it.
        """
        hidden = self.hidden_states(input_ids, segment_ids, attention_mask, cache)
        weight = self.token_embeddings.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, model_dim] (the input of the output projection)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        offset = cache.length if cache is not None else 0
        if offset + length > self.config.rope_max_length:
            raise ValueError(
                f"{offset + length} positions exceed rope_max_length {self.config.rope_max_length}"
            )
        mask = None
        if segment_ids is not None or attention_mask is not None:
            if cache is not None:
                raise ValueError("segment_ids / attention_mask are not supported together with a KV cache")
            mask = document_causal_mask(segment_ids, attention_mask, length, input_ids.device)
        positions = torch.arange(offset, offset + length, device=input_ids.device)
        rope = rope_tables(self.config.head_dim, self.config.rope_freq_constant, positions)
        x = self.token_embeddings(input_ids)
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, rope, mask, layer_cache, use_reentrant=False)
            else:
                x = layer(x, rope, mask, layer_cache)
        return self.norm(x)


def document_causal_mask(
    segment_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    length: int,
    device: torch.device,
) -> torch.Tensor:
    """Boolean [B, 1, T, T] mask (True = may attend): causal, within one segment, never onto padding.

    Every token may always attend to itself, so no row is empty (padding rows stay finite).
    """
    positions = torch.arange(length, device=device)
    allowed = (positions[None, :] <= positions[:, None])[None]  # [1, T, T]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=device)[None]
    return allowed[:, None]


def count_parameters_on_meta(config: OpenELMConfig) -> int:
    """Parameters of a model built on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return OpenELM(config).num_parameters()


__all__ = ["OpenELM", "KVCache", "document_causal_mask", "count_parameters_on_meta"]
