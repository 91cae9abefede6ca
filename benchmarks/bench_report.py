"""`elm-data report` on a 10^4-step run log: generation time, and how much of it is the receipt's
verification.

The log is written as the trainer writes it, for a run of ``--steps`` steps (batch 2 x 32 tokens, one batch a
step) on MANIFEST_DIR's stream: its header names the real manifest and stream plan, and every step record
carries the chain head and the per-source token counts the plan gives (``audit.expected_heads``), so
``audit-run --verify`` — which the report runs — verifies it; loss, throughput and stall are synthetic (no
model is trained). Then :func:`write_report` is timed ``--repeats`` times (median wall and CPU seconds: on a
shared machine the CPU time is the steadier figure), once as is and once with the manifest unreachable (the
page without verification or targets: charts and page alone).

    ELM_DATA_TOKENIZER=... python benchmarks/bench_report.py MANIFEST_DIR [--steps 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_log(manifest_dir: Path, run_dir: Path, steps: int) -> float:
    """A verifiable ``steps``-step log of a run on ``manifest_dir``; returns the seconds the plan's heads
    took."""
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import StreamLoader, TokenStream
    from elm_data.pipeline.stream.plan import Plan, PlanConfig
    from elm_data.trainer.proof.audit import expected_heads

    manifest = Manifest(manifest_dir)
    stream = TokenStream(manifest_dir, batch_size=2, seq_len=32, epochs=None, provenance=True)
    state = StreamLoader(stream).state_dict()
    plan = Plan(manifest, PlanConfig.from_mapping(state["plan"], "plan"))
    header = {
        "event": "header",
        "manifest_id": manifest.manifest_id,
        "manifest_dir": str(manifest_dir),
        "config": {"model": "tiny"},
        "device": "cpu",
        "parameters": 4_473_600,
        "world_size": 1,
        "grad_accum_steps": 1,
        "tokens_per_step": 64,
        "stream_state": state,
    }
    rng = np.random.default_rng(0)
    cumulative: dict[str, int] = {}
    started = time.perf_counter()
    lines = [json.dumps(header)]
    for counts in expected_heads(plan, manifest.manifest_id, [1] * steps):
        for key, n in counts.by_source.items():
            cumulative[key] = cumulative.get(key, 0) + n
        k, loss = counts.step, 8.0 * np.exp(-counts.step / 2000) + 2.5 + rng.normal(0, 0.4)
        wait, total = rng.uniform(0.001, 0.02), rng.uniform(0.2, 0.3)
        lines.append(
            json.dumps(
                {
                    "event": "step",
                    "step": k,
                    "loss": loss,
                    "lr": 1e-3,
                    "grad_norm": 1.0,
                    "tokens": counts.tokens,
                    "counted_tokens": counts.counted,
                    "tokens_total": 64 * k,
                    "tokens_per_s": 64 / total,
                    "mfu": None,
                    "data_wait_s": wait,
                    "step_time_s": total,
                    "step_tokens_by_source": counts.by_source,
                    "tokens_by_source": {s: n for s, n in sorted(cumulative.items()) if n},
                    "receipt": counts.head,
                    "loss_mean": loss,
                    "data_share": wait / total,
                    "peak_memory_bytes": 2**30,
                }
            )
        )
    heads_s = time.perf_counter() - started
    end = {
        "event": "end",
        "step": steps,
        "tokens_total": 64 * steps,
        "receipt": counts.head,
        "manifest_id": manifest.manifest_id,
        "merkle_root": manifest.info["merkle_root"],
        "plan": state["plan"],
        "batches_per_step": 1,
        "steps": steps,
    }
    run_dir.mkdir(parents=True)
    (run_dir / "log.jsonl").write_text("\n".join([*lines, json.dumps(end)]) + "\n")
    return heads_s


def timed(run_dir: Path, repeats: int, **kwargs) -> tuple[tuple[float, float], object]:
    """(median wall s, median CPU s of this process) of ``repeats`` reports, and the last report."""
    from elm_data.trainer.proof.report import write_report

    walls, cpus, result = [], [], None
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        result = write_report(run_dir, **kwargs)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return (round(statistics.median(walls), 2), round(statistics.median(cpus), 2)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        heads_s = write_log(args.manifest.resolve(), run_dir, args.steps)
        log_mb = (run_dir / "log.jsonl").stat().st_size / 2**20
        full_s, result = timed(run_dir, args.repeats)
        assert result.receipt.startswith("verified"), result.receipt
        pages = Path(tmp) / "nowhere"
        pages.mkdir()
        # not a manifest: verify and targets fail
        alone_s, alone = timed(run_dir, args.repeats, manifest_dir=pages)
        assert alone.receipt.startswith("not checked"), alone.receipt
        page_kb = result.html.stat().st_size / 1024
    print(
        json.dumps(
            {
                "steps": args.steps,
                "log_MiB": round(log_mb, 1),
                "plan_heads_s": round(heads_s, 2),
                "report_wall_cpu_s_median": full_s,
                "report_without_verify_wall_cpu_s_median": alone_s,
                "page_KiB": round(page_kb),
                "repeats": args.repeats,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
