"""FLOPs per token for MFU, checked against independent counts; the matrix's pure helpers (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.trainer.bench.efficiency import classify, costs, lookup, mark_frontier, precheck
from elm_data.trainer.bench.matrix import Cell, Matrix, MatrixError
from elm_data.trainer.core.flops import breakdown, flops_per_token, layer_flops


def independent_count(config: OpenELMConfig, seq_len: int) -> tuple[int, int]:
    """(6 x matmul parameters of a real module + the attention term, 6 x norm weights), from the module
    itself."""
    with torch.device("meta"):
        model = OpenELM(config)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)))
    norms = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.RMSNorm))
    heads = sum(layer.attn.num_query_heads for layer in model.layers)
    attention = 3 * 2 * 2 * seq_len * heads * config.head_dim  # QK^T and AV, fwd + bwd
    return 6 * matmul + attention, 6 * norms


@pytest.mark.slow  # counts a 270M model's FLOPs independently
def test_270m_flops_match_six_n_plus_attention():
    config = OpenELMConfig.named("270M")
    ours = flops_per_token(config, 2048)
    independent, norm_term = independent_count(config, 2048)
    assert ours == independent
    # and the config's own 6N (all parameters, norms included) + attention shortcut, up to the norm weights
    assert config.flops_per_token(2048) - ours == norm_term
    assert abs(config.flops_per_token(2048) / ours - 1) < 2e-4  # norms: 44,288 of 270M weights
    assert 2.0e9 < ours < 2.1e9  # 2.03 GFLOP/token (benchmarks/RESULTS.md)


def test_layer_widths_follow_the_layer_wise_scaling():
    config = OpenELMConfig.named("270M")
    layers = layer_flops(config, 2048)
    assert len(layers) == 16
    assert layers[0].attention < layers[-1].attention and layers[0].ffn < layers[-1].ffn
    first = config.num_query_heads[0]
    assert layers[0].attention == 3 * 4 * 2048 * first * config.head_dim
    assert (
        flops_per_token(config, 2048, causal=True)
        == flops_per_token(config, 2048) - sum(layer.attention for layer in layers) // 2
    )
    parts = breakdown(config, 2048)
    assert parts["total"] == flops_per_token(config, 2048) and 0.1 < parts["attention_share"] < 0.3


def test_cells_are_the_product_of_the_axes(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("axes: {model: [tiny], batch_size: [1, 2], seq_len: [64], attention: [math, flash]}\n")
    cells = Matrix.from_yaml(path).cells()
    assert [(c.batch_size, c.attention) for c in cells] == [
        (1, "math"),
        (1, "flash"),
        (2, "math"),
        (2, "flash"),
    ]
    path.write_text("axes: {model: [tiny], batch_size: [1], seq_len: [64], attention: [bogus]}\n")
    with pytest.raises(MatrixError, match="bogus"):
        Matrix.from_yaml(path)


def test_steps_cover_the_budget():
    matrix = Matrix(axes={}, token_budget=1000, timing_skip_steps=2, min_timed_steps=3)
    assert matrix.steps_for(Cell("tiny", 2, 64)) == 8  # ceil(1000 / 128)
    assert matrix.steps_for(Cell("tiny", 16, 64)) == 5  # the budget is one step; at least 2 skipped + 3 timed


def test_cells_that_cannot_run_say_why():
    cpu = torch.device("cpu")
    assert "needs 2 process(es)" in precheck(Cell("tiny", 1, 64, processes=2), cpu, 1)
    assert "without torchrun" in precheck(Cell("tiny", 1, 64, distributed="ddp"), cpu, 2)
    assert "1 process" in precheck(Cell("tiny", 1, 64, distributed="fsdp"), cpu, 1)
    assert "unsynchronised" in precheck(Cell("tiny", 1, 64, processes=2), cpu, 2)
    assert precheck(Cell("tiny", 1, 64, distributed="ddp", processes=2), cpu, 2) is None
    assert "CUDA" in precheck(Cell("tiny", 1, 64, precision="fp8"), cpu, 1)
    assert precheck(Cell("tiny", 1, 64, attention="flash"), cpu, 1) is None


def test_tables_match_device_name_fragments_in_order():
    table = {"A100": 1.3, "A10": 0.6, "cpu": 0.05}
    assert lookup(table, "NVIDIA A100-SXM4-80GB") == (True, 1.3)
    assert lookup(table, "NVIDIA A10G") == (True, 0.6)
    assert lookup(table, "NVIDIA H200") == (False, None)


def test_costs_and_frontier():
    row = {"tokens": 3600, "first_loss": 10.0, "loss_at_budget": 8.0}
    figures = costs(2.0, 2, 1.0, row)  # 1 token/s on 2 devices at $2/h: the budget takes 1 h
    assert figures == {
        "usd_per_hour": 4.0,
        "tokens_per_usd": 900.0,
        "usd_for_budget": 4.0,
        "loss_drop_per_usd": 0.5,
    }
    assert costs(None, 1, 1.0, row)["usd_for_budget"] is None
    rows = [
        {"status": "ok", "usd_for_budget": 1.0, "loss_at_budget": 5.0},
        {"status": "ok", "usd_for_budget": 2.0, "loss_at_budget": 4.0},
        {"status": "ok", "usd_for_budget": 3.0, "loss_at_budget": 4.5},  # dearer and worse than the second
        {"status": "failed", "usd_for_budget": None, "loss_at_budget": None},
    ]
    mark_frontier(rows)
    assert [r["on_frontier"] for r in rows] == [True, True, False, None]


def test_shipped_matrices_parse():
    root = Path(__file__).resolve().parents[1]
    sizes = {
        root / "trainer" / "configs" / "bench_matrix.yaml": 16,
        root / "benchmarks" / "matrices" / "gpu_eager.yaml": 12,
        root / "benchmarks" / "matrices" / "gpu_compile.yaml": 2,
    }
    for path, cells in sizes.items():
        matrix = Matrix.from_yaml(path)
        assert len(matrix.cells()) == cells, path
    gpu = Matrix.from_yaml(root / "benchmarks" / "matrices" / "gpu_eager.yaml")
    assert {c.model for c in gpu.cells()} == {"270M", "450M"} and {c.seq_len for c in gpu.cells()} == {2048}
    assert lookup(gpu.usd_per_device_hour, "NVIDIA H200") == (True, 3.5)


def test_failures_are_classified():
    assert classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert (
        classify(RuntimeError("No viable backend for scaled_dot_product_attention was found."))[0]
        == "unsupported"
    )
    status, reason = classify(RuntimeError("the stream ran out after 3 steps (epochs=1)\nmore"))
    assert status == "failed" and reason == "RuntimeError: the stream ran out after 3 steps (epochs=1)"
