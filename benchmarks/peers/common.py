"""What every peer script shares: the shard list, the OpenELM character rule, the tokenizer, the result line.

These scripts run inside each peer's own virtual environment (``bench_peers.py`` makes them), so they import
nothing from elm-data: the character rule below restates ``pipeline/filters.py`` (SlimPajama's normalisation:
lowercase, drop ``string.punctuation``, strip, collapse whitespace runs; at least ``MIN_CHARACTERS`` left) so
that a peer filters exactly the documents our build and stream filter by characters.
Every script ends by printing ONE JSON object on its last stdout line; ``first_batch_epoch`` (``time.time()``
when the first batch or example was in hand) lets the runner compute the time to the first batch.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MIN_CHARACTERS = 200  # the sample mixture's filters.min_characters
MIN_TOKENS = 256  # filters.min_tokens
SEQ_LEN = 2048  # packed rows of SEQ_LEN + 1 tokens, as our stream yields them
BOS, EOS = 1, 2  # the LLaMA tokenizer's ids (tokenizer.model: bos=1, eos=2)

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_WHITESPACE_RUN = re.compile(r"\s+")


def shards(path: str) -> dict[str, list[str]]:
    """``{subset: [jsonl path, ...]}`` from the JSON file the runner writes (the mixture's resolved
    shards)."""
    return json.loads(Path(path).read_text())


def passes_character_rule(text: str, min_characters: int = MIN_CHARACTERS) -> bool:
    """The OpenELM/CoreNet character rule on SlimPajama's normalised copy, with the same prefix shortcut."""

    def normalised(t: str) -> str:
        return _WHITESPACE_RUN.sub(" ", _PUNCTUATION.sub("", t.lower()).strip())

    for probe in (2 * min_characters + 16, 4 * min_characters + 64):
        if len(text) > probe and len(normalised(text[:probe])) >= min_characters:
            return True
    return len(normalised(text)) >= min_characters


def texts(paths: list[str]) -> Iterator[str]:
    """Each record's ``text``, in file then line order (the plainest JSONL read)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]


def sentencepiece(model: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=model)


def kept_token_batches(paths: list[str], sp, batch: int = 256) -> Iterator[list[list[int]]]:
    """Token ids of the documents the OpenELM rule keeps (characters, then tokens), ``batch`` texts per
    encode."""
    pending: list[str] = []

    def flush() -> list[list[int]]:
        ids = sp.encode(pending, num_threads=1)
        pending.clear()
        return [d for d in ids if len(d) >= MIN_TOKENS]

    for text in texts(paths):
        if passes_character_rule(text):
            pending.append(text)
            if len(pending) == batch:
                yield flush()
    if pending:
        yield flush()


def packed_rows(paths: list[str], sp) -> Iterator[list[int]]:
    """Rows of ``SEQ_LEN + 1`` tokens: every kept document framed BOS + ids + EOS, concatenated, cut in order
    (the remainder shorter than a row is dropped, as a pre-tokenizing recipe does)."""
    buffer: list[int] = []
    width = SEQ_LEN + 1
    for docs in kept_token_batches(paths, sp):
        for ids in docs:
            buffer += [BOS, *ids, EOS]
        full = len(buffer) // width * width
        for start in range(0, full, width):
            yield buffer[start : start + width]
        del buffer[:full]


class FirstBatch:
    """Remembers the wall-clock time the first batch was in hand."""

    def __init__(self) -> None:
        self.epoch: float | None = None

    def seen(self) -> None:
        if self.epoch is None:
            self.epoch = time.time()


def report(**fields) -> None:
    """The one result line the runner reads (the last line of stdout)."""
    sys.stdout.write("\n" + json.dumps(fields) + "\n")
    sys.stdout.flush()


def convert_or_pass(doc: str, convert, one_pass) -> None:
    """The command line of a pre-tokenized route (its module docstring ``doc`` is the help):
    ``convert --shards --tokenizer --out DIR`` writes the peer's format once, ``pass --out DIR`` reads it back
    in one natural pass."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("step", choices=["convert", "pass"])
    parser.add_argument("--shards")
    parser.add_argument("--tokenizer")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    (convert if args.step == "convert" else one_pass)(args)
