"""Synthetic manifests for plan/mixing tests: real manifest files (block index, per-shard ledgers, id, Merkle
root).

No corpus exists behind them (shard URIs point nowhere): they serve everything the plan reads from a
manifest alone, and ``Manifest()`` accepts them because their id, Merkle root and totals recompute.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa

from elm_data.manifests.block_index import BLOCK_FIELDS
from elm_data.manifests.identity import FORMAT_VERSION, seal
from elm_data.manifests.manifest import (
    DOCUMENT_SCHEMA,
    Manifest,
    ledger_digest,
    split_by_block,
    write_manifest_dir,
)
from elm_data.manifests.shard_records import ShardRecord

TOKENIZER_SHA256 = "0" * 64


def _blocks(rows: list[dict], shard: int, records_per_block: int) -> list[dict]:
    """A block index over ``rows``: ``records_per_block`` records per block, kept totals and ledger
    digests."""
    firsts = list(range(0, max(1, len(rows)), records_per_block))
    table = pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)
    parts = split_by_block([{"first_record": f} for f in firsts], table)
    blocks = []
    for b, (first, part) in enumerate(zip(firsts, parts, strict=True)):
        kept = [r for r in part.to_pylist() if r["status"] == "kept"]
        blocks.append(
            {
                "start": first * 100,
                "end": (first + part.num_rows) * 100,
                "sha256": hashlib.sha256(f"{shard}:{b}".encode()).hexdigest(),
                "first_record": first,
                "records": part.num_rows,
                "kept_docs": len(kept),
                "kept_tokens": sum(r["tokens"] for r in kept),
                "kept_segments": sum(r["segments"] for r in kept),
                "ledger_sha256": ledger_digest(part),
            }
        )
        assert set(blocks[-1]) == set(BLOCK_FIELDS)
    return blocks


def synthetic_manifest(
    path: Path,
    layout: dict[str, list[int]],
    *,
    mode: str = "packed",
    seed: int = 0,
    weights: dict[str, float] | None = None,
    records_per_block: int = 8,
) -> Manifest:
    """A manifest with ``layout[key][i]`` records in shard i of source ``key``; about 1 in 5 is filtered.

    Kept documents get 50-400 tokens (1-3 segments in corenet mode); each shard is cut into blocks of
    ``records_per_block`` records. The data depend on ``path.name`` only, not on the temp folder.
    """
    rng = random.Random(path.name)
    records, tables, shard = [], [], 0
    for key, sizes in layout.items():
        source, subset = key.split("/")
        for n in sizes:
            rows = []
            for i in range(n):
                kept = rng.random() > 0.2
                rows.append(
                    {
                        "shard": shard,
                        "index": i,
                        "doc_id": f"{key}:{shard}:{i}",
                        "status": "kept" if kept else "filtered",
                        "reason": None if kept else "min_tokens",
                        "count": 1,
                        "chars": 1000,
                        "tokens": rng.randint(50, 400) if kept else 0,
                        "segments": (rng.randint(1, 3) if mode == "corenet" else 1) if kept else 0,
                    }
                )
            kept_rows = [r for r in rows if r["status"] == "kept"]
            records.append(
                ShardRecord(
                    shard=shard,
                    source=source,
                    subset=subset,
                    uri=f"/nowhere/{shard}.jsonl",
                    size_bytes=n * 100,
                    sha256=hashlib.sha256(f"shard {shard}".encode()).hexdigest(),
                    licence="test",
                    docs_read=n,
                    docs_kept=len(kept_rows),
                    docs_filtered=n - len(kept_rows),
                    filtered_by_reason={"min_tokens": n - len(kept_rows)} if len(kept_rows) < n else {},
                    chars=1000 * len(kept_rows),
                    tokens=sum(r["tokens"] for r in kept_rows),
                    segments=sum(r["segments"] for r in kept_rows),
                    format="jsonl",
                    blocks=_blocks(rows, shard, records_per_block),
                )
            )
            tables.append(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA))
            shard += 1
    info = sealed_info(path.name, list(layout), records, mode=mode, seed=seed, weights=weights)
    return Manifest(write_manifest_dir(path, info, records, tables))


def sealed_info(
    name: str,
    keys: list[str],
    records: list[ShardRecord],
    *,
    mode: str = "packed",
    seq_len: int = 2048,
    seed: int = 0,
    weights: dict[str, float] | None = None,
) -> dict:
    """The ``manifest.json`` of a synthetic manifest over ``records`` (sources ``keys``, "source/subset";
    a tokenizer of sha256 zeros, no filters), sealed: its id, Merkle root and totals recompute. Shared with
    ``benchmarks/bench_stream_scale.py``, which writes its ledgers itself at scale."""
    entries = [
        {"source": k.split("/")[0], "subset": k.split("/")[1], "weight": (weights or {}).get(k)} for k in keys
    ]
    info = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "tokenizer": {"uri": "unused", "sha256": TOKENIZER_SHA256},
        "filters": {},
        "pass": {"filters": {}, "tokenizer": {"sha256": TOKENIZER_SHA256}},
        "sequences": {"mode": mode, "seq_len": seq_len},
        "seed": seed,
        "mixture": [e | {"shards": []} for e in entries],
        "targets": None,
    }
    return seal(info, records)
