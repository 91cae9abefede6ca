"""Verify a manifest: its own integrity, and that every shard still has the recorded bytes.

Checks, in order: the Merkle root over ``shards.parquet`` equals ``manifest.json``'s; the manifest id
recomputes from what it covers; ``documents.parquet`` holds one row group per shard whose rows add up
to the shard's counts; and every shard re-hashes to its recorded sha256 and size. Never reads
documents, only bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from elm_data.sources.readers import sha256_of, size_of

from .identity import manifest_id_of_info, merkle_root_of
from .manifest import Manifest, ShardRecord


@dataclass
class ShardProblem:
    shard: int
    uri: str
    kind: str  # "missing" | "mismatch" | "unreadable"
    detail: str


@dataclass
class VerifyReport:
    manifest_id: str
    shards_checked: int = 0
    shard_problems: list[ShardProblem] = field(default_factory=list)
    manifest_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.shard_problems and not self.manifest_problems

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.shards_checked} shard(s) match manifest {self.manifest_id}"
        lines = [f"FAILED: manifest {self.manifest_id}"]
        lines += [f"  manifest: {p}" for p in self.manifest_problems]
        lines += [f"  {p.kind}: {p.uri} ({p.detail})" for p in self.shard_problems]
        return "\n".join(lines)


def check_manifest_integrity(manifest: Manifest) -> list[str]:
    """Problems with the manifest files themselves (empty when consistent)."""
    problems = []
    records = manifest.shards
    if merkle_root_of(records) != manifest.info.get("merkle_root"):
        problems.append("Merkle root of shards.parquet does not match manifest.json (shard records altered)")
    try:
        if manifest_id_of_info(manifest.info, records) != manifest.manifest_id:
            problems.append("manifest_id does not recompute from the shards and config it covers")
    except KeyError as e:
        problems.append(f"manifest.json lacks {e}")
    problems += _check_documents(manifest, records)
    return problems


def _check_documents(manifest: Manifest, records: list[ShardRecord]) -> list[str]:
    try:
        n_groups = manifest._documents_file.num_row_groups
    except Exception as e:  # unreadable parquet
        return [f"documents.parquet unreadable: {e}"]
    if n_groups != len(records):
        return [f"documents.parquet has {n_groups} row groups for {len(records)} shards"]
    problems = []
    for r in records:
        docs = manifest.documents(r.shard)
        status = docs.column("status")
        counts = docs.column("count")
        read = pc.sum(counts).as_py() or 0
        kept = pc.sum(pc.if_else(pc.equal(status, "kept"), counts, 0)).as_py() or 0
        tokens = pc.sum(docs.column("tokens")).as_py() or 0
        if (read, kept, tokens) != (r.docs_read, r.docs_kept, r.tokens):
            problems.append(
                f"shard {r.shard} ({r.uri}): documents ledger says read/kept/tokens {read}/{kept}/{tokens}, "
                f"shards.parquet {r.docs_read}/{r.docs_kept}/{r.tokens}"
            )
    return problems


def check_shard(record: ShardRecord) -> ShardProblem | None:
    try:
        actual = sha256_of(record.uri)
    except FileNotFoundError:
        return ShardProblem(record.shard, record.uri, "missing", "no such file")
    except Exception as e:
        return ShardProblem(record.shard, record.uri, "unreadable", f"{type(e).__name__}: {e}")
    if actual != record.sha256:
        return ShardProblem(record.shard, record.uri, "mismatch", f"sha256 {actual}, recorded {record.sha256}")
    size = size_of(record.uri)
    if size != record.size_bytes:
        return ShardProblem(record.shard, record.uri, "mismatch", f"{size} bytes, recorded {record.size_bytes}")
    return None


def verify_manifest(
    path: str | Path, workers: int = 4, on_shard: Callable[[ShardRecord], None] | None = None
) -> VerifyReport:
    """Re-hash every shard of the manifest at ``path`` (``workers`` threads) and check the manifest itself."""
    manifest = Manifest(path)
    report = VerifyReport(manifest.manifest_id, manifest_problems=check_manifest_integrity(manifest))
    records = manifest.shards
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for record, problem in zip(records, pool.map(check_shard, records), strict=True):
            report.shards_checked += 1
            if problem is not None:
                report.shard_problems.append(problem)
            if on_shard is not None:
                on_shard(record)
    return report
