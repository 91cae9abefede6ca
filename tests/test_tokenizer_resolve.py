"""One tokenizer resolver: precedence, the sha256 cache, hub fetch (stand-in hub), one-line failures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from standin_hub import offline, serve

from elm_data.cli import cli
from elm_data.pipeline.tokenizer import (
    CACHE_ENV_VAR,
    ENV_VAR,
    LLAMA2_HUB_URI,
    LLAMA2_SHA256,
    TokenizerError,
    TokenizerMismatch,
    TokenizerNotFound,
    cache_dir,
    cached_path,
    fetch_tokenizer,
    public_uri,
    resolve_tokenizer,
)


@pytest.fixture
def tokenizer_path(llama_tokenizer_path) -> str:
    """These tests resolve, fetch and pin the Llama-2 model itself (its sha256 is the default pin)."""
    return llama_tokenizer_path


@pytest.fixture
def tokenizer(llama_tokenizer):
    return llama_tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def hub(tmp_path, tokenizer_path) -> Path:
    """A stand-in hub holding meta-llama/Llama-2-7b-hf/tokenizer.model."""
    root = tmp_path / "hub"
    (root / "meta-llama" / "Llama-2-7b-hf").mkdir(parents=True)
    (root / "meta-llama" / "Llama-2-7b-hf" / "tokenizer.model").write_bytes(Path(tokenizer_path).read_bytes())
    return root


def test_cache_dir_honours_elm_data_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "elm-data"
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_precedence_flag_config_env_manifest(cache, tokenizer_path, tmp_path, monkeypatch):
    copies = {}
    for name in ("flag", "config", "env", "manifest"):
        copies[name] = tmp_path / f"{name}.model"
        copies[name].write_bytes(Path(tokenizer_path).read_bytes())
    info = {"tokenizer": {"uri": str(copies["manifest"]), "sha256": LLAMA2_SHA256}}
    monkeypatch.setenv(ENV_VAR, str(copies["env"]))
    assert resolve_tokenizer(str(copies["flag"]), str(copies["config"]), info).uri == str(copies["flag"])
    assert resolve_tokenizer(None, str(copies["config"]), info).uri == str(copies["config"])
    assert resolve_tokenizer(None, None, info).uri == str(copies["env"])
    monkeypatch.delenv(ENV_VAR)
    assert resolve_tokenizer(None, None, info).uri == str(copies["manifest"])


def test_a_relative_path_is_recorded_absolute(cache, tokenizer_path, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(tokenizer_path).parent)
    tok = resolve_tokenizer(os.path.basename(tokenizer_path))
    assert tok.uri == str(Path(tokenizer_path).resolve()) and os.path.isabs(tok.uri)


def test_found_by_sha_in_the_cache_with_the_variable_unset(cache, tokenizer_path, tmp_path, monkeypatch):
    moved = tmp_path / "moved.model"
    moved.write_bytes(Path(tokenizer_path).read_bytes())
    resolve_tokenizer(str(moved))  # any load keeps a copy by sha256
    assert cached_path(LLAMA2_SHA256).read_bytes() == moved.read_bytes()
    moved.unlink()
    monkeypatch.delenv(ENV_VAR, raising=False)
    info = {"tokenizer": {"uri": str(moved), "sha256": LLAMA2_SHA256}}
    assert resolve_tokenizer(None, None, info).sha256 == LLAMA2_SHA256  # the recorded path is gone
    assert resolve_tokenizer().uri == str(cached_path(LLAMA2_SHA256))  # nothing given: the pinned Llama-2


def test_nothing_anywhere_is_one_line_naming_every_way(cache, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(TokenizerNotFound) as err:
        resolve_tokenizer()
    assert (
        "\n" not in str(err.value) and "--tokenizer" in str(err.value) and "tokenizer fetch" in str(err.value)
    )
    info = {"tokenizer": {"uri": "/gone/tokenizer.model", "sha256": "ab" * 32}}
    with pytest.raises(TokenizerNotFound, match="is gone and no model with sha256 abab"):
        resolve_tokenizer(None, None, info)


def test_the_manifests_sha_is_enforced(cache, tokenizer_path, tokenizer):
    info = {"tokenizer": {"uri": tokenizer_path, "sha256": "0" * 64}}
    with pytest.raises(TokenizerMismatch, match="the manifest pins 0000"):
        resolve_tokenizer(tokenizer_path, None, info)
    with pytest.raises(TokenizerMismatch, match="the manifest pins 0000"):
        resolve_tokenizer(tokenizer, None, info)  # an already loaded tokenizer too
    assert resolve_tokenizer(tokenizer, None, {"tokenizer": {"sha256": LLAMA2_SHA256}}) is tokenizer


def test_not_a_sentencepiece_model_is_one_clear_line(cache, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": "BPE"}')
    with pytest.raises(TokenizerError, match="is not a SentencePiece model") as err:
        resolve_tokenizer(str(bad))
    assert "\n" not in str(err.value)


def test_credentials_never_recorded(cache, tokenizer_path, tmp_path):
    assert public_uri("s3://KEY:SECRET@bucket/t.model") == "s3://bucket/t.model"
    assert (
        public_uri("https://u:p@host/t.model?token=abc&x=1&revision=r") == "https://host/t.model?revision=r"
    )
    url = "https://KEY:SECRET@host/tokenizer.model"
    with pytest.raises(TokenizerNotFound) as err:
        resolve_tokenizer(url)
    assert "SECRET" not in str(err.value) and "KEY" not in str(err.value)


def test_hub_uri_is_fetched_cached_and_found_offline(cache, hub, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with serve(hub, "hf"):
        tok = resolve_tokenizer(LLAMA2_HUB_URI)
    assert tok.uri == LLAMA2_HUB_URI and tok.sha256 == LLAMA2_SHA256 and cached_path(LLAMA2_SHA256).exists()
    with offline("hf"):
        assert resolve_tokenizer(LLAMA2_HUB_URI).sha256 == LLAMA2_SHA256  # the cache remembers the URL
        assert resolve_tokenizer().sha256 == LLAMA2_SHA256  # and the pinned sha with nothing given


def test_offline_with_nothing_cached_says_what_to_do(cache):
    with offline("hf"), pytest.raises(TokenizerNotFound) as err:
        resolve_tokenizer(LLAMA2_HUB_URI)
    message = str(err.value)
    assert "\n" not in message and "huggingface-cli login" in message and "tokenizer fetch" in message


def test_fetch_refuses_a_wrong_sha_and_caches_nothing(cache, hub):
    with serve(hub, "hf"), pytest.raises(TokenizerMismatch, match="refused"):
        fetch_tokenizer(LLAMA2_HUB_URI, sha256="1" * 64)
    assert not cached_path(LLAMA2_SHA256).exists()


def test_cli_tokenizer_fetch_then_show_without_the_variable(cache, hub, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    runner = CliRunner()
    with serve(hub, "hf"):
        result = runner.invoke(cli, ["tokenizer", "fetch"])
    assert result.exit_code == 0, result.output
    assert LLAMA2_SHA256 in result.output
    assert hashlib.sha256(cached_path(LLAMA2_SHA256).read_bytes()).hexdigest() == LLAMA2_SHA256
    shown = runner.invoke(cli, ["tokenizer", "show"])
    assert shown.exit_code == 0 and str(cached_path(LLAMA2_SHA256)) in shown.output


def test_cli_offline_fetch_is_one_line_exit_2(cache):
    with offline("hf"):
        result = CliRunner().invoke(cli, ["tokenizer", "fetch"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "huggingface-cli login" in result.output


def test_build_manifest_records_absolute_path_and_finds_it_again(
    cache, tokenizer_path, sample_dir, tmp_path, monkeypatch
):
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest

    local = tmp_path / "tok"
    local.mkdir()
    (local / "tokenizer.model").write_bytes(Path(tokenizer_path).read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    mixture = tmp_path / "one.yaml"
    shards = f"{sample_dir}/redpajama/arxiv/*.jsonl"
    mixture.write_text(f"sources:\n  - {{source: redpajama, subset: arxiv, shards: ['{shards}']}}\n")
    built = build_manifest(mixture, tmp_path / "m", tokenizer="tok/tokenizer.model")
    info = Manifest(built.manifest_dir).info
    assert info["tokenizer"]["uri"] == str(local / "tokenizer.model")
    assert info["tokenizer"]["sha256"] == LLAMA2_SHA256
    (local / "tokenizer.model").unlink()
    monkeypatch.chdir("/")
    assert resolve_tokenizer(None, None, info).sha256 == LLAMA2_SHA256


def test_build_manifest_cli_bad_tokenizer_is_one_line(cache, sample_dir, tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00not a model")
    result = CliRunner().invoke(
        cli,
        [
            "build",
            "manifest",
            str(sample_dir / "mixture.yaml"),
            "--out",
            str(tmp_path / "m"),
            "--tokenizer",
            str(bad),
        ],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not a SentencePiece model" in result.output
