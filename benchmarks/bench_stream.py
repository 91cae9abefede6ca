"""Training-stream throughput against raw SentencePiece, and peak memory as the corpus grows.

On the same kept documents of a generated sample corpus, in one run and interleaved per repeat:

(a) raw ``sentencepiece`` batch encode of the kept texts (already in memory) with N threads;
(b) the stream end to end — plan, read + decompress + parse the partitions' blocks, each block's sha256
    checked as it is read, filter, tokenize, pack, provenance spans — as
    ``StreamLoader(TokenStream(..., partitions=P), num_workers=N)`` over one natural pass.

tokens/s counts the manifest's kept tokens (no BOS/EOS) for both. Goal: (b) >= 0.9 x (a) at equal N.
Then the stream's own cost beyond SentencePiece (in-process, the tokenizer swapped for a lookup of its
own earlier output, so machine load barely moves it), the plan walk, and the peak RSS of a one-process
stream pass (each in a fresh subprocess) as the corpus grows two ways: longer shards (``--rss-scales``)
and more shards of the same length (``--rss-shard-factors``).

    python benchmarks/bench_stream.py [--scale 4] [--repeats 3] [--partitions 8] [--rss-scales 2,8]
        [--rss-shard-factors 1,16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN, BATCH = 2048, 8


def build(work: Path, scale: float, shard_factor: int = 1) -> Path:
    """A manifest of the sample corpus at ``scale`` (documents per shard) x ``shard_factor`` (shards per
    subset)."""
    from elm_data.manifests.build import build_manifest
    from elm_data.sources.sample import write_sample_corpus

    name = f"{scale}" if shard_factor == 1 else f"{scale}x{shard_factor}"
    corpus, manifest = work / f"corpus-{name}", work / f"manifest-{name}"
    if not (manifest / "manifest.json").exists():
        build_manifest(
            write_sample_corpus(corpus, seed=0, scale=scale, shard_factor=shard_factor), manifest, workers=2
        )
    return manifest


def kept_texts(manifest_dir: Path) -> tuple[list[str], int]:
    from elm_data.manifests.manifest import Manifest
    from elm_data.sources.document import Document
    from elm_data.sources.readers import read_shard

    m = Manifest(manifest_dir)
    texts = []
    for rec in m.shards:
        kept = {d["index"] for d in m.documents(rec.shard).to_pylist() if d["status"] == "kept"}
        texts += [
            d.text
            for d in read_shard(rec.uri, rec.source, rec.subset, rec.sha256)
            if isinstance(d, Document) and d.provenance.index in kept
        ]
    return texts, sum(r.tokens for r in m.shards)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children (DataLoader workers)."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def time_raw(tokenizer, texts: list[str], threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one sentencepiece batch encode."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    tokenizer.encode_batch(texts, num_threads=threads)
    return time.perf_counter() - t0, cpu_seconds() - c0


def time_stream(manifest_dir: Path, tokenizer, workers: int, partitions: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one natural pass, worker start-up included."""
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    stream = TokenStream(
        manifest_dir,
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        weights="natural",
        tokenizer=tokenizer,
        partitions=partitions,
    )
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in StreamLoader(stream, num_workers=workers, multiprocessing_context="fork" if workers else None):
        pass
    return time.perf_counter() - t0, cpu_seconds() - c0


def stream_overhead(manifest_dir: Path, tokenizer, partitions: int, repeats: int = 3) -> tuple[float, float]:
    """(stream CPU seconds without SentencePiece, SentencePiece CPU seconds) for one in-process natural pass.

    The tokenizer's encode_batch is replaced by a lookup of the ids it returned in a first pass, so what
    remains is reading, hashing, filtering, framing, packing and provenance (the minimum of ``repeats``).
    """
    import pickle

    from elm_data.pipeline.stream import StreamLoader, TokenStream

    memo: dict[str, list[int]] = {}
    lookup = pickle.loads(pickle.dumps(tokenizer))
    encode = lookup.encode_batch

    def remembered(texts, num_threads=None):
        new = [t for t in texts if t not in memo]
        memo.update(zip(new, encode(new, num_threads), strict=True))
        return [memo[t] for t in texts]

    lookup.encode_batch = remembered

    def one_pass() -> float:
        stream = TokenStream(
            manifest_dir,
            batch_size=BATCH,
            seq_len=SEQ_LEN,
            weights="natural",
            tokenizer=lookup,
            partitions=partitions,
        )
        c0 = time.process_time()
        for _ in StreamLoader(stream):
            pass
        return time.process_time() - c0

    one_pass()
    c0 = time.process_time()
    encode(list(memo), 1)
    sp_seconds = time.process_time() - c0
    return min(one_pass() for _ in range(repeats)), sp_seconds


