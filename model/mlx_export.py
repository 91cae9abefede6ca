"""`elm-data export mlx`: an MLX model folder (optionally quantized) through mlx-lm's own converter.

mlx-lm ships an OpenELM implementation that reads the Hugging Face layout, so the export is: write the
Hugging Face folder (:func:`elm_data.model.weights.export_hf`, with the tokenizer) into a temporary directory,
then ``mlx_lm.convert`` it (cast to ``dtype``; ``quantize`` bits with ``group_size``) into a staged folder
that becomes ``out_dir`` whole (:func:`elm_data.core.outputs.staged_dir`). Needs the ``mlx`` extra.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from elm_data.core.errors import ElmDataError, InvalidValue
from elm_data.core.outputs import staged_dir

from .weights import export_hf

MLX_DTYPES = ("float16", "bfloat16", "float32")


def export_mlx(
    model,
    out_dir: str | Path,
    tokenizer_model: bytes | None,
    dtype: str = "float16",
    quantize: int | None = None,
    group_size: int = 64,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir`` loadable by ``mlx_lm.load``; returns it. ``out_dir`` must not exist (mlx-lm
    refuses)."""
    try:
        from mlx_lm import convert
    except ImportError as error:
        raise ElmDataError("export mlx needs mlx-lm: pip install 'elm-data[mlx]'") from error
    if dtype not in MLX_DTYPES:
        raise InvalidValue(f"dtype must be one of {MLX_DTYPES}, got {dtype!r}")
    if quantize not in (None, 4, 8):
        raise InvalidValue(f"quantize must be 4 or 8 bits, got {quantize}")
    with tempfile.TemporaryDirectory(prefix="elm-data-mlx-") as tmp, staged_dir(out_dir) as staged:
        export_hf(model, tmp, tokenizer_model=tokenizer_model, extra_files=extra_files)
        staged.rmdir()  # mlx-lm makes the folder itself (it refuses an existing one)
        convert(
            tmp,
            str(staged),
            quantize=quantize is not None,
            q_bits=quantize,
            q_group_size=group_size if quantize else None,
            dtype=dtype,
            trust_remote_code=True,  # the export's own code (hf_*.py), read for the tokenizer's config
        )
        # card, licence travel too
        for name in ("tokenizer.model", "TOKENIZER_LICENCE.txt", *(extra_files or {})):
            if (Path(tmp) / name).is_file():
                shutil.copyfile(Path(tmp) / name, staged / name)
    return Path(out_dir)


def folder_bytes(path: str | Path) -> int:
    """Total size of the files in ``path`` (the weights dominate)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
