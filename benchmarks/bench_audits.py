"""`audit contamination` and `audit duplicates`: documents/s, tokens/s and peak memory on `elm-data sample`
data, and the figures the 1.8 T-token extrapolation in RESULTS.md is computed from.

Each measurement runs in a fresh process (``multiprocessing`` spawn) that reports its CPU seconds and the
growth of its peak RSS over the RSS after imports, so one audit's memory does not hide in another's:

- ``read``: the kept documents' text read back (verified blocks, readers, ledger) and nothing else;
- ``normalize``: that plus datatrove's ``simplify_text`` and the word split (the audits' shared front end);
- ``contamination``: the whole audit against ``--items`` items (half copied from documents, half unrelated);
- ``duplicates exact`` / ``duplicates near``: the whole audit, exact only / with MinHash-LSH (128
permutations);
- ``build`` / ``build dedup exact`` / ``build dedup minhash``: ``build manifest`` (one worker, in the
measuring
  process) of the same sample without and with ``filters.dedup``; the dedup rows also report the CPU seconds
  of the decision over all signatures (``dedup_filter.find_removals``) and the signature bytes the workspace
  held.

    ELM_DATA_TOKENIZER=... python benchmarks/bench_audits.py OUT_DIR [--scale 4] [--items 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import statistics
import time
from pathlib import Path


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    """Reset the peak RSS to the current RSS (``clear_refs`` 5) and return the current RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _items(manifest: str, n: int, path: Path) -> None:
    """``n`` items: half are 40-word passages of kept documents, half random words no document holds."""
    from elm_data.manifests.kept_text import kept_documents
    from elm_data.manifests.manifest import Manifest

    rng = random.Random(0)
    docs = [d.text.split() for d in kept_documents(Manifest(manifest))]
    lines = []
    for k in range(n):
        if k % 2 == 0:
            words = docs[rng.randrange(len(docs))]
            at = rng.randrange(max(1, len(words) - 40))
            text = " ".join(words[at : at + 40])
        else:
            text = " ".join(f"w{rng.randrange(10**9)}" for _ in range(40))
        lines.append(json.dumps({"id": f"i{k}", "text": text}))
    path.write_text("\n".join(lines) + "\n")


def _measure_build(what: str, manifest: str, queue) -> None:
    """One build of the sample's mixture (``what``: ``build`` or ``build dedup MODE``) into a fresh
    directory."""
    import shutil

    import yaml

    from elm_data.manifests import dedup_filter
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.workspace import BuildWorkspace

    sample = Path(manifest).parent / "sample"
    mixture = yaml.safe_load((sample / "mixture.yaml").read_text())
    if what != "build":
        mixture["filters"] = {**(mixture.get("filters") or {}), "dedup": what.rsplit(" ", 1)[1]}
    path = sample / "mixture-bench.yaml"
    path.write_text(yaml.safe_dump(mixture, sort_keys=False))
    out = Path(manifest).parent / "bench-build"
    shutil.rmtree(out, ignore_errors=True)
    decide = {"cpu_s": 0.0, "signature_bytes": 0}
    find, read = dedup_filter.find_removals, BuildWorkspace.read_signatures

    def timed_find(*args):
        cpu = time.process_time()
        try:
            return find(*args)
        finally:
            decide["cpu_s"] += time.process_time() - cpu

    def sized_read(self, shard):
        decide["signature_bytes"] += self.fs.size(self.signatures_file(shard))
        return read(self, shard)

    dedup_filter.find_removals, BuildWorkspace.read_signatures = timed_find, sized_read
    dedup_filter.signer_for("minhash")  # the MinHash template, as the imports are: not counted
    base = _reset_peak()
    started, cpu = time.perf_counter(), time.process_time()
    result = build_manifest(path, out, workers=1)
    extra = {"removed": result.totals["filtered_by_reason"].get("duplicate", 0)}
    if what != "build":
        extra |= {"decide_cpu_s": decide["cpu_s"], "signature_bytes": decide["signature_bytes"]}
    queue.put(
        {
            "what": what,
            "docs": result.totals["docs_kept"] + extra["removed"],
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "peak_mib": _status_mib("VmHWM") - base,
            **extra,
        }
    )


def _measure(what: str, manifest: str, items: str, queue) -> None:
    if what.startswith("build"):
        return _measure_build(what, manifest, queue)
    from elm_data.manifests.contamination import audit_contamination, normalized_words
    from elm_data.manifests.duplicates import DedupSettings, audit_duplicates, require_datasketch
    from elm_data.manifests.eval_tasks import jsonl_task
    from elm_data.manifests.kept_text import kept_documents
    from elm_data.manifests.manifest import Manifest

    require_datasketch()
    normalized_words("warm up the normalizer")
    m = Manifest(manifest)
    base = _reset_peak()
    started, cpu = time.perf_counter(), time.process_time()
    extra = {}
    if what == "read":
        docs = sum(1 for _ in kept_documents(m))
    elif what == "normalize":
        docs = sum(1 for d in kept_documents(m) if normalized_words(d.text) is not None)
    elif what == "contamination":
        result = audit_contamination(m, [jsonl_task(Path(items))])
        docs = sum(d for d, _ in result.scanned.values())
        extra = {
            "contaminated_items": result.by_task[0]["contaminated_items"],
            "items": result.by_task[0]["items"],
        }
    else:
        result = audit_duplicates(m, DedupSettings(near=what == "duplicates near"))
        docs = len(result.docs)
        extra = {"near_pairs": len(result.near_pairs)}
    queue.put(
        {
            "what": what,
            "docs": docs,
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "peak_mib": _status_mib("VmHWM") - base,
            **extra,
        }
    )


SKIP = ("what", "docs", "wall_s", "cpu_s", "peak_mib")


def run_once(what: str, manifest: str, items: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(what, manifest, items, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=4)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", choices=["all", "audits", "builds"], default="all")
    args = parser.parse_args()

    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest
    from elm_data.sources.sample import write_sample_corpus

    manifest = args.out / "manifest"
    if not (manifest / "manifest.json").exists():
        build_manifest(write_sample_corpus(args.out / "sample", scale=args.scale), manifest, workers=1)
    totals = Manifest(manifest).info["totals"]
    items = args.out / "items.jsonl"
    _items(str(manifest), args.items, items)
    print(
        f"manifest: {totals['docs_kept']:,} kept documents, {totals['tokens']:,} tokens, {totals['chars']:,} "
        "chars"
    )
    rows = {}
    steps = ("read", "normalize", "contamination", "duplicates exact", "duplicates near")
    builds = ("build", "build dedup exact", "build dedup minhash")
    for what in steps + builds if args.steps == "all" else builds if args.steps == "builds" else steps:
        runs = [run_once(what, str(manifest), str(items)) for _ in range(args.repeats)]
        cpu = statistics.median(r["cpu_s"] for r in runs)
        rows[what] = {
            "docs": runs[0]["docs"],
            "cpu_s": cpu,
            "wall_s": statistics.median(r["wall_s"] for r in runs),
            "docs_per_cpu_s": runs[0]["docs"] / cpu,
            "tokens_per_cpu_s": totals["tokens"] / cpu,
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
            **{k: v for k, v in runs[0].items() if k not in SKIP},
        }
        print(what, json.dumps(rows[what]))
    (args.out / f"bench_audits-{args.steps}.json").write_text(
        json.dumps({"totals": totals, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
