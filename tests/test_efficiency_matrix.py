"""`elm-data bench train` end to end on CPU: a 2x2 tiny matrix on the sample manifest's real stream."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from elm_data.trainer.bench.efficiency import run_matrix
from elm_data.trainer.bench.matrix import AXES, COLUMNS, NUMERIC, Matrix
from elm_data.trainer.cli import bench_train
from elm_data.trainer.core.runlog import effective_steps, read_log
from elm_data.trainer.proof.audit import verify_run

SMALL_MODEL = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32}


@pytest.fixture(scope="module")
def matrix_run(sample_manifest, tmp_path_factory):
    """batch 1/2 x attention math/efficient: the efficient backend has no CPU kernel, so two cells fail."""
    work = tmp_path_factory.mktemp("matrix")
    matrix = {
        "device": "cpu",
        "token_budget": 256,
        "timing_skip_steps": 1,
        "min_timed_steps": 2,
        "train": {"lr": 3.0e-3},
        "axes": {
            "model": [SMALL_MODEL],
            "batch_size": [1, 2],
            "seq_len": [32],
            "attention": ["math", "efficient"],
        },
        "peak_flops": {"cpu": 1.0e11},
        "usd_per_device_hour": {"cpu": 0.05},
    }
    path = work / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    out = work / "out"
    args = [str(path), "--out", str(out), "--manifest", str(sample_manifest)]
    result = CliRunner().invoke(bench_train, args)
    assert result.exit_code == 0, result.output
    return out, path, args, result.output


@pytest.mark.slow
def test_every_cell_is_recorded_with_numbers_or_a_reason(matrix_run):
    out, _, _, output = matrix_run
    with (out / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert [(r["batch_size"], r["attention"]) for r in rows] == [
        ("1", "math"),
        ("1", "efficient"),
        ("2", "math"),
        ("2", "efficient"),
    ]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["attention"] for r in ok] == ["math", "math"]
    for row in ok:
        for column in NUMERIC:
            float(row[column])  # present and numeric
        assert float(row["tokens_per_s"]) > 0 and 0 < float(row["mfu"]) < 1
        assert 0 <= float(row["stall_fraction"]) < 1 and float(row["loss_at_budget"]) > 0
        assert int(row["tokens"]) >= 256 and row["on_frontier"] in ("True", "False")
    for row in rows:
        if row["attention"] == "efficient":
            assert row["status"] == "unsupported" and "backend" in row["reason"]
            assert row["tokens_per_s"] == "" and row["mfu"] == ""
    assert "2 ok, 2 unsupported" in output


@pytest.mark.slow
def test_json_lines_and_plots_are_written(matrix_run):
    out, *_ = matrix_run
    report = json.loads((out / "results.json").read_text())
    assert len(report["cells"]) == 4 and report["environment"]["peak_flops"] == 1.0e11
    assert all(set(AXES) <= set(cell) for cell in report["cells"])
    assert len((out / "cells.jsonl").read_text().splitlines()) == 4
    for name in ("throughput.png", "frontier.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_each_cell_is_a_trainer_run_whose_receipt_verifies(matrix_run):
    """A cell trains through the Trainer (its step, receipt and log), not a loop of its own: every ok cell
    leaves a run log that `audit-run --verify` recomputes from the manifest and plan alone, with the cell's
    settings and as many steps as the row reports; a failed cell's log stops at its header."""
    out, *_ = matrix_run
    cells = json.loads((out / "results.json").read_text())["cells"]
    for cell in cells:
        records = read_log(Path(cell["run_dir"]))
        header = records[0]
        assert header["event"] == "header" and header["task"] == "bench"
        assert header["cell"] == {axis: cell[axis] for axis in AXES}
        if cell["status"] != "ok":
            assert [r["event"] for r in records] == ["header"]
            continue
        verified = verify_run(cell["run_dir"])
        assert verified.ok, verified.reason
        assert verified.steps == cell["steps"] == len(effective_steps(records))
        assert [r["loss"] for r in effective_steps(records)] == cell["losses"]


@pytest.mark.slow
def test_a_second_run_refuses_to_overwrite(matrix_run):
    _, _, args, _ = matrix_run
    result = CliRunner().invoke(bench_train, args)
    assert result.exit_code != 0 and "already holds a matrix" in result.output


@pytest.mark.slow  # runs a (CPU-refused) matrix end to end
@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_a_gpu_matrix_without_cuda_records_every_cell(sample_manifest, tmp_path):
    path = tmp_path / "gpu.yaml"
    axes = {"model": ["270M"], "batch_size": [8, 16], "seq_len": [2048], "attention": ["flash", "math"]}
    path.write_text(yaml.safe_dump({"device": "cuda", "axes": axes}))
    matrix = Matrix.from_yaml(path, manifest=str(sample_manifest))
    result = run_matrix(matrix, tmp_path / "out", echo=lambda line: None)
    assert result.counts()["unsupported"] == 4
    assert all("CUDA" in row["reason"] for row in result.rows)
    assert (tmp_path / "out" / "throughput.png").exists() and (tmp_path / "out" / "frontier.png").exists()


def test_bench_group_is_on_the_command_line():
    from elm_data.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0 and "train" in result.output
