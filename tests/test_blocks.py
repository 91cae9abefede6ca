"""The block index: blocks tile a shard at record boundaries, each with its sha256; a view serves verified
bytes."""

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
    assert [b.first_record for b in blocks] == [
        sum(x.records for x in blocks[:i]) for i in range(len(blocks))
    ]
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


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst"])
def test_members_and_frames_make_blocks_that_read_alone(tmp_path, fmt):
    import zstandard

    from elm_data.sources.blocks import open_verified
    from elm_data.sources.document import Document
    from elm_data.sources.readers import read_shard

    rng = random.Random(2)
    docs = [{"text": " ".join(["word"] * rng.randint(5, 400)), "id": str(i)} for i in range(120)]
    members, i = [], 0
    while i < len(docs):  # members of 1-9 whole lines; one member ends mid-line, so no cut may fall there
        n = rng.randint(1, 9)
        text = "".join(json.dumps(d) + "\n" for d in docs[i : i + n]).encode()
        members.append(text)
        i += n
    members[3], members[4] = members[3][:-10], members[3][-10:] + members[4]
    pack = gzip.compress if fmt == "jsonl.gz" else zstandard.ZstdCompressor().compress
    data = b"".join(pack(m) for m in members)
    path = tmp_path / f"a.{fmt.split('.')[1]}"
    path.write_bytes(data)
    _, _, blocks = index_blocks(str(path), fmt, block_bytes=300)
    check_tiling(data, blocks)
    assert len(blocks) > 3 and sum(b.records for b in blocks) == len(docs)
    whole = [d for d in read_shard(str(path), "dolma", "gutenberg", fmt=fmt) if isinstance(d, Document)]
    assert len(whole) == len(docs)
    for b in blocks:  # each block decompresses on its own into exactly its records, numbered from its first
        with open_verified(str(path), blocks, b.start, b.end) as view:
            part = list(
                read_shard(str(path), "dolma", "gutenberg", "0" * 64, b.first_record, fmt=fmt, view=view)
            )
        assert [(d.provenance.index, d.text) for d in part] == [
            (d.provenance.index, d.text) for d in whole[b.first_record : b.first_record + b.records]
        ]


def in_memory(views) -> int:
    """Verified block bytes the views hold in memory (not in temp files): the oracle for the cap."""
    return sum(len(d) for v in views for d in v._cache.values() if isinstance(d, bytes))


def test_the_views_of_a_process_hold_at_most_the_reader_memory_cap_and_read_each_block_once(tmp_path):
    from elm_data.sources import blocks as blocks_module

    rng = random.Random(2)
    data = "".join(json.dumps({"text": "y" * rng.randint(100, 3000)}) + "\n" for _ in range(400)).encode()
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    _, _, blocks = index_blocks(str(path), "jsonl", block_bytes=16384)
    cap = 3 * 16384
    saved = blocks_module.HELD.limit
    blocks_module.set_reader_memory(cap)
    try:
        views = [VerifiedView(str(path), blocks, 0, len(data)) for _ in range(4)]  # four readers of one shard
        for k, b in enumerate(blocks):  # each view reads every block, the views in turn (like partitions)
            for v in views:
                v.seek(b.start + k % 7)
                assert v.read(b.end - b.start - k % 7) == data[b.start + k % 7 : b.end]
                assert in_memory(views) <= cap  # without the cap: 4 views x 2 blocks (KEEP) in memory
        # a spilled block is not read from storage again
        assert all(v.bytes_loaded == len(data) for v in views)
        for v in views:  # and what was spilled still reads back as verified bytes
            v.seek(0)
            assert v.read() == data
        for v in views:
            v.close()
        assert blocks_module.HELD.held == 0
    finally:
        blocks_module.set_reader_memory(saved)


def test_rows_a_process_holds_decoded_in_arrow_count_against_the_same_cap(tmp_path):
    """One budget: blocks give way to what the process holds decoded in Arrow's pool (parquet rows,
    ledgers)."""
    import pyarrow as pa

    from elm_data.sources import blocks as blocks_module

    data = "".join(json.dumps({"text": "z" * (500 + 37 * i % 900)}) + "\n" for i in range(300)).encode()
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    _, _, blocks = index_blocks(str(path), "jsonl", block_bytes=16384)
    saved = blocks_module.HELD.limit
    blocks_module.set_reader_memory(
        pa.total_allocated_bytes() + 3 * 16384
    )  # what Arrow holds now, plus 3 blocks
    decoded = pa.allocate_buffer(2 * 16384)  # decoded rows: room for one block is left
    try:
        views = [VerifiedView(str(path), blocks, 0, len(data)) for _ in range(3)]
        most = 0
        for b in blocks:
            for v in views:
                v.seek(b.start)
                assert v.read(b.end - b.start) == data[b.start : b.end]
                most = max(most, in_memory(views))
                assert in_memory(views) + pa.total_allocated_bytes() <= blocks_module.HELD.limit + 16384
        assert 0 < most <= 16384  # without counting Arrow's bytes: 3 blocks in memory
        for v in views:
            v.close()
    finally:
        blocks_module.set_reader_memory(saved)
        del decoded


def test_a_reader_opens_a_verified_view_directly_not_behind_a_network_buffer(tmp_path):
    """Each open shard of a stream reader is a view; wrapped as a remote file it cost an 8 MiB buffer per open
    shard (664 MiB of a scale-300 natural pass's peak in one process, P = 16)."""
    from elm_data.sources import remote
    from elm_data.sources.blocks import open_verified

    data = b'{"text": "a"}\n{"text": "b"}\n'
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    _, _, blocks = index_blocks(str(path), "jsonl")
    with open_verified(str(path), blocks) as view, view.reader() as f:
        assert not isinstance(getattr(f, "raw", f), remote.RetryingReader)
        assert f.read() == data
