"""User mistakes and unlucky environments that were tracebacks or dead ends: each is one line, exit 2, or
works.

`--plot` with a suffix matplotlib cannot write, `compress` without its extra, a traced document the manifest
does not hold, `export hf` outside a run (the tokenizer resolved in the documented order), `init --pin` whose
hub call failed on the network (not the login), and `tokenizer fetch` of a model already in the cache.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from elm_data.cli import cli
from elm_data.pipeline.tokenizer import CACHE_ENV_VAR, ENV_VAR, LLAMA2_SHA256, cached_path


def _one_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    for needle in needles:
        assert needle in line, line
    return line


def test_audit_plot_with_an_unwritable_suffix_is_one_line_before_any_work(sample_manifest, tmp_path):
    result = CliRunner().invoke(cli, ["audit", str(sample_manifest), "--plot", str(tmp_path / "x.txt")])
    line = _one_line(result, "--plot", "x.txt", ".png", ".pdf", ".svg")
    assert "source/subset" not in result.output and "refinedweb" not in line  # refused before the table
    assert not list(tmp_path.iterdir())


def test_audit_plot_suffix_check_accepts_what_matplotlib_writes(tmp_path):
    from elm_data.core.errors import InvalidValue
    from elm_data.manifests.plot import check_plot_path

    assert check_plot_path(tmp_path / "a.PDF") == tmp_path / "a.PDF"
    with pytest.raises(InvalidValue, match="suffix-less"):
        check_plot_path(tmp_path / "chart")


_NO_COREMLTOOLS = """
import sys
sys.modules["coremltools"] = None  # `import coremltools...` raises ImportError, as where the extra is absent
from elm_data.cli import main
sys.argv = ["elm-data", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_compress_without_its_extra_is_a_pip_hint_and_leaves_no_folder(sample_manifest, tmp_path):
    source = tmp_path / "ckpt"
    source.mkdir()
    out = tmp_path / "compressed"
    args = [str(source), "--manifest", str(sample_manifest), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _NO_COREMLTOOLS, "compress", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "pip install 'elm-data[compress]'" in line, line
    assert not out.exists()


def test_ledger_status_tells_an_unknown_document_from_a_kept_or_filtered_one(sample_manifest):
    import pyarrow.parquet as pq

    from elm_data.manifests.manifest import Manifest, ledger_path
    from elm_data.trainer.proof.records import AuditError
    from elm_data.trainer.proof.trace import ledger_status

    manifest = Manifest(sample_manifest)
    for shard in manifest.shards:
        # the oracle: the raw ledger
        rows = pq.read_table(ledger_path(sample_manifest, shard.shard)).to_pylist()
        for row in [r for r in rows if r["doc_id"]][:3]:
            assert ledger_status(manifest, shard.key, row["doc_id"]) == (row["status"], row["reason"])
    filtered = [(s.key, r) for s in manifest.shards for r in manifest.documents(s.shard).to_pylist()]
    filtered = [(k, r) for k, r in filtered if r["status"] == "filtered"]
    assert filtered  # the sample corpus has filtered documents
    key, row = filtered[0]
    assert ledger_status(manifest, key, row["doc_id"]) == ("filtered", row["reason"])
    with pytest.raises(AuditError, match="no such document: .*no-such-doc"):
        ledger_status(manifest, manifest.shards[0].key, "no-such-doc")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny_checkpoint(path: Path) -> Path:
    import torch

    from elm_data.model.config import OpenELMConfig
    from elm_data.model.openelm import OpenELM
    from elm_data.model.weights import save_model

    torch.manual_seed(0)
    save_model(OpenELM(OpenELMConfig.named("tiny")), path)
    return path


def _shipped_sha(folder: Path) -> str | None:
    model = folder / "tokenizer.model"
    return hashlib.sha256(model.read_bytes()).hexdigest() if model.exists() else None


@pytest.mark.slow  # the export CLI end to end: ~1.3 s each
@pytest.mark.parametrize("where", ["env", "cache", "nowhere"])
def test_export_hf_outside_a_run_resolves_the_tokenizer_as_documented(
    where, llama_tokenizer_path, empty_cache, tmp_path, monkeypatch
):
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    monkeypatch.delenv(ENV_VAR, raising=False)
    if where == "env":
        monkeypatch.setenv(ENV_VAR, llama_tokenizer_path)
    elif where == "cache":
        cached_path(LLAMA2_SHA256).parent.mkdir(parents=True)
        cached_path(LLAMA2_SHA256).write_bytes(Path(llama_tokenizer_path).read_bytes())
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "hf", str(checkpoint), str(tmp_path / "hf")])
    init = runner.invoke(cli, ["export", "hf", "--init", "tiny", str(tmp_path / "init")])
    assert result.exit_code == 0 and init.exit_code == 0, result.output + init.output
    want = None if where == "nowhere" else LLAMA2_SHA256
    assert _shipped_sha(tmp_path / "hf") == want and _shipped_sha(tmp_path / "init") == want
    if where == "nowhere":
        assert "no tokenizer found" in result.output and "no tokenizer found" in init.output