def plan_walk(work: Path, docs: int = 1_000_000, partitions: int = 8) -> tuple[int, float]:
    """Docs/s of walking the plan alone, every partition from its start (no corpus read): a synthetic format-2
    manifest (``bench_stream_scale.write_synthetic``). Resuming no longer walks (``bench_stream_scale.py
    resume``)."""
    from bench_stream_scale import write_synthetic

    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import Plan, PlanConfig
    from elm_data.pipeline.stream.partition import PartitionWalk

    path = work / f"plan-{docs}"
    if not (path / "manifest.json").exists():
        write_synthetic(path, docs, 10_000, 10)
    config = PlanConfig(mode="packed", seq_len=SEQ_LEN, batch_size=BATCH, seed=0, partitions=partitions)
    plan = Plan(Manifest(path), config)
    t0 = time.perf_counter()
    walked = 0
    for p in range(partitions):
        walk = PartitionWalk(plan, p)
        for _ in walk.docs(walk.start()):
            walked += 1
    return walked, time.perf_counter() - t0


def _memory_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB, from /proc/self/status.

    Not ``ru_maxrss``: Linux carries that high-water mark across exec, so a child started by a large
    parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child(manifest_dir: str) -> None:
    """(in a subprocess) one natural pass in this process; print baseline and peak RSS in MiB."""
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    stream = TokenStream(manifest_dir, batch_size=BATCH, seq_len=SEQ_LEN, weights="natural", partitions=8)
    base = _memory_mib("VmHWM")
    n = sum(len(b["input_ids"]) for b in StreamLoader(stream))
    peak = _memory_mib("VmHWM")
    print(json.dumps({"sequences": n, "baseline_mib": base, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=4.0, help="sample corpus scale for throughput")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", default="1,2", help="thread / worker counts to compare")
    parser.add_argument(
        "--partitions", type=int, default=8, help="stream partitions P (divisible by every --n)"
    )
    parser.add_argument(
        "--rss-scales", default="2,8", help="corpus scales (longer shards) for the memory check ('' to skip)"
    )
    parser.add_argument(
        "--rss-shard-factors",
        default="1,16",
        help="shards-per-subset multipliers at --scale (more shards) for the memory check ('' to skip)",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for generated corpora (default: temp)"
    )
    args = parser.parse_args()

    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.tokenizer import LlamaTokenizer

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_stream-"))
    tokenizer = LlamaTokenizer.resolve()
    manifest = build(work, args.scale)
    texts, tokens = kept_texts(manifest)
    print(
        f"corpus scale {args.scale}: {len(texts)} kept documents, {tokens:,} kept tokens; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    counts = [int(x) for x in args.n.split(",")]
    raw: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    streamed: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    for r in range(args.repeats):
        for n in counts:
            raw[n].append(time_raw(tokenizer, texts, n))
            streamed[n].append(time_stream(manifest, tokenizer, n, args.partitions))
        print(
            f"  repeat {r + 1}: "
            + "  ".join(
                f"N={n}: raw {tokens / raw[n][-1][0] / 1e3:,.0f}k tok/s, "
                f"stream {tokens / streamed[n][-1][0] / 1e3:,.0f}k tok/s"
                for n in counts
            )
        )
    print("medians: tokens per wall second, and per CPU second (robust to other load on the machine):")
    for n in counts:
        a, ac = (statistics.median(tokens / t[i] for t in raw[n]) for i in (0, 1))
        b, bc = (statistics.median(tokens / t[i] for t in streamed[n]) for i in (0, 1))
        print(
            f"  N={n}: wall (a) raw sentencepiece {a:,.0f}  (b) stream {b:,.0f}  ratio b/a {b / a:.2f}   |   "
            f"CPU (a) {ac:,.0f}  (b) {bc:,.0f}  ratio {bc / ac:.2f}"
        )
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    probe = TokenStream(
        manifest,
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        weights="natural",
        tokenizer=tokenizer,
        partitions=args.partitions,
    )
    items = ", ".join(f"N={n}: {StreamLoader(probe, num_workers=n).batches_per_item}" for n in counts)
    print(f"  (batches per DataLoader item: {items})")
    rest, sp_seconds = stream_overhead(manifest, tokenizer, args.partitions)
    print(
        f"stream cost beyond SentencePiece (in-process, 1 worker's work): {rest:.2f} CPU-s vs SentencePiece "
        f"{sp_seconds:.2f} CPU-s = {rest / sp_seconds:.0%} on top (ceiling for the CPU ratio at N=1: "
        f"{sp_seconds / (sp_seconds + rest):.2f})"
    )
    docs, seconds = plan_walk(work)
    print(
        f"plan walk (every partition from its start; resume no longer walks): {docs:,} documents in "
        f"{seconds:.1f} s = {docs / seconds:,.0f} docs/s"
    )
    corpora = [(float(s), 1) for s in args.rss_scales.split(",") if s]
    corpora += [(args.scale, int(f)) for f in args.rss_shard_factors.split(",") if f]
    for scale, factor in corpora:
        m = build(work, scale, factor)
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(m)], capture_output=True, text=True, check=True
        )
        rss = json.loads(out.stdout.strip().splitlines()[-1])
        shards = len(Manifest(m).shards)
        print(
            f"peak RSS, scale {scale} x {factor} ({shards} shards, {rss['sequences']:,} sequences of "
            f"{SEQ_LEN + 1}): "
            f"baseline {rss['baseline_mib']:.0f} MiB, peak {rss['peak_mib']:.0f} MiB, growth "
            f"{rss['peak_mib'] - rss['baseline_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2])
    else:
        main()
