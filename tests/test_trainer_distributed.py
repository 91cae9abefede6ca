"""Two-process training on CPU with gloo: `torchrun -m elm_data train` under DDP and FSDP2, on the sample
manifest.

Each run is a real `torchrun` (static rendezvous on 127.0.0.1, a free port) of the CLI. The reference is an
in-process single-process run with the same *global* batch: the stream gives global batch ``b`` to rank
``b % world_size``, and one process with batch ``2B`` reads exactly rank 0's and rank 1's batches of size
``B`` concatenated (checked below), so the loss sequences must agree to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from elm_data.manifests.manifest import Manifest
from elm_data.model.weights import load_model
from elm_data.trainer.core.checkpoint import STREAM_STATE, TRAINING_STATE, list_checkpoints
from elm_data.trainer.core.config import TrainConfig
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.loop import build_loader, load_tokenizer, train
from elm_data.trainer.core.runlog import effective_steps, read_log
from elm_data.trainer.proof.audit import verify_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with gloo is unavailable",
    ),
]

WORLD, BATCH, SEQ_LEN, STEPS = 2, 2, 64, 4
SMALL_MODEL = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32}
LAUNCH_TIMEOUT_S = 240


def settings(manifest: Path, tokenizer: str, **overrides) -> dict:
    base = {
        "manifest": str(manifest),
        "tokenizer": tokenizer,
        "model": SMALL_MODEL,
        "seq_len": SEQ_LEN,
        "batch_size": BATCH,
        "max_steps": STEPS,
        "warmup_steps": 2,
        "lr": 3e-3,
        "epochs": None,
        "precision": "fp32",
        "seed": 0,
        "checkpoint_every": 2,
    }
    return {**base, **overrides}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(config_path: Path, out: Path, *extra: str) -> str:
    """`torchrun --nproc-per-node 2 -m elm_data train CONFIG --out OUT` on loopback; returns its stdout."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(WORLD),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "elm_data",
        "train",
        str(config_path),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    done = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in effective_steps(read_log(run_dir))}


@pytest.fixture(scope="module")
def configs(sample_manifest, tokenizer_path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    paths = {}
    for strategy in ("ddp", "fsdp"):
        paths[strategy] = root / f"{strategy}.yaml"
        paths[strategy].write_text(
            yaml.safe_dump(settings(sample_manifest, tokenizer_path, distributed=strategy, name=strategy))
        )
    return paths


@pytest.fixture(scope="module")
def ddp_run(configs) -> tuple[Path, str]:
    out = configs["ddp"].parent / "ddp_run"
    return out, torchrun(configs["ddp"], out)


@pytest.fixture(scope="module")
def fsdp_run(configs) -> Path:
    out = configs["fsdp"].parent / "fsdp_run"
    torchrun(configs["fsdp"], out)
    return out


@pytest.fixture(scope="module")
def single_runs(sample_manifest, tokenizer_path, tmp_path_factory) -> dict[str, Path]:
    """One process, same global batch: batch B with 2 accumulated micro-batches per step (the stream's global
    batches 2s and 2s+1, as ranks 0 and 1 read them); and batch 2B (other batches: a check that the comparison
    can fail)."""
    root = tmp_path_factory.mktemp("single")
    runs = {}
    variants = {
        "batch_2b": {"batch_size": WORLD * BATCH},
        "accumulate": {"tokens_per_step": WORLD * BATCH * SEQ_LEN},
    }
    for name, overrides in variants.items():
        config = TrainConfig(**settings(sample_manifest, tokenizer_path, distributed="none", **overrides))
        runs[name] = train(config, out_dir=root / name, progress=False).run_dir
    return runs


def test_ranks_read_disjoint_batches_that_make_up_the_single_process_batch(sample_manifest, tokenizer_path):
    """Rank r's k-th batch is global batch k·R + r: the single process's batches, dealt to the ranks."""
    config = TrainConfig(**settings(sample_manifest, tokenizer_path))
    tokenizer = load_tokenizer(config, Manifest(sample_manifest))
    ranks = [iter(build_loader(config, sample_manifest, tokenizer, DistInfo(r, WORLD))) for r in range(WORLD)]
    single = iter(build_loader(config, sample_manifest, tokenizer, DistInfo()))
    for _ in range(STEPS):
        parts = [next(r) for r in ranks]
        singles = [next(single) for _ in range(WORLD)]
        assert all(p["input_ids"].shape == (BATCH, SEQ_LEN + 1) for p in parts)
        assert torch.equal(
            torch.cat([p["input_ids"] for p in parts]), torch.cat([s["input_ids"] for s in singles])
        )
        whole = {"tokens_by_source": dict(sum((Counter(s["tokens_by_source"]) for s in singles), Counter()))}
        pieces = [
            {
                (s["shard_sha256"], s["doc_id"], s["doc_start"], s["doc_end"])
                for row in p["spans"]
                for s in row
            }
            for p in parts
        ]
        # no document tokens are read by both ranks
        assert pieces[0] and pieces[1] and not pieces[0] & pieces[1]
        summed = Counter(parts[0]["tokens_by_source"]) + Counter(parts[1]["tokens_by_source"])
        assert dict(summed) == whole["tokens_by_source"]


def test_ddp_losses_equal_the_single_process_run_with_the_same_global_batch(ddp_run, single_runs):
    run_dir, _ = ddp_run
    ddp = losses(run_dir)
    assert sorted(ddp) == list(range(1, STEPS + 1))
    assert len(set(ddp.values())) == STEPS  # the batches differ, so a wrong batch shows
    reference = losses(single_runs["accumulate"])
    assert list(ddp.values()) == pytest.approx(list(reference.values()), rel=1e-6, abs=0)
    other = losses(single_runs["batch_2b"])  # the same tokens per step, other batches of the stream
    assert list(ddp.values()) != pytest.approx(list(other.values()), rel=1e-6, abs=0)


def test_ddp_log_counts_tokens_of_both_ranks(ddp_run, single_runs):
    run_dir, _ = ddp_run
    header = read_log(run_dir)[0]
    assert header["world_size"] == WORLD and header["tokens_per_step"] == WORLD * BATCH * SEQ_LEN
    mine, reference = effective_steps(read_log(run_dir)), effective_steps(read_log(single_runs["accumulate"]))
    for step, ref in zip(mine, reference, strict=True):
        assert step["tokens"] == WORLD * BATCH * SEQ_LEN
        assert step["tokens_by_source"] == ref["tokens_by_source"]  # cumulative ledger, summed over ranks
        assert step["step_tokens_by_source"] == ref["step_tokens_by_source"]
    ledger = json.loads((list_checkpoints(run_dir)[-1] / "trainer_state.json").read_text())["consumed"]
    assert ledger == mine[-1]["tokens_by_source"] and sum(ledger.values()) > 0


def test_only_rank_zero_writes_the_log_checkpoints_and_report(ddp_run):
    run_dir, stdout = ddp_run
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "log.jsonl"]
    events = [r["event"] for r in read_log(run_dir)]
    assert events.count("header") == 1 and events.count("end") == 1 and events.count("step") == STEPS
    # no temp folders of a second writer
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert leftovers == [p.name for p in list_checkpoints(run_dir)]
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002", "step_00000004"]
    assert stdout.count("run: ") == 1
    stream = torch.load(list_checkpoints(run_dir)[-1] / STREAM_STATE, weights_only=True)
    assert "rank" not in stream and stream["global_batches"] == WORLD * STEPS  # one merged state for the run
    partitions = stream["plan"]["partitions"]
    assert sorted(int(p) for p in stream["cursors"]) == sorted({b % partitions for b in range(WORLD * STEPS)})


