"""Every check covers what it certifies: audit and Croissant check the documents ledger, verify its folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from elm_data.manifests.cli import audit, export_croissant, verify
from elm_data.manifests.manifest import DOCUMENT_SCHEMA, Manifest, ledger_path, write_ledger


def edit_doc_id(manifest: Path, out: Path) -> tuple[Path, str]:
    """A copy of ``manifest`` whose first kept document of shard 0 has another ``doc_id`` in the ledger."""
    shutil.copytree(manifest, out)
    opened = Manifest(out)
    table = opened.documents(0)
    ids, status = table.column("doc_id").to_pylist(), table.column("status").to_pylist()
    first = status.index("kept")
    original, ids[first] = ids[first], ids[first] + "-edited"
    edited = table.set_column(table.schema.get_field_index("doc_id"), "doc_id", pa.array(ids, pa.string()))
    write_ledger(ledger_path(out, 0), opened.shards[0].blocks, edited.cast(DOCUMENT_SCHEMA))
    return out, original


@pytest.fixture(scope="module")
def edited_ledger(sample_manifest, tmp_path_factory) -> Path:
    edited, _ = edit_doc_id(sample_manifest, tmp_path_factory.mktemp("ledger") / "manifest")
    return edited


@pytest.mark.parametrize("command", [audit, export_croissant], ids=["audit", "export croissant"])
def test_an_edited_doc_id_is_refused_by_audit_and_croissant(
    edited_ledger, sample_manifest, command, tmp_path
):
    """Issue 26.2: ``verify`` failed on an edited ledger row, but ``audit`` passed and Croissant published the
    edited file's sha256 under the original id."""

    def args(name: str) -> list[str]:
        return ["--out", str(tmp_path / name)] if command is export_croissant else []

    assert CliRunner().invoke(command, [str(sample_manifest), *args("good.json")]).exit_code == 0
    result = CliRunner().invoke(command, [str(edited_ledger), *args("edited.json")])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "ledger" in result.output and "row group" in result.output
    assert not (tmp_path / "edited.json").exists()
    assert CliRunner().invoke(verify, [str(edited_ledger)]).exit_code == 1


def test_verify_fails_on_a_stray_ledger_file(sample_manifest, tmp_path):
    """Issue 26.2: a file in ``documents/`` that is no shard's ledger passed ``verify``."""
    copy = Path(shutil.copytree(sample_manifest, tmp_path / "manifest"))
    shards = len(Manifest(copy).shards)
    stray = ledger_path(copy, shards)  # the next shard's name: a ledger of no shard of this manifest
    shutil.copyfile(ledger_path(copy, 0), stray)
    result = CliRunner().invoke(verify, [str(copy)])
    assert result.exit_code == 1 and stray.name in result.output and "no shard's ledger" in result.output
    stray.unlink()
    (copy / "documents" / "notes.txt").write_text("x")
    assert CliRunner().invoke(verify, [str(copy)]).exit_code == 1
    (copy / "documents" / "notes.txt").unlink()
    assert CliRunner().invoke(verify, [str(copy)]).exit_code == 0
