"""OpenELM hyper-parameters and the layer-wise scaling rule (OpenELM paper, CoreNet configs).

Each layer i of N gets its own attention width and FFN width:

    qkv_m[i] = round(linspace(qkv_lo, qkv_hi, N)[i], 2)   q_dim = make_divisible(model_dim * qkv_m[i],
    head_dim * G) ffn_m[i] = round(linspace(ffn_lo, ffn_hi, N)[i], 2)   ffn_dim = make_divisible(model_dim *
    ffn_m[i], 256)

with G = ``num_gqa_groups`` query heads sharing one key/value head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from elm_data.core.settings import Settings

# name -> (num_transformer_layers, model_dim, head_dim); the published OpenELM sizes plus small CPU demos.
NAMED_SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 256, 32),
    "small": (6, 512, 64),
    "270M": (16, 1280, 64),
    "450M": (20, 1536, 64),
    "1.1B": (28, 2048, 64),
    "3B": (36, 3072, 128),
}
# Hugging Face repository of each published size (apple/OpenELM-<suffix>).
HF_REPO_SUFFIX = {"270M": "270M", "450M": "450M", "1.1B": "1_1B", "3B": "3B"}
LLAMA_VOCAB_SIZE = 32000
CORENET_PADDED_VOCAB_SIZE = 32128


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never losing more than
    10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def _linspace(start: float, stop: float, num: int) -> list[float]:
    if num == 1:
        return [float(start)]
    step = (stop - start) / (num - 1)
    return [start + i * step for i in range(num)]


def expand_multipliers(spec: float | list[float] | tuple[float, ...], num_layers: int) -> list[float]:
    """Per-layer multipliers from a scalar, a (first, last) pair (rounded linspace) or an explicit per-layer
    list."""
    if isinstance(spec, (int, float)):
        return [float(spec)] * num_layers
    values = [float(v) for v in spec]
    if len(values) == 2 and num_layers != 2:
        return [round(v, 2) for v in _linspace(values[0], values[1], num_layers)]
    if len(values) == num_layers:
        return values
    raise ValueError(
        f"multipliers must be a number, a (first, last) pair or {num_layers} values; got {values}"
    )


@dataclass
class OpenELMConfig(Settings):
    """Shape of an OpenELM model. Use :meth:`named` for the published sizes."""

    num_transformer_layers: int
    model_dim: int
    head_dim: int
    name: str = "custom"
    num_gqa_groups: int = 4
    qkv_multipliers: float | list[float] = field(default_factory=lambda: [0.5, 1.0])
    ffn_multipliers: float | list[float] = field(default_factory=lambda: [0.5, 4.0])
    ffn_dim_divisor: int = 256
    vocab_size: int = LLAMA_VOCAB_SIZE
    max_context_length: int = 2048
    rope_freq_constant: float = 10000.0
    rope_max_length: int = 4096
    normalize_qk_projections: bool = True
    share_input_output_layers: bool = True
    norm_eps: float = 1e-6
    bos_token_id: int = 1
    eos_token_id: int = 2
    # "sdpa" (F.scaled_dot_product_attention) or "eager" (explicit matmuls, benchmarks)
    attention: str = "sdpa"
    # CoreNet's `padding_index` (32000 with its 32128-row vocabulary): that embedding row gets no gradient
    # from the input side (nn.Embedding padding_idx); it is still the output logit of the pad id.
    padding_index: int | None = None

    def __post_init__(self) -> None:
        self.qkv_multipliers = _as_list(self.qkv_multipliers)
        self.ffn_multipliers = _as_list(self.ffn_multipliers)
        if self.attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {self.attention!r}")
        if self.model_dim % self.head_dim:
            raise ValueError(f"model_dim {self.model_dim} is not a multiple of head_dim {self.head_dim}")
        if self.padding_index is not None and not 0 <= self.padding_index < self.vocab_size:
            raise ValueError(
                f"padding_index {self.padding_index} lies outside the vocabulary [0, {self.vocab_size})"
            )
        for i, heads in enumerate(self.num_query_heads):
            if heads % self.num_gqa_groups:
                raise ValueError(
                    f"layer {i}: {heads} query heads not divisible by {self.num_gqa_groups} groups"
                )

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def named(cls, name: str, **overrides: Any) -> OpenELMConfig:
        """A published size ("270M", "450M", "1.1B", "3B") or a CPU demo size ("tiny", "small")."""
        if name not in NAMED_SHAPES:
            raise ValueError(f"unknown OpenELM config {name!r}; choose one of {', '.join(NAMED_SHAPES)}")
        layers, dim, head_dim = NAMED_SHAPES[name]
        return cls(num_transformer_layers=layers, model_dim=dim, head_dim=head_dim, name=name, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> OpenELMConfig:
        """A shape from a mapping (a config's ``model:``, a checkpoint's model_config.json): unknown keys are
        refused naming the nearest valid one, types checked
        (:class:`~elm_data.core.settings.SettingsError`)."""
        return cls.from_mapping(data, where)

    # ---- layer-wise scaling -------------------------------------------------------------------------------
    @property
    def layer_qkv_multipliers(self) -> list[float]:
        return expand_multipliers(self.qkv_multipliers, self.num_transformer_layers)

    @property
    def layer_ffn_multipliers(self) -> list[float]:
        return expand_multipliers(self.ffn_multipliers, self.num_transformer_layers)

    @property
    def num_query_heads(self) -> list[int]:
        divisor = self.head_dim * self.num_gqa_groups
        return [
            make_divisible(self.model_dim * m, divisor) // self.head_dim for m in self.layer_qkv_multipliers
        ]

    @property
    def num_kv_heads(self) -> list[int]:
        return [heads // self.num_gqa_groups for heads in self.num_query_heads]

    @property
    def ffn_dims(self) -> list[int]:
        return [make_divisible(self.model_dim * m, self.ffn_dim_divisor) for m in self.layer_ffn_multipliers]

    # ---- accounting ---------------------------------------------------------------------------------------
    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact trainable parameter count (tied embeddings counted once)."""
        d, hd = self.model_dim, self.head_dim
        total = 0
        for q, kv, ffn in zip(self.num_query_heads, self.num_kv_heads, self.ffn_dims, strict=True):
            total += d * (q + 2 * kv) * hd + q * hd * d  # qkv_proj, out_proj
            total += d * 2 * ffn + ffn * d  # proj_1 (gate + up), proj_2
            total += 2 * d + (2 * hd if self.normalize_qk_projections else 0)  # norms
        total += d  # final norm
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.share_input_output_layers else 2)
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward): 6N plus 12 * seq_len * sum(attention widths).

        N counts every parameter once; with tied embeddings that is the output projection's matmul (the input
        lookup is free). The attention term is the PaLM one (QK^T and AV, no credit for causal masking).
        """
        attention = 12 * seq_len * self.head_dim * sum(self.num_query_heads)
        return 6 * self.num_parameters() + attention


def _as_list(value: Any) -> list[float] | float:
    if isinstance(value, (int, float)):
        return float(value)
    return [float(v) for v in value]
