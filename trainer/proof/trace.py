"""`elm-data trace`: where a run consumed a document's tokens, from the run's log and the stream's plan alone.

``trace_doc(run, "SOURCE/SUBSET:DOC_ID")`` walks the plan's global batches exactly as the receipt verifier
does (``audit.verify_run``; no corpus, no tokenizer, no model) and returns, for each sequence row that held
tokens of the document: the step, the global batch, the rank and accumulation micro-batch that consumed it,
the row and the span (row positions ``[start, end)`` = the document's framed tokens ``[doc_start, doc_end)``;
corenet rows carry no token range, see ``pipeline/stream/receipt.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from elm_data.core.outputs import staged_dir
from elm_data.pipeline.stream.receipt import batch_spans
from elm_data.sources.registry import subset_key

from .records import AuditError, RunPlan


@dataclass(frozen=True)
class DocHit:
    """One sequence row that held tokens of the traced document."""

    step: int
    batch_index: int  # global batch
    rank: int
    micro_batch: int  # accumulation micro-batch within the step on that rank
    row: int
    shard_sha256: str
    index: int  # record in the shard
    start: int
    end: int | None
    doc_start: int | None
    doc_end: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_doc_ref(ref: str) -> tuple[str, str]:
    """``"source/subset:doc_id"`` → ``("source/subset", "doc_id")`` (the doc id may itself hold colons)."""
    key, sep, doc_id = ref.partition(":")
    if not sep or "/" not in key or not doc_id:
        raise AuditError(f"expected SOURCE/SUBSET:DOC_ID, got {ref!r}")
    return key, doc_id


def trace_doc(run_dir: str | Path, ref: str, manifest_dir: str | Path | None = None) -> list[DocHit]:
    """Every sequence row of the run that held tokens of document ``ref`` (``SOURCE/SUBSET:DOC_ID``)."""
    key, doc_id = parse_doc_ref(ref)
    run = RunPlan(run_dir, manifest_dir)
    sources = run.plan.sources
    if key not in {s.key for s in sources}:
        raise AuditError(f"{key} is not in the run's manifest; it has {[s.key for s in sources]}")
    hits = []
    for step, rank, micro, bp in run.step_batches():
        if not any(d.doc_id == doc_id and sources[d.src].key == key for d in bp.docs):
            continue
        for row, spans in enumerate(batch_spans(bp, run.plan)):
            for s in spans:
                if s["doc_id"] == doc_id and subset_key(s["source"], s["subset"]) == key:
                    hits.append(
                        DocHit(
                            step,
                            bp.batch,
                            rank,
                            micro,
                            row,
                            s["shard_sha256"],
                            s["index"],
                            s["start"],
                            s.get("end"),
                            s.get("doc_start"),
                            s.get("doc_end"),
                        )
                    )
    if not hits:
        ledger_status(run.manifest, key, doc_id)  # refuses a document the manifest does not hold
    return hits


def ledger_status(manifest, key: str, doc_id: str) -> tuple[str, str | None]:
    """``(status, reason)`` of ``doc_id`` in the ledger of subset ``key`` (kept, heldout, filtered or
    rejected); an :class:`AuditError` ("no such document") when no shard of the subset holds it."""
    import pyarrow.compute as pc

    for shard in manifest.shards:
        if shard.key != key:
            continue
        table = manifest.documents(shard.shard, ["doc_id", "status", "reason"])
        found = table.filter(pc.equal(table["doc_id"], doc_id))
        if found.num_rows:
            return found["status"][0].as_py(), found["reason"][0].as_py()
    raise AuditError(
        f"no such document: {key}:{doc_id} is not in the ledger of manifest {manifest.manifest_id[:12]}…"
    )


# ---- `trace --text`: the consumed documents holding the longest spans of a text (a suffix array)
# ------------
INDEX_DIR = "trace_index"
SEPARATOR = 0xFFFF  # never a token id (vocab 32 000): matches stop at document ends and unconsumed positions


@dataclass
class TextIndex:
    """A suffix array (``pydivsufsort``) over the framed tokens of every document the run consumed, each
    document once (the positions it consumed; the rest and its end are ``SEPARATOR``), with where each
    document sits and the rows that consumed it."""

    tokens: Any  # np.uint16 [n]
    sa: Any  # np.int32/np.int64 [n]: suffix array of tokens
    # ref, shard_sha256, index, offset (into tokens), length, rows: [[step, row, lo, hi]]
    docs: list[dict[str, Any]]
    build_s: float = 0.0

    @property
    def bytes_per_token(self) -> float:
        return (self.tokens.nbytes + self.sa.nbytes) / max(1, len(self.tokens))

    def save(self, path: Path) -> None:
        """The index as the directory ``path`` (tokens.npy, sa.npy, docs.json), in whole or not at all."""
        import json

        import numpy as np

        with staged_dir(path) as tmp:
            np.save(tmp / "tokens.npy", self.tokens)
            np.save(tmp / "sa.npy", self.sa)
            (tmp / "docs.json").write_text(json.dumps({"docs": self.docs, "build_s": self.build_s}))

    @classmethod
    def load(cls, path: Path) -> TextIndex:
        import json

        import numpy as np

        meta = json.loads((path / "docs.json").read_text())
        return cls(np.load(path / "tokens.npy"), np.load(path / "sa.npy"), meta["docs"], meta["build_s"])

    # -- search ----------------------------------------------------------------------------------------------
    def _narrow(self, lo: int, hi: int, depth: int, token: int) -> tuple[int, int]:
        """Within the SA range ``[lo, hi)`` of suffixes sharing ``depth`` tokens, those whose next token is
        ``token`` (the next tokens are sorted within the range; a suffix that ends sorts first)."""
        t, sa, n = self.tokens, self.sa, len(self.tokens)

        def key(k: int) -> int:
            pos = int(sa[k]) + depth
            return int(t[pos]) if pos < n else -1

        a, b = lo, hi
        while a < b:  # first with key >= token
            m = (a + b) // 2
            if key(m) < token:
                a = m + 1
            else:
                b = m
        start, b = a, hi
        while a < b:  # first with key > token
            m = (a + b) // 2
            if key(m) <= token:
                a = m + 1
            else:
                b = m
        return start, a

    def longest_from(self, query: list[int], i: int) -> tuple[int, int, int]:
        """The longest prefix of ``query[i:]`` found in the index: ``(length, lo, hi)`` (its SA range)."""
        lo, hi, depth = 0, len(self.sa), 0
        while i + depth < len(query):
            a, b = self._narrow(lo, hi, depth, query[i + depth])
            if a == b:
                break
            lo, hi, depth = a, b, depth + 1
        return depth, lo, hi

    @cached_property
    def offsets(self):
        import numpy as np

        return np.fromiter((d["offset"] for d in self.docs), dtype=np.int64, count=len(self.docs))

    def locate(self, position: int) -> tuple[dict[str, Any], int]:
        """The document holding index position ``position`` and the position's offset in its framed tokens."""
        import numpy as np

        k = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return self.docs[k], position - self.docs[k]["offset"]


