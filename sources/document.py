"""The unit every reader yields: a document with its provenance, or a counted rejection."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a document came from, precisely enough to find its bytes again.

    ``index`` is the 0-based row (parquet) or line (JSONL) number inside the shard.
    ``doc_id`` is stable: the corpus' native id where it has one, else derived from
    the shard hash and index (see :func:`derived_doc_id`).
    """

    source: str
    subset: str
    shard_uri: str
    shard_sha256: str
    index: int
    doc_id: str
    native_id: str | None
    licence: str


@dataclass(slots=True)
class Document:
    text: str
    provenance: Provenance
    metadata: dict[str, Any] = field(default_factory=dict)


# Rejection reasons a reader may report (the bucket names used in manifests and logs).
REJECT_MALFORMED_JSON = "malformed_json"
REJECT_INVALID_UTF8 = "invalid_utf8"
REJECT_INVALID_UNICODE = "invalid_unicode"  # valid JSON whose strings hold lone surrogate escapes ("\ud800")
REJECT_MISSING_TEXT = "missing_text"
REJECT_EMPTY_TEXT = "empty_text"
REJECT_NOT_A_STRING = "text_not_string"
REJECT_TRUNCATED = "truncated_stream"
REJECT_SCHEMA = "schema_mismatch"
REJECT_UNREADABLE = "unreadable_shard"
REJECT_TOO_LARGE = "record_too_large"  # a JSONL line longer than the record limit (read in bounded memory)

MAX_RECORD_BYTES = 64 << 20  # the default record limit (filters.max_record_bytes): 64 MiB of JSON per line


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the reader could not turn into a document, with its location and reason.

    ``index`` is the row/line where the problem was found (-1 when the whole shard is
    unreadable before any row). ``count`` is how many input records this rejection stands
    for: 1 for a bad line, the row count for a parquet file with the wrong schema.
    """

    source: str
    subset: str
    shard_uri: str
    index: int
    reason: str
    detail: str = ""
    count: int = 1


def derived_doc_id(shard_sha256: str, index: int) -> str:
    """A stable id for documents whose corpus publishes none: hash of shard hash and index."""
    return hashlib.sha256(f"{shard_sha256}:{index}".encode()).hexdigest()[:32]
