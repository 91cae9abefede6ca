"""Record-aligned blocks of a shard, each with its own sha256: indexed in one read, verified as read.

A shard's blocks tile its bytes exactly (``[0, size)``, in order) and each starts at a record boundary:

- parquet: the leading magic (0 records), one block per row group, then the footer (0 records);
- plain JSONL: line-aligned runs of about ``block_bytes`` (a block ends just after a newline);
- gzip / zstd: runs of whole members / frames of about ``block_bytes`` compressed, cut only where the text
  so far ends with a newline; a single-member (or damaged) file is one block.

:class:`VerifiedView` is a read-only file over a byte range of a shard that loads whole blocks from
storage on first touch, checks each block's sha256 *before* serving any byte of it, and keeps the last
two blocks with records, plus those without (a parquet file's magic and footer). ``open_verified`` opens one
and the caller hands it to the readers (``read_shard(view=)``), so every reader reads verified bytes
unchanged; no URL, registry or other process-global state names a view.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import os
import struct
import sys
import tempfile
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

from elm_data.core.errors import ElmDataError
from elm_data.sources import remote
from elm_data.sources.block_cache import active_cache
from elm_data.sources.decompress import MemberEnd, NotAMember, Truncated, gzip_members, zstd_frames
from elm_data.sources.readers_common import HASH_CHUNK
from elm_data.sources.seekable import SeekableReader

BLOCK_BYTES = 4 << 20  # target size of a plain-JSONL block
SPILL_BYTES = 16 << 20  # a block larger than this is verified into a temp file instead of memory
# default cap on the verified block bytes a process holds in memory (ELM_DATA_READER_MEMORY)
READER_MEMORY = 128 << 20
VIEW_BUFFER = 128 << 10  # the buffer of each file a reader opens on a view


ReadAhead = Callable[[str, "Block", int], "tuple[bytes, int] | None"]


class BlockChanged(ElmDataError, ValueError):
    """A block's bytes do not match the sha256 the manifest records for it."""


@dataclass(frozen=True)
class Block:
    """Bytes ``[start, end)`` of a shard holding records ``[first_record, first_record + records)``."""

    start: int
    end: int
    sha256: str
    first_record: int
    records: int | None  # None: known only once the shard's records are counted (compressed shards)


def _parquet_cuts(f: BinaryIO, size: int) -> list[tuple[int, int]] | None:
    """``(byte offset, rows)`` where each row group starts, and the footer's offset with 0 rows; None if
    unreadable."""
    import pyarrow.parquet as pq

    try:
        if size < 12:
            return None
        f.seek(size - 8)
        footer_len, magic = struct.unpack("<I4s", f.read(8))
        if magic != b"PAR1":
            return None
        f.seek(0)
        meta = pq.ParquetFile(f).metadata
    except Exception:  # a damaged file: the reader reports it; here it is one opaque block
        return None
    cuts = [(0, 0)]  # the leading magic: a block of its own, so that checking it costs 4 bytes
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        starts = [
            min(o for o in (c.dictionary_page_offset, c.data_page_offset) if o is not None and o > 0)
            for c in (rg.column(i) for i in range(rg.num_columns))
        ]
        cuts.append((min(starts), rg.num_rows))
    cuts.append((size - 8 - footer_len, 0))
    if any(b[0] >= a[0] for a, b in itertools.pairwise(reversed(cuts))) or cuts[1][0] != 4:
        return None  # row groups not laid out in order: keep the file as one block
    return cuts


def _hash_ranges(f: BinaryIO, cuts: Sequence[int], size: int) -> tuple[str, list[str]]:
    """sha256 of the whole file and of each range between consecutive ``cuts`` (first cut 0), in one read."""
    whole, digests = hashlib.sha256(), []
    bounds = [*cuts[1:], size]
    f.seek(0)
    for lo, hi in zip(cuts, bounds, strict=True):
        part, left = hashlib.sha256(), hi - lo
        while left:
            chunk = f.read(min(HASH_CHUNK, left))
            if not chunk:
                raise OSError("shard shorter than its recorded layout")
            whole.update(chunk)
            part.update(chunk)
            left -= len(chunk)
        digests.append(part.hexdigest())
    return whole.hexdigest(), digests