def _pin_failing_with(monkeypatch, error: Exception):
    import huggingface_hub

    def dataset_info(self, repo, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)


def _transport():
    """The HTTP library the installed huggingface_hub raises from (httpx2, httpx): its HTTPError's module."""
    from huggingface_hub.errors import HfHubHTTPError

    return sys.modules[HfHubHTTPError.__bases__[0].__module__.split(".")[0]]


def _http_error(status: int):
    from huggingface_hub.errors import HfHubHTTPError

    httpx = _transport()

    request = httpx.Request("GET", "https://huggingface.co/api/datasets/x/y")
    return HfHubHTTPError(f"{status} error", response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    ("make_error", "cause"),
    [
        (lambda: _transport().ConnectError("[Errno -2] Name or service not known"), "network"),
        (lambda: _transport().ReadTimeout("timed out"), "network"),
        (lambda: __import__("requests").ConnectionError("Failed to resolve 'huggingface.co'"), "network"),
        (lambda: _http_error(401), "login"),
        (lambda: _http_error(403), "login"),
    ],
)
def test_init_pin_names_the_network_or_the_login_by_the_cause(tmp_path, monkeypatch, make_error, cause):
    _pin_failing_with(monkeypatch, make_error())
    line = _one_line(
        CliRunner().invoke(cli, ["init", "openelm", str(tmp_path), "--pin"]), "cannot ask the hub"
    )
    if cause == "network":
        assert "unreachable (network)" in line and "login" not in line, line
    else:
        assert "huggingface-cli login" in line and "network" not in line, line
    assert not (tmp_path / "openelm.yaml").exists()


def test_tokenizer_fetch_of_a_model_already_cached_succeeds_offline(
    llama_tokenizer_path, empty_cache, monkeypatch
):
    from standin_hub import offline

    from elm_data.pipeline.tokenizer import resolve_tokenizer

    monkeypatch.setenv(ENV_VAR, llama_tokenizer_path)
    resolve_tokenizer()  # loading it from a local path caches it by sha256 (not by the hub URL)
    assert cached_path(LLAMA2_SHA256).exists()
    with offline("hf"):
        result = CliRunner().invoke(cli, ["tokenizer", "fetch"])
    assert result.exit_code == 0, result.output
    assert "already cached" in result.output and LLAMA2_SHA256 in result.output


def test_tokenizer_fetch_refuses_a_damaged_cached_copy(tokenizer_path, empty_cache, monkeypatch):
    cached_path(LLAMA2_SHA256).parent.mkdir(parents=True)
    cached_path(LLAMA2_SHA256).write_bytes(Path(tokenizer_path).read_bytes()[:-10])
    monkeypatch.delenv(ENV_VAR, raising=False)
    result = CliRunner().invoke(cli, ["tokenizer", "fetch"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert json.dumps(LLAMA2_SHA256)[1:-1] in result.output
