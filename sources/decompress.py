"""Bounded decompression of gzip members and zstd frames: no call returns more than about ``OUT_BYTES``.

A compressed stream can hold far more text than its size suggests (deflate reaches ~1000:1, zstd's RLE
blocks 128 KiB per 4 bytes): a decompressor asked for "all the output of this input" may need gigabytes.
Both iterators here yield the text in bounded pieces and, after each complete member / frame, a
:class:`MemberEnd` carrying the compressed offset where it ends (the block index cuts there).

- gzip: :mod:`zlib` with ``max_length`` (its ``unconsumed_tail`` keeps the input not yet decompressed).
- zstd: python-zstandard's ``decompressobj`` has no output limit and its ``stream_reader`` does not report a
  stream truncated inside a frame, so the frame is fed to ``decompressobj`` a few whole blocks at a time:
  the format (RFC 8878, 3.1.1.2) caps a block at 128 KiB of output, so ``FEED_BLOCKS`` blocks bound a call.
  Only the 3-byte block headers are read here to find where a block ends; zstandard decodes everything.

Errors: :class:`Truncated` (the bytes end inside a member / frame), :class:`NotAMember` (bytes that start no
member / frame where one should start; ``offset`` says where), and the library's own error for corrupt data
(``zlib.error``, ``zstandard.ZstdError``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

OUT_BYTES = 1 << 20  # at most this much text per piece (gzip); zstd: FEED_BLOCKS blocks of <= 128 KiB each
READ_BYTES = 1 << 20  # compressed bytes read per step
FEED_BLOCKS = 8
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# skippable frames: magic 0x184D2A50..0x184D2A5F, then a 4-byte size
_SKIPPABLE_MASK = (0x50, b"\x2a\x4d\x18")
_BLOCK_RLE, _BLOCK_RESERVED = 1, 3
_MAX_FRAME_HEADER = 18


@dataclass(frozen=True)
class MemberEnd:
    """A gzip member or zstd frame ended at compressed byte ``offset`` (exclusive)."""

    offset: int


class Truncated(Exception):
    """The compressed bytes end inside a member or frame."""


class NotAMember(Exception):
    """Bytes at compressed ``offset`` (starting ``head``) start no member or frame."""

    def __init__(self, offset: int, head: bytes) -> None:
        super().__init__(f"bytes at offset {offset} start no member (starts {head.hex()})")
        self.offset, self.head = offset, head


def gzip_members(raw: BinaryIO, read_bytes: int = READ_BYTES) -> Iterator[bytes | MemberEnd]:
    """The text of gzip members back to back, in pieces of at most ``OUT_BYTES``, each member followed by its
    end."""
    d, data, pos, inside = zlib.decompressobj(31), b"", 0, False
    while True:
        if not data:
            data = raw.read(read_bytes)
            if not data:
                if inside:
                    raise Truncated("gzip stream ended before its end-of-stream marker")
                return
        if not inside and data[:2] != b"\x1f\x8b"[: len(data[:2])]:
            raise NotAMember(pos, data[:8])
        inside = True
        out = d.decompress(data, OUT_BYTES)
        rest = d.unused_data if d.eof else d.unconsumed_tail
        pos += len(data) - len(rest)
        if out:
            yield out
        if d.eof:
            yield MemberEnd(pos)
            d, inside = zlib.decompressobj(31), False
        data = rest


class _Input:
    """Compressed bytes read ahead from ``raw`` as needed; ``offset`` is the stream position of ``buf[0]``."""

    def __init__(self, raw: BinaryIO, read_bytes: int) -> None:
        self.raw, self.read_bytes = raw, read_bytes
        self.buf = bytearray()
        self.offset = 0
        self.ended = False

    def has(self, n: int) -> bool:
        """Whether ``n`` bytes are buffered, reading more as needed (False: the stream ends sooner)."""
        while len(self.buf) < n and not self.ended:
            more = self.raw.read(max(self.read_bytes, n - len(self.buf)))
            self.buf += more
            self.ended = not more
        return len(self.buf) >= n

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]  # O(1) at a bytearray's front
        self.offset += n
        return out

    def skip(self, n: int) -> None:
        """Drop ``n`` bytes without holding them (a skippable frame may be large)."""
        while n:
            if not self.has(1):
                raise Truncated("zstd stream ended inside a skippable frame")
            step = min(n, len(self.buf))
            self.take(step)
            n -= step


def _truncated(dobj, pending: list[bytes], src: _Input) -> Iterator[bytes]:
    """The text the rest of a truncated frame still gives (less than a block past ``pending``), then
    Truncated."""
    if out := dobj.decompress(b"".join(pending) + src.take(len(src.buf))):
        yield out
    raise Truncated("zstd stream ended inside a frame")


def _zstd_frame(src: _Input, dctx: zstandard.ZstdDecompressor) -> Iterator[bytes]:
    """The text of the zstd data frame at the front of ``src``, a few whole blocks per decompress call."""
    src.has(_MAX_FRAME_HEADER)
    header = bytes(src.buf[:_MAX_FRAME_HEADER])
    try:
        size = zstandard.frame_header_size(header)
        checksum = zstandard.get_frame_parameters(header).has_checksum
    except zstandard.ZstdError as err:
        if len(header) < _MAX_FRAME_HEADER:
            raise Truncated("zstd stream ended inside a frame header") from err
        raise
    if not src.has(size):
        raise Truncated("zstd stream ended inside a frame header")
    dobj = dctx.decompressobj()
    pending, last = [src.take(size)], False
    while not last:
        if not src.has(3):
            yield from _truncated(dobj, pending, src)
        head = int.from_bytes(src.buf[:3], "little")
        last, kind, block_size = bool(head & 1), (head >> 1) & 3, head >> 3
        if kind == _BLOCK_RESERVED:
            raise zstandard.ZstdError(f"reserved block type at offset {src.offset}")
        length = 3 + (1 if kind == _BLOCK_RLE else block_size) + (4 if last and checksum else 0)
        if not src.has(length):
            yield from _truncated(dobj, pending, src)
        pending.append(src.take(length))
        if last or len(pending) >= FEED_BLOCKS:
            if out := dobj.decompress(b"".join(pending)):
                yield out
            pending = []
    if not dobj.eof:
        raise zstandard.ZstdError("frame did not end where its last block ends")


def zstd_frames(raw: BinaryIO, read_bytes: int = READ_BYTES) -> Iterator[bytes | MemberEnd]:
    """The text of zstd frames back to back (skippable frames skipped), in bounded pieces, each frame followed
    by its end."""
    src, dctx = _Input(raw, read_bytes), zstandard.ZstdDecompressor()
    while src.has(1):
        src.has(8)
        head = bytes(src.buf[:8])
        if head[:1] and head[0] & 0xF0 == _SKIPPABLE_MASK[0] and head[1:4] == _SKIPPABLE_MASK[1]:
            if len(head) < 8:
                raise Truncated("zstd stream ended inside a skippable frame header")
            src.take(8)
            src.skip(int.from_bytes(head[4:8], "little"))
        elif head.startswith(ZSTD_MAGIC):
            yield from _zstd_frame(src, dctx)
        else:
            raise NotAMember(src.offset, head)
        yield MemberEnd(src.offset)
