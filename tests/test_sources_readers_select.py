"""read_shard(select=...): only selected records are decoded; what is read equals the full read filtered."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from elm_data.sources import readers_jsonl, readers_parquet
from elm_data.sources.document import (
    REJECT_SCHEMA,
    REJECT_TRUNCATED,
    REJECT_UNREADABLE,
    Document,
    Rejection,
)
from elm_data.sources.readers import read_shard

SHARD_LEVEL = {REJECT_SCHEMA, REJECT_TRUNCATED, REJECT_UNREADABLE}  # yielded whatever the selection


def _index(item: Document | Rejection) -> int:
    return item.provenance.index if isinstance(item, Document) else item.index


def _expected(full: list, chosen: set[int], skip: int = 0) -> list:
    return [
        i
        for i in full
        if (isinstance(i, Rejection) and i.reason in SHARD_LEVEL)
        or (_index(i) >= skip and _index(i) in chosen)
    ]


SELECTIONS = {
    "even": lambda n: {i for i in range(n) if i % 2 == 0},
    "sparse": lambda n: {1, n - 1},
    "none": lambda n: set(),
    "all": lambda n: set(range(n)),
}


def test_selected_records_equal_the_full_read_filtered_for_every_format(sample_shards):
    formats = set()
    for uri, source, subset in sample_shards:
        formats.add(Path(uri).name.split(".", 1)[1])
        full = list(read_shard(uri, source, subset))
        assert all(isinstance(i, Document) for i in full)
        for name, make in SELECTIONS.items():
            chosen = make(len(full))
            as_set = list(read_shard(uri, source, subset, select=chosen))
            as_predicate = list(read_shard(uri, source, subset, select=chosen.__contains__))
            assert as_set == as_predicate == _expected(full, chosen), (uri, name)
        skipped = list(read_shard(uri, source, subset, skip=3, select=lambda i: i % 3 == 0))
        assert skipped == _expected(full, {i for i in range(len(full)) if i % 3 == 0}, skip=3), uri
    assert formats >= {"jsonl", "json.gz", "jsonl.zst", "parquet"}


def test_bad_records_that_are_not_selected_are_not_seen_and_shard_failures_always_are(corrupt):
    for name, ex in corrupt.items():
        full = list(read_shard(str(ex.path), ex.source, ex.subset))
        n = max([_index(i) + 1 for i in full] + [ex.records or 0])
        for make in SELECTIONS.values():
            chosen = make(n)
            got = list(read_shard(str(ex.path), ex.source, ex.subset, select=chosen))
            assert got == _expected(full, chosen), (name, sorted(chosen))


def test_unselected_jsonl_lines_are_never_parsed(sample_shards, monkeypatch):
    parsed: list[int] = []
    real = readers_jsonl.parse_line

    def spy(ctx, index, line):
        parsed.append(index)
        return real(ctx, index, line)

    monkeypatch.setattr(readers_jsonl, "parse_line", spy)
    jsonl = [s for s in sample_shards if not s[0].endswith(".parquet")]
    assert len(jsonl) > 10
    for uri, source, subset in jsonl:
        parsed.clear()
        items = list(read_shard(uri, source, subset, select={2, 7}))
        assert parsed == [2, 7] == [i.provenance.index for i in items], uri


def test_parquet_reads_only_row_groups_with_selected_rows(sample_shards, monkeypatch):
    (uri, source, subset), *_ = [s for s in sample_shards if s[0].endswith(".parquet")]
    sizes = [
        pq.ParquetFile(uri).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(uri).num_row_groups)
    ]
    assert len(sizes) >= 2
    read_groups: list[list[int]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        read_groups.append(list(row_groups))
        return real(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(readers_parquet.pq.ParquetFile, "iter_batches", spy)
    last_group_first_row = sum(sizes[:-1])
    items = list(read_shard(uri, source, subset, select={last_group_first_row}))
    assert [i.provenance.index for i in items] == [last_group_first_row]
    assert read_groups == [[len(sizes) - 1]]
    read_groups.clear()
    assert list(read_shard(uri, source, subset, select=set())) == [] and read_groups == []


def test_a_predicate_is_asked_lazily_once_per_index_in_order(sample_shards):
    for uri, source, subset in (
        sample_shards[0],
        next(s for s in sample_shards if s[0].endswith(".parquet")),
    ):
        asked: list[int] = []
        wanted = [4]

        def select(i: int, asked: list[int] = asked, wanted: list[int] = wanted) -> bool:
            asked.append(i)
            return i == wanted[0]

        items = read_shard(uri, source, subset, skip=2, select=select)
        assert next(items).provenance.index == 4 and asked == [2, 3, 4]
        wanted[0] = 8  # a stateful caller: what it wants next may depend on what it has consumed
        assert next(items).provenance.index == 8 and asked == [2, 3, 4, 5, 6, 7, 8]
        assert list(items) == [] and asked == list(range(2, 10)), uri
