"""Commands for the real corpora: ``init openelm|openelm-1pct DIR`` and ``estimate MIXTURE``."""

from __future__ import annotations

from pathlib import Path

import click

from elm_data.core.commands import command
from elm_data.sources.remote_option import retries_option


@command("init")
@click.argument("preset", type=click.Choice(["openelm", "openelm-1pct"]))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--pin", is_flag=True, help="Ask the hub for each repo's current commit and write it as `revision:`."
)
@click.option("--force", is_flag=True, help="Replace an existing PRESET.yaml in OUT_DIR.")
def init(preset: str, out_dir: Path, pin: bool, force: bool) -> None:
    """Write OUT_DIR/PRESET.yaml: OpenELM's 13 source/subsets at their upstream locations, targets as weights.

    openelm-1pct keeps 1% of each subset's shards (evenly spaced, at least one) for trying it out.
    """
    from .openelm_mix import write_openelm_mixture

    path = write_openelm_mixture(out_dir, preset, pin=pin, overwrite=force)
    click.echo(
        f"wrote {path}\nnext: elm-data estimate {path}   then   elm-data build manifest {path} --out MANIFEST"
    )


@command("estimate")
@retries_option
@click.argument("mixture", type=str)
@click.option(
    "--sample-docs",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Records sampled per source/subset.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@click.option(
    "--tokenizer", default=None, help="LLaMA tokenizer (else the mixture's, $ELM_DATA_TOKENIZER, the cache)."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Build workers to plan for (wall time and temporary disk).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def estimate(
    mixture: str, sample_docs: int, seed: int, tokenizer: str | None, workers: int, fmt: str
) -> None:
    """Estimate documents, kept documents and LLaMA tokens per source/subset of MIXTURE (95% intervals).

    Reads a random sample of records per subset (parquet row groups, byte ranges of JSONL, the first window
    of gzip/zstd files; sizes from listings) and projects the exact build's core-hours, network and disk.
    """
    import json

    from .estimate import estimate_mixture, format_estimate

    est = estimate_mixture(
        mixture, sample_docs=sample_docs, seed=seed, tokenizer=tokenizer, workers=workers, progress=True
    )
    click.echo(json.dumps(est.to_dict(), indent=1) if fmt == "json" else format_estimate(est))
