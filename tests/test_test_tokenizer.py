"""The small test tokenizer (``tests/tokenizer/``) and the ``llama`` marker's contract.

Most tests tokenize with a committed 15 KB SentencePiece model that the project trains from its own text; the
tests that need LLaMA-2's exact ids, sha256 or name are marked ``llama``: without the gated model they skip
and say why, and under ``CI=true`` such a skip fails the run (CI has the model, so every LLaMA test runs
there).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from elm_data.core.known_tokenizers import LLAMA2_SHA256, known_name

TESTS = Path(__file__).resolve().parent
TEST_TOKENIZER = TESTS / "tokenizer" / "elm-test.model"


def train(out: Path) -> str:
    """``tests/tokenizer/make_test_tokenizer.py``'s ``train`` (a script, loaded by path)."""
    spec = importlib.util.spec_from_file_location(
        "make_test_tokenizer", TESTS / "tokenizer" / "make_test_tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train(out)


LLAMA_TEST = "tests/test_tokenizer.py::test_the_shared_model_is_the_pinned_llama2_model"


def test_the_committed_model_is_what_its_script_makes_and_is_small(tmp_path):
    made = tmp_path / "made.model"
    assert train(made) == hashlib.sha256(TEST_TOKENIZER.read_bytes()).hexdigest()
    assert made.read_bytes() == TEST_TOKENIZER.read_bytes()
    assert TEST_TOKENIZER.stat().st_size < 300_000


def test_it_is_shaped_like_llama2_and_is_never_called_llama2():
    sp = spm.SentencePieceProcessor(model_file=str(TEST_TOKENIZER))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    text = "naïve café 数学 🙂\n  two  spaces\tand a tab, x = f(3)"
    assert sp.decode(sp.encode(text)) == text  # byte fallback: any text, no <unk>
    assert 0 not in sp.encode(text)
    sha = hashlib.sha256(TEST_TOKENIZER.read_bytes()).hexdigest()
    assert sha != LLAMA2_SHA256 and known_name(sha) is None


def test_the_tests_tokenize_with_it(tokenizer_path, tokenizer):
    assert Path(tokenizer_path) == TEST_TOKENIZER and os.environ["ELM_DATA_TOKENIZER"] == str(TEST_TOKENIZER)
    assert tokenizer.sha256 == hashlib.sha256(TEST_TOKENIZER.read_bytes()).hexdigest()


def _run_llama_test(ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ELM_DATA_TEST_LLAMA_TOKENIZER")}
    env |= {"ELM_DATA_TOKENIZER": str(TESTS / "no-such.model")} | ({"CI": "true"} if ci else {})
    command = [sys.executable, "-m", "pytest", LLAMA_TEST, "-q", "-n", "0", "-p", "no:cacheprovider", "-rs"]
    return subprocess.run(command, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_without_the_gated_model_a_llama_test_skips_saying_why_and_fails_under_ci():
    alone = _run_llama_test(ci=False)
    assert alone.returncode == 0 and "1 skipped" in alone.stdout, alone.stdout + alone.stderr
    assert "needs the gated LLaMA-2 tokenizer" in alone.stdout
    in_ci = _run_llama_test(ci=True)
    assert in_ci.returncode == 1 and "a llama test skipped under CI=true" in in_ci.stdout, in_ci.stdout
