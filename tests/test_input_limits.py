"""Invariant 11 for shards (issue 21): a record above the size limit is a counted ``record_too_large``
rejection, read in bounded memory, and decompression is bounded however much text a few compressed bytes hold.

Oracles: the lines are made here, so which ones exceed the limit is known from their lengths; peak memory is
the child process' own high-water mark (``VmHWM``) over its resident size before the read.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml
import zstandard

from elm_data.sources import readers_jsonl
from elm_data.sources.document import Document, Rejection
from elm_data.sources.readers import read_shard

LIMIT = 3000


def _line(chars: int, i: int) -> bytes:
    """A JSON object line of exactly ``chars`` bytes (no newline) whose text is long enough to be kept."""
    head = json.dumps({"text": "", "id": f"d{i}"}).encode()
    return json.dumps(
        {"text": "w " * ((chars - len(head)) // 2) + "x" * ((chars - len(head)) % 2), "id": f"d{i}"}
    ).encode()


# lengths around the limit, one far above it, and an unterminated last line above it
SIZES = [500, LIMIT, LIMIT + 1, 800, 5 * LIMIT, LIMIT - 1, LIMIT + 2]


def _write(path: Path, fmt: str, lines: list[bytes], newline_at_end: bool = False) -> Path:
    data = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    if fmt == "jsonl.gz":
        data = gzip.compress(data)
    elif fmt == "jsonl.zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("chunk", [97, readers_jsonl.READ_CHUNK])
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_lines_over_the_limit_are_counted_rejections(tmp_path, monkeypatch, fmt, chunk):
    monkeypatch.setattr(readers_jsonl, "READ_CHUNK", chunk)  # lines spanning chunks, and chunks holding lines
    lines = [_line(n, i) for i, n in enumerate(SIZES)]
    assert [len(line) for line in lines] == SIZES
    path = _write(tmp_path / f"s.{fmt}", fmt, lines)
    items = list(read_shard(str(path), "pile", "default", max_record_bytes=LIMIT))
    assert len(items) == len(SIZES)  # one item per record: the count stays balanced
    for i, (item, size) in enumerate(zip(items, SIZES, strict=True)):
        if size > LIMIT:
            assert isinstance(item, Rejection) and item.reason == "record_too_large", (i, item)
            assert (item.index, item.count) == (i, 1) and f"{size:,} bytes" in item.detail
        else:
            assert isinstance(item, Document) and item.provenance.index == i
            assert item.text == json.loads(lines[i])["text"]


def test_an_unselected_long_line_is_skipped_and_a_selected_one_rejected(tmp_path):
    lines = [_line(n, i) for i, n in enumerate(SIZES)]
    path = _write(tmp_path / "s.jsonl", "jsonl", lines, newline_at_end=True)
    items = list(read_shard(str(path), "pile", "default", select={3, 4, 5}, max_record_bytes=LIMIT))
    assert [
        (type(i).__name__, i.provenance.index if isinstance(i, Document) else i.index) for i in items
    ] == [("Document", 3), ("Rejection", 4), ("Document", 5)]


def test_the_default_limit_is_generous_and_settable_in_the_mixture():
    from elm_data.core.errors import InvalidValue
    from elm_data.pipeline.config import FilterConfig

    assert FilterConfig().max_record_bytes == 64 << 20
    assert FilterConfig.from_dict({"max_record_bytes": 1000}).to_dict()["max_record_bytes"] == 1000
    with pytest.raises(InvalidValue, match="max_record_bytes"):
        FilterConfig.from_dict({"max_record_bytes": 0})


@pytest.mark.slow
def test_a_build_counts_oversized_records_and_the_stream_agrees(tmp_path, tokenizer_path, tokenizer):
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.manifest import Manifest
    from elm_data.pipeline.stream import StreamLoader, TokenStream
    from elm_data.pipeline.stream.consumed import expected_natural_pass

    shards = []
    for fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        lines = [_line(n, i) for i, n in enumerate(SIZES * 3)]
        shards.append(str(_write(tmp_path / f"p.{fmt}", fmt, lines)))
    mixture = {
        "sources": [{"source": "pile", "subset": "default", "shards": shards}],
        "filters": {"max_record_bytes": LIMIT, "min_tokens": 1, "min_characters": 1},
    }
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(mixture))
    build_manifest(
        tmp_path / "mixture.yaml", tmp_path / "m", tokenizer=tokenizer_path, workers=1, block_bytes=4000
    )
    manifest = Manifest(tmp_path / "m")
    too_large = sum(size > LIMIT for size in SIZES * 3)
    for record in manifest.shards:
        assert record.rejected_by_reason == {"record_too_large": too_large}
        assert (
            record.docs_read
            == record.docs_kept + record.docs_filtered + record.docs_rejected
            == len(SIZES) * 3
        )
    stream = TokenStream(tmp_path / "m", batch_size=2, seq_len=256, weights="natural", tokenizer=tokenizer)
    loader = StreamLoader(stream)
    for _ in loader:
        pass
    expected = {k: v for k, v in expected_natural_pass(manifest.shards).items() if v}
    assert loader.consumed.to_dict() == expected  # the stream reads the manifest's limit: the same records


_PEAK = """
import sys
from elm_data.sources.blocks import index_blocks
from elm_data.sources.readers import read_shard
def status(key):  # KiB; VmHWM is this process' own peak (ru_maxrss carries a forking parent's peak over exec)
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
limit, read = int(sys.argv[1]), []
before = status("VmRSS:")
for fmt, path in zip(sys.argv[2::2], sys.argv[3::2]):
    sha, size, blocks = index_blocks(path, fmt)
    items = read_shard(path, "pile", "default", fmt=fmt, max_record_bytes=limit, shard_sha256=sha)
    read.append([(type(i).__name__, getattr(i, "reason", "")) for i in items])
