"""``--retries N``: the one command-line option of the retry policy (``sources/remote.py``), shared by every
command that reads remotely (shards, blocks, a tokenizer URL).

:func:`retries_option` adds the option to a click command and runs the command inside
:func:`~elm_data.sources.remote.command_line_attempts`: every remote read of the run, in this process and in
the workers it starts, makes ``N`` attempts in all (the first included), whatever a config's ``retries:``
says; without the flag the config's policy holds (else 8 attempts). ``tests/test_cli_network.py`` holds every
command that reads remotely to having it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from . import remote

RETRIES_HELP = (
    "Attempts per remote read (shards, blocks, a tokenizer URL), the first included; beats the config's "
    "retries.attempts (default: the config's, else 8)."
)


class RetriesOption(click.Option):
    """The ``--retries`` option (its class tells a test that the command took it from here)."""


def retries_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command ``--retries N`` (applied for its run; the command itself never sees the value)."""

    @functools.wraps(f)
    def run_with_attempts(*args: Any, retries: int | None = None, **kwargs: Any) -> Any:
        with remote.command_line_attempts(retries):
            return f(*args, **kwargs)

    option = click.option(
        "--retries", type=click.IntRange(min=1), default=None, help=RETRIES_HELP, cls=RetriesOption
    )
    return option(run_with_attempts)
