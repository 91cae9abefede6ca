"""The block index: blocks tile a shard at record boundaries, each with its sha256; a view serves verified bytes."""

from __future__ import annotations

import gzip
import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elm_data.sources.blocks import BlockChanged, VerifiedView, index_blocks


def check_tiling(data: bytes, blocks) -> None:
    assert blocks[0].start == 0 and blocks[-1].end == len(data)
    assert all(a.end == b.start for a, b in zip(blocks, blocks[1:], strict=False))
    assert all(hashlib.sha256(data[b.start : b.end]).hexdigest() == b.sha256 for b in blocks)


@pytest.mark.parametrize("final_newline", [True, False])
def test_jsonl_blocks_are_line_aligned_and_count_lines(tmp_path, final_newline):
    rng = random.Random(1)
    lines = [json.dumps({"text": "x" * rng.randint(0, 3000), "i": i}) for i in range(200)]
    data = ("\n".join(lines) + ("\n" if final_newline else "")).encode()
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    sha, size, blocks = index_blocks(str(path), "jsonl", block_bytes=8192)
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data) and len(blocks) > 10
    check_tiling(data, blocks)
    assert all(data[b.end - 1 : b.end] == b"\n" for b in blocks[:-1])  # every cut just after a newline
    assert all(b.end - b.start >= 8192 for b in blocks[:-1])  # about block_bytes each (never less)
    assert [b.first_record for b in blocks] == [sum(x.records for x in blocks[:i]) for i in range(len(blocks))]
    assert sum(b.records for b in blocks) == len(lines)
    for b in blocks:  # each block's first record is the line that starts it
        first = data[b.start :].split(b"\n", 1)[0]
        assert json.loads(first)["i"] == b.first_record


def test_parquet_blocks_are_magic_row_groups_and_footer(tmp_path):
    table = pa.table({"text": [f"doc {i} " * 50 for i in range(30)], "id": list(range(30))})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=10)
    data = path.read_bytes()
    _, _, blocks = index_blocks(str(path), "parquet")
    check_tiling(data, blocks)
    assert [(b.first_record, b.records) for b in blocks] == [(0, 0), (0, 10), (10, 10), (20, 10), (30, 0)]
    assert blocks[0].end == 4 and data[:4] == b"PAR1"


def test_a_compressed_shard_is_one_block(tmp_path):
    path = tmp_path / "a.json.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\n'))
    sha, size, blocks = index_blocks(str(path), "jsonl.gz")
    assert len(blocks) == 1 and blocks[0].sha256 == sha and (blocks[0].start, blocks[0].end) == (0, size)


def test_a_view_serves_verified_bytes_and_refuses_a_changed_block_before_any_byte(tmp_path):
    data = b"".join(json.dumps({"text": "y" * n}).encode() + b"\n" for n in range(0, 4000, 37))
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    _, _, blocks = index_blocks(str(path), "jsonl", block_bytes=4096)
    view = VerifiedView(str(path), blocks, blocks[1].start, blocks[2].end)
    assert view.read() == data[blocks[1].start : blocks[2].end]
    assert view.bytes_loaded == blocks[2].end - blocks[1].start  # exactly the two blocks, nothing else
    broken = bytearray(data)
    broken[blocks[2].start + 5] ^= 1
    path.write_bytes(bytes(broken))
    view = VerifiedView(str(path), blocks, blocks[2].start, blocks[2].end)
    with pytest.raises(BlockChanged, match=r"\(block 2\)"):
        view.read(1)
