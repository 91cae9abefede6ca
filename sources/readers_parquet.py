"""Parquet shards (RefinedWeb, the deduplicated Pile), streamed with
``pyarrow.parquet.ParquetFile.iter_batches``.

The footer is checked against the subset's expected columns first: a shard with the wrong schema
becomes one Rejection counting all its rows (from the metadata). ``skip`` drops whole row groups
through the metadata and slices the first batch read. A ``select`` predicate reads only the row
groups (and batches) holding selected rows and converts only those rows to Python.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.core.canonical_json import json_safe
from elm_data.sources.blocks import BlockChanged
from elm_data.sources.document import (
    REJECT_INVALID_UTF8,
    REJECT_SCHEMA,
    REJECT_UNREADABLE,
    Document,
    Rejection,
)
from elm_data.sources.readers_common import Select, ShardContext

BATCH_ROWS = 1024  # rows decoded at once by a full read (the build: every row of the shard is converted)
# A selective read (the stream) holds one decoded batch per open shard for as long as the shard is open, and a
# partition keeps one open shard per source: small batches bound that to SELECT_BATCH_ROWS decoded records
# plus the page being decoded, not a whole decoded row group (issue 27). (pyarrow still reads a column chunk
# whole.)
SELECT_BATCH_ROWS = 64
# ... except where the text column is mostly one dictionary page: then up to this many bytes of a row group's
# batches (from its first selected row) are decoded at once, so that the reader's decoding state (the
# compressed column chunk, the decoded dictionary and page, which pyarrow keeps while a row group is read) is
# freed at once, and an open shard holds only the batches it has not yet given (issue 27: ~6 MiB instead of
# ~14.5 MiB a reader)
DECODED_AHEAD_BYTES = 16 << 20

# The columns each parquet subset must have, as published upstream (type checked for the text column).
EXPECTED_COLUMNS: dict[str, pa.Schema] = {
    "refinedweb/default": pa.schema(
        [
            ("content", pa.string()),
            ("url", pa.string()),
            ("timestamp", pa.timestamp("s")),
            ("dump", pa.string()),
            ("segment", pa.string()),
            ("image_urls", pa.list_(pa.list_(pa.string()))),
        ]
    ),
    "pile/default": pa.schema([("text", pa.string())]),
}


def _is_text(t: pa.DataType) -> bool:
    """Whether values of ``t`` are Python strings: string, large_string, string_view, or a dictionary of
    them."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def schema_problem(schema: pa.Schema, key: str, text_field: str) -> str | None:
    """Why ``schema`` cannot be read as subset ``key``, or None when it can."""
    expected = EXPECTED_COLUMNS.get(key, pa.schema([(text_field, pa.string())]))
    missing = [name for name in expected.names if schema.get_field_index(name) < 0]
    if missing:
        return f"missing column(s) {missing}; file has {schema.names}"
    text_type = schema.field(text_field).type
    if not _is_text(text_type):
        return f"text column {text_field!r} is {text_type}, expected string"
    return None


