"""A deterministic sample of filtered documents, written aside as JSONL for inspection.

For each reason it keeps the first ``per_reason`` documents in corpus order, i.e. the smallest
``(source, subset, shard_uri, index)``: the same sample whatever order workers finish in, and
collectors from several workers merge into the sample one collector would have kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from elm_data.core.errors import InvalidValue
from elm_data.core.outputs import write_atomic

SAMPLE_CHARS = 500


class DroppedSamples:
    """Collector a :class:`~elm_data.pipeline.document_pass.DocumentPass` feeds (``dropped_sink``)."""

    def __init__(self, per_reason: int = 20):
        if per_reason < 0:
            raise InvalidValue("per_reason must be >= 0")
        self.per_reason = per_reason
        # reason -> up to per_reason (key, record) pairs, sorted by key
        self._by_reason: dict[str, list[tuple[tuple, dict[str, Any]]]] = {}

    def add(self, result) -> None:
        """Offer a PassResult; kept ones are ignored."""
        if result.status != "filtered" or self.per_reason == 0:
            return
        prov = result.document.provenance
        key = (prov.source, prov.subset, prov.shard_uri, prov.index)
        record = {
            "doc_id": prov.doc_id,
            "source": prov.source,
            "subset": prov.subset,
            "shard": prov.shard_uri,
            "index": prov.index,
            "reason": result.reason,
            "text": result.document.text[:SAMPLE_CHARS],
        }
        self.offer(str(result.reason), key, record)

    def offer(self, reason: str, key: tuple, record: dict[str, Any]) -> None:
        """Keep ``record`` under ``reason`` if its ``key`` is among the ``per_reason`` smallest seen.

        Callers that know a better order than :meth:`add`'s (e.g. the manifest builder's
        ``(shard position, index)``) feed records with their own comparable keys.
        """
        if self.per_reason == 0:
            return
        bucket = self._by_reason.setdefault(reason, [])
        if len(bucket) >= self.per_reason and key >= bucket[-1][0]:
            return
        if any(k == key for k, _ in bucket):
            return
        bucket.append((key, record))
        bucket.sort(key=lambda item: item[0])
        del bucket[self.per_reason :]

    def merge(self, other: DroppedSamples) -> DroppedSamples:
        for reason, bucket in other._by_reason.items():
            for key, record in bucket:
                self.offer(reason, key, record)
        return self

    def items(self) -> list[tuple[str, tuple, dict[str, Any]]]:
        """``(reason, key, record)`` of every sample, by reason then key (to store and re-offer them)."""
        return [(reason, key, record) for reason in sorted(self._by_reason) for key, record in self._by_reason[reason]]

    def records(self) -> list[dict[str, Any]]:
        """All samples, by reason then corpus order."""
        return [record for reason in sorted(self._by_reason) for _, record in self._by_reason[reason]]

    def to_jsonl(self) -> bytes:
        """The samples as UTF-8 JSONL, one record per line, in :meth:`records` order."""
        return b"".join(_jsonl_line(record) for record in self.records())

    def write(self, path: str | os.PathLike) -> Path:
        """Write the samples as JSONL, in whole (:func:`~elm_data.core.outputs.write_atomic`)."""
        path = Path(path)
        write_atomic(path, self.to_jsonl())
        return path


def _jsonl_line(record: dict[str, Any]) -> bytes:
    """One JSONL line in raw UTF-8; a record holding a lone surrogate is written with ASCII escapes (exact, valid)."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


def merge_all(collectors: list[DroppedSamples]) -> DroppedSamples | None:
    """Merge per-worker collectors into one (None when there are none)."""
    if not collectors:
        return None
    merged = DroppedSamples(max(c.per_reason for c in collectors))
    for c in collectors:
        merged.merge(c)
    return merged


__all__ = ["DroppedSamples", "merge_all", "SAMPLE_CHARS"]
