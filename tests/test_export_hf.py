"""Hugging Face exports that load offline with the project's own code, carry the tokenizer and a model
card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from click.testing import CliRunner
from export_fixtures import EVERY, STEPS, run_python, trained_run  # noqa: F401 (trained_run is a fixture)

from elm_data.manifests.manifest import Manifest
from elm_data.model import OpenELM, OpenELMConfig, export_hf, generate
from elm_data.model.hf_tokenizer import tokenizer_json
from elm_data.model.layers import RMSNorm
from elm_data.trainer.core.runlog import effective_steps, read_log
from elm_data.trainer.export_cli import export_hf as export_hf_command

# Loads each export with transformers alone (elm_data made unimportable), in a fresh offline interpreter.
LOAD_SCRIPT = """
import json, sys
sys.modules["elm_data"] = None  # the export must not need elm-data
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
request = json.load(open(sys.argv[1]))
out = {}
for folder in request["folders"]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.tensor(request["ids"])
    with torch.no_grad():
        logits = model(ids).logits
    generated = model.generate(
        ids[:, :7], max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0
    )
    a, b = request["padded"]  # a left-padded batch generates as each prompt alone
    batch = torch.tensor([a, [0] * (len(a) - len(b)) + b])
    mask = torch.tensor([[1] * len(a), [0] * (len(a) - len(b)) + [1] * len(b)])
    padded = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, min_new_tokens=8,
                            pad_token_id=0)[:, len(a):]
    bf16 = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        bf16_logits = bf16(ids).logits.float()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    text = pipeline("text-generation", model=folder, trust_remote_code=True)(
        request["prompt"], max_new_tokens=6, do_sample=False)[0]["generated_text"]
    out[folder] = {
        "class": type(model).__module__, "logits": logits.tolist(), "generated": generated.tolist(),
        "encoded": [tokenizer(t).input_ids for t in request["texts"]], "pipeline": text,
        "padded": padded.tolist(), "bf16": bf16_logits.tolist(),
    }
