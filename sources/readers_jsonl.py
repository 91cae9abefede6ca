"""JSON Lines shards, plain, gzip (Dolma's ``*.json.gz``) or zstd (the original Pile's ``*.jsonl.zst``).

The stream is decompressed in bounded pieces (``sources.decompress``: about ``READ_CHUNK`` of text per call,
whatever the compression ratio) and split into raw byte lines; each line is decoded as strict UTF-8 and parsed
on its own, so one bad line costs one Rejection and nothing else. A line longer than the record limit
(``max_record_bytes``) is counted while it is dropped, never held: one ``record_too_large`` Rejection. A
compressed stream that ends early or is corrupt yields one Rejection at the line where it broke.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
import zstandard

from elm_data.sources.decompress import MemberEnd, NotAMember, Truncated, zstd_frames
from elm_data.sources.document import (
    MAX_RECORD_BYTES,
    REJECT_INVALID_UNICODE,
    REJECT_INVALID_UTF8,
    REJECT_MALFORMED_JSON,
    REJECT_TOO_LARGE,
    REJECT_TRUNCATED,
    REJECT_UNREADABLE,
    Document,
    Rejection,
)
from elm_data.sources.readers_common import (
    GZIP_MAGIC,
    MAX_JSON_DEPTH,
    UTF8_BOM,
    Select,
    ShardContext,
    nested_deeper_than,
)

# Compressed bytes read per step (and at most this much text per gzip step). A stream reader holds one chunk
# and its split lines per open shard, one shard per source and partition: 128 KiB, not 1 MiB (issue 27).
READ_CHUNK = 128 * 1024
_NOT_GZIP = "Not a gzipped file"  # gzip's message for bytes that start no member
# Strict UTF-8 decoding refuses encoded surrogates, so a lone one can only come from a \uD800-\uDFFF escape.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Arrays and objects nested deeper than MAX_JSON_DEPTH (readers_common) are a malformed_json rejection
# (Python's parser stops near 1,000 levels, with an error that is no ValueError); the record is one level.
# An integer literal of more digits is one too: Python's own default limit (converting one costs time
# quadratic in its length), applied here whatever PYTHONINTMAXSTRDIGITS says, so no record crashes a reader.
MAX_INT_DIGITS = 4300
# orjson holds integers in [-2**63, 2**64) exactly and makes any other a float of magnitude >= 2**63: a record
# with such a float is parsed by ``json`` (which keeps the integer exact).
WIDE_FLOAT = float(2**63)
TOO_DEEP = f"nested more than {MAX_JSON_DEPTH} levels deep"
TOO_LONG_INTEGER = f"an integer of more than {MAX_INT_DIGITS:,} digits"


class _IntegerTooLong(ValueError):
    """An integer literal of more than ``MAX_INT_DIGITS`` digits (raised through ``json``'s scanner)."""


def _bounded_int(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise _IntegerTooLong(literal[:20])
    try:
        return int(literal)
    except ValueError as err:  # a lower limit set for this interpreter (PYTHONINTMAXSTRDIGITS)
        raise _IntegerTooLong(literal[:20]) from err


class StreamBroken(Exception):
    """The byte stream could not be read to its end; ``reason`` is a rejection reason.

    ``count`` is how many records the rejection stands for: 1 when records may be lost (count
    unknowable), 0 when every record was read (trailing garbage, an empty file).
    """

    def __init__(self, reason: str, detail: str, count: int = 1) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.count = count


def _empty(kind: str) -> StreamBroken:
    detail = f"empty file (0 bytes): a {kind} shard holds at least a header (a failed download?)"
    return StreamBroken(REJECT_UNREADABLE, detail, count=0)


def _trailing(kind: str, start: str) -> StreamBroken:
    detail = f"trailing garbage after the last complete {kind} ({start}); every record before it was read"
    return StreamBroken(REJECT_UNREADABLE, detail, count=0)


def _plain_chunks(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(READ_CHUNK):
        yield chunk


class _Prefixed:
    """``head`` (bytes already read from ``raw``) followed by the rest of ``raw``; no seek needed."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(size)
        if size < 0:
            head, self.head = self.head, b""
            return head + self.raw.read()
        out, self.head = self.head[:size], self.head[size:]  # a short read, as raw streams may give
        return out


def _gzip_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompress through :mod:`gzip` (members back to back included), yielding all that precedes a break."""
    head = raw.read(2)
    if not head:
        raise _empty("gzip")
    if head != GZIP_MAGIC:
        raise StreamBroken(REJECT_UNREADABLE, f"not gzip data (starts {head.hex()})")
    try:
        with gzip.GzipFile(fileobj=_Prefixed(head, raw), mode="rb") as stream:
            while chunk := stream.read1(READ_CHUNK):
                yield chunk
    except EOFError as err:
        detail = "gzip stream ended before its end-of-stream marker (file truncated)"
        raise StreamBroken(REJECT_TRUNCATED, detail) from err
    except gzip.BadGzipFile as err:  # "Not a gzipped file (b'..')" is only raised where a member would start
        if (message := str(err)).startswith(_NOT_GZIP):
            raise _trailing("gzip member", "starts " + message.removeprefix(_NOT_GZIP).strip(" ()")) from err
        raise StreamBroken(REJECT_UNREADABLE, f"corrupt gzip stream: {err}") from err
    except zlib.error as err:
        raise StreamBroken(REJECT_UNREADABLE, f"corrupt gzip stream: {err}") from err


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompress zstd frames back to back, in bounded pieces; bytes after the last frame that start no frame
    are trailing garbage."""
    frames = 0
    try:
        for piece in zstd_frames(raw, READ_CHUNK):
            if isinstance(piece, MemberEnd):
                frames += 1
            else:
                yield piece
    except Truncated as err:
        raise StreamBroken(REJECT_TRUNCATED, "zstd stream ended inside a frame (file truncated)") from err
    except NotAMember as err:
        if frames:
            raise _trailing("zstd frame", f"starts {err.head.hex()}") from err
        raise StreamBroken(REJECT_UNREADABLE, f"not zstd data (starts {err.head.hex()})") from err
    except zstandard.ZstdError as err:
        raise StreamBroken(REJECT_UNREADABLE, f"corrupt zstd stream: {err}") from err
    if not frames:
        raise _empty("zstd")


_CHUNKERS = {"jsonl": _plain_chunks, "jsonl.gz": _gzip_chunks, "jsonl.zst": _zstd_chunks}


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A line longer than the record limit, dropped as it was read: only its length (without newline) is
    kept."""

    size: int


class _LineInProgress:
    """The pieces of the line being gathered, up to ``limit`` bytes; past it only its length is counted."""

    __slots__ = ("limit", "parts", "size")

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.size = limit, [], 0

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size <= self.limit:
            self.parts.append(piece)
        elif self.parts:
            self.parts = []  # over the limit: the bytes go, the count goes on

    def take(self) -> bytes | TooLarge:
        line = b"".join(self.parts) if self.size <= self.limit else TooLarge(self.size)
        self.parts, self.size = [], 0
        return line


def raw_lines(chunks: Iterator[bytes], limit: int) -> Iterator[tuple[bytes | TooLarge, bool]]:
    """Raw lines without their b"\\n", each with whether it was newline-terminated; a line over ``limit``
    bytes is a :class:`TooLarge`, never held: memory stays within ``limit`` plus one chunk.

    A line longer than a chunk is gathered piecewise and joined once (linear in its length).
    """
    line = _LineInProgress(limit)
    try:
        for chunk in chunks:
            parts = chunk.split(b"\n")
            last = parts.pop()
            if parts:
                line.add(parts[0])
                yield line.take(), True
                short = len(chunk) <= limit  # then so is every line inside the chunk
                for part in itertools.islice(parts, 1, None):
                    yield (part if short or len(part) <= limit else TooLarge(len(part))), True
            line.add(last)
    except StreamBroken as broken:
        if broken.count == 0 and line.size:  # the stream is complete: so is its last line
            yield line.take(), False
        raise
    if line.size:
        yield line.take(), False


def _surrogate_escape(line: bytes) -> bool:
    """Whether ``line`` holds a ``\\uD800``-``\\uDFFF`` escape: one regex scan (~3x faster than two
    ``in`` scans for ``\\ud``/``\\uD`` as a filter before it, on text with or without escapes)."""
    return _SURROGATE_ESCAPE.search(line) is not None


def _lone_surrogate(value: Any, path: str) -> str | None:
    """Where in a parsed JSON value a string holds a lone surrogate (not encodable as UTF-8), or None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")  # fast in C; fails exactly on a surrogate
            return None
        except UnicodeEncodeError as err:
            where = path.encode("utf-8", "backslashreplace").decode("ascii")  # a key may hold one too
            return f"U+{ord(value[err.start]):04X} in {where or 'the record'} at character {err.start}"
    if isinstance(value, dict):
        for key, item in value.items():
            if found := _lone_surrogate(key, f"a key of {path or 'the record'}"):
                return found
            if found := _lone_surrogate(item, f"{path}.{key}" if path else str(key)):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _lone_surrogate(item, f"{path}[{i}]"):
                return found
    return None


def _wide_float_or_depth(record: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a parsed object holds a float of magnitude 2**63 or more anywhere (what orjson makes of an
    integer beyond 64 bits; a float literal that large is left to ``json`` too), and whether it nests deeper
    than ``MAX_JSON_DEPTH``: :func:`~.readers_common.nested_deeper_than`'s rule, in the same one walk on the
    hot path."""
    wide, stack = False, [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return wide, True
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, float):
                wide = wide or abs(item) >= WIDE_FLOAT
            elif isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
    return wide, False


def fast_record(line: bytes) -> dict[str, Any] | None:
    """The line's JSON object as ``json.loads`` gives it, parsed by orjson (~3x faster, straight from the
    bytes), or None where the two could differ or the line needs a verdict: orjson refuses what is not strict
    UTF-8, a lone surrogate escape (``\\uD800``), NaN/Infinity and more than 64-bit-wide or infinite numbers
    (the standard parser then decides); an object holding a float of magnitude 2**63 or more (a wide integer
    may have become one; smaller float literals are parsed as Python's ``float`` parses them), nesting
    deeper than ``MAX_JSON_DEPTH`` or anything but an object goes that way too."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if any(_wide_float_or_depth(record)):
        return None
    return record


def parse_line(ctx: ShardContext, index: int, line: bytes) -> Document | Rejection:
    """One raw JSONL line into a Document or a Rejection."""
    if line.startswith(UTF8_BOM):  # a BOM opening the file (or a file concatenated into it)
        line = line[len(UTF8_BOM) :]
    record = fast_record(line)
    if record is None:
        record = _parse_strictly(ctx, index, line)
        if isinstance(record, Rejection):
            return record
    field = ctx.spec.text_field
    present = field in record
    text = record.pop(field, None)
    bad = ctx.check_text(index, text, present)
    if bad is not None:
        return bad
    return ctx.document(index, text, record)


def _parse_strictly(ctx: ShardContext, index: int, line: bytes) -> dict[str, Any] | Rejection:
    """The line through ``json`` with every check (the path of whatever :func:`fast_record` leaves)."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return ctx.reject(index, REJECT_INVALID_UTF8, f"byte {err.start}: {err.reason}")
    try:
        record = json.loads(decoded, parse_int=_bounded_int)
    except _IntegerTooLong:
        return ctx.reject(index, REJECT_MALFORMED_JSON, TOO_LONG_INTEGER)
    except ValueError as err:
        detail = "blank line" if not decoded.strip() else f"{err.msg} at column {err.colno}"
        return ctx.reject(index, REJECT_MALFORMED_JSON, detail)
    except RecursionError:
        return ctx.reject(index, REJECT_MALFORMED_JSON, TOO_DEEP)
    if not isinstance(record, dict):
        return ctx.reject(index, REJECT_MALFORMED_JSON, f"a JSON {type(record).__name__}, not an object")
    if nested_deeper_than(record, MAX_JSON_DEPTH):
        return ctx.reject(index, REJECT_MALFORMED_JSON, TOO_DEEP)
    if _surrogate_escape(line) and (where := _lone_surrogate(record, "")):
        return ctx.reject(index, REJECT_INVALID_UNICODE, f"lone surrogate escape: {where}")
    return record


def _item(ctx: ShardContext, index: int, line: bytes | TooLarge, limit: int) -> Document | Rejection:
    """One line (``\\r\\n`` endings allowed) into a Document or a Rejection."""
    if isinstance(line, TooLarge):
        detail = f"a line of {line.size:,} bytes; a record may hold {limit:,} (filters.max_record_bytes)"
        return ctx.reject(index, REJECT_TOO_LARGE, detail)
    return parse_line(ctx, index, line[:-1] if line.endswith(b"\r") else line)


def read_jsonl(
    ctx: ShardContext,
    fmt: str,
    skip: int = 0,
    select: Select | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[Document | Rejection]:
    """Yield one item per line of a (compressed) JSONL shard, from line ``skip`` on.

    With ``select``, a line whose index it rejects is only counted (never decoded or parsed). A line of more
    than ``max_record_bytes`` bytes (without its newline) is a ``record_too_large`` rejection, read in bounded
    memory whether selected or not.
    """
    with ctx.open() as raw:
        chunks = _CHUNKERS[fmt](raw)
        index = ctx.first_index
        # a final line without newline, held until the stream ends cleanly
        pending: bytes | TooLarge | None = None
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
            for line, terminated in raw_lines(chunks, max_record_bytes):
                if not terminated:
                    pending = line
                    continue
                if select is None or select(index):
                    yield _item(ctx, index, line, max_record_bytes)
                index += 1
        except StreamBroken as broken:
            # the records are all there (trailing garbage, empty file): the last one too
            if broken.count == 0:
                if pending is not None and (select is None or select(index)):
                    yield _item(ctx, index, pending, max_record_bytes)
                index += pending is not None
                yield ctx.reject(index, broken.reason, f"{broken.detail}; {index} lines read", count=0)
                return
            lost = (
                "the partial line here and any records after it" if pending else "any records after this line"
            )
            yield ctx.reject(
                index,
                broken.reason,
                f"{broken.detail}; {index} lines read before the break; {lost} cannot be read (count "
                "unknowable)",
            )
            return
        if pending is not None and (select is None or select(index)):
            yield _item(ctx, index, pending, max_record_bytes)
