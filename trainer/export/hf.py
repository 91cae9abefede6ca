"""Exports of trained checkpoints that carry their data: `elm-data export hf` for a checkpoint, a run, or
``--init``.

A checkpoint inside a run directory (``RUN/checkpoints/step_N``) is exported with a model card (``README.md``,
Hugging Face front matter) naming the manifest (id, Merkle root), the tokens consumed per source/subset at
that step against the manifest and the OpenELM targets (:func:`elm_data.trainer.proof.audit.audit_run`), the
training config, the step, its loss and the tool versions; and with the run's tokenizer (the sha256 the run
logged) when it can be found (``--tokenizer``, ``$ELM_DATA_TOKENIZER``, the logged location, the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from elm_data.core import __version__
from elm_data.core.errors import OutputExists
from elm_data.manifests.audit_store import mix_summary, summary_lines
from elm_data.manifests.manifest import Manifest
from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.model.weights import DTYPES, WEIGHTS_FILE, export_hf
from elm_data.pipeline.tokenizer import TokenizerNotFound, resolve_tokenizer
from elm_data.sources.registry import get_subset

from ..core.checkpoint import (
    TRAINER_STATE,
    CheckpointError,
    list_checkpoints,
    load_checkpoint_model,
    read_trainer_state,
)
from ..core.runlog import LOG_FILE, effective_steps, read_log
from ..proof.audit import RunAudit, audit_run

HF_DATASETS = "hf://datasets/"


@dataclass
class CheckpointRun:
    """A checkpoint and what its run logged about it."""

    checkpoint: Path
    run_dir: Path
    header: dict[str, Any]
    step: int
    step_record: dict[str, Any] | None  # the logged step record at the checkpoint's step (loss, tokens)
    heldout_record: dict[str, Any] | None = None  # the last held-out evaluation at or before that step


def newest_checkpoint(path: str | Path) -> Path:
    """A run directory's newest checkpoint; any other path as given."""
    checkpoints = list_checkpoints(path)
    return checkpoints[-1] if checkpoints else Path(path)


