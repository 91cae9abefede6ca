"""Manifest build throughput against raw SentencePiece encoding of the same texts.

For a generated sample corpus (every source/subset in its native format), measures side by side:

- ``encode``: ``SentencePieceProcessor.encode`` over every document text the readers yield (batches
  of 256, one thread) — the floor the build cannot beat, since it must tokenize what survives the
  character rule;
- ``build w=1`` / ``build w=2``: ``build_manifest`` end to end (hash, read, filter, tokenize, ledger,
  atomic write), 1 and 2 worker processes, fresh output each time.

Reports documents/s and tokens/s (kept tokens for the build, all tokens for encode) and the ratio of
the build's wall time to encode's: medians over ``--repeats`` interleaved runs, the ratio taken
within each run first (so load drift on a shared machine hits both sides alike).

    python benchmarks/bench_manifest.py [--scale 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from elm_data.manifests.build import build_manifest, plan_shards
from elm_data.manifests.mixture import MixtureConfig
from elm_data.pipeline.tokenizer import resolve_tokenizer_uri
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard
from elm_data.sources.sample import write_sample_corpus


def corpus_texts(mixture_path: Path) -> list[str]:
    mixture = MixtureConfig.load(mixture_path)
    texts = []
    for task in plan_shards(mixture):
        texts += [d.text for d in read_shard(task.uri, task.source, task.subset) if isinstance(d, Document)]
    return texts


def time_encode(texts: list[str], model: str) -> tuple[float, int]:
    sp = spm.SentencePieceProcessor(model_file=model)
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 256):
        tokens += sum(len(ids) for ids in sp.encode(texts[i : i + 256], num_threads=1))
    return time.perf_counter() - start, tokens


def time_build(mixture_path: Path, work: Path, model: str, workers: int) -> tuple[float, dict]:
    out = work / f"m-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = build_manifest(mixture_path, out, tokenizer=model, workers=workers)
    return time.perf_counter() - start, result.totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=4.0, help="sample corpus scale")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()
    model = resolve_tokenizer_uri(args.tokenizer)

    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        work = Path(tmp)
        mixture_path = write_sample_corpus(work / "corpus", seed=0, scale=args.scale)
        texts = corpus_texts(mixture_path)
        print(
            f"corpus: {len(texts):,} documents, {sum(map(len, texts)):,} characters, scale {args.scale}, "
            f"{os.cpu_count()} CPUs"
        )
        runs: dict[str, list[float]] = {"encode": [], "build w=1": [], "build w=2": []}
        totals = {}
        encode_tokens = 0
        for r in range(args.repeats):
            seconds, encode_tokens = time_encode(texts, model)
            runs["encode"].append(seconds)
            for workers in (1, 2):
                seconds, totals = time_build(mixture_path, work, model, workers)
                runs[f"build w={workers}"].append(seconds)
            print(f"run {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()))

        print(f"\n{'':12} {'median s':>9} {'docs/s':>10} {'tokens/s':>12} {'time / encode':>14}")
        for name, seconds in runs.items():
            med = statistics.median(seconds)
            docs = len(texts) if name == "encode" else totals["docs_read"]
            tokens = encode_tokens if name == "encode" else totals["tokens"]
            ratio = statistics.median(s / e for s, e in zip(seconds, runs["encode"], strict=True))
            print(f"{name:12} {med:9.2f} {docs / med:10,.0f} {tokens / med:12,.0f} {ratio:13.2f}x")
        print(
            f"\nbuild kept {totals['docs_kept']:,} of {totals['docs_read']:,} records, {totals['tokens']:,} "
            "tokens; "
            f"encode saw {encode_tokens:,} tokens (all texts)"
        )


if __name__ == "__main__":
    main()
