"""Hugging Face configuration of an elm-data OpenELM export (copied into every export; needs only
transformers).

The keys are those of the published ``apple/OpenELM-*`` ``config.json`` files, so Apple's remote code reads an
export's config too, and this class reads theirs. Per-layer widths follow OpenELM's layer-wise scaling: query
and key/value heads are stored per layer; FFN widths are ``make_divisible(model_dim * ffn_multipliers[i],
divisor)``.
"""

from __future__ import annotations

from transformers import PretrainedConfig


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never losing more than
    10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


class OpenELMConfig(PretrainedConfig):
    """OpenELM shape; ``num_query_heads``, ``num_kv_heads`` and ``ffn_multipliers`` are per-layer lists."""

    model_type = "openelm"

    def __init__(
        self,
        vocab_size: int = 32000,
        max_context_length: int = 2048,
        num_transformer_layers: int = 16,
        model_dim: int = 1280,
        head_dim: int = 64,
        qkv_multipliers: list[float] | None = None,
        num_query_heads: list[int] | None = None,
        num_kv_heads: list[int] | None = None,
        num_gqa_groups: int = 4,
        ffn_multipliers: list[float] | None = None,
        ffn_with_glu: bool = True,
        ffn_dim_divisor: int = 256,
        activation_fn_name: str = "swish",
        normalization_layer_name: str = "rms_norm",
        normalize_qk_projections: bool = True,
        share_input_output_layers: bool = True,
        rope_freq_constant: float = 10000,
        rope_max_length: int = 4096,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.max_context_length = max_context_length
        self.num_transformer_layers = num_transformer_layers
        self.model_dim = model_dim
        self.head_dim = head_dim
        self.qkv_multipliers = qkv_multipliers if qkv_multipliers is not None else [0.5, 1.0]
        self.num_query_heads = list(num_query_heads or [])
        self.num_kv_heads = list(num_kv_heads or [])
        self.num_gqa_groups = num_gqa_groups
        self.ffn_multipliers = list(ffn_multipliers or [])
        self.ffn_with_glu = ffn_with_glu
        self.ffn_dim_divisor = ffn_dim_divisor
        self.activation_fn_name = activation_fn_name
        self.normalization_layer_name = normalization_layer_name
        self.normalize_qk_projections = normalize_qk_projections
        self.share_input_output_layers = share_input_output_layers
        self.rope_freq_constant = rope_freq_constant
        self.rope_max_length = rope_max_length
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", share_input_output_layers)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    @property
    def ffn_dims(self) -> list[int]:
        return [make_divisible(self.model_dim * m, self.ffn_dim_divisor) for m in self.ffn_multipliers]

    # transformers' generic names (generation, cache and pipeline code look these up)
    @property
    def hidden_size(self) -> int:
        return self.model_dim

    @property
    def num_hidden_layers(self) -> int:
        return self.num_transformer_layers

    @property
    def num_attention_heads(self) -> int:
        return max(self.num_query_heads)

    @property
    def max_position_embeddings(self) -> int:
        return self.rope_max_length
