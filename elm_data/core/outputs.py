"""Outputs that are never half there, never clobbered, never world-readable against the user's umask.

- :func:`publish_modes` — a directory made with ``tempfile.mkdtemp`` (0700, files 0600) gets the modes any
  other tool would give it: ``0777 & ~umask`` for directories, ``0666 & ~umask`` for files.
- :func:`replace_dir` — put a complete directory at ``target``, replacing what is there with no moment
  where ``target`` is missing: an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), else two renames
  whose interruption :func:`recover_dir` undoes on the next start.
- :func:`staged_dir` — fill a fresh temp directory beside ``target``; on success it gets the umask's modes
  and replaces ``target`` (:func:`replace_dir`), on failure it is removed.
- :func:`atomic_path`, :func:`atomic_file`, :func:`write_atomic` — one file, the same way: written under a
  temp name beside it, fsynced, given the umask's mode, renamed over it; removed on failure.
- :func:`recover_dir` — after a killed writer: the old ``target`` back from ``.NAME.old`` if ``target`` is
  gone, stale ``.NAME.tmp-*`` temp directories and files removed.
- :func:`output_lock` — one writer per output: an exclusive ``flock`` on ``.NAME.lock`` beside it; a second
  writer is refused with who holds it (pid, host, start time, command).
- :func:`disk_full_error` — a failed write whose filesystem is full becomes one line naming the output
  (:class:`~elm_data.core.errors.DiskFull`), whatever library wrote it: staged directories and atomic files do
  it.

Every temp name is ``.NAME.tmp-*`` beside its target (:func:`temp_path`), so one glob finds what a killed
writer left. This module is the project's one writer of whole files and directories: nothing else renames
into place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import posixpath
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from elm_data.core.errors import DiskFull, OutputLocked
from elm_data.core.redact import redact_text

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# A write that failed with less than this free on its filesystem failed for want of space: torch.save says
# only "unexpected pos" or "file write failed" where the system said ENOSPC.
LOW_SPACE_BYTES = 16 << 20
_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def disk_full_error(target: str | Path, error: BaseException) -> DiskFull | None:
    """A :class:`DiskFull` naming ``target`` when ``error`` (raised while writing it) came from a full
    filesystem: ENOSPC/EDQUOT, a library's text for them (safetensors), or any write error with under
    :data:`LOW_SPACE_BYTES` left on the filesystem (torch.save's RuntimeError). None for any other error."""
    full = isinstance(error, DiskFull) or (
        isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    )
    full = full or (isinstance(error, Exception) and any(text in str(error) for text in _FULL_TEXTS))
    folder = Path(target).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not full and not (isinstance(error, RuntimeError) and free is not None and free < LOW_SPACE_BYTES):
        return None
    left = "" if free is None else f" ({free / 2**20:.1f} MiB free there)"
    return DiskFull(f"disk full: no space left to write {target}{left}; free some space and run again")


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


def temp_path(target: str | Path) -> Path:
    """A fresh temporary name beside ``target``: ``.NAME.tmp-<pid>-<random>`` (what :func:`recover_dir`
    sweeps)."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """A fresh empty directory beside ``target`` to fill; it becomes ``target`` in whole when the block ends.

    On success it gets the umask's modes (:func:`publish_modes`) and replaces ``target``
    (:func:`replace_dir`); on any failure it is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        publish_modes(tmp)  # mkdtemp made it 0700: the umask's modes, like any other tool
        replace_dir(tmp, target)  # target holds the old directory or the new one, never nothing
    except BaseException as error:
        full = disk_full_error(target, error)  # judged before the partial files are removed
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from error
        raise


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` for a writer that takes a file name; it becomes ``target`` in whole.

    When the block ends the file is flushed to disk (fsync), given the umask's mode (``0666 & ~umask``) and
    renamed over ``target``, so ``target`` always holds the old complete file or the new one. On any failure
    the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException as error:
        full = disk_full_error(target, error)  # judged before the partial file is removed
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from error
        raise


@contextmanager
def atomic_file(target: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """``target`` opened for writing (``"wb"``, or ``"w"`` for UTF-8 text) through :func:`atomic_path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a whole file: mode 'wb' or 'w', not {mode!r}")
    with atomic_path(target) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
        yield handle


def write_atomic(target: str | Path, data: bytes | str, fs: Any = None) -> None:
    """Write ``data`` (a str as UTF-8) to ``target`` in whole (:func:`atomic_file`).

    ``fs``: an fsspec filesystem when ``target`` is a path on it (e.g. a bucket shared by remote workers):
    written under the same temp name, then moved into place; a local one takes the local route.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if fs is not None:
        from fsspec.implementations.local import LocalFileSystem  # here: importing fsspec takes 0.2 s

        if not isinstance(fs, LocalFileSystem):
            _write_remote(fs, str(target), payload)
            return
    with atomic_file(target) as handle:
        handle.write(payload)


def _write_remote(fs: Any, target: str, payload: bytes) -> None:
    head, name = posixpath.split(target)
    tmp = posixpath.join(head, temp_path(name).name)
    try:
        with fs.open(tmp, "wb") as handle:
            handle.write(payload)
        fs.mv(tmp, target)
    except BaseException:
        with suppress(OSError):
            fs.rm(tmp)
        raise


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

    The lock file ``.NAME.lock`` beside ``target`` (mode 0600) says who holds it: pid, host, start time and
    the command line, redacted (:func:`~elm_data.core.redact.redact_text`); it is removed on release. A lock
    taken on a file that a releasing holder just removed is retried, so two writers never both hold it. The
    lock is the ``flock``, not the file: a holder killed with ``kill -9`` leaves the file, but the kernel
    releases its lock, so the next writer takes it and rewrites the file.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
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
            "command": redact_text(" ".join(sys.argv))[:200],  # redacted whole, then cut: no half-URI escapes
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.fchmod(fd, 0o600)  # who holds it is the owner's business (a lock left by an older version too)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(who).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
