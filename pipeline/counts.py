"""``Counts``: the one counter of what became of the records read (invariant 1, in numbers).

Every record read ends in exactly one bucket: kept, filtered (by the pass, per reason) or rejected (by a
reader, per reason). A shard's tally while it is counted, a :class:`~elm_data.manifests.manifest.ShardRecord`'s
count fields, a manifest's totals and an audit row are all ``Counts``; they add with ``+`` / ``merge``.
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
)


@dataclass
class Counts:
    """Records read, each in one bucket, and what the kept ones hold.

    ``docs_read == docs_kept + docs_filtered + docs_rejected`` by construction: read, filtered and rejected
    are derived from the buckets. ``chars``, ``tokens`` (no BOS/EOS) and ``segments`` (kept CoreNet pieces,
    or kept documents in packed mode) are those of kept documents. ``pieces_filtered_by_reason``: CoreNet
    pieces the per-piece rules dropped, counted only when asked (empty in packed mode).
    """

    docs_kept: int = 0
    filtered_by_reason: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    pieces_filtered_by_reason: Counter[str] = field(default_factory=Counter)
    chars: int = 0
    tokens: int = 0
    segments: int = 0

    @property
    def docs_filtered(self) -> int:
        return sum(self.filtered_by_reason.values())

    @property
    def docs_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def docs_read(self) -> int:
        return self.docs_kept + self.docs_filtered + self.docs_rejected

    def add_result(self, result: PassResult, count_pieces: bool = False) -> None:
        """One document's outcome from the pass; ``count_pieces``: also count its dropped CoreNet pieces."""
        if count_pieces:
            self.pieces_filtered_by_reason.update(reason for reason in result.piece_reasons if reason is not None)
        if result.kept:
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
        """The counts a shard record (anything with its count fields) holds; read/filtered/rejected are derived
        from the buckets, so a record whose sums disagree with its buckets gives counts that differ from it."""
        return cls(
            docs_kept=record.docs_kept,
            filtered_by_reason=Counter(record.filtered_by_reason),
            rejected_by_reason=Counter(record.rejected_by_reason),
            pieces_filtered_by_reason=Counter(record.pieces_filtered_by_reason),
            chars=record.chars,
            tokens=record.tokens,
            segments=record.segments,
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
        }
