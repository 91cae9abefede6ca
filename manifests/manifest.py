"""The manifest on disk: ``manifest.json``, ``shards.parquet`` and ``documents.parquet``.

A manifest directory holds

- ``manifest.json``  — format version, ``manifest_id``, Merkle root, tokenizer, filter and sequence
  config, seed, mixture entries, tool version, creation time and totals;
- ``shards.parquet`` — one row per shard (``SHARD_SCHEMA``), in mixture order, each with the two digests
  of its block index (``block_index.py``);
- ``blocks.parquet`` — the block index of every shard, one row per block: record-aligned byte ranges
  with a sha256 each, their first record and kept totals, and the digest of their documents-ledger rows;
- ``documents/NNNNNN.parquet`` — the per-document ledger of shard NNNNNN (``DOCUMENT_SCHEMA``), one row
  per input record, one row group per block: what was kept, held out, filtered or rejected, and how many
  tokens each kept document contributes. The stream plans from it without re-reading the corpus, and a
  reader touches only the ledgers of the blocks it owns.

Every consumer opens a manifest through :class:`Manifest`, which recomputes the manifest id, the
Merkle root, the totals and every shard's block counts from the files and refuses a manifest that does not
match (:class:`ManifestTampered`); a shard's full block index is checked against its digest when first
used (``Manifest(every_block=True)``: all of them at open), and each ledger row group against its block's
digest when read. Opening costs O(shards) Python work and O(blocks) only in array work (invariant 10).

Optionally ``dropped_samples.jsonl`` (``build manifest --dropped-samples K``): the first K dropped
records per reason, for inspection; it is not covered by ``manifest_id`` or the Merkle root.

The directory is written atomically (built in a sibling temp dir, then renamed), so a manifest
either exists whole or not at all.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.core.canonical_json import ORDERED_UTF8
from elm_data.core.errors import InvalidValue, NotFound
from elm_data.core.outputs import staged_dir

from .block_index import (
    BLOCKS_FILE,
    BlockCounts,
    BlockRows,
    read_block_counts,
    write_blocks_file,
)
from .identity import FORMAT_VERSION, ManifestTampered, block_tampering, index_matches, tampering
from .shard_records import SHARD_SCHEMA, ShardRecord, shards_table

MANIFEST_FILE, SHARDS_FILE, DOCUMENTS_DIR = "manifest.json", "shards.parquet", "documents"
CORE_FILES = (MANIFEST_FILE, SHARDS_FILE, BLOCKS_FILE, DOCUMENTS_DIR)
DROPPED_SAMPLES_FILE = "dropped_samples.jsonl"  # optional inspection aid; not part of the identity

DOCUMENT_SCHEMA = pa.schema(
    [
        ("shard", pa.int32()),
        ("index", pa.int64()),  # row/line in the shard
        ("doc_id", pa.string()),  # stable id (native or derived); "" for rejections
        ("status", pa.string()),  # "kept" | "heldout" | "filtered" | "rejected"
        ("reason", pa.string()),  # filter or rejection reason; null when kept
        ("count", pa.int32()),  # input records this row stands for (>1 only for whole-shard rejections)
        ("chars", pa.int64()),
        ("tokens", pa.int32()),  # kept tokens (sum over kept pieces), no BOS/EOS; 0 unless kept or held out
        ("segments", pa.int32()),  # kept pieces: 1 for a kept doc in packed mode, 0 unless kept or held out
        ("duplicate_of", pa.string()),  # reason "duplicate": doc id of the kept first copy; else null
    ]
)


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table.cast(schema)``, skipped where its schema already is ``schema`` (the same values: a cast loads
    pyarrow.compute, ~30 ms of a build's start-up)."""
    return table if table.schema.equals(schema) else table.cast(schema)


def ledger_digest(table: pa.Table) -> str:
    """sha256 of a documents-ledger slice's content (column values in schema order), independent of
    encoding."""
    values = conformed(table.select(list(DOCUMENT_SCHEMA.names)), DOCUMENT_SCHEMA).to_pydict()
    return hashlib.sha256(ORDERED_UTF8.encode(values)).hexdigest()


