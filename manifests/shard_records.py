"""``shards.parquet``'s rows: :class:`ShardRecord` (one shard's location, sha256, counts and block-index
digests), the file's schema, and the records' sums (``manifest.json``'s totals, counts per subset).

Below both :mod:`.identity` (which hashes the records into the manifest id and Merkle root) and
:mod:`.manifest` (which reads and writes them): a record knows its own columns and canonical bytes, nothing
of the manifest around it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa

from elm_data.core.canonical_json import SORTED_ASCII, SORTED_SPACED
from elm_data.pipeline.counts import RECORD_FIELDS, Counts
from elm_data.sources.registry import subset_key

from .block_index import count_rows, counts_digest, index_digest

SHARD_SCHEMA = pa.schema(
    [
        ("shard", pa.int32()),  # position in the manifest, 0-based
        ("source", pa.string()),
        ("subset", pa.string()),
        ("uri", pa.string()),
        ("size_bytes", pa.int64()),
        ("sha256", pa.string()),
        ("licence", pa.string()),
        ("upstream", pa.string()),  # upstream location (e.g. hf://datasets/tiiuae/falcon-refinedweb/...)
        ("upstream_revision", pa.string()),  # commit/etag the hub published, when known
        ("docs_read", pa.int64()),  # = docs_kept + docs_heldout + docs_filtered + docs_rejected
        ("docs_kept", pa.int64()),
        ("docs_filtered", pa.int64()),
        ("docs_rejected", pa.int64()),
        ("filtered_by_reason", pa.string()),  # JSON object {reason: count}, keys sorted
        ("rejected_by_reason", pa.string()),  # JSON object {reason: count}, keys sorted
        # corenet mode: JSON {reason: dropped pieces}; "{}" in packed
        ("pieces_filtered_by_reason", pa.string()),
        ("chars", pa.int64()),  # characters of kept documents
        ("tokens", pa.int64()),  # LLaMA tokens of kept documents/pieces, no BOS/EOS
        ("segments", pa.int64()),  # kept pieces (corenet) or kept documents (packed)
        ("docs_heldout", pa.int64()),  # documents the pass keeps, held out of training (manifests/heldout.py)
        ("heldout_tokens", pa.int64()),  # their LLaMA tokens, no BOS/EOS
        ("count_method", pa.string()),  # e.g. "exact:sentencepiece"
        ("format", pa.string()),  # reader format found from the bytes ("parquet", "jsonl", ...); "" if none
        ("blocks_sha256", pa.string()),  # block_index.index_digest of the shard's rows of blocks.parquet
        ("block_counts_sha256", pa.string()),  # block_index.counts_digest of their COUNT_FIELDS
    ]
)


@dataclass(slots=True)  # slots: a manifest holds one per shard in every process (~0.3 KiB each, not ~1.5)
class ShardRecord:
    """One row of ``shards.parquet`` (the field names are its columns, in order); its count fields are
    ``counts``."""

    shard: int
    source: str
    subset: str
    uri: str
    size_bytes: int
    sha256: str
    licence: str
    upstream: str | None = None
    upstream_revision: str | None = None
    docs_read: int = 0
    docs_kept: int = 0
    docs_filtered: int = 0
    docs_rejected: int = 0
    filtered_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    pieces_filtered_by_reason: dict[str, int] = field(default_factory=dict)
    chars: int = 0
    tokens: int = 0
    segments: int = 0
    docs_heldout: int = 0
    heldout_tokens: int = 0
    count_method: str = "exact:sentencepiece"
    format: str = ""
    # digests of the block index (block_index.py); recomputed from ``blocks`` when set
    blocks_sha256: str = ""
    block_counts_sha256: str = ""
    # the block index at build time; [] when read back
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return subset_key(self.source, self.subset)

    @property
    def counts(self) -> Counts:
        """This shard's counts (a copy: changing it does not change the record)."""
        return Counts.from_record(self)

    def counts_add_up(self) -> bool:
        """Whether ``docs_read``/``docs_filtered``/``docs_rejected`` are the sums of the buckets (invariant 1:
        read = kept + held out + filtered + rejected)."""
        return self.counts.to_dict() == {name: getattr(self, name) for name in RECORD_FIELDS}

    def to_row(self) -> dict[str, Any]:
        """The ``shards.parquet`` row; a record holding its block index gets its two digests from it."""
        # no deep copy of blocks
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "blocks"}
        blocks = self.blocks
        if blocks:
            row["blocks_sha256"] = index_digest(blocks)
            row["block_counts_sha256"] = counts_digest(count_rows(blocks))
        row["filtered_by_reason"] = SORTED_SPACED.dumps(self.filtered_by_reason)
        row["rejected_by_reason"] = SORTED_SPACED.dumps(self.rejected_by_reason)
        row["pieces_filtered_by_reason"] = SORTED_SPACED.dumps(self.pieces_filtered_by_reason)
        return row

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> ShardRecord:
        """A record from a ``shards.parquet`` row's values in ``SHARD_SCHEMA`` order."""
        values = list(values)
        for i in _JSON_COLUMNS:
            values[i] = json.loads(values[i] or "{}")
        return cls(*values)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ShardRecord:
        row = dict(row)
        row["filtered_by_reason"] = json.loads(row["filtered_by_reason"] or "{}")
        row["rejected_by_reason"] = json.loads(row["rejected_by_reason"] or "{}")
        row["pieces_filtered_by_reason"] = json.loads(row.get("pieces_filtered_by_reason") or "{}")
        return cls(**row)

    def canonical_bytes(self) -> bytes:
        """Deterministic serialisation used as this shard's Merkle leaf."""
        return SORTED_ASCII.encode(self.to_row())


_JSON_COLUMNS = [
    SHARD_SCHEMA.get_field_index(n)
    for n in ("filtered_by_reason", "rejected_by_reason", "pieces_filtered_by_reason")
]


def shards_table(records: list[ShardRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=SHARD_SCHEMA)


def totals_of(records: Sequence[ShardRecord]) -> dict[str, Any]:
    """``manifest.json``'s totals: the records' summed :class:`Counts` (``to_dict``), shards and bytes."""
    return Counts.sum(r.counts for r in records).to_dict() | {
        "shards": len(records),
        "size_bytes": sum(r.size_bytes for r in records),
    }


def counts_by_subset(records: Sequence[ShardRecord]) -> dict[str, Counts]:
    """Summed counts per ``"source/subset"``, in order of first appearance."""
    out: dict[str, Counts] = {}
    for r in records:
        out.setdefault(r.key, Counts()).merge(r.counts)
    return out