def _jsonl_blocks(f: BinaryIO, size: int, block_bytes: int) -> tuple[str, list[Block]]:
    """Line-aligned blocks of a plain JSONL file, hashed in the same read."""
    whole = hashlib.sha256()
    blocks: list[Block] = []
    start, part, lines, record = 0, hashlib.sha256(), 0, 0
    pos = 0
    while chunk := f.read(HASH_CHUNK):
        whole.update(chunk)
        offset = 0
        while offset < len(chunk):
            want = start + block_bytes - pos - offset  # bytes still wanted in this block before cutting
            cut = chunk.find(b"\n", offset + max(want - 1, 0)) if want <= len(chunk) - offset else -1
            piece = chunk[offset : cut + 1] if cut >= 0 else chunk[offset:]
            part.update(piece)
            lines += piece.count(b"\n")
            offset += len(piece)
            if cut >= 0:
                end = pos + offset
                blocks.append(Block(start, end, part.hexdigest(), record, lines))
                start, part, record, lines = end, hashlib.sha256(), record + lines, 0
        pos += len(chunk)
    if pos > start or not blocks:
        f.seek(max(pos - 1, 0))  # only the last byte: the tail may be one huge line
        # a last line without newline is a record too
        trailing = 1 if pos > start and f.read(1) != b"\n" else 0
        blocks.append(Block(start, pos, part.hexdigest(), record, lines + trailing))
    return whole.hexdigest(), blocks


def _member_cuts(f: BinaryIO, fmt: str, block_bytes: int) -> list[tuple[int, int]] | None:
    """``(offset, records)`` of blocks made of whole gzip members / zstd frames, cut after about
    ``block_bytes`` where the text so far ends with a newline; None for a single member or a damaged stream
    (one opaque block). Decompressed in bounded pieces (``sources.decompress``), so a bomb costs time, not
    memory."""
    f.seek(0)
    cuts, start, end, lines, last = [], 0, 0, 0, b""
    members = gzip_members(f, HASH_CHUNK) if fmt == "jsonl.gz" else zstd_frames(f, HASH_CHUNK)
    try:
        for piece in members:
            if isinstance(piece, MemberEnd):
                if piece.offset - start >= block_bytes and last == b"\n":
                    cuts.append((start, lines))
                    start, lines = piece.offset, 0
                end = piece.offset
            else:
                lines, last = lines + piece.count(b"\n"), piece[-1:] or last
    except (zlib.error, zstandard.ZstdError, Truncated, NotAMember):
        return None  # truncated, trailing garbage or corrupt: the reader reports it
    if end > start:
        cuts.append((start, lines + (1 if last and last != b"\n" else 0)))
    return cuts if len(cuts) > 1 else None


