"""Palettized weights: the compact on-disk form, and the small CPU adapter coremltools' eDKM hook needs.

Compact form (``model.palettized.safetensors``): for every palettized weight ``W`` [rows, cols] split into
``G`` groups of ``group_size`` rows (one group for a per-tensor palette)::

    NAME.lut      float32 [G, 2**bits]                  the palette of each group (unused entries repeat)
    NAME.indices  uint8   [ceil(rows*cols*bits / 8)]    row-major indices, bit-packed little-endian

Every other tensor (norms, an unpalettized embedding) is stored whole, in ``rest_dtype``. The header's
metadata holds the model config and, per palettized tensor, its shape, bits and group size, so
:func:`load_compact` rebuilds exactly the dequantized weights (``lut[g, index]``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import atomic_path
from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM

COMPACT_FILE = "model.palettized.safetensors"
COMPACT_FORMAT = "elm-data-palettized/1"
COREML_PREFIX = "_COREML_"


class PaletteError(ElmDataError, ValueError):
    """A tensor that is not palettized as claimed, or a compact file that does not decode."""


# ---- bit packing
# --------------------------------------------------------------------------------------------
def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """``bits``-bit unsigned indices -> uint8 bytes, little-endian bit order (8 indices of 3 bits in 3
    bytes)."""
    flat = np.asarray(indices, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise PaletteError(f"index {int(flat.max())} does not fit in {bits} bits")
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``count`` indices as uint8."""
    planes = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=count * bits, bitorder="little")
    weights = (1 << np.arange(bits)).astype(np.uint8)
    return (planes.reshape(count, bits) * weights).sum(axis=1, dtype=np.uint8)


# ---- palettes of finalized weights
# --------------------------------------------------------------------------
def group_palette(
    weight: torch.Tensor, bits: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lut [G, 2**bits] float32, indices [rows, cols] uint8)`` of a finalized weight, exactly.

    Raises :class:`PaletteError` when a group holds more than ``2**bits`` distinct values.
    """
    rows = weight.shape[0]
    size = group_size or rows
    flat = weight.detach().float().reshape(rows, -1)
    luts, indices = [], []
    for start in range(0, rows, size):
        values, inverse = torch.unique(flat[start : start + size], return_inverse=True)
        if values.numel() > 1 << bits:
            raise PaletteError(f"rows {start}..{start + size}: {values.numel()} distinct values > 2**{bits}")
        lut = torch.cat([values, values[-1:].expand((1 << bits) - values.numel())])
        luts.append(lut)
        indices.append(inverse.to(torch.uint8))
    return torch.stack(luts), torch.cat(indices).reshape(weight.shape)


def distinct_per_group(weight: torch.Tensor, group_size: int | None) -> int:
    """The largest number of distinct values in any group of ``group_size`` rows (whole tensor if None)."""
    size = group_size or weight.shape[0]
    return max(int(torch.unique(weight[s : s + size]).numel()) for s in range(0, weight.shape[0], size))


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A finalized model's state without coremltools' metadata buffers (``*._COREML_/*``)."""
    return {k: v for k, v in model.state_dict().items() if COREML_PREFIX not in k}


