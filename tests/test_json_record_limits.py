"""Records that Python's ``json`` cannot turn into objects end as one counted rejection (or, for a JSON string
a dotted lookup opens, as no object), never as a crash of the reader, and the verdict never depends on the
environment or on how deep the caller's stack is (the build and the stream call the reader from different
depths). Oracle: the line read on its own in a fresh stack, and Python's own ``int``."""

from __future__ import annotations

import json
import sys

import pytest

from elm_data.sources import readers_jsonl
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

MAX_JSON_DEPTH = readers_jsonl.MAX_JSON_DEPTH


def _read(path, subset: str = "c4") -> list:
    return list(read_shard(str(path), "redpajama", subset))


def _at_stack_depth(frames: int, fn):
    """``fn()`` called ``frames`` Python frames below this one."""
    return fn() if frames <= 0 else _at_stack_depth(frames - 1, fn)


@pytest.mark.parametrize(
    "literal",
    [b"1" + b"0" * 5000, b"-" + b"7" * 4301, b"1" * 4301],
    ids=["5001-digits", "negative-4301", "4301-digits"],
)
@pytest.mark.parametrize("with_float", [False, True])
def test_an_integer_python_will_not_convert_is_one_rejection(tmp_path, literal, with_float):
    """Python refuses to turn more than 4,300 digits into an int (a ValueError without ``msg``: the reader
    used to crash on it with AttributeError)."""
    extra = b', "score": 0.5' if with_float else b""
    path = tmp_path / "c4_part-00000.jsonl"
    path.write_bytes(b'{"text": "wide", "n": ' + literal + extra + b'}\n{"text": "after"}\n')
    items = _read(path)
    assert (items[0].reason, items[0].detail) == ("malformed_json", readers_jsonl.TOO_LONG_INTEGER)
    assert isinstance(items[1], Document) and items[1].text == "after"


def test_an_integer_of_4300_digits_is_still_kept_exactly(tmp_path):
    literal = "9" * 4300
    path = tmp_path / "c4_part-00000.jsonl"
    path.write_text(f'{{"text": "wide", "n": -{literal}, "f": 0.25}}\n')
    (doc,) = _read(path)
    assert isinstance(doc, Document) and doc.metadata == {"n": -int(literal), "f": 0.25}


def test_a_lower_interpreter_limit_is_a_rejection_not_a_crash(tmp_path):
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        path = tmp_path / "c4_part-00000.jsonl"
        path.write_bytes(b'{"text": "x", "n": ' + b"3" * 2000 + b'}\n{"text": "after"}\n')
        items = _read(path)
    finally:
        sys.set_int_max_str_digits(previous)
    assert items[0].reason == "malformed_json" and items[1].text == "after"


def _arxiv_line(meta_depth: int, arxiv_id: str) -> bytes:
    """A RedPajama arxiv record whose ``meta`` is a JSON object serialized as a string (the lookup of
    ``meta.arxiv_id`` opens it), nested ``meta_depth`` levels deep inside."""
    inner = "[" * (meta_depth - 1) + "]" * (meta_depth - 1)  # as text: json.dumps would recurse as deep
    meta = f'{{"arxiv_id": "{arxiv_id}", "m": {inner}}}'
    return json.dumps({"text": "a paper", "meta": meta}).encode()


def _ids(path) -> list:
    return [
        (type(i).__name__, getattr(i.provenance, "doc_id", None) if isinstance(i, Document) else i.reason)
        for i in _read(path, "arxiv")
    ]