def run_of(checkpoint: str | Path) -> CheckpointRun | None:
    """The run around ``checkpoint`` (``RUN/checkpoints/step_N`` with ``RUN/log.jsonl``), or None."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    if not ((checkpoint / TRAINER_STATE).is_file() and (run_dir / LOG_FILE).is_file()):
        return None
    records = read_log(run_dir)
    header = next((r for r in records if r.get("event") == "header"), None)
    if header is None:
        return None
    step = int(read_trainer_state(checkpoint)["step"])
    record = next((r for r in effective_steps(records) if r["step"] == step), None)
    held = [r for r in effective_steps(records, "heldout") if r["step"] <= step]
    return CheckpointRun(checkpoint, run_dir, header, step, record, held[-1] if held else None)


def model_card(run: CheckpointRun, audit: RunAudit, manifest: Manifest, tokenizer_sha256: str | None) -> str:
    """``README.md`` for an export of ``run.checkpoint``: HF metadata front matter, then what data made it.

    The front matter and the "Training data" section carry the same facts (manifest id, Merkle root, tokens
    per source/subset, the consumption receipt at the checkpoint's step), for machines and for readers.
    """
    origins = data_origins(manifest)
    mix = mix_summary(manifest)  # the dedup filter's counts and the audits bound to this manifest id
    receipt = read_trainer_state(run.checkpoint)["receipt"]
    config = run.header["config"]
    front = _front_matter(run, audit, manifest, origins, receipt)
    front["elm_data"] |= {"mix": mix} if mix else {}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {config['name']} step {run.step} (OpenELM, trained with elm-data)",
        "",
        "Model: OpenELM (arXiv 2404.14619) with layer-wise scaling, "
        f"{run.header['parameters']:,} parameters. Load offline with "
        "`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`: the code is in this folder.",
        "",
        *_data_section(run, audit, manifest, origins, receipt, tokenizer_sha256),
        *_mix_section(mix),
        *_heldout_section(run.heldout_record),
        *_training_section(run, audit, portable(config, run.run_dir.resolve())),
    ]
    return "\n".join(lines)


def consumed_datasets(audit: RunAudit, manifest: Manifest) -> list[str]:
    """The Hugging Face dataset ids of the corpora the run really ate: every source/subset with tokens
    consumed (the run log's counts), by the registry's ``hub_dataset``; none for the synthetic sample."""
    if manifest.synthetic:
        return []
    eaten = {r.key for r in audit.rows if r.consumed_tokens > 0}
    return sorted({hub for key in eaten if (hub := get_subset(*key.split("/", 1)).hub_dataset)})


def _front_matter(run, audit: RunAudit, manifest: Manifest, origins, receipt: str | None) -> dict[str, Any]:
    """The card's Hugging Face metadata, with an ``elm_data`` block naming the data."""
    synthetic = ["synthetic-data"] if manifest.synthetic else []
    return {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": "other",
        "tags": ["openelm", "elm-data", "pretraining-provenance", *synthetic],
        **({"datasets": datasets} if (datasets := consumed_datasets(audit, manifest)) else {}),
        "elm_data": {
            "manifest_id": manifest.manifest_id,
            "merkle_root": manifest.info["merkle_root"],
            "synthetic_data": manifest.synthetic,
            "step": run.step,
            "tokens_by_source": {r.key: r.consumed_tokens for r in audit.rows if r.consumed_tokens},
            "consumption_receipt": receipt,
        },
    }


def _data_section(run, audit: RunAudit, manifest: Manifest, origins, receipt, tokenizer_sha256) -> list[str]:
    """The "Training data" lines: manifest, tokenizer, receipt, where each source comes from, tokens
    consumed."""
    rows = [
        f"| {r.key} | {r.consumed_tokens:,} | {r.kept_tokens:,} | {_fmt(r.fraction_consumed, '.4f')} "
        f"| {_pct(r.share)} | {_pct(r.target_share)} |"
        for r in audit.rows
    ]
    return [
        "## Training data",
        "",
        *([SYNTHETIC_CARD_NOTE, ""] if manifest.synthetic else []),
        f"- manifest id: `{manifest.manifest_id}`",
        f"- Merkle root of its shard records: `{manifest.info['merkle_root']}`",
        f"- tokenizer sha256: `{tokenizer_sha256 or run.header['tokenizer']['sha256']}`",
        f"- consumption receipt at step {run.step} (hash chain over every step's token spans, in order): "
        f"`{receipt}`; `elm-data audit-run RUN --verify` recomputes it from the manifest and the plan alone",
        "",
        "| source/subset | upstream | licence |",
        "|---|---|---|",
        *[
            f"| {key} | {_upstream_cell(upstream, manifest)} | {licence} |"
            for key, (upstream, licence) in origins.items()
        ],
        "",
        f"Tokens consumed up to step {audit.last_step} per source/subset (`elm-data audit-run`): consumed, "
        "the "
        "manifest's kept tokens, consumed/kept, the share of consumed tokens and OpenELM's target share.",
        "",
        "| source/subset | consumed | kept | consumed/kept | share | target share |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        f"| total | {audit.consumed_total:,} | {sum(r.kept_tokens for r in audit.rows):,} | | | |",
        "",
        *[f"Note: {note}." for note in audit.notes],
        "",
    ]


def _mix_section(mix: dict[str, Any]) -> list[str]:
    """What is known of duplication and evaluation-set contamination in the manifest (``audit_store``)."""
    said = summary_lines(mix) or [
        "No dedup filter, and no audit stored with this manifest: nothing is said here about duplicates or "
        "evaluation-set contamination (`elm-data audit duplicates|contamination MANIFEST --save` stores one)."
    ]
    return ["### Duplication and contamination", "", *[f"- {line}" for line in said], ""]


SYNTHETIC_CARD_NOTE = (
    "**Synthetic data.** This model was trained on elm-data's synthetic sample: generated text written in "
    "the "
    "published formats of the subsets below, not text from those corpora. It says nothing about the corpora; "
    "the upstream column names only the corpus whose format each subset imitates."
)


def _upstream_cell(upstream: str, manifest: Manifest) -> str:
    return f"none: synthetic text in the format of {upstream}" if manifest.synthetic else upstream


def token_totals_note(run: CheckpointRun, audit: RunAudit) -> str:
    """The two token totals of a run and how they meet: positions trained (``tokens_total``: sequences x
    seq_len, padding included) and tokens consumed (the log's per-source counts: each sequence's seq_len + 1
    tokens, its last one a target only, less padding)."""
    seq_len = int(run.header["stream_state"]["plan"]["seq_len"])
    positions = int(run.step_record.get("tokens_total", 0)) if run.step_record else 0
    sequences = positions // seq_len
    padding = sequences * (seq_len + 1) - audit.consumed_total
    return (
        f"- two token totals: {positions:,} positions trained ({sequences:,} sequences x {seq_len} inputs, "
        "padding "
        f"included) and {audit.consumed_total:,} tokens consumed from the data (each sequence holds "
        f"{seq_len + 1} "
        f"tokens, its last one only a target: {sequences:,} x {seq_len + 1} = {sequences * (seq_len + 1):,} "
        "slots, "
        f"{padding:,} of them padding)"
    )


def portable(value: Any, run_dir: Path) -> Any:
    """``value`` with every absolute local path made relative to ``run_dir`` (under it) or cut to its last
    part (elsewhere, as ``…/name``): a card published anywhere embeds no path of the machine it was made
    on."""
    if isinstance(value, dict):
        return {k: portable(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, run_dir) for v in value]
    if not isinstance(value, str) or not (value.startswith("/") or value.startswith("file://")):
        return value
    path = Path(value.removeprefix("file://"))
    return path.relative_to(run_dir).as_posix() if path.is_relative_to(run_dir) else f"…/{path.name}"


def _heldout_section(record: dict[str, Any] | None) -> list[str]:
    """The "Held-out evaluation" table: per source/subset, the run's last evaluation on the manifest's
    held-out documents (never trained on) at or before this checkpoint; nothing when the run logged none."""
    if not record:
        return []
    lines = [
        "## Held-out evaluation",
        "",
        "On the manifest's held-out documents of each source/subset (never streamed for training), at "
        "step "
        f"{record['step']}:",
        "",
        "| source/subset | documents | tokens | loss (nats/token) | perplexity | bits per byte |",
        "|---|---|---|---|---|---|",
    ]
    for key, loss in record["loss_by_source"].items():
        lines.append(
            f"| {key} | {record['docs_by_source'][key]} | {record['tokens_by_source'][key]:,} | {loss:.4f} | "
            f"{record['perplexity_by_source'][key]:.2f} | "
            f"{_fmt(record['bits_per_byte_by_source'][key], '.4f')} |"
        )
    return [*lines, ""]


def _training_section(run: CheckpointRun, audit: RunAudit, config: dict[str, Any]) -> list[str]:
    """The "Training" lines: step, loss, tokens seen, code version and the full training config."""
    loss = run.step_record.get("loss") if run.step_record else None
    code = run.header["code_version"]
    return [
        "## Training",
        "",
        f"- step {run.step} of {config['max_steps']}; loss at this step: {_fmt(loss, '.4f')}",
        token_totals_note(run, audit),
        f"- code: elm-data {code['elm_data']} (git {code['git_commit']}); exported by elm-data {__version__}",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=True).rstrip(),
        "```",
        "",
    ]


def data_origins(manifest: Manifest) -> dict[str, tuple[str, str]]:
    """source/subset -> (upstream repository or URL, licence), from the source registry and the shard
    records."""
    origins = {}
    for shard in manifest.shards:
        if shard.key not in origins:
            origins[shard.key] = (get_subset(shard.source, shard.subset).upstream, shard.licence)
    return origins


def checkpoint_card(run: CheckpointRun) -> dict[str, str]:
    """``{"README.md": card}`` for a checkpoint of a run, audited at the checkpoint's step."""
    audit = audit_run(run.run_dir, at_step=run.step)
    card = model_card(run, audit, Manifest(audit.manifest_dir), run.header["tokenizer"]["sha256"])
    return {"README.md": card}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def tokenizer_bytes(flag: str | None, pinned: dict[str, Any] | None, required: bool) -> bytes | None:
    """The SentencePiece model to ship: ``flag`` > ``$ELM_DATA_TOKENIZER`` > the pinned location > the cache.

    ``pinned`` (``{"uri", "sha256"}``, as a run logs it) fixes the sha256 it must have. None when nothing is
    found and ``required`` is false; any other tokenizer problem raises its ``TokenizerError``.
    """
    try:
        tokenizer = resolve_tokenizer(flag, None, {"tokenizer": pinned} if pinned else None)
    except TokenizerNotFound:
        if required:
            raise
        return None
    return tokenizer.model_bytes  # its sha256 is the pinned one


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    tokenizer: str | None = None,
    echo=print,
) -> Path:
    """Export one checkpoint (with its card and tokenizer when it lies in a run directory)."""
    run = run_of(checkpoint)
    model = load_checkpoint_model(checkpoint)
    extra, proto = {}, None
    if run is not None:
        proto = tokenizer_bytes(tokenizer, run.header["tokenizer"], required=tokenizer is not None)
        extra = checkpoint_card(run)
    else:  # outside a run: the documented order (--tokenizer > $ELM_DATA_TOKENIZER > the cache)
        proto = tokenizer_bytes(tokenizer, None, required=tokenizer is not None)
    if proto is None:
        echo("no tokenizer found: the export has none (pass --tokenizer or set $ELM_DATA_TOKENIZER)")
    export_hf(
        model, out_dir, dtype=DTYPES[dtype] if dtype else None, tokenizer_model=proto, extra_files=extra
    )
    what = ["weights", "HF code"] + (["tokenizer"] if proto else []) + (["model card"] if extra else [])
    echo(f"{checkpoint} -> {out_dir} ({', '.join(what)}; {model.config.num_parameters():,} parameters)")
    return Path(out_dir)


