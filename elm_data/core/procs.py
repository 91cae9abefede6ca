"""Process hygiene: workers die with their parent, SIGTERM stops the main process like Ctrl-C.

- :func:`die_with_parent` — call first thing in a child process (a process-pool initializer, a DataLoader
  ``worker_init_fn``): a daemon thread exits the child as soon as the process that started it has exited
  (a pidfd, else polling), and for a direct child the kernel kills it too (Linux ``PR_SET_PDEATHSIG``). So a
  SIGKILLed build or trainer leaves no worker counting shards or reading data.
- :func:`dataloader_worker_init` — the ``worker_init_fn`` for torch DataLoaders (the stream's workers).
- :func:`stop_on_sigterm` — the main process turns SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``),
  so ``finally`` blocks run and the command line reports it in one line, as for Ctrl-C.
- :func:`return_freed_memory` — a stream reader process gives the memory it frees back to the OS.
- :func:`blas_without_thread_pool` — a process that does no linear algebra starts numpy's OpenBLAS without
  its pool of threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 256 << 10  # allocations this large or larger: their own mapping, unmapped when freed
TRIM_THRESHOLD = 32 << 20  # the heap gives back its free top beyond this


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


def _parent_pid() -> int:
    """The process that started this one: the main process even for forkserver/spawn children (whose OS
    parent is the fork server, which outlives the main process while its children hold its pipe)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie not yet reaped)."""
    if Path("/proc/self/stat").exists():
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True
        except (OSError, IndexError):
            pass
    try:  # no /proc (macOS): ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _watch(pid: int) -> None:
    """Block until process ``pid`` exits (pidfd where the kernel has it, else polling), then exit at once."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll(WATCH_INTERVAL_S * 1000) and not _exited(pid):
            pass
    else:
        while not _exited(pid):
            time.sleep(WATCH_INTERVAL_S)
    os._exit(1)  # the parent is gone: stop at once, committing nothing more


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this (child) process end when its parent does. Call once, first thing in the child.

    ``parent_pid``: the process to outlive not; default the one that started this child (see
    :func:`_parent_pid`). If it is already gone the child exits now (the race between start and this call).
    """
    parent = _parent_pid() if parent_pid is None else parent_pid
    if os.getppid() == parent:
        _set_pdeathsig(signal.SIGKILL)  # the kernel's guarantee, for a direct child
    if _exited(parent):
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


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


def blas_without_thread_pool() -> bool:
    """Start numpy's OpenBLAS with one thread in this process and the processes it starts: for commands
    that do no linear algebra (the stream, the build, verify). At import, OpenBLAS starts a thread per core
    that spins before it sleeps: ~0.1 CPU-s per process for nothing (issue 25). Only effective before numpy
    is first imported (returns whether it was in time); a value the user set is kept."""
    if "numpy" in sys.modules:
        return False
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return True


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform has one, else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def return_freed_memory() -> bool:
    """Make this process give back to the OS the large buffers it frees (a stream reader frees a verified
    block and a decoded row group over and over), without paying a page fault for every small one: glibc
    serves each allocation of ``MMAP_THRESHOLD`` or more with its own mapping, unmapped when freed (else its
    threshold rises to the largest block freed, and freed 4 MiB blocks stay in the heap), and trims the heap's
    free top beyond ``TRIM_THRESHOLD`` (fixing the first turns off glibc's own choice of both: at its 128 KiB
    default trim the heap was shrunk and grown again for every batch, ~250 k page faults and ~0.6 CPU-s of
    system time per 10 M-token pass); Arrow allocates from the system allocator (its mimalloc pool keeps what
    it frees: ~80 MiB in a one-process pass over the scale-300 sample). Returns whether pyarrow's pool is the
    system one now. Only the process's allocator settings change: no byte anything reads or yields."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None)
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    try:
        import pyarrow as pa
    except ImportError:
        return False
    pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name == "system"
