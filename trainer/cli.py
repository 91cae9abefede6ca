"""Click commands `elm-data train` and `elm-data audit-run` (thin wrappers over loop.train and
audit.audit_run)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from elm_data.core.commands import check_failed, command
from elm_data.sources.remote_option import retries_option

from .core.config import TrainConfig
from .core.loop import train as run_training
from .proof.audit import audit_run as run_audit
from .proof.audit import verify_deep, verify_run


@command("train")
@retries_option
@click.argument(
    "config_path", metavar="CONFIG.yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--resume",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Continue from a checkpoint directory, or a run directory (its newest checkpoint).",
)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Override the config's max_steps."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (log.jsonl, checkpoints/). Default: the config's out_dir or runs/<name>.",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer (else the config, $ELM_DATA_TOKENIZER, the manifest's, the cache).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(
    config_path: Path,
    resume: Path | None,
    max_steps: int | None,
    out_dir: Path | None,
    tokenizer: str | None,
    no_progress: bool,
) -> None:
    """Pretrain an OpenELM on a manifest's token stream, as CONFIG.yaml says.

    Writes RUN_DIR/log.jsonl (a header naming the manifest, tokenizer and config, then per-step loss, lr,
    tokens/s, MFU and cumulative tokens per source/subset) and RUN_DIR/checkpoints/step_N/. Run it under
    `torchrun --nproc-per-node N` for DDP (or FSDP with `distributed: fsdp`).
    """
    config = TrainConfig.from_yaml(config_path, tokenizer=tokenizer)
    result = run_training(
        config, resume=resume, out_dir=out_dir, max_steps=max_steps, progress=not no_progress
    )
    if result.rank != 0:  # under torchrun only rank 0 reports (and writes the log and checkpoints)
        return
    if result.first_loss is not None:
        click.echo(
            f"loss {result.first_loss:.4f} -> {result.last_loss:.4f} over {result.final_step} steps, "
            f"{result.tokens:,} tokens"
        )
    if result.stopped_early:
        click.echo(f"stopped early: {result.stopped_early}")
    click.echo(f"run: {result.run_dir}")
    if result.checkpoint:
        click.echo(f"checkpoint: {result.checkpoint}")


moved_manifest_option = click.option(
    "--manifest",
    "manifest_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The manifest directory, if it moved since training.",
)


@command("audit-run")
@retries_option
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@moved_manifest_option
@click.option(
    "--verify",
    is_flag=True,
    help="Recompute the run's consumption receipt (hash chain of every step's spans) from the manifest and "
    "plan "
    "alone; exit 1 naming the first step that differs.",
)
@click.option(
    "--deep",
    is_flag=True,
    help="With --verify: also re-read the shards and re-tokenize the batches of a sample of steps.",
)
@click.option(
    "--deep-steps",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Steps --deep re-reads, spread over the run (first and last included); 0: all.",
)
@click.option(
    "--tokenizer", default=None, help="Tokenizer for --deep (else $ELM_DATA_TOKENIZER, the manifest's)."
)
def audit_run(
    run_dir: Path,
    fmt: str,
    manifest_dir: Path | None,
    verify: bool,
    deep: bool,
    deep_steps: int,
    tokenizer: str | None,
) -> None:
    """Tokens a run consumed per source/subset vs its manifest's kept tokens and the OpenELM target shares.

    With --verify: recompute the consumption receipt from the manifest and the stream's plan (no corpus, no
    model) and check every step's logged chain head, tokens per source, end records and checkpoints.
    """
    if deep and not verify:
        raise click.UsageError("--deep goes with --verify")
    if verify:
        outcome = verify_run(run_dir, manifest_dir=manifest_dir)
        if deep and outcome.ok:
            verify_deep(
                run_dir, outcome, steps=deep_steps or None, manifest_dir=manifest_dir, tokenizer=tokenizer
            )
        click.echo(json.dumps(outcome.to_dict(), indent=2) if fmt == "json" else outcome.format())
        if not outcome.ok:
            check_failed()
        return
    report = run_audit(run_dir, manifest_dir=manifest_dir)
    click.echo(report.to_json() if fmt == "json" else report.format_table())


@command("trace")
@retries_option
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--doc", "doc_ref", default=None, metavar="SOURCE/SUBSET:DOC_ID", help="The document to trace.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@moved_manifest_option
@click.option(
    "--text", default=None, help="Find the consumed documents holding the longest spans of this text."
)
@click.option(
    "--min-tokens", type=click.IntRange(min=1), default=4, show_default=True, help="--text: shortest span."
)
@click.option(
    "--top", type=click.IntRange(min=1), default=5, show_default=True, help="--text: spans to report."
)
@click.option("--rebuild-index", is_flag=True, help="--text: rebuild RUN_DIR/trace_index/ even if present.")
@click.option(
    "--tokenizer", default=None, help="--text: tokenizer (else $ELM_DATA_TOKENIZER, the manifest's)."
)
def trace(
    run_dir: Path,
    doc_ref: str | None,
    fmt: str,
    manifest_dir: Path | None,
    text: str | None,
    min_tokens: int,
    top: int,
    rebuild_index: bool,
    tokenizer: str | None,
) -> None:
    """The steps (rank, micro-batch, row, token span) at which a run consumed a document's tokens (--doc), or
    the consumed documents and steps holding the longest spans of a text (--text).

    --doc is computed from the run's log and the stream's plan alone: no corpus, no tokenizer, no model.
    --text
    builds RUN_DIR/trace_index/ on first use (a suffix array over the framed tokens of every document the run
    consumed, each once; the stream is replayed over the run's batches) and tokenizes the text.
    """
    if bool(doc_ref) == bool(text):
        raise click.UsageError("give either --doc SOURCE/SUBSET:DOC_ID or --text TEXT")
    if text:
        _trace_text(run_dir, manifest_dir, text, tokenizer, rebuild_index, min_tokens, top, fmt == "json")
    else:
        _trace_doc(run_dir, manifest_dir, doc_ref, fmt == "json")


def _trace_text(run_dir, manifest_dir, text, tokenizer, rebuild_index, min_tokens, top, as_json) -> None:
    """Print the consumed documents (and steps) holding the longest spans of ``text``."""
    from elm_data.pipeline.tokenizer import resolve_tokenizer

    from .proof.records import RunPlan
    from .proof.trace import open_text_index, trace_text

    run = RunPlan(run_dir, manifest_dir)
    tok = resolve_tokenizer(tokenizer, None, run.manifest.info)
    index = open_text_index(run_dir, manifest_dir, tok, rebuild=rebuild_index)
    query = tok.encode(text)
    spans = trace_text(index, query, min_tokens=min_tokens, top=top)
    if as_json:
        click.echo(json.dumps(spans, indent=2))
        return
    click.echo(f"{len(query)} query tokens; {len(spans)} span(s) of >= {min_tokens} tokens found")
    for span in spans:
        i, j = span["query_tokens"]
        click.echo(f"\n{span['length']} tokens, {span['count']} occurrence(s): {tok.decode(query[i:j])!r}")
        for o in span["occurrences"]:
            click.echo(
                f"  {o['ref']}  shard {o['shard_sha256'][:12]}… record {o['index']}  "
                f"offset {o['doc_offset']}  steps {o['steps']}"
            )


def _trace_doc(run_dir, manifest_dir, doc_ref: str, as_json: bool) -> None:
    """Print every row (step, rank, micro-batch, spans) at which the run consumed ``doc_ref``."""
    from .proof.trace import trace_doc

    hits = trace_doc(run_dir, doc_ref, manifest_dir=manifest_dir)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    steps = sorted({h.step for h in hits})
    if not hits:  # trace_doc refused a document the manifest lacks: this one is there, and was never fed
        from .proof.records import RunPlan
        from .proof.trace import ledger_status, parse_doc_ref

        status, reason = ledger_status(RunPlan(run_dir, manifest_dir).manifest, *parse_doc_ref(doc_ref))
        why = f"{status} ({reason})" if reason else status
        click.echo(f"{doc_ref}: in the manifest ({why}), never consumed by this run: 0 rows")
        return
    click.echo(f"{doc_ref}: {len(hits)} row(s) in {len(steps)} step(s)")
    click.echo(f"{'step':>8}{'batch':>8}{'rank':>6}{'micro':>7}{'row':>6}{'row span':>14}{'doc span':>16}")
    for h in hits:
        doc_span = "-" if h.doc_start is None else f"{h.doc_start}:{h.doc_end}"
        row_span = f"{h.start}:{'' if h.end is None else h.end}"
        click.echo(
            f"{h.step:>8}{h.batch_index:>8}{h.rank:>6}{h.micro_batch:>7}{h.row:>6}{row_span:>14}{doc_span:>16}"
        )


@command("train")
@retries_option
@click.argument(
    "matrix_path", metavar="MATRIX.yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for results.csv, results.json, cells.jsonl and the plots (must not hold a matrix).",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Manifest directory feeding every cell (else the matrix's `manifest:`).",
)
@click.option("--device", default=None, help="Override the matrix's device (auto, cpu, cuda).")
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer path/URL (else the matrix, the manifest, $ELM_DATA_TOKENIZER).",
)
def bench_train(
    matrix_path: Path, out_dir: Path, manifest: Path | None, device: str | None, tokenizer: str | None
):
    """Sweep a training-efficiency matrix: tokens/s, MFU, memory, loader stall, loss per dollar per cell.

    Cells that cannot run here (no kernel, OOM, too few processes, no CUDA) are recorded with their reason.
    See trainer/configs/bench_matrix.yaml and docs/trainer.md.
    """
    from .bench.efficiency import run_matrix
    from .bench.matrix import Matrix

    matrix = Matrix.from_yaml(
        matrix_path, manifest=str(manifest.resolve()) if manifest else None, device=device
    )
    result = run_matrix(matrix, out_dir, tokenizer=tokenizer, echo=click.echo, progress=True)
    if not result.main:  # under torchrun only rank 0 reports
        return
    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items() if n)
    click.echo(f"{len(result.rows)} cells ({counts}): {result.out_dir}")
