"""``Counts``: the one counter of what became of the records read (invariant 1, in numbers).

Every record read ends in exactly one bucket: kept, held out (passed the pass, kept out of training for
evaluation: ``manifests/heldout.py``), filtered (by the pass, per reason) or rejected (by a reader, per
reason). A shard's tally while it is counted, a :class:`~elm_data.manifests.manifest.ShardRecord`'s count
fields, a manifest's totals and an audit row are all ``Counts``; they add with ``+`` / ``merge``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from elm_data.sources.document import Rejection

if TYPE_CHECKING:
    from .document_pass import PassResult

# The count fields of a shard record (the shards.parquet columns), in the order ``to_dict`` gives them.
RECORD_FIELDS = (
    "docs_read",
    "docs_kept",
    "docs_filtered",
    "docs_rejected",
    "filtered_by_reason",
    "rejected_by_reason",
    "pieces_filtered_by_reason",
    "chars",
    "tokens",
    "segments",
    "docs_heldout",
    "heldout_tokens",
)


@dataclass
class Counts:
    """Records read, each in one bucket, and what the kept ones hold.

    ``docs_read == docs_kept + docs_heldout + docs_filtered + docs_rejected`` by construction: read, filtered
    and rejected are derived from the buckets. ``chars``, ``tokens`` (no BOS/EOS) and ``segments`` (kept
    CoreNet pieces, or kept documents in packed mode) are those of kept documents; ``heldout_tokens`` those of
    held-out documents (passed the pass, never streamed for training). ``pieces_filtered_by_reason``: CoreNet
    pieces the per-piece rules dropped, counted only when asked (empty in packed mode).
    """

    docs_kept: int = 0
    filtered_by_reason: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    pieces_filtered_by_reason: Counter[str] = field(default_factory=Counter)
    chars: int = 0
    tokens: int = 0
    segments: int = 0
    docs_heldout: int = 0
    heldout_tokens: int = 0

    @property
    def docs_filtered(self) -> int:
        return sum(self.filtered_by_reason.values())

    @property
    def docs_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def docs_read(self) -> int:
        return self.docs_kept + self.docs_heldout + self.docs_filtered + self.docs_rejected

    def add_result(self, result: PassResult, count_pieces: bool = False, heldout: bool = False) -> None:
        """One document's outcome from the pass; ``count_pieces``: also count its dropped CoreNet pieces;
        ``heldout``: a document the pass keeps is held out (counted apart from the kept ones)."""
        if count_pieces:
            self.pieces_filtered_by_reason.update(
                reason for reason in result.piece_reasons if reason is not None
            )
        if result.kept and heldout:
            self.docs_heldout += 1
            self.heldout_tokens += result.tokens
        elif result.kept:
            self.docs_kept += 1
            self.chars += result.chars
            self.tokens += result.tokens
            self.segments += len(result.segments)
        else:
            self.filtered_by_reason[result.reason] += 1

    def add_rejection(self, rejection: Rejection) -> None:
        """A reader's rejection: ``rejection.count`` records in its reason's bucket."""
        self.rejected_by_reason[rejection.reason] += rejection.count

    def merge(self, other: Counts) -> Counts:
        """Add ``other`` into these counts (in place); returns ``self``."""
        self.docs_kept += other.docs_kept
        self.filtered_by_reason.update(other.filtered_by_reason)
        self.rejected_by_reason.update(other.rejected_by_reason)
        self.pieces_filtered_by_reason.update(other.pieces_filtered_by_reason)
        self.chars += other.chars
        self.tokens += other.tokens
        self.segments += other.segments
        self.docs_heldout += other.docs_heldout
        self.heldout_tokens += other.heldout_tokens
        return self

    def __add__(self, other: Counts) -> Counts:
        return Counts().merge(self).merge(other)

    @classmethod
    def sum(cls, parts: Iterable[Counts]) -> Counts:
        """All ``parts`` added up (empty counts for none)."""
        total = cls()
        for part in parts:
            total.merge(part)
        return total

    @classmethod
    def from_record(cls, record: Any) -> Counts:
        """The counts a shard record (anything with its count fields) holds; read/filtered/rejected are
        derived from the buckets, so a record whose sums disagree with its buckets gives counts that differ
        from it."""
        return cls(
            docs_kept=record.docs_kept,
            filtered_by_reason=Counter(record.filtered_by_reason),
            rejected_by_reason=Counter(record.rejected_by_reason),
            pieces_filtered_by_reason=Counter(record.pieces_filtered_by_reason),
            chars=record.chars,
            tokens=record.tokens,
            segments=record.segments,
            docs_heldout=record.docs_heldout,
            heldout_tokens=record.heldout_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """The shard record's count fields (``RECORD_FIELDS``), each per-reason dict sorted by reason."""
        return {
            "docs_read": self.docs_read,
            "docs_kept": self.docs_kept,
            "docs_filtered": self.docs_filtered,
            "docs_rejected": self.docs_rejected,
            "filtered_by_reason": dict(sorted(self.filtered_by_reason.items())),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "pieces_filtered_by_reason": dict(sorted(self.pieces_filtered_by_reason.items())),
            "chars": self.chars,
            "tokens": self.tokens,
            "segments": self.segments,
            "docs_heldout": self.docs_heldout,
            "heldout_tokens": self.heldout_tokens,
        }
