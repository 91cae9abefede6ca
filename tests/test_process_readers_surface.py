"""Every behaviour of the DataLoader path that callers rely on, held for the torch-free worker processes of
``StreamLoader(tensors=False, num_workers=N)`` (``elm-data stream --workers N``): ranks x workers layouts,
resume mid-pass from a state saved with workers, an endless (weighted) stream stopped early, remote reads and
the reader-memory cap in each worker, SentencePiece threads and a stream pickled to spawned workers, errors
that cannot travel, workers that die with their parent, and Ctrl-C/SIGTERM (no traceback, no orphan).

Oracle: the same stream read in one process (``num_workers=0``), which runs no worker code at all.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from itertools import islice

import numpy as np
import pytest
from test_outputs_procs import _gone_within, _kill_survivors

from elm_data.pipeline.stream import StreamLoader, TokenStream, merge_states
from elm_data.pipeline.stream import dataset as stream_dataset
from elm_data.pipeline.stream.process_readers import WorkerFailed
from elm_data.sources import blocks, remote

P = 4


def _stream(manifest, tokenizer, rank=0, world=1, **kw) -> TokenStream:
    kw = {"batch_size": 2, "seq_len": 64, "weights": "natural", "partitions": P} | kw
    return TokenStream(manifest, tokenizer=tokenizer, rank=rank, world_size=world, **kw)


def _seen(batches) -> list[tuple]:
    return [
        (b["batch_index"], np.asarray(b["input_ids"]).tobytes(), str(b.get("spans")), b["tokens_by_source"])
        for b in batches
    ]


def _no_workers_left() -> bool:
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return multiprocessing.active_children() == []


@pytest.fixture(scope="module")
def endless_reference(sample_manifest, tokenizer):
    """The first 12 batches of the manifest's weighted (endless) stream read in one process, and the tokens
    it consumed."""
    kw = {"weights": None, "epochs": None}
    loader = StreamLoader(_stream(sample_manifest, tokenizer, **kw), tensors=False)
    return list(islice(loader, 12)), loader.consumed.to_dict()


@pytest.mark.slow  # end to end, worker processes: ~1.7 s
def test_two_ranks_of_two_workers_give_the_one_process_batches(sample_manifest, tokenizer):
    alone = _seen(StreamLoader(_stream(sample_manifest, tokenizer), tensors=False))
    merged = []
    for rank in range(2):
        loader = StreamLoader(_stream(sample_manifest, tokenizer, rank, 2), num_workers=2, tensors=False)
        got = _seen(loader)
        assert [b[0] for b in got] == list(range(rank, len(alone), 2))
        merged += got
    assert sorted(merged) == alone and len(alone) > 8


@pytest.mark.slow  # end to end, worker processes and signals: 2-3 s
def test_an_endless_stream_stopped_early_with_workers_resumes_anywhere(
    sample_manifest, tokenizer, endless_reference
):
    """Weighted mode never ends: 3 batches from each of 2 ranks x 2 workers (the loaders dropped, never
    closed), their merged state resumed by one rank with 4 workers for 4 batches, then the rest in one
    process: the one-process batches and counts, and no worker left behind."""
    reference, consumed = endless_reference
    kw = {"weights": None, "epochs": None}
    head, states = [], []
    for rank in range(2):
        loader = StreamLoader(
            _stream(sample_manifest, tokenizer, rank, 2, **kw), num_workers=2, tensors=False
        )
        head += list(islice(loader, 3))  # global batches 0, 2, 4 and 1, 3, 5
        states.append(loader.state_dict())
        del loader
    assert _no_workers_left()
    resumed = StreamLoader(_stream(sample_manifest, tokenizer, **kw), num_workers=4, tensors=False)
    resumed.load_state_dict(merge_states(states))
    middle = list(islice(resumed, 4))
    rest = StreamLoader(_stream(sample_manifest, tokenizer, **kw), tensors=False)
    rest.load_state_dict(resumed.state_dict())
    got = sorted(head, key=lambda b: b["batch_index"]) + middle + list(islice(rest, 2))
    assert _seen(got) == _seen(reference)
    assert rest.consumed.to_dict() == consumed
    del resumed
    assert _no_workers_left()


def _stamping(stamp):
    """``TokenStream.batches`` that calls ``stamp(batch)`` on each batch (in whichever process reads it)."""
    real = stream_dataset.TokenStream.batches

    def batches(self, *args, **kwargs):
        for k, batch in enumerate(real(self, *args, **kwargs)):
            stamp(k, batch)
            yield batch

    return batches


def test_remote_reads_in_workers_are_counted_by_the_loader(sample_manifest, tokenizer, monkeypatch):
    """Each worker counts one retry and 10 bytes fetched before its second batch: the loader's stats sum what
    every worker counted, as for one process."""

    def count(k, batch):
        if k == 0:
            remote.STATS.count(retry="http 503", fetched=10)

    monkeypatch.setattr(stream_dataset.TokenStream, "batches", _stamping(count))
    counted = {}
    for workers in (0, 2):
        loader = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=workers, tensors=False)
        for _ in loader:
            pass
        counted[workers] = loader.stats()["remote"]
    assert counted[0]["retries"] == 1 and counted[0]["bytes_fetched"] == 10
    assert counted[2]["retries"] == 2 and counted[2]["bytes_fetched"] == 20
    assert counted[2]["retries_by_reason"] == {"http 503": 2}


def test_each_worker_holds_the_streams_reader_memory_cap(sample_manifest, tokenizer, monkeypatch):
    def stamp(k, batch):
        batch["held_limit"], batch["pid"] = blocks.HELD.limit, os.getpid()

    monkeypatch.setattr(stream_dataset.TokenStream, "batches", _stamping(stamp))
    cap = 3 << 20
    loader = StreamLoader(
        _stream(sample_manifest, tokenizer, reader_memory=cap), num_workers=2, tensors=False
    )
    stamped = [(b["held_limit"], b["pid"]) for b in loader]
    assert {limit for limit, _ in stamped} == {cap}
    assert len({pid for _, pid in stamped}) == 2 and os.getpid() not in {pid for _, pid in stamped}


@pytest.mark.slow  # spawned workers import the package afresh
def test_a_stream_with_encode_threads_pickles_to_spawned_workers(sample_manifest, tokenizer):
    alone = _seen(StreamLoader(_stream(sample_manifest, tokenizer), tensors=False))
    stream = _stream(sample_manifest, tokenizer, encode_threads=2)
    spawned = StreamLoader(stream, num_workers=2, tensors=False, multiprocessing_context="spawn")
    assert _seen(spawned) == alone


class _TwoArgumentError(Exception):
    """Pickles (its args are its message) but does not unpickle (``__init__`` wants two arguments)."""

    def __init__(self, what: str, where: str):
        super().__init__(f"{what} at {where}")


def test_an_error_that_cannot_travel_is_a_worker_failed_naming_it(sample_manifest, tokenizer, monkeypatch):
    def fail(k, batch):
        if k == 1:
            raise _TwoArgumentError("odd failure", "batch 1")

    monkeypatch.setattr(stream_dataset.TokenStream, "batches", _stamping(fail))
    loader = StreamLoader(_stream(sample_manifest, tokenizer), num_workers=2, tensors=False)
    with pytest.raises(WorkerFailed, match="_TwoArgumentError: odd failure at batch 1"):
        list(loader)
    assert _no_workers_left()


_NO_INIT = """
import time
from elm_data.core.procs import stop_on_sigterm
from elm_data.pipeline.stream.process_readers import process_readers

