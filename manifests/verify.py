"""Verify a manifest: its own integrity, and that every shard still has the recorded bytes.

Checks, in order: the manifest id, the Merkle root over ``shards.parquet`` and the totals recompute
(``identity.tampering``); every shard's ledger file holds one row group per block, each matching its
block's ledger digest, whose rows add up to the shard's counts, and ``documents/`` holds nothing else
(``Manifest.ledger_problems``); and every shard re-hashes, in one read,
to its recorded sha256, size and per-block sha256s. Never reads documents, only bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from elm_data.sources.blocks import hash_blocks
from elm_data.sources.readers import size_of

from .identity import ManifestTampered, block_tampering, tampering
from .manifest import Manifest
from .shard_records import ShardRecord


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
    problems = tampering(manifest.info, manifest.shards) + block_tampering(manifest, every_block=True)
    return problems + manifest.ledger_problems()


def check_shard(record: ShardRecord, blocks: list[dict]) -> ShardProblem | None:
    """Re-hash one shard against its record and its (checked) block index ``blocks``."""
    try:
        size = size_of(record.uri)
        if size != record.size_bytes:
            return ShardProblem(
                record.shard, record.uri, "mismatch", f"{size} bytes, recorded {record.size_bytes}"
            )
        actual, digests = hash_blocks(record.uri, [b["start"] for b in blocks], size)
    except FileNotFoundError:
        return ShardProblem(record.shard, record.uri, "missing", "no such file")
    except Exception as e:
        return ShardProblem(record.shard, record.uri, "unreadable", f"{type(e).__name__}: {e}")
    if actual != record.sha256:
        return ShardProblem(
            record.shard, record.uri, "mismatch", f"sha256 {actual}, recorded {record.sha256}"
        )
    bad = [i for i, (b, d) in enumerate(zip(blocks, digests, strict=True)) if b["sha256"] != d]
    if bad:
        return ShardProblem(
            record.shard, record.uri, "mismatch", f"block index disagrees with the bytes (blocks {bad})"
        )
    return None


def _index_of(manifest: Manifest, shard: int) -> list[dict]:
    try:
        return manifest.blocks(shard)
    except ManifestTampered:  # reported by check_manifest_integrity; hash the shard as one block
        return [{"start": 0, "sha256": None}]


def verify_manifest(
    path: str | Path, workers: int = 4, on_shard: Callable[[ShardRecord], None] | None = None
) -> VerifyReport:
    """Re-hash every shard of the manifest at ``path`` (``workers`` threads) and check the manifest itself."""
    manifest = Manifest(path, verify=False)  # report what is wrong instead of refusing to open
    report = VerifyReport(manifest.manifest_id, manifest_problems=check_manifest_integrity(manifest))
    records = manifest.shards
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = pool.map(lambda r: check_shard(r, _index_of(manifest, r.shard)), records)
        for record, problem in zip(records, problems, strict=True):
            report.shards_checked += 1
            if problem is not None:
                report.shard_problems.append(problem)
            if on_shard is not None:
                on_shard(record)
    return report
