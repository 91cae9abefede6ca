"""Click command `elm-data compress` (a thin wrapper over compress.compress).

It catches nothing: a user's error (an ``ElmDataError`` such as ConfigError, TrainingError, CheckpointError, a
damaged stream, or an ``OSError``) leaves through ``elm_data.core.commands`` as one line with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from elm_data.core.commands import command
from elm_data.sources.remote_option import retries_option

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "compress.yaml"


@command("compress")
@retries_option
@click.argument("source", metavar="CHECKPOINT|EXPORT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Compress YAML (training keys + palettization:).",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Manifest whose stream feeds the fine-tuning (else the config's).",
)
@click.option("--bits", type=click.Choice(["2", "3", "4", "6", "8"]), default=None, help="Palette bits.")
@click.option(
    "--group-size",
    type=click.IntRange(min=1),
    default=None,
    help="Output rows per palette (per_grouped_channel); default one palette per tensor.",
)
@click.option("--embeddings/--no-embeddings", default=None, help="Palettize the tied token embedding too.")
@click.option("--edkm/--no-edkm", default=None, help="eDKM memory options (uniquify/shard saved tensors).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Fine-tuning steps.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run directory (log.jsonl, model/, model.palettized.safetensors, compression.json).",
)
@click.option("--tokenizer", default=None, help="Tokenizer path/URL (else the config, the manifest, env).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def compress(
    source,
    config_path,
    manifest,
    bits,
    group_size,
    embeddings,
    edkm,
    max_steps,
    out_dir,
    tokenizer,
    no_progress,
) -> None:
    """Fine-tune CHECKPOINT|EXPORT under DKM weight clustering (coremltools) on a manifest's stream.

    Logs tokens consumed per source like `elm-data train` (audit it with `elm-data audit-run RUN`), then
    writes dequantized weights (RUN/model, loadable and exportable like any checkpoint) and the compact
    palette + packed-indices file with its size and bits per weight (RUN/compression.json).
    """
    from .compress.finetune import CompressConfig
    from .compress.finetune import compress as run_compress

    palette = {"bits": int(bits) if bits else None, "embeddings": embeddings, "edkm": edkm}
    if group_size:
        palette.update(granularity="per_grouped_channel", group_size=group_size)
    config = CompressConfig.from_yaml(
        config_path,
        palette=palette,
        manifest=str(manifest.resolve()) if manifest else None,
        max_steps=max_steps,
        tokenizer=tokenizer,
    )
    result = run_compress(source, config, out_dir=out_dir, progress=not no_progress)
    compact = result.report["compact"]
    click.echo(
        f"{result.steps} steps, {result.tokens:,} tokens; loss {result.losses[0]:.4f} -> "
        f"{result.losses[-1]:.4f}"
    )
    click.echo(
        f"{result.report['palettized_tensors']} tensors at {result.report['bits']} bits: "
        f"{compact['bits_per_palettized_weight']:.3f} bits/palettized weight, "
        f"{compact['bits_per_parameter']:.3f} "
        f"bits/parameter, {compact['bytes']:,} bytes on disk (fp16: {compact['fp16_bytes']:,})"
    )
    click.echo(f"run: {result.run_dir}")