def index_blocks(path: str, fmt: str, block_bytes: int = BLOCK_BYTES) -> tuple[str, int, list[Block]]:
    """``(sha256, size, blocks)`` of the local file ``path`` in ``fmt`` ("parquet", "jsonl", ...), in one
    read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if fmt == "parquet":
            cuts = _parquet_cuts(f, size)
            if cuts is not None:
                sha, digests = _hash_ranges(f, [c for c, _ in cuts], size)
                ends = [c for c, _ in cuts[1:]] + [size]
                first = list(itertools.accumulate((r for _, r in cuts), initial=0))
                blocks = [
                    Block(lo, hi, d, first[i], rows)
                    for i, ((lo, rows), hi, d) in enumerate(zip(cuts, ends, digests, strict=True))
                ]
                return sha, size, blocks
        elif fmt == "jsonl":  # the format found from the bytes (readers.shard_format_of), not the name
            f.seek(0)
            sha, blocks = _jsonl_blocks(f, size, block_bytes)
            return sha, size, blocks
        elif fmt in ("jsonl.gz", "jsonl.zst") and (cuts := _member_cuts(f, fmt, block_bytes)):
            sha, digests = _hash_ranges(f, [c for c, _ in cuts], size)
            ends = [c for c, _ in cuts[1:]] + [size]
            first = list(itertools.accumulate((r for _, r in cuts), initial=0))
            blocks = [
                Block(c, e, d, first[i], r)
                for i, ((c, r), e, d) in enumerate(zip(cuts, ends, digests, strict=True))
            ]
            return sha, size, blocks
        sha, _ = _hash_ranges(f, [0], size)
    return sha, size, [Block(0, size, sha, 0, None)]


def hash_blocks(uri: str, starts: Sequence[int], size: int) -> tuple[str, list[str]]:
    """sha256 of the whole shard at ``uri`` and of each block starting at ``starts``, in one streamed read."""
    with remote.open_read(uri) as f:  # a remote shard's reads are retried on transient faults
        return _hash_ranges(f, list(starts) or [0], size)


def _check(uri: str, i: int, block: Block, digest: str) -> None:
    if digest != block.sha256:
        raise BlockChanged(
            f"{uri}: bytes {block.start}-{block.end} (block {i}) have sha256 {digest}, "
            f"the manifest says {block.sha256}; refusing to read them (restore the shard or rebuild the "
            "manifest)"
        )


def fetch_verified(uri: str, block: Block, i: int) -> tuple[bytes | BinaryIO, int]:
    """``(data, bytes fetched from storage)`` of remote block ``i``: from the node's block cache when it holds
    it, else fetched with retries, checked against the block's sha256 and cached. ``data`` is the bytes, or
    for a block over ``SPILL_BYTES`` an anonymous temp file at its start (the caller closes it): a block of
    any size costs a reader at most ``HASH_CHUNK`` of memory, and is cached and read ahead like any other.

    A block whose bytes do not match is fetched once more (a fault that corrupted a body), then refused.
    """
    size, cache = block.end - block.start, active_cache()
    large = size > SPILL_BYTES
    if cache is not None:
        data = cache.open(block.sha256) if large else cache.get(block.sha256)
        if data is not None:
            remote.STATS.count(from_cache=size)
            return data, 0
    what = f"{uri} block {i} (bytes {block.start}-{block.end})"
    data, digest = _fetch_once(uri, block, what, large)
    fetched = size
    if digest != block.sha256:
        remote.STATS.count(retry="sha256 mismatch")
        _close(data)
        data, digest = _fetch_once(uri, block, what, large)
        fetched += size
        if digest != block.sha256:
            _close(data)
            _check(uri, i, block, digest)
    if cache is not None:
        cache.put_file(block.sha256, data, size) if large else cache.put(block.sha256, data)
    return data, fetched


def _fetch_once(uri: str, block: Block, what: str, large: bool) -> tuple[bytes | BinaryIO, str]:
    """``(data, sha256)`` of the block's bytes from storage: in memory, or (``large``) streamed into a temp
    file in ranged reads of at most ``HASH_CHUNK``, each retried from the byte it had reached."""
    if not large:
        data = remote.read_range(uri, block.start, block.end, what)
        return data, hashlib.sha256(data).hexdigest()
    spill = tempfile.TemporaryFile(prefix="elm-data-block-")  # noqa: SIM115
    digest, left = hashlib.sha256(), block.end - block.start
    try:
        with remote.open_read(uri, what, buffered=False) as f:
            f.seek(block.start)
            while left:
                chunk = f.read(min(HASH_CHUNK, left))
                if not chunk:
                    raise BlockChanged(f"{what}: ends early (the shard is shorter than the manifest says)")
                digest.update(chunk)
                spill.write(chunk)
                left -= len(chunk)
    except BaseException:
        spill.close()
        raise
    spill.seek(0)
    return spill, digest.hexdigest()


def _close(data: bytes | BinaryIO) -> None:
    if not isinstance(data, bytes):
        data.close()


# -- reading verified bytes ---------------------------------------------------------------------------
class VerifiedView(SeekableReader):
    """Bytes ``[lo, hi)`` of a shard as a seekable file (position 0 = byte ``lo``); every block is checked
    first.

    ``bytes_loaded`` counts the bytes read from storage. A block that fails its sha256 raises
    :class:`BlockChanged` before any of its bytes is returned. ``lo`` is a block's start: the view's records
    are numbered from that block's ``first_record``. What a reader needs of it (``readers_common.ShardView``):
    :meth:`reader`, :attr:`first_record`, :meth:`parquet_metadata`.
    """

    KEEP = 2

    def __init__(self, uri: str, blocks: Sequence[Block], lo: int, hi: int, ahead: ReadAhead | None = None):
        super().__init__()
        self.uri, self.blocks, self.lo, self.hi = uri, list(blocks), lo, hi
        self.ahead = ahead  # remote blocks already fetched and verified in the background (read-ahead)
        self._remote: bool | None = None
        self._starts = [b.start for b in self.blocks]
        self.first_record = self.blocks[_block_at(self._starts, lo)].first_record if self.blocks else 0
        self._footer: Any = None
        self._cache: OrderedDict[int, bytes | BinaryIO] = OrderedDict()
        self._raw: BinaryIO | None = None
        self.bytes_loaded = 0

    def _end(self) -> int:
        return self.hi - self.lo

    def reader(self) -> BinaryIO:
        """A buffered file over the view from its start; closing it leaves the view (and its blocks) open."""
        self.seek(0)
        return io.BufferedReader(_Unclosable(self), buffer_size=VIEW_BUFFER)

    def _storage(self) -> BinaryIO:
        if self._raw is None:
            # no read-ahead cache: exactly the bytes of the blocks asked for cross from storage (retried when
            # remote)
            self._raw = remote.open_read(self.uri, buffered=False)
        return self._raw

    def _is_remote(self) -> bool:
        if self._remote is None:
            self._remote = remote.is_remote(remote.filesystem(self.uri)[0])
        return self._remote

    def _fetch(self, i: int) -> bytes | BinaryIO:
        """Block ``i``'s verified bytes (a large one as a temp file): read ahead, cached or fetched when
        remote."""
        block = self.blocks[i]
        if self._is_remote():
            got = self.ahead(self.uri, block, i) if self.ahead is not None else None
            data, fetched = got if got is not None else fetch_verified(self.uri, block, i)
            self.bytes_loaded += fetched
            return data
        return self._read(i)

    def _load(self, i: int) -> bytes | BinaryIO:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        data = self._fetch(i)
        self._cache[i] = data
        HELD.note(self, i, data)
        # 0-record blocks (magic, footer) stay
        records = [j for j in self._cache if self.blocks[j].records != 0]
        for j in records[: max(0, len(records) - self.KEEP)]:
            old = self._cache.pop(j)
            HELD.forget(self, j)
            if not isinstance(old, bytes):
                old.close()
        return data

    def _read(self, i: int) -> bytes | BinaryIO:
        """Block ``i`` read from storage (a large one into a temp file) and checked against its sha256."""
        block = self.blocks[i]
        raw = self._storage()
        raw.seek(block.start)
        digest, left = hashlib.sha256(), block.end - block.start
        spill = tempfile.TemporaryFile(prefix="elm-data-block-") if left > SPILL_BYTES else None  # noqa: SIM115
        parts: list[bytes] = []
        while left:
            chunk = raw.read(min(HASH_CHUNK, left))
            if not chunk:
                raise BlockChanged(
                    f"{self.uri}: block {i} ends early (the shard is shorter than the manifest says)"
                )
            digest.update(chunk)
            spill.write(chunk) if spill is not None else parts.append(chunk)
            left -= len(chunk)
        self.bytes_loaded += block.end - block.start
        _check(self.uri, i, block, digest.hexdigest())
        return spill if spill is not None else b"".join(parts)

    def readinto(self, buffer) -> int:
        pos = self.lo + self._pos
        if pos >= self.hi:
            return 0
        i = _block_at(self._starts, pos)
        block = self.blocks[i]
        data = self._load(i)
        n = min(len(buffer), block.end - pos, self.hi - pos)
        if isinstance(data, bytes):
            buffer[:n] = data[pos - block.start : pos - block.start + n]
        else:
            data.seek(pos - block.start)
            n = data.readinto(memoryview(buffer)[:n])
        self._pos += n
        return n

    def size(self) -> int:
        return self.hi - self.lo

    def parquet_metadata(self) -> Any:
        """The parquet footer of a whole-file view of several blocks, from its verified last block, read once
        (so a reader never re-reads it: pyarrow would otherwise fetch the file's last 64 KiB, most of a row
        group in a large file); None for a view of one block (the reader reads the footer from it)."""
        if self._footer is None and len(self.blocks) > 1 and self.lo == 0:
            import pyarrow as pa
            import pyarrow.parquet as pq

            footer = self._load(len(self.blocks) - 1)
            footer = footer if isinstance(footer, bytes) else _read_all(footer)
            self._footer = pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
        return self._footer

    def close(self) -> None:
        for j, data in self._cache.items():
            HELD.forget(self, j)
            if not isinstance(data, bytes):
                data.close()
        self._cache.clear()
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        super().close()


def _read_all(f: BinaryIO) -> bytes:
    f.seek(0)
    return f.read()


def _block_at(starts: Sequence[int], pos: int) -> int:
    return bisect.bisect_right(starts, pos) - 1


class HeldBlocks:
    """The verified block bytes this process holds in memory, over every open view, capped at ``limit`` bytes
    together with what it holds decoded in Arrow's memory pool (invariant 11): when a view keeps a new block
    in memory and the total passes the cap, the least recently loaded blocks still held are moved to anonymous
    temp files (their bytes were checked when loaded; nothing is read from storage again, so each shard byte
    is still read once). A stream reader therefore holds at most the cap in blocks and decoded parquet rows,
    however large its blocks and however many partitions and sources it has open at once, unless the decoded
    rows alone pass it (each open parquet shard holds at most one row group's rows,
    ``readers_parquet.DECODED_AHEAD_BYTES``)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._order: OrderedDict[tuple[int, int], tuple[weakref.ref, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, view: VerifiedView, i: int, data: bytes | BinaryIO) -> None:
        if not isinstance(data, bytes):
            return
        with self._lock:
            self._order[(id(view), i)] = (weakref.ref(view), i, len(data))
            self.held += len(data)
            while self.held + arrow_bytes() > self.limit and self._order:
                (_, (ref, j, size)) = self._order.popitem(last=False)
                self.held -= size
                owner = ref()
                if owner is not None and isinstance(owner._cache.get(j), bytes):
                    owner._cache[j] = _spilled(owner._cache[j])

    def forget(self, view: VerifiedView, i: int) -> None:
        """A block the view no longer holds (dropped or closed)."""
        with self._lock:
            entry = self._order.pop((id(view), i), None)
            if entry is not None:
                self.held -= entry[2]


def arrow_bytes() -> int:
    """The bytes this process holds in Arrow's default memory pool (decoded parquet rows, ledger rows), 0
    before pyarrow is imported: they count against the same reader cap as the blocks."""
    arrow = sys.modules.get("pyarrow")
    return arrow.total_allocated_bytes() if arrow is not None else 0


def _spilled(data: bytes) -> BinaryIO:
    spill = tempfile.TemporaryFile(prefix="elm-data-block-")  # noqa: SIM115
    spill.write(data)
    return spill


HELD = HeldBlocks(READER_MEMORY)


def set_reader_memory(limit: int) -> None:
    """Cap the verified block bytes this process holds in memory (see :class:`HeldBlocks`)."""
    if limit < 0:
        raise ValueError(f"reader memory must be >= 0 bytes, got {limit}")
    HELD.limit = limit


class _Unclosable(io.RawIOBase):
    """The view as the reader sees it: closing the reader's file leaves the view (and its cache) open."""

    def __init__(self, view: VerifiedView):
        super().__init__()
        self.view = view

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.view.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.view.seek(offset, whence)

    def tell(self) -> int:
        return self.view.tell()


@contextmanager
def open_verified(
    uri: str, blocks: Sequence[Block], lo: int = 0, hi: int | None = None, ahead: ReadAhead | None = None
) -> Iterator[VerifiedView]:
    """A :class:`VerifiedView` serving verified bytes ``[lo, hi)`` of ``uri``, closed on exit.

    ``ahead(uri, block, i)``: a remote block's ``(bytes, fetched)`` if it was read ahead (verified), else
    None."""
    hi = blocks[-1].end if hi is None else hi
    view = VerifiedView(uri, blocks, lo, hi, ahead)
    try:
        yield view
    finally:
        view.close()
