"""`elm-data sample`: writes the corpus, reports it, and refuses bad options readably."""

from __future__ import annotations

from click.testing import CliRunner

from elm_data.sources.cli import sample


def test_sample_command_writes_and_reports(tmp_path):
    out = tmp_path / "corpus"
    result = CliRunner().invoke(sample, [str(out), "--seed", "3", "--scale", "0.5"])
    assert result.exit_code == 0, result.output
    assert (out / "mixture.yaml").is_file()
    assert f"mixture: {out / 'mixture.yaml'}" in result.output
    assert "wrote dolma/v1_6/wiki/en_simple_wiki_v0-0000.json.gz" in result.output
    assert "redpajama/github" in result.output and "27 shards" in result.output
    assert "seed: 3" in (out / "mixture.yaml").read_text()


def test_sample_command_rejects_a_bad_scale(tmp_path):
    result = CliRunner().invoke(sample, [str(tmp_path / "x"), "--scale", "0"])
    assert result.exit_code == 2
    assert "--scale" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_sample_help_explains_the_command():
    result = CliRunner().invoke(sample, ["--help"])
    assert result.exit_code == 0 and "native format" in result.output and "--seed" in result.output
