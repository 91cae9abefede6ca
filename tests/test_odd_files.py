"""Files that lie or are odd (issue 11, section 2), through the real readers and through a manifest build.

Each class ends as data read exactly, as counted rejections with location and reason, or as a build
failure naming the file; never a crash, a phantom record or a silent loss.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from odd_files import REJECT_INVALID_UNICODE, write_odd_files

from elm_data.sources.document import Document, Rejection
from elm_data.sources.readers import read_shard

CLASSES = {
    "lone_surrogate",
    "gzip_named_jsonl",
    "zstd_named_jsonl",
    "plain_named_gz",
    "parquet_named_zst",
    "xz_named_jsonl",
    "empty_gzip",
    "empty_zstd",
    "empty_jsonl",
    "parquet_dictionary_text",
    "parquet_string_view_text",
    "parquet_dictionary_columns",
    "meta_as_json_string",
    "parquet_corrupt_row_group",
    "gzip_trailing_garbage",
    "gzip_trailing_garbage_no_newline",
    "zstd_trailing_garbage",
    "zstd_trailing_short_garbage",
    "bom_jsonl",
    "bom_gzip",
    "parquet_invalid_utf8",
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return write_odd_files(tmp_path_factory.mktemp("odd"))


def _split(items):
    items = list(items)
    docs = [i for i in items if isinstance(i, Document)]
    return docs, [i for i in items if isinstance(i, Rejection)]


def test_the_corpus_has_every_class(odd):
    from elm_data.sources import document

    assert set(odd) == CLASSES
    assert document.REJECT_INVALID_UNICODE == REJECT_INVALID_UNICODE


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_odd_file_reads_exactly_or_is_rejected_with_its_location(odd, name):
    f = odd[name]
    docs, rejections = _split(list(read_shard(str(f.path), f.source, f.subset)))
    assert [d.text for d in docs] == list(f.texts)
    assert [(r.index, r.reason, r.count) for r in rejections] == list(f.rejections)
    assert len(docs) + sum(r.count for r in rejections) == f.records  # nothing lost, nothing invented
    for r in rejections:
        assert r.shard_uri == str(f.path) and r.detail
        r.detail.encode("utf-8")  # a detail never carries the bad characters on
    for d in docs:
        d.text.encode("utf-8")
        json.dumps(d.metadata, ensure_ascii=False).encode("utf-8")
    if f.native_ids is not None:
        assert [d.provenance.native_id for d in docs] == list(f.native_ids)
        assert [d.provenance.doc_id for d in docs] == list(f.native_ids)
    if f.licences is not None:
        assert [d.provenance.licence for d in docs] == list(f.licences)


def test_rejection_details_name_what_is_wrong(odd):
    def details(name):
        f = odd[name]
        return [r.detail for r in read_shard(str(f.path), f.source, f.subset) if isinstance(r, Rejection)]

    assert all("surrogate" in d for d in details("lone_surrogate"))
    assert "U+D800 in text" in details("lone_surrogate")[0] and "meta.title" in details("lone_surrogate")[1]
    assert "xz" in details("xz_named_jsonl")[0]
    for name in ("empty_gzip", "empty_zstd"):
        assert "empty file (0 bytes)" in details(name)[0]
    assert "row group 1" in details("parquet_corrupt_row_group")[0]
    for name in ("gzip_trailing_garbage", "zstd_trailing_garbage", "zstd_trailing_short_garbage"):
        assert "trailing garbage" in details(name)[0]


def test_selected_reads_give_the_items_of_a_full_read(odd):
    names = (
        "parquet_corrupt_row_group",
        "parquet_invalid_utf8",
        "gzip_trailing_garbage_no_newline",
        "lone_surrogate",
        "bom_jsonl",
    )
    for name in names:
        f = odd[name]
        full = list(read_shard(str(f.path), f.source, f.subset))
        docs = [d.provenance.index for d in full if isinstance(d, Document)]
        chosen = set(docs[-2:])
        picked, _ = _split(read_shard(str(f.path), f.source, f.subset, select=chosen))
        assert [d.provenance.index for d in picked] == sorted(chosen), name
        tail, _ = _split(read_shard(str(f.path), f.source, f.subset, skip=docs[-1]))
        assert [d.text for d in tail] == [f.texts[-1]], name
        everything = list(read_shard(str(f.path), f.source, f.subset, select=range(f.records)))
        assert [_key(i) for i in everything] == [_key(i) for i in full], name


def _key(item):
    if isinstance(item, Document):
        return ("doc", item.provenance.index, item.text)
    return ("rejection", item.index, item.reason, item.count)


def test_detection_reads_the_local_copy_and_names_the_shard(odd):
    import fsspec

    for name in ("gzip_named_jsonl", "plain_named_gz", "parquet_named_zst", "empty_gzip"):
        f = odd[name]
        copy = f"memory://elm-data-tests/odd-copy/{name}.bin"  # no telling extension: the bytes decide
        with fsspec.open(copy, "wb") as out:
            out.write(f.path.read_bytes())
        docs, rejections = _split(
            read_shard(str(f.path), f.source, f.subset, shard_sha256="0" * 64, local_path=copy)
        )
        assert [d.text for d in docs] == list(f.texts), name
        assert [(r.index, r.reason, r.count) for r in rejections] == list(f.rejections), name
        assert {d.provenance.shard_uri for d in docs} <= {str(f.path)}


@pytest.mark.parametrize("group", [0, 1, 2])
@pytest.mark.parametrize("selected", [False, True])
def test_a_corrupt_row_group_costs_only_its_rows(tmp_path, group, selected):
    import pyarrow as pa
    from odd_files import _corrupt_row_group, _parquet_bytes

    texts = [f"row {i} " * 40 for i in range(12)]
    path = tmp_path / "train-00000-of-01650-odd.parquet"
    path.write_bytes(_corrupt_row_group(_parquet_bytes(pa.table({"text": texts}), row_group_size=4), group))
    select = set(range(12)) if selected else None
    docs, rejections = _split(read_shard(str(path), "pile", "default", select=select))
    broken = range(4 * group, 4 * group + 4)
    assert [d.provenance.index for d in docs] == [i for i in range(12) if i not in broken]
    assert [d.text for d in docs] == [texts[i] for i in range(12) if i not in broken]
    assert [(r.index, r.count) for r in rejections] == [(4 * group, 4)]
    assert f"row group {group}" in rejections[0].detail


def test_detect_format_by_magic_then_json_then_name():
    from elm_data.sources.readers_common import UnsupportedFormat, detect_format

    assert detect_format(b"\x1f\x8b\x08\x00", "a.jsonl") == "jsonl.gz"
    assert detect_format(b"\x28\xb5\x2f\xfd", "a.parquet") == "jsonl.zst"
    assert detect_format(b"\x50\x2a\x4d\x18\x04\x00", "a.jsonl") == "jsonl.zst"  # a zstd skippable frame
    assert detect_format(b"PAR1\x15\x04", "a.jsonl.zst") == "parquet"
    assert detect_format(b'\xef\xbb\xbf  {"text"', "a.json.gz") == "jsonl"
    assert detect_format(b"not gzip", "a.json.gz") == "jsonl.gz"  # the gzip reader reports it unreadable
    assert detect_format(b"", "a.jsonl.zst") == "jsonl.zst"
    assert detect_format(b"", "shard-0001", default="parquet") == "parquet"
    assert detect_format(b"garbage", "shard-0001") == "jsonl"
    with pytest.raises(UnsupportedFormat, match="bzip2"):
        detect_format(b"BZh91AY", "a.jsonl")


def test_dropped_samples_write_lone_surrogates_safely(tmp_path):
    from elm_data.pipeline.dropped import DroppedSamples

    samples = DroppedSamples(2)
    samples.offer("filtered:short", ("s", 0), {"text": "bad \ud800 text", "index": 0})
    samples.offer("filtered:short", ("s", 1), {"text": "caf\u00e9", "index": 1})
    lines = samples.write(tmp_path / "dropped.jsonl").read_bytes().decode("utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["bad \ud800 text", "caf\u00e9"]  # exact, escaped
    assert "café" in lines[1]  # records without a surrogate keep their raw UTF-8


def _mixture(odd, path):
    sources = [{"source": f.source, "subset": f.subset, "shards": [str(f.path)]} for f in odd.values()]
    path.write_text(yaml.safe_dump({"sources": sources}))
    return path


@pytest.fixture(scope="module")
def built(odd, tokenizer_path, tmp_path_factory):
    """The odd files' manifest: first refused (``BuildFailed``), then built with ``accept_damaged``."""
    from elm_data.manifests.build import BuildFailed, build_manifest

    tmp = tmp_path_factory.mktemp("odd_manifest")
    mixture = _mixture(odd, tmp / "mixture.yaml")
    with pytest.raises(BuildFailed) as failed:
        build_manifest(mixture, tmp / "m", tokenizer=tokenizer_path, workers=1, dropped_samples=5)
    assert not (tmp / "m").exists()
    build_manifest(
        mixture, tmp / "m", tokenizer=tokenizer_path, workers=1, accept_damaged=True, dropped_samples=5
    )
    return failed.value, tmp / "m"