print(status("VmHWM:") - before, read)
"""


def _peak_kib(limit: int, *shards: tuple[str, Path]) -> tuple[int, list]:
    """Peak memory growth (KiB, over the resident size once imported) of a child that indexes and reads each
    ``(fmt, path)`` of ``shards`` in turn, and what it read of each."""
    args = [str(a) for shard in shards for a in shard]
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(limit), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split(" ", 1)
    return int(out[0]), eval(out[1])  # a repr of lists of tuples of str


def _one_long_line(path: Path, fmt: str, mib: int) -> Path:
    """``{"text": "aaa...a"}`` of ``mib`` MiB and a short line after it, compressed as it is made (small
    memory)."""
    comp = (
        zlib.compressobj(6, zlib.DEFLATED, 31)
        if fmt == "jsonl.gz"
        else zstandard.ZstdCompressor().compressobj()
    )
    with open(path, "wb") as f:
        f.write(comp.compress(b'{"text": "'))
        block = b"a" * (1 << 20)
        for _ in range(mib):
            f.write(comp.compress(block))
        f.write(comp.compress(b'"}\n' + json.dumps({"text": "short " * 60}).encode() + b"\n"))
        f.write(comp.flush())
    return path


@pytest.mark.slow
def test_a_compressed_bomb_is_indexed_and_read_in_bounded_memory(tmp_path):
    shards = [
        (fmt, _one_long_line(tmp_path / f"bomb.{fmt}", fmt, mib))
        for fmt, mib in [("jsonl.zst", 256), ("jsonl.gz", 96)]
    ]
    assert all(path.stat().st_size < 100_000 for _, path in shards)  # ~1000:1 or better
    grew, items = _peak_kib(1 << 20, *shards)
    assert items == [[("Rejection", "record_too_large"), ("Document", "")]] * 2
    assert grew < 40 * 1024, f"peak memory grew {grew / 1024:.0f} MiB on 256 and 96 MiB lines"  # 1 MiB pieces


@pytest.mark.slow
def test_a_200_mb_plain_line_stays_under_the_default_limit_in_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "')
        for _ in range(200):
            f.write(b"a" * (1 << 20))
        f.write(b'"}\n' + json.dumps({"text": "short " * 60}).encode() + b"\n")
    grew, items = _peak_kib(64 << 20, ("jsonl", path))
    assert items == [[("Rejection", "record_too_large"), ("Document", "")]]
    assert grew < 100 * 1024, f"peak memory grew {grew / 1024:.0f} MiB"  # at most the 64 MiB limit + a chunk


@pytest.mark.slow  # 8 GiB of text decompressed (indexed, then read): ~14 s on a busy 2-core machine
def test_the_issues_4_gib_line_in_131_kb_of_zstd_ends_as_record_too_large(tmp_path):
    path = _one_long_line(tmp_path / "bomb.jsonl.zst", "jsonl.zst", 4096)
    assert path.stat().st_size < 140_000
    grew, items = _peak_kib(64 << 20, ("jsonl.zst", path))  # the default limit
    assert items == [[("Rejection", "record_too_large"), ("Document", "")]]
    # the 64 MiB limit + pieces (was 4.3 GB)
    assert grew < 100 * 1024, f"peak memory grew {grew / 1024:.0f} MiB"


_ESTIMATE = """
import random, sys
from elm_data.manifests.estimate import draw_compressed, draw_plain_jsonl
from elm_data.manifests.mixture import MixtureEntry
def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
entry, before, out = MixtureEntry(source="pile", shards=("x",)), status("VmRSS:"), []
for fmt, path in zip(sys.argv[1::2], sys.argv[2::2]):
    size = __import__("os").path.getsize(path)
    if fmt == "jsonl":
        draw = draw_plain_jsonl(path, size, 4, size / 2, entry, random.Random(0))
    else:
        draw = draw_compressed(path, size, 4, fmt, entry, random.Random(0))
    out.append(sorted("doc" if d is not None else "rejected" for d in draw.documents))
print(status("VmHWM:") - before, out)
"""


@pytest.mark.slow
def test_estimate_samples_bombs_in_bounded_memory(tmp_path):
    """``elm-data estimate`` reads a window of each compressed shard and whole lines of plain ones: a long
    line and a window of tiny lines stay bounded (the long line is the reader's record_too_large: no
    document)."""
    long_zst = _one_long_line(tmp_path / "long.jsonl.zst", "jsonl.zst", 200)
    long_plain = tmp_path / "long.jsonl"
    with open(long_plain, "wb") as f:
        f.write(
            b'{"text": "' + b"a" * (80 << 20) + b'"}\n' + json.dumps({"text": "short " * 60}).encode() + b"\n"
        )
    tiny = zstandard.ZstdCompressor().compressobj()
    with open(tmp_path / "tiny.jsonl.zst", "wb") as f:
        for _ in range(96):
            f.write(tiny.compress(b"{}\n" * (1 << 20)))
        f.write(tiny.flush())
    args = ["jsonl.zst", long_zst, "jsonl", long_plain, "jsonl.zst", tmp_path / "tiny.jsonl.zst"]
    out = subprocess.run(
        [sys.executable, "-c", _ESTIMATE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split(" ", 1)
    grew, drawn = int(out[0]), eval(out[1])
    assert drawn[:2] == [["doc", "rejected"], ["doc", "rejected"]] and drawn[2] == ["rejected"] * 4, drawn
    assert grew < 100 * 1024, f"peak memory grew {grew / 1024:.0f} MiB"  # the 64 MiB limit and a chunk
