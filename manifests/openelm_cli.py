"""Commands for the real corpora: ``init openelm|openelm-1pct DIR`` and ``estimate MIXTURE``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("init")
@click.argument("preset", type=click.Choice(["openelm", "openelm-1pct"]))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--pin", is_flag=True, help="Ask the hub for each repo's current commit and write it as `revision:`.")
@click.option("--force", is_flag=True, help="Replace an existing PRESET.yaml in OUT_DIR.")
def init(preset: str, out_dir: Path, pin: bool, force: bool) -> None:
    """Write OUT_DIR/PRESET.yaml: OpenELM's 13 source/subsets at their upstream locations, targets as weights.

    openelm-1pct keeps 1% of each subset's shards (evenly spaced, at least one) for trying it out.
    """
    from .openelm_mix import write_openelm_mixture

    target = out_dir / f"{preset}.yaml"
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; pass --force to replace it")
    try:
        path = write_openelm_mixture(out_dir, preset, pin=pin)
    except Exception as e:  # --pin offline or not logged in: say so in one line
        if not pin:
            raise
        raise click.ClickException(
            f"cannot ask the hub for commits ({type(e).__name__}); run without --pin or after `huggingface-cli login`"
        ) from None
    click.echo(f"wrote {path}\nnext: elm-data estimate {path}   then   elm-data build manifest {path} --out MANIFEST")