def test_manifest_build_fails_naming_each_damaged_file(odd, built):
    failed, _ = built
    assert {uri for uri, _ in failed.failures} == {str(f.path) for f in odd.values() if f.damaged}
    assert all("damaged shard" in message for _, message in failed.failures)


def test_accepted_manifest_accounts_for_every_record(odd, built):
    from elm_data.manifests.manifest import Manifest

    manifest = Manifest(built[1])
    by_uri = {f"{f.path}": f for f in odd.values()}
    assert sorted(r.uri for r in manifest.shards) == sorted(by_uri)
    for record in manifest.shards:
        f = by_uri[record.uri]
        expected = Counter()
        for _, reason, count in f.rejections:
            expected[reason] += count
        assert record.rejected_by_reason == dict(sorted(expected.items())), f.name
        assert record.docs_kept + record.docs_filtered == len(f.texts), f.name
        assert (
            record.docs_read == record.docs_kept + record.docs_filtered + record.docs_rejected == f.records
        ), f.name
        ledger = manifest.documents(record.shard).to_pylist()
        assert sum(row["count"] for row in ledger) == f.records, f.name
        rejected = [
            (row["index"], row["reason"], row["count"]) for row in ledger if row["status"] == "rejected"
        ]
        assert rejected == list(f.rejections), f.name
    dropped = (built[1] / "dropped_samples.jsonl").read_bytes().decode("utf-8")
    assert "rejected" in dropped and "invalid_unicode" in dropped and "lone surrogate escape" in dropped


def test_a_natural_pass_of_the_stream_equals_the_accepted_manifest(built, tokenizer):
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import StreamLoader, TokenStream
    from elm_data.pipeline.stream.consumed import expected_natural_pass

    stream = TokenStream(built[1], batch_size=4, seq_len=256, weights="natural", tokenizer=tokenizer)
    loader = StreamLoader(stream)
    for _ in loader:
        pass
    expected = {k: v for k, v in expected_natural_pass(Manifest(built[1]).shards).items() if v}
    assert loader.consumed.to_dict() == expected  # invariant 2 holds on odd files: no phantom, no lost record
