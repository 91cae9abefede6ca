"""The Beam pipeline (DirectRunner) gives exactly the local build: same id, byte-identical parquet."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from elm_data.manifests.beam import pipeline_options
from elm_data.manifests.build import build_manifest
from elm_data.manifests.cli import build_manifest as build_command
from elm_data.manifests.manifest import Manifest, data_files

pytestmark = pytest.mark.slow  # Beam: importing it and running a pipeline take seconds each


def test_default_options_pick_the_in_process_direct_runner():
    options = pipeline_options([]).get_all_options()
    assert options["runner"] == "DirectRunner"  # never the Prism runner, which downloads a binary
    assert options["direct_running_mode"] == "in_memory"
    chosen = pipeline_options(["--direct_running_mode=multi_processing"]).get_all_options()
    assert chosen["direct_running_mode"] == "multi_processing"


def test_beam_build_equals_local_build(sample_dir, tokenizer_path, sample_manifest, tmp_path):
    out = tmp_path / "beam"
    result = build_manifest(sample_dir / "mixture.yaml", out, tokenizer=tokenizer_path, runner="beam")
    local = Manifest(sample_manifest)
    assert result.manifest_id == local.manifest_id
    assert Manifest(out).info["merkle_root"] == local.info["merkle_root"]
    for name in data_files(out):
        assert (out / name).read_bytes() == (sample_manifest / name).read_bytes(), name


def test_beam_runner_from_the_cli(sample_dir, tokenizer_path, sample_manifest, tmp_path):
    out = tmp_path / "beam-cli"
    result = CliRunner().invoke(
        build_command,
        [str(sample_dir / "mixture.yaml"), "--out", str(out), "--tokenizer", tokenizer_path, "--runner", "beam"],
    )
    assert result.exit_code == 0, result.output
    assert Manifest(out).manifest_id == Manifest(sample_manifest).manifest_id
    shards = len(Manifest(out).shards)  # the bar polled from the workspace while Beam ran, and ended full
    assert "counting shards (beam)" in result.stderr and f"{shards}/{shards}" in result.stderr, result.stderr
