"""What every reader shares: opening a URI through fsspec, hashing it, and turning a record into a
Document."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from fsspec.implementations.local import LocalFileSystem

from elm_data.core.errors import ElmDataError, NotFound
from elm_data.sources import remote
from elm_data.sources.document import (
    REJECT_EMPTY_TEXT,
    REJECT_MISSING_TEXT,
    REJECT_NOT_A_STRING,
    Document,
    Provenance,
    Rejection,
    derived_doc_id,
)
from elm_data.sources.registry import SubsetSpec

HASH_CHUNK = 8 * 1024 * 1024  # 8 MiB

Select = Callable[[int], bool]  # which record indices a reader decodes (see read_shard's ``select``)

# A JSON value nested deeper is not read as one (a record: one malformed_json rejection; a JSON string a
# dotted lookup would open: no object). Fixed, not Python's recursion limit, so no verdict depends on the
# depth of the calling stack (the build and the stream call from different depths). The record is level 1.
MAX_JSON_DEPTH = 256

HEAD_BYTES = 64  # bytes of a file's start that :func:`detect_format` looks at
UTF8_BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGIC = ((GZIP_MAGIC, "jsonl.gz"), (ZSTD_MAGIC, "jsonl.zst"), (b"PAR1", "parquet"))
_FOREIGN = ((b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"), (b"PK\x03\x04", "zip"), (b"\x04\x22\x4d\x18", "lz4"))
_BY_SUFFIX = (
    (".parquet", "parquet"),
    (".gz", "jsonl.gz"),
    (".gzip", "jsonl.gz"),
    (".zst", "jsonl.zst"),
    (".zstd", "jsonl.zst"),
    (".jsonl", "jsonl"),
    (".json", "jsonl"),
    (".ndjson", "jsonl"),
)


class UnsupportedFormat(ElmDataError, ValueError):
    """The bytes are in a format no reader handles (e.g. xz or bzip2 compressed), whatever the name says."""


def format_by_name(name: str) -> str | None:
    """The reader format a file name claims by its extension, or None when it names none."""
    lower = name.lower()
    return next((fmt for suffix, fmt in _BY_SUFFIX if lower.endswith(suffix)), None)


def zstd_frame_start(data: bytes) -> bool:
    """Whether ``data`` starts a zstd frame: a data frame or a skippable one (magic ``184d2a5X``)."""
    return data.startswith(ZSTD_MAGIC) or (
        len(data) >= 4 and data[0] & 0xF0 == 0x50 and data[1:4] == b"\x2a\x4d\x18"
    )


def detect_format(head: bytes, name: str, default: str | None = None) -> str:
    """The reader format of a file from its first bytes: ``"parquet" | "jsonl" | "jsonl.gz" | "jsonl.zst"``.

    Magic bytes win over the name (gzip ``1f8b``, zstd ``28b52ffd`` or a skippable frame, parquet
    ``PAR1``); bytes that start like a JSON object (after an optional UTF-8 BOM and whitespace) are
    plain JSON Lines whatever the name says; anything else is what the name's extension claims
    (:func:`format_by_name`), else ``default`` (e.g. the registry's format), else ``"jsonl"``, so the
    reader of that format reports the damage. Raises :class:`UnsupportedFormat` for xz, bzip2, zip
    or lz4 bytes.
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if zstd_frame_start(head):
        return "jsonl.zst"
    for magic, kind in _FOREIGN:
        if head.startswith(magic):
            raise UnsupportedFormat(
                f"{kind}-compressed bytes (magic {magic.hex()}), not a supported shard format"
            )
    text = head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head
    if text.lstrip(b" \t\r\n").startswith(b"{"):
        return "jsonl"
    return format_by_name(name) or default or "jsonl"


def open_binary(uri: str) -> BinaryIO:
    """Open ``uri`` (local path, file://, memory://, hf://, s3://, https://...) for streamed binary reads.

    Raises ``NotFound`` (a FileNotFoundError) naming the URI when nothing is there.
    """
    try:
        return remote.open_read(uri)  # a remote file's reads are retried on transient faults
    except FileNotFoundError as err:
        raise NotFound(f"shard not found: {uri}") from err


@contextmanager
def fetched(uri: str) -> Iterator[str]:
    """A local path holding the bytes of ``uri``, for hashing and reading the very same bytes.

    A local file is used in place. Anything else (hf://, s3://, https://, memory://) is downloaded once
    to a temporary file, removed on exit: the shard crosses the network once instead of once to hash
    and again to read, and a file replaced upstream between the two cannot slip in.
    """
    fs, path = remote.filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    # a scratch copy to read, not an output: outputs are written only through elm_data.core.outputs
    fd, local = tempfile.mkstemp(prefix="elm-data-shard-", suffix=os.path.basename(path)[-64:])
    os.close(fd)
    try:
        try:
            remote.download(uri, local)  # ranged reads, each retried on transient faults
        except FileNotFoundError as err:
            raise NotFound(f"shard not found: {uri}") from err
        yield local
    finally:
        os.unlink(local)


def sha256_of(uri: str) -> str:
    """SHA-256 of the bytes at ``uri``, streamed in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open_binary(uri) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def size_of(uri: str) -> int:
    """Size in bytes of the file at ``uri``."""
    fs, path = remote.filesystem(uri)
    try:
        return int(remote.retrying(f"size of {uri}", lambda: fs.size(path)))
    except FileNotFoundError as err:
        raise NotFound(f"shard not found: {uri}") from err


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest deeper than ``limit`` levels (``value`` itself is level 1;
    walked without recursion: the value may be as deep as its text is long)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((inner, depth + 1) for inner in (item.values() if isinstance(item, dict) else item))
    return False


def _as_object(value: Any) -> Any:
    """``value``, or the object it encodes when it is a JSON object serialized as a string (nested at most
    ``MAX_JSON_DEPTH`` levels: a deeper one is no object here, whatever the calling stack's depth)."""
    if isinstance(value, str) and value[:1] == "{":
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested beyond what this stack allows
            return value
        return value if nested_deeper_than(parsed, MAX_JSON_DEPTH) else parsed
    return value


def _encodable(value: str) -> str:
    """``value`` with any lone surrogate written as its ``\\udXXX`` escape (one parsed from a JSON-string
    level)."""
    if value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path; a level stored as a JSON string (``"meta": "{...}"``) is parsed."""
    value: Any = record
    for part in dotted.split("."):
        value = _as_object(value)
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class ShardView(Protocol):
    """Bytes of a shard the caller holds open and verified (``sources/blocks.py:VerifiedView``), handed to a
    reader explicitly; the reader never closes it."""

    first_record: int  # the index of the view's first record (a JSONL block's view starts mid-shard)

    def reader(self) -> BinaryIO:
        """A file over the view's bytes from their start; closing it leaves the view open."""
        ...

    def parquet_metadata(self) -> Any:
        """The shard's parquet footer, already read and verified, or None (then the reader reads it)."""
        ...


@dataclass(frozen=True)
class ShardContext:
    """One shard being read: its spec, URI and hash; builds the items a reader yields.

    The bytes come from ``view`` when given, else ``local_path`` (a :func:`fetched` copy), else ``uri``;
    provenance and rejections always name ``uri``.
    """

    spec: SubsetSpec
    uri: str
    sha256: str
    local_path: str | None = None
    view: ShardView | None = None

    @property
    def first_index(self) -> int:
        """Records that precede the bytes read (a JSONL block's view starts mid-shard)."""
        return self.view.first_record if self.view is not None else 0

    @property
    def parquet_metadata(self) -> Any:
        """A parquet file's footer, already read and verified (then it is not re-read), or None."""
        return self.view.parquet_metadata() if self.view is not None else None

    def open(self) -> BinaryIO:
        if self.view is not None:
            return self.view.reader()
        return open_binary(self.local_path or self.uri)

    def reject(self, index: int, reason: str, detail: str = "", count: int = 1) -> Rejection:
        return Rejection(
            source=self.spec.source,
            subset=self.spec.subset,
            shard_uri=self.uri,
            index=index,
            reason=reason,
            detail=detail,
            count=count,
        )

    def check_text(self, index: int, text: Any, present: bool = True) -> Rejection | None:
        """A Rejection when ``text`` cannot be a document's text, else None."""
        field = self.spec.text_field
        if not present or text is None:
            detail = f"no {field!r} field" if not present else f"{field!r} is null"
            return self.reject(index, REJECT_MISSING_TEXT, detail)
        if not isinstance(text, str):
            return self.reject(
                index, REJECT_NOT_A_STRING, f"{field!r} is {type(text).__name__}, not a string"
            )
        if not text or text.isspace():  # same as `not text.strip()`, without copying the text
            return self.reject(
                index, REJECT_EMPTY_TEXT, f"{field!r} is empty or whitespace ({len(text)} chars)"
            )
        return None

    def document(self, index: int, text: str, metadata: dict[str, Any]) -> Document:
        """A Document for an already-checked ``text``; ``metadata`` is the record without its text field."""
        spec = self.spec
        native = _lookup(metadata, spec.id_field) if spec.id_field else None
        native_id = None if native is None or native == "" else _encodable(str(native))
        licence = spec.licence
        if spec.licence_field:
            per_record = _lookup(metadata, spec.licence_field)
            if isinstance(per_record, str) and per_record:
                licence = _encodable(per_record)
        provenance = Provenance(
            source=spec.source,
            subset=spec.subset,
            shard_uri=self.uri,
            shard_sha256=self.sha256,
            index=index,
            doc_id=native_id if native_id is not None else derived_doc_id(self.sha256, index),
            native_id=native_id,
            licence=licence,
        )
        return Document(text=text, provenance=provenance, metadata=metadata)