def split_by_block(blocks: Sequence[Mapping[str, Any]], table: pa.Table) -> list[pa.Table]:
    """The shard's ledger rows per block (rows are in record order; a row belongs to the block holding its
    index)."""
    firsts = [b["first_record"] for b in blocks]
    indices = table.column("index").to_pylist()
    cuts = [bisect.bisect_left(indices, f) for f in firsts[1:]]
    bounds = [0, *cuts, table.num_rows]
    return [table.slice(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:], strict=False)]


def ledger_path(manifest_dir: str | Path, shard: int) -> Path:
    return Path(manifest_dir) / DOCUMENTS_DIR / f"{shard:06d}.parquet"


def data_files(manifest_dir: str | Path) -> list[str]:
    """The manifest's parquet files (shards, blocks, then every ledger), relative to its directory, in
    order."""
    ledgers = sorted(p.name for p in (Path(manifest_dir) / DOCUMENTS_DIR).glob("*.parquet"))
    return [SHARDS_FILE, BLOCKS_FILE, *(f"{DOCUMENTS_DIR}/{name}" for name in ledgers)]


def _read_manifest_info(manifest_file: Path) -> dict[str, Any]:
    """The parsed ``manifest.json``; a file that is not a JSON object is a damaged manifest."""
    try:
        info = json.loads(manifest_file.read_text())
    # JSONDecodeError and UnicodeDecodeError are both ValueErrors; RecursionError: nested ~1,000 levels deep
    except (ValueError, RecursionError) as exc:
        raise ManifestTampered(f"{manifest_file}: damaged manifest, not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ManifestTampered(f"{manifest_file}: damaged manifest, expected a JSON object")
    return info


class Manifest:
    """Read access to a manifest directory; never touches the corpus itself.

    Opening checks the manifest against itself unless ``verify=False``: id, Merkle root, totals (see
    ``identity.tampering``) and every shard's block counts (:attr:`block_counts`, compact arrays the plan
    reads). A shard's full block index (byte ranges, sha256s, ledger digests) is checked against its digest
    when first used (:meth:`blocks`), every shard's at open with ``every_block=True``; every ledger row group
    read is checked against its block's ``ledger_sha256``.
    """

    INDEX_BLOCKS_KEPT = 1 << 15  # checked block-index rows kept (whole shards, the most recent ones)

    def __init__(self, path: str | Path, verify: bool = True, every_block: bool = False):
        self.path = Path(path)
        # whether opening checked it (then a consumer handed it need not open it again)
        self.verified = verify
        self._checked_index: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self._index_lock = threading.Lock()
        manifest_file = self.path / MANIFEST_FILE
        if not manifest_file.exists():
            raise NotFound(f"{self.path} is not a manifest directory (no {MANIFEST_FILE})")
        self.info: dict[str, Any] = _read_manifest_info(manifest_file)
        if self.info.get("format_version") != FORMAT_VERSION:
            raise InvalidValue(
                f"{manifest_file}: format_version {self.info.get('format_version')}, expected "
                f"{FORMAT_VERSION} "
                "(rebuild the manifest with this version of elm-data)"
            )
        if verify:
            problems = tampering(self.info, self.shards) or block_tampering(self, every_block)
            if problems:
                raise ManifestTampered(f"{self.path}: refusing an altered manifest: {'; '.join(problems)}")

    @property
    def manifest_id(self) -> str:
        return self.info["manifest_id"]

    @property
    def synthetic(self) -> bool:
        """Whether the shards hold generated text (the sample, ``synthetic: true``), not a real corpus (in the
        id)."""
        return self.info.get("synthetic") is True

    @cached_property
    def shards(self) -> list[ShardRecord]:
        # no pandas
        table = conformed(pq.ParquetFile(self.path / SHARDS_FILE).read(SHARD_SCHEMA.names), SHARD_SCHEMA)
        # column-wise: no dict per row
        columns = [table.column(name).to_pylist() for name in SHARD_SCHEMA.names]
        try:
            return [ShardRecord.from_values(values) for values in zip(*columns, strict=True)]
        except (ValueError, RecursionError) as exc:  # a by-reason column that is no JSON (or ~1,000 deep)
            problem = f"{type(exc).__name__}: {exc}"[:200]
            raise ManifestTampered(
                f"{self.path / SHARDS_FILE}: damaged manifest, a JSON column ({problem})"
            ) from None

    @cached_property
    def _block_counts(self) -> BlockCounts | str:
        return read_block_counts(self.path / BLOCKS_FILE, len(self.shards))

    def block_counts_or_problem(self) -> BlockCounts | str:
        """:attr:`block_counts`, or what is wrong with the layout of ``blocks.parquet``."""
        return self._block_counts

    @property
    def block_counts(self) -> BlockCounts:
        """Every block's ``COUNT_FIELDS`` in one array (checked at open against each shard's digest)."""
        counts = self._block_counts
        if isinstance(counts, str):
            raise ManifestTampered(f"{self.path}: refusing an altered manifest: {counts}")
        return counts

    def blocks(self, shard: int) -> list[dict[str, Any]]:
        """Shard ``shard``'s block index (``BLOCK_FIELDS`` dicts), checked against its ``blocks_sha256`` on
        first use, before any of it is returned; the most recent :attr:`INDEX_BLOCKS_KEPT` rows are kept
        checked."""
        with self._index_lock:
            kept = self._checked_index.get(shard)
            if kept is not None:
                self._checked_index.move_to_end(shard)
                return kept
            counts = self.block_counts
            rows = self._block_rows.rows(int(counts.offsets[shard]), int(counts.offsets[shard + 1]))
            if not index_matches(self.shards[shard], rows):
                raise ManifestTampered(
                    f"{self.path}: refusing an altered manifest: the block index of shard {shard} in "
                    f"{BLOCKS_FILE} "
                    "differs from the digest its shard record commits"
                )
            self._checked_index[shard] = rows
            while (
                sum(map(len, self._checked_index.values())) > self.INDEX_BLOCKS_KEPT
                and len(self._checked_index) > 1
            ):
                self._checked_index.popitem(last=False)
            return rows

    @cached_property
    def _block_rows(self) -> BlockRows:
        return BlockRows(self.path / BLOCKS_FILE)

    def block_documents(self, shard: int, block: int, parquet: pq.ParquetFile | None = None) -> pa.Table:
        """The ledger rows of one block of one shard, read and checked against the block's ``ledger_sha256``
        on every call (nothing is kept: the stream reads each block's rows once, in its plan's walk, and hands
        the reader the kept records from there: ``pipeline/stream/plan.py:PlannedDoc.block_kept``)."""
        parquet = parquet or pq.ParquetFile(ledger_path(self.path, shard))
        expected = self.blocks(shard)[block]["ledger_sha256"]
        table = conformed(parquet.read_row_group(block), DOCUMENT_SCHEMA)
        if ledger_digest(table) != expected:
            raise ManifestTampered(
                f"{ledger_path(self.path, shard)}: row group {block} does not match the ledger digest its "
                "block "
                "records (documents ledger altered or reordered)"
            )
        return table

    def documents(self, shard: int, columns: list[str] | None = None) -> pa.Table:
        """The per-document ledger of one shard (all its blocks, checked); ``columns``: only these."""
        parquet = pq.ParquetFile(ledger_path(self.path, shard))
        blocks = self.block_counts.count(shard)
        if parquet.num_row_groups != blocks:
            raise ManifestTampered(
                f"{ledger_path(self.path, shard)}: {parquet.num_row_groups} row groups for {blocks} blocks"
            )
        table = pa.concat_tables([self.block_documents(shard, b, parquet) for b in range(blocks)])
        return table if columns is None else table.select(columns)

    def ledger_problems(self) -> list[str]:
        """What is wrong with the documents ledger (empty when sound): a file missing, unreadable or with a
        row group that does not match its block's digest, a shard whose ledger rows do not add up to its
        read/kept/tokens counts, or a file in ``documents/`` that is no shard's ledger (every row is read)."""
        problems = [
            f"shard {r.shard} ledger: {problem}" for r in self.shards if (problem := self._ledger_problem(r))
        ]
        expected = {ledger_path(self.path, r.shard).name for r in self.shards}
        folder = self.path / DOCUMENTS_DIR
        stray = sorted(p.name for p in folder.iterdir() if p.name not in expected) if folder.is_dir() else []
        if stray:
            problems.append(
                f"{DOCUMENTS_DIR}/ holds files that are no shard's ledger: {', '.join(stray[:5])}"
            )
        return problems

    def _ledger_problem(self, record: ShardRecord) -> str | None:
        try:
            docs = self.documents(record.shard, ["status", "count", "tokens"])
        except Exception as e:  # missing, unreadable or altered (ManifestTampered) ledger file
            return str(e)
        status, counts, tokens = docs.column("status"), docs.column("count"), docs.column("tokens")

        import pyarrow.compute as pc  # here: a build, which writes ledgers, never loads it

        def total(values, of: str | None = None) -> int:
            return pc.sum(values if of is None else pc.if_else(pc.equal(status, of), values, 0)).as_py() or 0

        ledger = (
            total(counts),
            total(counts, "kept"),
            total(tokens, "kept"),
            total(counts, "heldout"),
            total(tokens, "heldout"),
            total(counts, "filtered"),
            total(counts, "rejected"),
        )
        said = (
            record.docs_read,
            record.docs_kept,
            record.tokens,
            record.docs_heldout,
            record.heldout_tokens,
            record.docs_filtered,
            record.docs_rejected,
        )
        if ledger != said:
            names = "read/kept/tokens/held-out/held-out tokens/filtered/rejected"
            return (
                f"{names} {'/'.join(map(str, ledger))} in the documents ledger, "
                f"{'/'.join(map(str, said))} in shards.parquet"
            )
        return None

    def check_ledgers(self) -> None:
        """Raise :class:`ManifestTampered` naming what :meth:`ledger_problems` finds: for every consumer that
        reports or publishes counts the ledger must agree with (audit, Croissant)."""
        problems = self.ledger_problems()
        if problems:
            raise ManifestTampered(
                f"{self.path}: refusing an altered documents ledger: {'; '.join(problems[:3])}"
            )

    def all_documents(self) -> pa.Table:
        return pa.concat_tables([self.documents(r.shard) for r in self.shards])


def write_ledger(path: Path, blocks: Sequence[Mapping[str, Any]], table: pa.Table) -> None:
    """One shard's ledger: one row group per block (an empty block keeps an empty row group)."""
    with pq.ParquetWriter(path, DOCUMENT_SCHEMA, compression="zstd") as writer:
        for part in split_by_block(blocks, conformed(table, DOCUMENT_SCHEMA)):
            writer.write_table(part, row_group_size=max(1, part.num_rows))


def write_manifest_dir(
    out_dir: str | Path,
    info: dict[str, Any],
    records: list[ShardRecord],
    document_tables: list[pa.Table],
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a complete manifest directory atomically (temp sibling + rename).

    ``document_tables[i]`` holds the documents of ``records[i]``; each becomes one row group.
    ``extra_files``: further files (plain name -> bytes, e.g. ``dropped_samples.jsonl``) written
    inside the same atomic swap; they are not part of the manifest's identity.
    An existing manifest at ``out_dir`` is replaced only once the new one is complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if len(document_tables) != len(records):
        raise ValueError("one documents table per shard record is required")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if name in CORE_FILES or not name or name.startswith(".") or Path(name).name != name:
            raise ValueError(
                f"extra manifest file {name!r} must be a plain file name other than {CORE_FILES}"
            )
    with staged_dir(out_dir) as tmp:  # out_dir holds the old manifest or the new one, never nothing
        for name, data in sorted(extra_files.items()):
            (tmp / name).write_bytes(data)
        pq.write_table(shards_table(records), tmp / SHARDS_FILE, compression="zstd")
        write_blocks_file(tmp / BLOCKS_FILE, [(r.shard, r.blocks) for r in records])
        (tmp / DOCUMENTS_DIR).mkdir()
        for record, table in zip(records, document_tables, strict=True):
            write_ledger(ledger_path(tmp, record.shard), record.blocks, table)
        (tmp / MANIFEST_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir
