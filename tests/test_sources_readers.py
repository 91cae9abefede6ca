"""Readers over the sample corpus in every native format: documents, provenance, rejections, skip=, fsspec
URLs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
import zstandard

from elm_data.core.errors import NotFound
from elm_data.sources.document import Document, Rejection, derived_doc_id
from elm_data.sources.readers import fetched, read_shard, sha256_of, shard_format, size_of


def _native_records(uri: str) -> list[dict]:
    """The shard's records parsed with plain pyarrow/json/gzip/zstandard, independent of the readers."""
    if uri.endswith(".parquet"):
        return pq.read_table(uri).to_pylist()
    raw = Path(uri).read_bytes()
    if uri.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif uri.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def _dig(record: dict, dotted: str | None):
    for part in (dotted or "").split(".") if dotted else []:
        record = record.get(part) if isinstance(record, dict) else None
    return record if dotted else None


def test_every_sample_shard_reads_whole_with_provenance(sample_shards):
    from elm_data.sources.registry import get_subset

    assert len(sample_shards) == 27
    for uri, source, subset in sample_shards:
        spec = get_subset(source, subset)
        sha = hashlib.sha256(Path(uri).read_bytes()).hexdigest()
        items = list(read_shard(uri, source, subset))
        records = _native_records(uri)
        assert all(isinstance(i, Document) for i in items), [i for i in items if isinstance(i, Rejection)]
        assert len(items) == len(records) == 10
        text_field = "content" if source == "refinedweb" else "text"
        for index, (doc, record) in enumerate(zip(items, records, strict=True)):
            p = doc.provenance
            assert (p.source, p.subset, p.shard_uri, p.shard_sha256, p.index) == (
                source,
                subset,
                uri,
                sha,
                index,
            )
            assert doc.text == record[text_field]
            native = _dig(record, spec.id_field)
            if native is not None:
                assert p.native_id == p.doc_id == str(native)
            else:
                assert p.native_id is None and p.doc_id == derived_doc_id(sha, index)
            if subset == "github":
                assert p.licence == record["meta"]["license"]
            else:
                assert p.licence == spec.licence
            assert text_field not in doc.metadata
            json.dumps(doc.metadata)  # JSON-safe
        if source == "refinedweb":
            assert set(items[0].metadata) == {"url", "timestamp", "dump", "segment", "image_urls"}
            assert isinstance(items[0].metadata["timestamp"], str)
        if source == "dolma":
            assert {"id", "source", "added", "metadata"} <= set(items[0].metadata)


def test_native_ids_are_used_where_the_corpus_has_them(sample_shards):
    kinds = {}
    for uri, source, subset in sample_shards:
        doc = next(iter(read_shard(uri, source, subset)))
        kinds[f"{source}/{subset}"] = doc.provenance.native_id is not None
    assert (
        kinds["redpajama/arxiv"]
        and kinds["redpajama/github"]
        and kinds["dolma/wiki"]
        and kinds["dolma/stack"]
    )
    assert not kinds["refinedweb/default"] and not kinds["redpajama/c4"] and not kinds["pile/default"]


def test_pile_format_is_detected_by_extension(sample_shards):
    pile = [(u, s, b) for u, s, b in sample_shards if s == "pile"]
    assert sorted(shard_format(u, s, b) for u, s, b in pile) == ["jsonl.zst", "parquet", "parquet"]
    for uri, source, subset in pile:
        assert len([d for d in read_shard(uri, source, subset) if isinstance(d, Document)]) == 10


def test_given_sha_is_used_without_rehashing(sample_shards):
    uri, source, subset = sample_shards[0]
    doc = next(iter(read_shard(uri, source, subset, shard_sha256="ab" * 32)))
    assert doc.provenance.shard_sha256 == "ab" * 32
    assert doc.provenance.doc_id == derived_doc_id("ab" * 32, 0)


@pytest.mark.parametrize("skip", [1, 3, 4, 7, 9, 10, 25])
def test_skip_drops_records_and_keeps_absolute_indices(sample_shards, skip):
    for uri, source, subset in sample_shards:
        full = list(read_shard(uri, source, subset))
        tail = list(read_shard(uri, source, subset, skip=skip))
        assert [d.provenance.index for d in tail] == list(range(skip, len(full)))
        assert [d.text for d in tail] == [d.text for d in full[skip:]]


