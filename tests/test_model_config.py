"""OpenELM shapes: the layer-wise scaling rule, per-layer widths and exact parameter counts (meta device)."""

from __future__ import annotations

import pytest
import torch

from elm_data.model import OpenELM, OpenELMConfig, make_divisible
from elm_data.model.config import expand_multipliers
from elm_data.model.openelm import count_parameters_on_meta

# Parameter counts of the published OpenELM sizes with the LLaMA vocabulary (32000 rows, tied head).
PUBLISHED_COUNTS = {"270M": 271_527_168, "450M": 457_179_136, "1.1B": 1_079_891_456, "3B": 3_036_647_424}

# Per-layer head counts as written in the released apple/OpenELM-*/config.json files.
PUBLISHED_QUERY_HEADS = {
    "270M": [12] * 5 + [16] * 7 + [20] * 4,
    "1.1B": [16] * 3 + [20] * 7 + [24] * 8 + [28] * 6 + [32] * 4,
}
PUBLISHED_FFN_MULTIPLIERS_1_1B = [
    0.5,
    0.63,
    0.76,
    0.89,
    1.02,
    1.15,
    1.28,
    1.41,
    1.54,
    1.67,
    1.8,
    1.93,
    2.06,
    2.19,
    2.31,
    2.44,
    2.57,
    2.7,
    2.83,
    2.96,
    3.09,
    3.22,
    3.35,
    3.48,
    3.61,
    3.74,
    3.87,
    4.0,
]


def test_make_divisible_rounds_to_nearest_multiple_and_never_loses_more_than_ten_percent():
    assert make_divisible(1146.88, 256) == 1280  # nearest is 1024, but that loses >10%
    assert make_divisible(1300, 256) == 1280
    assert make_divisible(10, 256) == 256  # at least one divisor
    assert make_divisible(640, 256) == 768  # 640 + 128 rounds up to 768
    assert make_divisible(1280, 256) == 1280


def test_multiplier_pairs_expand_to_rounded_linspace():
    assert expand_multipliers([0.5, 1.0], 6) == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert expand_multipliers(2.0, 3) == [2.0, 2.0, 2.0]
    assert expand_multipliers([1.0, 2.0, 3.0], 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        expand_multipliers([1.0, 2.0, 3.0], 4)


@pytest.mark.parametrize("name", list(PUBLISHED_COUNTS))
def test_published_parameter_counts_on_meta_device(name):
    config = OpenELMConfig.named(name)
    assert config.num_parameters() == PUBLISHED_COUNTS[name]
    assert count_parameters_on_meta(config) == PUBLISHED_COUNTS[name]


def test_corenet_padded_vocabulary_adds_exactly_the_extra_rows():
    padded = OpenELMConfig.named("270M", vocab_size=32128)
    assert count_parameters_on_meta(padded) == PUBLISHED_COUNTS["270M"] + 128 * 1280


@pytest.mark.parametrize("name", list(PUBLISHED_COUNTS))
def test_per_layer_widths_follow_the_scaling_rule(name):
    config = OpenELMConfig.named(name)
    layers, d, hd = config.num_transformer_layers, config.model_dim, config.head_dim
    heads, kv_heads, ffn = config.num_query_heads, config.num_kv_heads, config.ffn_dims
    assert len(heads) == len(kv_heads) == len(ffn) == layers
    assert heads == sorted(heads) and ffn == sorted(ffn)  # widths grow with depth
    assert all(h == 4 * kv for h, kv in zip(heads, kv_heads, strict=True))  # 4 query heads per kv head
    assert all(dim % 256 == 0 for dim in ffn)
    assert heads[-1] * hd == d  # qkv multiplier 1.0 in the last layer
    assert ffn[-1] == 4 * d  # ffn multiplier 4.0 in the last layer
    assert heads[0] * hd == make_divisible(0.5 * d, 4 * hd)
    assert ffn[0] == make_divisible(0.5 * d, 256)

    with torch.device("meta"):
        model = OpenELM(config)
    for i, layer in enumerate(model.layers):
        assert layer.attn.qkv_proj.weight.shape == ((heads[i] + 2 * kv_heads[i]) * hd, d)
        assert layer.attn.out_proj.weight.shape == (d, heads[i] * hd)
        assert layer.ffn.proj_1.weight.shape == (2 * ffn[i], d)
        assert layer.ffn.proj_2.weight.shape == (d, ffn[i])


@pytest.mark.parametrize("name", list(PUBLISHED_QUERY_HEADS))
def test_head_counts_equal_the_released_configs(name):
    config = OpenELMConfig.named(name)
    assert config.num_query_heads == PUBLISHED_QUERY_HEADS[name]
    assert config.num_kv_heads == [h // 4 for h in PUBLISHED_QUERY_HEADS[name]]


def test_ffn_multipliers_equal_the_released_1_1b_config():
    assert OpenELMConfig.named("1.1B").layer_ffn_multipliers == PUBLISHED_FFN_MULTIPLIERS_1_1B


def test_demo_configs_use_the_same_rule_and_are_small():
    tiny = OpenELMConfig.named("tiny")
    assert len(set(tiny.num_query_heads)) > 1 and len(set(tiny.ffn_dims)) > 1
    assert tiny.num_parameters() < 15_000_000
    assert count_parameters_on_meta(tiny) == tiny.num_parameters()


def test_config_dict_round_trip_and_errors():
    config = OpenELMConfig.named("450M", max_context_length=1024)
    assert OpenELMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="model: unknown key .bogus."):
        OpenELMConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown OpenELM config"):
        OpenELMConfig.named("7B")
    with pytest.raises(ValueError, match="not a multiple"):
        OpenELMConfig(num_transformer_layers=2, model_dim=100, head_dim=64)


def test_flops_per_token_counts_matmuls_of_a_built_model():
    config = OpenELMConfig.named("tiny")
    seq_len = 512
    model = OpenELM(config)
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)  # incl. tied head
    # forward: 2 FLOPs per weight per token, plus QK^T and AV: 2 * 2 * seq_len * (query width) per layer.
    forward = 2 * matmul_params + sum(4 * seq_len * layer.attn.out_proj.in_features for layer in model.layers)
    norms = model.num_parameters() - matmul_params
    assert config.flops_per_token(seq_len) == 3 * forward + 6 * norms
