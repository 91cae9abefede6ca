"""How every click command reports a user's error: one line, exit 2 (the exit codes are listed here, once).

Each folder's ``cli.py`` makes its commands with :func:`command` (``click.command`` with :class:`Command`)
and catches nothing: an :class:`~elm_data.core.errors.ElmDataError` or an ``OSError`` (a missing file, a
permission, a full disk) escaping a command becomes a :class:`UserError` — a click error carrying the
one-line, redacted message and :data:`~elm_data.core.errors.EXIT_USER_ERROR` — whether the command runs
under ``elm-data`` (``elm_data.cli.run`` prints ``error: <message>``) or alone (click prints ``Error: …``).
Anything else is a bug and keeps its traceback.

Exit codes: 0 done; 1 a check ran and found a difference (:data:`EXIT_CHECK_FAILED`: ``verify``,
``audit-run --verify``) or a bug (with its traceback); 2 a usage or user error (:data:`EXIT_USER_ERROR`);
130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import functools

import click

from .errors import EXIT_USER_ERROR, ElmDataError
from .redact import redact_text

EXIT_CHECK_FAILED = 1
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 a check found a difference (verify, audit-run --verify) or an internal error "
    "(traceback shown); 2 a usage or user error (one line: error: ...); 130/143 interrupted."
)


class UserError(click.ClickException):
    """A user's error as click reports it: the one-line message, exit code 2."""

    exit_code = EXIT_USER_ERROR


def user_error_message(error: BaseException) -> str | None:
    """The line (URIs redacted) that reports ``error`` to a user, or None when ``error`` is a bug."""
    if isinstance(error, ElmDataError):
        message = str(error) or type(error).__name__
    elif isinstance(error, OSError):  # the environment, not a bug
        has_parts = error.strerror and error.filename
        message = f"{error.strerror}: {error.filename}" if has_parts else str(error) or type(error).__name__
    else:
        return None
    return redact_text(message)


class Command(click.Command):
    """A click command whose users' errors leave as :class:`UserError` (see the module docstring)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `elm-data ... | head`: click quiets it
            raise
        except (ElmDataError, OSError) as error:
            raise UserError(user_error_message(error)) from error


def check_failed() -> None:
    """End a command that ran fine and found a difference (exit 1), after it has printed what differs."""
    raise click.exceptions.Exit(EXIT_CHECK_FAILED)


command = functools.partial(click.command, cls=Command)
