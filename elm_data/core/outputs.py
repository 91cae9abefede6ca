"""Outputs that are never half there, never clobbered, never world-readable against the user's umask.

- :func:`publish_modes` — a directory made with ``tempfile.mkdtemp`` (0700, files 0600) gets the modes any
  other tool would give it: ``0777 & ~umask`` for directories, ``0666 & ~umask`` for files.
- :func:`replace_dir` — put a complete directory at ``target``, replacing what is there with no moment
  where ``target`` is missing: an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), else two renames
  whose interruption :func:`recover_dir` undoes on the next start.
- :func:`recover_dir` — after a killed writer: the old ``target`` back from ``.NAME.old`` if ``target`` is
  gone, stale ``.NAME.tmp-*`` temp directories and files removed.
- :func:`output_lock` — one writer per output: an exclusive ``flock`` on ``.NAME.lock`` beside it; a second
  writer is refused with who holds it (pid, host, start time, command).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from elm_data.core.errors import OutputLocked

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def current_umask() -> int:
    """The process umask (read from /proc on Linux; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes the umask allows (dirs 0777, files 0666, masked)."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(folder) / name, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(folder) / name, 0o666 & ~mask)


def old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        rename = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Move the complete directory ``new`` to ``target``; an existing ``target`` is replaced.

    ``target`` always holds either the old or the new directory: exchanged atomically where the system
    can, else renamed aside to ``.NAME.old`` first (a kill in between is undone by :func:`recover_dir`).
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the old directory
        return
    keep = old_path(target)
    shutil.rmtree(keep, ignore_errors=True)
    os.replace(target, keep)
    os.replace(new, target)
    shutil.rmtree(keep, ignore_errors=True)


def recover_dir(target: str | Path) -> list[Path]:
    """Undo what a killed writer of ``target`` left; returns the paths removed or restored.

    Call only while holding :func:`output_lock` for ``target`` (another writer's temp files are live).
    """
    target = Path(target)
    keep, touched = old_path(target), []
    if keep.exists() and not target.exists():
        os.replace(keep, target)  # killed between the two renames: the old output comes back
        touched.append(target)
    elif keep.exists():
        shutil.rmtree(keep, ignore_errors=True)
        touched.append(keep)
    for stale in target.parent.glob(f".{target.name}.tmp-*") if target.parent.is_dir() else ():
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        touched.append(stale)
    return touched


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _holder(path: Path) -> str:
    try:
        who = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        who = {}
    if not who:
        return "another process"
    return f"pid {who.get('pid')} on {who.get('host')} since {who.get('started')} ({who.get('command')})"


@contextmanager
def output_lock(target: str | Path, what: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (a local path) for the block; refuse at once if another has it.

    The lock file ``.NAME.lock`` beside ``target`` says who holds it; it is removed on release. A lock
    taken on a file that a releasing holder just removed is retried, so two writers never both hold it.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLocked(
                f"{target}: another {what} is writing it: {_holder(path)}; wait for it or stop it"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by its previous holder: lock the new one
    try:
        who = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:200],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(who).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
