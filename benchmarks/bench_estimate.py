"""``elm-data estimate`` against the exact build of a larger sample corpus: error, interval coverage, cost.

Writes the sample corpus at ``--scale`` (documents per shard) x ``--shard-factor`` (shards per subset),
builds its manifest exactly (the oracle, timed: CPU seconds of this process), then estimates it at each
``--sample-docs`` over ``--seeds`` seeds. Prints, per sample size: the median and worst relative error of
the estimated totals (documents, kept, tokens), the share of the 13 x 3 per-subset figures (and of the
totals) whose 95% interval holds the exact figure, the estimate's own time, and the projected core-hours
against the build's measured CPU time.

    python benchmarks/bench_estimate.py [--scale 5] [--shard-factor 8] [--sample-docs 100 300 1000] [--seeds
    3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from elm_data.manifests.build import build_manifest
from elm_data.manifests.estimate import FIGURES, estimate_mixture
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.tokenizer import resolve_tokenizer
from elm_data.sources.sample import write_sample_corpus


def exact_figures(manifest_dir: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in Manifest(manifest_dir).shards:
        fig = out[f"{s.source}/{s.subset}"]
        fig[0], fig[1], fig[2] = fig[0] + s.docs_read, fig[1] + s.docs_kept, fig[2] + s.tokens
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=5.0)
    ap.add_argument("--shard-factor", type=int, default=8)
    ap.add_argument("--sample-docs", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    tok = resolve_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        mixture = write_sample_corpus(
            Path(tmp) / "s", seed=0, scale=args.scale, shard_factor=args.shard_factor
        )
        t0, c0 = time.perf_counter(), time.process_time()
        build_manifest(mixture, Path(tmp) / "m", tokenizer=tok.uri, workers=1)
        build_wall, build_cpu = time.perf_counter() - t0, time.process_time() - c0
        exact = exact_figures(Path(tmp) / "m")
        ledger = sum(  # documents.parquet, or a documents/ folder of parquet parts
            f.stat().st_size
            for p in (Path(tmp) / "m").glob("documents*")
            for f in ([p] if p.is_file() else p.rglob("*"))
            if f.is_file()
        )
        totals = [sum(v[k] for v in exact.values()) for k in range(3)]
        print(
            f"corpus: scale {args.scale} x shard_factor {args.shard_factor}: "
            f"{len(Manifest(Path(tmp) / 'm').shards)} "
            f"shards, {totals[0]:,} documents, {totals[1]:,} kept, {totals[2]:,} tokens; exact build "
            f"{build_wall:.1f} s wall, {build_cpu:.1f} CPU-s (1 worker); documents ledger "
            f"{ledger / totals[0]:.1f} "
            "bytes per record"
        )
        print(
            "| --sample-docs | records read | median / worst error of totals (docs, kept, tokens) | "
            "per-subset figures inside 95% CI | totals inside | estimate s | projected core-h vs build CPU-h "
            "|"
        )
        print("|---:|---:|---|---:|---:|---:|---:|")
        for n in args.sample_docs:
            errors: dict[str, list[float]] = defaultdict(list)
            inside = checks = totals_inside = read = 0
            elapsed, projected = [], []
            for seed in range(args.seeds):
                est = estimate_mixture(mixture, sample_docs=n, seed=seed, tokenizer=tok)
                elapsed.append(est.elapsed_s)
                projected.append(est.core_hours)
                read += sum(s.records_sampled for s in est.subsets)
                for sub in est.subsets:
                    for f, truth in zip(FIGURES, exact[sub.key], strict=True):
                        checks += 1
                        inside += truth in getattr(sub, f)
                for k, f in enumerate(FIGURES):
                    errors[f].append(abs(est.total(f).value - totals[k]) / totals[k])
                    totals_inside += totals[k] in est.total(f)
            cells = ", ".join(f"{statistics.median(errors[f]):.1%} / {max(errors[f]):.1%}" for f in FIGURES)
            print(
                f"| {n} | {read // args.seeds:,} | {cells} | {inside}/{checks} ({inside / checks:.0%}) | "
                f"{totals_inside}/{3 * args.seeds} | {statistics.median(elapsed):.1f} | "
                f"{statistics.median(projected):.4f} vs {build_cpu / 3600:.4f} |"
            )


if __name__ == "__main__":
    main()
