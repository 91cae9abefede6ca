"""`elm-data export mlx`: mlx_lm.load reads the folder alone; float32 logits and greedy tokens match
PyTorch."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_fixtures import STEPS, trained_run  # noqa: F401 (a fixture)

from elm_data.model import generate, load_model
from elm_data.trainer.export_cli import export_mlx as export_mlx_command

# mlx-lm (the mlx extra) is looked up here and imported in the tests: importing it costs seconds at
# collection.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("mlx_lm") is None or importlib.util.find_spec("mlx.core") is None,
        reason="needs mlx-lm and mlx (the mlx extra)",
    ),
]


def mlx_greedy(model, prompt: list[int], count: int) -> list[int]:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    steps = generate_step(mx.array(prompt), model, max_tokens=count, sampler=make_sampler(0.0))
    return [int(token) for token, _ in steps]


def test_float32_mlx_export_matches_pytorch(trained_run, tmp_path):  # noqa: F811
    import mlx.core as mx
    import mlx_lm

    checkpoint = trained_run / "checkpoints" / f"step_{STEPS:08d}"
    out = tmp_path / "mlx"
    result = CliRunner().invoke(export_mlx_command, [str(checkpoint), str(out), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    model, tokenizer = mlx_lm.load(str(out), tokenizer_config={"trust_remote_code": True})
    ours = load_model(checkpoint).eval()
    ids = torch.randint(0, 32000, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(ids).numpy()
    got = np.array(model(mx.array(ids.numpy())).astype(mx.float32))
    assert np.abs(got - expected).max() < 1e-4
    prompt = [1, *tokenizer.encode("The history of", add_special_tokens=False)]
    assert tokenizer.encode("The history of") == prompt  # the folder's tokenizer adds BOS like ours
    assert (
        mlx_greedy(model, prompt, 16) == generate(ours, torch.tensor([prompt]), 16)[0, len(prompt) :].tolist()
    )
    assert (out / "README.md").read_text().count("manifest id") == 1  # the card travels with the weights
    assert not (out / "TOKENIZER_LICENCE.txt").exists()  # the run's model is the tests' own, not Meta's


def test_quantized_mlx_export_loads_and_reports_its_size(trained_run, tmp_path):  # noqa: F811
    import mlx.core as mx
    import mlx_lm

    sizes = {}
    for name, args in (("f16", []), ("q4", ["--quantize", "4", "--group-size", "64"])):
        out = tmp_path / name
        result = CliRunner().invoke(export_mlx_command, [str(trained_run), str(out), *args])
        assert result.exit_code == 0, result.output
        assert "MiB" in result.output
        sizes[name] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert "4-bit, group 64" in result.output
    model, _ = mlx_lm.load(str(tmp_path / "q4"), tokenizer_config={"trust_remote_code": True})
    logits = np.array(model(mx.array([[1, 450, 3303]])).astype(mx.float32))
    assert logits.shape == (1, 3, 32000) and np.isfinite(logits).all()
    assert sizes["q4"] < 0.5 * sizes["f16"]
    again = CliRunner().invoke(export_mlx_command, [str(trained_run), str(tmp_path / "q4")])
    assert again.exit_code != 0 and "exists" in again.output
