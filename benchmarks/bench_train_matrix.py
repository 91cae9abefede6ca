"""Run one or more training-efficiency matrices on a manifest, then check the MFU goal.

    python benchmarks/bench_train_matrix.py --out /tmp/m                   # the packaged CPU matrix, sample
    manifest python benchmarks/bench_train_matrix.py --matrix A.yaml --matrix B.yaml --manifest DIR --out OUT

Each matrix writes ``OUT/<matrix stem>/`` (results.csv/json, cells.jsonl, plots; see
``elm_data.trainer.bench.efficiency``). Without ``--manifest`` a sample corpus (``--scale``) and its manifest
are built under ``--work``. The goal check: the best MFU of model ``--goal-model`` at ``--goal-seq`` over all
matrices, against ``--goal-mfu``, with that cell's loader stall; printed and written to ``OUT/goal.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

PACKAGED = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "bench_matrix.yaml"


def sample_manifest(work: Path, scale: float, tokenizer: str | None) -> Path:
    from elm_data.manifests.build import build_manifest
    from elm_data.sources.sample import write_sample_corpus

    out = work / "manifest"
    if not (out / "manifest.json").exists():
        mixture = write_sample_corpus(work / "sample", seed=0, scale=scale)
        build_manifest(mixture, out, tokenizer=tokenizer, workers=2)
    return out


def goal(rows: list[dict], model: str, seq_len: int, target: float) -> dict:
    """The best-MFU ok cell of ``model`` at ``seq_len``, and whether it meets ``target`` with no loader
    stall."""
    cells = [r for r in rows if r["status"] == "ok" and r["model"] == model and r["seq_len"] == seq_len]
    measured = [r for r in cells if r.get("mfu") is not None]
    if not measured:
        why = "no cell of that model/seq ran" if not cells else cells[0].get("mfu_note")
        return {"model": model, "seq_len": seq_len, "target_mfu": target, "met": None, "why": why}
    best = max(measured, key=lambda r: r["mfu"])
    settings = {
        k: best[k] for k in ("batch_size", "attention", "precision", "compile", "gradient_checkpointing")
    }
    return {
        "model": model,
        "seq_len": seq_len,
        "target_mfu": target,
        "best_mfu": best["mfu"],
        "stall_fraction": best["stall_fraction"],
        "tokens_per_s": best["tokens_per_s"],
        "settings": settings,
        "met": best["mfu"] >= target and best["stall_fraction"] < 0.01,
        "device": best["device"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--matrix", type=Path, action="append", help="matrix YAML (repeatable; default: packaged)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--manifest", type=Path, default=None, help="default: build the sample corpus' manifest"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="where the sample manifest is built (default: tmp)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="sample corpus scale")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--goal-model", default="270M")
    parser.add_argument("--goal-seq", type=int, default=2048)
    parser.add_argument("--goal-mfu", type=float, default=0.5)
    args = parser.parse_args()

    from elm_data.trainer.bench.efficiency import run_matrix
    from elm_data.trainer.bench.matrix import Matrix

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_matrix_"))
    manifest = args.manifest or sample_manifest(work, args.scale, args.tokenizer)
    rows = []
    for path in args.matrix or [PACKAGED]:
        matrix = Matrix.from_yaml(path, manifest=str(manifest.resolve()), device=args.device)
        print(f"== {path} ({len(matrix.cells())} cells) on {manifest}", flush=True)
        rows += run_matrix(matrix, args.out / path.stem, tokenizer=args.tokenizer).rows
    verdict = goal(rows, args.goal_model, args.goal_seq, args.goal_mfu)
    (args.out / "goal.json").write_text(json.dumps(verdict, indent=2))
    print("goal:", json.dumps(verdict))


if __name__ == "__main__":
    main()
