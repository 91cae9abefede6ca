"""The pinned LLaMA SentencePiece tokenizer: resolution, hashing and batch encoding.

The model file is Meta-licensed and never committed; it is found, in order, from an explicit
flag, the mixture/training config, or the ``ELM_DATA_TOKENIZER`` environment variable. Paths
and fsspec URLs (``hf://``, ``s3://``, ``https://``) are accepted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import fsspec
import sentencepiece as spm

ENV_VAR = "ELM_DATA_TOKENIZER"
LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
BOS_ID, EOS_ID, PAD_ID = 1, 2, 32000  # LLaMA has no pad piece; CoreNet pads with id 32000


class TokenizerNotFound(RuntimeError):
    pass


def resolve_tokenizer_uri(flag: str | None = None, config_value: str | None = None) -> str:
    """Pick the tokenizer location: ``--tokenizer`` flag, then config, then ``$ELM_DATA_TOKENIZER``."""
    for candidate in (flag, config_value, os.environ.get(ENV_VAR)):
        if candidate:
            return str(candidate)
    raise TokenizerNotFound(
        "No LLaMA tokenizer given. Pass --tokenizer PATH, set `tokenizer:` in the config, "
        f"or export {ENV_VAR}=/path/to/tokenizer.model (the Llama-2 SentencePiece model, "
        f"sha256 {LLAMA2_SHA256[:8]}…{LLAMA2_SHA256[-4:]}; gated upstream, so it is never bundled)."
    )


class LlamaTokenizer:
    """SentencePiece LLaMA tokenizer with its provenance (uri, sha256).

    Encoding never adds BOS/EOS; sequence forming adds them.
    """

    def __init__(self, uri: str, expected_sha256: str | None = None, num_threads: int = 1):
        try:
            with fsspec.open(uri, "rb") as f:
                proto = f.read()
        except FileNotFoundError as e:
            raise TokenizerNotFound(f"tokenizer model not found at {uri!r}") from e
        self.uri = uri
        self.sha256 = hashlib.sha256(proto).hexdigest()
        if expected_sha256 and self.sha256 != expected_sha256:
            raise ValueError(
                f"tokenizer at {uri} has sha256 {self.sha256}, but {expected_sha256} was pinned"
            )
        self._proto = proto
        self.num_threads = num_threads
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID

    @classmethod
    def resolve(
        cls, flag: str | None = None, config_value: str | None = None, **kwargs
    ) -> LlamaTokenizer:
        return cls(resolve_tokenizer_uri(flag, config_value), **kwargs)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=num_threads or self.num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i < self.vocab_size])

    def describe(self) -> dict[str, str]:
        """The record pinned in manifests and training logs."""
        return {"uri": self.uri, "sha256": self.sha256, "kind": "sentencepiece"}

    # Picklable for multiprocessing and DataLoader workers: ship the proto, rebuild the processor.
    def __getstate__(self):
        return {"uri": self.uri, "proto": self._proto, "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.uri = state["uri"]
        self._proto = state["proto"]
        self.sha256 = hashlib.sha256(self._proto).hexdigest()
        self.num_threads = state["num_threads"]
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.vocab_size = self.sp.vocab_size()
        self.bos_id, self.eos_id, self.pad_id = BOS_ID, EOS_ID, PAD_ID
