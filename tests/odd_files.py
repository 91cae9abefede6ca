"""Real-looking files that lie or are odd (issue 11, section 2): one shard per class, with what reading must
give.

``write_odd_files(out_dir)`` writes them and says, for each, the exact texts a reader must yield as
documents (in order), the ``(index, reason, count)`` rejections, how many records the file holds,
and whether the manifest build must treat it as damaged (fail by path unless ``accept_damaged``).
"""

from __future__ import annotations

import json
import lzma
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from elm_data.sources import sample_text as st
from elm_data.sources.document import REJECT_INVALID_UTF8, REJECT_UNREADABLE
from elm_data.sources.sample import dolma_line, gzip_bytes, redpajama_line, zstd_bytes

BOM = b"\xef\xbb\xbf"
# sources.document.REJECT_INVALID_UNICODE (the manifest's bucket name)
REJECT_INVALID_UNICODE = "invalid_unicode"


@dataclass(frozen=True)
class OddFile:
    """An odd shard and what reading it must give.

    ``texts``: the documents' texts in order; ``rejections``: ``(index, reason, count)`` in reading
    order; ``records``: the input records, so ``len(texts) + sum(count) == records``; ``damaged``:
    whether a manifest build must fail on it unless damage is accepted. ``native_ids`` and
    ``licences``, when given, are the documents' expected provenance.
    """

    name: str
    source: str
    subset: str
    path: Path
    texts: tuple[str, ...]
    rejections: tuple[tuple[int, str, int], ...]
    records: int
    damaged: bool = False
    native_ids: tuple[str | None, ...] | None = None
    licences: tuple[str, ...] | None = None


def _texts(rng: random.Random, n: int) -> list[str]:
    return [st.web_page(rng, rng.randint(300, 600)) for _ in range(n)]


def _rp(text: str, **meta) -> bytes:
    return redpajama_line({"text": text, "meta": {"url": "https://example.com/", **meta}})


def _dolma(text: str, i: int) -> bytes:
    return dolma_line(
        {
            "added": "2023-08-01T00:00:00.000Z",
            "id": f"stack-{i}",
            "metadata": {},
            "source": "stack",
            "text": text,
        }
    )


def _parquet_bytes(table: pa.Table, row_group_size: int = 4) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, compression="snappy")
    return sink.getvalue().to_pybytes()


def _corrupt_row_group(data: bytes, group: int) -> bytes:
    """``data`` (a parquet file) with the column chunk of row group ``group`` overwritten with garbage."""
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(group).column(0)
    start = meta.dictionary_page_offset or meta.data_page_offset
    return data[:start] + b"\xab" * meta.total_compressed_size + data[start + meta.total_compressed_size :]


