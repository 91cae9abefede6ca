"""``filters: {dedup: exact | minhash}``: the build drops every kept document that duplicates an earlier one.

Which copy stays cannot be decided per shard (a copy may sit in any shard), so the build works in three steps:

1. **Sign** — while a shard is counted (``shard_work.tally_shard``, local or Beam, any worker), each document
   the pass keeps gets the audit's signature (``duplicates.signature_of``: xxh128 of datatrove-normalized
   words, and with ``minhash`` its datasketch MinHash over word 5-gram shingles, 128 permutations). The
   signatures are committed with the shard's ledger in the build workspace (``shard-N.dedup.parquet``), so a
   resumed build reuses them; the shard's ledger and counts are committed as the pass left them.
2. **Decide** — the builder reads the signatures in the manifest's canonical order (shard, then record) and
   clusters them with the audit's own ``duplicates.find_duplicates`` (exact: same hash; minhash: also a
   MinHash-LSH candidate whose estimated Jaccard reaches 0.8, clusters joined transitively). In each cluster
   the first document in that order stays; every other one is removed as a duplicate **of that first one**.
   This step sees every shard and runs in one process, so what is removed never depends on the worker
   count or the runner. ``audit duplicates`` of the same documents reports exactly these as
   ``exact_redundant`` (``exact``) or ``near_redundant`` (``minhash``).
3. **Apply** — a removed document's ledger row becomes ``status: filtered``, ``reason: duplicate``,
   ``duplicate_of: <doc id of the kept copy>`` (tokens and segments 0, characters kept, as for every
   filtered row); the shard's counts move it from kept (or held out: held-out documents are signed too, so a
   later copy of a held-out document is never trained on) to ``filtered_by_reason["duplicate"]`` (read = kept
   + held out + filtered + rejected still holds) and its block index is recomputed from the new ledger. The
   stream plans from the ledger's kept rows only, so it never reads a removed document.

Cost over a build without dedup: normalizing and (minhash) sketching each kept document in the counting
workers, ~0.7 KiB of signature per kept document in the workspace (~56 B exact, its doc id included), and a
single-process pass over all signatures (the LSH index holds every distinct document's bands: memory grows
with kept documents, ~5.6 KiB each measured); no byte of the corpus is read twice (``benchmarks/RESULTS.md``,
audits). ``describe`` is recorded as ``pass.dedup`` (in the manifest id). ``--dropped-samples`` does not
sample removed copies (their text is not kept past the count; the ledger names each one's kept copy).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from elm_data.pipeline.counts import Counts
from elm_data.sources.blocks import Block

from .duplicates import DedupSettings, Sketcher, find_duplicates, signature_of
from .heldout import HELDOUT
from .ledger_blocks import block_index
from .shard_records import ShardRecord

REASON_DUPLICATE = "duplicate"
KEEPS = "the first copy in manifest order (shard, then record); the others are removed as duplicates of it"
SIGNATURE_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # record index in the shard (a kept document)
        ("doc_id", pa.string()),
        ("digest", pa.binary(16)),  # xxh128 of the normalized words
        # MinHash hash values (32-bit), null: exact mode or too few words
        ("signature", pa.list_(pa.uint32())),
    ]
)


def dedup_settings(mode: str) -> DedupSettings:
    """The audit's settings (its defaults) for a dedup mode: ``exact`` compares hashes only."""
    return DedupSettings(near=mode == "minhash")


def describe(mode: str | None) -> dict[str, Any]:
    """``{"dedup": ...}`` for the pass description (in the manifest id), or ``{}`` without dedup."""
    if mode is None:
        return {}
    return {"dedup": {"mode": mode, "keeps": KEEPS, **dedup_settings(mode).describe()}}


class Signer:
    """Per process: a document text -> its ``(digest bytes, uint32 signature or None)``."""

    def __init__(self, mode: str):
        self.sketcher = Sketcher(dedup_settings(mode))

    def __call__(self, text: str) -> tuple[bytes, np.ndarray | None]:
        digest, hashvalues = signature_of(self.sketcher, text)
        return digest.to_bytes(16, "big"), None if hashvalues is None else hashvalues.astype(np.uint32)


@functools.lru_cache(maxsize=2)
def signer_for(mode: str) -> Signer:
    return Signer(mode)


def signature_table(rows: Sequence[tuple[int, str, bytes, np.ndarray | None]]) -> pa.Table:
    """One shard's signatures (``SIGNATURE_SCHEMA``), rows ``(index, doc id, digest, signature)``."""
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    return pa.table(
        [pa.array(list(c), f.type) for c, f in zip(columns, SIGNATURE_SCHEMA, strict=True)],
        schema=SIGNATURE_SCHEMA,
    )


