"""Click commands `elm-data export hf`, `elm-data export mlx` and `elm-data eval` (thin wrappers).

The work is in :mod:`elm_data.trainer.export.hf` (Hugging Face folders with model cards),
:mod:`elm_data.model.mlx_export` and :mod:`elm_data.trainer.export.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import click

from elm_data.core.commands import command
from elm_data.core.errors import OutputExists
from elm_data.model.config import NAMED_SHAPES
from elm_data.model.weights import DTYPES
from elm_data.sources.remote_option import retries_option

from .core.checkpoint import list_checkpoints, load_checkpoint_model
from .export import hf as E

TOKENIZER_HELP = "Tokenizer to ship (else $ELM_DATA_TOKENIZER, else the run's logged one / the cache)."


@command("hf")
@retries_option
@click.argument("paths", nargs=-1, required=True, metavar="[CHECKPOINT|RUN] OUT_DIR")
@click.option(
    "--init", type=click.Choice(list(NAMED_SHAPES)), default=None, help="Export a fresh model of this size."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for --init.")
@click.option(
    "--dtype", type=click.Choice(list(DTYPES)), default=None, help="Cast floating weights (default: keep)."
)
@click.option("--all-checkpoints", is_flag=True, help="RUN given: export every checkpoint to OUT_DIR/step_N.")
@click.option("--tokenizer", default=None, help=TOKENIZER_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing export in OUT_DIR.")
def export_hf(paths, init, seed, dtype, all_checkpoints, tokenizer, overwrite) -> None:
    """A Hugging Face folder that loads offline: weights (apple/OpenELM-* names), config.json with a local
    auto_map, the project's modeling code, the tokenizer (+ its licence) and, for a trained checkpoint, a
    model card README.md naming the manifest and the tokens consumed per source.

    CHECKPOINT is RUN/checkpoints/step_N (or a model directory); a RUN directory means its newest checkpoint,
    or every checkpoint with --all-checkpoints.

    \b
    Examples:
      elm-data export hf runs/demo/checkpoints/step_00000060 hf_out/
      elm-data export hf runs/demo hf_all/ --all-checkpoints
      elm-data export hf --init 270M --seed 0 hf_270m/
    """
    if init is not None:
        if len(paths) != 1:
            raise click.UsageError("with --init give only OUT_DIR")
        E.refuse_overwrite(paths[0], overwrite)
        E.export_init(init, paths[0], seed, dtype, tokenizer, echo=click.echo, progress=True)
        return
    if len(paths) != 2:
        raise click.UsageError("give CHECKPOINT (or RUN) and OUT_DIR, or --init NAME OUT_DIR")
    source, out = Path(paths[0]), Path(paths[1])
    if all_checkpoints:
        for checkpoint in list_checkpoints(source):
            E.refuse_overwrite(out / checkpoint.name, overwrite)
        E.export_run(source, out, dtype, tokenizer, echo=click.echo)
        return
    E.refuse_overwrite(out, overwrite)
    E.export_checkpoint(E.newest_checkpoint(source), out, dtype, tokenizer, echo=click.echo)


@command("mlx")
@retries_option
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default="float16", show_default=True
)
@click.option(
    "--quantize", type=click.Choice(["4", "8"]), default=None, help="Quantize the weights to 4 or 8 bits."
)
@click.option("--group-size", type=int, default=64, show_default=True, help="Quantization group size.")
@click.option("--tokenizer", default=None, help=TOKENIZER_HELP)
def export_mlx(
    checkpoint: Path, out_dir: Path, dtype: str, quantize: str | None, group_size: int, tokenizer
) -> None:
    """An MLX folder for mlx_lm.load (Apple silicon; mlx-cpu elsewhere), through mlx-lm's converter.

    CHECKPOINT is RUN/checkpoints/step_N, a RUN directory (newest checkpoint) or a model directory.
    """
    from elm_data.model.mlx_export import export_mlx as write_mlx
    from elm_data.model.mlx_export import folder_bytes

    if out_dir.exists():
        raise OutputExists(f"{out_dir} exists: mlx-lm writes a new folder")
    checkpoint = E.newest_checkpoint(checkpoint)
    run = E.run_of(checkpoint)
    pinned = run.header.get("tokenizer") if run else None
    proto = E.tokenizer_bytes(tokenizer, pinned, required=True)
    card = E.checkpoint_card(run) if run else {}
    model = load_checkpoint_model(checkpoint)
    write_mlx(model, out_dir, proto, dtype, int(quantize) if quantize else None, group_size, card)
    bits = f"{quantize}-bit, group {group_size}" if quantize else dtype
    click.echo(f"{checkpoint} -> {out_dir} (MLX, {bits}): {folder_bytes(out_dir) / 2**20:.1f} MiB")


@command("eval")
@retries_option
@click.argument(
    "target", metavar="CHECKPOINT|EXPORT", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--tasks", default=None, help="Comma-separated lm-eval tasks (default: OpenELM's zero-shot suite)."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N examples per task.")
@click.option(
    "--include-path", type=click.Path(exists=True, path_type=Path), default=None, help="Local task YAMLs."
)
@click.option(
    "--heldout-batches",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Batches of unconsumed stream data for held-out perplexity (0: none).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Results JSON (default: RUN/eval/step_N.json, or EXPORT/eval_results.json).",
)
@click.option("--tokenizer", default=None, help=TOKENIZER_HELP)
def eval_command(target, tasks, limit, include_path, heldout_batches, out, tokenizer) -> None:
    """Zero-shot benchmarks through lm-evaluation-harness, plus perplexity on data the run did not consume."""
    from .export.evaluate import evaluate, format_report

    task_list = None if tasks is None else [t for t in tasks.split(",") if t.strip() and t.strip() != "none"]
    report, path = evaluate(
        E.newest_checkpoint(target),
        task_list,
        limit,
        include_path,
        out,
        heldout_batches,
        tokenizer,
        echo=click.echo,
    )
    click.echo(format_report(report))
    click.echo(f"results: {path}")