def build_text_index(
    run_dir: str | Path, manifest_dir: str | Path | None = None, tokenizer=None
) -> TextIndex:
    """Replay the run's stream (verified blocks, re-tokenized) over the batches it consumed and index each
    consumed document's framed tokens once."""
    import time

    from elm_data.pipeline.stream import StreamLoader, TokenStream

    started = time.perf_counter()
    run = RunPlan(run_dir, manifest_dir)
    c = run.plan.config
    stream = TokenStream(
        run.manifest,
        batch_size=c.batch_size,
        seq_len=c.seq_len,
        mode=c.mode,
        weights="natural" if c.weights is None else c.weights,
        seed=c.seed,
        epochs=c.epochs,
        partitions=c.partitions,
        tokenizer=tokenizer,
    )
    total = sum(run.logged.batches_per_step.get(k, 1) for k in range(1, run.steps + 1))
    steps = [k for k in range(1, run.steps + 1) for _ in range(run.logged.batches_per_step.get(k, 1))]
    loader = iter(StreamLoader(stream))
    try:
        index = index_batches((steps[n], next(loader)) for n in range(total))
    finally:
        loader.close()
    index.build_s = time.perf_counter() - started
    return index


def index_batches(batches) -> TextIndex:
    """A :class:`TextIndex` over ``(step, stream batch)`` pairs: each document's consumed framed tokens,
    once."""
    import time

    import numpy as np
    import pydivsufsort

    started = time.perf_counter()
    docs: dict[tuple[str, int], dict[str, Any]] = {}  # (shard sha256, record) -> doc
    framed: dict[tuple[str, int], list] = {}  # the consumed pieces of each document's framed tokens
    for step, batch in batches:
        ids = batch["input_ids"].numpy() if hasattr(batch["input_ids"], "numpy") else batch["input_ids"]
        for row, spans in enumerate(batch["spans"]):
            for s in spans:
                key = (s["shard_sha256"], s["index"])
                ref = f"{subset_key(s['source'], s['subset'])}:{s['doc_id']}"
                doc = docs.setdefault(key, {"ref": ref, "shard_sha256": key[0], "index": key[1], "rows": []})
                doc["rows"].append([step, batch["batch_index"], row, s["doc_start"], s["doc_end"]])
                framed.setdefault(key, []).append((s["doc_start"], ids[row, s["start"] : s["end"]].copy()))
    parts, offset, out_docs = [], 0, []
    for key, doc in docs.items():
        pieces = framed[key]
        length = max(at + len(ids) for at, ids in pieces)
        arr = np.full(length + 1, SEPARATOR, dtype=np.uint16)
        for at, ids in pieces:
            arr[at : at + len(ids)] = ids
        parts.append(arr)
        out_docs.append(doc | {"offset": offset, "length": length})
        offset += length + 1
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    sa = pydivsufsort.divsufsort(tokens)
    return TextIndex(tokens, sa, out_docs, time.perf_counter() - started)


