"""Read a shard of any registered source into Documents or counted Rejections.

All I/O goes through fsspec, so local paths, ``file://``, ``memory://``, ``hf://datasets/...``,
``s3://`` and ``https://`` URIs work alike; shards are streamed in constant memory.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

from elm_data.sources.document import MAX_RECORD_BYTES, REJECT_UNREADABLE, Document, Rejection
from elm_data.sources.readers_common import (
    HEAD_BYTES,
    Select,
    ShardContext,
    ShardView,
    UnsupportedFormat,
    detect_format,
    fetched,
    open_binary,
    sha256_of,
    size_of,
)
from elm_data.sources.readers_jsonl import read_jsonl
from elm_data.sources.readers_parquet import read_parquet
from elm_data.sources.registry import FORMAT_PARQUET, get_subset

__all__ = [
    "read_shard",
    "fetched",
    "sha256_of",
    "size_of",
    "shard_format",
    "shard_format_of",
    "detect_format",
]


def shard_format(uri: str, source: str, subset: str) -> str:
    """The reader format for ``uri``: the subset's registered format, or by extension where it has several."""
    return get_subset(source, subset).format_for(uri)


def shard_format_of(uri: str, source: str, subset: str, name: str | None = None) -> str:
    """The reader format of the file at ``uri`` from its first bytes (else its name, else the registry).

    Raises FileNotFoundError when nothing is there, :class:`UnsupportedFormat` for foreign compressions.
    """
    with open_binary(uri) as f:
        head = f.read(HEAD_BYTES)
    return detect_format(head, name or uri, default=get_subset(source, subset).format_for(name or uri))


def read_shard(
    uri: str,
    source: str,
    subset: str,
    shard_sha256: str | None = None,
    skip: int = 0,
    *,
    select: Callable[[int], bool] | Collection[int] | None = None,
    fmt: str | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    local_path: str | None = None,
    view: ShardView | None = None,
) -> Iterator[Document | Rejection]:
    """Yield one Document or Rejection per input record of the shard at ``uri``.

    The format comes from the file's first bytes (:func:`detect_format`: gzip, zstd and parquet
    magic, or JSON text, whatever the name says), else from the registry (by file extension for
    the Pile). ``shard_sha256`` is computed (streamed) when not given. ``skip`` drops the first N records
    cheaply; indices stay absolute. A missing file raises FileNotFoundError; everything else wrong with the
    input becomes a Rejection with its location and reason.

    ``select`` (a predicate on the record index, or a collection of indices) reads only some records: an
    unselected JSONL line is counted but never decoded or parsed, an unselected
    parquet row is never converted, and a row group none of whose rows is selected is never
    read. A predicate is called lazily, once per index from ``skip`` on, in increasing order,
    when the reader reaches that record (so it may depend on what the caller has consumed).
    Selected records give exactly the items of a full read; failures of the shard itself
    (unreadable, wrong schema, truncated stream) are yielded whatever the selection. A
    selection accounts only for what it reads: use a full read to account for every record.

    ``fmt``: the format when already known (see :func:`shard_format_of`); no bytes are read to detect it.
    ``max_record_bytes``: a longer JSONL line is a ``record_too_large`` rejection, read in bounded memory
    (build and stream pass the manifest's ``filters.max_record_bytes``). Where the bytes come from (documents
    and rejections always name ``uri``): ``local_path``, a local copy of ``uri`` (see :func:`fetched`);
    ``view``, verified bytes the caller holds open (``sources/blocks.py: open_verified``; a JSONL block's view
    numbers its records from the block's first; give ``shard_sha256``).
    """
    spec = get_subset(source, subset)
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    if view is not None and (local_path is not None or shard_sha256 is None):
        raise ValueError("read_shard(view=) takes the shard's sha256 and no local_path")
    chosen = _as_predicate(select)
    sha256 = shard_sha256 or sha256_of(local_path or uri)
    ctx = ShardContext(spec=spec, uri=uri, sha256=sha256, local_path=local_path, view=view)
    if fmt is None:
        try:
            fmt = _format_of(ctx, source, subset)
        except UnsupportedFormat as err:
            return iter([ctx.reject(-1, REJECT_UNREADABLE, f"{err} (row count unknowable)")])
    if fmt == FORMAT_PARQUET:
        return read_parquet(ctx, skip, chosen)
    return read_jsonl(ctx, fmt, skip, chosen, max_record_bytes)


def _format_of(ctx: ShardContext, source: str, subset: str) -> str:
    """The format of the bytes ``ctx`` reads (see :func:`shard_format_of`)."""
    if ctx.view is None:
        return shard_format_of(ctx.local_path or ctx.uri, source, subset, name=ctx.uri)
    with ctx.open() as f:
        head = f.read(HEAD_BYTES)
    return detect_format(head, ctx.uri, default=get_subset(source, subset).format_for(ctx.uri))


def _as_predicate(select: Callable[[int], bool] | Collection[int] | None) -> Select | None:
    """``read_shard``'s ``select`` as a predicate on the record index (None: every record)."""
    if select is None or callable(select):
        return select
    return frozenset(select).__contains__
