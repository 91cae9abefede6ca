"""A run's records as the proofs read them: the log's header, the manifest the run trained on, the receipt
chain the log records step by step, and the plan the run consumed (:class:`RunPlan`).

Shared by ``audit-run`` (:mod:`.audit`: the consumption audit and ``--verify``) and ``trace`` (:mod:`.trace`),
below both: it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elm_data.core.errors import ElmDataError
from elm_data.manifests.manifest import Manifest

from ..core.runlog import read_log


class AuditError(ElmDataError, ValueError):
    pass


def run_header(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The log's ``header`` record (the run's manifest, plan and config); :class:`AuditError` when it has
    none."""
    header = next((r for r in records if r.get("event") == "header"), None)
    if header is None:
        raise AuditError(f"{run_dir}/log.jsonl has no header record")
    return header


def trained_manifest(header: dict[str, Any], manifest_dir: str | Path | None = None) -> Manifest:
    """The manifest the run trained on (at ``manifest_dir`` when given); refused when its id is not the
    run's."""
    manifest = Manifest(manifest_dir or header["manifest_dir"])
    if manifest.manifest_id != header["manifest_id"]:
        raise AuditError(
            f"manifest at {manifest.path} has id {manifest.manifest_id}, but the run trained on "
            f"{header['manifest_id']}"
        )
    return manifest


@dataclass
class LoggedChain:
    """The chain heads a log records, per step, as the run finally went (a resume supersedes later
    records)."""

    heads: dict[int, str] = field(default_factory=dict)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # the step's record (step or receipt)
    batches_per_step: dict[int, int] = field(default_factory=dict)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    start: int = 0  # a run resumed from a bare checkpoint (no log beside it) logs from this step on


def logged_chain(records: list[dict[str, Any]]) -> LoggedChain:
    """Read every step's chain head from the log (``step`` and ``receipt`` records), checking that steps
    follow one another: a step missing or repeated (without a resume that explains it) is a problem at that
    step."""
    out = LoggedChain()
    last, per_step, bare = 0, None, False
    for number, r in enumerate(records, 1):
        event = r.get("event")
        if event in ("header", "resume"):
            per_step = int(r.get("grad_accum_steps") or 1) * int(r.get("world_size") or 1)
        if event == "header":
            bare = bool(r.get("resumed_from")) and not out.heads and not out.resumes
        if event == "resume":
            k = int(r["from_step"])
            # the first resume of a log begun at a bare checkpoint
            if bare and not out.resumes and not out.heads:
                out.start = last = k
                # as the run's settings
                out.batches_per_step.update(dict.fromkeys(range(1, k + 1), per_step or 1))
            if k > last:
                out.problems.append(
                    (last + 1, f"log record {number}: resume from step {k}, but step {last} was last")
                )
            for table in (out.heads, out.records, out.batches_per_step):
                for s in [s for s in table if s > k]:
                    del table[s]
            out.ends = [e for e in out.ends if int(e.get("step", 0)) <= k]
            out.resumes.append(r)
            last = k
        elif event in ("step", "receipt") and "receipt" in r:
            s = int(r["step"])
            if s != last + 1:
                what = f"step {s} logged after step {last}"
                out.problems.append(
                    (min(s, last + 1), f"log record {number}: {what} (a step skipped or repeated)")
                )
            out.heads[s], out.records[s], out.batches_per_step[s] = r["receipt"], r, per_step or 1
            last = max(last, s)
        elif event == "end":
            out.ends.append(r)
    return out


class RunPlan:
    """A run's manifest, plan and per-step batch counts, read from its log (what the verifier reads)."""

    def __init__(self, run_dir: str | Path, manifest_dir: str | Path | None = None):
        # seconds to import: only when a plan is walked
        from elm_data.pipeline.stream.plan import Plan, PlanConfig

        self.run_dir = Path(run_dir)
        records = read_log(self.run_dir)
        header = run_header(self.run_dir, records)
        self.manifest = trained_manifest(header, manifest_dir)
        self.plan = Plan(
            self.manifest, PlanConfig.from_mapping(header["stream_state"]["plan"], "stream_state.plan")
        )
        self.logged = logged_chain(records)
        self.steps = max(self.logged.heads, default=0)
        self.world_sizes: dict[int, int] = {}  # step -> world size (a resume may change it)
        size = int(header["world_size"])
        for r in records:
            if r.get("event") == "resume":
                size = int(r["world_size"])
            elif r.get("event") in ("step", "receipt"):
                self.world_sizes[int(r["step"])] = size

    def step_batches(self):
        """``(step, rank, micro-batch, batch plan)`` for every batch the run consumed, in global order."""
        from elm_data.pipeline.stream.receipt import global_batches

        planned = global_batches(self.plan)
        for k in range(1, self.steps + 1):
            per_step = self.logged.batches_per_step.get(k, 1)
            ranks = self.world_sizes.get(k, 1)
            for j in range(per_step):
                bp = next(planned, None)
                if bp is None:
                    return
                yield k, j % ranks, j // ranks, bp

    def consumed_records(self) -> dict[int, set[int]]:
        """``{shard: record indices}`` of every document the run consumed tokens of (in any of its
        batches)."""
        consumed: dict[int, set[int]] = {}
        for _step, _rank, _micro, bp in self.step_batches():
            for d in bp.docs:
                consumed.setdefault(d.shard, set()).add(d.index)
        return consumed
