"""`elm-data sample OUT_DIR`: write the bundled sample corpus (every source/subset, native formats)."""

from __future__ import annotations

import click

from elm_data.core.commands import command


@command("sample")
@click.argument("out_dir", type=click.Path(file_okay=False, writable=True))
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed; the same seed writes the same bytes."
)
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Documents per shard relative to the default (10).",
)
def sample(out_dir: str, seed: int, scale: float) -> None:
    """Write a small synthetic corpus in each source's native format, plus OUT_DIR/mixture.yaml.

    Two shards per source/subset (RefinedWeb and deduplicated-Pile parquet, RedPajama JSONL,
    Dolma json.gz) and one original-Pile jsonl.zst shard, with upstream-like names.
    """
    from elm_data.sources.sample import generate_sample_corpus

    if scale <= 0:
        raise click.BadParameter("must be positive", param_hint="--scale")
    corpus = generate_sample_corpus(out_dir, seed=seed, scale=scale)
    for rel in corpus.files:
        click.echo(f"  wrote {rel}")
    for key, count in corpus.documents.items():
        click.echo(f"  {key:<26} {count:>6} documents")
    click.echo(f"{len(corpus.files)} shards, {sum(corpus.documents.values())} documents")
    click.echo(f"mixture: {corpus.mixture}")
