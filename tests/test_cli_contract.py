"""Every `elm-data` command keeps the error contract: a user's mistake is one line on stderr and exit 2.

The list of commands is walked from the click tree (groups and their lazily imported commands), so a command
added without a case here fails :func:`test_every_command_has_a_case`. Each case is a mistake a user makes
(a path that does not exist, an option value out of range, an unknown name); the run goes through
``elm_data.cli.run``, the one handler ``elm-data`` uses.
"""

from __future__ import annotations

import signal

import click
import pytest

from elm_data.cli import cli, run

MISSING = "{tmp}/no-such-path"

# command path -> mistakes (arguments after the command path; {tmp} is the test's empty tmp_path, {manifest}
# the sample corpus' manifest)
CASES: dict[str, list[list[str]]] = {
    "audit mixture": [[MISSING], ["{tmp}", "--format", "xml"], ["{manifest}", "--plot", "{tmp}/x.txt"]],
    "audit contamination": [
        [MISSING, "--tasks", "{tmp}/items.jsonl"],
        ["{manifest}", "--tasks", "{tmp}/no-such-items.jsonl"],
        ["{manifest}", "--tasks", "{tmp}/items.jsonl", "--ngram", "0"],
        ["{manifest}", "--tasks", "{tmp}/items.jsonl", "--min-overlap", "1.5"],
    ],
    "audit duplicates": [
        [MISSING],
        ["{manifest}", "--threshold", "2"],
        ["{manifest}", "--plot", "{tmp}/x.txt"],
    ],
    "audit-run": [[MISSING], ["{tmp}"]],
    "bench train": [[MISSING, "--out", "{tmp}/bench"]],
    "build manifest": [[MISSING, "--out", "{tmp}/m"]],
    "compress": [[MISSING, "--out", "{tmp}/c"]],
    "demo": [["{tmp}/demo", "--steps", "0"], ["{tmp}/demo", "--tokenizer", MISSING]],
    "estimate": [[MISSING], ["{tmp}", "--sample-docs", "0"]],
    "eval": [[MISSING]],
    "export croissant": [[MISSING]],
    "export hf": [[MISSING, "{tmp}/hf"], ["--init", "5B", "{tmp}/hf"]],
    "export mlx": [[MISSING, "{tmp}/mlx"]],
    "init": [["nope", "{tmp}"]],
    "report": [[MISSING], ["{tmp}"]],
    "sample": [["{tmp}/s", "--scale", "many"]],
    "stream": [[MISSING]],
    "tokenizer fetch": [[MISSING]],
    "tokenizer show": [["--tokenizer", MISSING]],
    "trace": [[MISSING, "--doc", "a/b:c"], ["{tmp}", "--doc", "a/b:c"]],
    "train": [[MISSING], ["{tmp}"]],
    "verify": [[MISSING], ["{tmp}"]],
}


def leaf_commands(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()):
    """Every runnable command under ``group`` as its path, e.g. ``"export hf"``."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(
                command, click.Context(command, parent=ctx, info_name=name), (*prefix, name)
            )
        else:
            yield " ".join((*prefix, name))


def test_every_command_has_a_case():
    commands = set(leaf_commands(cli, click.Context(cli, info_name="elm-data")))
    assert len(commands) >= 19  # the walk reaches the lazily imported commands of every group
    assert commands == set(CASES), f"without a case: {commands - set(CASES)}; gone: {set(CASES) - commands}"


@pytest.fixture(autouse=True)
def _keep_sigterm():
    """run() installs the CLI's SIGTERM handler; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize(
    ("path", "args"), [(path, args) for path, cases in CASES.items() for args in cases], ids=lambda v: str(v)
)
def test_a_mistake_is_one_line_and_exit_2(path, args, tmp_path, capsys, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # nothing a mistake might still write lands in the checkout
    manifest = request.getfixturevalue("sample_manifest") if any("{manifest}" in a for a in args) else None
    code = run([*path.split(), *(a.format(tmp=tmp_path, manifest=manifest) for a in args)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err
