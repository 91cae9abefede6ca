"""Tokenizers known by name: a model is called by a name only when its sha256 is that model's.

Every record and summary that names the tokenizer a count was made with goes through :func:`known_name` /
:func:`token_unit`, so a manifest counted with another SentencePiece model never says "LLaMA-2".
"""

from __future__ import annotations

LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"  # meta-llama/Llama-2-7b-hf
KNOWN_TOKENIZERS = {LLAMA2_SHA256: "LLaMA-2"}


def known_name(sha256: str | None) -> str | None:
    """The model's name when ``sha256`` is a known model's, else None."""
    return KNOWN_TOKENIZERS.get(sha256 or "")


def token_unit(sha256: str | None) -> str:
    """What the tokens counted with the model ``sha256`` are called: ``"LLaMA-2 tokens"`` only for LLaMA-2."""
    name = known_name(sha256)
    if name:
        return f"{name} tokens"
    return f"tokens of SentencePiece model sha256 {sha256[:12]}…" if sha256 else "tokens"
