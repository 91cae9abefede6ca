"""Tokenizer resolution (flag > config > $ELM_DATA_TOKENIZER), pinning by sha256, fsspec URLs, pickling."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import fsspec
import pytest
import sentencepiece as spm

from elm_data.pipeline.tokenizer import (
    ENV_VAR,
    LLAMA2_SHA256,
    LlamaTokenizer,
    TokenizerNotFound,
    resolve_tokenizer_uri,
)


def test_resolution_order_is_flag_then_config_then_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "/from/env")
    assert resolve_tokenizer_uri("/from/flag", "/from/config") == "/from/flag"
    assert resolve_tokenizer_uri(None, "/from/config") == "/from/config"
    assert resolve_tokenizer_uri(None, None) == "/from/env"
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(TokenizerNotFound, match="--tokenizer.*tokenizer:.*ELM_DATA_TOKENIZER"):
        resolve_tokenizer_uri(None, None)


def test_the_shared_model_is_the_pinned_llama2_model(llama_tokenizer_path):
    tok = LlamaTokenizer(llama_tokenizer_path, expected_sha256=LLAMA2_SHA256)
    assert tok.sha256 == hashlib.sha256(Path(llama_tokenizer_path).read_bytes()).hexdigest() == LLAMA2_SHA256
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (32000, 1, 2, 32000)
    assert tok.describe() == {
        "uri": llama_tokenizer_path,
        "sha256": LLAMA2_SHA256,
        "kind": "sentencepiece",
        "name": "LLaMA-2",
        "vocab_size": 32000,
    }


def test_a_different_pinned_hash_is_refused(tokenizer_path):
    with pytest.raises(ValueError, match="was pinned"):
        LlamaTokenizer(tokenizer_path, expected_sha256="0" * 64)


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(TokenizerNotFound, match="nowhere.model"):
        LlamaTokenizer(str(tmp_path / "nowhere.model"))


def test_loads_through_an_fsspec_url_and_encodes_like_sentencepiece(llama_tokenizer_path):
    url = "memory://tokenizers/llama2.model"
    with fsspec.open(url, "wb") as f:
        f.write(Path(llama_tokenizer_path).read_bytes())
    tok = LlamaTokenizer(url)
    reference = spm.SentencePieceProcessor(model_file=llama_tokenizer_path)
    texts = ["Hello world", "  two  spaces\tand a tab\n", "naïve café 数学 🙂", "x = f(3)  # code"]
    assert tok.encode_batch(texts, num_threads=2) == reference.encode(texts)
    assert tok.sha256 == LLAMA2_SHA256


def test_pickles_for_worker_processes(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.sha256 == tokenizer.sha256
    assert clone.encode("pickled tokenizers encode the same") == tokenizer.encode(
        "pickled tokenizers encode the same"
    )
