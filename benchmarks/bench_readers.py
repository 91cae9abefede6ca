"""Reader throughput per format vs a bare pyarrow/json/gzip/zstandard loop over the same files.

Generates a sample corpus at a larger --scale in a temp dir, then for each format times, side by
side and interleaved, (a) ``read_shard`` (sha256 given, so no hashing) consuming every Document
and (b) the plainest loop that parses the same records (pyarrow ``iter_batches().to_pylist()``,
``json.loads`` per line of a file, ``gzip.open`` or a zstandard ``stream_reader``). MB/s are
megabytes of document text (decompressed UTF-8) per second; ours/bare is the throughput ratio
(1.0 = no overhead). Also times ``sha256_of``.

    python benchmarks/bench_readers.py --scale 40 --repeats 5
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import zstandard

from elm_data.manifests.mixture import MixtureConfig
from elm_data.sources.readers import read_shard, sha256_of, shard_format


def bare_parquet(path: str) -> int:
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, use_threads=False):
        n += len(batch.to_pylist())
    return n


def _json_lines(stream) -> int:
    n = 0
    for line in stream:
        json.loads(line)
        n += 1
    return n


def bare_jsonl(path: str) -> int:
    with open(path, "rb") as f:
        return _json_lines(f)


def bare_gzip(path: str) -> int:
    with gzip.open(path, "rb") as f:
        return _json_lines(f)


def bare_zstd(path: str) -> int:
    with open(path, "rb") as raw:
        return _json_lines(io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)))


BARE: dict[str, Callable[[str], int]] = {
    "parquet": bare_parquet,
    "jsonl": bare_jsonl,
    "jsonl.gz": bare_gzip,
    "jsonl.zst": bare_zstd,
}


def ours(shards: list[tuple[str, str, str]]) -> int:
    n = 0
    for uri, source, subset in shards:
        for _ in read_shard(uri, source, subset, shard_sha256="0" * 64):
            n += 1
    return n


def text_megabytes(shards: list[tuple[str, str, str]]) -> float:
    return (
        sum(len(d.text.encode()) for u, s, b in shards for d in read_shard(u, s, b, shard_sha256="0" * 64))
        / 1e6
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from elm_data.sources.sample import write_sample_corpus

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        mixture = MixtureConfig.load(write_sample_corpus(tmp, seed=0, scale=args.scale))
        print(f"generated sample corpus at scale {args.scale} in {time.perf_counter() - start:.1f} s")
        by_format: dict[str, list[tuple[str, str, str]]] = {}
        for entry in mixture.entries:
            for uri in mixture.resolve_shards(entry):
                by_format.setdefault(shard_format(uri, entry.source, entry.subset), []).append(
                    (uri, entry.source, entry.subset)
                )
        print(
            f"{'format':<10} {'files':>5} {'file MB':>7} {'text MB':>7} {'docs':>6} "
            f"{'ours MB/s':>10} {'bare MB/s':>10} {'ours/bare':>9}"
        )
        for fmt, shards in by_format.items():
            size = sum(Path(u).stat().st_size for u, _, _ in shards) / 1e6
            text_mb = text_megabytes(shards)
            ours_s, bare_s, ratios = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                n_ours = ours(shards)
                t1 = time.perf_counter()
                n_bare = sum(BARE[fmt](u) for u, _, _ in shards)
                t2 = time.perf_counter()
                assert n_ours == n_bare, (fmt, n_ours, n_bare)
                ours_s.append(t1 - t0)
                bare_s.append(t2 - t1)
                ratios.append((t2 - t1) / (t1 - t0))
            print(
                f"{fmt:<10} {len(shards):>5} {size:>7.1f} {text_mb:>7.1f} {n_ours:>6} "
                f"{text_mb / statistics.median(ours_s):>10.1f} "
                f"{text_mb / statistics.median(bare_s):>10.1f} {statistics.median(ratios):>9.2f}"
            )
        files = [u for shards in by_format.values() for u, _, _ in shards]
        total = sum(Path(u).stat().st_size for u in files) / 1e6
        hash_s = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for u in files:
                sha256_of(u)
            hash_s.append(time.perf_counter() - t0)
        print(
            f"sha256_of: {total / statistics.median(hash_s):.0f} MB/s over {total:.1f} MB (median of "
            f"{args.repeats})"
        )
        print("ours/bare = throughput ratio (median of per-run ratios); 1.0 = as fast as the bare loop")


if __name__ == "__main__":
    main()
