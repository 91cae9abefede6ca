"""`elm-data audit-run`: what a run ate, per source/subset, against its manifest and the OpenELM targets.

For each ``source/subset`` it reports the tokens consumed (the loader's consumed tokens at the run's last
logged step), the manifest's kept tokens and the fraction of them consumed (1.0 = one full pass; the stream's
BOS/EOS make a full pass slightly above 1.0), the run's share of consumed tokens, the target share (OpenELM
preset, renormalised over the subsets the manifest holds) and the deviation between the two shares.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elm_data.manifests.manifest import Manifest
from elm_data.manifests.mixture import resolved_weights
from elm_data.manifests.shard_records import counts_by_subset
from elm_data.manifests.targets import load_targets
from elm_data.sources.registry import subset_key

from ..core.runlog import HELDOUT_RECORD_FIELDS, effective_steps, read_log
from .records import AuditError, LoggedChain, RunPlan, logged_chain, run_header, trained_manifest

if TYPE_CHECKING:
    from elm_data.pipeline.stream.plan import Plan


@dataclass
class SourceRow:
    key: str  # "source/subset"
    consumed_tokens: int
    kept_tokens: int
    fraction_consumed: float | None  # consumed / kept
    share: float  # of all consumed tokens
    target_tokens: int | None
    target_share: float | None
    deviation: float | None  # share - target_share


@dataclass
class RunAudit:
    run_dir: str
    manifest_id: str
    manifest_dir: str
    last_step: int
    tokens_total: int
    consumed_total: int
    targets: str
    rows: list[SourceRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        header = (
            f"{'source/subset':<28}{'consumed':>14}{'kept':>14}{'consumed/kept':>15}"
            f"{'share':>9}{'target':>9}{'dev':>9}"
        )
        lines = [
            f"run {self.run_dir}  step {self.last_step}  manifest {self.manifest_id[:16]}…",
            header,
            "-" * len(header),
        ]
        for r in self.rows:
            lines.append(
                f"{r.key:<28}{r.consumed_tokens:>14,}{r.kept_tokens:>14,}"
                f"{_num(r.fraction_consumed, '.3f'):>15}{_pct(r.share):>9}{_pct(r.target_share):>9}"
                f"{_pct(r.deviation, signed=True):>9}"
            )
        lines.append("-" * len(header))
        kept = sum(r.kept_tokens for r in self.rows)
        lines.append(f"{'total':<28}{self.consumed_total:>14,}{kept:>14,}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def audit_run(
    run_dir: str | Path, manifest_dir: str | Path | None = None, at_step: int | None = None
) -> RunAudit:
    """Compare a run's consumed tokens per source/subset with its manifest and the OpenELM targets.

    ``at_step``: audit the run as it stood at that step (the last logged step not after it; e.g. a
    checkpoint's).
    """
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    header = run_header(run_dir, records)
    manifest = trained_manifest(header, manifest_dir)
    steps = [s for s in effective_steps(records) if at_step is None or s["step"] <= at_step]
    last = steps[-1] if steps else {"step": 0, "tokens_total": 0, "tokens_by_source": {}}
    consumed: dict[str, int] = {k: int(v) for k, v in (last.get("tokens_by_source") or {}).items()}
    kept = {key: counts.tokens for key, counts in counts_by_subset(manifest.shards).items()}
    targets = load_targets("openelm")["tokens"]
    rows = source_rows(consumed, kept, targets)
    return RunAudit(
        run_dir=str(run_dir),
        manifest_id=manifest.manifest_id,
        manifest_dir=str(manifest.path),
        last_step=int(last["step"]),
        tokens_total=int(last.get("tokens_total", 0)),
        consumed_total=sum(consumed.values()),
        targets="openelm",
        rows=rows,
        notes=[
            *coverage_notes(consumed, kept, targets),
            *zero_token_notes(rows, header, manifest, int(last["step"])),
        ],
    )


def source_rows(consumed: dict[str, int], kept: dict[str, int], targets: dict[str, int]) -> list[SourceRow]:
    """One row per subset the manifest holds or the run consumed; target shares are renormalised over them."""
    keys = list(dict.fromkeys([*kept, *consumed]))
    consumed_total = sum(consumed.values())
    target_sum = sum(targets.get(k, 0) for k in keys)
    rows = []
    for key in keys:
        share = consumed.get(key, 0) / consumed_total if consumed_total else 0.0
        target = targets.get(key)
        target_share = target / target_sum if (target is not None and target_sum) else None
        rows.append(
            SourceRow(
                key=key,
                consumed_tokens=consumed.get(key, 0),
                kept_tokens=kept.get(key, 0),
                fraction_consumed=consumed.get(key, 0) / kept[key] if kept.get(key) else None,
                share=share,
                target_tokens=target,
                target_share=target_share,
                deviation=None if target_share is None else share - target_share,
            )
        )
    return rows


def coverage_notes(consumed: dict[str, int], kept: dict[str, int], targets: dict[str, int]) -> list[str]:
    """The OpenELM subsets the manifest lacks, and any subset the run consumed that the manifest does not
    list."""
    notes = ["target shares are OpenELM's, renormalised over the subsets this manifest holds"]
    absent = sorted(set(targets) - {*kept, *consumed})
    if absent:
        notes.append(f"OpenELM subsets not in this manifest: {', '.join(absent)}")
    unknown = sorted(set(consumed) - set(kept))
    if unknown:
        notes.append(f"consumed subsets the manifest does not list: {', '.join(unknown)}")
    return notes


def _weight_shares(header: dict[str, Any], manifest: Manifest, kept: dict[str, int]) -> dict[str, float]:
    """Each subset's share of the training mix: the run's weights, else the manifest's, else kept tokens."""
    weights = (header.get("config") or {}).get("weights")
    if not isinstance(weights, dict) and weights != "natural":
        weights = resolved_weights(manifest.info["mixture"], kept)
    if not isinstance(weights, dict) or not weights:
        weights = dict(kept)
    total = sum(float(w) for w in weights.values())
    return {k: float(w) / total for k, w in weights.items()} if total else {}


# a subset's 0 tokens is flagged when the chance of drawing none of its documents is below this
IMPROBABLE = 1e-3


def zero_token_notes(
    rows: list[SourceRow], header: dict[str, Any], manifest: Manifest, last_step: int
) -> list[str]:
    """Why a subset the manifest holds got no tokens: the tokens its weight predicts, and how likely none was.

    The run drew about ``n`` documents (each subset's consumed tokens over its mean document length, summed);
    a subset of weight share ``w`` then gets none of them with probability ``(1 - w) ** n`` (each weighted
    draw is independent; the natural order is deterministic and even likelier to give 0 to a tiny share). Only
    a probability under :data:`IMPROBABLE` warns "check the run's weights"; otherwise the note states the
    expected count and that 0 is a likely draw at this scale.
    """
    zero = [r for r in rows if r.consumed_tokens == 0 and r.kept_tokens > 0]
    consumed = sum(r.consumed_tokens for r in rows)
    if not zero or not consumed or not last_step:
        return []
    kept_docs = {key: counts.docs_kept for key, counts in counts_by_subset(manifest.shards).items()}
    per_doc = {r.key: r.kept_tokens / max(1, kept_docs.get(r.key, 0)) for r in rows if r.kept_tokens}
    draws = sum(r.consumed_tokens / per_doc[r.key] for r in rows if r.consumed_tokens and r.key in per_doc)
    shares = _weight_shares(header, manifest, {r.key: r.kept_tokens for r in rows})
    return [
        zero_token_note(r.key, shares.get(r.key, 0.0), consumed, last_step, per_doc[r.key], draws)
        for r in zero
    ]


def zero_token_note(key: str, share: float, consumed: int, steps: int, per_doc: float, draws: float) -> str:
    """The note for one subset that got 0 tokens (see :func:`zero_token_notes` for the probability model)."""
    if not share:
        return f"{key}: 0 tokens: its mixing weight is 0"
    expected = share * consumed
    p_none = (1.0 - share) ** draws
    said = (
        f"{key}: 0 tokens: weight {share:.1%} x {consumed:,} tokens in {steps} steps = ~{expected:,.0f} "
        "expected "
        f"(~{share * draws:.1f} of ~{draws:,.0f} documents drawn, ~{per_doc:,.0f} tokens each); "
        f"P(none drawn) = {p_none:.2g}"
    )
    if p_none < IMPROBABLE:
        return f"{said}, improbable: check the run's weights"
    first = steps / (share * draws)  # steps per document of this subset, at the run's rate of draws
    return f"{said}: a likely draw at this scale; expect its first document after ~{first:,.0f} steps"


# ---- `audit-run --verify`: the consumption receipt recomputed from the manifest and plan alone
# ----------------
# Every field of a ``step`` record is either recomputed from the plan by ``--verify`` (what the run ate, and
# every count of it) or a measurement of the model and the machine that no plan can recompute (not checked;
# the receipt certifies the data, not the loss). A field the trainer adds must be put in one of the two
# (tests/test_receipt.py).
STEP_FIELDS_VERIFIED = (
    "step",
    "receipt",
    "tokens",
    "tokens_total",
    "counted_tokens",
    "step_tokens_by_source",
    "tokens_by_source",
)
# remote_reads: retries, only when reading remotely; loss_mean, data_share, peak_memory_bytes:
# trainer/core/health.py
STEP_FIELDS_MEASURED = (
    "loss",
    "ce_loss",
    "z_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "data_wait_s",
    "step_time_s",
    "remote_reads",
    "loss_mean",
    "data_share",
    "peak_memory_bytes",
)
# A ``heldout`` record (core/heldout_eval.py): the model scored on the manifest's held-out documents, which
# are not training data: every field is a measurement of the model, outside the receipt (``--verify`` reads no
# such record).
HELDOUT_FIELDS_MEASURED = ("step", *HELDOUT_RECORD_FIELDS, "eval_time_s")
# A checkpoint's trainer_state.json: checked by --verify against the plan, the manifest and the header (and,
# at resume, ``fingerprint`` and ``manifest_id`` are refused when they are not this run's).
TRAINER_STATE_FIELDS_VERIFIED = (
    "step",
    "receipt",
    "tokens",
    "consumed",
    "manifest_id",
    "fingerprint",
    "config",
    "files",
)


@dataclass
class StepCounts:
    """What the plan says step ``k`` consumed: its chain head, label positions (``tokens``: rows x seq_len,
    all batches) and, in packed mode (None in corenet mode, whose piece lengths the manifest does not record),
    the label positions that count (not pad) and the tokens per source of the step."""

    step: int
    head: str
    tokens: int
    counted: int | None
    by_source: dict[str, int] | None


@dataclass
class Verification:
    """The outcome of :func:`verify_run`: ``ok``, else the first step whose record or chain head differs."""

    run_dir: str
    manifest_id: str
    steps: int  # steps the log records (effective, after resumes)
    head: str | None  # the recomputed chain head at the last step
    ok: bool = True
    first_bad_step: int | None = None
    reason: str | None = None
    checked: dict[str, int] = field(default_factory=dict)  # what was compared: steps, ends, checkpoints, deep
    notes: list[str] = field(default_factory=list)

    def fail(self, step: int, reason: str) -> None:
        if self.ok or step < (self.first_bad_step or step + 1):
            self.ok, self.first_bad_step, self.reason = False, step, reason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"run {self.run_dir}  manifest {self.manifest_id[:16]}…  {self.steps} steps"]
        lines.append(", ".join(f"{k}: {v}" for k, v in self.checked.items()) + " checked")
        if self.ok:
            lines.append(f"receipt verified: chain head {self.head}")
        else:
            lines.append(f"receipt FAILS at step {self.first_bad_step}: {self.reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def expected_heads(plan: Plan, manifest_id: str, batches_per_step: list[int]):
    """A :class:`StepCounts` per step, recomputed from the plan: step ``k`` consumes the next
    ``batches_per_step[k - 1]`` global batches. Token counts need the framed lengths: packed mode only."""
    from elm_data.pipeline.stream.receipt import (
        batch_spans,
        chain,
        digest_spans,
        genesis,
        global_batches,
        label_positions,
        step_digest,
    )

    mode = plan.config.mode
    head = genesis(manifest_id, plan.config.to_dict())
    planned = global_batches(plan)
    for k, n in enumerate(batches_per_step, 1):
        digests, counts, positions, counted = [], defaultdict(int), 0, 0
        for _ in range(n):
            bp = next(planned, None)
            if bp is None:
                return  # the stream ended: a run cannot have logged this step
            spans = batch_spans(bp, plan)
            digests.append(digest_spans(bp.batch, spans, mode))
            batch_positions, batch_counted = label_positions(spans, plan.config.seq_len, mode)
            positions, counted = positions + batch_positions, (counted or 0) + (batch_counted or 0)
            for row in spans:
                for span in row:
                    counts[subset_key(span["source"], span["subset"])] += span.get("end", 0) - span["start"]
        head = chain(head, step_digest(digests))
        packed = mode == "packed"
        yield StepCounts(
            k, head, positions, counted if packed else None, dict(sorted(counts.items())) if packed else None
        )


def verify_run(run_dir: str | Path, manifest_dir: str | Path | None = None) -> Verification:
    """Recompute a run's consumption receipt from its manifest and plan alone (no corpus, no model) and
    compare it with every step's logged chain head, the per-step and cumulative tokens per source (packed
    mode), the ``end`` records and the checkpoints' heads. The first step that differs is reported."""
    from elm_data.pipeline.stream.plan import Plan, PlanConfig

    run_dir = Path(run_dir)
    records = read_log(run_dir)
    header = run_header(run_dir, records)
    manifest = Manifest(manifest_dir or header["manifest_dir"])  # refuses a manifest whose files were edited
    plan_config = dict((header.get("stream_state") or {}).get("plan") or {})
    if not plan_config:
        raise AuditError(f"{run_dir}/log.jsonl: the header records no stream plan")
    logged = logged_chain(records)
    if not logged.heads:
        raise AuditError(f"{run_dir}/log.jsonl records no consumption receipt (a run from before receipts?)")
    result = Verification(str(run_dir), manifest.manifest_id, max(logged.heads), None)
    if header.get("manifest_id") != manifest.manifest_id:
        result.notes.append(
            f"the run names manifest {header.get('manifest_id')}, this one is {manifest.manifest_id}"
        )
    for step, reason in logged.problems:
        result.fail(step, reason)
    plan = Plan(manifest, PlanConfig.from_mapping(plan_config, "stream_state.plan"))
    planned = _check_steps(result, logged, plan)
    result.head = planned[result.steps].head if result.steps in planned else None
    _check_end_records(result, logged.ends, planned, manifest, plan_config)
    _check_resumes(result, logged.resumes, planned, plan)
    checkpoints = _check_checkpoints(result, run_dir, planned, header)
    result.checked = {"steps": len(planned), "end records": len(logged.ends), "checkpoints": checkpoints}
    if logged.start:
        result.notes.append(
            f"the run was resumed from a checkpoint whose log is not here: steps 1-{logged.start} "
            "are checked through the resume's chain head only"
        )
    if plan.config.mode != "packed":
        result.notes.append("corenet mode: rows are bound by document and piece order, not by token ranges")
    return result


def _check_steps(result: Verification, logged: LoggedChain, plan: Plan) -> dict[int, PlannedStep]:
    """Compare each logged step with the plan's: its chain head, its label positions (``tokens``,
    ``tokens_total``) and, in packed mode, its counted positions and tokens per source, for the step and
    cumulative. Returns what the plan says of every step its stream reaches."""
    per_step = [logged.batches_per_step.get(k, 1) for k in range(1, result.steps + 1)]
    cumulative: dict[str, int] = defaultdict(int)
    planned: dict[int, PlannedStep] = {}
    total = 0
    for counts in expected_heads(plan, result.manifest_id, per_step):
        k = counts.step
        total += counts.tokens
        for key, n in (counts.by_source or {}).items():
            cumulative[key] += n
        so_far = (
            {key: n for key, n in sorted(cumulative.items()) if n} if counts.by_source is not None else None
        )
        planned[k] = PlannedStep(counts.head, total, so_far)
        record = logged.records.get(k)
        if record is None:
            if k > logged.start:  # steps up to a bare checkpoint's are in another log
                result.fail(k, f"no chain head logged for step {k}")
            continue
        if logged.heads[k] != counts.head:
            result.fail(k, f"the logged chain head {logged.heads[k]} is not the recomputed {counts.head}")
        expected = {
            "tokens": counts.tokens,
            "tokens_total": total,
            "counted_tokens": counts.counted,
            "step_tokens_by_source": counts.by_source,
            "tokens_by_source": so_far,
        }
        for name, value in expected.items():
            if value is None or (record.get("event") != "step" and name not in record):
                continue  # a receipt record (between logged steps) holds the head alone
            if name not in record:
                result.fail(k, f"the step record lacks {name}")
            elif record[name] != value:
                result.fail(k, f"{name} {record[name]} != the plan's {value}")
    if len(planned) < result.steps:
        last = len(planned)
        result.fail(last + 1, f"the log records {result.steps} steps, the plan's stream ends after {last}")
    return planned


@dataclass
class PlannedStep:
    """The plan's figures at the end of a step: chain head, label positions so far, tokens per source so far
    (packed mode; else None)."""

    head: str
    tokens_total: int
    consumed: dict[str, int] | None


def _check_end_records(
    result: Verification,
    ends: list[dict[str, Any]],
    planned: dict[int, PlannedStep],
    manifest: Manifest,
    plan_config: dict[str, Any],
) -> None:
    """An ``end`` record names the chain head of its step, the label positions up to it, the manifest (id and
    Merkle root), the plan and the batches per step."""
    for end in ends:
        k = int(end.get("step", 0))
        if "receipt" not in end:
            continue
        at = planned.get(k)
        expected = {
            "receipt": at.head if at else None,
            "tokens_total": at.tokens_total if at else 0,
            "manifest_id": manifest.manifest_id,
            "merkle_root": manifest.info["merkle_root"],
            "plan": plan_config,
            "steps": k,
        }
        wrong = [f for f, v in expected.items() if end.get(f) != v]
        if wrong:
            result.fail(max(k, 1), f"the end record at step {k} differs in {', '.join(wrong)}")


def _check_resumes(
    result: Verification, resumes: list[dict[str, Any]], planned: dict[int, PlannedStep], plan: Plan
) -> None:
    """A resumed run continues the chain from its checkpoint's head (the genesis head at step 0)."""
    from elm_data.pipeline.stream.receipt import genesis

    for resume in resumes:
        k = int(resume["from_step"])
        expected_head = genesis(result.manifest_id, plan.config.to_dict()) if k == 0 else None
        if k in planned:
            expected_head = planned[k].head
        if resume["receipt"] != expected_head:
            result.fail(
                k + 1, f"the resume from step {k} continues head {resume['receipt']}, not {expected_head}"
            )


def _check_checkpoints(
    result: Verification, run_dir: Path, planned: dict[int, PlannedStep], header: dict[str, Any]
) -> int:
    """Each checkpoint of a verified step: its files match their recorded sha256, and its trainer state names
    the step's chain head, label positions and tokens per source (packed mode), this manifest and the run's
    training settings. Returns how many were compared."""
    from ..core.checkpoint import (
        DIGESTED,
        CheckpointError,
        check_digests,
        list_checkpoints,
        read_trainer_state,
    )

    compared = 0
    fingerprint = _fingerprint(header.get("config"))
    for path in list_checkpoints(run_dir):
        state = read_trainer_state(path)
        k = int(state["step"])
        if k not in planned:
            continue
        compared += 1
        at = planned[k]
        expected = {
            "receipt": at.head,
            "tokens": at.tokens_total,
            "manifest_id": result.manifest_id,
            "fingerprint": fingerprint,
            "consumed": at.consumed,
        }
        expected = {f: v for f, v in expected.items() if v is not None}
        wrong = [f for f, v in expected.items() if state.get(f) != v]
        if _fingerprint(state.get("config")) != fingerprint:
            wrong.append("config")
        try:
            if not check_digests(path, state, DIGESTED, "it is not the file saved"):
                result.notes.append(
                    f"checkpoint {path.name} records no sha256 of its files (written before they did)"
                )
        except CheckpointError as error:
            wrong.append(f"files ({error})")
        if wrong:
            result.fail(k, f"checkpoint {path.name} differs from the run in {', '.join(wrong)}")
    return compared


def _fingerprint(config: Any) -> str | None:
    """The training-settings fingerprint of a logged config (None when it is not one)."""
    from ..core.config import ConfigError, TrainConfig

    try:
        return TrainConfig.from_dict(dict(config)).fingerprint()
    except (ConfigError, TypeError, ValueError):
        return None


def sampled_steps(n: int, steps: int | None) -> list[int]:
    """``steps`` of a run's ``n`` steps spread evenly, the first and the last included (None or >= n: all)."""
    if not steps or steps >= n:
        return list(range(1, n + 1))
    return sorted({1, n, *(1 + round(i * (n - 1) / (steps - 1)) for i in range(steps))} if steps > 1 else {n})


def stream_arguments(config) -> dict[str, Any]:
    """``TokenStream``'s arguments for the stream a run's plan ``config`` (a ``PlanConfig``) describes."""
    weights = "natural" if config.weights is None else config.weights
    return {
        "batch_size": config.batch_size,
        "seq_len": config.seq_len,
        "mode": config.mode,
        "weights": weights,
        "seed": config.seed,
        "epochs": config.epochs,
        "partitions": config.partitions,
    }


def verify_deep(
    run_dir: str | Path,
    outcome: Verification,
    steps: int | None = 4,
    manifest_dir: str | Path | None = None,
    tokenizer: str | None = None,
) -> Verification:
    """``--deep``: re-read the shards (every block's sha256 checked as read) and re-tokenize the batches of a
    sample of steps (``steps`` spread over the run, the first and last included; None: all), resuming the
    stream at each from the plan, and check that the spans the corpus yields chain the logged head of the step
    before into the logged head of the step. A failing step is recorded in ``outcome`` (first failure
    wins)."""
    from elm_data.pipeline.stream import StreamIntegrityError, StreamLoader, TokenStream
    from elm_data.pipeline.stream.receipt import chain, genesis, state_at, step_digest, stream_batch_digest

    run = RunPlan(run_dir, manifest_dir)
    n = run.steps
    chosen = sampled_steps(n, steps)
    c = run.plan.config
    stream = TokenStream(run.manifest, tokenizer=tokenizer, **stream_arguments(c))
    first_batch = {}
    g = 0
    for k in range(1, n + 1):
        first_batch[k] = g
        g += run.logged.batches_per_step.get(k, 1)
    checked = 0
    for k in chosen:
        loader = StreamLoader(stream)
        loader.load_state_dict(state_at(run.plan, run.manifest.manifest_id, first_batch[k]))
        batches = iter(loader)
        per_step = run.logged.batches_per_step.get(k, 1)
        try:
            digests = [stream_batch_digest(next(batches), c.mode) for _ in range(per_step)]
        except (StreamIntegrityError, StopIteration) as error:
            outcome.fail(
                k, f"--deep: the corpus cannot give the batches of step {k}: {error or 'the stream ended'}"
            )
            checked += 1
            continue
        finally:
            batches.close()
        before = genesis(run.manifest.manifest_id, c.to_dict()) if k == 1 else run.logged.heads.get(k - 1)
        if before is None or chain(before, step_digest(digests)) != run.logged.heads.get(k):
            outcome.fail(k, f"--deep: the corpus's batches of step {k} do not chain to its logged head")
        checked += 1
    outcome.checked["deep steps"] = checked
    return outcome
