"""The README as written: CI runs its two commands verbatim, its Usage lines parse, and they share one demo/
folder."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import signal
from pathlib import Path

import click
import pytest
import tomllib
import yaml

from elm_data.cli import cli, run

ROOT = Path(__file__).resolve().parents[1]
readme_commands = runpy.run_path(str(ROOT / ".ci" / "readme_commands.py"))["readme_commands"]


@pytest.fixture(autouse=True)
def _keep_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_ci_runs_the_readme_commands_exactly_as_written():
    install_and_demo, tests = readme_commands(ROOT / "README.md")
    assert install_and_demo.endswith("elm-data demo") and "pip install" in install_and_demo
    assert tests.endswith("python -m pytest") and tests.startswith("ELM_DATA_TOKENIZER=../shared/")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python .ci/readme_commands.py README.md" in ci and 'bash -euo pipefail -c "$readme_command"' in ci
    assert "ruff check" in ci and "ruff format --check" in ci
    installed = re.search(r'-e "\.\[([a-z0-9,]+)\]"', ci).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # every extra's tests run in CI, none skips for a missing extra
    assert sorted(installed) == sorted(declared)
    code = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not [line for line in code if "pytest" in line]  # the suite runs only as the README's command 2


def test_a_relative_tokenizer_variable_means_from_where_the_command_started(
    tokenizer_path, tmp_path, monkeypatch, capsys
):
    """README's `ELM_DATA_TOKENIZER=../shared/...`: relative to the start directory, even after a chdir and in
    the processes a command starts (they inherit the variable made absolute)."""
    start = Path(tokenizer_path).parent.parent
    relative = os.path.relpath(tokenizer_path, start)
    monkeypatch.chdir(start)
    monkeypatch.setenv("ELM_DATA_TOKENIZER", relative)
    assert run(["tokenizer", "show"]) == 0
    assert f"resolves to {Path(tokenizer_path).resolve()}" in capsys.readouterr().out
    assert os.environ["ELM_DATA_TOKENIZER"] == str(Path(tokenizer_path).resolve())
    monkeypatch.chdir(tmp_path)
    from elm_data.pipeline.tokenizer import resolve_tokenizer

    assert Path(resolve_tokenizer().uri) == Path(tokenizer_path).resolve()


def _usage_lines() -> list[list[str]]:
    """The `elm-data …` commands of the README's Usage block (its second bash block), as argument lists."""
    usage = readme_commands(ROOT / "README.md", 1)
    return [shlex.split(c, comments=True)[1:] for c in usage if c.startswith("elm-data")]


def _command_of(args: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an argument list runs (groups descended), and the arguments left for it."""
    command, ctx = cli, click.Context(cli, info_name="elm-data")
    while isinstance(command, click.Group):
        named = args[0] in command.list_commands(ctx)
        # `audit DIR` runs `audit mixture DIR`
        name = args[0] if named else getattr(command, "default", args[0])
        command = command.get_command(ctx, name)
        assert command is not None, args
        ctx, args = click.Context(command, parent=ctx, info_name=name), args[1:] if named else args
    return command, args


def test_every_usage_line_names_real_flags_and_what_its_config_lacks():
    lines = _usage_lines()
    assert len(lines) >= 15
    for line in lines:
        command, args = _command_of(line)
        options = [p for p in command.params if isinstance(p, click.Option)]
        known = {name for p in options for name in (*p.opts, *p.secondary_opts)}
        given = {a.split("=")[0] for a in args if a.startswith("--")}
        assert given <= known, f"elm-data {' '.join(line)}: unknown {given - known}"
        assert all(set(p.opts) & given for p in options if p.required), (
            f"elm-data {' '.join(line)}: a required flag"
        )
        config = next((a for a in args if a.endswith(".yaml") and (ROOT / a).is_file()), None)
        settings = yaml.safe_load((ROOT / config).read_text()) if config else {}
        if "manifest" in settings:  # a training config or bench matrix: a manifest from it or from --manifest
            assert settings["manifest"] or "--manifest" in given, f"elm-data {' '.join(line)}: no manifest"


def test_the_demo_the_usage_and_demo_yaml_share_one_demo_folder():
    from elm_data.demo import demo

    default = next(p for p in demo.params if p.name == "out_dir").default
    assert Path(default) == Path("demo")
    manifest = yaml.safe_load((ROOT / "trainer" / "configs" / "demo.yaml").read_text())["manifest"]
    assert (ROOT / "trainer" / "configs" / manifest).resolve() == ROOT / default / "manifest"
    folders = {
        a.split("/")[0] for args in _usage_lines() for a in args if a.startswith(("demo/", "elm-data-demo"))
    }
    assert folders == {default}
