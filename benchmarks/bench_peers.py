"""Peers on the same shards (issue 25): whole processes, alternating rounds, CPU / wall / peak-memory ratios.

Each peer is installed from the package registry, pinned (``PINS``), in its own virtual environment under
``--venvs`` (default ``~/.cache/elm-data-bench/venvs/<peer>``; made once, reused while its pins match). The
venvs see the base interpreter's site-packages, so the CPU torch wheel already there is reused (a constraint
pins torch to it) instead of the registry's CUDA build; whatever else a peer pins differently lands in its
venv. The versions each venv actually imports are printed.

Shards: the ``--source`` part (default RedPajama: 12 JSONL shards, 47 MB, 10.2 M tokens) of
``elm-data sample --scale 60 --seed 11``; ``--quick`` uses scale 6. Jobs (every one a fresh process):

* ``hf``: HF ``datasets`` streaming per subset + batched SentencePiece ``map`` (``peers/hf_stream.py``);
* ``stream``: ``elm-data stream --full-pass`` (one process, one SentencePiece thread); ``stream-2t``: the
  same with ``--threads 2`` (one process on two cores, as HF's map uses them); ``stream-2w``: with 2 worker
  processes (the CLI's ``--workers 2`` where it has it, else ``peers/elm_stream_api.py``: the Python API, 2
  DataLoader workers);
  ``take1``: ``elm-data stream --take 1`` (start-up and the first batch); ``take0``: ``--take 0`` (start-up
  alone: subtracted from the full pass for the steady-state rate);
* ``raw-sp``: raw SentencePiece, 1 thread, over every record's text (``peers/raw_sp.py``);
* ``build-1`` / ``build-2``: ``elm-data build manifest --workers 1 / 2`` (fresh output each run);
* ``datatrove-1`` / ``datatrove-2``: JsonlReader -> the same character rule -> TokensCounter, 1 / 2 tasks;
* ``mosaic-convert`` + ``mosaic-pass``, ``litdata-convert`` + ``litdata-pass``: the pre-tokenized routes
  (``peers/mosaic_route.py``, ``peers/litdata_route.py``): tokenize + pack into rows of 2049 tokens
  (uint16/int16 on disk), then one natural pass over the converted data, batch 8, one process.

A round runs every selected job once; rounds alternate their order (A B C ..., ... C B A) so that drift in the
machine's load falls on both sides of each ratio. Ratios are taken within a round, then the median over rounds
is quoted, with the median load average (1 min) at the runs. CPU = user + sys of the child and every
descendant it waited for (``os.wait4``); peak RSS = the largest single process (``ru_maxrss``; it includes the
runner's ~30 MiB, which the child inherits at fork) and, sampled every 50 ms with psutil, the sum over the
process tree (counts pages shared by forked workers more than once).

    python benchmarks/bench_peers.py --quick                 # ~1 M tokens, 2 rounds: develop with this
    python benchmarks/bench_peers.py --repeats 3             # the recorded run (benchmarks/RESULTS.md)
    python benchmarks/bench_peers.py --dry-run               # the plan: pins and command lines; installs
    nothing python benchmarks/bench_peers.py --groups stream,build   # a subset of the jobs (stream, build,
    pretok)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEER_SCRIPTS = HERE / "peers"
CACHE = Path.home() / ".cache" / "elm-data-bench"
BATCH = 8

# venv name -> pinned requirements (the peer, and what its script imports beside it)
PINS: dict[str, tuple[str, ...]] = {
    "datasets": ("datasets==5.2.0", "sentencepiece==0.2.3"),
    "datatrove": ("datatrove==0.10.1", "tokenizers==0.23.3"),
    "mosaicml-streaming": ("mosaicml-streaming==0.13.0", "sentencepiece==0.2.3"),
    "litdata": ("litdata==0.2.76", "sentencepiece==0.2.3"),
}
# venvs that take the registry's torch (CUDA build) rather than the base interpreter's CPU wheel: PyPI's
# torchvision, which mosaicml-streaming imports, links against CUDA torch's libraries
REGISTRY_TORCH = {"mosaicml-streaming"}
# what every environment reports it imports beside its peer (distribution names)
REPORTED = ("sentencepiece", "tokenizers", "pyarrow", "numpy", "torch", "fsspec")

GROUPS = {
    "stream": ("hf", "stream", "stream-2t", "stream-2w", "take0", "take1", "raw-sp"),
    "build": ("raw-sp", "build-1", "build-2", "datatrove-1", "datatrove-2"),
    "pretok": ("stream", "take1", "build-1", "mosaic", "litdata"),
}

EQUAL = ("<=", 0.75)  # the wall at equal cores (issue 25)
# (name, numerator job, denominator job, field, goal as (comparison, bound) or None, what the issue asks)
RATIOS: tuple[tuple[str, str, str, str, tuple[str, float] | None], ...] = (
    ("stream CPU / HF datasets CPU (one process)", "stream", "hf", "cpu", ("<=", 0.85)),
    ("stream wall / HF datasets wall (one process, one thread)", "stream", "hf", "wall", None),
    ("stream --threads 2 wall / HF datasets wall (equal cores, 1 process)", "stream-2t", "hf", "wall", EQUAL),
    ("stream --threads 2 CPU / HF datasets CPU", "stream-2t", "hf", "cpu", None),
    ("stream --workers 2 wall / HF datasets wall (equal cores)", "stream-2w", "hf", "wall", EQUAL),
    ("stream --workers 2 CPU / HF datasets CPU", "stream-2w", "hf", "cpu", None),
    ("stream peak RSS / HF datasets peak RSS", "stream", "hf", "rss", None),
    ("stream CPU / raw SentencePiece CPU (whole process)", "stream", "raw-sp", "cpu", None),
    ("build --workers 1 CPU / raw SentencePiece CPU", "build-1", "raw-sp", "cpu", ("<=", 1.05)),
    ("datatrove wall / build wall, 1 worker", "datatrove-1", "build-1", "wall", None),
    ("datatrove wall / build wall, 2 workers (equal cores)", "datatrove-2", "build-2", "wall", (">=", 1.5)),
    ("datatrove CPU / build CPU, 1 worker", "datatrove-1", "build-1", "cpu", None),
    ("datatrove CPU / build CPU, 2 workers", "datatrove-2", "build-2", "cpu", None),
    ("datatrove peak tree RSS / build peak tree RSS, 2 workers", "datatrove-2", "build-2", "tree_rss", None),
)


@dataclasses.dataclass
class Job:
    """One whole-process run: ``argv`` in ``venv`` (None: this interpreter); ``before``/``after`` run outside
    the measurement (clear an output folder; read a disk footprint into the sample)."""

    name: str
    argv: list[str]
    venv: str | None = None
    before: Callable[[], None] | None = None
    after: Callable[[dict[str, Any]], None] | None = None


@dataclasses.dataclass
class Corpus:
    mixture: Path  # the --source part of the sample mixture, as its own YAML
    shards_json: Path  # {subset: [jsonl path]} for the peer scripts
    manifest: Path  # built once by us (for the stream jobs)
    tokenizer: Path
    tokenizer_json: Path  # the same model as HF tokenizers' JSON (for datatrove's TokensCounter)
    kept_tokens: int = 0  # the manifest's kept tokens (no BOS/EOS)
    bytes: int = 0
    shards: int = 0


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def goal_verdict(value: float | None, goal: tuple[str, float] | None) -> str:
    """``met`` / ``NOT met`` against a goal ``("<=" | ">=", bound)``; empty without a goal, ``n/a`` without a
    value."""
    if goal is None:
        return ""
    if value is None:
        return f"goal {goal[0]} {goal[1]}: n/a"
    op, bound = goal
    ok = value <= bound if op == "<=" else value >= bound
    return f"goal {op} {bound}: {'met' if ok else 'NOT met'}"


def round_orders(names: list[str], rounds: int) -> list[list[str]]:
    """The job order of each round: forward, reversed, forward, ... (alternating pairs in time)."""
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def paired_ratio(samples: dict[str, list[dict | None]], num: str, den: str, field: str) -> float | None:
    """Median over rounds of ``num[field] / den[field]`` taken within each round (rounds missing either are
    skipped; None when no round has both)."""
    ratios = [
        a[field] / b[field]
        for a, b in zip(samples.get(num, []), samples.get(den, []), strict=False)
        if a and b and a.get(field) and b.get(field)
    ]
    return statistics.median(ratios) if ratios else None


def steady_series(
    samples: dict[str, list[dict | None]], kept_tokens: int, job: str = "stream"
) -> tuple[list[float | None], list[float | None]]:
    """Per round, (stream, raw SentencePiece) tokens per CPU-second in the steady state (None where a run is
    missing).

    Stream: the manifest's kept tokens / (full-pass CPU - ``stream --take 0`` CPU of the same round: imports,
    manifest check, plan, exit; no document read). Raw: its tokens / (its CPU - its own CPU before the first
    text).
    """
    rounds = max(len(samples.get(job, [])), len(samples.get("raw-sp", [])))
    stream: list[float | None] = []
    raw: list[float | None] = []
    for i in range(rounds):
        s, t, r = (_nth(samples.get(name, []), i) for name in (job, "take0", "raw-sp"))
        stream.append(kept_tokens / (s["cpu"] - t["cpu"]) if s and t and s["cpu"] > t["cpu"] else None)
        tokens = (r or {}).get("result", {}).get("tokens")
        steady_cpu = r["cpu"] - r["result"]["startup_cpu_s"] if tokens else 0
        raw.append(tokens / steady_cpu if steady_cpu > 0 else None)
    return stream, raw


def _nth(runs: list[dict | None], i: int) -> dict | None:
    return runs[i] if i < len(runs) else None


def steady_rates(
    samples: dict[str, list[dict | None]], kept_tokens: int, job: str = "stream"
) -> tuple[float | None, float | None]:
    """Median over rounds of (stream, raw SentencePiece) steady-state tokens per CPU-second
    (:func:`steady_series`)."""
    stream, raw = (
        [x for x in series if x is not None] for series in steady_series(samples, kept_tokens, job)
    )
    return (statistics.median(stream) if stream else None, statistics.median(raw) if raw else None)


def steady_ratio(
    samples: dict[str, list[dict | None]], kept_tokens: int, job: str = "stream"
) -> float | None:
    """Stream / raw SentencePiece steady-state rate taken within each round, median over rounds: the way
    every other ratio here is taken (drift in the machine's speed between rounds cancels)."""
    ratios = [s / r for s, r in zip(*steady_series(samples, kept_tokens, job), strict=True) if s and r]
    return statistics.median(ratios) if ratios else None


def median_of(runs: list[dict | None], field: str) -> float | None:
    values = [r[field] for r in runs if r and r.get(field) is not None]
    return statistics.median(values) if values else None


def epoch_costs(convert_cpu: float, pass_cpu: float, epochs: tuple[int, ...] = (1, 2, 4)) -> list[float]:
    """CPU-seconds of a route for E epochs: its one-off preparation + E passes."""
    return [convert_cpu + e * pass_cpu for e in epochs]


def break_even(ours: tuple[float, float], theirs: tuple[float, float]) -> float | None:
    """Epochs after which a route (prep, pass) costs less than ours in total: prep_o + E pass_o = prep_t + E
    pass_t.

    None when theirs never catches up (its pass is no cheaper); 0 when it is cheaper from the start.
    """
    (prep_o, pass_o), (prep_t, pass_t) = ours, theirs
    if pass_t >= pass_o:
        return None if prep_t > prep_o else 0.0
    return max(0.0, (prep_t - prep_o) / (pass_o - pass_t))


# --- measurement -------------------------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphaned descendants of a measured child (workers of a forkserver or pool that outlive their parent)
    are reparented to this process instead of init, so that :func:`measure` reaps them and counts their
    CPU."""
    import ctypes

    pr_set_child_subreaper = 36
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        print(
            "  (PR_SET_CHILD_SUBREAPER failed: orphaned workers' CPU would not be counted)", file=sys.stderr
        )


def _tree_rss_sampler(stop: threading.Event, peak: list[float]) -> None:
    """Peak of the summed RSS of every descendant of this process (the measured tree), every 50 ms."""
    try:
        import psutil
    except ImportError:
        return
    me = psutil.Process()
    while not stop.wait(0.05):
        total = 0
        for p in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        peak[0] = max(peak[0], total / 2**20)


def reap_orphans(deadline_s: float = 60.0) -> list[Any]:
    """Wait for every remaining descendant reparented to us (see :func:`become_subreaper`); their rusages."""
    usages, end = [], time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)
            continue
        usages.append(usage)
    return usages


def measure(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``argv`` to its end: CPU (user+sys of the child and every descendant: those it waited for come in
    its rusage, orphans are reaped here), wall, peak RSS, load, its last-line JSON result and the time to its
    first batch when it reports one."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        stop, peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=_tree_rss_sampler, args=(stop, peak), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        usages = [usage, *reap_orphans()]
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    sample: dict[str, Any] = {
        "cpu": sum(u.ru_utime + u.ru_stime for u in usages),
        "wall": wall,
        "rss": max(u.ru_maxrss for u in usages) / 1024,
        "tree_rss": peak[0] or None,
        "load": load,
        "rc": proc.returncode,
        "orphans": len(usages) - 1,
    }
    if proc.returncode != 0:
        sample["error"] = (stderr.strip() or stdout.strip())[-1500:]
        return sample
    sample["result"] = last_json_line(stdout)
    first = sample["result"].get("first_batch_epoch")
    if first:
        sample["ttfb"] = first - started
    return sample


def last_json_line(stdout: str) -> dict[str, Any]:
    """The last stdout line that parses as a JSON object ({} when none does)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --- environments ------------------------------------------------------------------------------------------


def venv_python(venvs: Path, name: str) -> Path:
    return venvs / name / "bin" / "python"


def ensure_venv(venvs: Path, name: str) -> Path:
    """The peer's venv with its pins installed (made once; remade when the pins change)."""
    home, marker = venvs / name, venvs / name / "elm-bench-pins.txt"
    pins = "\n".join(PINS[name]) + ("\n(registry torch)" if name in REGISTRY_TORCH else "") + "\n"
    if marker.exists() and marker.read_text() == pins:
        return venv_python(venvs, name)
    shutil.rmtree(home, ignore_errors=True)
    print(f"  installing {name} ({', '.join(PINS[name])}) into {home} ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(home)], check=True)
    constraints = home / "constraints.txt"
    constraints.write_text("" if name in REGISTRY_TORCH else torch_constraint())
    subprocess.run(
        [str(venv_python(venvs, name)), "-m", "pip", "install", "-q", "-c", str(constraints), *PINS[name]],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    marker.write_text(pins)
    return venv_python(venvs, name)


def torch_constraint() -> str:
    """``torch==<the base interpreter's torch>`` (its CPU wheel), or nothing when there is none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"torch=={version('torch')}\n"
    except PackageNotFoundError:
        return ""


def versions(python: Path | str, names: tuple[str, ...]) -> dict[str, str]:
    """The versions of ``names`` that ``python`` imports (absent ones left out)."""
    code = (
        "import importlib.metadata as m, json\n"
        f"names = {list(names)!r}\n"
        "found = {}\n"
        "for n in names:\n"
        "    try: found[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# --- the corpus
# ----------------------------------------------------------------------------------------------


def elm_data_cli() -> list[str]:
    """``elm-data`` of this interpreter's environment."""
    script = Path(sys.executable).parent / "elm-data"
    return [str(script)] if script.exists() else [sys.executable, "-m", "elm_data.cli"]


def prepare_corpus(args, work: Path) -> Corpus:
    """The sample corpus, its ``--source`` part as a mixture, the shard list, our manifest, tokenizer.json."""
    import yaml

    sample = work / f"sample-{args.scale:g}-{args.seed}"
    if not (sample / "mixture.yaml").exists():
        subprocess.run(
            [*elm_data_cli(), "sample", str(sample), "--scale", str(args.scale), "--seed", str(args.seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    mixture = yaml.safe_load((sample / "mixture.yaml").read_text())
    mixture["sources"] = [s for s in mixture["sources"] if s["source"] == args.source]
    if not mixture["sources"]:
        raise SystemExit(f"no source {args.source!r} in {sample / 'mixture.yaml'}")
    mixture["name"] = f"{args.source}-sample"
    part = sample / f"{args.source}.yaml"
    part.write_text(yaml.safe_dump(mixture, sort_keys=False))
    shard_map = {
        s["subset"]: sorted(p for pattern in s["shards"] for p in glob.glob(str(sample / pattern)))
        for s in mixture["sources"]
    }
    shards_json = sample / f"{args.source}-shards.json"
    shards_json.write_text(json.dumps(shard_map, indent=1))
    manifest = sample / f"{args.source}-manifest"
    if not usable(manifest, args.tokenizer):
        argv = [
            "build",
            "manifest",
            str(part),
            "--out",
            str(manifest),
            "--workers",
            "2",
            "--tokenizer",
            str(args.tokenizer),
            "--overwrite",
        ]
        subprocess.run([*elm_data_cli(), *argv], check=True, stdout=subprocess.DEVNULL)
    files = [Path(p) for paths in shard_map.values() for p in paths]
    corpus = Corpus(part, shards_json, manifest, args.tokenizer, tokenizer_json(args.tokenizer, work))
    corpus.kept_tokens = json.loads((manifest / "manifest.json").read_text())["totals"]["tokens"]
    corpus.bytes, corpus.shards = sum(f.stat().st_size for f in files), len(files)
    return corpus


def usable(manifest: Path, tokenizer: Path) -> bool:
    """Whether this tree's stream opens a cached manifest (one built by an older tree may be of an older
    format)."""
    if not (manifest / "manifest.json").exists():
        return False
    probe = [*elm_data_cli(), "stream", str(manifest), "--take", "0", "--tokenizer", str(tokenizer)]
    return subprocess.run(probe, capture_output=True).returncode == 0


def tokenizer_json(model: Path, work: Path) -> Path:
    """HF ``tokenizers``' JSON of the SentencePiece model (``bench_tokenize``'s conversion, ids identical)."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    out = work / f"tokenizer-{digest}.json"
    if not out.exists():
        code = (
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "import sentencepiece as spm\n"
            "from bench_tokenize import hf_tokenizer_from_sentencepiece\n"
            "hf_tokenizer_from_sentencepiece(spm.SentencePieceProcessor(model_file=sys.argv[2])).save(sys.argv[3])\n"
        )
        subprocess.run([sys.executable, "-c", code, str(HERE), str(model), str(out)], check=True)
    return out


# --- the jobs
# ------------------------------------------------------------------------------------------------


def cli_has_workers() -> bool:
    """Whether ``elm-data stream`` takes ``--workers`` (the perf helper adds it to the full pass)."""
    out = subprocess.run([*elm_data_cli(), "stream", "--help"], capture_output=True, text=True)
    return "--workers" in out.stdout


def fresh(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def footprint(path: Path) -> Callable[[dict[str, Any]], None]:
    def record(sample: dict[str, Any]) -> None:
        sample["disk"] = disk_bytes(path) if path.exists() else None

    return record


def ours_jobs(c: Corpus, out: Path, workers_flag: bool) -> dict[str, list[Job]]:
    cli, m = elm_data_cli(), str(c.manifest)
    tail = ["--batch-size", str(BATCH), "--format", "jsonl", "--tokenizer", str(c.tokenizer)]
    full = [*cli, "stream", m, "--full-pass", *tail]
    api = [
        sys.executable,
        str(PEER_SCRIPTS / "elm_stream_api.py"),
        "--manifest",
        m,
        "--batch-size",
        str(BATCH),
    ]
    raw = [sys.executable, str(PEER_SCRIPTS / "raw_sp.py"), "--shards", str(c.shards_json), "--tokenizer"]
    jobs = {
        "stream": [Job("stream", full, after=footprint(c.manifest))],
        "stream-2t": [Job("stream-2t", [*full, "--threads", "2"])],
        "stream-2w": [
            Job("stream-2w", [*full, "--workers", "2"] if workers_flag else [*api, "--workers", "2"])
        ],
        "take0": [Job("take0", [*cli, "stream", m, "--take", "0", *tail])],
        "take1": [Job("take1", [*cli, "stream", m, "--take", "1", *tail])],
        "raw-sp": [Job("raw-sp", [*raw, str(c.tokenizer)])],
    }
    for n in (1, 2):
        target = out / f"build-{n}"
        argv = [
            *cli,
            "build",
            "manifest",
            str(c.mixture),
            "--out",
            str(target),
            "--workers",
            str(n),
            "--tokenizer",
            str(c.tokenizer),
        ]
        jobs[f"build-{n}"] = [Job(f"build-{n}", argv, before=fresh(target), after=footprint(target))]
    return jobs


def peer_jobs(c: Corpus, out: Path, venvs: Path) -> dict[str, list[Job]]:
    data = ["--shards", str(c.shards_json)]
    jobs = {
        "hf": [
            Job(
                "hf",
                [
                    str(venv_python(venvs, "datasets")),
                    str(PEER_SCRIPTS / "hf_stream.py"),
                    *data,
                    "--tokenizer",
                    str(c.tokenizer),
                ],
                venv="datasets",
            )
        ]
    }
    for n in (1, 2):
        logs = out / f"datatrove-{n}"
        argv = [
            str(venv_python(venvs, "datatrove")),
            str(PEER_SCRIPTS / "datatrove_build.py"),
            *data,
            "--tokenizer-json",
            str(c.tokenizer_json),
            "--workers",
            str(n),
            "--logs",
            str(logs),
        ]
        jobs[f"datatrove-{n}"] = [Job(f"datatrove-{n}", argv, venv="datatrove", before=fresh(logs))]
    for peer, venv, script in (
        ("mosaic", "mosaicml-streaming", "mosaic_route.py"),
        ("litdata", "litdata", "litdata_route.py"),
    ):
        target, python = out / peer, str(venv_python(venvs, venv))
        convert = [
            python,
            str(PEER_SCRIPTS / script),
            "convert",
            *data,
            "--tokenizer",
            str(c.tokenizer),
            "--out",
            str(target),
        ]
        jobs[peer] = [
            Job(f"{peer}-convert", convert, venv=venv, before=fresh(target), after=footprint(target)),
            Job(
                f"{peer}-pass", [python, str(PEER_SCRIPTS / script), "pass", "--out", str(target)], venv=venv
            ),
        ]
    return jobs


def child_env(work: Path, tokenizer: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ELM_DATA_TOKENIZER": str(tokenizer),
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(work / "hf-home"),
            "TOKENIZERS_PARALLELISM": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# --- rounds and the report
# -----------------------------------------------------------------------------------


def run_rounds(units: dict[str, list[Job]], rounds: int, env: dict[str, str], cwd: Path) -> dict[str, list]:
    """Every unit once per round, the order alternating; ``samples[job] = [sample or None per round]``."""
    samples: dict[str, list[dict | None]] = {j.name: [] for jobs in units.values() for j in jobs}
    for r, order in enumerate(round_orders(list(units), rounds)):
        for unit in order:
            failed = False
            for job in units[unit]:
                if failed:  # a pass without its conversion
                    samples[job.name].append(None)
                    continue
                if job.before:
                    job.before()
                sample = measure(job.argv, env, cwd)
                if job.after and "error" not in sample:
                    job.after(sample)
                failed = "error" in sample
                samples[job.name].append(None if failed else sample)
                print(f"  round {r + 1} {job.name:16s} " + describe(sample), flush=True)
    return samples


def describe(s: dict[str, Any]) -> str:
    if "error" in s:
        return f"FAILED (exit {s['rc']}): {s['error'].splitlines()[-1] if s['error'] else ''}"
    extra = f", first batch {s['ttfb']:.2f} s" if s.get("ttfb") else ""
    extra += f", disk {s['disk'] / 2**20:.1f} MiB" if s.get("disk") is not None else ""
    tree = f" (tree {s['tree_rss']:.0f})" if s.get("tree_rss") else ""
    return (
        f"CPU {s['cpu']:6.2f} s  wall {s['wall']:6.2f} s  peak RSS {s['rss']:5.0f}{tree} MiB  "
        f"load {s['load']:.1f}{extra}"
    )


def report_jobs(samples: dict[str, list]) -> None:
    print("\nmedians over rounds (CPU = user+sys of the process tree; RSS MiB: largest process / tree sum):")
    for name, runs in samples.items():
        ok = [r for r in runs if r]
        if not ok:
            print(f"  {name:16s} no successful run")
            continue
        med = {f: median_of(ok, f) for f in ("cpu", "wall", "rss", "tree_rss", "load", "ttfb", "disk")}
        tokens = ok[0].get("result", {}).get("tokens")
        line = f"  {name:16s} CPU {med['cpu']:7.2f} s  wall {med['wall']:7.2f} s  RSS {med['rss']:5.0f}"
        line += f" / {med['tree_rss']:5.0f}" if med["tree_rss"] else ""
        line += (
            f"  load {med['load']:.1f} ({min(r['load'] for r in ok):.1f}-{max(r['load'] for r in ok):.1f})"
        )
        line += f"  first batch {med['ttfb']:.2f} s" if med["ttfb"] else ""
        line += f"  disk {med['disk'] / 2**20:.1f} MiB" if med["disk"] is not None else ""
        line += f"  tokens {tokens:,}" if isinstance(tokens, int) else ""
        print(line + f"  [{len(ok)}/{len(runs)} runs]")


def report_ratios(samples: dict[str, list], kept_tokens: int) -> dict[str, tuple[float | None, str]]:
    print("\nratios (within each round, median over rounds; < 1 = ours cheaper unless said):")
    found: dict[str, tuple[float | None, str]] = {}
    for name, num, den, field, goal in RATIOS:
        if num in samples and den in samples:
            value = paired_ratio(samples, num, den, field)
            found[name] = (value, goal_verdict(value, goal))
            print(f"  {name:58s} {fmt_ratio(value):>7s}  {goal_verdict(value, goal)}")
    if "stream" in samples and "take0" in samples and "raw-sp" in samples:
        found |= report_steady(samples, kept_tokens)
    if samples.get("take1"):
        take1 = median_of(samples["take1"], "cpu")
        found["stream --take 1 CPU-s"] = (take1, goal_verdict(take1, ("<=", 1.0)))
        print(f"  stream --take 1: {take1 or 0:.2f} CPU-s  {goal_verdict(take1, ('<=', 1.0))}")
    return found


def report_steady(samples: dict[str, list], kept_tokens: int, job: str = "stream") -> dict:
    """The steady-state goal: the within-round ratio (the verdict), the medians and each round's ratio."""
    stream, raw = steady_rates(samples, kept_tokens, job)
    value = steady_ratio(samples, kept_tokens, job)
    of_medians = stream / raw if stream and raw else None
    verdict = goal_verdict(value, (">=", 0.95))
    print(
        f"  steady state tokens per CPU-s (medians): {job} {stream or 0:,.0f}, raw SentencePiece "
        f"{raw or 0:,.0f} ({fmt_ratio(of_medians)}); within rounds: {fmt_ratio(value)}  {verdict}"
    )
    series = steady_series(samples, kept_tokens, job)
    print(
        "    per round: " + " ".join(f"{a / b:.3f}" if a and b else "-" for a, b in zip(*series, strict=True))
    )
    return {f"steady-state {job} / raw SentencePiece, tokens per CPU-second": (value, verdict)}


def report_pretokenized(samples: dict[str, list]) -> None:
    """Convert + pass of each pre-tokenized route next to ours (build + on-the-fly pass), CPU-s for E
    epochs."""
    routes = {"elm-data (build manifest -w1 + stream)": ("build-1", "stream")}
    routes |= {f"{p} (convert + pass)": (f"{p}-convert", f"{p}-pass") for p in ("mosaic", "litdata")}
    routes = {k: v for k, v in routes.items() if samples.get(v[0]) and samples.get(v[1])}
    if len(routes) < 2:
        return
    print("\npre-tokenized routes vs ours (medians; prep = convert or build; disk beyond the raw shards):")
    costs = {}
    for label, (prep, one) in routes.items():
        pc, pw = (median_of(samples[prep], f) for f in ("cpu", "wall"))
        ec, ew = (median_of(samples[one], f) for f in ("cpu", "wall"))
        disk = median_of(samples[prep] if "convert" in prep else samples[one], "disk")
        ours = "build" in prep and samples.get("take1")  # our first batch: `stream --take 1`, a whole process
        ttfb = median_of(samples["take1"], "wall") if ours else median_of(samples[one], "ttfb")
        costs[label] = (pc, ec)
        e1, e2, e4 = epoch_costs(pc, ec)
        print(
            f"  {label:42s} prep {pc:6.2f} CPU-s / {pw:6.2f} s wall, pass {ec:6.2f} CPU-s / {ew:6.2f} s "
            "wall, "
            f"first batch {ttfb or 0:.2f} s, disk {(disk or 0) / 2**20:.1f} MiB; CPU-s for 1/2/4 epochs "
            f"{e1:.1f}/{e2:.1f}/{e4:.1f}"
        )
    ours = costs.pop(next(iter(routes)))
    for label, theirs in costs.items():
        be = break_even(ours, theirs)
        when = (
            "never"
            if be is None
            else "from the first epoch on"
            if be <= 1
            else f"from epoch {math.ceil(be)} on"
        )
        print(f"  {label}: less CPU in total than ours {when} (prep + E passes = ours at E = {be or 0:.2f})")


def markdown(samples: dict[str, list], ratios: dict[str, tuple[float | None, str]]) -> str:
    """The job medians and the ratios with their goals as Markdown tables (for benchmarks/RESULTS.md)."""
    rows = [
        "| job | CPU s | wall s | peak RSS MiB (largest / tree) | load | first batch s | disk MiB | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in samples.items():
        ok = [r for r in runs if r]
        if not ok:
            rows.append(f"| {name} | failed | | | | | | 0/{len(runs)} |")
            continue
        med = {f: median_of(ok, f) for f in ("cpu", "wall", "rss", "tree_rss", "load", "ttfb", "disk")}
        tree = f" / {med['tree_rss']:.0f}" if med["tree_rss"] else ""
        rows.append(
            f"| {name} | {med['cpu']:.2f} | {med['wall']:.1f} | {med['rss']:.0f}{tree} | {med['load']:.1f} | "
            f"{'' if med['ttfb'] is None else format(med['ttfb'], '.1f')} | "
            f"{'' if med['disk'] is None else format(med['disk'] / 2**20, '.1f')} | {len(ok)}/{len(runs)} |"
        )
    rows += ["", "| ratio (within a round, median over rounds) | value | goal (issue 25) |", "|---|---:|---|"]
    rows += [
        f"| {name} | {format(v or 0, '.2f') + ' s' if name.endswith('CPU-s') else fmt_ratio(v)} | {verdict} |"
        for name, (v, verdict) in ratios.items()
    ]
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=None, help="sample corpus scale (60; --quick: 6)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--source", default="redpajama", help="which source of the sample corpus (its shards)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds (3; --quick: 2)")
    parser.add_argument("--groups", default="stream,build,pretok", help=f"comma list of {', '.join(GROUPS)}")
    parser.add_argument("--jobs", default=None, help="comma list of job units instead of --groups")
    parser.add_argument("--quick", action="store_true", help="scale 6, 2 rounds: a cheap development run")
    parser.add_argument(
        "--dry-run", action="store_true", help="print pins and command lines; install/run nothing"
    )
    parser.add_argument("--tokenizer", type=Path, default=os.environ.get("ELM_DATA_TOKENIZER"))
    parser.add_argument("--work", type=Path, default=CACHE / "work", help="corpora and outputs")
    parser.add_argument(
        "--venvs", type=Path, default=CACHE / "venvs", help="one virtual environment per peer"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="write every sample here")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="report a --json-out file again; run nothing"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = parser.parse_args(argv)
    args.scale = args.scale if args.scale is not None else (6.0 if args.quick else 60.0)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    unknown = set(args.groups.split(",")) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}")
    names = args.jobs.split(",") if args.jobs else [j for g in args.groups.split(",") for j in GROUPS[g]]
    args.units = list(dict.fromkeys(names))  # first appearance order, no repeats
    if args.tokenizer is None and not (args.dry_run or args.from_json):
        parser.error("no tokenizer: pass --tokenizer or set ELM_DATA_TOKENIZER")
    return args


def dry_run(args) -> None:
    print(
        f"plan: {args.repeats} rounds of {', '.join(args.units)}; shards: the {args.source} part of "
        f"`elm-data sample --scale {args.scale:g} --seed {args.seed}` in {args.work}"
    )
    for name in sorted(
        {j.venv for jobs in select(args, dummy_corpus(args)).values() for j in jobs if j.venv}
    ):
        print(f"  venv {args.venvs / name}: {' '.join(PINS[name])}")
    for unit, jobs in select(args, dummy_corpus(args)).items():
        for job in jobs:
            print(f"  {unit:12s} {job.name:16s} {' '.join(job.argv)}")


def dummy_corpus(args) -> Corpus:
    sample = args.work / f"sample-{args.scale:g}-{args.seed}"
    tok = Path(args.tokenizer or "tokenizer.model")
    return Corpus(
        sample / f"{args.source}.yaml",
        sample / f"{args.source}-shards.json",
        sample / f"{args.source}-manifest",
        tok,
        args.work / "tokenizer.json",
    )


def select(args, corpus: Corpus, workers_flag: bool = True) -> dict[str, list[Job]]:
    out = args.work / "out"
    every = ours_jobs(corpus, out, workers_flag) | peer_jobs(corpus, out, args.venvs)
    unknown = [u for u in args.units if u not in every]
    if unknown:
        raise SystemExit(f"unknown job(s) {', '.join(unknown)}; known: {', '.join(every)}")
    return {u: every[u] for u in args.units}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved["samples"], saved["kept_tokens"], args.markdown)
        return 0
    if args.dry_run:
        dry_run(args)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    args.tokenizer = args.tokenizer.resolve()
    corpus = prepare_corpus(args, args.work)
    workers_flag = cli_has_workers()
    units = select(args, corpus, workers_flag)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"{sys.version.split()[0]}"
    )
    print(
        f"shards: {corpus.shards} ({args.source} of sample --scale {args.scale:g} --seed {args.seed}), "
        f"{corpus.bytes / 1e6:.1f} MB, {corpus.kept_tokens:,} kept tokens; tokenizer {args.tokenizer}"
    )
    two = (
        "elm-data stream --full-pass --workers 2" if workers_flag else "the Python API, 2 DataLoader workers"
    )
    print(f"stream-2w: {two}{'' if workers_flag else ' (this CLI has no stream --workers)'}")
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    print(
        f"  ours (tree {commit.stdout.strip() or '?'}): "
        f"{json.dumps(versions(sys.executable, ('elm-data', *REPORTED)))}"
    )
    for venv in sorted({j.venv for jobs in units.values() for j in jobs if j.venv}):
        python = ensure_venv(args.venvs, venv)
        own = tuple(pin.split("==")[0] for pin in PINS[venv])
        print(f"  {venv}: {json.dumps(versions(python, tuple(dict.fromkeys((*own, *REPORTED)))))}")
    become_subreaper()
    samples = run_rounds(units, args.repeats, child_env(args.work, args.tokenizer), args.work)
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"kept_tokens": corpus.kept_tokens, "samples": samples}, default=str)
        )
    report(samples, corpus.kept_tokens, args.markdown)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def report(samples: dict[str, list], kept_tokens: int, as_markdown: bool) -> None:
    report_jobs(samples)
    ratios = report_ratios(samples, kept_tokens)
    report_pretokenized(samples)
    if as_markdown:
        print("\n" + markdown(samples, ratios))


if __name__ == "__main__":
    sys.exit(main())
