"""What an open shard reader holds decoded (issue 27): a stream keeps one reader open per source and
partition, so each one must hold a bounded slice of its shard, not a decoded parquet row group or a 1 MiB
JSONL chunk."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


def test_an_open_reader_of_a_dictionary_encoded_row_group_holds_its_text_once_then_less(tmp_path):
    """A row group of fewer texts than pyarrow's write batch is one dictionary page (``datasets``' 1,000-row
    row groups of web documents are): read lazily, pyarrow holds the decoded dictionary, the page and the
    compressed chunk for as long as the reader is open, about twice the text; decoded at once, the text once,
    shrinking."""
    texts = _texts(2)[:1000]
    text_bytes = sum(len(t) for t in texts)  # ~4 MB
    path = tmp_path / "dictionary.parquet"
    pq.write_table(
        pa.table({"text": texts}), path, row_group_size=1000
    )  # pyarrow's defaults: dictionary, snappy
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert (
        chunk.has_dictionary_page
        and chunk.data_page_offset - chunk.dictionary_page_offset > chunk.total_compressed_size // 2
    )
    python, decoded, first, rest = _held_after_first_item(str(path), select=range(1000))
    assert python + decoded < 1.15 * text_bytes, f"{python + decoded:,} bytes held for {text_bytes:,} of text"
    arrow_before = pa.total_allocated_bytes() - decoded
    read = [first.text] + [next(rest).text for _ in range(599)]
    assert pa.total_allocated_bytes() - arrow_before < 0.5 * text_bytes  # given batches are released
    read += [item.text for item in rest]
    assert read == texts  # the same records, in order (oracle: what was written)


def test_an_open_jsonl_reader_holds_less_than_a_mebibyte(tmp_path):
    texts = _texts(1)
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    held, _, first, rest = _held_after_first_item(str(path), select=None)
    # a 1 MiB chunk + lines
    assert held < 1 << 20, f"{held:,} bytes held by a JSONL reader standing at line 0"
    assert [first.text] + [item.text for item in rest] == texts


@pytest.mark.parametrize("ahead", [0, 16 << 20], ids=["lazily", "at once"])
def test_a_row_group_breaking_midway_gives_its_rows_before_the_break_however_decoded(
    tmp_path, monkeypatch, ahead
):
    from elm_data.sources import readers_parquet

    rng = random.Random(3)
    texts = [f"document {i} " + " ".join(rng.choices(WORDS, k=60)) for i in range(256)]
    sink = pa.BufferOutputStream()  # one row group: a dictionary page, then data pages of 16 rows each
    pq.write_table(
        pa.table({"text": texts}), sink, row_group_size=256, data_page_size=64, write_batch_size=16
    )
    data = sink.getvalue().to_pybytes()
    chunk = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
    assert readers_parquet._mostly_dictionary(chunk, "text")  # so "at once" decodes the row group at once
    col = chunk.column(0)
    end = col.dictionary_page_offset + col.total_compressed_size
    cut = col.data_page_offset + (end - col.data_page_offset) * 6 // 10  # garbage over the last data pages
    path = tmp_path / "train-00000-of-01650-midway.parquet"
    path.write_bytes(data[:cut] + b"\xab" * (end - cut) + data[end:])
    good = 0  # the oracle: the rows pyarrow decodes, in the reader's batches, before it fails
    with pytest.raises(OSError):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=readers_parquet.SELECT_BATCH_ROWS):
            good += batch.num_rows
    assert 0 < good < 256
    monkeypatch.setattr(readers_parquet, "DECODED_AHEAD_BYTES", ahead)
    items = list(read_shard(str(path), "pile", "default", select=set(range(256))))
    assert [i.text for i in items if isinstance(i, Document)] == texts[:good]
    assert [(i.index, i.count) for i in items if not isinstance(i, Document)] == [(good, 256 - good)]


READERS_SCRIPT = """
import sys
from elm_data.core.procs import return_freed_memory
from elm_data.sources.readers import read_shard

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) << 10

paths = sys.argv[1:]
return_freed_memory()
for item in read_shard(paths[0], "pile", "default", select=range(1000)):  # one-time costs (first use)
    pass
before = rss()
readers = [iter(read_shard(p, "pile", "default", select=range(1000))) for p in paths]
for step in range(1000):  # the readers in turn, as a stream reads its partitions
    for reader in readers:
        next(reader)
    if step % 50 == 0:
        block = b"x" * (4 << 20)  # a verified block loaded, then dropped
print(rss() - before)
"""


@pytest.mark.slow
def test_a_reader_process_gives_back_what_its_readers_decoded_and_freed(tmp_path):
    """Eight open parquet readers decode ~32 MB and hand every row out: a process that returns freed memory
    (``return_freed_memory``, as each stream reader does) ends holding part of it (with Arrow's mimalloc
    pool and glibc's defaults it kept ~46 MiB; with glibc's mmap threshold at 128 KiB ~14 MiB, at 256 KiB,
    which spares a stream reader ~200 k page faults per 10 M tokens, 17-20 MiB)."""
    rng = random.Random(4)
    paths = []
    for k in range(8):
        texts = [" ".join(rng.choices(WORDS, k=800)) for _ in range(1000)]  # ~4 MB, one dictionary row group
        paths.append(str(tmp_path / f"train-0000{k}-of-01650.parquet"))
        pq.write_table(pa.table({"text": texts}), paths[-1], row_group_size=1000)
    out = subprocess.run(
        [sys.executable, "-c", READERS_SCRIPT, *paths], capture_output=True, text=True, check=True
    )
    kept = int(out.stdout.strip().splitlines()[-1])
    assert kept < 24 << 20, f"the process kept {kept:,} bytes of ~32 MB decoded and freed"
