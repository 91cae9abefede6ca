"""Streaming over a network (issue 27): a loopback HTTP server with latency and faults vs the same files
local.

One natural pass of the sample corpus (``write_sample_corpus(seed=0, scale=--scale)``, JSONL blocks of
``--block-bytes``), 1 rank x ``--workers`` forked DataLoader workers, side by side in one run, ``--repeats``
times each (medians):

- ``local``: the manifest of the files on disk;
- ``http``: the manifest of the same files named as ``http://127.0.0.1:PORT/...`` on ``tests/fault_server.py``
  answering every request after ``--latency-ms`` (read-ahead on, the default budget), and the same with
  read-ahead off (``readahead_bytes: 0``) to show what it hides;
- ``cache``: a cold pass that fills a node block cache, then a warm pass: bytes the server sent;
- ``faults``: ``--fault-rates`` of requests answered 503 or with a body cut in half (seeded), default retry
  policy: documents lost / duplicated against the local pass (the spans' document ids, in order), whether the
  batches are bitwise the local ones, retries, and the slowdown against the fault-free ``http`` pass.

Tokens/s counts the non-pad tokens handed out. Run:

    ELM_DATA_TOKENIZER=... python benchmarks/bench_remote.py --work /tmp/bench_remote
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fault_server  # noqa: E402

from elm_data.manifests.build import build_manifest  # noqa: E402
from elm_data.manifests.mixture import MixtureConfig  # noqa: E402
from elm_data.pipeline.stream import StreamLoader, TokenStream  # noqa: E402
from elm_data.pipeline.stream.network import NetworkSettings  # noqa: E402
from elm_data.pipeline.tokenizer import resolve_tokenizer  # noqa: E402
from elm_data.sources import remote  # noqa: E402
from elm_data.sources.block_cache import CacheConfig  # noqa: E402
from elm_data.sources.sample import write_sample_corpus  # noqa: E402

SEQ_LEN, BATCH = 512, 4


def mixtures(sample: Path, url: str, out: Path) -> tuple[Path, Path]:
    config = MixtureConfig.load(sample / "mixture.yaml")
    raw = yaml.safe_load((sample / "mixture.yaml").read_text())
    local, http = yaml.safe_load(yaml.safe_dump(raw)), raw
    for lo, hi, entry in zip(local["sources"], http["sources"], config.entries, strict=True):
        shards = [Path(s).resolve() for s in config.resolve_shards(entry)]
        lo["shards"] = [str(s) for s in shards]
        hi["shards"] = [f"{url}/{s.relative_to(sample.resolve())}" for s in shards]
    out.mkdir(parents=True, exist_ok=True)
    (out / "local.yaml").write_text(yaml.safe_dump(local, sort_keys=False))
    (out / "http.yaml").write_text(yaml.safe_dump(http, sort_keys=False))
    return out / "local.yaml", out / "http.yaml"


def one_pass(manifest: Path, tokenizer, workers: int, network: NetworkSettings) -> dict:
    """Tokens/s of one natural pass, its batches' digest, the documents in order, the remote counts."""
    stream = TokenStream(
        manifest,
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        weights="natural",
        tokenizer=tokenizer,
        partitions=8,
        network=network,
    )
    loader = StreamLoader(stream, num_workers=workers, multiprocessing_context="fork" if workers else None)
    digest, docs, tokens = hashlib.sha256(), [], 0
    started = time.perf_counter()
    for batch in loader:
        digest.update(batch["input_ids"].numpy().tobytes())
        tokens += sum(batch["tokens_by_source"].values())
        docs.extend((s["shard_sha256"], s["doc_id"], s["doc_start"]) for row in batch["spans"] for s in row)
    elapsed = time.perf_counter() - started
    return {
        "tok_s": tokens / elapsed,
        "s": elapsed,
        "digest": digest.hexdigest(),
        "docs": docs,
        "remote": loader.stats().get("remote", {}),
    }


