"""The top-level CLI: every command in its table resolves to a real command and answers --help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from elm_data.cli import COMMANDS, cli

ALL = [(group, name) for group, commands in COMMANDS.items() for name in commands]


@pytest.mark.parametrize(("group", "name"), ALL, ids=[f"{g} {n}".strip() for g, n in ALL])
def test_every_listed_command_resolves_and_has_help(group: str, name: str):
    args = [group, name, "--help"] if group else [name, "--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert f" {name} " in result.output.splitlines()[0]


def test_top_level_help_lists_every_command_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from elm_data.cli import cli; "
        "out = CliRunner().invoke(cli, ['--help']).output; print(out); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for group, commands in COMMANDS.items():
        for name in [group] if group else commands:
            assert f"  {name} " in out
    assert out.strip().endswith("False"), "listing commands must not import torch"


def test_missing_tokenizer_is_a_readable_error(tmp_path, monkeypatch):
    from elm_data.sources.sample import write_sample_corpus

    monkeypatch.delenv("ELM_DATA_TOKENIZER", raising=False)
    monkeypatch.setenv("ELM_DATA_CACHE", str(tmp_path / "empty-cache"))  # nor a cached model by sha256
    mixture = write_sample_corpus(tmp_path / "s", scale=0.1)
    result = CliRunner().invoke(cli, ["build", "manifest", str(mixture), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    for way in ("--tokenizer", "tokenizer:", "ELM_DATA_TOKENIZER"):
        assert way in result.output
    assert "Traceback" not in result.output
