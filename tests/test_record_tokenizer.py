"""The tokenizer actually used is what the record says: sha256, vocabulary size, "LLaMA-2" only for that
model.

The other model is a real SentencePiece model trained here, with sentencepiece's own trainer, on a few KB of
the sample corpus: its sha256 is hashlib's of the bytes the trainer wrote, its vocabulary the size asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import yaml
from click.testing import CliRunner

from elm_data.core.known_tokenizers import LLAMA2_SHA256
from elm_data.manifests.cli import audit, build_manifest, export_croissant
from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.model.weights import export_hf

VOCAB = 256


@pytest.fixture(scope="module")
def other_tokenizer(sample_dir, tmp_path_factory) -> Path:
    """A unigram SentencePiece model (LLaMA's special ids 0/1/2) trained on ~6 KB of the sample's C4 text."""
    lines = []
    for shard in sorted((sample_dir / "redpajama" / "c4").glob("*.jsonl")):
        lines += [json.loads(line)["text"] for line in shard.read_text().splitlines()]
    text = "\n".join(lines)[:6000].splitlines()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=model,
        vocab_size=VOCAB,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("other_tokenizer") / "other.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def other_manifest(sample_dir, other_tokenizer, tmp_path_factory) -> tuple[Path, str]:
    """(manifest of the sample corpus counted with the other model, the build command's output)."""
    out = tmp_path_factory.mktemp("other_manifest") / "manifest"
    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    mixture["sources"] = mixture["sources"][:3]  # three subsets are enough; keeps the build short
    for entry in mixture["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    (out.parent / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    args = [str(out.parent / "mixture.yaml"), "--out", str(out), "--tokenizer", str(other_tokenizer)]
    result = CliRunner().invoke(build_manifest, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_a_manifest_records_the_tokenizer_it_was_counted_with(other_manifest, other_tokenizer):
    """Issue 26.5: a tokenizer that is not LLaMA-2 built a manifest whose summary and records said LLaMA-2."""
    manifest, build_output = other_manifest
    sha = hashlib.sha256(other_tokenizer.read_bytes()).hexdigest()
    assert sha != LLAMA2_SHA256
    info = json.loads((manifest / "manifest.json").read_text())
    assert info["tokenizer"] | {"uri": None} == {
        "uri": None,
        "sha256": sha,
        "kind": "sentencepiece",
        "name": None,
        "vocab_size": VOCAB,
    }
    assert info["pass"]["tokenizer"]["name"] is None and info["pass"]["tokenizer"]["vocab_size"] == VOCAB
    audit_output = CliRunner().invoke(audit, [str(manifest)]).output
    out = manifest.parent / "croissant.json"
    assert CliRunner().invoke(export_croissant, [str(manifest), "--out", str(out)]).exit_code == 0
    for text in (build_output, audit_output, out.read_text(), (manifest / "manifest.json").read_text()):
        assert "llama" not in text.lower()
    assert f"tokens of SentencePiece model sha256 {sha[:12]}" in build_output
    assert f"tokens of SentencePiece model sha256 {sha[:12]}" in audit_output


def test_the_llama2_model_is_named_by_its_sha256(llama_sample_manifest):
    info = json.loads((llama_sample_manifest / "manifest.json").read_text())
    assert info["tokenizer"]["sha256"] == LLAMA2_SHA256
    assert (info["tokenizer"]["name"], info["tokenizer"]["vocab_size"]) == ("LLaMA-2", 32000)
    assert (
        "LLaMA-2 tokens of kept documents" in CliRunner().invoke(audit, [str(llama_sample_manifest)]).output
    )


def test_meta_licence_ships_only_with_metas_model(other_tokenizer, tmp_path):
    model = OpenELM(OpenELMConfig(num_transformer_layers=1, model_dim=64, head_dim=32, vocab_size=VOCAB))
    out = export_hf(model, tmp_path / "export", tokenizer_model=other_tokenizer.read_bytes())
    assert (out / "tokenizer.model").read_bytes() == other_tokenizer.read_bytes()
    assert not (out / "TOKENIZER_LICENCE.txt").exists()