def test_skip_on_parquet_drops_whole_row_groups(sample_shards):
    uri = next(u for u, s, _ in sample_shards if s == "refinedweb")
    groups = [
        pq.ParquetFile(uri).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(uri).num_row_groups)
    ]
    assert len(groups) >= 2
    tail = list(read_shard(uri, "refinedweb", "default", skip=groups[0]))
    assert tail[0].provenance.index == groups[0]
    with pytest.raises(ValueError):
        read_shard(uri, "refinedweb", "default", skip=-1)


def test_every_corrupt_example_gives_its_counted_rejections(corrupt):
    assert len(corrupt) >= 15
    for name, ex in corrupt.items():
        items = list(read_shard(str(ex.path), ex.source, ex.subset))
        docs = [i for i in items if isinstance(i, Document)]
        rejections = [i for i in items if isinstance(i, Rejection)]
        assert len(docs) == ex.documents, name
        assert [(r.index, r.reason, r.count) for r in rejections] == list(ex.rejections), name
        for r in rejections:
            assert r.shard_uri == str(ex.path) and r.detail and (r.source, r.subset) == (ex.source, ex.subset)
        if ex.records is not None:  # nothing lost: every record is a document or counted in a rejection
            assert len(docs) + sum(r.count for r in rejections) == ex.records, name
        assert [d.provenance.index for d in docs] == sorted({d.provenance.index for d in docs})


def test_truncation_details_say_what_cannot_be_known(corrupt):
    for name in ("truncated_gzip", "truncated_zstd"):
        ex = corrupt[name]
        rejection = [i for i in read_shard(str(ex.path), ex.source, ex.subset) if isinstance(i, Rejection)][0]
        assert ex.documents > 0  # the complete lines before the break are still documents
        assert rejection.index == ex.documents
        assert "unknowable" in rejection.detail and "truncated" in rejection.detail


def test_skip_past_bad_lines(corrupt):
    ex = corrupt["mixed_lines"]
    full = list(read_shard(str(ex.path), ex.source, ex.subset))
    for skip in (1, 4, 8, 9, 10):
        tail = list(read_shard(str(ex.path), ex.source, ex.subset, skip=skip))
        assert [(type(i), i.index if isinstance(i, Rejection) else i.provenance.index) for i in tail] == [
            (type(i), i.index if isinstance(i, Rejection) else i.provenance.index) for i in full[skip:]
        ]


def test_wrong_schema_with_skip_counts_only_the_rest(corrupt):
    ex = corrupt["parquet_wrong_schema"]
    (rejection,) = read_shard(str(ex.path), ex.source, ex.subset, skip=3)
    assert (rejection.index, rejection.count) == (3, 4)
    assert "content" in rejection.detail


def test_missing_file_is_an_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope" / "c4-train.00000-of-01024.jsonl"
    with pytest.raises(NotFound, match="c4-train.00000"):
        read_shard(str(missing), "redpajama", "c4")
    with pytest.raises(FileNotFoundError, match="memory://"):
        read_shard("memory://elm-data-tests/missing.parquet", "refinedweb", "default")
    with pytest.raises(NotFound):
        sha256_of(str(missing))
    with pytest.raises(KeyError, match="known"):
        read_shard(str(missing), "redpajama", "common_crawl")


def test_hash_and_size_through_fsspec(sample_shards):
    uri = sample_shards[0][0]
    data = Path(uri).read_bytes()
    assert sha256_of(uri) == sha256_of(f"file://{uri}") == hashlib.sha256(data).hexdigest()
    assert size_of(uri) == os.path.getsize(uri) == len(data)
    with fsspec.open("memory://elm-data-tests/hash/x.bin", "wb") as f:
        f.write(data)
    assert sha256_of("memory://elm-data-tests/hash/x.bin") == hashlib.sha256(data).hexdigest()
    assert size_of("memory://elm-data-tests/hash/x.bin") == len(data)


