"""`elm-data export hf`: write a checkpoint (or a freshly initialised model) as a Hugging Face OpenELM repo."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from .config import NAMED_SHAPES, OpenELMConfig
from .openelm import OpenELM
from .weights import DTYPES, WeightsError, load_model
from .weights import export_hf as write_hf_export


def run_export_hf(
    checkpoint: str | Path | None,
    out_dir: str | Path,
    init: str | None = None,
    seed: int = 0,
    dtype: str | None = None,
    overwrite: bool = False,
    echo=print,
) -> Path:
    """The work of ``elm-data export hf``, callable from Python. Returns the output directory."""
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds model.safetensors (pass overwrite / --overwrite)")
    if (checkpoint is None) == (init is None):
        raise ValueError("give exactly one of a CHECKPOINT or --init CONFIG_NAME")
    if init is not None:
        config = OpenELMConfig.named(init)
        echo(f"initialising OpenELM-{init} ({config.num_parameters():,} parameters, seed {seed}) ...")
        torch.manual_seed(seed)
        model = OpenELM(config)
    else:
        echo(f"loading {checkpoint} ...")
        model = load_model(checkpoint)
    echo(f"writing {out_dir}/model.safetensors and config.json ...")
    write_hf_export(model, out_dir, dtype=DTYPES[dtype] if dtype else None)
    echo(f"done: {out_dir} ({model.config.num_parameters():,} parameters, {len(model.state_dict())} tensors)")
    return out_dir


@click.command(name="hf")
@click.argument("paths", nargs=-1, required=True, metavar="[CHECKPOINT] OUT_DIR")
@click.option(
    "--init",
    "init",
    type=click.Choice(list(NAMED_SHAPES)),
    default=None,
    help="Export a freshly initialised model of this named config instead of a checkpoint.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for --init.")
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default=None,
    help="Cast floating weights (default: keep the checkpoint's dtype).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing export in OUT_DIR.")
def export_hf_command(paths: tuple[str, ...], init: str | None, seed: int, dtype: str | None, overwrite: bool) -> None:
    """Write model.safetensors + config.json in the apple/OpenELM-* layout.

    CHECKPOINT is a trainer checkpoint directory (model.safetensors + model_config.json) or a .safetensors
    file. With --init NAME (tiny, small, 270M, 450M, 1.1B, 3B) only OUT_DIR is given. The result loads with
    transformers' OpenELM remote code (trust_remote_code=True) or with elm_data.model.weights.import_hf.

    \b
    Examples:
      elm-data export hf runs/demo/checkpoints/step_00100 hf_out/
      elm-data export hf --init 270M --seed 0 hf_270m/
    """
    if init is not None:
        if len(paths) != 1:
            raise click.UsageError("with --init give only OUT_DIR")
        checkpoint, out_dir = None, paths[0]
    else:
        if len(paths) != 2:
            raise click.UsageError("give CHECKPOINT and OUT_DIR (or --init CONFIG_NAME OUT_DIR)")
        checkpoint, out_dir = paths
    try:
        run_export_hf(checkpoint, out_dir, init, seed, dtype, overwrite, echo=click.echo)
    except (WeightsError, FileExistsError, ValueError, TypeError) as error:
        raise click.ClickException(str(error)) from error


export_hf = export_hf_command  # the command object elm_data/cli.py registers under `export`
