"""Mixture entries naming shards by URL lists: validation in one line, relative lines, revision, fraction."""

from __future__ import annotations

import pytest

from elm_data.core.errors import InvalidValue, NotFound
from elm_data.manifests.mixture import MixtureConfig
from elm_data.manifests.shard_lists import entry_shards, read_url_list


def _mix(**entry):
    return {"sources": [{"source": "redpajama", "subset": "c4", **entry}]}


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "1%", True])
def test_a_bad_fraction_is_refused_naming_the_key(bad):
    with pytest.raises(InvalidValue, match=r"sources\[0\]\.fraction"):
        MixtureConfig.from_dict(_mix(shards=["x.jsonl"], fraction=bad))


def test_an_entry_needs_shards_or_shards_from():
    with pytest.raises(InvalidValue, match=r"sources\[0\].*shards \(or shards_from\)"):
        MixtureConfig.from_dict(_mix())
    entry = MixtureConfig.from_dict(_mix(shards_from="urls.txt", revision="abc", match="*/c4/*")).entries[0]
    assert (entry.shards, entry.shards_from, entry.revision, entry.match) == (
        (),
        ("urls.txt",),
        "abc",
        "*/c4/*",
    )


def test_url_list_lines_relative_to_the_list_and_comments(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "urls.txt").write_text("# c4\n\nc4/a.jsonl\n  https://host/b.jsonl  \n")
    assert read_url_list(str(tmp_path / "lists" / "urls.txt")) == [
        str(tmp_path / "lists" / "c4" / "a.jsonl"),
        "https://host/b.jsonl",
    ]


def test_revision_pins_listed_hub_urls_and_fraction_keeps_a_spread(tmp_path):
    (tmp_path / "urls.txt").write_text(
        "\n".join(f"hf://datasets/o/r/data/{i:03d}.parquet" for i in range(10))
    )
    uris = entry_shards([], ["urls.txt"], str(tmp_path), "x/y", revision="r1", fraction=0.3)
    assert uris == [f"hf://datasets/o/r@r1/data/{i:03d}.parquet" for i in (0, 3, 6)]


def test_a_missing_list_names_it(tmp_path):
    with pytest.raises(NotFound, match="shard list not found: .*nope.txt"):
        entry_shards([], ["nope.txt"], str(tmp_path), "x/y")
    (tmp_path / "urls.txt").write_text("https://h/a/1.jsonl\n")
    with pytest.raises(NotFound, match="lists no shard matching"):
        entry_shards([], ["urls.txt"], str(tmp_path), "x/y", match="*/b/*")


def test_a_missing_targets_file_is_not_found(tmp_path):
    from elm_data.manifests.targets import load_targets

    with pytest.raises(NotFound, match="targets 'nope.yaml'"):
        load_targets("nope.yaml", tmp_path)
