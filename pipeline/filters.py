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

REASON_MIN_CHARACTERS = "min_characters"
REASON_MIN_TOKENS = "min_tokens"

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)  # what _PUNCTUATION deletes, as a table
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")  # same deletion, ~5x faster on non-ASCII text
_WHITESPACE_RUN = re.compile(r"\s+")
# Bytes that :func:`_ascii_kept` does not count: every non-ASCII byte, ASCII punctuation and ASCII whitespace.
_ASCII_WHITESPACE = "".join(filter(str.isspace, map(chr, range(128))))
_NOT_COUNTED = bytes(range(128, 256)) + (string.punctuation + _ASCII_WHITESPACE).encode()


def normalize_for_length(text: str) -> str:
    """SlimPajama's normalisation, used only to measure length: never what is tokenized."""
    text = _PUNCTUATION.sub("", text.lower())
    return _WHITESPACE_RUN.sub(" ", text.strip())


def _ascii_kept(text: str) -> int:
    """How many ASCII characters of ``text`` are neither punctuation nor whitespace: a lower bound of
    ``len(normalize_for_length(text))`` (lower() maps each to one such character, and normalisation removes
    only punctuation and whitespace), counted in C (one encode, one ``bytes.translate``), ~20x cheaper."""
    return len(text.encode("utf-8", "surrogatepass").translate(None, _NOT_COUNTED))


def passes_min_characters(text: str, min_characters: int) -> bool:
    """The character rule: the normalised copy must be at least ``min_characters`` long.

    Exact, with fast paths: normalisation works character by character and never shortens what follows, so
    a prefix whose normalised copy is long enough decides for the whole; and where a text's ASCII characters
    that normalisation keeps already reach ``min_characters`` (:func:`_ascii_kept`, a lower bound of the
    normalised length), the copy is never made.
    """
    if min_characters <= 0:
        return True
    # most texts are decided by the short one
    for probe in (2 * min_characters + 16, 4 * min_characters + 64):
        if len(text) > probe:
            prefix = text[:probe]
            if _ascii_kept(prefix) >= min_characters or len(normalize_for_length(prefix)) >= min_characters:
                return True
    return _ascii_kept(text) >= min_characters or len(normalize_for_length(text)) >= min_characters


def text_for_tokenizer(text: str, nfc_normalization: bool) -> str:
    """What the tokenizer sees: the original text, optionally fixed by ftfy with NFC (CoreNet's flag; ftfy is
    imported only then: ~30 ms of start-up that no other pass pays)."""
    if not nfc_normalization:
        return text
    import ftfy

    return ftfy.fix_text(text, normalization="NFC")


def split_corenet_pieces(text: str, words_per_piece: int) -> list[str]:
    """CoreNet's document split: ``words_per_piece`` single-space-separated words per piece.

    Always returns at least one piece (an empty text is one empty piece, as in CoreNet).
    """
    if words_per_piece < 1:
        raise ValueError(f"corenet_words_per_piece must be >= 1, got {words_per_piece}")
    words = text.split(" ")
    return [" ".join(words[i : i + words_per_piece]) for i in range(0, len(words), words_per_piece)]
