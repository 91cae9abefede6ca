"""Peak memory of one decoder layer's forward+backward under DKM clustering, with or without eDKM's options.

Run it in a fresh process (that is how tests and benchmarks call it)::

    MALLOC_MMAP_THRESHOLD_=65536 python -m elm_data.trainer.compress.memory --model tiny --layer 0 --edkm

and it prints one JSON object. Measurement: the k-means warm start runs first (a no-grad forward, not
measured); then the peak resident set is reset (``/proc/self/clear_refs`` = 5) and the forward+backward runs;
``peak_mib`` is VmHWM minus VmRSS at the reset. The fixed mmap threshold makes glibc return every freed
block of 64 KiB or more to the kernel at once, so the resident set follows the live tensors (Linux only).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from elm_data.model.config import OpenELMConfig
from elm_data.model.layers import DecoderLayer, rope_tables

from .finetune import DTYPES, PaletteSpec, prepare


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> float:
    """Reset the peak resident set to the current one; returns the current resident set in MiB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


@contextmanager
def clustered(module: nn.Module, mode: str, bits: int, dtype: str) -> Iterator[tuple[nn.Module, list[str]]]:
    """``(module prepared for DKM, names of its palettized weights)``; ``module`` itself for "plain".

    eDKM's one-process group keeps its store file in an ``edkm-`` temp directory: the group (when this made
    it) and the directory are gone when the block ends.
    """
    if mode == "plain":
        yield module, []
        return
    import torch.distributed as dist

    had_group = dist.is_initialized()
    with tempfile.TemporaryDirectory(prefix="edkm-") as store:
        try:
            spec = PaletteSpec(bits=bits, edkm=mode == "edkm", dtype=dtype)
            _, prepared, names = prepare(module, spec, Path(store))
            yield prepared, names
        finally:
            if not had_group and dist.is_initialized():
                dist.destroy_process_group()


def layer_peak(
    model: str = "tiny",
    layer: int = 0,
    bits: int = 4,
    mode: str = "dkm",
    dtype: str = "bfloat16",
    batch: int = 1,
    seq_len: int = 128,
    seed: int = 0,
) -> dict:
    """Peak memory (MiB above the pre-step resident set) and time of one forward+backward of one layer.

    ``mode``: "plain" (no clustering), "dkm" (coremltools DKM) or "edkm" (DKM plus eDKM's options).
    """
    torch.manual_seed(seed)
    config = OpenELMConfig.named(model)
    layer_module = DecoderLayer(config, layer).to(DTYPES[dtype]).train()
    with clustered(layer_module, mode, bits, dtype) as (module, names):
        x = torch.randn(batch, seq_len, config.model_dim, dtype=DTYPES[dtype], requires_grad=True)
        rope = rope_tables(config.head_dim, config.rope_freq_constant, torch.arange(seq_len))
        with torch.no_grad():
            module(x, rope)  # k-means warm start of every palette (not measured)
        base = reset_peak()
        started = time.perf_counter()
        loss = module(x, rope).float().square().mean()
        gc.collect()
        held = _status_mib("VmRSS") - base  # what the forward keeps for the backward (saved tensors, output)
        forward_peak = _status_mib("VmHWM") - base
        loss.backward()
        seconds = time.perf_counter() - started
        weights = sum(p.numel() for n, p in module.named_parameters() if n in names)
        peak = _status_mib("VmHWM") - base  # before the group and its store go
    return {
        "model": model,
        "layer": layer,
        "mode": mode,
        "bits": bits,
        "dtype": dtype,
        "batch": batch,
        "seq_len": seq_len,
        "palettized_weights": weights,
        "held_after_forward_mib": held,
        "forward_peak_mib": forward_peak,
        "peak_mib": peak,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--mode", choices=("plain", "dkm", "edkm"), default="dkm")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    result = layer_peak(args.model, args.layer, args.bits, args.mode, args.dtype, args.batch, args.seq_len)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