def test_a_deep_json_string_in_a_looked_up_field_is_no_object_and_never_a_crash(tmp_path):
    """``meta`` as a string nested 3,000 levels: json raised RecursionError in the id lookup (a crash of the
    build and the stream); now it is no object, so the record has no native id. Within the limit the id is
    read as before."""
    path = tmp_path / "arxiv_deep.jsonl"
    lines = [_arxiv_line(3000, "deep"), _arxiv_line(MAX_JSON_DEPTH, "1234.5678"), _arxiv_line(2, "9999.0001")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs = _read(path, "arxiv")
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 3
    assert docs[0].provenance.doc_id != "deep"  # derived from the record: no native id
    assert [d.provenance.doc_id for d in docs[1:]] == ["1234.5678", "9999.0001"]


@pytest.mark.parametrize("meta_depth", [MAX_JSON_DEPTH + 1, 300, 600])
def test_the_lookups_verdict_does_not_depend_on_the_callers_stack(tmp_path, meta_depth):
    """A 300-level meta string parsed at the top of the stack but not 800 frames down would give one record
    two doc ids (build vs stream): beyond ``MAX_JSON_DEPTH`` it is no object at any depth of the stack."""
    path = tmp_path / "arxiv_deep.jsonl"
    path.write_bytes(_arxiv_line(meta_depth, "2401.00001") + b"\n" + _arxiv_line(3, "2401.00002") + b"\n")
    top = _ids(path)
    assert _at_stack_depth(800, lambda: _ids(path)) == top
    assert top[0][1] != "2401.00001" and top[1] == ("Document", "2401.00002")


@pytest.mark.parametrize(
    "line",
    [b'{"text": "t", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"text": "t", "n": ' + b"1" * 5000 + b"}"],
    ids=["nested-5000", "integer-5000-digits"],
)
def test_an_eval_task_file_python_cannot_parse_is_one_line_naming_the_line(tmp_path, line):
    """``audit contamination --tasks items.jsonl`` parses its items with ``json``: a deep line raised
    RecursionError (a traceback, not the command's one line)."""
    from elm_data.core.errors import ElmDataError
    from elm_data.manifests.eval_tasks import jsonl_task

    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' + line + b"\n")
    with pytest.raises(ElmDataError, match=r"items\.jsonl:2: not JSON"):
        jsonl_task(path)


def _copy(manifest, to):
    import shutil

    return shutil.copytree(manifest, to)


def test_a_manifest_json_nested_beyond_pythons_parser_is_a_damaged_manifest(sample_manifest, tmp_path):
    """manifest.json parsed by ``json``: a 5,000-deep file raised RecursionError (a traceback) where any other
    unparsable file is the one-line ``ManifestTampered``."""
    from elm_data.manifests.identity import ManifestTampered
    from elm_data.manifests.manifest import Manifest

    copy = _copy(sample_manifest, tmp_path / "m")
    (copy / "manifest.json").write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(ManifestTampered, match="not valid JSON"):
        Manifest(copy)


def test_a_stored_audit_nested_beyond_pythons_parser_is_no_report(sample_manifest, tmp_path):
    from elm_data.manifests.audit_store import audit_path, stored_audits
    from elm_data.manifests.manifest import Manifest

    manifest = Manifest(_copy(sample_manifest, tmp_path / "m"))
    path = audit_path(manifest.path, "contamination")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"manifest_id": ' + "[" * 5000 + "]" * 5000 + "}")
    assert stored_audits(manifest) == {}


def test_a_manifest_counted_by_json_alone_keeps_its_id_and_streams_on_the_fast_parse(
    tmp_path, tokenizer_path, tokenizer, monkeypatch
):
    """The tree before orjson parsed every line with ``json`` and its checks: a manifest it built (here: the
    same build with the fast parse turned off) must be the one the fast parse builds, id for id, and must
    stream one natural pass on the fast parse, each document checked against its ledger row. Over thousands
    of damaged lines (plain and gzip) and arXiv ids looked up in a JSON-string ``meta``."""
    import gzip

    from test_jsonl_fast_parse import _lines

    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import StreamLoader, TokenStream

    words = " ".join(f"word{i % 97}" for i in range(120))
    kept = [
        json.dumps({"text": f"{words} {i}", "meta": json.dumps({"arxiv_id": f"{i}.5", "s": i / 7})})
        for i in range(40)
    ]
    damaged = [line for line in _lines() if b"[" * 300 not in line]  # as deep as the old tree read
    (tmp_path / "c4").mkdir()
    (tmp_path / "c4" / "c4-train.00000-of-01024.jsonl").write_bytes(b"\n".join(damaged) + b"\n")
    (tmp_path / "arxiv").mkdir()
    arxiv = [line.encode() for line in kept] + damaged[:600]
    (tmp_path / "arxiv" / "arxiv_0.jsonl").write_bytes(b"\n".join(arxiv) + b"\n")
    (tmp_path / "dolma").mkdir()
    dolma = [line.replace(b'"text"', b'"id": "d", "text"', 1) for line in damaged[600:1400]]
    (tmp_path / "dolma" / "books-0000.json.gz").write_bytes(gzip.compress(b"\n".join(dolma) + b"\n"))
    (tmp_path / "mixture.yaml").write_text(
        "name: fast-parse\nfilters: {min_characters: 20, min_tokens: 4}\nsources:\n"
        "- {source: redpajama, subset: c4, shards: [c4/*.jsonl]}\n"
        "- {source: redpajama, subset: arxiv, shards: [arxiv/*.jsonl]}\n"
        "- {source: dolma, subset: gutenberg, shards: [dolma/*.json.gz]}\n"
    )
    fast = build_manifest(tmp_path / "mixture.yaml", tmp_path / "fast", tokenizer=tokenizer_path, workers=1)
    with monkeypatch.context() as m:
        m.setattr(readers_jsonl, "fast_record", lambda line: None)
        strict = build_manifest(
            tmp_path / "mixture.yaml", tmp_path / "strict", tokenizer=tokenizer_path, workers=1
        )
    assert strict.manifest_id == fast.manifest_id
    records = Manifest(tmp_path / "strict").shards
    assert sum(r.docs_kept for r in records) > 500 and sum(r.docs_rejected for r in records) > 300
    loader = StreamLoader(
        TokenStream(tmp_path / "strict", batch_size=4, seq_len=128, tokenizer=tokenizer), tensors=False
    )
    for _ in loader:
        pass
    assert sum(loader.consumed.to_dict().values()) > 0


@pytest.mark.parametrize(
    "value", ["{not json", '{"x": ' + "[" * 5000 + "]" * 5000 + "}"], ids=["bad", "deep"]
)
def test_a_by_reason_column_that_is_no_json_is_a_damaged_manifest(sample_manifest, tmp_path, value):
    """shards.parquet's by-reason columns are JSON text: one that is not (or nested beyond Python's parser)
    was an internal error with a traceback; it is the one-line ``ManifestTampered`` of every damaged file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from elm_data.manifests.identity import ManifestTampered
    from elm_data.manifests.manifest import Manifest

    copy = _copy(sample_manifest, tmp_path / "m")
    table = pq.read_table(copy / "shards.parquet")
    column = table.column("rejected_by_reason").to_pylist()
    column[0] = value
    at = table.schema.get_field_index("rejected_by_reason")
    table = table.set_column(at, table.schema.field(at), pa.array(column, table.schema.field(at).type))
    pq.write_table(table, copy / "shards.parquet")
    with pytest.raises(ManifestTampered, match="shards.parquet: damaged manifest"):
        Manifest(copy)
