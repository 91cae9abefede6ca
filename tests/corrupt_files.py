"""Bad inputs in each native format, for the reader and build tests: one file per kind of damage (test-only).

``write_corrupt_examples(out_dir)`` writes them and says, for each, what a reader must yield:
how many good documents and which rejections (line/row, reason, count), in order.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import zstandard

from elm_data.sources import sample_text as st
from elm_data.sources.document import (
    REJECT_EMPTY_TEXT,
    REJECT_INVALID_UTF8,
    REJECT_MALFORMED_JSON,
    REJECT_MISSING_TEXT,
    REJECT_NOT_A_STRING,
    REJECT_SCHEMA,
    REJECT_TRUNCATED,
    REJECT_UNREADABLE,
)
from elm_data.sources.sample import dolma_line, gzip_bytes, redpajama_line, write_parquet, zstd_bytes


@dataclass(frozen=True)
class CorruptExample:
    """A damaged shard and what reading it must give.

    ``documents`` is the number of good documents; ``rejections`` lists (index, reason, count)
    in reading order. ``records`` is the number of input records when it is knowable (None for
    truncated or unreadable files), so that ``documents + sum(count) == records``.
    """

    name: str
    source: str
    subset: str
    path: Path
    documents: int
    rejections: tuple[tuple[int, str, int], ...]
    records: int | None


def _texts(rng: random.Random, n: int) -> list[str]:
    return [st.web_page(rng, rng.randint(250, 600)) for _ in range(n)]


def _rp(text: str) -> bytes:
    return redpajama_line(
        {"text": text, "meta": {"language": "en", "url": "https://example.com/", "source": "c4"}}
    )


def _dolma(text: str | None, i: int, subset: str, include_text: bool = True) -> bytes:
    record: dict = {
        "added": "2023-08-01T00:00:00.000Z",
        "id": f"{subset}-{i}",
        "metadata": {},
        "source": subset,
    }
    if include_text:
        record["text"] = text
    return dolma_line(record)


def _complete_lines(decompressed: bytes) -> int:
    return decompressed.count(b"\n")


def write_corrupt_examples(out_dir: str | Path, seed: int = 0) -> dict[str, CorruptExample]:
    """Write one damaged shard per kind of bad input under ``out_dir``; return them by name."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"corrupt:{seed}")
    texts = _texts(rng, 12)
    examples: dict[str, CorruptExample] = {}

    def add(name, source, subset, rel, payload, documents, rejections, records):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(payload, pa.Table):
            write_parquet(path, payload)
        else:
            path.write_bytes(payload)
        examples[name] = CorruptExample(name, source, subset, path, documents, tuple(rejections), records)

    # --- JSON Lines, one bad line each (line 2 of 5)
    good = [_rp(t) for t in texts[:5]]
    bad_lines = {
        "malformed_json": (b'{"text": "an unterminated string\n', REJECT_MALFORMED_JSON),
        "invalid_utf8": (b'{"text": "caf\xe9 \xff\xfe bytes"}\n', REJECT_INVALID_UTF8),
        "missing_text": (b'{"meta": {"url": "https://example.com/"}}\n', REJECT_MISSING_TEXT),
        "text_not_string": (b'{"text": 42, "meta": {}}\n', REJECT_NOT_A_STRING),
        "empty_text": (b'{"text": "  \\n\\t ", "meta": {}}\n', REJECT_EMPTY_TEXT),
        "not_an_object": (b'["text", "in a list"]\n', REJECT_MALFORMED_JSON),
    }
    for name, (line, reason) in bad_lines.items():
        payload = b"".join(good[:2] + [line] + good[3:])
        add(name, "redpajama", "c4", f"redpajama/c4/{name}.jsonl", payload, 4, [(2, reason, 1)], 5)

    # --- all of them in one file, plus a blank line and a final line without newline
    mixed = [good[0]] + [line for line, _ in bad_lines.values()] + [b"\n", good[1], good[2].rstrip(b"\n")]
    expected = [(i + 1, reason, 1) for i, (_, reason) in enumerate(bad_lines.values())]
    expected.append((len(bad_lines) + 1, REJECT_MALFORMED_JSON, 1))
    add(
        "mixed_lines",
        "redpajama",
        "stackexchange",
        "redpajama/stackexchange/mixed_lines.jsonl",
        b"".join(mixed),
        3,
        expected,
        len(mixed),
    )

    # --- Dolma json.gz: bad records inside a valid gzip stream
    dolma = [_dolma(t, i, "reddit") for i, t in enumerate(texts[:6])]
    dolma[1] = _dolma(None, 1, "reddit", include_text=False)
    dolma[4] = _dolma("", 4, "reddit")
    add(
        "gzip_bad_records",
        "dolma",
        "reddit",
        "dolma/v1_6/reddit/reddit-9999.json.gz",
        gzip_bytes(b"".join(dolma)),
        4,
        [(1, REJECT_MISSING_TEXT, 1), (4, REJECT_EMPTY_TEXT, 1)],
        6,
    )

    # --- truncated gzip: cut in the middle; complete lines before the cut are still documents
    whole = gzip_bytes(b"".join(_dolma(t, i, "stack") for i, t in enumerate(texts)))
    cut = whole[: len(whole) // 2]
    readable = _complete_lines(zlib.decompressobj(wbits=31).decompress(cut))
    add(
        "truncated_gzip",
        "dolma",
        "stack",
        "dolma/v1_6/stack/stack-9999.json.gz",
        cut,
        readable,
        [(readable, REJECT_TRUNCATED, 1)],
        None,
    )

    # --- not gzip at all
    add(
        "corrupt_gzip",
        "dolma",
        "pes2o",
        "dolma/v1_6/pes2o/pes2o-9999.json.gz",
        b"this is not gzip data\n" * 20,
        0,
        [(0, REJECT_UNREADABLE, 1)],
        None,
    )

    # --- truncated zstd (original Pile)
    pile = b"".join(
        redpajama_line({"text": t, "meta": {"pile_set_name": "Pile-CC"}}) for t in _texts(rng, 100)
    )
    whole = zstd_bytes(pile)
    cut = whole[: len(whole) // 2]
    reader = zstandard.ZstdDecompressor().stream_reader(cut, read_across_frames=True)
    readable = _complete_lines(reader.read())
    add(
        "truncated_zstd",
        "pile",
        "default",
        "pile/original/train/98.jsonl.zst",
        cut,
        readable,
        [(readable, REJECT_TRUNCATED, 1)],
        None,
    )

    # --- zstd with a bad record
    lines = [redpajama_line({"text": t, "meta": {"pile_set_name": "ArXiv"}}) for t in texts[:4]]
    lines[3] = (
        json.dumps({"text": ["not", "a", "string"], "meta": {"pile_set_name": "ArXiv"}}).encode() + b"\n"
    )
    add(
        "zstd_bad_record",
        "pile",
        "default",
        "pile/original/train/97.jsonl.zst",
        zstd_bytes(b"".join(lines)),
        3,
        [(3, REJECT_NOT_A_STRING, 1)],
        4,
    )

    # --- parquet with the wrong schema: RefinedWeb rows under a `text` column
    wrong = pa.table({"text": texts[:7], "url": ["https://example.com/"] * 7})
    add(
        "parquet_wrong_schema",
        "refinedweb",
        "default",
        "refinedweb/data/train-09999-of-05534-0000000000000000.parquet",
        wrong,
        0,
        [(0, REJECT_SCHEMA, 7)],
        7,
    )

    # --- parquet whose text column is not a string
    numbers = pa.table({"text": pa.array(range(5), pa.int64())})
    add(
        "parquet_text_not_string",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09997-of-01650-0000000000000000.parquet",
        numbers,
        0,
        [(0, REJECT_SCHEMA, 5)],
        5,
    )

    # --- parquet with null and empty texts among good rows
    values = texts[:6]
    values[2], values[5] = None, "   "
    add(
        "parquet_bad_rows",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09998-of-01650-0000000000000000.parquet",
        pa.table({"text": pa.array(values, pa.string())}),
        4,
        [(2, REJECT_MISSING_TEXT, 1), (5, REJECT_EMPTY_TEXT, 1)],
        6,
    )

    # --- not parquet at all, and a parquet file cut short (no footer)
    add(
        "parquet_garbage",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09999-of-01650-garbage.parquet",
        b"PAR1 but then nothing sensible " * 10,
        0,
        [(-1, REJECT_UNREADABLE, 1)],
        None,
    )
    full = root / "refinedweb/data/_full.parquet"
    full.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(full, pa.table({"content": texts[:4]}))
    data = full.read_bytes()
    full.unlink()
    add(
        "parquet_truncated",
        "refinedweb",
        "default",
        "refinedweb/data/train-09998-of-05534-0000000000000000.parquet",
        data[: len(data) // 2],
        0,
        [(-1, REJECT_UNREADABLE, 1)],
        None,
    )
    return examples