def _parts(records: Sequence[ShardRecord], signatures, positions: list) -> Iterator[list[tuple]]:
    """Per shard in manifest order, the rows ``find_duplicates`` takes; ``positions`` gets ``(shard,
    index)``."""
    for record in records:
        table = signatures(record.shard)
        indices, ids = table.column("index").to_pylist(), table.column("doc_id").to_pylist()
        digests, sigs = table.column("digest").to_pylist(), table.column("signature").to_pylist()
        positions.extend((record.shard, i) for i in indices)
        yield [
            (record.key, doc_id, 0, digest, None if sig is None else np.asarray(sig, dtype=np.uint64))
            for doc_id, digest, sig in zip(ids, digests, sigs, strict=True)
        ]


def find_removals(records: Sequence[ShardRecord], signatures, mode: str) -> dict[int, dict[int, str]]:
    """``{shard: {record index: doc id of the kept copy}}`` of every document to remove (see the module
    docstring); ``signatures(shard)`` gives a shard's signature table."""
    positions: list[tuple[int, int]] = []
    rows, _, uf = find_duplicates(_parts(records, signatures, positions), dedup_settings(mode))
    removals: dict[int, dict[int, str]] = {}
    for n, (shard, index) in enumerate(positions):
        root = uf.find(n)
        if root != n:
            removals.setdefault(shard, {})[index] = rows[root].doc_id
    return removals


def apply_to_ledger(table: pa.Table, removed: Mapping[int, str]) -> pa.Table:
    """The ledger with each removed record's row turned into a ``duplicate`` row naming its kept copy."""
    if not removed:
        return table
    indices = table.column("index").to_pylist()
    hit = pa.array([i in removed for i in indices])
    columns = {
        "status": pc.if_else(hit, "filtered", table.column("status")),
        "reason": pc.if_else(hit, REASON_DUPLICATE, table.column("reason")),
        "tokens": pc.if_else(hit, pa.scalar(0, pa.int32()), table.column("tokens")),
        "segments": pc.if_else(hit, pa.scalar(0, pa.int32()), table.column("segments")),
        "duplicate_of": pa.array([removed.get(i) for i in indices], pa.string()),
    }
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def apply_to_record(record: ShardRecord, table: pa.Table, removed: Mapping[int, str]) -> ShardRecord:
    """The shard record after its removals: kept -> ``filtered_by_reason["duplicate"]`` (with their
    characters, tokens and segments), and its block index recomputed from the new ledger ``table``."""
    if not removed:
        return record
    gone = table.filter(pa.array([i in removed for i in table.column("index").to_pylist()]))
    # a held-out later copy: out of its own bucket
    held = gone.filter(pc.equal(gone.column("status"), HELDOUT))
    gone = gone.filter(pc.not_equal(gone.column("status"), HELDOUT))
    counts = Counts.from_record(record)
    counts.docs_kept -= gone.num_rows
    counts.docs_heldout -= held.num_rows
    counts.heldout_tokens -= int(pc.sum(held.column("tokens")).as_py() or 0)
    counts.filtered_by_reason[REASON_DUPLICATE] += gone.num_rows + held.num_rows
    for name in ("chars", "tokens", "segments"):
        setattr(counts, name, getattr(counts, name) - int(pc.sum(gone.column(name)).as_py() or 0))
    blocks = [
        Block(b["start"], b["end"], b["sha256"], b["first_record"], b["records"]) for b in record.blocks
    ]
    return dataclasses.replace(
        record, **counts.to_dict(), blocks=block_index(blocks, apply_to_ledger(table, removed))
    )


class DedupedDocuments(Sequence):
    """Each shard's committed ledger (``documents[shard]``) with its removals applied, read lazily."""

    def __init__(self, documents: Sequence[pa.Table], removals: Mapping[int, Mapping[int, str]]):
        self.documents, self.removals = documents, removals

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, shard: int) -> pa.Table:
        return apply_to_ledger(self.documents[shard], self.removals.get(shard, {}))


def dedup_build(
    records: list[ShardRecord], documents: Sequence[pa.Table], signatures, mode: str
) -> tuple[list[ShardRecord], DedupedDocuments]:
    """Records and ledgers of a build with ``filters.dedup = mode`` from its committed (undeduplicated)
    ones."""
    removals = find_removals(records, signatures, mode)
    out = [
        apply_to_record(r, documents[r.shard], removals[r.shard]) if r.shard in removals else r
        for r in records
    ]
    return out, DedupedDocuments(documents, removals)
