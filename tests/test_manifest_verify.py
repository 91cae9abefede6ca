"""`elm-data verify`: re-hash every shard; catch one flipped byte, a missing shard, an altered record."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from elm_data.manifests.build import build_manifest
from elm_data.manifests.cli import verify
from elm_data.manifests.manifest import SHARDS_FILE, Manifest
from elm_data.manifests.verify import verify_manifest


@pytest.fixture(scope="module")
def built(sample_dir, tokenizer_path, tmp_path_factory) -> tuple[Path, Path]:
    """(corpus copy, manifest of it): tests damage the copy and restore it."""
    root = tmp_path_factory.mktemp("verify")
    corpus = Path(shutil.copytree(sample_dir, root / "corpus"))
    out = root / "manifest"
    build_manifest(corpus / "mixture.yaml", out, tokenizer=tokenizer_path)
    return corpus, out


def _run(manifest: Path):
    return CliRunner().invoke(verify, [str(manifest)])


def test_untouched_corpus_verifies(built):
    _, manifest = built
    result = _run(manifest)
    assert result.exit_code == 0, result.output
    assert f"{len(Manifest(manifest).shards)} shard(s) match" in result.output


def test_one_flipped_byte_is_caught_and_named(built):
    _, manifest = built
    victim = Path(Manifest(manifest).shards[5].uri)
    original = victim.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    victim.write_bytes(bytes(flipped))
    try:
        result = _run(manifest)
        report = verify_manifest(manifest)
    finally:
        victim.write_bytes(original)
    assert result.exit_code == 1
    assert f"mismatch: {victim}" in result.output
    assert [(p.kind, p.uri) for p in report.shard_problems] == [("mismatch", str(victim))]
    assert _run(manifest).exit_code == 0  # restored bytes verify again


def test_missing_shard_is_caught_and_named(built):
    _, manifest = built
    victim = Path(Manifest(manifest).shards[-1].uri)
    moved = victim.with_name(victim.name + ".away")
    victim.rename(moved)
    try:
        result = _run(manifest)
    finally:
        moved.rename(victim)
    assert result.exit_code == 1
    assert f"missing: {victim}" in result.output


def test_altered_shard_record_breaks_the_merkle_root(built, tmp_path):
    _, manifest = built
    forged = Path(shutil.copytree(manifest, tmp_path / "forged"))
    table = pq.read_table(forged / SHARDS_FILE)
    tokens = table.column("tokens").to_pylist()
    tokens[0] += 1000
    table = table.set_column(table.schema.get_field_index("tokens"), "tokens", [tokens])
    pq.write_table(table, forged / SHARDS_FILE)
    result = _run(forged)
    assert result.exit_code == 1
    assert "Merkle root" in result.output
    assert "documents ledger" in result.output  # the ledger no longer adds up to the forged count


def test_not_a_manifest_is_a_clear_error(tmp_path):
    result = _run(tmp_path / "nothing-here")
    assert result.exit_code != 0
    assert "no such manifest directory" in result.output
    assert "Traceback" not in result.output
