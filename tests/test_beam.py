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
        [
            str(sample_dir / "mixture.yaml"),
            "--out",
            str(out),
            "--tokenizer",
            tokenizer_path,
            "--runner",
            "beam",
        ],
    )
    assert result.exit_code == 0, result.output
    assert Manifest(out).manifest_id == Manifest(sample_manifest).manifest_id
    shards = len(Manifest(out).shards)  # the bar polled from the workspace while Beam ran, and ended full
    assert "counting shards (beam)" in result.stderr and f"{shards}/{shards}" in result.stderr, result.stderr


def test_beam_counts_its_workers_remote_retries_in_the_build_summary(sample_dir, tokenizer_path, tmp_path):
    """A Beam build over the faulty loopback server (DirectRunner) reports its workers' retries, as a local
    build."""
    import fault_server
    import yaml
    from test_remote import FAST, FAULTS, _mixtures

    from elm_data.sources import remote

    before = remote.settings()
    try:
        with fault_server.serve(sample_dir, fault_server.Faults(**vars(FAULTS))) as (url, stats):
            _, http_yaml = _mixtures(sample_dir, url, tmp_path, slice(0, 3))
            raw = yaml.safe_load(http_yaml.read_text())
            http_yaml.write_text(
                yaml.safe_dump(raw | {"retries": {"backoff_s": 0.001, "max_backoff_s": 0.01}})
            )
            beam = build_manifest(
                http_yaml, tmp_path / "beam", tokenizer=tokenizer_path, runner="beam", retries=FAST
            )
            faults = sum(stats.faults.values())
            args = [
                str(http_yaml),
                "--out",
                str(tmp_path / "cli"),
                "--tokenizer",
                tokenizer_path,
                "--runner",
                "beam",
            ]
            result = CliRunner().invoke(build_command, [*args, "--retries", "8"])
    finally:
        remote.configure(**before)
    shards = sum(r.size_bytes for r in Manifest(beam.manifest_dir).shards)
    assert faults > 0 and beam.remote["failed"] == 0
    assert beam.remote["retries"] == sum(beam.remote["retries_by_reason"].values()) > 0
    # each fault the server made cost its reader one retry (or two)
    assert beam.remote["retries"] >= faults // 2
    assert set(beam.remote["retries_by_reason"]) <= {"http 503", "truncated body", "connection"}
    assert beam.remote["bytes_fetched"] >= shards
    assert result.exit_code == 0, result.output
    assert "read(s) retried" in result.output and "bytes fetched" in result.output, result.output
