"""A stream reader's memory against shard and block size (issue 27): one process, one natural pass, RSS over
time.

``sample``
    A natural pass of a built manifest (``--manifest``, e.g. of ``elm-data sample --scale 300``; P = the
    stream's default; its first ``--max-batches`` batches when set) in one process (``StreamLoader``, no
    workers), once per ``--caps`` (``ELM_DATA_READER_MEMORY`` in bytes; ``none``: no cap, blocks held as
    before issue 27, though each view's buffer stays 128 KiB, not 1 MiB), each in a fresh process. Reported:
    RSS before the pass (after imports and start-up), VmHWM (peak) at the end and after the first ``--early``
    batches, batches, tokens, seconds, and the most verified block bytes held in memory (``HeldBlocks.held``).

``gzip``
    One single-member gzip JSONL shard of about ``--gzip-bytes`` compressed (default 1 GiB): records
    of 1 MiB of random punctuation (dropped by the character rule before tokenization, so the build
    stays cheap) and 64 ordinary documents spread through it, which the stream yields. Its manifest has one
    block, the whole file: the reader verifies it into a temp file (``SPILL_BYTES``) and decompresses it as a
    stream. Then the same measurement as ``sample``.

    python benchmarks/bench_reader_memory.py sample --manifest /tmp/s300/manifest --caps none,134217728
    python benchmarks/bench_reader_memory.py gzip --work /tmp/bench_reader_memory
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

UNCAPPED = 1 << 50
SEQ_LEN, BATCH = 2048, 8


def _memory_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def pass_child(manifest: str, early: int, most: int, tensors: bool) -> None:
    """(subprocess) One natural pass in this process (its first ``most`` batches when > 0); prints JSON
    figures.

    As ``elm-data stream --full-pass`` runs it (numpy arrays: no torch, no pandas), or with ``tensors`` as a
    one-process trainer would (torch imported, batches as tensors)."""
    start = _memory_mib("VmRSS")
    from elm_data.core.lazy import pyarrow_without_implicit_pandas
    from elm_data.pipeline.stream import StreamLoader, TokenStream
    from elm_data.sources import blocks

    if tensors:
        import torch  # noqa: F401
    else:
        pyarrow_without_implicit_pandas()
    imported = _memory_mib("VmRSS")
    stream = TokenStream(manifest, batch_size=BATCH, seq_len=SEQ_LEN, weights="natural")
    loader = StreamLoader(stream, tensors=tensors)
    before, t0, c0 = _memory_mib("VmRSS"), time.perf_counter(), time.process_time()
    batches = tokens = held = 0
    early_hwm = None
    for batch in loader:
        batches += 1
        tokens += int(sum(batch["tokens_by_source"].values()))
        held = max(held, blocks.HELD.held)
        if batches == early:
            early_hwm = _memory_mib("VmHWM")
        if batches == most:
            break
    modules = sorted(m for m in ("torch", "pandas") if m in sys.modules)
    print(
        json.dumps(
            {
                "rss_start_mib": start,
                "rss_imported_mib": imported,
                "rss_before_mib": before,
                "hwm_mib": _memory_mib("VmHWM"),
                "early_hwm_mib": early_hwm,
                "batches": batches,
                "tokens": tokens,
                "seconds": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                "partitions": stream.config.partitions,
                "held_mib": held / 2**20,
                "modules": modules,
            }
        )
    )


def measure(
    manifest: Path, caps: list[str], early: int, most: int = 0, tensors: bool = False
) -> list[dict[str, Any]]:
    rows = []
    for cap in caps:
        env = dict(os.environ, ELM_DATA_READER_MEMORY=str(UNCAPPED if cap == "none" else int(float(cap))))
        command = [sys.executable, __file__, "_pass", str(manifest), str(early), str(most), str(int(tensors))]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1]) | {"cap": cap, "load": os.getloadavg()[0]}
        rows.append(row)
        cap_text = "no cap" if cap == "none" else f"cap {int(float(cap)) / 2**20:.0f} MiB"
        print(
            f"  {cap_text:12s}: RSS {row['rss_start_mib']:.0f} MiB at start, {row['rss_imported_mib']:.0f} "
            "after "
            f"imports ({', '.join(row['modules']) or 'no torch, no pandas'}), "
            f"before the pass {row['rss_before_mib']:.0f} MiB, peak (VmHWM) "
            f"{row['hwm_mib']:.0f} MiB (after {early} batches: "
            f"{row['early_hwm_mib'] or float('nan'):.0f}), most "
            f"block bytes held in memory {row['held_mib']:.0f} MiB; {row['batches']:,} batches, "
            f"{row['tokens']:,} tokens, P = {row['partitions']}, {row['seconds']:.0f} s "
            f"({row['cpu_s']:.1f} CPU-s), "
            f"load {row['load']:.1f}",
            flush=True,
        )
    return rows


def write_gzip_shard(path: Path, target: int, record_bytes: int = 1 << 20) -> int:
    """A single-member gzip JSONL file of about ``target`` compressed bytes; returns the records written."""
    import numpy as np

    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"!#$%&'()*+,-./:;<=>?@[]^_`{|}~", dtype=np.uint8)
    words = (
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
    )
    records = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as f:
        while raw.tell() < target:
            if records % 64 == 0:  # an ordinary document the stream yields
                text = " ".join(words[i] for i in rng.integers(0, len(words), 3000))
            else:  # dropped by the character rule (nothing left once punctuation is removed)
                text = alphabet[rng.integers(0, len(alphabet), record_bytes)].tobytes().decode()
            f.write(json.dumps({"text": text}).encode() + b"\n")
            records += 1
    return records


def gzip_case(args) -> list[dict[str, Any]]:
    import yaml

    from elm_data.manifests.build import build_manifest

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    shard = work / "big.jsonl.gz"
    if not shard.exists():
        t0 = time.perf_counter()
        n = write_gzip_shard(shard, args.gzip_bytes)
        print(f"  wrote {shard.stat().st_size:,} bytes ({n:,} records) in {time.perf_counter() - t0:.0f} s")
    manifest = work / "manifest"
    if not (manifest / "manifest.json").exists():
        mixture = {"sources": [{"source": "pile", "subset": "default", "shards": [str(shard)]}]}
        (work / "mixture.yaml").write_text(yaml.safe_dump(mixture))
        t0 = time.perf_counter()
        build_manifest(work / "mixture.yaml", manifest)
        print(f"  built its manifest in {time.perf_counter() - t0:.0f} s")
    return measure(manifest, args.caps.split(","), args.early, args.max_batches, args.tensors)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_pass":
        return pass_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("section", choices=["sample", "gzip"])
    parser.add_argument("--manifest", type=Path, help="a built manifest (sample)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_reader_memory"))
    parser.add_argument(
        "--caps", default=f"none,{128 << 20}", help="ELM_DATA_READER_MEMORY values; none = no cap"
    )
    parser.add_argument("--early", type=int, default=500, help="also report the peak after this many batches")
    parser.add_argument("--gzip-bytes", type=int, default=1 << 30)
    parser.add_argument(
        "--max-batches", type=int, default=0, help="stop the pass after this many batches (0: all)"
    )
    parser.add_argument(
        "--tensors", action="store_true", help="import torch and hand out tensors (as a trainer)"
    )
    args = parser.parse_args()
    print(f"reader memory: {os.cpu_count()} CPUs, seq_len {SEQ_LEN}, batch {BATCH}, natural, one process")
    if args.section == "sample":
        measure(args.manifest, args.caps.split(","), args.early, args.max_batches, args.tensors)
    else:
        gzip_case(args)


if __name__ == "__main__":
    main()