def write_odd_files(out_dir: str | Path, seed: int = 0) -> dict[str, OddFile]:
    """Write one shard per odd class under ``out_dir``; return them by name."""
    root = Path(out_dir)
    rng = random.Random(f"odd:{seed}")
    t = _texts(rng, 12)
    files: dict[str, OddFile] = {}

    def add(
        name: str,
        source: str,
        subset: str,
        rel: str,
        payload: bytes,
        texts,
        rejections=(),
        records=None,
        **kw,
    ) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        records = len(texts) + sum(c for _, _, c in rejections) if records is None else records
        files[name] = OddFile(name, source, subset, path, tuple(texts), tuple(rejections), records, **kw)

    # valid JSON, invalid Unicode: lone surrogate escapes (a surrogate pair is fine)
    emoji = t[1] + " \U0001f600"
    lines = [_rp(t[0]), _rp(emoji), _rp(t[2] + " \ud800 lone"), _rp(t[3]), _rp(t[4], title="bad \udc00 meta")]
    assert b"\\ud83d\\ude00" in lines[1] and b"\\ud800" in lines[2]
    add(
        "lone_surrogate",
        "redpajama",
        "c4",
        "redpajama/c4/c4-train.09990-of-01024.jsonl",
        b"".join(lines),
        [t[0], emoji, t[3]],
        [(2, REJECT_INVALID_UNICODE, 1), (4, REJECT_INVALID_UNICODE, 1)],
    )

    # bytes compressed, name plain; and the reverse
    jsonl = b"".join(_rp(x) for x in t[:5])
    add(
        "gzip_named_jsonl",
        "redpajama",
        "c4",
        "redpajama/c4/c4-train.09991-of-01024.jsonl",
        gzip_bytes(jsonl),
        t[:5],
    )
    add(
        "zstd_named_jsonl",
        "redpajama",
        "c4",
        "redpajama/c4/c4-train.09992-of-01024.jsonl",
        zstd_bytes(jsonl),
        t[:5],
    )
    dolma = b"".join(_dolma(x, i) for i, x in enumerate(t[:4]))
    add("plain_named_gz", "dolma", "stack", "dolma/v1_6/stack/stack-9990.json.gz", dolma, t[:4])
    pile_table = pa.table({"text": t[:6]})
    add(
        "parquet_named_zst",
        "pile",
        "default",
        "pile/original/train/90.jsonl.zst",
        _parquet_bytes(pile_table),
        t[:6],
    )
    add(
        "xz_named_jsonl",
        "redpajama",
        "c4",
        "redpajama/c4/c4-train.09993-of-01024.jsonl",
        lzma.compress(jsonl),
        [],
        [(-1, REJECT_UNREADABLE, 1)],
        damaged=True,
    )

    # empty (0-byte) compressed files are a failed download, not an empty shard; an empty .jsonl is valid
    add(
        "empty_gzip",
        "dolma",
        "stack",
        "dolma/v1_6/stack/stack-9991.json.gz",
        b"",
        [],
        [(0, REJECT_UNREADABLE, 0)],
        damaged=True,
    )
    add(
        "empty_zstd",
        "pile",
        "default",
        "pile/original/train/91.jsonl.zst",
        b"",
        [],
        [(0, REJECT_UNREADABLE, 0)],
        damaged=True,
    )
    add("empty_jsonl", "redpajama", "c4", "redpajama/c4/c4-train.09994-of-01024.jsonl", b"", [])

    # Arrow-equivalent string columns in parquet: dictionary, large_string, string_view
    dictionary = _parquet_bytes(pa.table({"text": pa.array(t[:6]).dictionary_encode()}))
    add(
        "parquet_dictionary_text",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09990-of-01650-odd.parquet",
        dictionary,
        t[:6],
    )
    view = pa.table({"text": pa.array(t[:3], pa.string_view())})
    add(
        "parquet_string_view_text",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09991-of-01650-odd.parquet",
        _parquet_bytes(view),
        t[:3],
    )
    n = 5
    refinedweb = pa.table(
        {
            "content": pa.array(t[:n], pa.large_string()).dictionary_encode(),
            "url": pa.array([f"https://example.com/{i}" for i in range(n)]).dictionary_encode(),
            "timestamp": pa.array([1_600_000_000 + i for i in range(n)], pa.timestamp("s")),
            "dump": pa.array(["CC-MAIN-2023-06"] * n).dictionary_encode(),
            "segment": pa.array(["1674764494852.95"] * n, pa.string_view()),
            "image_urls": pa.array([[]] * n, pa.list_(pa.list_(pa.string()))),
        }
    )
    add(
        "parquet_dictionary_columns",
        "refinedweb",
        "default",
        "refinedweb/data/train-09990-of-05534-odd.parquet",
        _parquet_bytes(refinedweb),
        t[:n],
    )

    # `meta` stored as a JSON string: native ids and per-record licences are still found (an id holding a
    # lone surrogate escape inside that string keeps the escape as text)
    licences = ("MIT", "Apache-2.0", "BSD-3-Clause", "MIT")
    ids = ("gh-0", "gh-1", "gh-2", "gh-\ud800")
    github = [
        redpajama_line(
            {"text": x, "meta": json.dumps({"id": ids[i], "license": licences[i], "language": "Python"})}
        )
        for i, x in enumerate(t[:4])
    ]
    add(
        "meta_as_json_string",
        "redpajama",
        "github",
        "redpajama/github/filtered_" + "0" * 31 + "1.sampled.jsonl",
        b"".join(github),
        t[:4],
        native_ids=ids[:3] + ("gh-\\ud800",),
        licences=licences,
    )

    # a parquet string that is not UTF-8 (pyarrow does not validate on read): that row only
    raw = [x.encode() for x in t[:5]]
    raw[2] = b"caf\xe9 \xff\xfe latin-1 bytes " * 20
    binary = pa.array(raw, pa.binary())
    not_utf8 = pa.table({"text": pa.Array.from_buffers(pa.string(), len(raw), binary.buffers()[:3])})
    add(
        "parquet_invalid_utf8",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09993-of-01650-odd.parquet",
        _parquet_bytes(not_utf8),
        t[:2] + t[3:5],
        [(2, REJECT_INVALID_UTF8, 1)],
    )

    # one corrupt parquet row group among readable ones: only its rows are rejected
    grouped = _parquet_bytes(pa.table({"text": t[:12]}), row_group_size=4)
    add(
        "parquet_corrupt_row_group",
        "pile",
        "default",
        "pile/the_pile_deduplicated/data/train-09992-of-01650-odd.parquet",
        _corrupt_row_group(grouped, 1),
        t[:4] + t[8:12],
        [(4, REJECT_UNREADABLE, 4)],
        damaged=True,
    )

    # trailing garbage after the last gzip member / zstd frame: damage named, no phantom record
    add(
        "gzip_trailing_garbage",
        "dolma",
        "stack",
        "dolma/v1_6/stack/stack-9992.json.gz",
        gzip_bytes(dolma) + b"<html>503 Service Unavailable</html>\n",
        t[:4],
        [(4, REJECT_UNREADABLE, 0)],
        damaged=True,
    )
    last_unterminated = gzip_bytes(dolma.rstrip(b"\n")) + b"\x00\x00garbage"
    add(
        "gzip_trailing_garbage_no_newline",
        "dolma",
        "stack",
        "dolma/v1_6/stack/stack-9993.json.gz",
        last_unterminated,
        t[:4],
        [(4, REJECT_UNREADABLE, 0)],
        damaged=True,
    )
    pile = b"".join(redpajama_line({"text": x, "meta": {"pile_set_name": "Pile-CC"}}) for x in t[:5])
    add(
        "zstd_trailing_garbage",
        "pile",
        "default",
        "pile/original/train/92.jsonl.zst",
        zstd_bytes(pile) + b"junk!",
        t[:5],
        [(5, REJECT_UNREADABLE, 0)],
        damaged=True,
    )
    add(
        "zstd_trailing_short_garbage",
        "pile",
        "default",
        "pile/original/train/93.jsonl.zst",
        zstd_bytes(pile) + b"\x00",
        t[:5],
        [(5, REJECT_UNREADABLE, 0)],
        damaged=True,
    )

    # a UTF-8 BOM opening a JSONL file (plain and inside gzip)
    add("bom_jsonl", "redpajama", "c4", "redpajama/c4/c4-train.09995-of-01024.jsonl", BOM + jsonl, t[:5])
    add("bom_gzip", "dolma", "stack", "dolma/v1_6/stack/stack-9994.json.gz", gzip_bytes(BOM + dolma), t[:4])
    return files
