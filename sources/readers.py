"""Read a shard of any registered source into Documents or counted Rejections.

All I/O goes through fsspec, so local paths, ``file://``, ``memory://``, ``hf://datasets/...``,
``s3://`` and ``https://`` URIs work alike; shards are streamed in constant memory.
"""

from __future__ import annotations

from collections.abc import Iterator

from elm_data.sources.document import Document, Rejection
from elm_data.sources.readers_common import ShardContext, open_binary, sha256_of, size_of
from elm_data.sources.readers_jsonl import read_jsonl
from elm_data.sources.readers_parquet import read_parquet
from elm_data.sources.registry import FORMAT_PARQUET, get_subset

__all__ = ["read_shard", "sha256_of", "size_of", "shard_format"]


def shard_format(uri: str, source: str, subset: str) -> str:
    """The reader format for ``uri``: the subset's registered format, or by extension where it has several."""
    return get_subset(source, subset).format_for(uri)


def read_shard(
    uri: str,
    source: str,
    subset: str,
    shard_sha256: str | None = None,
    skip: int = 0,
) -> Iterator[Document | Rejection]:
    """Yield one Document or Rejection per input record of the shard at ``uri``.

    The format comes from the registry (by file extension for the Pile). ``shard_sha256`` is
    computed (streamed) when not given. ``skip`` drops the first N records cheaply; indices
    stay absolute. A missing file raises FileNotFoundError; everything else wrong with the
    input becomes a Rejection with its location and reason.
    """
    spec = get_subset(source, subset)
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    fmt = spec.format_for(uri)
    open_binary(uri).close()  # fail early and clearly when the file is missing
    ctx = ShardContext(spec=spec, uri=uri, sha256=shard_sha256 or sha256_of(uri))
    if fmt == FORMAT_PARQUET:
        return read_parquet(ctx, skip)
    return read_jsonl(ctx, fmt, skip)
