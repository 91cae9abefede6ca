"""``elm-data audit contamination``: here (layer 5) rather than in ``manifests/`` because ``--run`` reads a
run's plan (``trace.RunPlan``) to find the documents it consumed; the audit itself is
``manifests/contamination.py``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from elm_data.core.commands import command
from elm_data.core.errors import InvalidValue
from elm_data.manifests.audit_store import save_audit
from elm_data.manifests.cli import SAVE_HELP
from elm_data.manifests.contamination import DEFAULT_NGRAM, MatchRule, audit_contamination, format_table
from elm_data.manifests.eval_tasks import load_tasks
from elm_data.manifests.manifest import Manifest
from elm_data.sources.remote_option import retries_option


@command("contamination")
@retries_option
@click.argument("manifest_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tasks",
    "task_specs",
    multiple=True,
    required=True,
    metavar="TASK",
    help="Repeatable: items.jsonl (a 'text' and an 'id' per line), an lm-eval task YAML (dataset_path: "
    "json), "
    "or an lm-eval task name (needs the Hugging Face hub).",
)
@click.option("--ngram", type=int, default=DEFAULT_NGRAM, show_default=True, help="Words per n-gram.")
@click.option(
    "--min-overlap",
    type=float,
    default=None,
    help="Contaminated when this fraction of an item's n-grams is found (default: any one n-gram, GPT-3's "
    "rule).",
)
@click.option(
    "--run",
    "run_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Only the documents this training run consumed (from its log and the stream's plan).",
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Processes scanning shards."
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--save", is_flag=True, help=SAVE_HELP + " Not with --run.")
def contamination(manifest_dir, task_specs, ngram, min_overlap, run_dir, workers, fmt, save):
    """N-gram overlap between evaluation items and MANIFEST_DIR's kept documents, per task and source/subset:
    contaminated items, documents and tokens, with example item and document ids (normalized 13-grams by
    default; see docs/manifests.md)."""
    if save and run_dir is not None:
        raise InvalidValue("--save keeps audits of the whole manifest; a --run audit is printed only")
    rule = MatchRule(ngram, min_overlap)
    manifest = Manifest(manifest_dir)  # refuses an edited manifest before any task is loaded
    only = None
    if run_dir is not None:
        from .proof.records import RunPlan

        only = RunPlan(run_dir, manifest_dir).consumed_records()
    tasks = load_tasks(task_specs)
    run = None if run_dir is None else str(run_dir)
    result = audit_contamination(manifest, tasks, rule, only=only, run=run, workers=workers)
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_table(result))
    if save:
        click.echo(f"report saved to {save_audit(manifest, 'contamination', result.to_json())}", err=True)