def open_text_index(
    run_dir: str | Path, manifest_dir=None, tokenizer=None, rebuild: bool = False
) -> TextIndex:
    """The run's index (``RUN_DIR/trace_index/``), built on first use."""
    path = Path(run_dir) / INDEX_DIR
    if (path / "docs.json").is_file() and not rebuild:
        return TextIndex.load(path)
    index = build_text_index(run_dir, manifest_dir, tokenizer)
    index.save(path)
    return index


def trace_text(index: TextIndex, query_ids: list[int], min_tokens: int = 4, top: int = 5, limit: int = 20):
    """The longest spans of the query found in the run's consumed documents (maximal: not inside a longer
    one), longest first: ``{"query_tokens": [i, j], "length", "count", "occurrences": [{ref, shard_sha256,
    index, doc_offset, steps, rows}]}``; ``rows``: ``[step, global batch, row, doc_start, doc_end]`` that held
    the span."""
    found, reach = [], 0
    for i in range(len(query_ids)):
        length, lo, hi = index.longest_from(query_ids, i)
        if length >= min_tokens and i + length > reach:  # not contained in the previous span
            found.append((length, i, lo, hi))
            reach = i + length
    found.sort(key=lambda f: (-f[0], f[1]))
    spans = []
    for length, i, lo, hi in found[:top]:
        occurrences = []
        for k in sorted(int(p) for p in index.sa[lo : min(hi, lo + limit)]):
            doc, at = index.locate(k)
            rows = [r for r in doc["rows"] if r[3] < at + length and r[4] > at]
            occurrences.append(
                {
                    "ref": doc["ref"],
                    "shard_sha256": doc["shard_sha256"],
                    "index": doc["index"],
                    "doc_offset": at,
                    "steps": sorted({r[0] for r in rows}),
                    "rows": rows,
                }
            )
        spans.append(
            {"query_tokens": [i, i + length], "length": length, "count": hi - lo, "occurrences": occurrences}
        )
    return spans
