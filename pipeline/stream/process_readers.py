"""Worker processes for a stream read as numpy arrays, without torch.

``StreamLoader(tensors=False, num_workers=N)`` (what ``elm-data stream --workers N`` runs) needs no tensors,
so it need not pay torch's import (~1.5 CPU-s and ~190 MiB in the main process, before the first worker
starts) for a ``DataLoader``. It takes the DataLoader's iterable-style contract instead: worker ``w`` of ``W``
iterates its own copy of the readers (which ask :func:`current_worker` which partitions are theirs), each
worker at most ``prefetch`` items ahead, and the items are taken from the workers in turn (round robin,
skipping a finished worker): the same items in the same order as the DataLoader gives.

A worker's exception is raised again in the caller as itself (so a user's mistake stays one line), or as a
``WorkerFailed`` naming it when it cannot travel; a worker that dies without a word is a ``WorkerFailed`` too,
never a hang. Stopping early (or failing) stops every worker: SIGTERM ends one whatever handler it inherited
or ``init`` set; Ctrl-C is ignored in the workers from their start (the caller is interrupted and stops
them, as torch's workers leave it to theirs).
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

POLL_S = 0.2  # how often a caller waiting on a worker checks that it is alive
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # blocked from a worker's start until it has its handlers


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker this process is (the fields of torch's ``get_worker_info()`` the readers use)."""

    id: int
    num_workers: int


class WorkerFailed(RuntimeError):
    """A stream worker process died, or raised what cannot be sent back."""


_CURRENT: WorkerInfo | None = None


def current_worker() -> WorkerInfo | None:
    """This process's :class:`WorkerInfo` in a worker of :func:`process_readers`, else None."""
    return _CURRENT


def _work(readers: Iterable[Any], info: WorkerInfo, out: Any, init: Callable[[int], None] | None) -> None:
    global _CURRENT
    _CURRENT = info
    # Ctrl-C is the caller's to handle (it stops its workers; torch's workers swallow it too): here it would
    # print a traceback from a worker waiting for its last items to be read. terminate() must end a worker
    # whatever SIGTERM handler it inherited (the CLI's raises, and ``init`` may be anyone's).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # a SIGTERM sent meanwhile lands now
    try:
        if init is not None:
            init(info.id)
        for item in readers:
            out.put(("item", item))
        out.put(("done", None))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the caller
        out.put(("error", _sendable(error, info.id)))
    finally:
        out.close()
        out.join_thread()  # everything put is flushed before the process exits


def _sendable(error: BaseException, worker: int) -> bytes:
    """``error`` pickled, if the caller can unpickle it too (an exception whose ``__init__`` wants other
    arguments than its ``args`` pickles but does not unpickle), else a :class:`WorkerFailed` with its
    traceback."""
    try:
        payload = pickle.dumps(error)
        pickle.loads(payload)
        return payload
    except Exception:  # noqa: BLE001
        return pickle.dumps(WorkerFailed(f"worker {worker}: {''.join(traceback.format_exception(error))}"))


def process_readers(
    readers: Iterable[Any],
    num_workers: int,
    prefetch: int = 2,
    init: Callable[[int], None] | None = None,
    context: str | None = None,
) -> Iterator[Any]:
    """The items of ``num_workers`` worker processes each iterating ``readers``, in turn (see the module)."""
    ctx = multiprocessing.get_context(context)
    outs = [ctx.Queue(maxsize=prefetch) for _ in range(num_workers)]
    workers = [
        ctx.Process(target=_work, args=(readers, WorkerInfo(w, num_workers), outs[w], init), daemon=True)
        for w in range(num_workers)
    ]
    try:
        _start(workers)
        live = list(range(num_workers))
        while live:
            for w in list(live):
                kind, payload = _next_message(outs[w], workers[w], w)
                if kind == "item":
                    yield payload
                elif kind == "done":
                    live.remove(w)
                else:
                    raise pickle.loads(payload)
    finally:
        _stop(workers, outs)


def _next_message(out: Any, worker: Any, w: int) -> tuple[str, Any]:
    while True:
        try:
            return out.get(timeout=POLL_S)
        except queue.Empty:
            if not worker.is_alive():
                try:  # it may have said its last word as it exited
                    return out.get(timeout=POLL_S)
                except queue.Empty:
                    raise WorkerFailed(
                        f"stream worker {w} exited (code {worker.exitcode}) without finishing its batches"
                    ) from None


def _start(workers: list[Any]) -> None:
    """Start the workers with SIGINT and SIGTERM blocked in this thread: a forked child inherits the mask and
    a spawned one keeps it through exec, so neither signal reaches a worker before :func:`_work` has set its
    handlers (a Ctrl-C while a spawned worker boots printed its traceback); here they are delivered as soon
    as the mask is restored."""
    masking = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if masking else None
    try:
        for worker in workers:
            worker.start()
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop(workers: list[Any], outs: list[Any]) -> None:
    workers = [worker for worker in workers if worker.pid is not None]  # those started
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():  # stuck where SIGTERM cannot reach it
            worker.kill()
            worker.join()
    for out in outs:
        out.cancel_join_thread()
        out.close()
