"""The one per-document pass: filter, then tokenize. The manifest builder and the stream both call it.

Order per text (a whole document in ``packed`` mode, each CoreNet piece in ``corenet`` mode):
the character rule (cheap), then the configured datatrove quality filters, then all survivors of a
batch are tokenized in ONE ``encode_batch`` call, then the token rule. Segments never hold BOS/EOS.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from elm_data.sources.document import Document

from .config import FilterConfig, SequenceConfig
from .filters import (
    REASON_MIN_CHARACTERS,
    REASON_MIN_TOKENS,
    passes_min_characters,
    split_corenet_pieces,
    text_for_tokenizer,
)
from .quality import build_quality_filters
from .tokenizer import LlamaTokenizer

PASS_VERSION = 1
KEPT, FILTERED = "kept", "filtered"
CHARACTER_NORMALIZATION = "slimpajama: lower(), drop string.punctuation, strip, collapse \\s+ to ' '"


@dataclass(slots=True)
class PassResult:
    """The outcome for one document.

    ``segments``: token ids (no BOS/EOS) of the whole document (``packed``) or of each kept piece
    (``corenet``); empty unless kept. Lists of ints, or numpy int32 arrays of the same ids from a pass made
    with ``ids_as_arrays`` where SentencePiece gives them (the manifest build, which only counts them).
    ``piece_reasons``: in ``corenet`` mode, each piece's reason (None where kept); in ``packed`` mode a
    one-element tuple.
    """

    document: Document
    status: Literal["kept", "filtered"]
    reason: str | None
    segments: list[list[int]]
    piece_reasons: tuple[str | None, ...] = ()

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.segments) if self.status == KEPT else 0

    @property
    def chars(self) -> int:
        return len(self.document.text)

    @property
    def kept(self) -> bool:
        return self.status == KEPT


class DocumentPass:
    """Filter and tokenize batches of documents; picklable (for worker processes and Beam).

    It keeps no counts: callers add its results up in a :class:`~elm_data.pipeline.counts.Counts` (and sample
    what was dropped themselves: ``manifests/shard_work.py:dropped_sample``).
    """

    def __init__(
        self,
        filters: FilterConfig,
        sequences: SequenceConfig,
        tokenizer: LlamaTokenizer,
        num_threads: int = 1,
        ids_as_arrays: bool = False,
    ):
        self.filters = filters
        self.sequences = sequences
        self.tokenizer = tokenizer
        self.num_threads = num_threads
        self.ids_as_arrays = ids_as_arrays  # segments as numpy int32 arrays (the build only counts them)
        self.quality_filters = build_quality_filters(filters.quality)
        self._min_content_tokens = filters.min_tokens - (2 if filters.min_tokens_counts_bos_eos else 0)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the pass (and hashes into its id)."""
        filters = self.filters.to_dict()
        filters["quality"] = [q.describe() for q in self.quality_filters]
        described: dict[str, Any] = {
            "pass_version": PASS_VERSION,
            "filters": filters,
            "character_normalization": CHARACTER_NORMALIZATION,
            "sequence_mode": self.sequences.mode,
            "corenet_words_per_piece": (
                self.sequences.corenet_words_per_piece if self.sequences.mode == "corenet" else None
            ),
            "tokenizer": self.tokenizer.describe(),
        }
        if self.quality_filters:  # the filters' code is part of what they decide
            described["datatrove_version"] = importlib.metadata.version("datatrove")
        return described

    def _texts_of(self, doc: Document) -> list[str]:
        if not isinstance(doc.text, str):
            raise TypeError(
                f"document {doc.provenance.doc_id} ({doc.provenance.shard_uri}#{doc.provenance.index}) has "
                f"{type(doc.text).__name__} text; readers must turn such records into Rejections"
            )
        if self.sequences.mode == "corenet":
            return split_corenet_pieces(doc.text, self.sequences.corenet_words_per_piece)
        return [doc.text]

    def _pre_token_reason(self, text: str, doc_id: str) -> str | None:
        if not passes_min_characters(text, self.filters.min_characters):
            return REASON_MIN_CHARACTERS
        for quality_filter in self.quality_filters:
            reason = quality_filter.check(text, doc_id)
            if reason is not None:
                return reason
        return None

    def process(self, docs: Sequence[Document]) -> list[PassResult]:
        """One result per document, in order. Survivors of the cheap rules are tokenized in one batch."""
        pending = self.prepare(docs)
        return pending.finish(self.encode(pending.texts))

    def prepare(self, docs: Sequence[Document]) -> PendingPass:
        """The pass up to the tokenizer: each text's cheap rules; what survives waits in ``texts``."""
        pending = PendingPass(docs, self._min_content_tokens)
        for d, doc in enumerate(docs):
            reasons: list[str | None] = []
            for p, text in enumerate(self._texts_of(doc)):
                reason = self._pre_token_reason(text, doc.provenance.doc_id)
                reasons.append(reason)
                if reason is None:
                    pending.texts.append(text_for_tokenizer(text, self.filters.nfc_normalization))
                    pending.slots.append((d, p))
            pending.piece_reasons.append(reasons)
        return pending

    def encode(self, texts: list[str]) -> list:
        """One ``encode_batch`` call over ``texts`` (none for no text); it holds no GIL while it runs.
        ``arrays=`` is passed only when asked: a stand-in tokenizer may not take it."""
        if not texts:
            encoded = []
        elif self.ids_as_arrays:
            encoded = self.tokenizer.encode_batch(texts, self.num_threads, arrays=True)
        else:
            encoded = self.tokenizer.encode_batch(texts, self.num_threads)
        if len(encoded) != len(texts):
            raise RuntimeError(f"tokenizer returned {len(encoded)} encodings for {len(texts)} texts")
        return encoded


class PendingPass:
    """A batch between :meth:`DocumentPass.prepare` and :meth:`finish`: ``texts`` to tokenize, ``slots`` (the
    document and piece of each), each piece's reason so far and the token rule's bound
    (``min_content_tokens``). :meth:`DocumentPass.process` is the two
    around one :meth:`DocumentPass.encode`; the stream calls encode on another thread, so that only the
    tokenizer (which holds no GIL) runs beside its reading."""

    def __init__(self, docs: Sequence[Document], min_content_tokens: int):
        self.docs, self.min_content_tokens = docs, min_content_tokens
        self.texts: list[str] = []
        self.slots: list[tuple[int, int]] = []  # (document, piece) of each text
        self.piece_reasons: list[list[str | None]] = []

    def finish(self, encoded: list) -> list[PassResult]:
        """The results, given ``encoded`` (``texts``' ids in order): the token rule, then kept or filtered."""
        piece_ids: dict[tuple[int, int], list[int]] = {}
        for (d, p), ids in zip(self.slots, encoded, strict=True):
            if len(ids) < self.min_content_tokens:
                self.piece_reasons[d][p] = REASON_MIN_TOKENS
            else:
                piece_ids[(d, p)] = ids
        results = []
        for d, doc in enumerate(self.docs):
            reasons = self.piece_reasons[d]
            segments = [piece_ids[(d, p)] for p, reason in enumerate(reasons) if reason is None]
            if segments:
                result = PassResult(doc, KEPT, None, segments, tuple(reasons))
            else:
                result = PassResult(doc, FILTERED, reasons[0], [], tuple(reasons))
            results.append(result)
        return results
