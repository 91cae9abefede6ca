"""benchmarks/bench_peers.py without installing anything: its plan, its arithmetic, its accounting of CPU.

The peers themselves (HF datasets, datatrove, mosaicml-streaming, litdata) are installed and run only by the
benchmark; here: every ratio names jobs the plan makes, rounds alternate, ratios are paired within a round,
orphaned workers' CPU is counted, and the peers' copy of the character rule decides as ours does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elm_data.pipeline.filters import passes_min_characters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

import bench_peers  # noqa: E402
import common as peer_common  # noqa: E402


def test_every_ratio_and_group_names_jobs_the_plan_makes(tmp_path):
    args = bench_peers.parse_args(["--dry-run", "--quick", "--work", str(tmp_path)])
    every = bench_peers.select(args, bench_peers.dummy_corpus(args))
    jobs = {job.name for unit in every.values() for job in unit}
    for group, units in bench_peers.GROUPS.items():
        assert set(units) <= set(every), group
    for name, num, den, field, _ in bench_peers.RATIOS:
        assert {num, den} <= jobs, name
        assert field in {"cpu", "wall", "rss", "tree_rss"}, name
    assert {"stream", "take0", "take1", "raw-sp"} <= jobs  # the steady-state rate and the start-up goal
    venvs = {job.venv for unit in every.values() for job in unit if job.venv}
    assert venvs == set(bench_peers.PINS)
    assert all("==" in pin for pins in bench_peers.PINS.values() for pin in pins)  # pinned, not ranges


def test_dry_run_prints_every_job_and_pin_and_installs_nothing(tmp_path, capsys):
    assert (
        bench_peers.main(["--dry-run", "--work", str(tmp_path / "work"), "--venvs", str(tmp_path / "v")]) == 0
    )
    out = capsys.readouterr().out
    jobs = "hf stream stream-2w take0 take1 raw-sp build-1 build-2 datatrove-1 datatrove-2 "
    jobs += "mosaic-convert mosaic-pass"
    for job in [*jobs.split(), "litdata-convert", "litdata-pass"]:
        assert f" {job} " in out, job
    for pins in bench_peers.PINS.values():
        assert " ".join(pins) in out
    assert "--scale 60 --seed 11" in out and "3 rounds" in out
    assert not (tmp_path / "v").exists() and not (tmp_path / "work").exists()


def test_quick_and_bad_arguments():
    quick = bench_peers.parse_args(["--quick", "--dry-run"])
    assert (quick.scale, quick.repeats) == (6.0, 2)
    assert bench_peers.parse_args(["--dry-run", "--groups", "build"]).units == list(
        bench_peers.GROUPS["build"]
    )
    with pytest.raises(SystemExit):
        bench_peers.parse_args(["--dry-run", "--groups", "nope"])


def test_rounds_alternate_their_order():
    orders = bench_peers.round_orders(["a", "b", "c"], 4)
    assert orders == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"], ["c", "b", "a"]]


def test_ratios_are_paired_within_a_round_then_the_median():
    samples = {
        "ours": [{"cpu": 2.0}, {"cpu": 3.0}, None, {"cpu": 10.0}],
        "peer": [{"cpu": 4.0}, {"cpu": 3.0}, {"cpu": 5.0}, {"cpu": 10.0}],
    }
    # rounds 1, 2, 4 have both: 0.5, 1.0, 1.0 -> median 1.0 (not median(ours)/median(peer) = 3/4.5)
    assert bench_peers.paired_ratio(samples, "ours", "peer", "cpu") == 1.0
    assert bench_peers.paired_ratio(samples, "ours", "missing", "cpu") is None


def test_steady_state_rates_subtract_start_up():
    samples = {
        "stream": [{"cpu": 12.0}, {"cpu": 14.0}],
        "take0": [{"cpu": 2.0}, {"cpu": 4.0}],
        "take1": [{"cpu": 7.0}, {"cpu": 9.0}],  # not the start-up: it tokenizes a first batch
        "raw-sp": [{"cpu": 11.0, "result": {"tokens": 1000, "startup_cpu_s": 1.0}}],
    }
    assert bench_peers.steady_rates(samples, 500) == (50.0, 100.0)


def test_the_steady_state_ratio_is_taken_within_each_round():
    # round 1: 1000 / (12 - 2) = 100 vs 2000 / (11 - 1) = 200 -> 0.5; round 2: 1000 / (6 - 1) = 200 vs
    # 2000 / (21 - 1) = 100 -> 2.0; round 3: 1000 / (11 - 1) = 100 vs 2000 / (21 - 1) = 100 -> 1.0
    samples = {
        "stream": [{"cpu": 12.0}, {"cpu": 6.0}, {"cpu": 11.0}],
        "take0": [{"cpu": 2.0}, {"cpu": 1.0}, {"cpu": 1.0}],
        "raw-sp": [{"cpu": c, "result": {"tokens": 2000, "startup_cpu_s": 1.0}} for c in (11.0, 21.0, 21.0)],
    }
    assert bench_peers.steady_series(samples, 1000) == ([100.0, 200.0, 100.0], [200.0, 100.0, 100.0])
    assert bench_peers.steady_ratio(samples, 1000) == 1.0  # the median of 0.5, 2.0, 1.0
    assert bench_peers.steady_rates(samples, 1000) == (100.0, 100.0)
    samples["take0"][1] = None  # a round without its start-up run drops out of the ratio
    assert bench_peers.steady_ratio(samples, 1000) == 0.75
    samples["raw-sp"][0]["cpu"] = 1.0  # no CPU after its start-up: no rate, not a division by zero
    assert bench_peers.steady_series(samples, 1000)[1] == [None, 100.0, 100.0]


@pytest.mark.parametrize(
    ("value", "goal", "verdict"),
    [
        (0.85, ("<=", 0.85), "met"),
        (0.86, ("<=", 0.85), "NOT met"),
        (1.5, (">=", 1.5), "met"),
        (1.49, (">=", 1.5), "NOT met"),
        (None, ("<=", 1.0), "n/a"),
    ],
)
def test_goal_verdicts(value, goal, verdict):
    assert bench_peers.goal_verdict(value, goal).endswith(verdict)
    assert bench_peers.goal_verdict(value, None) == ""


def test_break_even_epochs():
    assert bench_peers.break_even((10.0, 10.0), (20.0, 2.0)) == pytest.approx(1.25)  # 10 + 10E = 20 + 2E
    assert bench_peers.break_even((10.0, 10.0), (5.0, 2.0)) == 0.0  # cheaper from the start
    assert bench_peers.break_even((10.0, 2.0), (20.0, 3.0)) is None  # never
    assert bench_peers.epoch_costs(3.0, 2.0) == [5.0, 7.0, 11.0]


def test_last_json_line():
    assert bench_peers.last_json_line('noise\n{"tokens": 3}\nnot json\n') == {"tokens": 3}
    assert bench_peers.last_json_line("[1, 2]\n") == {}


def test_measure_counts_the_cpu_of_orphaned_grandchildren(tmp_path):
    """A child that forks a CPU-burning grandchild and exits at once: the grandchild's CPU is the child's
    work."""
    burner = textwrap.dedent("""
        import os, time
        if os.fork() == 0:
            end = time.process_time() + 0.6
            while time.process_time() < end:
                pass
            os._exit(0)
        print('{"tokens": 1}')
    """)
    probe = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import bench_peers
        bench_peers.become_subreaper()
        s = bench_peers.measure([sys.executable, "-c", {burner!r}], {{}}, __import__("pathlib").Path("."))
        print(json.dumps({{k: s[k] for k in ("cpu", "orphans", "rc", "result")}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    sample = json.loads(out.stdout.strip().splitlines()[-1])
    assert sample["rc"] == 0 and sample["result"] == {"tokens": 1}
    assert sample["orphans"] == 1
    assert sample["cpu"] >= 0.6


CHARACTER_CASES = [
    "",
    "a" * 199,
    "a" * 200,
    "!" * 500 + "b" * 199,
    "!" * 500 + "b" * 200,
    "word " * 39 + "word",  # 199 normalised characters
    "word " * 40,  # strip: 199
    "word  \t\n " * 40 + "x",
    "Ünïcödé, wörds; and… punctuation!? " * 6,
    ("x" * 150 + "." * 300 + " " * 50) * 2,
    "A" * 416 + "." * 1000,  # long text decided by the prefix probes
]


@pytest.mark.parametrize("text", CHARACTER_CASES)
def test_the_peers_character_rule_is_ours(text):
    assert peer_common.passes_character_rule(text, 200) == passes_min_characters(text, 200)


def test_packed_rows_frame_documents_and_cut_full_rows(tmp_path, monkeypatch):
    shard = tmp_path / "s.jsonl"
    docs = ["x" * 300, "short", "y" * 5000, "z" * 300]
    shard.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))

    class Chars:  # one token per character, id = 10 + its ordinal class
        def encode(self, texts, num_threads=1):
            return [[10 + (ord(c) % 3) for c in t] for t in texts]

    monkeypatch.setattr(peer_common, "SEQ_LEN", 7)
    rows = list(peer_common.packed_rows([str(shard)], Chars()))
    framed = [tok for t in docs if len(t) >= 256 for tok in [1, *Chars().encode([t])[0], 2]]
    assert rows == [framed[i : i + 8] for i in range(0, len(framed) // 8 * 8, 8)]


def test_a_saved_run_is_reported_again_with_every_goal(tmp_path, capsys):
    def run(cpu, wall, **extra):
        return {"cpu": cpu, "wall": wall, "rss": 100.0, "tree_rss": 120.0, "load": 3.0, **extra}

    names = [j for group in bench_peers.GROUPS.values() for j in group]
    names += ["mosaic-convert", "mosaic-pass", "litdata-convert", "litdata-pass"]
    samples = {
        n: [run(10.0, 20.0), run(12.0, 24.0)] for n in dict.fromkeys(names) if n not in ("mosaic", "litdata")
    }
    samples["take0"] = [run(0.5, 1.0), run(0.5, 1.0)]
    samples["take1"] = [run(0.8, 1.0), run(0.9, 1.0)]
    samples["raw-sp"] = [run(10.0, 20.0, result={"tokens": 1000, "startup_cpu_s": 0.1})] * 2
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"kept_tokens": 1000, "samples": samples}))
    assert bench_peers.main(["--from-json", str(saved), "--markdown"]) == 0
    out = capsys.readouterr().out
    steady = ["steady-state stream / raw SentencePiece, tokens per CPU-second"]
    goals = [name for name, *_, goal in bench_peers.RATIOS if goal] + steady + ["--take 1"]
    table = [
        line for line in out.splitlines() if line.startswith("| ") and "goal" in line and "ratio" not in line
    ]
    assert len(table) == len(goals)
    for goal in goals:
        assert any(goal in line for line in table), goal
    assert "| stream --take 1 CPU-s | 0.85 s | goal <= 1.0: met |" in out
    # rounds: 10/10 and 12/10 -> median 1.10
    assert "| build --workers 1 CPU / raw SentencePiece CPU | 1.10x | goal <= 1.05: NOT met |" in out
