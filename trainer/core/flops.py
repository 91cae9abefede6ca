"""Training FLOPs per token of an OpenELM, counted matmul by matmul from its per-layer widths.

Invariants (tested against ``6 x parameters + attention`` in ``tests/test_efficiency_flops.py``):

- a matmul ``[.., k] @ [k, n]`` costs ``2 k n`` FLOPs per token forward; training (forward + backward) is 3x
that;
- per layer: ``qkv_proj`` (d -> (q + 2 kv) hd), ``out_proj`` (q hd -> d), ``proj_1`` (d -> 2 ffn), ``proj_2``
  (ffn -> d), plus attention scores ``QK^T`` and ``AV``: ``2 x 2 x seq_len x q x hd`` per token forward;
- the output projection (tied or not) costs ``2 d V``; the embedding lookup, norms, RoPE, softmax and SwiGLU's
  elementwise work are not counted (the PaLM/MFU convention);
- attention is counted without credit for causal masking unless ``causal=True`` (which halves it), so the
  default total equals ``OpenELMConfig.flops_per_token`` minus ``6 x`` the norm weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from elm_data.model.config import OpenELMConfig

TRAIN_FACTOR = 3  # backward costs twice the forward


@dataclass(frozen=True)
class LayerFlops:
    """Training FLOPs per token of one decoder layer, by part."""

    layer: int
    qkv: int
    out: int
    ffn: int
    attention: int

    @property
    def total(self) -> int:
        return self.qkv + self.out + self.ffn + self.attention


def layer_flops(config: OpenELMConfig, seq_len: int, causal: bool = False) -> list[LayerFlops]:
    """Per-layer training FLOPs per token at ``seq_len`` (the widths of the layer-wise scaling)."""
    d, hd, f = config.model_dim, config.head_dim, TRAIN_FACTOR
    layers = []
    widths = zip(config.num_query_heads, config.num_kv_heads, config.ffn_dims, strict=True)
    for i, (q, kv, ffn) in enumerate(widths):
        scores = 2 * 2 * seq_len * q * hd  # QK^T and AV, every key counted
        layers.append(
            LayerFlops(
                layer=i,
                qkv=f * 2 * d * (q + 2 * kv) * hd,
                out=f * 2 * q * hd * d,
                ffn=f * (2 * d * 2 * ffn + 2 * ffn * d),
                attention=f * (scores // 2 if causal else scores),
            )
        )
    return layers


def head_flops(config: OpenELMConfig) -> int:
    """Training FLOPs per token of the output projection onto the vocabulary."""
    return TRAIN_FACTOR * 2 * config.model_dim * config.vocab_size


def flops_per_token(config: OpenELMConfig, seq_len: int, causal: bool = False) -> int:
    """Total training FLOPs per token: every layer plus the output projection."""
    return sum(layer.total for layer in layer_flops(config, seq_len, causal)) + head_flops(config)


def breakdown(config: OpenELMConfig, seq_len: int) -> dict[str, float | int]:
    """Totals by part and the attention-score share (for reports)."""
    layers = layer_flops(config, seq_len)
    parts = {key: sum(asdict(layer)[key] for layer in layers) for key in ("qkv", "out", "ffn", "attention")}
    parts["head"] = head_flops(config)
    total = sum(parts.values())
    return parts | {"total": total, "attention_share": parts["attention"] / total}
