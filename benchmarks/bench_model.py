"""OpenELM forward+backward throughput (tokens/s), eager vs torch.compile, and MFU on a GPU.

CPU (this repo's CI VM):   python benchmarks/bench_model.py --config tiny --seq-len 256 --batch 4 --compile
GPU (270M, bf16 autocast): python benchmarks/bench_model.py --device cuda --config 270M --seq-len 2048 \
                               --batch 8 --dtype bfloat16 --compile

Each variant gets ``--warmup`` untimed steps, then ``--repeats`` timed blocks of ``--steps`` steps, the
variants' blocks interleaved (eager, compile, eager, ...) so the ratio is measured side by side under the same
load; medians of the blocks and of the per-pair ratios are reported.
MFU = tokens/s * cfg.flops_per_token(seq_len) / peak, with the dense bf16 peak from PEAK_FLOPS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from elm_data.model import OpenELM, OpenELMConfig

# Dense (no sparsity) peak FLOP/s by device-name substring, for bf16/fp16 tensor-core math.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, ids: torch.Tensor, dtype: torch.dtype | None) -> None:
    with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def warm_up(model, ids, dtype, steps: int) -> float:
    """Seconds for ``steps`` untimed steps (includes compilation for a compiled model)."""
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, ids, dtype)
    synchronize(ids.device)
    return time.perf_counter() - start


def time_block(model, ids, dtype, steps: int) -> float:
    """Tokens/s over one block of ``steps`` training steps."""
    synchronize(ids.device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, ids, dtype)
    synchronize(ids.device)
    return steps * ids.shape[0] * (ids.shape[1] - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    config = OpenELMConfig.named(args.config)
    torch.manual_seed(0)
    model = OpenELM(config).to(device).train()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), device=device)
    flops_per_token = config.flops_per_token(args.seq_len)
    peak = peak_flops(device)
    print(
        f"OpenELM-{args.config}: {config.num_parameters():,} params, {flops_per_token / 1e9:.3f} GFLOP/token "
        f"at seq {args.seq_len}; device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"threads {torch.get_num_threads()}, autocast {args.dtype}, batch {args.batch}"
    )
    variants = ([] if args.no_eager else [("eager", model)]) + (
        [("compile", torch.compile(model))] if args.compile else []
    )
    warmups = {name: warm_up(runnable, ids, dtype, args.warmup) for name, runnable in variants}
    # Interleave the variants block by block so load from other processes hits both alike.
    rates: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):
        for name, runnable in variants:
            rates[name].append(time_block(runnable, ids, dtype, args.steps))
    results = {}
    for name, _ in variants:
        rate = statistics.median(rates[name])
        achieved = rate * flops_per_token
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a (no peak for this device)"
        print(
            f"  {name:8s} {rate:12,.0f} tokens/s (median of {args.repeats})  {achieved / 1e12:8.3f} TFLOP/s  "
            f"MFU {mfu}  (warm-up {warmups[name]:.1f}s)"
        )
        results[name] = {
            "tokens_per_s": rate,
            "tflops": achieved / 1e12,
            "mfu": achieved / peak if peak else None,
        }
    if "eager" in rates and "compile" in rates:
        ratios = [c / e for c, e in zip(rates["compile"], rates["eager"], strict=True)]
        results["compile_over_eager"] = statistics.median(ratios)
        print(
            f"  compile/eager speed-up: median {statistics.median(ratios):.2f}x over {len(ratios)} "
            "interleaved pairs "
            f"(range {min(ratios):.2f}-{max(ratios):.2f})"
        )
    print(json.dumps({"config": args.config, "device": str(device), "seq_len": args.seq_len, **results}))


if __name__ == "__main__":
    main()
