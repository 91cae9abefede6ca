"""Each thing is opened, checked or fitted once: the manifest in the trainer's process, a ledger block per
pass of the stream, and the plan when the stream picks its partition count."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
import torch
from synthetic_manifest import synthetic_manifest
from test_trainer_run import small_config

from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.stream import StreamLoader, TokenStream
from elm_data.pipeline.stream import plan as plan_module
from elm_data.pipeline.stream.plan import Plan, PlanConfig, PlanError, default_partitions
from elm_data.trainer.core.distributed import DistInfo
from elm_data.trainer.core.loop import Trainer


@pytest.fixture
def manifest_opens(monkeypatch) -> list[bool]:
    """``verify`` of every ``Manifest`` opened from now on."""
    opens: list[bool] = []
    original = Manifest.__init__

    def counting(self, path, verify=True, every_block=False):
        opens.append(verify)
        original(self, path, verify, every_block)

    monkeypatch.setattr(Manifest, "__init__", counting)
    return opens


def test_the_trainer_opens_and_verifies_its_manifest_once(
    sample_manifest, tokenizer, manifest_opens, tmp_path
):
    trainer = Trainer(
        small_config(sample_manifest), torch.device("cpu"), DistInfo(), run_dir=tmp_path, progress=False
    )
    trainer.setup()
    assert manifest_opens == [True]
    assert trainer.loader.stream.manifest is trainer.manifest


def test_a_stream_uses_an_open_manifest_and_reopens_one_not_verified(
    sample_manifest, tokenizer, manifest_opens
):
    opened = Manifest(sample_manifest)
    stream = TokenStream(opened, batch_size=2, seq_len=32, tokenizer=tokenizer)
    assert stream.manifest is opened and manifest_opens == [True]
    unchecked = Manifest(sample_manifest, verify=False)
    stream = TokenStream(unchecked, batch_size=2, seq_len=32, tokenizer=tokenizer)
    assert (
        stream.manifest is not unchecked
        and stream.manifest.verified
        and manifest_opens == [True, False, True]
    )


def test_a_pass_of_the_stream_reads_each_ledger_block_once(sample_manifest, tokenizer, monkeypatch):
    """Whatever any cache keeps: the walk reads a block's ledger rows, the reader gets its kept records from
    it."""
    monkeypatch.setattr(Manifest, "BLOCKS_KEPT", 0, raising=False)  # the old tree's cache, emptied
    reads: Counter = Counter()
    original = Manifest.block_documents

    def counting(self, shard, block, parquet=None):
        reads[(shard, block)] += 1
        return original(self, shard, block, parquet)

    monkeypatch.setattr(Manifest, "block_documents", counting)
    stream = TokenStream(sample_manifest, batch_size=2, seq_len=64, tokenizer=tokenizer, weights="natural")
    batches = list(StreamLoader(stream))
    assert sum(len(b["spans"]) for b in batches) > 0 and reads
    assert set(reads.values()) == {1}, reads


def _oracle_partitions(manifest: Manifest, config: PlanConfig, most: int) -> int:
    """The largest power of two <= ``most`` whose whole Plan can be made: what the old picker built Plans
    for."""
    p = most
    while p > 1:
        try:
            Plan(manifest, replace(config, partitions=p))
            return p
        except PlanError:
            p //= 2
    return 1


@pytest.mark.parametrize(
    "layout, weights",
    [
        ({"a/x": [80, 70, 60], "b/y": [8]}, {"a/x": 1.0, "b/y": 3.0}),  # b/y: one block; P falls from 4 to 1
        ({"a/x": [80, 70, 60], "b/y": [8]}, {"a/x": 1.0, "b/y": 1.0}),  # from 4 to 2
        ({"a/x": [80, 70, 60], "b/y": [40]}, {"a/x": 1.0, "b/y": 3.0}),  # from 8 to 4
        ({"a/x": [80, 70, 60], "b/y": [40]}, {"a/x": 3.0, "b/y": 1.0}),  # 8
        ({"a/x": [80, 70, 60], "b/y": [40]}, None),
    ],
)
def test_the_default_partition_count_is_picked_without_making_a_plan(tmp_path, monkeypatch, layout, weights):
    manifest = synthetic_manifest(tmp_path / "m", layout)
    config = PlanConfig(mode="packed", seq_len=32, batch_size=2, seed=0, weights=weights)
    units = sum(len(s.units) for s in plan_module.manifest_sources(manifest, "packed"))
    most = 1
    while (
        most * 2 <= plan_module.MAX_DEFAULT_PARTITIONS and most * 2 * plan_module.UNITS_PER_PARTITION <= units
    ):
        most *= 2
    expected = _oracle_partitions(manifest, config, most)
    made: list[int] = []
    original = Plan.__init__
    monkeypatch.setattr(
        Plan, "__init__", lambda self, m, c: (made.append(c.partitions), original(self, m, c))[1]
    )
    assert default_partitions(manifest, config) == expected
    assert made == []
