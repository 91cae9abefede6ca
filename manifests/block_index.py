"""The manifest's block index on disk: ``blocks.parquet``, one row per block of every shard, in shard order.

A block (``BLOCK_FIELDS``) is a record-aligned byte range of a shard with its sha256, its first record and
record count, the kept documents / tokens / segments among them and the digest of its documents-ledger rows.
Each shard record commits to its blocks twice (both digests are shard fields, so the manifest id and the
Merkle root cover them):

- ``block_counts_sha256`` — sha256 of the shard's ``COUNT_FIELDS`` as little-endian int64, row-major: what
  the stream's plan reads of *every* block. Opening a manifest loads these columns into one compact array
  (``BlockCounts``, 48 bytes per block) and checks every shard's digest (one sha256 call per shard);
- ``blocks_sha256`` — sha256 of the shard's whole block index as canonical JSON (sorted keys, no spaces):
  the byte ranges and sha256s a reader uses. Checked per shard, on first use (:func:`read_shard_blocks`),
  so a reader's start-up does not parse or hash every block record of the corpus (invariant 10); verify,
  audit and Croissant check every shard's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.core.canonical_json import SORTED_ASCII

BLOCKS_FILE = "blocks.parquet"

# One block of a shard: bytes [start, end) with their sha256, records [first_record, first_record + records),
# the kept documents / tokens / segments among them, and the sha256 of their documents-ledger rows.
BLOCK_FIELDS = (
    "start",
    "end",
    "sha256",
    "first_record",
    "records",
    "kept_docs",
    "kept_tokens",
    "kept_segments",
    "ledger_sha256",
)
COUNT_FIELDS = ("start", "end", "records", "kept_docs", "kept_tokens", "kept_segments")  # what a plan reads
BLOCKS_SCHEMA = pa.schema(
    [("shard", pa.int32())]
    + [(name, pa.string() if name.endswith("sha256") else pa.int64()) for name in BLOCK_FIELDS]
)
ROWS_PER_GROUP = 1 << 14  # rows per row group: a shard's rows are read by the row groups that hold them
NO_RECORDS = -1  # ``records`` unknown (None) in the count array


def index_digest(blocks: Sequence[Mapping[str, Any]]) -> str:
    """``blocks_sha256``: sha256 of a shard's block index as canonical JSON."""
    return hashlib.sha256(SORTED_ASCII.encode(list(blocks))).hexdigest()


def count_rows(blocks: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``[blocks, COUNT_FIELDS]`` little-endian int64 of a block index (``records`` None → ``NO_RECORDS``)."""
    rows = [[NO_RECORDS if b[f] is None else b[f] for f in COUNT_FIELDS] for b in blocks]
    return np.array(rows, dtype="<i8").reshape(len(rows), len(COUNT_FIELDS))


def counts_digest(rows: np.ndarray) -> str:
    """``block_counts_sha256``: sha256 of a shard's count rows (C order, little-endian int64)."""
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def write_blocks_file(path: Path, per_shard: Sequence[tuple[int, Sequence[Mapping[str, Any]]]]) -> None:
    """``blocks.parquet`` from ``(shard, block index)`` pairs in shard order."""
    with pq.ParquetWriter(path, BLOCKS_SCHEMA, compression="zstd") as writer:
        rows: list[dict[str, Any]] = []
        for shard, blocks in per_shard:
            rows.extend({"shard": shard, **b} for b in blocks)
            if len(rows) >= ROWS_PER_GROUP:
                writer.write_table(
                    pa.Table.from_pylist(rows, schema=BLOCKS_SCHEMA), row_group_size=ROWS_PER_GROUP
                )
                rows = []
        if rows:
            writer.write_table(
                pa.Table.from_pylist(rows, schema=BLOCKS_SCHEMA), row_group_size=ROWS_PER_GROUP
            )


@dataclass(frozen=True)
class BlockCounts:
    """What the plan reads of every block, compact: shard ``s`` has rows ``offsets[s]:offsets[s + 1]`` of
    ``rows`` (``[blocks, COUNT_FIELDS]`` int64); columns by name through :meth:`column`."""

    offsets: np.ndarray
    rows: np.ndarray

    def column(self, name: str) -> np.ndarray:
        return self.rows[:, COUNT_FIELDS.index(name)]

    def of(self, shard: int) -> np.ndarray:
        return self.rows[self.offsets[shard] : self.offsets[shard + 1]]

    def count(self, shard: int) -> int:
        return int(self.offsets[shard + 1] - self.offsets[shard])

    def block_shard(self) -> np.ndarray:
        """The shard of every block (``[blocks]`` int64)."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))


def read_block_counts(path: Path, shards: int) -> BlockCounts | str:
    """The count columns of ``blocks.parquet`` (row group by row group into one array), or what is wrong with
    its layout (shards out of order or outside ``range(shards)``)."""
    parquet = pq.ParquetFile(path)
    rows = np.empty((parquet.metadata.num_rows, len(COUNT_FIELDS)), dtype="<i8")
    shard_of = np.empty(parquet.metadata.num_rows, dtype=np.int64)
    at = 0
    for g in range(parquet.num_row_groups):
        table = parquet.read_row_group(g, columns=["shard", *COUNT_FIELDS])
        n = table.num_rows
        shard_of[at : at + n] = table.column("shard").to_numpy()
        for j, name in enumerate(COUNT_FIELDS):
            column = table.column(name)  # fill_null only where a null is (it loads pyarrow.compute: ~30 ms)
            rows[at : at + n, j] = (column.fill_null(NO_RECORDS) if column.null_count else column).to_numpy()
        at += n
    if len(shard_of) and (np.any(np.diff(shard_of) < 0) or shard_of[0] < 0 or shard_of[-1] >= shards):
        return f"{path.name}: rows are not in shard order within 0..{shards - 1}"
    offsets = np.zeros(shards + 1, dtype=np.int64)
    np.cumsum(np.bincount(shard_of, minlength=shards), out=offsets[1:])
    return BlockCounts(offsets, rows)


class BlockRows:
    """Reads the full rows of a shard's blocks from ``blocks.parquet`` (the row groups holding them; the last
    two row groups read are kept, since a shard's neighbours are usually asked for next)."""

    KEPT_GROUPS = 2

    def __init__(self, path: Path):
        self.parquet = pq.ParquetFile(path)
        sizes = [self.parquet.metadata.row_group(g).num_rows for g in range(self.parquet.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._groups: dict[int, pa.Table] = {}

    def _group(self, g: int) -> pa.Table:
        table = self._groups.pop(g, None)
        if table is None:
            table = self.parquet.read_row_group(g, columns=list(BLOCK_FIELDS))
        self._groups[g] = table  # most recent last
        while len(self._groups) > self.KEPT_GROUPS:
            del self._groups[next(iter(self._groups))]
        return table

    def rows(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """Rows ``[lo, hi)`` as block dicts (``BLOCK_FIELDS``), in order."""
        out: list[dict[str, Any]] = []
        g = int(np.searchsorted(self.group_starts, lo, side="right")) - 1
        while lo < hi:
            first, end = int(self.group_starts[g]), int(self.group_starts[g + 1])
            part = self._group(g).slice(lo - first, min(hi, end) - lo)
            out.extend(part.to_pylist())
            lo, g = min(hi, end), g + 1
        return out
