"""The JSON spellings that hashes, ids and digests depend on, each named once; and the one ``json_safe``.

A digest is only as stable as the exact bytes it hashes, so every spelling is frozen here and
``tests/test_canonical_json.py`` holds each one byte for byte to the outputs it has always had (and the
manifest id, Merkle root, block and ledger digests and receipt hashes of a fixed manifest to theirs). Never
change a spelling: add a new one (and a new format or receipt version) instead.

- :data:`SORTED_UTF8` — sorted keys, no spaces, UTF-8: the manifest id's payload (``manifests/identity.py``);
  the sample corpus' Dolma lines (``sources/sample.py``: its shards' bytes, so their sha256s).
- :data:`SORTED_ASCII` — sorted keys, no spaces, ``\\uXXXX`` escapes: a shard record's Merkle leaf
  (``ShardRecord.canonical_bytes``), a shard's block-index digest (``block_index.index_digest``), the
  receipt's genesis (``pipeline/stream/receipt.py:genesis``).
- :data:`ORDERED_UTF8` — keys in the order given, no spaces, UTF-8: a ledger row group's digest
  (``manifest.ledger_digest``), a batch's receipt digest (``receipt.digest_spans``).
- :data:`SORTED_SPACED` — sorted keys, ``", "`` and ``": "``, escapes: the by-reason columns of
  ``shards.parquet`` (hashed inside the shard records) and a training config's resume fingerprint.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spelling:
    """One exact way of writing a value as JSON text (``json.dumps`` with these arguments)."""

    sort_keys: bool
    separators: tuple[str, str]
    ensure_ascii: bool

    def dumps(self, value: Any, default: Callable[[Any], Any] | None = None) -> str:
        """``value`` in this spelling; ``default``: as ``json.dumps``' (for values JSON has no type for)."""
        return json.dumps(
            value,
            sort_keys=self.sort_keys,
            separators=self.separators,
            ensure_ascii=self.ensure_ascii,
            default=default,
        )

    def encode(self, value: Any) -> bytes:
        """``value`` in this spelling, as UTF-8 bytes (what is hashed)."""
        return self.dumps(value).encode("utf-8")


SORTED_UTF8 = Spelling(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
SORTED_ASCII = Spelling(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
ORDERED_UTF8 = Spelling(sort_keys=False, separators=(",", ":"), ensure_ascii=False)
SORTED_SPACED = Spelling(sort_keys=True, separators=(", ", ": "), ensure_ascii=True)

SPELLINGS = {
    "SORTED_UTF8": SORTED_UTF8,
    "SORTED_ASCII": SORTED_ASCII,
    "ORDERED_UTF8": ORDERED_UTF8,
    "SORTED_SPACED": SORTED_SPACED,
}


def json_safe(value: Any, sort_keys: bool = False) -> Any:
    """``value`` as plain JSON types: mappings with string keys (sorted with ``sort_keys``, else in their
    order), lists (from lists, tuples, sets), numbers, strings, bools and None; datetimes as ISO 8601, bytes
    as hex, arrays and tensors through ``tolist``; anything else (``Decimal``, ``Path``, ...) as its
    ``str``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0])) if sort_keys else value.items()
        return {str(k): json_safe(v, sort_keys) for k, v in items}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, sort_keys) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if hasattr(value, "tolist"):
        return json_safe(value.tolist(), sort_keys)
    return str(value)
