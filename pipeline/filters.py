"""OpenELM's length rule as CoreNet applies it, and CoreNet's word-piece splitting.

Facts taken from apple/corenet (``corenet/data/datasets/language_modeling/base_lm.py`` and
``general_lm.py``, ``corenet/data/text_tokenizer/sentencepiece_tokenizer.py``):

* the character rule measures a normalised COPY of the text (SlimPajama's: lowercase, drop
  ``string.punctuation``, strip, collapse whitespace runs to one space) and drops it when shorter
  than ``min_characters_per_text``;
* the token rule counts the tokens of the ORIGINAL text (after the tokenizer's optional
  ``ftfy.fix_text(..., normalization="NFC")``) and drops it when fewer than ``min_tokens_per_text``;
* long documents are first cut every ``document_split_size`` words on single spaces
  (``text.split(" ")``, chunks re-joined with ``" "``) and both rules apply to each piece.
"""

from __future__ import annotations

import re
import string

import ftfy

REASON_MIN_CHARACTERS = "min_characters"
REASON_MIN_TOKENS = "min_tokens"

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)  # what _PUNCTUATION deletes, as a table
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")  # same deletion, ~5x faster on non-ASCII text
_WHITESPACE_RUN = re.compile(r"\s+")


def normalize_for_length(text: str) -> str:
    """SlimPajama's normalisation, used only to measure length: never what is tokenized."""
    text = _PUNCTUATION.sub("", text.lower())
    return _WHITESPACE_RUN.sub(" ", text.strip())


def passes_min_characters(text: str, min_characters: int) -> bool:
    """The character rule: the normalised copy must be at least ``min_characters`` long.

    Exact, with a fast path for long texts: normalisation works character by character and never
    shortens what follows, so a prefix whose normalised copy is long enough decides for the whole.
    """
    if min_characters <= 0:
        return True
    for probe in (2 * min_characters + 16, 4 * min_characters + 64):  # most texts are decided by the short one
        if len(text) > probe and len(normalize_for_length(text[:probe])) >= min_characters:
            return True
    return len(normalize_for_length(text)) >= min_characters


def text_for_tokenizer(text: str, nfc_normalization: bool) -> str:
    """What the tokenizer sees: the original text, optionally fixed by ftfy with NFC (CoreNet's flag)."""
    return ftfy.fix_text(text, normalization="NFC") if nfc_normalization else text


def split_corenet_pieces(text: str, words_per_piece: int) -> list[str]:
    """CoreNet's document split: ``words_per_piece`` single-space-separated words per piece.

    Always returns at least one piece (an empty text is one empty piece, as in CoreNet).
    """
    if words_per_piece < 1:
        raise ValueError(f"corenet_words_per_piece must be >= 1, got {words_per_piece}")
    words = text.split(" ")
    return [" ".join(words[i : i + words_per_piece]) for i in range(0, len(words), words_per_piece)]
