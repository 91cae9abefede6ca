"""Trainer throughput: our train_step vs a bare PyTorch loop, and data-loader stall time per step.

    python benchmarks/bench_trainer.py                       # CPU, tiny model, on a freshly built sample
    manifest python benchmarks/bench_trainer.py --device cuda --config 270M --seq-len 2048 --batch-size 16

Part 1 (overhead): the same model and the same pre-drawn stream batches, alternately through
``elm_data.trainer.core.loop.train_step`` (pad mapping, summed CE + z-loss, clipping, AdamW) and through a
bare loop (forward, F.cross_entropy, backward, AdamW step). Reports median seconds per step and tokens/s of
each and the overhead ratio (ours / bare), repeated ``--repeats`` times, interleaved so machine load hits
both.

Part 2 (stall): a real ``train()`` run (stream + loader + logging) for ``--stall-steps`` steps; from its
log: median time waiting on the loader per step vs the median step time. On a GPU with a known peak also
tokens/s and MFU from the same log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.tokenizer import PAD_ID
from elm_data.trainer.core.config import TrainConfig
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.hardware import autocast, autocast_dtype, device_description, mfu, peak_flops
from elm_data.trainer.core.loop import build_loader, build_model, load_tokenizer, train, train_step
from elm_data.trainer.core.optim import build_optimizer
from elm_data.trainer.core.runlog import effective_steps, read_log


def sample_manifest(work: Path) -> Path:
    from elm_data.manifests.build import build_manifest
    from elm_data.sources.sample import write_sample_corpus

    mixture = write_sample_corpus(work / "sample", seed=0)
    out = work / "manifest"
    build_manifest(mixture, out)
    return out


def bare_step(model, optimizer, ids, device, amp_dtype, pad_id, vocab_size):
    inputs, labels = ids[:, :-1].to(device), ids[:, 1:].to(device)
    inputs = inputs.masked_fill(inputs >= vocab_size, 0)
    with autocast(device, amp_dtype):
        logits = model(inputs)
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=pad_id)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def overhead(config: TrainConfig, batches, device, steps: int, repeats: int) -> dict:
    amp_dtype = autocast_dtype(device, config.precision)
    ours_model, bare_model = build_model(config, device), build_model(config, device)
    bare_model.load_state_dict(ours_model.state_dict())
    fused = device.type == "cuda" or None
    ours_opt, bare_opt = (
        build_optimizer(ours_model, config, fused),
        build_optimizer(bare_model, config, fused),
    )
    vocab = ours_model.config.vocab_size
    info = DistInfo()
    times = {"ours": [], "bare": []}
    for _ in range(2):  # warm-up both
        train_step(ours_model, ours_opt, [batches[0]], config, device, amp_dtype, info, vocab)
        bare_step(bare_model, bare_opt, batches[0]["input_ids"], device, amp_dtype, PAD_ID, vocab)
    for _ in range(repeats):
        for name in ("ours", "bare"):
            sync(device)
            start = time.perf_counter()
            for i in range(steps):
                batch = batches[i % len(batches)]
                if name == "ours":
                    train_step(ours_model, ours_opt, [batch], config, device, amp_dtype, info, vocab)
                else:
                    bare_step(bare_model, bare_opt, batch["input_ids"], device, amp_dtype, PAD_ID, vocab)
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    tokens = config.batch_size * config.seq_len
    ours, bare = statistics.median(times["ours"]), statistics.median(times["bare"])
    return {
        "step_s_ours": ours,
        "step_s_bare": bare,
        "tokens_per_s_ours": tokens / ours,
        "tokens_per_s_bare": tokens / bare,
        "overhead_ratio": ours / bare,
        "runs_ours": times["ours"],
        "runs_bare": times["bare"],
    }


def stall(config: TrainConfig, steps: int, work: Path) -> dict:
    result = train(config.replace(max_steps=steps, log_every=1), out_dir=work / "stall-run", progress=False)
    records = effective_steps(read_log(result.run_dir))[2:]  # skip warm-up steps
    wait = statistics.median(r["data_wait_s"] for r in records)
    step = statistics.median(r["step_time_s"] for r in records)
    mfus = [r["mfu"] for r in records if r["mfu"] is not None]
    return {
        "data_wait_s": wait,
        "step_time_s": step,
        "stall_fraction": wait / step,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "mfu": statistics.median(mfus) if mfus else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="tiny", help="model size name")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="manifest dir (default: build the sample)"
    )
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stall-steps", type=int, default=12)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest_dir = args.manifest or sample_manifest(work)
        config = TrainConfig(
            manifest=str(Path(manifest_dir).resolve()),
            model=args.config,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            max_steps=1000,
            warmup_steps=10,
            lr=1e-3,
            epochs=None,
            device=args.device,
            compile=args.compile,
            distributed="none",
        )
        loader = build_loader(
            config, config.manifest_dir, load_tokenizer(config, Manifest(manifest_dir)), DistInfo()
        )
        iterator = iter(loader)
        batches = [next(iterator) for _ in range(args.steps)]
        report = {
            "device": device_description(device),
            "model": args.config,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "peak_flops": peak_flops(device),
            "overhead": overhead(config, batches, device, args.steps, args.repeats),
            "stall": stall(config, args.stall_steps, work),
        }
        flops = config.model_config().flops_per_token(args.seq_len)
        report["overhead"]["mfu_ours"] = mfu(
            report["overhead"]["tokens_per_s_ours"], flops, report["peak_flops"]
        )
    print(json.dumps(report, indent=2))
    o, s = report["overhead"], report["stall"]
    print(
        f"\n{report['device']}  {args.config}  B={args.batch_size} T={args.seq_len}\n"
        f"train_step  {o['tokens_per_s_ours']:,.0f} tok/s  ({o['step_s_ours'] * 1e3:.1f} ms/step)\n"
        f"bare loop   {o['tokens_per_s_bare']:,.0f} tok/s  ({o['step_s_bare'] * 1e3:.1f} ms/step)\n"
        f"overhead ratio (ours/bare, median of {args.repeats}) {o['overhead_ratio']:.3f}\n"
        f"loader wait {s['data_wait_s'] * 1e3:.1f} ms of {s['step_time_s'] * 1e3:.1f} ms per step "
        f"({s['stall_fraction'] * 100:.1f}%)  MFU {s['mfu']}"
    )


if __name__ == "__main__":
    main()