class Forever:
    def __iter__(self):
        while True:
            yield b"x" * (1 << 20)  # more than a pipe holds: a worker waits in put()

if __name__ == "__main__":
    stop_on_sigterm()  # as the CLI: SIGTERM raises in this process, and in a forked child that keeps it
    items = process_readers(Forever(), 2, init=None)
    next(items)
    started = time.monotonic()
    items.close()
    print(round(time.monotonic() - started, 1), flush=True)
"""


def test_stopping_workers_is_prompt_whatever_their_init():
    """Without ``dataloader_worker_init`` (a caller's own ``worker_init_fn``, or None) a forked worker kept
    the CLI's SIGTERM handler: terminate() raised in it, so stopping took 10 s a worker and exit hung."""
    done = subprocess.run([sys.executable, "-c", _NO_INIT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 5 and "Traceback" not in done.stderr


_CTRL_C = """
import os, signal, time
from elm_data.core.procs import dataloader_worker_init
from elm_data.pipeline.stream.process_readers import process_readers

class One:
    def __iter__(self):
        yield b"x" * (4 << 20)  # more than a pipe holds: the worker waits for it to be read as it exits

if __name__ == "__main__":
    items = process_readers(One(), 2, init=dataloader_worker_init)
    next(items)
    time.sleep(1.5)  # worker 1 has put its item and its end and waits (join_thread) for them to be read
    try:
        os.killpg(0, signal.SIGINT)  # Ctrl-C: the whole foreground group
        time.sleep(5)
    except KeyboardInterrupt:
        items.close()
        print("interrupted", flush=True)
"""


@pytest.mark.slow  # end to end, worker processes and signals: 2-3 s
def test_ctrl_c_prints_no_traceback_from_a_worker():
    """Ctrl-C reaches every process of the group: a worker waiting for its last items to be read raised
    KeyboardInterrupt out of ``join_thread`` and printed its traceback beside the caller's one line."""
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C], capture_output=True, text=True, timeout=60, start_new_session=True
    )
    assert done.stdout.strip() == "interrupted"
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


_CTRL_C_AT_BOOT = """
import os, signal, threading, time
from elm_data.core.procs import dataloader_worker_init
from elm_data.pipeline.stream.process_readers import process_readers

class SlowToArrive:
    def __iter__(self):
        yield os.getpid()

    def __setstate__(self, state):  # a spawned worker unpickles its readers before it runs them
        time.sleep(1.5)

if __name__ == "__main__":
    items = process_readers(SlowToArrive(), 2, init=dataloader_worker_init, context="spawn")
    got = []
    threading.Thread(target=lambda: got.append(next(items)), daemon=True).start()  # starts the workers
    try:
        time.sleep(0.5)  # the workers boot
        os.killpg(0, signal.SIGINT)  # Ctrl-C: the whole foreground group
        time.sleep(5)
    except KeyboardInterrupt:
        time.sleep(2.5)  # the caller has not stopped its workers yet
        print("interrupted", got, flush=True)
"""


@pytest.mark.slow  # spawned workers, and seconds of waiting
def test_ctrl_c_while_a_spawned_worker_boots_reaches_no_worker(tmp_path):
    """A worker ignores Ctrl-C from its start: the signal is blocked from fork/exec until its handlers are
    set (a spawned worker booting was killed by it, and the caller got a WorkerFailed)."""
    script = tmp_path / "ctrl_c_at_boot.py"  # a file: a spawned worker imports it to unpickle its readers
    script.write_text(_CTRL_C_AT_BOOT)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    said, got = done.stdout.split(maxsplit=1)
    assert said == "interrupted" and got.strip("[]\n").isdigit(), done.stdout
    assert "Traceback" not in done.stderr, done.stderr


_SLOW_STREAM_CLI = """
import sys, time
from elm_data.pipeline.stream import dataset

real = dataset.TokenStream.batches

def slow(self, *args, **kwargs):  # each worker reads a batch per 50 ms: the pass outlasts the signal
    for batch in real(self, *args, **kwargs):
        time.sleep(0.05)
        yield batch

dataset.TokenStream.batches = slow
from elm_data.cli import run

sys.exit(run(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in listed.stdout.split()]


@pytest.mark.slow  # a whole `elm-data stream` process, interrupted mid-pass
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_stream_with_workers_is_one_line_and_leaves_no_worker(
    sample_manifest, tokenizer_path, sig
):
    """Ctrl-C (to the whole foreground group) or SIGTERM (to the command) of ``elm-data stream --workers 2``
    mid-pass: the command's one line, its exit code, and both workers gone."""
    args = [str(sample_manifest), "--full-pass", "--workers", "2", "--seq-len", "64", "--batch-size", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_STREAM_CLI, "stream", *args, "--tokenizer", tokenizer_path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            workers = _children(proc.pid)
        time.sleep(1.0)  # the workers read
        assert proc.poll() is None  # still mid-pass
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
        _kill_survivors(workers)
    said = [
        line for line in err.replace("\r", "\n").splitlines() if line.strip() and "natural pass" not in line
    ]
    name = signal.Signals(sig).name
    assert said == [f"interrupted ({name}): stopped; completed work is kept"], err[-3000:]
    assert proc.returncode == (130 if sig == signal.SIGINT else 143)
    assert len(workers) == 2 and _gone_within(set(workers), 15) == set()
