"""The character rule's punctuation deletion (a regex, for speed) equals SlimPajama's str.translate table."""

from __future__ import annotations

import random
import re
import string
import sys

from elm_data.pipeline.filters import _PUNCTUATION_TABLE, normalize_for_length


def _reference(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION_TABLE)
    return re.sub(r"\s+", " ", text.strip())


def test_regex_deletion_equals_the_translate_table_on_mixed_unicode():
    rng = random.Random(0)
    alphabet = string.printable + "ÀÉİßẞΣσςДжß日本語…—–“”‘’«»¡¿\u00a0\u2028\u3000\U0001f600ǅǈ"
    special = [chr(rng.randrange(0x80, sys.maxunicode)) for _ in range(300)]
    special = [c for c in special if not 0xD800 <= ord(c) <= 0xDFFF]
    for _ in range(2000):
        text = "".join(
            rng.choice(alphabet if rng.random() < 0.8 else special) for _ in range(rng.randrange(0, 120))
        )
        assert normalize_for_length(text) == _reference(text), repr(text)
    assert normalize_for_length(string.punctuation + " a\t\tB ") == "a b"