def export_init(
    name: str,
    out_dir: str | Path,
    seed: int = 0,
    dtype: str | None = None,
    tokenizer=None,
    echo=print,
    progress: bool = False,
):
    """Export a freshly initialised published-size model (no card: it saw no data).

    ``progress``: a bar on stderr over its two halves (270M: ~9 s to initialise, ~10 s to write, on one
    core)."""
    from tqdm import tqdm

    config = OpenELMConfig.named(name)
    echo(f"initialising OpenELM-{name} ({config.num_parameters():,} parameters, seed {seed}) ...")
    # as export_checkpoint resolves it
    proto = tokenizer_bytes(tokenizer, None, required=tokenizer is not None)
    if proto is None:
        echo("no tokenizer found: the export has none (pass --tokenizer or set $ELM_DATA_TOKENIZER)")
    with tqdm(
        total=2, desc="initialise, write", unit="half", disable=not progress, dynamic_ncols=True
    ) as bar:
        torch.manual_seed(seed)
        model = OpenELM(config)
        bar.update()
        export_hf(model, out_dir, dtype=DTYPES[dtype] if dtype else None, tokenizer_model=proto)
        bar.update()
    return Path(out_dir)


def export_run(
    run_dir: str | Path, out_root: str | Path, dtype=None, tokenizer=None, echo=print
) -> list[Path]:
    """Every checkpoint of a run into ``out_root/step_N``, each with its card."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"{run_dir} holds no checkpoints (expected {run_dir}/checkpoints/step_*)")
    return [export_checkpoint(c, Path(out_root) / c.name, dtype, tokenizer, echo) for c in checkpoints]


def refuse_overwrite(out_dir: str | Path, overwrite: bool) -> None:
    """Raise :class:`OutputExists` when ``out_dir`` already holds an export and ``overwrite`` is not given."""
    if (Path(out_dir) / WEIGHTS_FILE).exists() and not overwrite:
        raise OutputExists(f"{out_dir} already holds {WEIGHTS_FILE} (pass --overwrite)")
