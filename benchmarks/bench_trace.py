"""`trace --text` index: bytes per token, build time and query latency at a few scales.

(a) the real index (``trainer.proof.trace.index_batches``: framed tokens of every consumed document once,
uint16, and
    its suffix array from ``pydivsufsort``) over the first 1/8, 1/4, 1/2 and all of a natural one-epoch pass
    of the sample manifest's stream (what a run that consumed that much would index);
(b) the suffix-array build alone on Zipf-distributed token arrays of 1 M to ``--max-tokens`` tokens (the
build's
    scaling, beyond the sample corpus);
(c) query latency: ``trace_text`` of 32-token queries cut from indexed documents (planted) and of random token
    strings (absent), median and p95 over ``--queries``.

    ELM_DATA_TOKENIZER=... python benchmarks/bench_trace.py MANIFEST_DIR [--max-tokens 16000000] [--queries
    50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def latency(index, queries) -> dict[str, float]:
    from elm_data.trainer.proof.trace import trace_text

    times = []
    for q in queries:
        started = time.perf_counter()
        trace_text(index, q, min_tokens=8, top=5)
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "median_ms": 1000 * statistics.median(times),
        "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
    }


def queries_for(index, n: int, rng) -> tuple[list[list[int]], list[list[int]]]:
    docs = [d for d in index.docs if d["length"] > 40]
    planted = []
    for _ in range(n):
        d = docs[rng.integers(len(docs))]
        at = int(rng.integers(1, d["length"] - 33))
        planted.append(index.tokens[d["offset"] + at : d["offset"] + at + 32].astype(int).tolist())
    absent = [rng.integers(3, 32000, size=32).tolist() for _ in range(n)]
    return planted, absent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--max-tokens", type=int, default=16_000_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()

    import pydivsufsort

    from elm_data.pipeline.stream import StreamLoader, TokenStream
    from elm_data.trainer.proof.trace import SEPARATOR, TextIndex, index_batches

    rng = np.random.default_rng(0)
    stream = TokenStream(args.manifest, batch_size=8, seq_len=2048, weights="natural", epochs=1)
    batches = list(StreamLoader(stream))
    rows = []
    for fraction in (8, 4, 2, 1):
        part = batches[: max(1, len(batches) // fraction)]
        started = time.perf_counter()
        index = index_batches((i + 1, b) for i, b in enumerate(part))
        build = time.perf_counter() - started
        planted, absent = queries_for(index, args.queries, rng)
        rows.append(
            {
                "input": f"sample pass 1/{fraction}",
                "tokens": len(index.tokens),
                "docs": len(index.docs),
                "bytes_per_token": index.bytes_per_token,
                "build_s": build,
                "planted": latency(index, planted),
                "absent": latency(index, absent),
            }
        )
        print(json.dumps(rows[-1]))
    for n in (1_000_000, 4_000_000, 16_000_000, 64_000_000):
        if n > args.max_tokens:
            break
        tokens = np.minimum(rng.zipf(1.2, size=n), 31_999).astype(np.uint16)
        tokens[rng.integers(0, n, size=n // 500)] = SEPARATOR  # document ends
        started = time.perf_counter()
        sa = pydivsufsort.divsufsort(tokens)
        build = time.perf_counter() - started
        index = TextIndex(
            tokens, sa, [{"offset": 0, "length": n, "rows": [], "ref": "", "shard_sha256": "", "index": 0}]
        )
        planted = [
            tokens[s : s + 32].astype(int).tolist() for s in rng.integers(0, n - 32, size=args.queries)
        ]
        absent = [rng.integers(3, 32000, size=32).tolist() for _ in range(args.queries)]
        rows.append(
            {
                "input": f"zipf {n:,}",
                "tokens": n,
                "bytes_per_token": index.bytes_per_token,
                "build_s": build,
                "planted": latency(index, planted),
                "absent": latency(index, absent),
            }
        )
        print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
