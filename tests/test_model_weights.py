"""Checkpoint files, the Hugging Face apple/OpenELM-* layout, and `elm-data export hf`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from elm_data.model import OpenELM, OpenELMConfig, export_hf, import_hf, load_model, save_model
from elm_data.model.weights import WeightsError, config_from_hf, hf_config, hf_state_dict
from elm_data.trainer.export_cli import export_hf as export_hf_command

HF_CONFIG_KEYS = {
    "activation_fn_name",
    "architectures",
    "auto_map",
    "bos_token_id",
    "eos_token_id",
    "ffn_dim_divisor",
    "ffn_multipliers",
    "ffn_with_glu",
    "head_dim",
    "initializer_range",
    "max_context_length",
    "model_dim",
    "model_type",
    "normalization_layer_name",
    "normalize_qk_projections",
    "num_gqa_groups",
    "num_kv_heads",
    "num_query_heads",
    "num_transformer_layers",
    "qkv_multipliers",
    "rope_freq_constant",
    "rope_max_length",
    "share_input_output_layers",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "vocab_size",
}


@pytest.fixture(scope="module")
def tiny_model() -> OpenELM:
    torch.manual_seed(0)
    return OpenELM(OpenELMConfig.named("tiny", vocab_size=640)).eval()


def sample_ids(vocab: int = 640) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(0))


def logits(model: OpenELM) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(sample_ids(model.config.vocab_size))


def test_hf_layout_of_the_270m_config_on_meta_device():
    config = OpenELMConfig.named("270M")
    with torch.device("meta"):
        model = OpenELM(config)
    shapes = {name: tuple(t.shape) for name, t in hf_state_dict(model).items()}
    assert len(shapes) == 1 + 8 * 16 + 1
    assert "lm_head.weight" not in shapes  # tied head: the published repos store only the embedding
    assert shapes["transformer.token_embeddings.weight"] == (32000, 1280)
    assert shapes["transformer.norm.weight"] == (1280,)
    assert shapes["transformer.layers.0.attn.qkv_proj.weight"] == ((12 + 3 + 3) * 64, 1280)
    assert shapes["transformer.layers.0.attn.q_norm.weight"] == (64,)
    assert shapes["transformer.layers.0.attn.k_norm.weight"] == (64,)
    assert shapes["transformer.layers.15.attn.qkv_proj.weight"] == ((20 + 5 + 5) * 64, 1280)
    assert shapes["transformer.layers.15.attn.out_proj.weight"] == (1280, 20 * 64)
    assert shapes["transformer.layers.0.ffn.proj_1.weight"] == (2 * 768, 1280)
    assert shapes["transformer.layers.15.ffn.proj_1.weight"] == (2 * 5120, 1280)
    assert shapes["transformer.layers.15.ffn.proj_2.weight"] == (1280, 5120)
    for i in range(16):
        assert shapes[f"transformer.layers.{i}.attn_norm.weight"] == (1280,)
        assert shapes[f"transformer.layers.{i}.ffn_norm.weight"] == (1280,)


def test_hf_config_has_the_published_keys_and_per_layer_lists():
    config = OpenELMConfig.named("1.1B")
    data = hf_config(config, torch_dtype="bfloat16")
    assert set(data) == HF_CONFIG_KEYS
    assert data["model_type"] == "openelm" and data["architectures"] == ["OpenELMForCausalLM"]
    assert data["num_query_heads"] == config.num_query_heads and len(data["num_kv_heads"]) == 28
    assert data["ffn_multipliers"] == config.layer_ffn_multipliers and data["qkv_multipliers"] == [0.5, 1.0]
    # local code (written beside the weights): loading needs no hub
    assert data["auto_map"] == {
        "AutoConfig": "hf_configuration.OpenELMConfig",
        "AutoModelForCausalLM": "hf_modeling.OpenELMForCausalLM",
    }
    assert config_from_hf(json.loads(json.dumps(data))) == config


def test_hf_config_disagreeing_with_the_scaling_rule_is_rejected():
    data = hf_config(OpenELMConfig.named("tiny"))
    data["num_query_heads"] = [4, 4, 4, 4]
    with pytest.raises(WeightsError, match="num_query_heads"):
        config_from_hf(data)
    with pytest.raises(WeightsError, match="model_type"):
        config_from_hf({**data, "model_type": "llama"})


def test_export_import_round_trip_gives_identical_logits(tiny_model, tmp_path):
    out = export_hf(tiny_model, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "hf_configuration.py",
        "hf_modeling.py",
    }
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        assert handle.metadata()["format"] == "pt"
    assert names == {"transformer." + n for n in tiny_model.state_dict()}
    restored = import_hf(out)
    assert restored.config == tiny_model.config
    torch.testing.assert_close(logits(restored), logits(tiny_model), atol=0, rtol=0)


def test_import_accepts_a_stored_tied_lm_head_and_bfloat16(tiny_model, tmp_path):
    out = export_hf(tiny_model, tmp_path / "hf", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    tensors = hf_state_dict(tiny_model, torch.bfloat16)
    tensors["lm_head.weight"] = tensors["transformer.token_embeddings.weight"].clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    restored = import_hf(out / "model.safetensors")
    assert restored.token_embeddings.weight.dtype == torch.bfloat16
    assert restored.lm_head is None
    as_float = import_hf(out, dtype=torch.float32)
    cosine = torch.nn.functional.cosine_similarity(
        logits(as_float).flatten(), logits(tiny_model).flatten(), dim=0
    )
    assert cosine > 0.999


def test_import_reports_mismatched_weights(tiny_model, tmp_path):
    out = export_hf(tiny_model, tmp_path / "hf")
    tensors = hf_state_dict(tiny_model)
    del tensors["transformer.layers.2.ffn.proj_2.weight"]
    tensors["transformer.layers.0.attn.qkv_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"missing \['layers.2.ffn.proj_2.weight'\].*qkv_proj"):
        import_hf(out)
    (out / "config.json").unlink()
    with pytest.raises(WeightsError, match="no config.json"):
        import_hf(out)


def test_trainer_checkpoint_layout_round_trip(tiny_model, tmp_path):
    weights = save_model(tiny_model, tmp_path / "step_00010")
    assert (
        json.loads((tmp_path / "step_00010" / "model_config.json").read_text()) == tiny_model.config.to_dict()
    )
    torch.testing.assert_close(
        logits(load_model(tmp_path / "step_00010")), logits(tiny_model), atol=0, rtol=0
    )
    (tmp_path / "step_00010" / "model_config.json").unlink()  # the file alone still carries its config
    torch.testing.assert_close(logits(load_model(weights)), logits(tiny_model), atol=0, rtol=0)


def test_cli_export_init_tiny_matches_a_seeded_model(tmp_path):
    result = CliRunner().invoke(export_hf_command, ["--init", "tiny", "--seed", "3", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "initialising OpenELM-tiny" in result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert set(config) == HF_CONFIG_KEYS and config["num_transformer_layers"] == 4
    torch.manual_seed(3)
    expected = OpenELM(OpenELMConfig.named("tiny"))
    restored = import_hf(tmp_path / "out")
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in expected.state_dict().items())

    again = CliRunner().invoke(export_hf_command, ["--init", "tiny", str(tmp_path / "out")])
    assert again.exit_code == 2 and "already holds model.safetensors" in again.output


def test_cli_export_from_trainer_checkpoint(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "ckpt")
    result = CliRunner().invoke(
        export_hf_command, [str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "float32"]
    )
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(logits(import_hf(tmp_path / "hf")), logits(tiny_model), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing_dir", "{tmp}/out"], "no weights at"),
        (["{tmp}/only_out"], "give CHECKPOINT (or RUN) and OUT_DIR"),
        (["--init", "tiny", "{tmp}/a", "{tmp}/b"], "with --init give only OUT_DIR"),
        (["--init", "5B", "{tmp}/out"], "Invalid value for '--init'"),
    ],
)
def test_cli_errors_are_readable(tmp_path, args, message):
    result = CliRunner().invoke(export_hf_command, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow  # torch.compile wrapping imports dynamo and inductor
def test_saving_a_compiled_model_writes_plain_names(tiny_model, tmp_path):
    save_model(torch.compile(tiny_model), tmp_path / "compiled")  # wrapping only: nothing is compiled here
    with safe_open(str(tmp_path / "compiled" / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(tiny_model.state_dict())
    torch.testing.assert_close(logits(load_model(tmp_path / "compiled")), logits(tiny_model), atol=0, rtol=0)


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    import elm_data.model.weights as weights

    model = OpenELM(OpenELMConfig.named("tiny"))
    out = tmp_path / "hf"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    # fails after the weights were written to their temp file
    monkeypatch.setattr(weights, "_write_text", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        weights.export_hf(model, out)
    assert list(out.iterdir()) == []  # no weights without a config, no temp files
    monkeypatch.undo()
    weights.export_hf(model, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "hf_configuration.py",
        "hf_modeling.py",
        "model.safetensors",
    ]


def test_unwrap_model_finds_the_openelm_inside_wrappers(tiny_model):
    from elm_data.model.weights import uncompiled, unwrap_model

    class Wrapper(torch.nn.Module):  # what DDP looks like from outside: the wrapped model as ``.module``
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    assert unwrap_model(tiny_model) is tiny_model
    assert unwrap_model(Wrapper(Wrapper(tiny_model))) is tiny_model
    assert uncompiled(Wrapper(tiny_model)).module is tiny_model  # only a compile wrapper comes off
    with pytest.raises(TypeError, match="expected an OpenELM model, got Linear"):
        unwrap_model(torch.nn.Linear(2, 2))
