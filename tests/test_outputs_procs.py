"""Workers die with their parent: a SIGKILLed build or trainer leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return set()
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


def _kill_survivors(pids) -> None:
    """A failed test must not leave its own workers running (only those still alive: no pid reuse)."""
    for pid in [p for p in pids if _alive(p)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start(script: str, *args: str) -> tuple[subprocess.Popen, list[int]]:
    """Run ``script``; it prints the worker pids on its first line once they work."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
    finally:
        watchdog.cancel()
    return proc, [int(p) for p in line.split()]


_POOL = """
import os, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
from elm_data.core.procs import die_with_parent

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver"), initializer=die_with_parent)
    futures = [pool.submit(time.sleep, 600) for _ in range(2)]
    time.sleep(1.0)
    print(*[p.pid for p in pool._processes.values()], flush=True)
    time.sleep(600)
"""

_LOADER = """
import os, time
import torch
from torch.utils.data import DataLoader, IterableDataset
from elm_data.core.procs import dataloader_worker_init

class Forever(IterableDataset):
    def __iter__(self):
        yield torch.tensor(os.getpid())
        time.sleep(600)

if __name__ == "__main__":
    loader = DataLoader(Forever(), batch_size=None, num_workers=1, worker_init_fn=dataloader_worker_init)
    batches = iter(loader)  # kept: a dropped iterator shuts its workers down
    print(int(next(batches)), flush=True)
    time.sleep(600)
"""


_STREAM_WORKERS = """  # pipeline/stream/process_readers.py's workers
import os, time
from elm_data.core.procs import dataloader_worker_init
from elm_data.pipeline.stream.process_readers import process_readers

class Forever:
    def __iter__(self):
        yield os.getpid()
        time.sleep(600)

if __name__ == "__main__":
    items = process_readers(Forever(), 2, init=dataloader_worker_init)
    print(next(items), next(items), flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # starts a parent and its worker processes per case
@pytest.mark.parametrize(
    "script", [_POOL, _LOADER, _STREAM_WORKERS], ids=["process-pool", "dataloader", "stream-workers"]
)
def test_workers_die_when_their_parent_is_sigkilled(script):
    proc, workers = _start(script)
    try:
        assert workers and all(_alive(p) for p in workers)
        proc.kill()
        proc.wait(timeout=30)
        assert _gone_within(set(workers), 15) == set()
    finally:
        proc.kill()
        _kill_survivors(workers)


_BUILD = """
import os, sys, time
from elm_data.manifests.build import build_manifest

def stall(outcome):
    if outcome.shard == 0:
        print(os.getpid(), flush=True)
        time.sleep(600)

build_manifest(sys.argv[1], sys.argv[2], tokenizer=sys.argv[3], workers=2, on_shard_done=stall)
"""


@pytest.mark.slow
def test_a_sigkilled_build_leaves_no_worker(sample_dir, tokenizer_path, tmp_path):
    proc, (main,) = _start(_BUILD, str(sample_dir / "mixture.yaml"), str(tmp_path / "m"), tokenizer_path)
    helpers = _descendants(main)  # the forkserver and the two workers
    try:
        assert len(helpers) >= 2
        proc.kill()
        proc.wait(timeout=30)
        assert _gone_within(helpers, 20) == set()
    finally:
        proc.kill()
        _kill_survivors(helpers)


def test_exited_tells_a_live_process_from_a_gone_one():
    from elm_data.core.procs import _exited

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert not _exited(os.getpid()) and _exited(int(done.stdout))
