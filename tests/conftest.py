"""Shared fixtures: the tokenizers and a generated sample corpus.

Every test tokenizes with the small SentencePiece model committed under ``tests/tokenizer/``
(``tokenizer_path``, ``tokenizer``; ``$ELM_DATA_TOKENIZER`` names it too, for the commands and processes tests
start), except the tests that need LLaMA-2's exact ids, sha256 or name: they are marked ``llama`` (or ask for
``llama_tokenizer_path`` / ``llama_tokenizer``, which marks them) and get the gated model from
``$ELM_DATA_TOKENIZER`` as given to pytest, else ``../shared/tokenizers/llama2/tokenizer.model``. Without it
they skip, saying why; under ``CI=true`` such a skip fails the test, so CI runs every LLaMA test.
"""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

SHARED_TOKENIZER = (
    Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "llama2" / "tokenizer.model"
)
TEST_TOKENIZER = Path(__file__).resolve().parent / "tokenizer" / "elm-test.model"  # make_test_tokenizer.py

# README command 2 sets ELM_DATA_TOKENIZER=../shared/...: relative to where pytest starts. Tests chdir (and
# start
# processes elsewhere), so the path is made absolute once, here, as `elm-data` itself does when it starts.
_given = os.environ.get("ELM_DATA_TOKENIZER")
if _given and "://" not in _given:
    _given = os.path.abspath(os.path.expanduser(_given))
# the gated model, as given to pytest (xdist workers and the processes tests start inherit the first answer)
LLAMA_TOKENIZER = os.environ.setdefault("ELM_DATA_TEST_LLAMA_TOKENIZER", _given or str(SHARED_TOKENIZER))
# every test not marked llama (and what it starts) reads this
os.environ["ELM_DATA_TOKENIZER"] = str(TEST_TOKENIZER)

# Tests never read or fill the user's tokenizer cache (~/.cache/elm-data): one fresh cache per session.
os.environ["ELM_DATA_CACHE"] = tempfile.mkdtemp(prefix="elm-data-test-cache-")
atexit.register(shutil.rmtree, os.environ["ELM_DATA_CACHE"], ignore_errors=True)
# One OpenMP thread for torch (set before anything imports it; inherited by child processes): the tests'
# tensors
# are tiny, and on a shared two-core machine a second spinning thread made the model tests 3-4x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _slow_as_a_whole(path: Path) -> bool:
    """Whether the module's ``pytestmark`` holds ``pytest.mark.slow`` (alone or in a list); read, not
    imported."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return "pytest.mark.slow" in ast.unparse(node.value)
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m "not slow"`` a module that is slow as a whole is not even imported (Beam, MLX, lm-eval:
    seconds)."""
    fast_tier = config.getoption("markexpr").strip() == "not slow"
    if fast_tier and collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return _slow_as_a_whole(collection_path) or None
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llama: needs the gated LLaMA-2 tokenizer (its exact ids, sha256 or name); skipped without it",
    )


LLAMA_FIXTURES = {"llama_tokenizer_path", "llama_tokenizer", "llama_sample_manifest"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for the gated model (directly or through another fixture) is a ``llama`` test."""
    for item in items:
        if (
            LLAMA_FIXTURES & set(getattr(item, "fixturenames", ()))
            and item.get_closest_marker("llama") is None
        ):
            item.add_marker(pytest.mark.llama)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Under ``CI=true`` a skipped ``llama`` test is a failure: CI has the gated model and runs every such
    test."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("llama") is not None and os.environ.get("CI") == "true":
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a llama test skipped under CI=true: {reason}"


def _llama_path() -> str:
    if not Path(LLAMA_TOKENIZER).exists():
        pytest.skip(
            f"needs the gated LLaMA-2 tokenizer, not found at {LLAMA_TOKENIZER}: set ELM_DATA_TOKENIZER "
            "(CI uses ../shared/tokenizers/llama2/tokenizer.model)"
        )
    return LLAMA_TOKENIZER


@pytest.fixture(autouse=True)
def _llama_tokenizer_for_llama_tests(request, monkeypatch):
    """A test marked ``llama`` skips without the gated model, and sees it as ``$ELM_DATA_TOKENIZER``."""
    if request.node.get_closest_marker("llama") is not None:
        monkeypatch.setenv("ELM_DATA_TOKENIZER", _llama_path())


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    """The small test model (``tests/tokenizer/elm-test.model``): any test that needs not LLaMA-2's exact
    ids."""
    return str(TEST_TOKENIZER)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    from elm_data.pipeline.tokenizer import LlamaTokenizer

    return LlamaTokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def llama_tokenizer_path() -> str:
    """The gated LLaMA-2 model (skips without it; fails under CI=true)."""
    return _llama_path()


@pytest.fixture(scope="session")
def llama_tokenizer(llama_tokenizer_path):
    from elm_data.pipeline.tokenizer import LlamaTokenizer

    return LlamaTokenizer(llama_tokenizer_path)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The bundled sample corpus (every source/subset in its native format) plus mixture.yaml."""
    from elm_data.sources.sample import write_sample_corpus

    out = tmp_path_factory.mktemp("sample")
    write_sample_corpus(out, seed=0)
    return out


@pytest.fixture(scope="session")
def sample_manifest(sample_dir, tokenizer_path, tmp_path_factory) -> Path:
    """A manifest built (local runner, 1 worker) from the sample corpus' mixture.yaml with the real
    tokenizer."""
    from elm_data.manifests.build import build_manifest

    out = tmp_path_factory.mktemp("sample_manifest") / "manifest"
    build_manifest(sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, workers=1)
    return out


@pytest.fixture(scope="session")
def llama_sample_manifest(sample_dir, llama_tokenizer_path, tmp_path_factory) -> Path:
    """The sample manifest counted with the gated LLaMA-2 model (for the tests of its name and sha256)."""
    from elm_data.manifests.build import build_manifest

    out = tmp_path_factory.mktemp("llama_sample_manifest") / "manifest"
    build_manifest(sample_dir / "mixture.yaml", out, tokenizer=llama_tokenizer_path, workers=1)
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
    """The sample mixture with ``heldout: {fraction: 0.25}`` (absolute shard paths, written outside the sample
    dir)."""
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
