"""Click command ``elm-data report`` (a thin wrapper over :func:`.report.write_report`)."""

from __future__ import annotations

from pathlib import Path

import click

from elm_data.core.commands import command

from .proof.report import write_report


@command("report")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.html and the PNGs (replaced whole). Default: RUN/report.",
)
@click.option(
    "--manifest",
    "manifest_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The manifest directory, if it moved since training.",
)
@click.option(
    "--card",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="An export's folder (or its README.md) to link as the model card. Default: one found beside the "
    "run.",
)
def report(run_dir: Path, out: Path | None, manifest_dir: Path | None, card: Path | None) -> None:
    """One self-contained HTML page (and PNGs) of a run: loss, tokens per source vs targets, throughput and
    stall, held-out loss, the receipt's status (audit-run --verify), manifest id and Merkle root, model
    card."""
    result = write_report(run_dir, out=out, manifest_dir=manifest_dir, card=card)
    click.echo(f"receipt: {result.receipt}")
    click.echo(f"charts: {', '.join(result.charts)}" + ("" if result.heldout else "; no held-out records"))
    click.echo(f"report: {result.html} ({result.seconds:.1f} s)")
