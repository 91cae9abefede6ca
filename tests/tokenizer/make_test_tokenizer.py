"""Regenerate ``tests/tokenizer/elm-test.model``: a small SentencePiece model for the tests that do not need
LLaMA-2's exact ids (the gated model is needed only by the tests marked ``llama``).

Trained with SentencePiece's own trainer on text the project writes itself (``elm_data.sources.sample_text``),
shaped like Llama-2's model: BPE, byte fallback (any text encodes, no ``<unk>``), digits split, unk/bos/eos =
0/1/2, no pad piece, a dummy prefix, no normalization (whitespace kept as written).
Licence: the project's (Apache-2.0), as its training text is.

    python tests/tokenizer/make_test_tokenizer.py          # rewrites elm-test.model beside this file
"""

from __future__ import annotations

import hashlib
import io
import random
import sys
from pathlib import Path

import sentencepiece as spm

from elm_data.sources import sample_text

HERE = Path(__file__).resolve().parent
MODEL = HERE / "elm-test.model"
VOCAB_SIZE = 1024
GENERATORS = (
    sample_text.web_page,
    sample_text.latex_paper,
    sample_text.qa_thread,
    sample_text.source_code,
    sample_text.wiki_article,
    sample_text.book_chapter,
    sample_text.reddit_thread,
    sample_text.paper_abstract,
)


def training_text(seed: int = 0, documents: int = 600) -> list[str]:
    """The sentences the model is trained on: every corpus style of ``sample_text``, seeded."""
    rng = random.Random(seed)
    lines = []
    for n in range(documents):
        text = GENERATORS[n % len(GENERATORS)](rng, rng.randint(80, 400))
        lines.extend(line for line in text.splitlines() if line.strip())
    lines.extend(sample_text.ACCENTED)
    return lines


def train(out: Path = MODEL) -> str:
    """Train the model into ``out``; returns its sha256."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
    )
    out.write_bytes(model.getvalue())
    return hashlib.sha256(model.getvalue()).hexdigest()


if __name__ == "__main__":
    sha = train(Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL)
    print(f"{MODEL.name}: sha256 {sha}")
