"""Commands: ``build manifest``, ``verify``, ``audit``, ``export croissant`` (thin layers over the
modules)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from elm_data.core.commands import check_failed, command
from elm_data.core.known_tokenizers import token_unit
from elm_data.sources.blocks import BLOCK_BYTES
from elm_data.sources.remote_option import retries_option


@command("manifest")
@retries_option
@click.argument("mixture", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Manifest directory to write."
)
@click.option(
    "--tokenizer",
    default=None,
    help="LLaMA SentencePiece model (else the mixture's tokenizer:, $ELM_DATA_TOKENIZER, the sha256 cache).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes (local runner).",
)
@click.option(
    "--runner",
    type=click.Choice(["local", "beam", "beam-portable"]),
    default="local",
    show_default=True,
    help="local: worker processes; beam: a Beam pipeline (--beam-arg); beam-portable: the Beam pipeline "
    "through "
    "Beam's portability layer on this machine (PortableRunner; job service, worker pool, SDK worker: "
    "processes).",
)
@click.option(
    "--restart", is_flag=True, help="Discard an interrupted build's workspace; count every shard anew."
)
@click.option(
    "--beam-arg",
    "beam_args",
    multiple=True,
    metavar="ARG",
    help="Beam pipeline option, repeatable (e.g. --beam-arg=--runner=FlinkRunner). Default: in-process "
    "DirectRunner.",
)
@click.option(
    "--workspace",
    default=None,
    metavar="URL",
    help="Where per-shard results go [default: OUT.partial]; on a Beam cluster, a URL all workers reach.",
)
@click.option(
    "--dropped-samples",
    "dropped_samples",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    metavar="K",
    help="Also write OUT/dropped_samples.jsonl: the first K filtered documents and K rejected records per "
    "reason, "
    "in manifest order (0: off). Does not change the manifest id.",
)
@click.option(
    "--accept-damaged",
    is_flag=True,
    help="Record damaged shards (truncated archive, unreadable file, wrong parquet schema) as counted "
    "rejections "
    "instead of failing the build.",
)
@click.option("--overwrite", is_flag=True, help="Replace a manifest already at --out (and every file in it).")
@click.option(
    "--block-bytes",
    type=click.IntRange(min=1),
    default=BLOCK_BYTES,
    show_default=True,
    help="Target size of a plain-JSONL block in the block index: the unit the stream verifies, resumes from "
    "and "
    "deals to partitions (parquet blocks are row groups; a compressed shard is one block).",
)
@click.option(
    "--allow-local-shards",
    is_flag=True,
    help="Let a shards_from list that is not a local file (remote, or inside a zip) name local paths.",
)
def build_manifest(
    mixture,
    out_dir,
    tokenizer,
    workers,
    runner,
    restart,
    beam_args,
    workspace,
    dropped_samples,
    accept_damaged,
    overwrite,
    block_bytes,
    allow_local_shards,
):
    """Count every shard of MIXTURE.yaml through the per-document pass and write a manifest to --out.

    Shard results are committed to OUT.partial/ as they finish; re-running after an interruption
    reuses them. Exits non-zero, naming each shard, when a shard is missing, changed or damaged (truncated,
    unreadable, wrong schema: how many documents it held is unknown); --accept-damaged records the damage
    as counted rejections instead. Bad records (malformed JSON, invalid UTF-8, missing or empty text) are
    always counted as rejections by reason.
    """
    from .build import build_manifest as build

    if runner == "local":  # this process and its forked workers use no pandas objects (issue 25)
        from elm_data.core.lazy import pyarrow_without_implicit_pandas

        pyarrow_without_implicit_pandas()
    result = build(
        mixture,
        out_dir,
        tokenizer=tokenizer,
        workers=workers,
        runner=runner,
        restart=restart,
        progress=True,
        beam_args=beam_args,
        workspace=workspace,
        dropped_samples=dropped_samples,
        accept_damaged=accept_damaged,
        overwrite=overwrite,
        block_bytes=block_bytes,
        allow_local_shards=allow_local_shards,
    )
    _print_build(result, out_dir, dropped_samples)


def _print_build(result, out_dir: str, dropped_samples: int) -> None:
    t = result.totals
    click.echo(
        f"manifest {result.manifest_id}\n"
        f"  written to   {result.manifest_dir}\n"
        f"  merkle root  {result.merkle_root}\n"
        f"  shards       {result.shards} ({result.shards_reused} reused from an interrupted build)\n"
        f"  documents    {t['docs_read']:,} read = {t['docs_kept']:,} kept + {t['docs_heldout']:,} held out "
        f"+ {t['docs_filtered']:,} filtered + {t['docs_rejected']:,} rejected\n"
        f"  filtered     {json.dumps(t['filtered_by_reason'])}\n"
        f"  rejected     {json.dumps(t['rejected_by_reason'])}\n"
        f"  tokens       {t['tokens']:,} (exact {token_unit(result.tokenizer.get('sha256'))}, no BOS/EOS)"
    )
    r = result.remote
    if r.get("bytes_fetched") or r.get("retries") or r.get("failed"):
        click.echo(
            f"  remote       {r['bytes_fetched']:,} bytes fetched, {r['retries']} read(s) retried "
            f"{json.dumps(r['retries_by_reason'])}"
        )
    if dropped_samples:
        from .manifest import DROPPED_SAMPLES_FILE

        click.echo(
            f"  dropped      first {dropped_samples} per reason in {Path(out_dir) / DROPPED_SAMPLES_FILE}"
        )


@command("verify")
@retries_option
@click.argument("manifest_dir", type=click.Path(file_okay=False))
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1), help="Hashing threads.")
def verify(manifest_dir, workers):
    """Re-hash every shard of MANIFEST_DIR and check the manifest's Merkle root and id.

    Exits 0 when everything matches; otherwise 1 with the list of missing or mismatched shards.
    """
    from tqdm import tqdm

    from .build import load_manifest
    from .verify import verify_manifest

    manifest = load_manifest(manifest_dir, verify=False)  # verify reports every problem instead of refusing
    with tqdm(total=len(manifest.shards), unit="shard", desc="hashing shards", dynamic_ncols=True) as bar:
        report = verify_manifest(manifest_dir, workers=workers, on_shard=lambda _: bar.update(1))
    if not report.ok:
        click.echo(report.summary(), err=True)
        check_failed()
    click.echo(report.summary())


@command("audit")
@click.argument("manifest_dir", type=click.Path(file_okay=False))
@click.option(
    "--targets", default=None, help="Target preset ('openelm') or YAML file; default: the manifest's own."
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Also write a PNG chart."
)
def audit(manifest_dir, targets, fmt, plot_path):
    """Per source/subset: shards, documents read/kept/held out/filtered/rejected, characters, tokens, share
    of the mix, target tokens and share, and the deviation (percentage points and ratio)."""
    from .audit import audit_manifest, format_table
    from .build import load_manifest

    if plot_path:  # refused before the work, as a bad flag is
        from .plot import check_plot_path

        check_plot_path(plot_path)
    result = audit_manifest(load_manifest(manifest_dir), targets=targets)
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_table(result))
    if plot_path:
        from .plot import plot_audit

        written = plot_audit(result, plot_path)
        click.echo(f"plot written to {written}", err=True)


@command("croissant")
@click.argument("manifest_dir", type=click.Path(file_okay=False))
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="Output file [default: DIR/croissant.json]."
)
def export_croissant(manifest_dir, out):
    """Export MANIFEST_DIR as Croissant 1.1 JSON-LD (shards as FileObjects with sha256 and provenance)."""
    from .build import load_manifest
    from .croissant import export_croissant as export

    load_manifest(manifest_dir)
    written = export(manifest_dir, out)
    click.echo(f"croissant written to {Path(written)}")


SAVE_HELP = (
    "Also keep the JSON report in MANIFEST_DIR/audits/ (bound to the manifest id), where the model card and "
    "the "
    "Croissant export find it and carry its summary."
)


@command("duplicates")
@retries_option
@click.argument("manifest_dir", type=click.Path(file_okay=False))
@click.option(
    "--threshold", type=float, default=0.8, show_default=True, help="Near: estimated Jaccard to reach."
)
@click.option("--shingle", type=int, default=5, show_default=True, help="Near: words per shingle.")
@click.option("--num-perm", type=int, default=128, show_default=True, help="Near: MinHash permutations.")
@click.option("--exact-only", is_flag=True, help="Exact duplicates only (no datasketch needed).")
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Processes sketching shards."
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Also write a heatmap."
)
@click.option("--save", is_flag=True, help=SAVE_HELP)
def duplicates(manifest_dir, threshold, shingle, num_perm, exact_only, workers, fmt, plot_path, save):
    """Exact (hash of normalized text) and near (MinHash-LSH, datasketch) duplicates among MANIFEST_DIR's kept
    documents: rates per source/subset, the cross-subset overlap, the largest clusters."""
    from .duplicates import DedupSettings, audit_duplicates, format_table, plot_duplicates
    from .manifest import Manifest

    settings = DedupSettings(shingle, num_perm, threshold, near=not exact_only)
    if plot_path:
        from .plot import check_plot_path

        check_plot_path(plot_path)
    manifest = Manifest(manifest_dir)
    report = audit_duplicates(manifest, settings, workers=workers).to_json()
    click.echo(json.dumps(report, indent=2, sort_keys=True) if fmt == "json" else format_table(report))
    if save:
        from .audit_store import save_audit

        click.echo(f"report saved to {save_audit(manifest, 'duplicates', report)}", err=True)
    if plot_path:
        click.echo(f"plot written to {plot_duplicates(report, plot_path)}", err=True)
