"""The read path is explicit: a reader is handed the verified view itself, never a process-global URL to it.

Before, ``sources/blocks.py`` registered an ``elm-blocks://`` fsspec protocol at import and the readers opened
``elm-blocks://pid-N``; ``read_shard`` took the stream's ``first_index`` and ``parquet_metadata`` as loose
parameters. Both seekable raw files share one base for their position (``sources/seekable.py``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import json
import random

import fsspec
import pytest
from test_code_shape import ROOT, production_files

from elm_data.sources.blocks import VerifiedView, index_blocks, open_verified
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard, sha256_of, shard_format_of
from elm_data.sources.remote import RetryingReader
from elm_data.sources.seekable import SeekableReader


def _module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts if rel.parts[0] == "elm_data" else ("elm_data", *rel.parts)
    return ".".join(p for p in parts if p != "__init__")


def test_no_production_module_registers_a_filesystem_protocol():
    """The whole surface: no production file calls fsspec's ``register_implementation`` (read with
    ``ast``)."""
    calls = []
    for path in production_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and "register_implementation" in ast.unparse(node.func):
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []


def test_importing_the_readers_leaves_fsspec_registry_as_it_was():
    for name in ("elm_data.sources.blocks", "elm_data.sources.readers", "elm_data.pipeline.stream.reading"):
        importlib.import_module(name)
    ours = {p: c for p, c in fsspec.registry.items() if getattr(c, "__module__", "").startswith("elm_data")}
    assert ours == {} and "elm-blocks" not in fsspec.registry


def test_read_shard_takes_what_a_user_of_the_readers_needs():
    """Which shard, which records, its format and limit, and where its bytes are: a local copy or a view."""
    wanted = "uri source subset shard_sha256 skip select fmt max_record_bytes local_path view"
    assert list(inspect.signature(read_shard).parameters) == wanted.split()


def test_a_view_reads_exactly_what_the_file_reads_in_every_sample_format(sample_shards):
    """Every shard of the sample corpus (parquet, JSONL, gzip, zstd) through a whole-file view, twice over one
    view (the reader's file is closed, the view is not), equals the plain read; the oracle is the plain
    reader."""
    for uri, source, subset in sample_shards:
        fmt = shard_format_of(uri, source, subset)
        sha, _, blocks = index_blocks(uri, fmt)
        plain = list(read_shard(uri, source, subset, sha))
        with open_verified(uri, blocks) as view:
            first = list(read_shard(uri, source, subset, sha, view=view))
            again = list(read_shard(uri, source, subset, sha, 2, view=view))  # format detected from the view
            assert not view.closed
        assert first == plain, uri
        assert again == [
            i for i in plain if (i.provenance.index if isinstance(i, Document) else i.index) >= 2
        ]


def test_a_block_view_numbers_its_records_from_the_block(tmp_path):
    rng = random.Random(3)
    lines = [json.dumps({"text": "w " * rng.randint(1, 300), "id": str(i)}) + "\n" for i in range(200)]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(lines))
    sha, _, blocks = index_blocks(str(path), "jsonl", block_bytes=2000)
    assert len(blocks) > 5
    whole = list(read_shard(str(path), "pile", "default", sha))
    for b in blocks:
        with open_verified(str(path), blocks, b.start, b.end) as view:
            assert view.first_record == b.first_record
            part = list(read_shard(str(path), "pile", "default", sha, b.first_record, view=view))
        assert part == whole[b.first_record : b.first_record + b.records]


def test_a_view_needs_the_shards_sha256_and_no_local_path(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n')
    _, _, blocks = index_blocks(str(path), "jsonl")
    with open_verified(str(path), blocks) as view:
        with pytest.raises(ValueError, match="sha256"):
            read_shard(str(path), "pile", "default", view=view)
        with pytest.raises(ValueError, match="local_path"):
            read_shard(str(path), "pile", "default", sha256_of(str(path)), local_path=str(path), view=view)


def test_the_seekable_raw_files_share_one_base_and_seek_like_bytesio(tmp_path):
    """Both raw files keep their position in the base and define none of its methods; each seeks like
    BytesIO."""
    for cls in (VerifiedView, RetryingReader):
        assert issubclass(cls, SeekableReader)
        assert not {"seek", "tell", "readable", "seekable"} & set(vars(cls)), cls
    data = bytes(range(256)) * 40
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    _, _, blocks = index_blocks(str(path), "jsonl", block_bytes=1000)
    with fsspec.open("memory://elm-data-tests/read-path.bin", "wb") as f:
        f.write(data)
    try:
        for raw in (
            VerifiedView(str(path), blocks, 0, len(data)),
            RetryingReader("memory://elm-data-tests/read-path.bin"),
        ):
            oracle = io.BytesIO(data)
            for offset, whence in [(10, 0), (5, 1), (-7, 2), (-3, 1), (0, 2), (100, 0), (0, 1)]:
                assert raw.seek(offset, whence) == oracle.seek(offset, whence)
                assert raw.tell() == oracle.tell() and raw.read(13) == oracle.read(13)
            with pytest.raises(ValueError, match="whence"):
                raw.seek(0, 3)
            raw.close()
    finally:
        fsspec.filesystem("memory").rm("/elm-data-tests/read-path.bin")