def test_ddp_resume_continues_bitwise(ddp_run, configs):
    run_dir, _ = ddp_run
    out = configs["ddp"].parent / "ddp_resumed"
    torchrun(configs["ddp"], out, "--resume", str(list_checkpoints(run_dir)[0]))
    uninterrupted, resumed = losses(run_dir), losses(out)
    assert sorted(resumed) == [1, 2, 3, 4]  # the new --out's log starts with the source run's log (steps 1-2)
    outcome = verify_run(out)
    assert outcome.ok and outcome.checked["steps"] == 4, outcome.format()  # so it verifies on its own
    assert [resumed[s] for s in (3, 4)] == [uninterrupted[s] for s in (3, 4)]
    a, b = (load_file(d / "checkpoints" / "step_00000004" / "model.safetensors") for d in (run_dir, out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_losses_and_weights_match_ddp(fsdp_run, ddp_run, single_runs):
    fsdp = losses(fsdp_run)
    reference = losses(single_runs["accumulate"])
    assert list(fsdp.values()) == pytest.approx(list(reference.values()), rel=1e-6, abs=0)
    checkpoint = list_checkpoints(fsdp_run)[-1]
    model = load_model(checkpoint)  # a full (gathered) model, readable by export as any other checkpoint
    ddp_weights = load_file(list_checkpoints(ddp_run[0])[-1] / "model.safetensors")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ddp_weights[name], rtol=1e-4, atol=1e-5)
    optimizer = torch.load(checkpoint / TRAINING_STATE, weights_only=True)["optimizer"]
    assert "layers.0.attn.qkv_proj.weight" in optimizer["state"]  # full state keyed by parameter name
    assert (
        optimizer["state"]["layers.0.attn.qkv_proj.weight"]["exp_avg"].shape
        == ddp_weights["layers.0.attn.qkv_proj.weight"].shape
    )


def test_fsdp_resume_reshards_the_full_optimizer_state(fsdp_run, configs):
    out = configs["fsdp"].parent / "fsdp_resumed"
    torchrun(configs["fsdp"], out, "--resume", str(list_checkpoints(fsdp_run)[0]))
    uninterrupted, resumed = losses(fsdp_run), losses(out)
    assert sorted(resumed) == [1, 2, 3, 4]  # steps 1-2 from the source run's log
    assert [resumed[s] for s in (3, 4)] == [uninterrupted[s] for s in (3, 4)]  # step 4 needs the Adam moments
    a, b = (load_file(d / "checkpoints" / "step_00000004" / "model.safetensors") for d in (fsdp_run, out))
    assert all(torch.equal(a[k], b[k]) for k in a)
