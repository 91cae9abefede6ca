"""A manifest proves itself wherever it is used: edited copies are refused by the stream, training, audit and
Croissant export; verify sees every edit; a worker refuses a manifest rebuilt under it."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elm_data.core.errors import ElmDataError
from elm_data.manifests.audit import audit_manifest
from elm_data.manifests.block_index import BLOCKS_FILE, BLOCKS_SCHEMA
from elm_data.manifests.croissant import croissant_metadata
from elm_data.manifests.identity import ManifestTampered, merkle_root_of
from elm_data.manifests.manifest import SHARDS_FILE, Manifest, ledger_path
from elm_data.manifests.shard_records import ShardRecord, shards_table
from elm_data.manifests.verify import verify_manifest
from elm_data.pipeline.stream import StreamIntegrityError, StreamLoader, TokenStream


def copy_of(manifest: Path, tmp_path: Path, name: str = "m") -> Path:
    return Path(shutil.copytree(manifest, tmp_path / name))


def edit_info(path: Path, change) -> None:
    info = json.loads((path / "manifest.json").read_text())
    change(info)
    (path / "manifest.json").write_text(json.dumps(info))


def edit_records(path: Path, change, reseal_root: bool = False) -> None:
    records = [ShardRecord.from_row(r) for r in pq.read_table(path / SHARDS_FILE).to_pylist()]
    change(records)
    pq.write_table(shards_table(records), path / SHARDS_FILE)
    if reseal_root:  # a careful forger also updates the Merkle root (the id is left stale)
        edit_info(path, lambda info: info.update(merkle_root=merkle_root_of(records)))


def users(path: Path, tokenizer):
    """Every consumer of a manifest, each as a call that opens it."""
    from test_trainer_run import small_config

    from elm_data.trainer.core.loop import train

    return {
        "stream": lambda: TokenStream(path, batch_size=2, seq_len=32, tokenizer=tokenizer),
        "train": lambda: train(small_config(path, out_dir=str(path.parent / "run"), max_steps=1)),
        "audit": lambda: audit_manifest(path),
        "croissant": lambda: croissant_metadata(path),
    }


EDITS = {
    "mixture weight": lambda p: edit_info(
        p, lambda i: i["mixture"][0].update(weight=(i["mixture"][0]["weight"] or 0) + 1)
    ),
    "seed": lambda p: edit_info(p, lambda i: i.update(seed=i["seed"] + 1)),
    "totals x10": lambda p: edit_info(p, lambda i: i["totals"].update(tokens=i["totals"]["tokens"] * 10)),
    "token count": lambda p: edit_records(p, lambda rs: setattr(rs[0], "tokens", rs[0].tokens + 1)),
    "swapped shard, root resealed": lambda p: edit_records(
        p, lambda rs: setattr(rs[1], "sha256", "ab" * 32), reseal_root=True
    ),
    "block counts": lambda p: edit_block(p, 0, 0, kept_tokens=1),  # what every plan reads: checked at open
}


def edit_block(path: Path, shard: int, block: int, **changes) -> None:
    """Edit one row of ``blocks.parquet`` (shard ``shard``'s ``block``-th), leaving every other file as it
    was."""
    rows = pq.read_table(path / BLOCKS_FILE).to_pylist()
    row = [r for r in rows if r["shard"] == shard][block]
    assert all(row[k] != v for k, v in changes.items())
    row.update(changes)
    pq.write_table(pa.Table.from_pylist(rows, schema=BLOCKS_SCHEMA), path / BLOCKS_FILE)


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_consumer_refuses_an_edited_manifest(edit, sample_manifest, tokenizer, tmp_path):
    path = copy_of(sample_manifest, tmp_path)
    EDITS[edit](path)
    for use in users(path, tokenizer).values():
        with pytest.raises(ElmDataError, match="refusing an altered manifest"):  # one line, a user error
            use()


@pytest.mark.parametrize("field", ["sha256", "ledger_sha256", "first_record"])
def test_an_edited_block_record_is_refused_lazily_by_the_stream_and_at_once_by_verify_audit_croissant(
    field, sample_manifest, tokenizer, tmp_path
):
    """Opening a manifest checks every shard's block counts but not its whole block index (start-up must not
    grow with the blocks): a shard's block records are checked against the digest its shard record commits
    when that shard is first used, before any block of it is; verify, audit and Croissant check every shard's
    at once."""
    path = copy_of(sample_manifest, tmp_path)
    manifest = Manifest(path)
    edited = next(
        r.shard for r in manifest.shards if manifest.block_counts.count(r.shard) > 2 and r.docs_kept
    )
    value = manifest.blocks(edited)[1][field]
    edit_block(path, edited, 1, **{field: "ab" * 32 if field.endswith("sha256") else value + 1})
    opened = Manifest(path)  # opens: the edit is not in what every reader reads
    assert opened.blocks(edited - 1 if edited else edited + 1)
    with pytest.raises(
        ManifestTampered, match=f"refusing an altered manifest: the block index of shard {edited} "
    ):
        opened.blocks(edited)
    fed = []
    with pytest.raises(
        ElmDataError, match=f"refusing an altered manifest: the block index of shard {edited} "
    ):
        for batch in StreamLoader(
            TokenStream(path, batch_size=2, seq_len=32, tokenizer=tokenizer, weights="natural")
        ):
            fed += [s["shard_sha256"] for spans in batch["spans"] for s in spans]
    # other shards streamed, nothing of the edited one
    assert fed and manifest.shards[edited].sha256 not in fed
    for use in ("audit", "croissant"):
        with pytest.raises(
            ElmDataError, match=f"refusing an altered manifest: the block index of shard {edited} "
        ):
            users(path, tokenizer)[use]()
    report = verify_manifest(path)
    assert not report.ok and any(f"block index of shard {edited} " in p for p in report.manifest_problems)


def test_verify_reports_totals_and_reordered_ledger_rows(sample_manifest, tmp_path):
    totals = copy_of(sample_manifest, tmp_path, "totals")
    EDITS["totals x10"](totals)
    report = verify_manifest(totals)
    assert not report.ok and any("totals" in p for p in report.manifest_problems)

    reordered = copy_of(sample_manifest, tmp_path, "reordered")
    counts = Manifest(sample_manifest).block_counts
    shard = next(r for r in Manifest(sample_manifest).shards if counts.count(r.shard) > 2)
    path = ledger_path(reordered, shard.shard)
    parquet = pq.ParquetFile(path)
    groups = [parquet.read_row_group(g) for g in range(parquet.num_row_groups)]
    groups[1], groups[2] = groups[2], groups[1]  # the same rows, another order: another token stream
    with pq.ParquetWriter(path, parquet.schema_arrow) as writer:
        for table in groups:
            writer.write_table(table, row_group_size=max(1, table.num_rows))
    report = verify_manifest(reordered)
    assert not report.ok and any(f"shard {shard.shard} ledger" in p for p in report.manifest_problems)
    with pytest.raises(ManifestTampered, match="reordered"):  # and a consumer reading that ledger refuses it
        Manifest(reordered).documents(shard.shard)


def test_a_faithful_copy_is_accepted_and_verify_passes(sample_manifest, tmp_path, tokenizer):
    path = copy_of(sample_manifest, tmp_path)
    assert Manifest(path).manifest_id == Manifest(sample_manifest).manifest_id
    consumers = users(path, tokenizer)
    assert consumers["stream"]().manifest_id == Manifest(sample_manifest).manifest_id
    assert consumers["audit"]().totals.tokens == Manifest(sample_manifest).info["totals"]["tokens"]
    assert consumers["croissant"]()["distribution"]
    assert verify_manifest(path).ok


# a forked DataLoader worker (test_every_consumer_refuses_an_edited_manifest is the quick one)
@pytest.mark.slow
def test_a_worker_refuses_a_manifest_rebuilt_under_a_running_stream(sample_manifest, tokenizer, tmp_path):
    path = copy_of(sample_manifest, tmp_path)
    stream = TokenStream(path, batch_size=2, seq_len=32, tokenizer=tokenizer, weights="natural")
    other = copy_of(sample_manifest, tmp_path, "other")
    edit_info(other, lambda i: i.update(seed=i["seed"] + 1))
    from elm_data.manifests.identity import seal

    info = seal(json.loads((other / "manifest.json").read_text()), Manifest(other, verify=False).shards)
    (other / "manifest.json").write_text(json.dumps(info))
    shutil.rmtree(path)
    shutil.copytree(other, path)  # rebuilt at the same path (a valid manifest with another id)
    with pytest.raises(StreamIntegrityError, match="rebuilt while running"):
        next(iter(StreamLoader(stream, num_workers=1, multiprocessing_context="fork")))


def test_block_counts_read_back_as_counted_with_and_without_unknown_records(tmp_path, monkeypatch):
    """``read_block_counts`` fills a null ``records`` (an opaque block) only in the row groups that hold one
    (it skips pyarrow's compute module otherwise): row groups with, without and all nulls, against
    ``count_rows`` of the same block indexes."""
    from elm_data.manifests import block_index

    monkeypatch.setattr(block_index, "ROWS_PER_GROUP", 2)
    per_shard = []
    for shard, unknown in enumerate([(), (1,), (0, 1), (), (0,)]):
        blocks = [
            {
                "start": 10 * b,
                "end": 10 * b + 10,
                "sha256": f"{shard}{b}",
                "first_record": 3 * b,
                "records": None if b in unknown else 3,
                "kept_docs": b + shard,
                "kept_tokens": 100 * b,
                "kept_segments": b,
                "ledger_sha256": f"l{shard}{b}",
            }
            for b in range(2)
        ]
        per_shard.append((shard, blocks))
    path = tmp_path / "blocks.parquet"
    block_index.write_blocks_file(path, per_shard)
    assert pq.ParquetFile(path).num_row_groups == len(per_shard)
    counts = block_index.read_block_counts(path, len(per_shard))
    want = np.concatenate([block_index.count_rows(blocks) for _, blocks in per_shard])
    assert counts.rows.dtype == want.dtype and (counts.rows == want).all()
    assert (counts.column("records") == block_index.NO_RECORDS).sum() == 4


def _rewritten(table: pa.Table, how: str) -> pa.Table:
    """``table`` as another writer may have stored it: the same values under a schema that differs."""
    if how == "metadata":
        return table.replace_schema_metadata({b"writer": b"older"})
    if how == "not nullable":  # only where no value is null
        fields = [f.with_nullable(table.column(f.name).null_count > 0) for f in table.schema]
        return table.cast(pa.schema(fields))
    if how == "wider ints":
        return table.cast(
            pa.schema([f.with_type(pa.int64()) if f.type == pa.int32() else f for f in table.schema])
        )
    return table.cast(
        pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f for f in table.schema])
    )


@pytest.mark.parametrize("how", ["metadata", "not nullable", "wider ints", "large strings"])
def test_a_manifest_written_under_a_slightly_other_schema_reads_the_same(sample_manifest, tmp_path, how):
    """The shards table and the ledger blocks are conformed to the manifest's schemas as they are read (a
    cast only where the stored schema differs): an equal schema but for metadata or nullability, and wider
    types, read as the original, and every block still matches its ledger digest."""
    original = Manifest(sample_manifest)
    path = copy_of(sample_manifest, tmp_path)
    pq.write_table(_rewritten(pq.read_table(path / SHARDS_FILE), how), path / SHARDS_FILE)
    shard = next(r.shard for r in original.shards if original.block_counts.count(r.shard) > 1)
    ledger = ledger_path(path, shard)
    parquet = pq.ParquetFile(ledger)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    rewritten = _rewritten(parquet.read(), how)
    with pq.ParquetWriter(ledger, rewritten.schema) as writer:  # one row group per block, as built
        for at, n in zip(itertools.accumulate([0, *sizes]), sizes, strict=False):
            writer.write_table(rewritten.slice(at, n), row_group_size=max(1, n))
    copy = Manifest(path)
    assert copy.shards == original.shards
    for block in range(original.block_counts.count(shard)):
        got = copy.block_documents(shard, block)
        assert got.to_pylist() == original.block_documents(shard, block).to_pylist()
        assert got.schema.equals(original.block_documents(shard, block).schema)
