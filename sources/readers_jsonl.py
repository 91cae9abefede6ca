"""JSON Lines shards, plain, gzip (Dolma's ``*.json.gz``) or zstd (the original Pile's ``*.jsonl.zst``).

The stream is decompressed in chunks and split into raw byte lines; each line is decoded as
strict UTF-8 and parsed on its own, so one bad line costs one Rejection and nothing else.
A compressed stream that ends early or is corrupt yields one Rejection at the line where it broke.
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from elm_data.sources.document import (
    REJECT_INVALID_UTF8,
    REJECT_MALFORMED_JSON,
    REJECT_TRUNCATED,
    REJECT_UNREADABLE,
    Document,
    Rejection,
)
from elm_data.sources.readers_common import Select, ShardContext

READ_CHUNK = 1024 * 1024  # compressed bytes read per step


class StreamBroken(Exception):
    """The byte stream could not be read to its end; ``reason`` is a rejection reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _plain_chunks(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(READ_CHUNK):
        yield chunk


def _gzip_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompress through :mod:`gzip` (members back to back included), yielding all that precedes a break."""
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            while chunk := stream.read1(READ_CHUNK):
                yield chunk
    except EOFError as err:
        detail = "gzip stream ended before its end-of-stream marker (file truncated)"
        raise StreamBroken(REJECT_TRUNCATED, detail) from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise StreamBroken(REJECT_UNREADABLE, f"corrupt gzip stream: {err}") from err


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    in_frame = False
    try:
        while data := raw.read(READ_CHUNK):
            while data:
                in_frame = True
                out = dobj.decompress(data)
                if out:
                    yield out
                if dobj.eof:  # frame complete: the rest of `data` starts the next frame
                    data = dobj.unused_data
                    dobj = dctx.decompressobj()
                    in_frame = False
                else:
                    data = b""
    except zstandard.ZstdError as err:
        raise StreamBroken(REJECT_UNREADABLE, f"corrupt zstd stream: {err}") from err
    if in_frame:
        raise StreamBroken(REJECT_TRUNCATED, "zstd stream ended inside a frame (file truncated)")


_CHUNKERS = {"jsonl": _plain_chunks, "jsonl.gz": _gzip_chunks, "jsonl.zst": _zstd_chunks}


def _lines(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Raw lines without their b"\\n", each with whether it was newline-terminated.

    A line longer than a chunk is gathered piecewise and joined once (linear in its length).
    """
    carry: list[bytes] = []
    for chunk in chunks:
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            carry.append(chunk)
            continue
        if carry:
            carry.append(parts[0])
            parts[0] = b"".join(carry)
        last = parts.pop()
        carry = [last] if last else []
        for part in parts:
            yield part, True
    if tail := b"".join(carry):
        yield tail, False


def parse_line(ctx: ShardContext, index: int, line: bytes) -> Document | Rejection:
    """One raw JSONL line into a Document or a Rejection."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return ctx.reject(index, REJECT_INVALID_UTF8, f"byte {err.start}: {err.reason}")
    try:
        record = json.loads(decoded)
    except ValueError as err:
        detail = "blank line" if not decoded.strip() else f"{err.msg} at column {err.colno}"
        return ctx.reject(index, REJECT_MALFORMED_JSON, detail)
    if not isinstance(record, dict):
        return ctx.reject(index, REJECT_MALFORMED_JSON, f"a JSON {type(record).__name__}, not an object")
    field = ctx.spec.text_field
    present = field in record
    text = record.pop(field, None)
    bad = ctx.check_text(index, text, present)
    if bad is not None:
        return bad
    return ctx.document(index, text, record)


def read_jsonl(
    ctx: ShardContext, fmt: str, skip: int = 0, select: Select | None = None
) -> Iterator[Document | Rejection]:
    """Yield one item per line of a (compressed) JSONL shard, from line ``skip`` on.

    With ``select``, a line whose index it rejects is only counted (never decoded or parsed).
    """
    with ctx.open() as raw:
        chunks = _CHUNKERS[fmt](raw)
        index = 0
        pending: bytes | None = None  # a final line without newline, held until the stream ends cleanly
        try:
            for chunk in chunks if skip > 0 else ():  # drop `skip` raw lines by counting newlines
                newlines = chunk.count(b"\n")
                if index + newlines < skip:
                    index += newlines
                    continue
                cut = -1
                for _ in range(skip - index):
                    cut = chunk.index(b"\n", cut + 1)
                index = skip
                chunks = itertools.chain([chunk[cut + 1 :]], chunks)
                break
            for line, terminated in _lines(chunks):
                if not terminated:
                    pending = line[:-1] if line.endswith(b"\r") else line
                    continue
                if select is None or select(index):
                    yield parse_line(ctx, index, line[:-1] if line.endswith(b"\r") else line)
                index += 1
        except StreamBroken as broken:
            lost = "the partial line here and any records after it" if pending else "any records after this line"
            yield ctx.reject(
                index,
                broken.reason,
                f"{broken.detail}; {index} lines read before the break; {lost} cannot be read (count unknowable)",
            )
            return
        if pending is not None and (select is None or select(index)):
            yield parse_line(ctx, index, pending)