# ---- the compact file
# ---------------------------------------------------------------------------------------
def save_compact(
    model: OpenELM,
    path: str | Path,
    palettized: dict[str, dict[str, Any]],
    rest_dtype: torch.dtype = torch.float16,
) -> dict[str, Any]:
    """Write ``model``'s weights in the compact form; ``palettized`` maps a parameter name to
    ``{"bits", "group_size"}``. Returns sizes and bits per weight, measured on the written file."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, tensor in plain_state(model).items():
        spec = palettized.get(name)
        if spec is None:
            tensors[name] = tensor.detach().to(rest_dtype).contiguous()
            continue
        lut, indices = group_palette(tensor, spec["bits"], spec["group_size"])
        tensors[f"{name}.lut"] = lut.contiguous()
        tensors[f"{name}.indices"] = torch.from_numpy(pack_indices(indices.numpy(), spec["bits"]))
        layout[name] = {"shape": list(tensor.shape), "bits": spec["bits"], "group_size": spec["group_size"]}
    metadata = {
        "format": COMPACT_FORMAT,
        "model_config": json.dumps(model.config.to_dict()),
        "palettized": json.dumps(layout),
        "rest_dtype": str(rest_dtype).removeprefix("torch."),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return compact_report(path, model, layout)


def compact_report(path: Path, model: OpenELM, layout: dict[str, Any]) -> dict[str, Any]:
    """File size on disk and bits per weight (palettized weights; all parameters)."""
    size = path.stat().st_size
    state = plain_state(model)
    pal_weights = sum(math.prod(v["shape"]) for v in layout.values())
    pal_bytes = sum(
        math.ceil(v["shape"][0] / (v["group_size"] or v["shape"][0])) * 4 * (1 << v["bits"])  # LUTs (float32)
        + math.ceil(math.prod(v["shape"]) * v["bits"] / 8)  # packed indices
        for n, v in layout.items()
    )
    params = sum(t.numel() for t in state.values())
    return {
        "path": str(path),
        "bytes": size,
        "parameters": params,
        "palettized_weights": pal_weights,
        "bits_per_palettized_weight": 8 * pal_bytes / pal_weights if pal_weights else None,
        "bits_per_parameter": 8 * size / params,
        "fp16_bytes": 2 * params,
    }


def load_compact(path: str | Path) -> OpenELM:
    """Rebuild the dequantized model from a compact file."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != COMPACT_FORMAT:
            raise PaletteError(f"{path} is not an {COMPACT_FORMAT} file (format {meta.get('format')!r})")
        layout = json.loads(meta["palettized"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    state = {}
    for name, spec in layout.items():
        shape, bits = spec["shape"], spec["bits"]
        count = math.prod(shape)
        indices = torch.from_numpy(unpack_indices(tensors.pop(f"{name}.indices").numpy(), bits, count))
        lut = tensors.pop(f"{name}.lut")
        rows_per_group = spec["group_size"] or shape[0]
        group = (torch.arange(shape[0]) // rows_per_group)[:, None].expand(shape[0], count // shape[0])
        state[name] = lut[group.reshape(-1), indices.long()].reshape(shape)
    state.update({k: v.float() for k, v in tensors.items()})
    model = OpenELM(OpenELMConfig.from_dict(json.loads(meta["model_config"])))
    model.load_state_dict(state, strict=True)
    return model


# ---- coremltools' eDKM saved-tensor hook on CPU
# -------------------------------------------------------------
_INSTALLED = False


def install_edkm_cpu_adapter() -> None:
    """Let coremltools' eDKM hook (``palett_max_mem < 1``) run without CUDA, in one process.

    coremltools 9.0's ``_FakePalettizerTensorHook`` (1) reads CUDA memory in its constructor to decide on CPU
    offload, (2) calls ``torch.distributed.get_world_size()`` unconditionally, and (3) fails on a 1-D saved
    tensor (the argmin indices) when ``palett_unique`` is on. The adapter subclasses it: on a CPU device it
    skips the CUDA probe (there is nothing to offload to), it passes 1-D tensors through unchanged (already
    narrowed to uint8 by the hook), and :func:`ensure_process_group` provides a one-process gloo group. The
    uniquification, sharding and de-duplication of saved tensors are coremltools' own code.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    from coremltools.optimize.torch.palettization import fake_palettize
    from coremltools.optimize.torch.palettization._fake_palettizer_tensor_hook import (
        _FakePalettizerTensorHook,
    )

    class CPUFriendlyHook(_FakePalettizerTensorHook):
        def __init__(
            self, zero_threshold, device, min_size=0, max_mem=1.0, use_unique=False, use_shard=False
        ):
            if torch.device(device).type == "cuda":
                super().__init__(zero_threshold, device, min_size, max_mem, use_unique, use_shard)
                return
            self.min_size, self.max_mem = max(min_size, 64), max_mem
            self.tensor_dict, self.tensor_counter = {}, {}
            self.total_requested = self.total_allocated = 0
            self.use_unique, self.use_shard = use_unique, use_shard
            self.pack_counter, self.device, self.zero_threshold = -1, device, zero_threshold
            self.use_cpu = False

        def _unique_tensor(self, x):
            return x if x.dim() < 2 else super()._unique_tensor(x)

    fake_palettize._FakePalettizerTensorHook = CPUFriendlyHook
    _INSTALLED = True


def ensure_process_group(store_file: str | Path) -> bool:
    """A one-process gloo group when none exists (the eDKM hook asks for the world size); True if created."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", init_method=f"file://{Path(store_file).resolve()}", rank=0, world_size=1)
    return True
