"""eDKM compression (`elm-data compress`): train-time memory, size on disk, quality cost, step throughput.

    python benchmarks/bench_compress.py memory --model 270M --layer 0     # one decoder layer, plain/DKM/eDKM
    python benchmarks/bench_compress.py size --model 270M                  # fp16 vs 3/4-bit compact files
    python benchmarks/bench_compress.py quality --steps 20                 # held-out perplexity, tiny model
    python benchmarks/bench_compress.py speed                              # compression step vs plain step

memory: each mode in a fresh process (``elm_data.trainer.compress.memory``: peak RSS of forward+backward above
the pre-step resident set, after the k-means warm start, glibc mmap threshold fixed at 64 KiB).
size: the compact file written by ``save_compact`` for the model with every linear snapped to 2**bits values
(file size depends on shapes and bits only, not on the values), vs 2 bytes per parameter.
quality: a tiny model pretrained here on the sample manifest, then per bit width: k-means palettes only
(0 tokens) and DKM fine-tuning for ``--steps`` steps (the same token budget for every row); perplexity on the
stream batches that follow the fine-tuning budget (epochs 1: no document is read twice).
speed: ``train_step`` on the same stream batches, plain model vs model under DKM (median seconds per step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from elm_data.manifests.manifest import Manifest
from elm_data.model.config import OpenELMConfig
from elm_data.model.openelm import OpenELM
from elm_data.model.weights import load_model, save_model
from elm_data.trainer.compress.finetune import CompressConfig, PaletteSpec, PalettizedLM, compress, prepare
from elm_data.trainer.compress.palette import save_compact
from elm_data.trainer.core.config import TrainConfig
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.loop import build_loader, load_tokenizer, train, train_step
from elm_data.trainer.core.loss import loss_sums, split_inputs_labels
from elm_data.trainer.core.optim import build_optimizer, build_scheduler

CACHE = Path(os.environ.get("ELM_BENCH_CACHE", Path(tempfile.gettempdir()) / "elm-bench-compress"))


def sample_manifest() -> Path:
    from elm_data.manifests.build import build_manifest
    from elm_data.sources.sample import write_sample_corpus

    out = CACHE / "manifest"
    if not (out / "manifest.json").is_file():
        build_manifest(write_sample_corpus(CACHE / "sample", seed=0), out)
    return out


# ---- memory ------------------------------------------------------------------------------------------------
def bench_memory(args) -> list[dict]:
    rows = []
    for mode in ("plain", "dkm", "edkm"):
        for dtype in args.dtypes:
            cmd = [
                sys.executable,
                "-m",
                "elm_data.trainer.compress.memory",
                "--model",
                args.model,
                "--layer",
                str(args.layer),
                "--mode",
                mode,
                "--dtype",
                dtype,
                "--bits",
                str(args.bits),
                "--seq-len",
                str(args.seq_len),
            ]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---- size --------------------------------------------------------------------------------------------------
def snapped(model: OpenELM, bits: int) -> list[str]:
    """Snap every linear weight to 2**bits quantile values (a stand-in palette: sizes only)."""
    names = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                sample = w.flatten()[
                    torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))[:65536]
                ]
                lut = torch.quantile(sample, torch.linspace(0.02, 0.98, 1 << bits))
                w.copy_(
                    lut[(w.reshape(-1, 1) - lut).abs().argmin(1)].reshape(w.shape)
                    if w.numel() < 2**22
                    else _snap_chunked(w, lut)
                )
                names.append(f"{name}.weight")
    return names


def _snap_chunked(w: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    flat = w.reshape(-1)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), 2**22):
        part = flat[start : start + 2**22]
        out[start : start + 2**22] = lut[(part[:, None] - lut).abs().argmin(1)]
    return out.reshape(w.shape)


def bench_size(args) -> list[dict]:
    rows = []
    model = OpenELM(OpenELMConfig.named(args.model))
    params = model.num_parameters()
    work = Path(tempfile.mkdtemp(prefix="size-", dir=CACHE))
    save_model(model, work / "fp16", dtype=torch.float16)
    fp16 = (work / "fp16" / "model.safetensors").stat().st_size
    rows.append(
        {
            "model": args.model,
            "form": "fp16 safetensors",
            "bytes": fp16,
            "bits_per_parameter": 8 * fp16 / params,
        }
    )
    for bits in (4, 3):
        for embeddings in (False, True):
            names = snapped(model, bits)
            if embeddings:
                names.append("token_embeddings.weight")
                with torch.no_grad():
                    emb = model.token_embeddings.weight
                    lut = torch.quantile(emb.flatten()[:65536], torch.linspace(0.02, 0.98, 1 << bits))
                    emb.copy_(_snap_chunked(emb, lut))
            layout = {n: {"bits": bits, "group_size": None} for n in names}
            report = save_compact(model, work / f"c{bits}{embeddings}.safetensors", layout)
            form = f"{bits}-bit palettes, embeddings {'palettized' if embeddings else 'fp16'}"
            rows.append(
                {
                    "model": args.model,
                    "form": form,
                    "bytes": report["bytes"],
                    "bits_per_parameter": report["bits_per_parameter"],
                    "bits_per_palettized_weight": report["bits_per_palettized_weight"],
                    "ratio_vs_fp16": fp16 / report["bytes"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---- quality -----------------------------------------------------------------------------------------------
def base_config(manifest: Path, **changes) -> dict:
    settings = {
        "manifest": str(manifest),
        "seq_len": 128,
        "batch_size": 4,
        "epochs": 1,
        "precision": "fp32",
        "distributed": "none",
        "seed": 0,
    }
    return {**settings, **changes}


def pretrained(manifest: Path, steps: int) -> Path:
    run = CACHE / f"pretrain-{steps}"
    if not (run / "checkpoints").is_dir():
        cfg = TrainConfig(
            **base_config(manifest, model="tiny", max_steps=steps, warmup_steps=10, lr=3e-3, epochs=None)
        )
        train(cfg, out_dir=run, progress=False)
    return run


def perplexity(model: OpenELM, batches: list[dict]) -> float:
    model.eval()
    ce, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs, labels = split_inputs_labels(batch["input_ids"], model.config.vocab_size)
            sums = loss_sums(model(inputs), labels)
            ce, count = ce + float(sums.ce), count + int(sums.count)
    return math.exp(ce / count)


def held_out(manifest: Path, skip: int, count: int, batch_size: int = 4) -> list[dict]:
    """The ``count`` stream batches after the first ``skip`` (the fine-tuning's), same stream settings."""
    cfg = TrainConfig(**base_config(manifest, batch_size=batch_size))
    manifest_obj = Manifest(manifest)
    loader = build_loader(cfg, manifest, load_tokenizer(cfg, manifest_obj), DistInfo())
    it = iter(loader)
    for _ in range(skip):
        next(it)
    return [next(it) for _ in range(count)]


def bench_quality(args) -> list[dict]:
    manifest = sample_manifest()
    source = pretrained(manifest, args.pretrain_steps)
    evaluation = held_out(manifest, args.steps, args.eval_batches)
    rows = [
        {
            "model": "tiny fp32 (pretrained)",
            "tokens": 0,
            "ppl": perplexity(load_model(_latest(source)), evaluation),
        }
    ]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(
        {
            "model": "tiny fp32, plain fine-tuning",
            "tokens": args.steps * 4 * 128,
            "ppl": perplexity(plain_finetune(manifest, source, args), evaluation),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    for bits in args.bit_widths:
        spec = PaletteSpec(bits=bits)
        model = load_model(_latest(source))
        palettizer, prepared, _ = prepare(model, spec)
        with torch.no_grad():  # creates the partitions and runs the k-means warm start; weights unchanged
            prepared(split_inputs_labels(evaluation[0]["input_ids"], model.config.vocab_size)[0])
        kmeans_only = palettizer.finalize(prepared, inplace=True)
        rows.append(
            {"model": f"{bits}-bit k-means palettes", "tokens": 0, "ppl": perplexity(kmeans_only, evaluation)}
        )
        print(json.dumps(rows[-1]), flush=True)
        if args.skip_dkm:
            continue
        path = CACHE / f"c{bits}.yaml"
        raw = base_config(manifest, max_steps=args.steps, warmup_steps=2, lr=args.lr, weight_decay=0.0)
        path.write_text(yaml.safe_dump({**raw, "palettization": {"bits": bits}}))
        out = Path(tempfile.mkdtemp(prefix=f"q{bits}-", dir=CACHE)) / "run"
        result = compress(source, CompressConfig.from_yaml(path), out_dir=out, progress=False)
        ppl = perplexity(load_model(out / "model"), evaluation)
        rows.append(
            {
                "model": f"{bits}-bit DKM fine-tuned",
                "tokens": result.tokens,
                "ppl": ppl,
                "bits_per_parameter": result.report["compact"]["bits_per_parameter"],
                "compact_bytes": result.report["compact"]["bytes"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plain_finetune(manifest: Path, source: Path, args) -> OpenELM:
    """The same budget, batches and schedule as the compression runs, without clustering (the baseline)."""
    raw = base_config(manifest, max_steps=args.steps, warmup_steps=2, lr=args.lr, weight_decay=0.0)
    cfg = TrainConfig(**raw)
    model = load_model(_latest(source))
    loader = build_loader(cfg, manifest, load_tokenizer(cfg, Manifest(manifest)), DistInfo())
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    model.train()
    for _, batch in zip(range(args.steps), loader, strict=False):
        train_step(
            model, optimizer, [batch], cfg, torch.device("cpu"), None, DistInfo(), model.config.vocab_size
        )
        scheduler.step()
    return model


def _latest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


# ---- speed -------------------------------------------------------------------------------------------------
def bench_speed(args) -> list[dict]:
    manifest = sample_manifest()
    cfg = TrainConfig(**base_config(manifest, model=args.speed_model, lr=1e-4, max_steps=100, warmup_steps=0))
    batches = held_out(manifest, 0, args.repeats + 1)
    rows = []
    for mode in ("plain", "dkm"):
        torch.manual_seed(0)
        model = OpenELM(cfg.model_config())
        palettizer = None
        if mode == "dkm":
            palettizer, model, _ = prepare(model, PaletteSpec(bits=args.bits))
        lm = PalettizedLM(model).train()
        optimizer = build_optimizer(model, cfg)
        times = []
        for batch in batches:
            started = time.perf_counter()
            stats = train_step(
                lm, optimizer, [batch], cfg, torch.device("cpu"), None, DistInfo(), model.config.vocab_size
            )
            if palettizer is not None:
                palettizer.step()
            times.append(time.perf_counter() - started)
        median = statistics.median(times[1:])  # the first includes the k-means warm start
        rows.append(
            {
                "model": args.speed_model,
                "mode": mode,
                "median_s": median,
                "first_s": times[0],
                "tokens_per_s": stats.positions / median,
                "steps": len(times) - 1,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("memory", "size", "quality", "speed"))
    parser.add_argument("--model", default="270M")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps (quality)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--bit-widths", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--skip-dkm", action="store_true", help="quality: baselines and k-means rows only")
    parser.add_argument("--speed-model", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="append the rows as JSON lines here")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    rows = {"memory": bench_memory, "size": bench_size, "quality": bench_quality, "speed": bench_speed}[
        args.part
    ](args)
    if args.out:
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({"part": args.part, **row}) + "\n")


if __name__ == "__main__":
    main()