def lost_and_duplicated(reference: list, got: list) -> tuple[int, int]:
    want, have = Counter(d[:2] for d in reference), Counter(d[:2] for d in got)
    return sum((want - have).values()), sum((have - want).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_remote"))
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--block-bytes", type=int, default=16 << 10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--fault-rates", default="0.01,0.05")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    sample = args.work / "sample"
    write_sample_corpus(sample, seed=0, scale=args.scale)
    tokenizer = resolve_tokenizer(None)
    cpu0 = time.process_time()
    base = NetworkSettings(remote.RetryPolicy(), CacheConfig(), 64 << 20)
    faults = fault_server.Faults(latency_s=args.latency_ms / 1000)
    with fault_server.serve(sample, faults) as (url, stats):
        local_yaml, http_yaml = mixtures(sample, url, args.work)
        local = build_manifest(
            local_yaml, args.work / "m_local", tokenizer=None, block_bytes=args.block_bytes
        )
        http = build_manifest(http_yaml, args.work / "m_http", tokenizer=None, block_bytes=args.block_bytes)
        assert (http.manifest_id, http.totals) == (local.manifest_id, local.totals)
        corpus = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file() and p.suffix != ".yaml")
        print(
            f"corpus {corpus:,} bytes, {local.totals['tokens']:,} tokens, manifest {local.manifest_id[:12]}; "
            f"{args.workers} workers, {args.latency_ms:g} ms per request, load {os.getloadavg()[0]:.1f}"
        )
        runs: dict[str, list[dict]] = {"local": [], "http": [], "http, no read-ahead": []}
        for _ in range(args.repeats):
            runs["local"].append(one_pass(local.manifest_dir, tokenizer, args.workers, base))
            runs["http"].append(one_pass(http.manifest_dir, tokenizer, args.workers, base))
            no_ahead = NetworkSettings(base.retries, base.cache, 0)
            runs["http, no read-ahead"].append(one_pass(http.manifest_dir, tokenizer, args.workers, no_ahead))
        reference = runs["local"][0]
        local_rate = statistics.median(r["tok_s"] for r in runs["local"])
        print(
            "\n| pass | median tok/s | vs local | median s | batches bitwise = local "
            "|\n|---|---:|---:|---:|---|"
        )
        for name, rs in runs.items():
            rate = statistics.median(r["tok_s"] for r in rs)
            same = all(r["digest"] == reference["digest"] for r in rs)
            print(
                f"| {name} | {rate:,.0f} | {rate / local_rate:.2f}x | "
                f"{statistics.median(r['s'] for r in rs):.2f} | {same} |"
            )
        cache = NetworkSettings(
            base.retries, CacheConfig(str(args.work / "cache"), 1 << 30), base.readahead_bytes
        )
        sent = stats.bytes_sent
        cold = one_pass(http.manifest_dir, tokenizer, args.workers, cache)
        cold_sent, sent = stats.bytes_sent - sent, stats.bytes_sent
        warm = one_pass(http.manifest_dir, tokenizer, args.workers, cache)
        warm_sent = stats.bytes_sent - sent
        print(
            f"\ncache: cold pass {cold_sent:,} bytes sent by the server ({cold['tok_s']:,.0f} tok/s), warm "
            "pass "
            f"{warm_sent:,} bytes ({warm['tok_s']:,.0f} tok/s, "
            f"{warm['remote'].get('bytes_from_cache', 0):,} "
            f"bytes from the cache); batches bitwise = local: {warm['digest'] == reference['digest']}"
        )
        http_rate = statistics.median(r["tok_s"] for r in runs["http"])
        print(
            "\n| faults | median tok/s | slowdown vs fault-free http | faults served | retries | lost | "
            "duplicated "
            "| bitwise = local |\n|---|---:|---:|---:|---:|---:|---:|---|"
        )
        for rate in (float(x) for x in args.fault_rates.split(",")):
            rs, before = [], Counter(stats.faults)
            for k in range(args.repeats):
                faults.fault_rate, faults.seed = rate, k  # the running server reads them at every request
                rs.append(one_pass(http.manifest_dir, tokenizer, args.workers, base))
            faults.fault_rate = 0.0
            served = Counter(stats.faults) - before
            lost = sum(lost_and_duplicated(reference["docs"], r["docs"])[0] for r in rs)
            dup = sum(lost_and_duplicated(reference["docs"], r["docs"])[1] for r in rs)
            med = statistics.median(r["tok_s"] for r in rs)
            retries = sum(r["remote"].get("retries", 0) for r in rs)
            same = all(r["digest"] == reference["digest"] for r in rs)
            print(
                f"| {rate:.0%} of requests | {med:,.0f} | {http_rate / med:.2f}x | {sum(served.values())} "
                f"({dict(served)}) | {retries} | {lost} | {dup} | {same} |"
            )
    print(f"\nCPU of this process: {time.process_time() - cpu0:.1f} s (workers' CPU not included)")


if __name__ == "__main__":
    main()