def test_file_and_memory_urls_read_like_local_paths(sample_shards):
    seen_formats = set()
    for uri, source, subset in sample_shards[::2] + [s for s in sample_shards if s[0].endswith(".zst")]:
        local = list(read_shard(uri, source, subset))
        memory_uri = f"memory://elm-data-tests/{source}/{subset}/{Path(uri).name}"
        with fsspec.open(memory_uri, "wb") as f:
            f.write(Path(uri).read_bytes())
        for other in (f"file://{uri}", memory_uri):
            items = list(read_shard(other, source, subset))
            assert [d.text for d in items] == [d.text for d in local]
            assert [d.provenance.doc_id for d in items] == [d.provenance.doc_id for d in local]
            assert {d.provenance.shard_uri for d in items} == {other}
        seen_formats.add(shard_format(uri, source, subset))
    assert seen_formats == {"parquet", "jsonl", "jsonl.gz", "jsonl.zst"}


def test_fetched_reads_a_remote_shard_once_and_keeps_its_uri(sample_shards, monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    uri, source, subset = next(s for s in sample_shards if s[0].endswith(".json.gz"))
    memory_uri = f"memory://elm-data-tests/fetched/{Path(uri).name}"
    with fsspec.open(memory_uri, "wb") as f:
        f.write(Path(uri).read_bytes())
    opens: list[str] = []
    real_open = MemoryFileSystem._open
    monkeypatch.setattr(
        MemoryFileSystem,
        "_open",
        lambda self, path, *a, **kw: opens.append(path) or real_open(self, path, *a, **kw),
    )
    with fetched(memory_uri) as local:
        assert Path(local).read_bytes() == Path(uri).read_bytes()
        items = list(read_shard(memory_uri, source, subset, shard_sha256=sha256_of(local), local_path=local))
    assert len(opens) == 1  # one download serves the hash and the read
    assert not Path(local).exists()  # the copy is gone afterwards
    assert [d.text for d in items] == [d.text for d in read_shard(uri, source, subset)]
    assert {d.provenance.shard_uri for d in items} == {memory_uri}  # provenance names the shard, not the copy
    with fetched(uri) as same:  # a local file is used in place
        assert same == uri
    missing = fetched("memory://elm-data-tests/fetched/missing.json.gz")
    with pytest.raises(NotFound, match="memory://elm-data-tests/fetched/missing"), missing:
        pass


def test_multi_member_gzip_multi_frame_zstd_and_crlf(tmp_path):
    lines = [
        json.dumps({"text": f"document number {i} " * 20, "meta": {}}).encode() + b"\n" for i in range(6)
    ]
    gz = tmp_path / "stack-0000.json.gz"
    gz.write_bytes(gzip.compress(b"".join(lines[:3]), mtime=0) + gzip.compress(b"".join(lines[3:]), mtime=0))
    zst = tmp_path / "01.jsonl.zst"
    cctx = zstandard.ZstdCompressor()
    zst.write_bytes(cctx.compress(b"".join(lines[:2])) + cctx.compress(b"".join(lines[2:])))
    crlf = tmp_path / "c4-train.00000-of-01024.jsonl"
    crlf.write_bytes(b"".join(line.replace(b"\n", b"\r\n") for line in lines))
    for path, source, subset in ((gz, "dolma", "stack"), (zst, "pile", "default"), (crlf, "redpajama", "c4")):
        items = list(read_shard(str(path), source, subset))
        assert [d.text for d in items] == [f"document number {i} " * 20 for i in range(6)], path.name
        assert [d.provenance.index for d in items] == list(range(6))


def _bytes_read_by_this_process() -> int:
    counters = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(counters["rchar"])


@pytest.mark.skipif(
    not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io to count bytes read"
)
def test_reading_is_lazy(tmp_path):
    """The first document of a 32 MB shard costs a chunk of reading, not the shard (constant memory)."""
    line = (
        json.dumps({"text": "word " * 400, "meta": {"url": "https://example.com", "language": "en"}}) + "\n"
    )
    path = tmp_path / "c4-train.00000-of-01024.jsonl"
    path.write_text(line * (32_000_000 // len(line)))
    items = read_shard(str(path), "redpajama", "c4", shard_sha256="0" * 64)
    before = _bytes_read_by_this_process()
    first = next(items)
    read = _bytes_read_by_this_process() - before
    assert first.provenance.index == 0
    size = path.stat().st_size
    assert read < size // 8, f"read {read:,} bytes of a {size:,}-byte shard for one document"
    items.close()
