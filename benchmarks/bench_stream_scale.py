"""The training stream at pretraining scale (issue 10): read amplification, resume cost, ledger size.

Two sections, each a subcommand (``all`` runs both):

``amplification``
    One natural pass of the sample corpus (``write_sample_corpus(seed=0, scale=...)``), manifest built with
    small blocks (``--block-bytes``, default 64 KiB) and ``--partitions`` (default 8), at ranks x workers in
    {1x0, 1x2, 2x2, 4x2}; simulated ranks are sequential ``StreamLoader``s with ``rank=r, world_size=R`` and
    forked DataLoader workers. Bytes read from shard storage by every process together / corpus bytes, for
    shards served by a counting fsspec filesystem (``tests/counting_fs.py``, a stand-in for hf:// or s3://)
    and for local paths (bytes each ``VerifiedView`` loaded, logged to a file across forks). Also checks
    that every layout yields the same global batches, and reports the documents ledger's bytes per row.

``resume``
    Synthetic format-2 manifests of 10^6, 10^7 (and 10^8) documents, no corpus behind them (plan level only):
    ``--docs-per-block`` documents per block, ``--blocks-per-shard`` blocks per shard, 4 sources. For
    partition 0 at early / middle / late positions, a cursor is taken by walking ``PartitionWalk.batches``
    once (the walk's time to each position is the contrast), then ``next(PartitionWalk(plan, 0).batches(
    cursor))`` is timed (median of ``--repeats``) in a fresh process that only opens the manifest and plans;
    the ledger rows read are counted, and the resumed batch must equal the walked one. Planner memory:
    VmHWM (peak RSS) of that process after ``Manifest()`` + ``Plan()`` and after the resumes, and the Python
    heap peak (tracemalloc) of ``Plan()`` and of one resume.

    ELM_DATA_TOKENIZER=... python benchmarks/bench_stream_scale.py all --work /tmp/bss
    python benchmarks/bench_stream_scale.py resume --docs 1e6,1e7,1e8 --work /tmp/bss
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = [(1, 0), (1, 2), (2, 2), (4, 2)]
# the figures for the old stream (gone from the tree)
BEFORE = {(1, 0): 2.06, (1, 2): 4.10, (2, 2): 8.06}
SEQ_LEN, BATCH = 2048, 8


def machine() -> str:
    return f"{os.cpu_count()} CPUs, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}"


def _memory_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


# -- read amplification ------------------------------------------------------------------------------------
def _test_module(name: str):
    """A helper module of the test suite: ``counting_fs`` (the counting filesystem: registers counting://),
    ``synthetic_manifest`` (a synthetic manifest's sealed manifest.json)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    return importlib.import_module(name)


def _mixture_at(corpus: Path, root: str, out: Path) -> Path:
    import yaml

    mixture = yaml.safe_load((corpus / "mixture.yaml").read_text())
    for entry in mixture["sources"]:
        entry["shards"] = [f"{root}/{s}" for s in entry["shards"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixture.yaml").write_text(yaml.safe_dump(mixture, sort_keys=False))
    return out / "mixture.yaml"


def _log_view_loads(log: Path) -> None:
    """Make every ``VerifiedView`` append the bytes each block load takes from storage to ``log`` (forks
    too)."""
    from elm_data.sources.blocks import VerifiedView

    original = getattr(VerifiedView._load, "__wrapped__", VerifiedView._load)

    def load(self, i):
        before = self.bytes_loaded
        data = original(self, i)
        if self.bytes_loaded > before:
            with open(os.environ["BENCH_VIEW_LOG"], "a") as f:
                f.write(f"{self.uri}\t{self.bytes_loaded - before}\n")
        return data

    load.__wrapped__ = original
    VerifiedView._load = load
    os.environ["BENCH_VIEW_LOG"] = str(log)


def _read_log(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            path, n = line.rsplit("\t", 1)
            counts[path] = counts.get(path, 0) + int(n)
    return counts


def _one_pass(
    manifest: Path, tokenizer, ranks: int, workers: int, partitions: int
) -> tuple[dict[int, str], float]:
    """``{global batch: fingerprint}`` of one natural pass at ``ranks x workers`` (ranks run one after
    another)."""
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    out: dict[int, str] = {}
    t0 = time.perf_counter()
    for rank in range(ranks):
        stream = TokenStream(
            manifest,
            batch_size=BATCH,
            seq_len=SEQ_LEN,
            weights="natural",
            partitions=partitions,
            rank=rank,
            world_size=ranks,
            tokenizer=tokenizer,
        )
        loader = StreamLoader(
            stream, num_workers=workers, multiprocessing_context="fork" if workers else None
        )
        for batch in loader:
            digest = hashlib.sha256(batch["input_ids"].numpy().tobytes())
            digest.update(json.dumps(batch["spans"], sort_keys=True).encode())
            out[batch["batch_index"]] = digest.hexdigest()
    return out, time.perf_counter() - t0


def ledger_bytes(manifest_dir: Path) -> tuple[int, int]:
    """(bytes of the documents/ folder, ledger rows)."""
    from elm_data.manifests.manifest import Manifest

    files = list((manifest_dir / "documents").glob("*.parquet"))
    rows = sum(r.docs_read for r in Manifest(manifest_dir).shards)
    return sum(f.stat().st_size for f in files), rows


def ledger_at_scale(manifest_dir: Path, out: Path, rows: int = 200_000, per_group: int = 1_000) -> float:
    """Bytes per row of a shard ledger of ``rows`` rows resampled from a built manifest's ledger (status,
    reason, chars, tokens, segments of random real rows; fresh random hex ids of the real ids' lengths, as
    hash-like native ids do not compress), one row group per ``per_group`` rows, written as the build writes
    ledgers (zstd)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from elm_data.manifests.manifest import DOCUMENT_SCHEMA, Manifest

    real = Manifest(manifest_dir).all_documents()
    rng = np.random.default_rng(0)
    pick = pa.array(rng.integers(0, real.num_rows, rows))
    table = real.take(pick)
    lengths = [len(x) for x in table.column("doc_id").to_pylist()]
    hexes = rng.bytes(sum(lengths)).hex()
    ids, at = [], 0
    for n in lengths:
        ids.append(hexes[at : at + n])
        at += n
    table = table.set_column(1, "index", pa.array(np.arange(rows, dtype=np.int64)))
    table = table.set_column(2, "doc_id", pa.array(ids, pa.string()))
    table = table.set_column(0, "shard", pa.array(np.zeros(rows, dtype=np.int32)))
    with pq.ParquetWriter(out, DOCUMENT_SCHEMA, compression="zstd") as writer:
        writer.write_table(table.cast(DOCUMENT_SCHEMA), row_group_size=per_group)
    return out.stat().st_size / rows


def amplification(args) -> dict[str, Any]:
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.tokenizer import LlamaTokenizer
    from elm_data.sources.sample import write_sample_corpus

    counting_fs = _test_module("counting_fs")
    work = args.work / f"amp-scale{args.scale:g}-b{args.block_bytes}"
    corpus = work / "corpus"
    if not (corpus / "mixture.yaml").exists():
        write_sample_corpus(corpus, seed=0, scale=args.scale)
    counting_fs.upload(corpus, "counting://corpus")  # the store lives in this process (and its forks)
    tokenizer = LlamaTokenizer.resolve()
    manifests = {}
    for kind, root in (("remote", "counting://corpus"), ("local", str(corpus))):
        out = work / f"manifest-{kind}"
        if not (out / "manifest.json").exists():
            t0 = time.perf_counter()
            build_manifest(
                _mixture_at(corpus, root, work / f"mixture-{kind}"),
                out,
                tokenizer=tokenizer.uri,
                block_bytes=args.block_bytes,
            )
            print(f"built {kind} manifest in {time.perf_counter() - t0:.1f} s")
        manifests[kind] = out
    shards = Manifest(manifests["remote"]).shards
    corpus_bytes = sum(r.size_bytes for r in shards)
    blocks = len(Manifest(manifests["remote"]).block_counts.rows)
    print(
        f"sample corpus scale {args.scale:g}: {len(shards)} shards, {blocks} blocks, {corpus_bytes:,} bytes, "
        f"{sum(r.docs_kept for r in shards):,} kept documents, {sum(r.tokens for r in shards):,} kept "
        "tokens; "
        f"P = {args.partitions}, seq_len {SEQ_LEN}, batch {BATCH}; {machine()}"
    )
    fs_log, view_log = work / "reads-fs.log", work / "reads-view.log"
    _log_view_loads(view_log)
    counting_fs.CountingFileSystem.log_path = str(fs_log)
    rows, reference = [], None
    for ranks, workers in [tuple(map(int, x.split("x"))) for x in args.layouts.split(",")]:
        row: dict[str, Any] = {"ranks": ranks, "workers": workers, "load": os.getloadavg()[0]}
        for kind, manifest in manifests.items():
            fs_log.unlink(missing_ok=True)
            view_log.unlink(missing_ok=True)
            batches, seconds = _one_pass(manifest, tokenizer, ranks, workers, args.partitions)
            if kind == "remote":
                reference = reference or batches
                row["same_batches"] = batches == reference
                row["batches"] = len(batches)
                read = _read_log(fs_log)
                row["remote_ratio"] = sum(read.values()) / corpus_bytes
                per_file = {k.lstrip("/"): v for k, v in read.items()}
                got = {
                    r.shard: per_file.get(r.uri.removeprefix("counting://").lstrip("/"), 0) for r in shards
                }
                worst = max(shards, key=lambda r: got[r.shard] / r.size_bytes)
                row["remote_bytes"] = sum(read.values())
                row["remote_worst_file"] = (got[worst.shard] / worst.size_bytes, worst.uri, worst.size_bytes)
                row["remote_reread"] = sum(max(0, got[r.shard] - r.size_bytes) for r in shards)
                row["remote_unread"] = sum(r.size_bytes for r in shards if not got[r.shard])
                row["remote_view_ratio"] = sum(_read_log(view_log).values()) / corpus_bytes
                row["remote_s"] = seconds
            else:
                row["local_ratio"] = sum(_read_log(view_log).values()) / corpus_bytes
                row["local_s"] = seconds
        rows.append(row)
        before = BEFORE.get((ranks, workers))
        print(
            f"  {ranks} x {workers}: remote (counting fs) {row['remote_ratio']:.4f} x corpus "
            f"= {row['remote_bytes']:,} bytes (read twice: {row['remote_reread']:,} bytes; shards never "
            "read: "
            f"{row['remote_unread']:,} bytes; worst file {row['remote_worst_file'][0]:.3f} x its "
            f"{row['remote_worst_file'][2]:,} bytes, {row['remote_worst_file'][1]}; "
            f"views {row['remote_view_ratio']:.4f}), "
            f"local (views) {row['local_ratio']:.4f}; before {before or 'n/a'}; {row['batches']} global "
            "batches, "
            f"same as 1 x 0: {row['same_batches']}; {row['remote_s']:.1f} s remote, {row['local_s']:.1f} s "
            "local, "
            f"load {row['load']:.1f}"
        )
    counting_fs.CountingFileSystem.log_path = os.devnull
    size, n = ledger_bytes(manifests["local"])
    print(
        f"documents ledger: {size:,} bytes for {n:,} rows = {size / n:.1f} bytes per document "
        f"({len(shards)} files, one row group per block)"
    )
    at_scale = {
        g: ledger_at_scale(manifests["local"], work / f"ledger-{g}.parquet", per_group=g)
        for g in (1000, 10000)
    }
    print(
        "ledger at scale (200,000 rows resampled from it, random hex ids of the real lengths, one shard "
        "file): "
        + ", ".join(f"{v:.1f} bytes per document with {g:,}-row blocks" for g, v in at_scale.items())
    )
    return {
        "corpus_bytes": corpus_bytes,
        "rows": rows,
        "ledger_bytes": size,
        "ledger_rows": n,
        "at_scale": at_scale,
    }


# -- synthetic manifests for resume ------------------------------------------------------------------------
SOURCES = ["web/default", "code/default", "books/default", "wiki/default"]
TOKEN_PERIOD = 2000  # tokens, chars and status repeat with this period (it divides --docs-per-block)


def _pattern(n: int):
    """Per-record columns of one block (identical for every block): status, reason, chars, tokens,
    segments."""
    import numpy as np

    i = np.arange(n)
    kept = i % 10 != 9  # 1 in 10 filtered
    tokens = np.where(kept, 50 + (i * 7919) % 2000, 0).astype(np.int32)
    return kept, tokens


def _json_list(values) -> bytes:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)[1:-1].encode()


def write_synthetic(path: Path, docs: int, docs_per_block: int, blocks_per_shard: int, seed: int = 0) -> None:
    """A valid format-3 manifest of ``docs`` records (ids, Merkle root, totals, per-block ledger digests).

    Ledger rows of a block are (shard, index, "shard:index", kept|filtered, ...); the block digests are
    computed from the same JSON text :func:`ledger_digest` hashes, built with pyarrow's string kernels
    (checked against ``ledger_digest`` on the first block).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from elm_data.manifests.block_index import BLOCKS_FILE, write_blocks_file
    from elm_data.manifests.manifest import (
        DOCUMENT_SCHEMA,
        DOCUMENTS_DIR,
        MANIFEST_FILE,
        SHARDS_FILE,
        ledger_digest,
        ledger_path,
    )
    from elm_data.manifests.shard_records import ShardRecord, shards_table

    assert docs_per_block % TOKEN_PERIOD == 0
    per_shard = docs_per_block * blocks_per_shard
    assert docs % per_shard == 0, "docs must be a multiple of docs_per_block x blocks_per_shard"
    kept, tokens = _pattern(docs_per_block)
    status = np.where(kept, "kept", "filtered")
    reason = [None if k else "min_tokens" for k in kept.tolist()]
    chars = (tokens.astype(np.int64) * 4 + np.where(kept, 0, 300)).astype(np.int64)
    segments = kept.astype(np.int32)
    count = np.ones(docs_per_block, dtype=np.int32)
    constant_json = b"".join(
        [
            b'],"status":[',
            _json_list(status.tolist()),
            b'],"reason":[',
            _json_list(reason),
            b'],"count":[',
            _json_list(count.tolist()),
            b'],"chars":[',
            _json_list(chars.tolist()),
            b'],"tokens":[',
            _json_list(tokens.tolist()),
            b'],"segments":[',
            _json_list(segments.tolist()),
            b'],"duplicate_of":[',
            _json_list([None] * docs_per_block),
            b"]}",
        ]
    )
    block_kept, block_tokens = int(kept.sum()), int(tokens.sum())
    block_columns = {  # the columns every block repeats, as arrow arrays of the ledger's types
        "status": pa.array(status.tolist(), pa.string()),
        "reason": pa.array(reason, pa.string()),
        "count": pa.array(count),
        "chars": pa.array(chars),
        "tokens": pa.array(tokens),
        "segments": pa.array(segments),
        "duplicate_of": pa.nulls(docs_per_block, pa.string()),
    }
    tmp = path.with_name(path.name + ".tmp")
    (tmp / DOCUMENTS_DIR).mkdir(parents=True, exist_ok=True)
    records = []
    offsets = pa.array(np.arange(0, per_shard + 1, docs_per_block, dtype=np.int32))
    for shard in range(docs // per_shard):
        key = SOURCES[shard % len(SOURCES)]
        index = pa.array(np.arange(per_shard, dtype=np.int64))
        index_str = pc.cast(index, pa.string())
        doc_id = pc.binary_join_element_wise(f"{shard}:", index_str, "")
        quoted = pc.binary_join_element_wise('"', doc_id, '"', "")
        index_json = pc.binary_join(pa.ListArray.from_arrays(offsets, index_str), ",").to_pylist()
        ids_json = pc.binary_join(pa.ListArray.from_arrays(offsets, quoted), ",").to_pylist()
        shard_json = _json_list([shard] * docs_per_block)
        blocks = []
        for b in range(blocks_per_shard):
            h = hashlib.sha256(b'{"shard":[' + shard_json + b'],"index":[')
            h.update(index_json[b].encode())
            h.update(b'],"doc_id":[')
            h.update(ids_json[b].encode())
            h.update(constant_json)
            blocks.append(
                {
                    "start": b * docs_per_block * 4000,
                    "end": (b + 1) * docs_per_block * 4000,
                    "sha256": hashlib.sha256(f"{shard}:{b}".encode()).hexdigest(),
                    "first_record": b * docs_per_block,
                    "records": docs_per_block,
                    "kept_docs": block_kept,
                    "kept_tokens": block_tokens,
                    "kept_segments": block_kept,
                    "ledger_sha256": h.hexdigest(),
                }
            )
        reps = blocks_per_shard
        table = pa.table(
            {
                "shard": pa.array(np.full(per_shard, shard, dtype=np.int32)),
                "index": index,
                "doc_id": doc_id,
                **{name: pa.concat_arrays([column] * reps) for name, column in block_columns.items()},
            },
            schema=DOCUMENT_SCHEMA,
        )
        if shard == 0:
            assert ledger_digest(table.slice(0, docs_per_block)) == blocks[0]["ledger_sha256"]
            assert (
                ledger_digest(table.slice(docs_per_block, docs_per_block))
                == blocks[1 % reps]["ledger_sha256"]
            )
        with pq.ParquetWriter(ledger_path(tmp, shard), DOCUMENT_SCHEMA, compression="zstd") as writer:
            writer.write_table(table, row_group_size=docs_per_block)
        filtered = per_shard - block_kept * reps
        records.append(
            ShardRecord(
                shard=shard,
                source=key.split("/")[0],
                subset=key.split("/")[1],
                uri=f"/nowhere/{shard}.jsonl",
                size_bytes=per_shard * 4000,
                sha256=hashlib.sha256(f"shard {shard}".encode()).hexdigest(),
                licence="synthetic",
                docs_read=per_shard,
                docs_kept=block_kept * reps,
                docs_filtered=filtered,
                filtered_by_reason={"min_tokens": filtered} if filtered else {},
                chars=int(chars[kept].sum()) * reps,
                tokens=block_tokens * reps,
                segments=block_kept * reps,
                format="jsonl",
                blocks=blocks,
            )
        )
    sealed_info = _test_module("synthetic_manifest").sealed_info
    info = sealed_info(path.name, SOURCES, records, seq_len=SEQ_LEN, seed=seed)
    pq.write_table(shards_table(records), tmp / SHARDS_FILE, compression="zstd")
    write_blocks_file(tmp / BLOCKS_FILE, [(r.shard, r.blocks) for r in records])
    (tmp / MANIFEST_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    tmp.rename(path)


def _plan(path: Path, partitions: int):
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import Plan, PlanConfig

    config = PlanConfig(
        mode="packed",
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        seed=0,
        weights=None,
        epochs=1,
        partitions=partitions,
    )
    return Plan(Manifest(path), config)


def _counting_rows(manifest) -> list[int]:
    """Count the ledger rows the plan reads from ``manifest`` (instance-level wrap of ``block_documents``)."""
    rows: list[int] = []
    original = manifest.block_documents

    def counting(shard, block, parquet=None):
        table = original(shard, block, parquet)
        rows.append(table.num_rows)
        return table

    manifest.block_documents = counting
    return rows


def _fingerprint(batch) -> str:
    return hashlib.sha256(repr((batch.batch, batch.start, batch.sequences, batch.docs)).encode()).hexdigest()


FRACTIONS = {"early": 0.01, "middle": 0.5, "late": 0.99}


def walk_child(path: str, partitions: int, out: str) -> None:
    """(subprocess) Walk partition 0 from its start; record the cursor before, and the batch at, each
    position."""
    from elm_data.pipeline.stream.partition import PartitionWalk

    plan = _plan(Path(path), partitions)
    total = plan.partition_batches(0)
    targets = {name: max(1, min(total - 1, round(f * total))) for name, f in FRACTIONS.items()}
    rows = _counting_rows(plan.manifest)
    walk = PartitionWalk(plan, 0)
    result: dict[str, Any] = {"partition_batches": total, "positions": {}}
    t0 = time.perf_counter()
    previous = None
    want = {t: name for name, t in targets.items()}
    for bp, cursor in walk.batches(walk.start()):
        t = bp.batch // partitions
        if t in want:
            result["positions"][want[t]] = {
                "batch": t,
                "walk_s": time.perf_counter() - t0,
                "walk_rows": sum(rows),
                "cursor": previous,
                "fingerprint": _fingerprint(bp),
                "docs_before": sum(previous["mixer"]["drawn"]),
            }
            if len(result["positions"]) == len(want):
                break
        previous = cursor
    Path(out).write_text(json.dumps(result))


def resume_child(path: str, partitions: int, walked: str, repeats: int) -> None:
    """(subprocess) Open + plan (memory), then resume at each walked position (time, rows read, equality)."""
    import tracemalloc

    from elm_data.pipeline.stream.partition import PartitionWalk

    base = _memory_mib("VmRSS")
    t0 = time.perf_counter()
    plan = _plan(Path(path), partitions)
    plan_s = time.perf_counter() - t0
    plan_hwm = _memory_mib("VmHWM")
    positions = json.loads(Path(walked).read_text())["positions"]
    rows = _counting_rows(plan.manifest)
    out: dict[str, Any] = {"baseline_mib": base, "plan_s": plan_s, "plan_hwm_mib": plan_hwm, "positions": {}}
    for name, pos in positions.items():
        times, got = [], None
        for _ in range(repeats):
            rows.clear()
            t0 = time.perf_counter()
            got = next(PartitionWalk(plan, 0).batches(pos["cursor"]))[0]
            times.append(time.perf_counter() - t0)
        out["positions"][name] = {
            "resume_s": statistics.median(times),
            "resume_rows": sum(rows),
            "equal": _fingerprint(got) == pos["fingerprint"] and got.batch // partitions == pos["batch"],
        }
    out["resume_hwm_mib"] = _memory_mib("VmHWM")
    tracemalloc.start()
    _plan(Path(path), partitions)
    out["plan_tracemalloc_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.reset_peak()
    next(PartitionWalk(plan, 0).batches(positions["late"]["cursor"]))
    out["resume_tracemalloc_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(json.dumps(out))


def resume(args) -> dict[str, Any]:
    results = []
    print(
        f"resume: {args.docs_per_block:,} documents per block, {args.blocks_per_shard} blocks per shard, "
        f"{len(SOURCES)} sources, P = {args.resume_partitions}, packed, seq_len {SEQ_LEN}, batch {BATCH}, "
        "natural; "
        f"partition 0; {machine()}"
    )
    for docs in [int(float(x)) for x in args.docs.split(",")]:
        path = args.work / f"synthetic-{docs:.0e}-b{args.docs_per_block}-s{args.blocks_per_shard}"
        if not (path / "manifest.json").exists():
            t0 = time.perf_counter()
            write_synthetic(path, docs, args.docs_per_block, args.blocks_per_shard)
            print(f"  wrote {path.name} in {time.perf_counter() - t0:.1f} s")
        size = sum(f.stat().st_size for f in (path / "documents").glob("*.parquet"))
        walked = path.with_name(path.name + f".walk-P{args.resume_partitions}.json")
        if not walked.exists():
            subprocess.run(
                [sys.executable, __file__, "_walk", str(path), str(args.resume_partitions), str(walked)],
                check=True,
            )
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "_resume",
                str(path),
                str(args.resume_partitions),
                str(walked),
                str(args.repeats),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
        walk = json.loads(walked.read_text())
        print(
            f"  {docs:.0e} documents ({size / docs:.1f} ledger bytes/doc, synthetic ids): Manifest() + "
            "Plan() "
            f"{got['plan_s']:.2f} s, VmHWM {got['plan_hwm_mib']:.0f} MiB (baseline "
            f"{got['baseline_mib']:.0f}), "
            f"Plan() heap peak {got['plan_tracemalloc_mib']:.1f} MiB; partition 0 has "
            f"{walk['partition_batches']:,} batches; load {os.getloadavg()[0]:.1f}"
        )
        for name in FRACTIONS:
            w, r = walk["positions"][name], got["positions"][name]
            print(
                f"    {name:6s} batch {w['batch']:>7,} ({w['docs_before']:>10,} docs in): resume "
                f"{r['resume_s'] * 1e3:7.1f} ms reading {r['resume_rows']:,} ledger rows (same batch: "
                f"{r['equal']})"
                f"  |  walk from start {w['walk_s']:8.2f} s reading {w['walk_rows']:,} rows"
            )
        print(
            f"    after resumes VmHWM {got['resume_hwm_mib']:.0f} MiB; one resume's heap peak "
            f"{got['resume_tracemalloc_mib']:.1f} MiB"
        )
        results.append({"docs": docs, "ledger_bytes": size, "walk": walk, "resume": got})
    return {"resume": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_walk":
        return walk_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    if len(sys.argv) > 1 and sys.argv[1] == "_resume":
        return resume_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("section", choices=["amplification", "resume", "all"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_stream_scale"))
    parser.add_argument("--scale", type=float, default=4.0, help="sample corpus scale (amplification)")
    parser.add_argument("--block-bytes", type=int, default=64 << 10, help="JSONL block size of the manifest")
    parser.add_argument("--partitions", type=int, default=8, help="stream partitions P (amplification)")
    parser.add_argument("--layouts", default=",".join(f"{r}x{w}" for r, w in LAYOUTS), help="ranks x workers")
    parser.add_argument("--docs", default="1e6,1e7", help="synthetic manifest sizes (resume)")
    parser.add_argument("--docs-per-block", type=int, default=10_000)
    parser.add_argument("--blocks-per-shard", type=int, default=10)
    parser.add_argument("--resume-partitions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.section in ("amplification", "all"):
        amplification(args)
    if args.section in ("resume", "all"):
        resume(args)


if __name__ == "__main__":
    main()
