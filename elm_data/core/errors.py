"""The one root of user errors, importable from every folder (it imports nothing of elm-data).

Contract: anything the user can fix — a bad value, a missing or damaged file, an output that already
exists, a lock held by another run, a full disk — raises an :class:`ElmDataError` (or a subclass each
area defines, e.g. ``PlanError``, ``ConfigError``, ``CheckpointError``) whose message is one line that
names the key, flag or path at fault. The command line prints ``error: <message>`` and exits 2; any other
exception is a bug and is shown with its traceback and a hint to report it (``elm-data --debug`` shows the
traceback of user errors too).
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class ElmDataError(Exception):
    """An error caused by the user's input, files or environment, not by a bug in elm-data."""


class InvalidValue(ElmDataError, ValueError):
    """A setting (config key or flag) whose value cannot be used; the message names the key."""


class NotFound(ElmDataError, FileNotFoundError):
    """An input path or URI that does not exist; the message names it."""


class OutputExists(ElmDataError, FileExistsError):
    """An output that already exists and would be replaced without ``--overwrite``."""


class OutputLocked(ElmDataError):
    """Another process is writing the same output (the message says which: pid, host, start time)."""


class DiskFull(ElmDataError):
    """A write that failed because the filesystem holding it is full (the message names the output)."""