def _plain_json(t: pa.DataType) -> bool:
    """Whether to_pylist() of this type is already JSON-safe (strings, numbers, bools, lists/structs of
    them)."""
    if pa.types.is_dictionary(t):
        return _plain_json(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return _plain_json(t.value_type)
    if pa.types.is_struct(t):
        return all(_plain_json(t.field(i).type) for i in range(t.num_fields))
    return (
        _is_text(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
    )


def _column_values(batch: pa.RecordBatch, name: str) -> list:
    """A column as JSON-safe Python values (timestamps as ISO strings)."""
    column = batch.column(name)
    values = column.to_pylist()
    return values if _plain_json(column.type) else [json_safe(v) for v in values]


# ValueError includes UnicodeDecodeError, and BlockChanged: every handler lets that one through first
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


def _groups_from(metadata: pq.FileMetaData, skip: int) -> list[tuple[int, int, int]]:
    """``(row group, first row, end row)`` of every row group holding a row at or after ``skip``."""
    groups, start = [], 0
    for g in range(metadata.num_row_groups):
        end = start + metadata.row_group(g).num_rows
        if end > skip:
            groups.append((g, start, end))
        start = end
    return groups


def _group_unreadable(ctx: ShardContext, g: int, index: int, end: int, err: object) -> Rejection:
    """One rejection for the rows of row group ``g`` from ``index`` on; the other row groups are still
    read."""
    reason = " ".join(str(err).split())
    detail = f"parquet row group {g} unreadable from row {index} (its rows {index}..{end - 1}): {reason}"
    return ctx.reject(index, REJECT_UNREADABLE, detail, count=end - index)


def _row_item(
    ctx: ShardContext, batch: pa.RecordBatch, row: int, index: int, plain: dict[str, bool]
) -> Document | Rejection:
    """One row of ``batch`` as a Document or Rejection; a string that is not UTF-8 rejects the row."""
    name = ctx.spec.text_field
    try:
        text = batch.column(name)[row].as_py()
        bad = ctx.check_text(index, text)
        if bad is not None:
            return bad
        meta = {}
        for name, is_plain in plain.items():
            value = batch.column(name)[row].as_py()
            meta[name] = value if is_plain else json_safe(value)
    except UnicodeDecodeError as err:
        return ctx.reject(index, REJECT_INVALID_UTF8, f"column {name!r}, byte {err.start}: {err.reason}")
    return ctx.document(index, text, meta)


def _batch_rows(
    ctx: ShardContext, batch: pa.RecordBatch, plain: dict[str, bool], at: list[int]
) -> Iterator[Document | Rejection]:
    """The rows of one batch, converted column-wise (fast), or row by row when a string is not UTF-8."""
    text_field = ctx.spec.text_field
    try:
        texts = batch.column(text_field).to_pylist()
        columns = {name: _column_values(batch, name) for name in plain}
    except UnicodeDecodeError:
        for row in range(batch.num_rows):
            yield _row_item(ctx, batch, row, at[0], plain)
            at[0] += 1
        return
    for row, text in enumerate(texts):
        index = at[0]
        bad = ctx.check_text(index, text)
        yield bad if bad is not None else ctx.document(index, text, {n: v[row] for n, v in columns.items()})
        at[0] = index + 1


def _rows(
    ctx: ShardContext, parquet: pq.ParquetFile, groups: list[tuple[int, int, int]], skip: int, at: list[int]
) -> Iterator[Document | Rejection]:
    """Every row of ``groups`` (consecutive) from row ``skip`` on, in one pass; ``at[0]`` is the next row's
    index."""
    schema = parquet.schema_arrow
    plain = {n: _plain_json(schema.field(n).type) for n in schema.names if n != ctx.spec.text_field}
    to_slice = max(0, skip - groups[0][1])
    at[0] = groups[0][1] + to_slice
    row_groups = [g for g, _, _ in groups]
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups, use_threads=False):
        if to_slice:
            cut = min(to_slice, batch.num_rows)
            batch, to_slice = batch.slice(cut), to_slice - cut
        yield from _batch_rows(ctx, batch, plain, at)
    if at[0] < groups[-1][2]:
        raise ValueError(f"the row groups hold fewer rows than the metadata says ({groups[-1][2]})")


def _batches_from(
    raw: BinaryIO, metadata: pq.FileMetaData, g: int, start: int, first: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(first record, batch)`` for each decoded batch of row group ``g`` (its first record ``start``) that
    holds record ``first`` or a later one. The file is opened for this row group only: a ``ParquetFile`` keeps
    the last column chunk it read from a Python file for as long as it lives (~2.6 MiB for 1,000 web
    documents)."""
    batch_start = start
    parquet = pq.ParquetFile(raw, metadata=metadata)
    for batch in parquet.iter_batches(batch_size=SELECT_BATCH_ROWS, row_groups=[g], use_threads=False):
        if batch_start + batch.num_rows > first:
            yield batch_start, batch
        batch_start += batch.num_rows


def _mostly_dictionary(row_group: pq.RowGroupMetaData, column: str) -> bool:
    """Whether ``column``'s chunk in ``row_group`` is mostly its dictionary page (as when a row group's
    texts are fewer than the writer's batch, e.g. 1,000-row row groups from ``datasets``: pyarrow never falls
    back to plain pages). Read lazily, pyarrow then holds the decoded dictionary, the page and the compressed
    chunk for as long as the row group is read: about twice its text, where decoding the wanted rows at once
    holds them only."""
    for i in range(row_group.num_columns):
        chunk = row_group.column(i)
        if chunk.path_in_schema == column:
            if not chunk.has_dictionary_page or chunk.dictionary_page_offset is None:
                return False
            return 2 * (chunk.data_page_offset - chunk.dictionary_page_offset) >= chunk.total_compressed_size
    return False


def _decoded_ahead(pieces: Iterator[tuple[int, pa.RecordBatch]], budget: int) -> Iterator:
    """``pieces`` in order: those holding the first ``budget`` bytes decoded at once, the rest as asked for.

    A row group that fits is decoded whole at once, so pyarrow's reader of it (the compressed column chunk and
    the decoded dictionary and page, ~14.5 MiB for 1,000 web documents) is freed at once, and what stays is
    its batches not yet handed out (~6 MiB at first). An error met while decoding is raised where the lazy
    read would meet it: after the batches decoded before it."""
    ahead: deque = deque()
    held, failure = 0, None
    try:
        while held <= budget:
            piece = next(pieces, None)
            if piece is None:
                break
            ahead.append(piece)
            held += piece[1].nbytes
    except Exception as err:  # raised below, after the rows decoded before it
        failure = err
    while ahead:
        yield ahead.popleft()
    if failure is not None:
        raise failure
    yield from pieces


def _selected_group_rows(
    ctx: ShardContext,
    raw: BinaryIO,
    parquet: pq.ParquetFile,
    group: tuple[int, int, int],
    skip: int,
    select: Select,
    at: list[int],
) -> Iterator[Document | Rejection]:
    """The rows of one row group that ``select`` accepts, from row ``skip`` on; unread when it accepts
    none."""
    g, start, end = group
    spec = ctx.spec
    schema = parquet.schema_arrow
    plain = {n: _plain_json(schema.field(n).type) for n in schema.names if n != spec.text_field}
    batches: Iterator[tuple[int, pa.RecordBatch]] | None = None
    batch: pa.RecordBatch | None = None
    batch_start = batch_end = start
    for index in range(max(start, skip), end):
        if not select(index):
            continue
        at[0] = index
        if batches is None:
            ahead = (
                DECODED_AHEAD_BYTES
                if _mostly_dictionary(parquet.metadata.row_group(g), spec.text_field)
                else 0
            )
            batches = _decoded_ahead(_batches_from(raw, parquet.metadata, g, start, index), ahead)
        while index >= batch_end:
            batch_start, batch = next(batches, (None, None))
            if batch is None:
                raise ValueError(f"row group {g} holds fewer rows than its metadata says ({end - start})")
            batch_end = batch_start + batch.num_rows
        yield _row_item(ctx, batch, index - batch_start, index, plain)


def _all_rows(
    ctx: ShardContext, parquet: pq.ParquetFile, groups: list[tuple[int, int, int]], skip: int
) -> Iterator[Document | Rejection]:
    """Every row from ``skip`` on in one pass; after a break, group by group, a broken group costing its
    rows."""
    at = [skip]
    try:  # one pass over every row group (a batch may span row groups)
        yield from _rows(ctx, parquet, groups, skip, at) if groups else ()
        return
    except BlockChanged:  # verified bytes that changed: the stream stops (invariant 4)
        raise
    except _READ_ERRORS:
        pass
    resume = at[0]  # the first row not yet yielded
    for group in groups:
        if group[2] <= resume:
            continue
        try:
            yield from _rows(ctx, parquet, [group], max(group[1], resume), at)
        except BlockChanged:  # verified bytes that changed: the stream stops (invariant 4)
            raise
        except _READ_ERRORS as err:
            yield _group_unreadable(ctx, group[0], at[0], group[2], err)


def _selected_rows(
    ctx: ShardContext,
    raw: BinaryIO,
    parquet: pq.ParquetFile,
    groups: list[tuple[int, int, int]],
    skip: int,
    select: Select,
) -> Iterator[Document | Rejection]:
    """The rows ``select`` accepts, row group by row group; a broken group costs its rows from where it
    broke."""
    for group in groups:
        at = [max(group[1], skip)]
        try:
            yield from _selected_group_rows(ctx, raw, parquet, group, skip, select, at)
        except BlockChanged:  # verified bytes that changed: the stream stops (invariant 4)
            raise
        except _READ_ERRORS as err:
            yield _group_unreadable(ctx, group[0], at[0], group[2], err)


def read_parquet(
    ctx: ShardContext, skip: int = 0, select: Select | None = None
) -> Iterator[Document | Rejection]:
    """Yield one item per row of a parquet shard, from row ``skip`` on (only the rows ``select`` accepts).

    A row group that cannot be read costs one rejection counting its rows from where it broke;
    the other row groups are read as usual.
    """
    spec = ctx.spec
    with ctx.open() as raw:
        try:
            parquet = pq.ParquetFile(raw, metadata=ctx.parquet_metadata)
            metadata = parquet.metadata
            schema = parquet.schema_arrow
        except BlockChanged:  # verified bytes that changed: the stream stops (invariant 4)
            raise
        except _READ_ERRORS as err:
            yield ctx.reject(
                -1, REJECT_UNREADABLE, f"not a readable parquet file: {err} (row count unknowable)"
            )
            return
        num_rows = metadata.num_rows
        problem = schema_problem(schema, spec.key, spec.text_field)
        if problem is not None:
            if num_rows > skip:
                yield ctx.reject(max(skip, 0), REJECT_SCHEMA, problem, count=num_rows - max(skip, 0))
            return
        groups = _groups_from(metadata, skip)
        if select is None:
            yield from _all_rows(ctx, parquet, groups, skip)
        else:
            yield from _selected_rows(ctx, raw, parquet, groups, skip, select)
