"""What an open shard reader holds decoded (issue 27): a stream keeps one reader open per source and
partition, so each one must hold a bounded slice of its shard, not a decoded parquet row group or a 1 MiB
JSONL chunk."""

from __future__ import annotations

import json
import random
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

WORDS = [f"w{i:x}" for i in range(5000)]
ROWS, ROW_BYTES = 2048, 4096


def _texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=ROW_BYTES // 5))[:ROW_BYTES] for _ in range(ROWS)]


def _held_after_first_item(path: str, select) -> tuple[int, int, Document, object]:
    """Python (tracemalloc) and Arrow-pool bytes newly held while a reader stands at its first record."""
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        items = iter(read_shard(path, "pile", "default", select=select))
        first = next(items)
        python, arrow = tracemalloc.get_traced_memory()[0], pa.total_allocated_bytes() - arrow_before
    finally:
        tracemalloc.stop()
    return python, arrow, first, items


def test_an_open_parquet_reader_holds_a_few_rows_not_its_row_group(tmp_path):
    texts = _texts(0)  # 8 MiB of text in ONE row group, written in 64 KiB pages
    path = tmp_path / "one_group.parquet"
    pq.write_table(
        pa.table({"text": texts}),
        path,
        row_group_size=ROWS,
        data_page_size=64 << 10,
        write_batch_size=16,
        use_dictionary=False,
        compression="snappy",
    )
    _, decoded, first, rest = _held_after_first_item(str(path), select=range(ROWS))
    # pyarrow holds the compressed column chunk (Python bytes) whatever the batch; what is decoded is bounded
    # 1,024 rows: 4 MiB
    assert decoded < 1 << 20, f"{decoded:,} bytes decoded by a parquet reader standing at row 0"
    read = [first.text] + [item.text for item in rest]
    assert read == texts  # the same records, in order (oracle: what was written)


def test_an_open_jsonl_reader_holds_less_than_a_mebibyte(tmp_path):
    texts = _texts(1)
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    held, _, first, rest = _held_after_first_item(str(path), select=None)
    # a 1 MiB chunk + lines
    assert held < 1 << 20, f"{held:,} bytes held by a JSONL reader standing at line 0"
    assert [first.text] + [item.text for item in rest] == texts
