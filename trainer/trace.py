"""`elm-data trace`: where a run consumed a document's tokens, from the run's log and the stream's plan alone.

``trace_doc(run, "SOURCE/SUBSET:DOC_ID")`` walks the plan's global batches exactly as the receipt verifier
does (``audit.verify_run``; no corpus, no tokenizer, no model) and returns, for each sequence row that held
tokens of the document: the step, the global batch, the rank and accumulation micro-batch that consumed it, the
row and the span (row positions ``[start, end)`` = the document's framed tokens ``[doc_start, doc_end)``; corenet
rows carry no token range, see ``pipeline/stream/receipt.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.stream.plan import Plan, PlanConfig
from elm_data.pipeline.stream.receipt import batch_spans, global_batches

from .audit import AuditError, logged_chain
from .runlog import read_log


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


class RunPlan:
    """A run's manifest, plan and per-step batch counts, read from its log (what the verifier reads)."""

    def __init__(self, run_dir: str | Path, manifest_dir: str | Path | None = None):
        self.run_dir = Path(run_dir)
        records = read_log(self.run_dir)
        header = next((r for r in records if r.get("event") == "header"), None)
        if header is None:
            raise AuditError(f"{self.run_dir}/log.jsonl has no header record")
        self.manifest = Manifest(manifest_dir or header["manifest_dir"])
        if self.manifest.manifest_id != header["manifest_id"]:
            raise AuditError(
                f"manifest at {self.manifest.path} has id {self.manifest.manifest_id}, "
                f"but the run trained on {header['manifest_id']}"
            )
        self.plan = Plan(self.manifest, PlanConfig(**header["stream_state"]["plan"]))
        self.logged = logged_chain(records)
        self.steps = max(self.logged.heads, default=0)
        self.world_sizes: dict[int, int] = {}  # step -> world size (a resume may change it)
        size = int(header.get("world_size") or 1)
        for r in records:
            if r.get("event") == "resume":
                size = int(r.get("world_size") or 1)
            elif r.get("event") in ("step", "receipt"):
                self.world_sizes[int(r["step"])] = size

    def step_batches(self):
        """``(step, rank, micro-batch, batch plan)`` for every batch the run consumed, in global order."""
        planned = global_batches(self.plan)
        for k in range(1, self.steps + 1):
            per_step = self.logged.batches_per_step.get(k, 1)
            ranks = self.world_sizes.get(k, 1)
            for j in range(per_step):
                bp = next(planned, None)
                if bp is None:
                    return
                yield k, j % ranks, j // ranks, bp


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
                if s["doc_id"] == doc_id and f"{s['source']}/{s['subset']}" == key:
                    hits.append(DocHit(step, bp.batch, rank, micro, row, s["shard_sha256"], s["index"],
                                       s["start"], s.get("end"), s.get("doc_start"), s.get("doc_end")))  # fmt: skip
    return hits