json.dump(out, open(sys.argv[2], "w"))
"""
TEXTS = [
    "Hello world, this is a test.",
    "  two leading spaces\n\nand\ttabs",
    "émoji 😀 中文",
    "def f(x):\n    return 1",
]


def small_model(tied: bool) -> OpenELM:
    """A 2-layer OpenELM with the LLaMA vocabulary and norm weights far from one."""
    torch.manual_seed(0)
    config = OpenELMConfig(
        num_transformer_layers=2, model_dim=128, head_dim=32, share_input_output_layers=tied
    )
    model = OpenELM(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.uniform_(0.3, 2.0)
    return model.eval()


@pytest.mark.slow  # two exports, each loaded by transformers in a fresh interpreter
def test_export_loads_offline_with_its_own_code_and_tokenizer(tmp_path, llama_tokenizer_path):
    pytest.importorskip("transformers")
    proto = Path(llama_tokenizer_path).read_bytes()
    models = {str(tmp_path / name): small_model(tied) for name, tied in (("tied", True), ("untied", False))}
    for folder, model in models.items():
        export_hf(model, folder, tokenizer_model=proto)
        config = json.loads((Path(folder) / "config.json").read_text())
        assert all(not v.startswith("apple/") and "--" not in v for v in config["auto_map"].values())
    ids = torch.randint(0, 32000, (2, 24), generator=torch.Generator().manual_seed(5))
    padded = [[1, 450, 3303, 310, 278], [1, 5228, 29892]]
    request = {
        "folders": list(models),
        "ids": ids.tolist(),
        "texts": TEXTS,
        "prompt": "The river",
        "padded": padded,
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    run_python(LOAD_SCRIPT, str(tmp_path / "request.json"), str(tmp_path / "out.json"))
    results = json.loads((tmp_path / "out.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=llama_tokenizer_path)
    for folder, model in models.items():
        got = results[folder]
        assert got["class"].endswith("hf_modeling")  # the project's code, from the folder
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(got["logits"]), model(ids), atol=1e-5, rtol=0)
        assert got["generated"] == generate(model, ids[:, :7], 12).tolist()  # KV-cache greedy == HF generate
        assert got["padded"] == [generate(model, torch.tensor([p]), 8)[0, len(p) :].tolist() for p in padded]
        with torch.no_grad():  # bf16: the same RMSNorm order and casts as elm-data's bf16 forward
            assert torch.equal(torch.tensor(got["bf16"]), model.to(torch.bfloat16)(ids).float())
        model.float()
        assert got["encoded"] == [[1, *sp.encode(t)] for t in TEXTS]
        prompt = [1, *sp.encode("The river")]
        continuation = generate(model, torch.tensor([prompt]), 6)[0, len(prompt) :].tolist()
        assert got["pipeline"] == "The river" + sp.decode(prompt[1:] + continuation)[len("The river") :]


@pytest.mark.slow  # the whole sample corpus through both tokenizers
def test_tokenizer_json_encodes_like_sentencepiece_on_the_sample_corpus(tokenizer_path, sample_shards):
    tokenizers = pytest.importorskip("tokenizers")
    from elm_data.sources.document import Document
    from elm_data.sources.readers import read_shard

    proto = Path(tokenizer_path).read_bytes()
    fast = tokenizers.Tokenizer.from_str(tokenizer_json(proto))
    sp = spm.SentencePieceProcessor(model_proto=proto)
    texts = list(TEXTS) + ["", " ", "\n", "a  b   c"]
    for uri, source, subset in sample_shards[::3]:
        docs = [d for d in read_shard(uri, source, subset) if isinstance(d, Document)]
        texts += [d.text for d in docs[:8]]
    assert len(texts) > 40
    for text in texts:
        ids = fast.encode(text).ids
        assert ids == [1, *sp.encode(text)], text[:80]
        assert fast.decode(ids, skip_special_tokens=True) == sp.decode(ids[1:])


@pytest.mark.slow
def test_export_run_all_checkpoints_with_model_cards(trained_run, tmp_path, tokenizer_path):  # noqa: F811
    out = tmp_path / "exports"
    result = CliRunner().invoke(export_hf_command, [str(trained_run), str(out), "--all-checkpoints"])
    assert result.exit_code == 0, result.output
    steps = {r["step"]: r for r in effective_steps(read_log(trained_run))}
    header = read_log(trained_run)[0]
    manifest = Manifest(header["manifest_dir"])
    exported = sorted(p.name for p in out.iterdir())
    assert exported == [f"step_{s:08d}" for s in range(EVERY, STEPS + 1, EVERY)]
    for name in exported:
        folder, step = out / name, int(name.split("_")[1])
        card = (folder / "README.md").read_text()
        front = yaml.safe_load(card.split("---\n")[1])
        # the sample is synthetic
        assert front["pipeline_tag"] == "text-generation" and "datasets" not in front
        assert "synthetic-data" in front["tags"] and front["elm_data"]["synthetic_data"] is True
        meta = front["elm_data"]
        assert (
            meta["manifest_id"] == manifest.manifest_id
            and meta["merkle_root"] == manifest.info["merkle_root"]
        )
        assert meta["step"] == step and meta["tokens_by_source"] == steps[step]["tokens_by_source"]
        assert meta["consumption_receipt"] == steps[step]["receipt"] and steps[step]["receipt"] in card
        for key, tokens in steps[step]["tokens_by_source"].items():
            assert f"| {key} | {tokens:,} |" in card
        assert f"loss at this step: {steps[step]['loss']:.4f}" in card and f"step {step} of {STEPS}" in card
        assert (folder / "tokenizer.model").read_bytes() == Path(
            tokenizer_path
        ).read_bytes()  # the run's model
        assert not (folder / "TOKENIZER_LICENCE.txt").exists()  # Meta's licence: only with Meta's model
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        assert (
            tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
            and tokenizer_config["add_bos_token"]
        )
    again = CliRunner().invoke(export_hf_command, [str(trained_run), str(out), "--all-checkpoints"])
    assert again.exit_code != 0 and "already holds model.safetensors" in again.output


@pytest.mark.slow
def test_a_run_exports_its_newest_checkpoint_with_the_logged_tokenizer(trained_run, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("ELM_DATA_TOKENIZER", raising=False)  # found where the run's log says it was
    bad = CliRunner().invoke(
        export_hf_command, [str(trained_run), str(tmp_path / "x"), "--tokenizer", "/nope.model"]
    )
    assert bad.exit_code != 0 and "/nope.model" in bad.output and "Traceback" not in bad.output
    result = CliRunner().invoke(export_hf_command, [str(trained_run), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert f"step_{STEPS:08d}" in result.output and "tokenizer, model card" in result.output


@pytest.mark.parametrize(
    "overrides",
    [{"vocab_size": 32128, "padding_index": 32000}, {"norm_eps": 1e-5}, {"share_input_output_layers": False}],
)
def test_settings_beyond_the_published_keys_survive_config_json(overrides):
    from elm_data.model.weights import config_from_hf, hf_config

    config = OpenELMConfig.named("270M", **overrides)
    data = json.loads(json.dumps(hf_config(config)))
    assert config_from_hf(data) == config
    assert all(data[key] == value for key, value in overrides.items())
