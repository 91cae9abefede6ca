"""Parquet shards (RefinedWeb, the deduplicated Pile), streamed with ``pyarrow.parquet.ParquetFile.iter_batches``.

The footer is checked against the subset's expected columns first: a shard with the wrong schema
becomes one Rejection counting all its rows (from the metadata). ``skip`` drops whole row groups
through the metadata and slices the first batch read. A ``select`` predicate reads only the row
groups (and batches) holding selected rows and converts only those rows to Python.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.sources.document import REJECT_SCHEMA, REJECT_UNREADABLE, Document, Rejection
from elm_data.sources.readers_common import Select, ShardContext, json_safe

BATCH_ROWS = 1024

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


def schema_problem(schema: pa.Schema, key: str, text_field: str) -> str | None:
    """Why ``schema`` cannot be read as subset ``key``, or None when it can."""
    expected = EXPECTED_COLUMNS.get(key, pa.schema([(text_field, pa.string())]))
    missing = [name for name in expected.names if schema.get_field_index(name) < 0]
    if missing:
        return f"missing column(s) {missing}; file has {schema.names}"
    text_type = schema.field(text_field).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        return f"text column {text_field!r} is {text_type}, expected string"
    return None


def _plain_json(t: pa.DataType) -> bool:
    """Whether to_pylist() of this type is already JSON-safe (strings, numbers, bools, lists/structs of them)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _plain_json(t.value_type)
    if pa.types.is_struct(t):
        return all(_plain_json(t.field(i).type) for i in range(t.num_fields))
    return (
        pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
        or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
    )  # fmt: skip


def _column_values(batch: pa.RecordBatch, name: str) -> list:
    """A column as JSON-safe Python values (timestamps as ISO strings)."""
    column = batch.column(name)
    values = column.to_pylist()
    return values if _plain_json(column.type) else [json_safe(v) for v in values]


class _RowUnreadable(Exception):
    def __init__(self, index: int, err: Exception) -> None:
        super().__init__(str(err))
        self.index = index


def _selected_rows(
    ctx: ShardContext, parquet: pq.ParquetFile, groups: list[int], first_row: int, skip: int, select: Select
) -> Iterator[Document | Rejection]:
    """The rows ``select`` accepts, from row ``skip`` on; a row group with none of them is never read."""
    spec = ctx.spec
    schema = parquet.schema_arrow
    plain = {n: _plain_json(schema.field(n).type) for n in schema.names if n != spec.text_field}
    group_start = first_row
    for g in groups:
        group_end = group_start + parquet.metadata.row_group(g).num_rows
        batches: Iterator[pa.RecordBatch] | None = None
        batch: pa.RecordBatch | None = None
        batch_start = batch_end = group_start
        for index in range(max(group_start, skip), group_end):
            if not select(index):
                continue
            try:
                if batches is None:
                    batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], use_threads=False)
                while index >= batch_end:
                    batch = next(batches, None)
                    if batch is None:
                        raise ValueError(f"row group {g} holds fewer rows than its metadata says")
                    batch_start, batch_end = batch_end, batch_end + batch.num_rows
            except (pa.ArrowException, OSError, ValueError) as err:
                raise _RowUnreadable(index, err) from err
            row = index - batch_start
            text = batch.column(spec.text_field)[row].as_py()
            bad = ctx.check_text(index, text)
            if bad is not None:
                yield bad
                continue
            meta = {}
            for name, is_plain in plain.items():
                value = batch.column(name)[row].as_py()
                meta[name] = value if is_plain else json_safe(value)
            yield ctx.document(index, text, meta)
        group_start = group_end


def read_parquet(ctx: ShardContext, skip: int = 0, select: Select | None = None) -> Iterator[Document | Rejection]:
    """Yield one item per row of a parquet shard, from row ``skip`` on (only the rows ``select`` accepts)."""
    spec = ctx.spec
    with ctx.open() as raw:
        try:
            parquet = pq.ParquetFile(raw)
            metadata = parquet.metadata
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as err:
            yield ctx.reject(-1, REJECT_UNREADABLE, f"not a readable parquet file: {err} (row count unknowable)")
            return
        num_rows = metadata.num_rows
        problem = schema_problem(schema, spec.key, spec.text_field)
        if problem is not None:
            if num_rows > skip:
                yield ctx.reject(max(skip, 0), REJECT_SCHEMA, problem, count=num_rows - max(skip, 0))
            return

        # Drop whole row groups covered by `skip`, then slice inside the first group read.
        groups, first_row = [], 0
        for g in range(metadata.num_row_groups):
            rows = metadata.row_group(g).num_rows
            if first_row + rows <= skip:
                first_row += rows
            else:
                groups = list(range(g, metadata.num_row_groups))
                break
        if not groups:
            return
        if select is not None:
            try:
                yield from _selected_rows(ctx, parquet, groups, first_row, skip, select)
            except _RowUnreadable as broken:
                yield ctx.reject(
                    broken.index,
                    REJECT_UNREADABLE,
                    f"parquet data unreadable from row {broken.index}: {broken}",
                    count=num_rows - broken.index,
                )
            return
        to_slice = skip - first_row
        index = first_row
        other_columns = [n for n in schema.names if n != spec.text_field]
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, use_threads=False):
                if to_slice:
                    cut = min(to_slice, batch.num_rows)
                    batch, to_slice, index = batch.slice(cut), to_slice - cut, index + cut
                texts = batch.column(spec.text_field).to_pylist()
                columns = {name: _column_values(batch, name) for name in other_columns}
                for row, text in enumerate(texts):
                    bad = ctx.check_text(index, text)
                    if bad is not None:
                        yield bad
                    else:
                        meta = {name: values[row] for name, values in columns.items()}
                        yield ctx.document(index, text, meta)
                    index += 1
        except (pa.ArrowException, OSError, ValueError) as err:
            yield ctx.reject(
                index,
                REJECT_UNREADABLE,
                f"parquet data unreadable from row {index}: {err}",
                count=num_rows - index,
            )
