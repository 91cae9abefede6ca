"""A stream reader's start-up against the size of the corpus (issue 27): open + self-check + plan, per
process.

Synthetic manifests of N blocks (``--blocks``, default 10³ … 10⁶), ``--blocks-per-shard`` blocks per shard
(the OpenELM mix: ~1.7 M blocks of 4 MiB in ~10⁴ files, so ~100-200 per shard; the Pile's 30 files hold
thousands), ``--sources`` sources, realistic per-block numbers (4 MiB byte ranges, 1,000-2,000 kept documents,
random sha256s that do not compress). Only what start-up reads is written: ``manifest.json`` (sealed by the
library itself), ``shards.parquet`` and, from format 3 on, ``blocks.parquet``; no ledgers (start-up reads
none).

For each N a fresh process imports everything, then runs what ``TokenStream`` does in every process (main and
each DataLoader worker): ``Manifest(dir)`` (its self-check) + ``default_partitions`` + ``Plan``, packed,
seq_len 2048, batch 8, natural. Reported: CPU seconds (``time.process_time``), wall seconds, the RSS it added
(``VmRSS`` after − before) and its peak (``VmHWM`` − the RSS before), median of ``--repeats`` processes.
``--before-tree DIR`` runs the same in an importable copy of another tree (``PYTHONPATH=DIR``, ahead of the
editable install; its manifests are written by that tree's own code, format 2) for a side-by-side. The last
two sizes are extrapolated linearly to ``--extrapolate`` blocks.

    python benchmarks/bench_startup.py --work /tmp/bench_startup
    python benchmarks/bench_startup.py --blocks 1e3,5e4 --before-tree /tmp/old_tree
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCK_BYTES = 4 << 20


def _memory_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _blocks_of(shard: int, n: int, rng) -> list[dict[str, Any]]:
    kept = rng.integers(1000, 2000, n)
    records = kept + rng.integers(0, 300, n)
    tokens = kept * rng.integers(900, 1100, n)
    digests = rng.bytes(64 * n).hex()
    return [
        {
            "start": b * BLOCK_BYTES,
            "end": (b + 1) * BLOCK_BYTES,
            "sha256": digests[128 * b : 128 * b + 64],
            "first_record": int(records[:b].sum()),
            "records": int(records[b]),
            "kept_docs": int(kept[b]),
            "kept_tokens": int(tokens[b]),
            "kept_segments": int(kept[b]),
            "ledger_sha256": digests[128 * b + 64 : 128 * (b + 1)],
        }
        for b in range(n)
    ]


def write_child(path: str, blocks: int, per_shard: int, sources: int) -> None:
    """(subprocess, in the tree under test) A synthetic manifest of ``blocks`` blocks that its ``Manifest``
    accepts."""
    import hashlib

    import numpy as np
    import pyarrow.parquet as pq

    from elm_data.manifests import manifest as m
    from elm_data.manifests.identity import seal

    rng = np.random.default_rng(0)
    records = []
    for shard in range(-(-blocks // per_shard)):
        index = _blocks_of(shard, min(per_shard, blocks - shard * per_shard), rng)
        read = sum(b["records"] for b in index)
        kept = sum(b["kept_docs"] for b in index)
        key = f"source{shard % sources:02d}"
        records.append(
            m.ShardRecord(
                shard=shard,
                source=key,
                subset="default",
                uri=f"/nowhere/{shard}.jsonl",
                size_bytes=index[-1]["end"],
                sha256=hashlib.sha256(f"shard {shard}".encode()).hexdigest(),
                licence="synthetic",
                docs_read=read,
                docs_kept=kept,
                docs_filtered=read - kept,
                filtered_by_reason={"min_tokens": read - kept},
                chars=4 * sum(b["kept_tokens"] for b in index),
                tokens=sum(b["kept_tokens"] for b in index),
                segments=kept,
                format="jsonl",
                blocks=index,
            )
        )
    entries = [{"source": f"source{i:02d}", "subset": "default", "weight": None} for i in range(sources)]
    info = {
        "format_version": m.FORMAT_VERSION,
        "name": Path(path).name,
        "tokenizer": {"uri": "unused", "sha256": "0" * 64},
        "filters": {},
        "pass": {"filters": {}, "tokenizer": {"sha256": "0" * 64}},
        "sequences": {"mode": "packed", "seq_len": 2048},
        "seed": 0,
        "targets": None,
        "mixture": [e | {"shards": [], "resolved_shards": None} for e in entries],
    }
    out = Path(path)
    (out / m.DOCUMENTS_DIR).mkdir(parents=True)
    pq.write_table(m.shards_table(records), out / m.SHARDS_FILE, compression="zstd")
    if hasattr(m, "write_blocks_file"):
        m.write_blocks_file(out / m.BLOCKS_FILE, [(r.shard, r.blocks) for r in records])
    (out / m.MANIFEST_FILE).write_text(json.dumps(seal(info, records), indent=2, sort_keys=True))


def startup_child(path: str) -> None:
    """(subprocess) What every stream process does before its first batch: open, self-check, plan."""
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream.plan import Plan, PlanConfig, default_partitions

    config = PlanConfig(mode="packed", seq_len=2048, batch_size=8, seed=0, weights=None, epochs=1)
    rss0, cpu0, wall0 = _memory_mib("VmRSS"), time.process_time(), time.perf_counter()
    manifest = Manifest(path)
    plan = Plan(manifest, dataclasses.replace(config, partitions=default_partitions(manifest, config)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "wall_s": wall,
                "rss_mib": _memory_mib("VmRSS") - rss0,
                "peak_mib": _memory_mib("VmHWM") - rss0,
                "base_mib": rss0,
                "partitions": plan.partitions,
            }
        )
    )


def _run(tree: Path | None, *args: str) -> str:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = f"{tree}{os.pathsep}{env.get('PYTHONPATH', '')}"
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


MEASURED = ("cpu_s", "wall_s", "rss_mib", "peak_mib", "base_mib")


def measure(tree: Path | None, label: str, args) -> list[dict[str, Any]]:
    rows = []
    for n in [int(float(x)) for x in args.blocks.split(",")]:
        path = args.work / f"{label}-{n}-b{args.blocks_per_shard}-s{args.sources}"
        if not (path / "manifest.json").exists():
            t0 = time.perf_counter()
            _run(tree, "_write", str(path), str(n), str(args.blocks_per_shard), str(args.sources))
            print(f"  ({label}: wrote {n:,} blocks in {time.perf_counter() - t0:.1f} s)", flush=True)
        got = [json.loads(_run(tree, "_startup", str(path))) for _ in range(args.repeats)]
        row = {
            "label": label,
            "blocks": n,
            "shards": -(-n // args.blocks_per_shard),
            **{k: statistics.median(g[k] for g in got) for k in MEASURED},
            "partitions": got[0]["partitions"],
            "load": os.getloadavg()[0],
        }
        rows.append(row)
        print(
            f"  {label:6s} {n:>9,} blocks ({row['shards']:,} shards): CPU {row['cpu_s']:7.3f} s, wall "
            f"{row['wall_s']:7.3f} s, +RSS {row['rss_mib']:7.1f} MiB, +peak {row['peak_mib']:7.1f} MiB "
            f"(post-import RSS {row['base_mib']:.0f} MiB), P = {row['partitions']}, load {row['load']:.1f}",
            flush=True,
        )
    return rows


def report(rows: list[dict[str, Any]], target: int) -> None:
    small, mid = rows[0], next((r for r in rows if r["blocks"] == 50_000), None)
    if mid is not None:
        print(
            f"  {rows[0]['label']}: 5x10^4 vs {small['blocks']:,} blocks: CPU "
            f"x{mid['cpu_s'] / small['cpu_s']:.2f} "
            f"(goal <= 3), +{mid['rss_mib'] - small['rss_mib']:.1f} MiB RSS, "
            f"+{mid['peak_mib'] - small['peak_mib']:.1f} MiB peak (goal <= 64)"
        )
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        per = {k: (b[k] - a[k]) / (b["blocks"] - a["blocks"]) for k in ("cpu_s", "rss_mib", "peak_mib")}
        at = {k: b[k] + per[k] * (target - b["blocks"]) for k in per}
        print(
            f"  {rows[0]['label']}: extrapolated to {target:,} blocks (linear from the last two sizes): CPU "
            f"{at['cpu_s']:.1f} s, +RSS {at['rss_mib']:.0f} MiB, +peak {at['peak_mib']:.0f} MiB "
            f"({per['cpu_s'] * 1e6:.2f} us, {per['rss_mib'] * 2**20:.0f} bytes of RSS and "
            f"{per['peak_mib'] * 2**20:.0f} of peak per block)"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_write":
        return write_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    if len(sys.argv) > 1 and sys.argv[1] == "_startup":
        return startup_child(sys.argv[2])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_startup"))
    parser.add_argument("--blocks", default="1e3,1e4,5e4,2e5,1e6")
    parser.add_argument("--blocks-per-shard", type=int, default=100)
    parser.add_argument("--sources", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extrapolate", type=int, default=1_700_000)
    parser.add_argument(
        "--before-tree", type=Path, help="an importable copy of another tree, measured alongside"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(
        f"start-up: {args.blocks_per_shard} blocks per shard, {args.sources} sources; {os.cpu_count()} CPUs"
    )
    for tree, label in ((args.before_tree, "before"), (None, "after")):
        if label == "before" and tree is None:
            continue
        report(measure(tree, label, args), args.extrapolate)


if __name__ == "__main__":
    main()
