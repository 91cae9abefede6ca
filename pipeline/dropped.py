"""A deterministic sample of dropped records, written aside as JSONL for inspection
(``dropped_samples.jsonl``).

For each reason it keeps the ``per_reason`` records with the smallest keys offered; the manifest build (the
one producer: ``manifests/shard_work.py:dropped_sample``) keys them by manifest order, so the sample is the
same whatever order workers finish in, and re-offering each shard's committed samples gives the one file.
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
    """The first ``per_reason`` records per reason, by key (:meth:`offer`)."""

    def __init__(self, per_reason: int = 20):
        if per_reason < 0:
            raise InvalidValue("per_reason must be >= 0")
        self.per_reason = per_reason
        # reason -> up to per_reason (key, record) pairs, sorted by key
        self._by_reason: dict[str, list[tuple[tuple, dict[str, Any]]]] = {}

    def offer(self, reason: str, key: tuple, record: dict[str, Any]) -> None:
        """Keep ``record`` under ``reason`` if its ``key`` is among the ``per_reason`` smallest seen.

        Keys are comparable tuples (the manifest builder's ``(shard position, index, ledger row)``).
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

    def items(self) -> list[tuple[str, tuple, dict[str, Any]]]:
        """``(reason, key, record)`` of every sample, by reason then key (to store and re-offer them)."""
        return [
            (reason, key, record)
            for reason in sorted(self._by_reason)
            for key, record in self._by_reason[reason]
        ]

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
    """One JSONL line in raw UTF-8; a record holding a lone surrogate is written with ASCII escapes (exact,
    valid)."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


__all__ = ["DroppedSamples", "SAMPLE_CHARS"]
