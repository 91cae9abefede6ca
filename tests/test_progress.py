"""Long commands show a progress bar with its rate and time left on stderr (stdout keeps the results)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from elm_data.cli import cli
from elm_data.manifests.manifest import Manifest


def test_estimate_shows_a_bar_over_the_subsets_on_stderr(sample_dir, tokenizer_path, capsys):
    from elm_data.manifests.estimate import estimate_mixture

    mixture = sample_dir / "mixture.yaml"
    subsets = len(yaml.safe_load(mixture.read_text())["sources"])
    result = CliRunner().invoke(cli, ["estimate", str(mixture), "--sample-docs", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["subsets"]) == subsets  # stdout holds only the report
    assert "sampling subsets" in result.stderr and f"{subsets}/{subsets}" in result.stderr, result.stderr
    estimate_mixture(mixture, sample_docs=2)  # from Python: no bar unless asked
    assert "sampling subsets" not in capsys.readouterr().err


def test_stream_full_pass_counts_towards_the_manifests_tokens(sample_manifest):
    from elm_data.pipeline.stream.consumed import expected_natural_pass

    total = sum(expected_natural_pass(Manifest(sample_manifest).shards).values())
    result = CliRunner().invoke(cli, ["stream", str(sample_manifest), "--full-pass", "--seq-len", "512"])
    assert result.exit_code == 0, result.output
    assert "streaming one natural pass" in result.stderr and "100%" in result.stderr, result.stderr
    # the pass's total, known ahead
    assert f"/{total / 1000:.0f}k" in result.stderr, (total, result.stderr[-300:])
    assert "tokens consumed per source equal the manifest's" in result.stdout


def test_export_init_shows_its_two_halves(tmp_path):
    result = CliRunner().invoke(cli, ["export", "hf", "--init", "tiny", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "initialise, write" in result.stderr and "2/2" in result.stderr, result.stderr


@pytest.mark.slow  # trains a one-cell matrix
def test_bench_shows_a_bar_within_each_cell(sample_manifest, tmp_path):
    matrix = {
        "device": "cpu",
        "token_budget": 128,
        "timing_skip_steps": 1,
        "min_timed_steps": 2,
        "axes": {
            "model": [{"name": "tiny", "num_transformer_layers": 1, "model_dim": 64, "head_dim": 32}],
            "batch_size": [1],
            "seq_len": [32],
            "attention": ["math"],
        },
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    args = ["bench", "train", str(path), "--out", str(tmp_path / "out"), "--manifest", str(sample_manifest)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "cell 1/1" in result.stderr and "step" in result.stderr, result.stderr
