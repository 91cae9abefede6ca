"""Shared fixtures: the real LLaMA tokenizer (never committed) and a generated sample corpus."""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "llama2" / "tokenizer.model"

# README command 2 sets ELM_DATA_TOKENIZER=../shared/...: relative to where pytest starts. Tests chdir (and start
# processes elsewhere), so the path is made absolute once, here, as `elm-data` itself does when it starts.
_given = os.environ.get("ELM_DATA_TOKENIZER")
if _given and "://" not in _given:
    os.environ["ELM_DATA_TOKENIZER"] = os.path.abspath(os.path.expanduser(_given))

# Tests never read or fill the user's tokenizer cache (~/.cache/elm-data): one fresh cache per session.
os.environ["ELM_DATA_CACHE"] = tempfile.mkdtemp(prefix="elm-data-test-cache-")
atexit.register(shutil.rmtree, os.environ["ELM_DATA_CACHE"], ignore_errors=True)
# One OpenMP thread for torch (set before anything imports it; inherited by child processes): the tests' tensors
# are tiny, and on a shared two-core machine a second spinning thread made the model tests 3-4x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _slow_as_a_whole(path: Path) -> bool:
    """Whether the module's ``pytestmark`` holds ``pytest.mark.slow`` (alone or in a list); read, not imported."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return "pytest.mark.slow" in ast.unparse(node.value)
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m "not slow"`` a module that is slow as a whole is not even imported (Beam, MLX, lm-eval: seconds)."""
    fast_tier = config.getoption("markexpr").strip() == "not slow"
    if fast_tier and collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return _slow_as_a_whole(collection_path) or None
    return None


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    path = os.environ.get("ELM_DATA_TOKENIZER") or str(SHARED_TOKENIZER)
    if not Path(path).exists():
        pytest.fail(
            f"LLaMA tokenizer not found at {path}: set ELM_DATA_TOKENIZER "
            "(CI uses ../shared/tokenizers/llama2/tokenizer.model)"
        )
    os.environ["ELM_DATA_TOKENIZER"] = path
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    from elm_data.pipeline.tokenizer import LlamaTokenizer

    return LlamaTokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The bundled sample corpus (every source/subset in its native format) plus mixture.yaml."""
    from elm_data.sources.sample import write_sample_corpus

    out = tmp_path_factory.mktemp("sample")
    write_sample_corpus(out, seed=0)
    return out


@pytest.fixture(scope="session")
def sample_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """A manifest built (local runner, 1 worker) from the sample corpus' mixture.yaml with the real tokenizer."""
    from elm_data.manifests.build import build_manifest

    out = tmp_path_factory.mktemp("sample_manifest") / "manifest"
    build_manifest(sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, workers=1)
    return out


@pytest.fixture(scope="session")
def corenet_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """The sample mixture rebuilt in corenet mode (absolute shard paths, written outside the sample dir)."""
    import yaml

    from elm_data.manifests.build import build_manifest

    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    for entry in mixture["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    mixture["sequences"] = {"mode": "corenet", "seq_len": 2048, "corenet_words_per_piece": 300}
    out = tmp_path_factory.mktemp("corenet")
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(out / "mixture.yaml", out / "manifest", tokenizer=tokenizer_path, workers=1)
    return out / "manifest"


@pytest.fixture(scope="session")
def sample_shards(sample_dir: Path) -> list[tuple[str, str, str]]:
    """(uri, source, subset) for every shard of the sample mixture."""
    from elm_data.manifests.mixture import MixtureConfig

    mixture = MixtureConfig.load(sample_dir / "mixture.yaml")
    return [(uri, e.source, e.subset) for e in mixture.entries for uri in mixture.resolve_shards(e)]


@pytest.fixture(scope="session")
def corrupt(tmp_path_factory) -> dict[str, Any]:
    """The damaged-input examples of ``corrupt_files``, written once per session."""
    from corrupt_files import write_corrupt_examples

    return write_corrupt_examples(tmp_path_factory.mktemp("corrupt"))


@pytest.fixture(scope="session")
def heldout_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """The sample mixture with ``heldout: {fraction: 0.25}`` (absolute shard paths, written outside the sample dir)."""
    import yaml

    from elm_data.manifests.build import build_manifest

    mixture = yaml.safe_load((sample_dir / "mixture.yaml").read_text())
    for entry in mixture["sources"]:
        entry["shards"] = [str(sample_dir / s) for s in entry["shards"]]
    mixture["heldout"] = {"fraction": 0.25}
    out = tmp_path_factory.mktemp("heldout")
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(out / "mixture.yaml", out / "manifest", tokenizer=tokenizer_path, workers=1)
    return out / "manifest"
