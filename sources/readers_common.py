"""What every reader shares: opening a URI through fsspec, hashing it, and turning a record into a Document."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

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


def open_binary(uri: str) -> BinaryIO:
    """Open ``uri`` (local path, file://, memory://, hf://, s3://, https://...) for streamed binary reads.

    Raises FileNotFoundError naming the URI when nothing is there.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"shard not found: {uri}") from err


@contextmanager
def fetched(uri: str) -> Iterator[str]:
    """A local path holding the bytes of ``uri``, for hashing and reading the very same bytes.

    A local file is used in place. Anything else (hf://, s3://, https://, memory://) is downloaded once
    to a temporary file, removed on exit: the shard crosses the network once instead of once to hash
    and again to read, and a file replaced upstream between the two cannot slip in.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    fd, local = tempfile.mkstemp(prefix="elm-data-shard-", suffix=os.path.basename(path)[-64:])
    os.close(fd)
    try:
        try:
            fs.get_file(path, local)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"shard not found: {uri}") from err
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
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return int(fs.size(path))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"shard not found: {uri}") from err


def json_safe(value: Any) -> Any:
    """``value`` with datetimes as ISO strings, bytes as hex and tuples as lists, so json.dumps accepts it."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class ShardContext:
    """One shard being read: its spec, URI and hash; builds the items a reader yields.

    ``local_path``: where the bytes are read from when not ``uri`` itself (a :func:`fetched` copy);
    provenance and rejections always name ``uri``.
    """

    spec: SubsetSpec
    uri: str
    sha256: str
    local_path: str | None = None

    def open(self) -> BinaryIO:
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
            return self.reject(index, REJECT_NOT_A_STRING, f"{field!r} is {type(text).__name__}, not a string")
        if not text or text.isspace():  # same as `not text.strip()`, without copying the text
            return self.reject(index, REJECT_EMPTY_TEXT, f"{field!r} is empty or whitespace ({len(text)} chars)")
        return None

    def document(self, index: int, text: str, metadata: dict[str, Any]) -> Document:
        """A Document for an already-checked ``text``; ``metadata`` is the record without its text field."""
        spec = self.spec
        native = _lookup(metadata, spec.id_field) if spec.id_field else None
        native_id = None if native is None or native == "" else str(native)
        licence = spec.licence
        if spec.licence_field:
            per_record = _lookup(metadata, spec.licence_field)
            if isinstance(per_record, str) and per_record:
                licence = per_record
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
