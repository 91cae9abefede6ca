"""The hot path's shortcuts (issue 25) against the plain computation they stand for, on real shards.

Each shortcut must give exactly what the slow path gives; these tests hold them to it with independent oracles.
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path

import pytest

from elm_data.pipeline import filters
from elm_data.pipeline.filters import _ascii_kept, normalize_for_length, passes_min_characters


def _sample_texts(sample_dir: Path) -> list[str]:
    """Every text of the sample's JSONL shards, read with the standard library alone (not the readers)."""
    texts = []
    for path in sorted(sample_dir.rglob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(texts) > 100
    return texts


def test_ascii_kept_counts_exactly_what_normalisation_keeps_of_each_ascii_character():
    for c in map(chr, range(128)):  # the whole surface the count looks at
        assert _ascii_kept(c) == len(normalize_for_length(c)), repr(c)
        assert _ascii_kept("x" + c + "x") == len(normalize_for_length("x" + c + "x")) - (c.isspace()), repr(c)


def test_ascii_kept_is_a_lower_bound_of_the_normalised_length_on_mixed_unicode():
    rng = random.Random(25)
    alphabet = string.printable + "ÀÉİßẞΣσςДжß日本語…—–“”‘’«»¡¿\u00a0\u2028\u3000\U0001f600ǅǈ\x85\x1c"
    special = [chr(rng.randrange(0x80, sys.maxunicode)) for _ in range(400)]  # surrogates included
    for _ in range(3000):
        text = "".join(rng.choice(alphabet if rng.random() < 0.8 else special) for _ in range(rng.randrange(0, 300)))
        assert _ascii_kept(text) <= len(normalize_for_length(text)), repr(text)
        for minimum in (1, 10, 60, 200):
            assert passes_min_characters(text, minimum) == (len(normalize_for_length(text)) >= minimum)


def test_the_character_rule_on_real_texts_equals_measuring_the_normalised_copy(sample_dir):
    for text in _sample_texts(sample_dir):
        length = len(normalize_for_length(text))
        for minimum in (0, 1, 200, 2000, 20000):
            assert passes_min_characters(text, minimum) == (length >= minimum)


def test_a_long_ascii_text_is_decided_without_normalising_it(sample_dir, monkeypatch):
    texts = [t for t in _sample_texts(sample_dir) if len(t) > 2000][:50]
    assert texts and all(len(normalize_for_length(t)) >= 200 for t in texts)

    def refuse(text: str) -> str:
        raise AssertionError("normalised a text that the ASCII count already decides")

    monkeypatch.setattr(filters, "normalize_for_length", refuse)
    assert sum(passes_min_characters(t, 200) for t in texts if _ascii_kept(t[:416]) >= 200) > 25


@pytest.mark.parametrize("minimum", [200, 430])
def test_texts_the_ascii_count_cannot_decide_take_the_exact_path(minimum):
    junk = "... !!! \t" * 300 + "a" * (minimum - 1)  # long, but one kept character short
    assert _ascii_kept(junk) == minimum - 1 and not passes_min_characters(junk, minimum)
    accented = "é... !!! " * minimum + "a" * (minimum - 1)  # the non-ASCII letters make it long enough
    assert _ascii_kept(accented) == minimum - 1 and passes_min_characters(accented, minimum)


def _stream_cli(*args: str) -> str:
    from click.testing import CliRunner

    from elm_data.pipeline.stream.cli import stream

    result = CliRunner().invoke(stream, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_stream_cli_with_workers_prints_the_same_sequences(sample_manifest, tokenizer_path):
    base = [str(sample_manifest), "--format", "jsonl", "--seq-len", "64", "--tokenizer", tokenizer_path]
    printed = {w: _stream_cli(*base, "--take", "12", "--batch-size", "4", "--workers", w) for w in ("0", "2")}
    assert printed["2"] == printed["0"] and len(printed["0"].splitlines()) == 13


@pytest.mark.slow  # four natural passes (the sibling above prints the first batches)
def test_stream_cli_full_pass_with_workers_streams_the_same_pass(sample_manifest, tokenizer_path):
    base = [str(sample_manifest), "--format", "jsonl", "--seq-len", "64", "--tokenizer", tokenizer_path, "--full-pass"]
    stats = {}
    for workers in ("0", "2"):
        output = _stream_cli(*base, "--workers", workers)
        stats[workers] = json.loads(output[output.index('{"stats"') :])  # after the progress bar (stderr, mixed in)
    assert stats["2"] == stats["0"] and stats["0"]["stats"]["consumed_matches_manifest"] is True


def test_stream_cli_refuses_workers_that_do_not_divide_the_partitions(sample_manifest, tokenizer_path):
    from click.testing import CliRunner

    from elm_data.pipeline.stream.cli import stream

    args = [str(sample_manifest), "--full-pass", "--workers", "3", "--partitions", "4", "--tokenizer", tokenizer_path]
    refused = CliRunner().invoke(stream, args)
    assert refused.exit_code == 2 and "divide" in refused.output and "Traceback" not in refused.output
