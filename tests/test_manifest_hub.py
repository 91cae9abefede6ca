"""Upstream facts for hf:// shards: the hub's commit is recorded, its published LFS sha256 must match ours.

No network: huggingface_hub's filesystem is replaced by a stand-in that answers like the hub's
``info(expand_info=True)`` (``last_commit.oid`` and ``lfs.sha256``), or fails like an offline client.
"""

from __future__ import annotations

import huggingface_hub
import pytest

from elm_data.manifests.shard_work import HubHashMismatch, hub_file_info, hub_revision

URI = "hf://datasets/tiiuae/falcon-refinedweb/data/train-00000-of-05534-b8fc5348cbe4a5a1.parquet"
OURS = "ab" * 32


def fake_hub(info: dict | None):
    class FakeHfFileSystem:
        def info(self, path, expand_info=False):
            assert path == URI and expand_info
            if info is None:
                raise OSError("offline")
            return info

        def resolve_path(self, path):
            raise AssertionError("the commit is taken from last_commit when the hub gives one")

    return FakeHfFileSystem


def test_hub_commit_is_recorded_when_its_hash_matches(monkeypatch):
    published = {"last_commit": {"oid": "c0ffee"}, "lfs": {"sha256": OURS}}
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", fake_hub(published))
    assert hub_file_info(URI) == ("c0ffee", OURS)
    assert hub_revision(URI, OURS) == "c0ffee"


def test_bytes_that_differ_from_the_hubs_are_refused(monkeypatch):
    published = {"last_commit": {"oid": "c0ffee"}, "lfs": {"sha256": "cd" * 32}}
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", fake_hub(published))
    with pytest.raises(HubHashMismatch, match="the hub publishes cdcd"):
        hub_revision(URI, OURS)


def test_offline_or_local_shards_have_no_upstream_facts(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", fake_hub(None))
    assert hub_file_info(URI) == (None, None)
    assert hub_revision(URI, OURS) is None
    assert hub_file_info("/data/refinedweb/train-00000.parquet") == (None, None)
