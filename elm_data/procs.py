"""Process hygiene: workers die with their parent, SIGTERM stops the main process like Ctrl-C.

- :func:`die_with_parent` — call first thing in a child process (a process-pool initializer, a DataLoader
  ``worker_init_fn``): on Linux the kernel kills the child when its parent dies (``PR_SET_PDEATHSIG``), and on
  every platform a daemon thread exits the child once its parent is gone (the parent pid changes). So a
  SIGKILLed build or trainer leaves no worker counting shards or reading data.
- :func:`dataloader_worker_init` — the ``worker_init_fn`` for torch DataLoaders (the stream's workers).
- :func:`stop_on_sigterm` — the main process turns SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``),
  so ``finally`` blocks run and the command line reports it in one line, as for Ctrl-C.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM received by the main process; handled like Ctrl-C (cleanup runs, no traceback)."""


def _set_pdeathsig(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent exits; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    os._exit(1)  # the parent is gone: stop at once, committing nothing more


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this (child) process end when its parent does. Idempotent; safe to call in any child.

    ``parent_pid``: the parent the caller expects; if it is already gone the child exits now (the race
    between the fork and this call). Default: the current parent.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="die-with-parent", daemon=True).start()


def dataloader_worker_init(worker_id: int | None = None) -> None:
    """``worker_init_fn`` for DataLoader workers: die with the parent; SIGTERM/SIGINT back to the defaults.

    A forked worker inherits the main process's Python SIGTERM handler; it must not raise there.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


def stop_on_sigterm() -> None:
    """In the main thread of the main process: SIGTERM raises :class:`Terminated` (cleanup then exit)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
