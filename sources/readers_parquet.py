"""Parquet shards (RefinedWeb, the deduplicated Pile), streamed with ``pyarrow.parquet.ParquetFile.iter_batches``.

The footer is checked against the subset's expected columns first: a shard with the wrong schema
becomes one Rejection counting all its rows (from the metadata). ``skip`` drops whole row groups
through the metadata and slices the first batch read.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.sources.document import REJECT_SCHEMA, REJECT_UNREADABLE, Document, Rejection
from elm_data.sources.readers_common import ShardContext, json_safe, open_binary

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


def read_parquet(ctx: ShardContext, skip: int = 0) -> Iterator[Document | Rejection]:
    """Yield one item per row of a parquet shard, from row ``skip`` on."""
    spec = ctx.spec
    with open_binary(ctx.uri) as raw:
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
