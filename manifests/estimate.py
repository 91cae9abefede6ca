"""``elm-data estimate MIXTURE``: what a mixture holds and what counting it exactly will cost, from a sample.

Per source/subset, the shards are listed with their sizes (fsspec listings, nothing read) and grouped by
format (file suffix: bytes per record differ by format). With no more shards than draws every shard is read;
otherwise each format gets draws in proportion to its bytes, its shards of at least ``bytes / draws`` are read
with certainty, and the rest are drawn with probability proportional to size (with replacement). From each
drawn shard a few records are read:

- **parquet**: one row group, drawn in proportion to its rows (footer), and random rows of it (every row has
  the same chance; only that row group is read);
- **plain JSON Lines**: the lines starting in ``WINDOW_PIECES`` independent random byte windows;
- **gzip / zstd JSON Lines**: the stream allows no random access, so random lines of its first window
  (``WINDOW_BYTES`` compressed; the whole shard when smaller) are taken.

The records go through the readers and the manifest's own per-document pass (filters, LLaMA tokenizer).
Shards read with certainty are summed (each the mean of its draws); the sampled ones are Hansen-Hurwitz (a
draw's shard total over its probability of being drawn, averaged). Variances: within a draw from its records
(a known record count: ``N^2 (1 - n/N) s^2 / n``; a byte window: the spread of its independent windows), with
the subset's pooled per-record token variance where larger; across draws from their spread, where larger;
95% intervals with Student's t at Satterthwaite's degrees of freedom. A zero-width interval means every record
of every shard was counted (a census); identical draws that left shards unread never claim it. For compressed
shards larger than the window the within-shard part is a ratio from the window, so drift along a file is not
covered by the interval.

Cost: the build's CPU time is projected from the CPU seconds this run spent per sampled record (parsing,
filtering, tokenizing) plus the measured sha256, decompression and parquet row-group decoding rates per byte
(a row group is decoded whole whatever few rows are sampled; the build pays it once per byte); network is the
bytes listed (each shard is transferred once); temporary disk is two fetched shards per worker (one counted,
the next fetched meanwhile) plus the manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq
from tqdm import tqdm

from elm_data.core.errors import InvalidValue, NotFound
from elm_data.core.redact import redact_uri
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.tokenizer import LlamaTokenizer, resolve_tokenizer
from elm_data.sources import remote
from elm_data.sources.document import MAX_RECORD_BYTES, Document
from elm_data.sources.readers import read_shard, shard_format_of
from elm_data.sources.readers_jsonl import TooLarge, raw_lines
from elm_data.sources.registry import FORMAT_JSONL, FORMAT_JSONL_GZ, FORMAT_PARQUET

from .mixture import MixtureConfig, MixtureEntry
from .shard_lists import Unreachable, unreachable

WINDOW_BYTES = 8 << 20  # compressed bytes read from the start of a gzip/zstd shard
LINE_CHUNK = 64 << 10  # byte-range read size when looking for a line's ends
# A gzip/zstd window also ends past this much text or this many lines (a bomb: a few KB of zeros or of
# "{}\n"),
# scaled like a window that ends early; no real shard's 8 MiB reach either (text ~3-5x, lines of KBs).
WINDOW_TEXT_BYTES = 256 << 20
WINDOW_LINES = 1 << 20
WINDOW_PIECES = 4  # independent byte windows per plain-JSONL draw
LEDGER_ROW_BYTES = 64  # documents ledger bytes per record (64.2 measured: benchmarks/bench_estimate.py)
NO_SHA = "0" * 64  # records are read without hashing their shard
FIGURES = ("documents", "kept", "tokens")
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, draws: Sequence[float]) -> Interval:
        """Mean of independent unbiased draws, ``t * sd / sqrt(n)`` either side."""
        mean = statistics.fmean(draws)
        half = (
            t975(len(draws) - 1) * statistics.stdev(draws) / math.sqrt(len(draws)) if len(draws) > 1 else mean
        )
        return cls(mean, max(0.0, mean - half), mean + half)

    @classmethod
    def around(cls, value: float, variance: float, df: int) -> Interval:
        half = t975(max(1, df)) * math.sqrt(max(0.0, variance))
        return cls(value, max(0.0, value - half), value + half)

    def __contains__(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class SubsetEstimate:
    key: str
    shards: int
    bytes: int
    largest_shard: int
    draws: int
    records_sampled: int
    documents: Interval
    kept: Interval
    tokens: Interval
    cpu_s_per_record: float
    decompress_s_per_byte: float
    decode_s_per_byte: float = 0.0  # parquet row-group decoding
    windowed: int = 0  # draws of a gzip/zstd shard larger than the window (a ratio from the file's start)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("shards", "bytes", "largest_shard", "draws", "records_sampled")}
        return out | {f: getattr(self, f).to_dict() for f in FIGURES}


@dataclass
class Estimate:
    mixture: str
    subsets: list[SubsetEstimate]
    sample_docs: int
    seed: int
    sha256_s_per_byte: float
    elapsed_s: float
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    def total(self, figure: str) -> Interval:
        parts = [getattr(s, figure) for s in self.subsets]
        # independent subsets: variances add (half-widths in quadrature; the upper side is never clipped at 0)
        value = sum(p.value for p in parts)
        half = math.sqrt(sum((p.high - p.value) ** 2 for p in parts))
        return Interval(value, max(0.0, value - half), value + half)

    @property
    def core_hours(self) -> float:
        seconds = sum(
            s.documents.value * s.cpu_s_per_record
            + s.bytes * (self.sha256_s_per_byte + s.decompress_s_per_byte + s.decode_s_per_byte)
            for s in self.subsets
        )
        return seconds / 3600

    @property
    def network_bytes(self) -> int:
        return sum(s.bytes for s in self.subsets)

    def temp_disk_bytes(self, workers: int | None = None) -> int:
        """Two fetched shards per worker (the next is fetched while one is counted), plus the manifest with
        its documents ledger twice (workspace, final copy)."""
        largest = max((s.largest_shard for s in self.subsets), default=0)
        return 2 * (workers or self.workers) * largest + 2 * self.manifest_bytes

    @property
    def manifest_bytes(self) -> int:
        return int(self.total("documents").high * LEDGER_ROW_BYTES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mixture": self.mixture,
            "sample_docs": self.sample_docs,
            "seed": self.seed,
            "subsets": {s.key: s.to_dict() for s in self.subsets},
            "total": {f: self.total(f).to_dict() for f in FIGURES},
            "cost": {
                "core_hours": self.core_hours,
                "network_bytes": self.network_bytes,
                "temp_disk_bytes": self.temp_disk_bytes(),
                "manifest_bytes": self.manifest_bytes,
                "workers": self.workers,
            },
            "elapsed_s": self.elapsed_s,
            "notes": self.notes,
        }


# -- listing
# ----------------------------------------------------------------------------------------------------
def _size(uri: str) -> int:
    try:
        fs, path = remote.filesystem(uri)
        return int(remote.retrying(f"size of {uri}", lambda: fs.size(path)))
    except FileNotFoundError as e:
        raise NotFound(f"shard not found: {redact_uri(uri)}") from e
    except Exception as e:
        raise unreachable(uri, e) from e


def list_sizes(uris: Sequence[str], threads: int = 16) -> list[int]:
    """Each shard's size in bytes from its filesystem listing (no bytes read)."""
    with ThreadPoolExecutor(max(1, min(threads, len(uris)))) as pool:
        return list(pool.map(_size, uris))


# -- stage 2: a few records of one drawn shard
# -----------------------------------------------------------------
@dataclass
class Draw:
    """Records read from one drawn shard; the shard's total of y is estimated as ``sum(weight * y)``."""

    documents: list[Document | None]  # one per sampled record (None: rejected by the reader)
    weights: list[float]  # how many of the shard's records each sampled record stands for
    decompress_s: float = 0.0
    compressed_bytes: int = 0
    exact: int | None = None  # the shard's record count, when known (parquet footer, a whole file read)
    decoded_bytes: int = 0  # parquet: compressed bytes of the row groups decoded (their cost is per byte)
    groups: list[int] | None = None  # plain JSONL: the window (replicate) each record came from
    pieces: int = 1  # how many windows


def _mini_shard(lines: Sequence[bytes], entry: MixtureEntry, uri: str) -> list[Document | None]:
    """The sampled raw lines read by the real JSONL reader (one item per line, in order)."""
    name = f"memory://elm-data-estimate/{hashlib.sha1(uri.encode()).hexdigest()}.jsonl"
    with fsspec.open(name, "wb") as f:
        f.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
    out: list[Document | None] = [None] * len(lines)
    try:
        for item in read_shard(name, entry.source, entry.subset, NO_SHA, fmt=FORMAT_JSONL):
            if isinstance(item, Document):
                out[item.provenance.index] = item
    finally:
        fsspec.filesystem("memory").rm(name)
    return out


def _documents(lines: Sequence[bytes | TooLarge], entry: MixtureEntry, uri: str) -> list[Document | None]:
    """:func:`_mini_shard` of the lines; a line over the record limit is rejected without being read."""
    read = iter(_mini_shard([line for line in lines if isinstance(line, bytes)], entry, uri))
    return [next(read) if isinstance(line, bytes) else None for line in lines]


def _line_from(f, start: int, size: int, limit: int = MAX_RECORD_BYTES) -> bytes | TooLarge:
    """The line starting at byte ``start`` of an open file, newline included; a line over ``limit`` bytes is a
    :class:`TooLarge` (the reader's ``record_too_large``), read no further than ``limit`` plus a chunk."""
    f.seek(start)
    parts: list[bytes] = []
    held = 0
    while start + held < size and held <= limit:
        chunk = f.read(LINE_CHUNK)
        if not chunk:
            break
        cut = chunk.find(b"\n")
        if cut >= 0:
            parts.append(chunk[: cut + 1])
            break
        parts.append(chunk)
        held += len(chunk)
    return b"".join(parts) if held <= limit else TooLarge(held)


def _starts_in(f, a: int, b: int) -> list[int]:
    """Offsets in ``[a, b)`` where a line starts (the file's first byte, or one after a newline)."""
    f.seek(max(0, a - 1))
    data = f.read(b - max(0, a - 1))
    first = [a] if a == 0 or data[:1] == b"\n" else []
    body = data if a == 0 else data[1:]
    starts, k = first, body.find(b"\n")
    while k >= 0 and a + k + 1 < b:
        starts.append(a + k + 1)
        k = body.find(b"\n", k + 1)
    return starts


def draw_plain_jsonl(
    uri: str, size: int, n: int, bytes_per_line: float, entry: MixtureEntry, rng, pieces: int = WINDOW_PIECES
) -> Draw:
    """The lines starting in ``pieces`` independent random (circular) windows holding ~n lines in all: a line
    starting in a window of w bytes has probability w/size. The windows are independent replicates, so their
    spread measures what one contiguous window cannot (long lines make a window's line count lumpy)."""
    window = max(1, int(n * bytes_per_line / pieces))
    if 2 * window * pieces >= size:  # about the whole shard: read it all
        pieces, window = 1, size
    lines: list[bytes | TooLarge] = []
    groups: list[int] = []
    with remote.open_read(uri, buffer_size=LINE_CHUNK) as f:  # remote reads retried on transient faults
        for piece in range(pieces):
            offset = 0 if window >= size else rng.randrange(size)
            spans = [(offset, min(size, offset + window))]
            if offset + window > size:
                spans.append((0, offset + window - size))
            found = [_line_from(f, s, size) for a, b in spans for s in _starts_in(f, a, b)]
            lines += found
            groups += [piece] * len(found)
    exact = len(lines) if window >= size else None
    draw = Draw(_documents(lines, entry, uri), [size / window / pieces] * len(lines), exact=exact)
    draw.groups, draw.pieces = (groups, pieces) if exact is None else (None, 1)
    return draw


def bytes_per_line(
    uris: Sequence[str], sizes: Sequence[int], rng, probes: int = 4, chunk: int = 256 << 10
) -> float:
    """Mean bytes per line of plain JSONL shards, from newline counts in a few random chunks (sets window
    sizes)."""
    read = lines = 0
    for i in rng.choices(range(len(uris)), weights=[max(1, s) for s in sizes], k=probes):
        offset = rng.randrange(max(1, sizes[i] - chunk)) if sizes[i] > chunk else 0
        with remote.open_read(uris[i], buffer_size=chunk) as f:
            f.seek(offset)
            data = f.read(chunk)
        read, lines = read + len(data), lines + data.count(b"\n")
    return read / max(1, lines)


class _Counting(io.RawIOBase):
    """A read-only file wrapper counting the bytes read through it."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.f.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def _decompressed(raw: _Counting, fmt: str):
    if fmt == FORMAT_JSONL_GZ:
        return gzip.GzipFile(fileobj=raw)
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def _window_lines(stream, raw: _Counting) -> tuple[list[bytes | TooLarge], bool]:
    """The lines of a decompressed ``stream``'s first window (``WINDOW_BYTES`` compressed,
    ``WINDOW_TEXT_BYTES`` of text, ``WINDOW_LINES`` lines) and whether it reached the end; a line over the
    record limit is a :class:`TooLarge`, never held (the reader's own splitter)."""
    lines: list[bytes | TooLarge] = []
    eof = False

    def window() -> Iterator[bytes]:
        nonlocal eof
        text = 0
        while raw.count < WINDOW_BYTES and text < WINDOW_TEXT_BYTES and len(lines) < WINDOW_LINES:
            if not (chunk := stream.read(1 << 20)):
                eof = True
                return
            text += len(chunk)
            yield chunk

    for line, ended in raw_lines(window(), MAX_RECORD_BYTES):
        if ended or eof:  # an unterminated last line only at the end of the stream, not of the window
            lines.append(line)
    return lines, eof


def draw_compressed(uri: str, size: int, n: int, fmt: str, entry: MixtureEntry, rng: random.Random) -> Draw:
    """``n`` random lines of the shard's first window; scaled by compressed bytes when the window ends
    early."""
    start = time.process_time()
    with remote.open_read(uri) as f:
        raw = _Counting(f)
        lines, eof = _window_lines(_decompressed(raw, fmt), raw)
    spent = time.process_time() - start
    picked = rng.sample(range(len(lines)), min(n, len(lines))) if lines else []
    docs = _documents([lines[i] for i in picked], entry, uri)
    records = len(lines) if eof else len(lines) * size / max(1, raw.count)
    weights = [records / len(picked)] * len(picked) if picked else []
    return Draw(docs, weights, spent, raw.count, exact=len(lines) if eof else None)


def draw_parquet(uri: str, n: int, entry: MixtureEntry, rng: random.Random) -> Draw:
    """Random rows of one row group drawn in proportion to its rows: each of the shard's N rows has the same
    chance n/N of being read, so each stands for N/n rows (a size-proportional pick would favour the groups of
    long documents: kept and tokens came out ~25% high on heavy-tailed shards)."""
    with remote.open_read(uri, buffer_size=1 << 16) as f:
        meta = pq.ParquetFile(f).metadata
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    sizes = [sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)) for rg in groups]
    if not meta.num_rows:
        return Draw([], [])
    if n >= meta.num_rows:  # the whole shard
        chosen = {r: r for r in range(meta.num_rows)}
        docs = [None] * meta.num_rows
        for item in read_shard(uri, entry.source, entry.subset, NO_SHA, fmt=FORMAT_PARQUET):
            if isinstance(item, Document):
                docs[item.provenance.index] = item
        return Draw(docs, [1.0] * meta.num_rows, exact=meta.num_rows, decoded_bytes=sum(sizes))
    g = rng.choices(range(len(groups)), weights=[rg.num_rows for rg in groups])[0]  # every row: chance n/N
    first = sum(rg.num_rows for rg in groups[:g])
    rows = sorted(rng.sample(range(groups[g].num_rows), min(n, groups[g].num_rows)))
    chosen = {first + r: k for k, r in enumerate(rows)}
    docs: list[Document | None] = [None] * len(rows)
    for item in read_shard(uri, entry.source, entry.subset, NO_SHA, select=chosen, fmt=FORMAT_PARQUET):
        if isinstance(item, Document) and item.provenance.index in chosen:
            docs[chosen[item.provenance.index]] = item
    return Draw(
        docs, [meta.num_rows / len(rows)] * len(rows), exact=meta.num_rows, decoded_bytes=max(1, sizes[g])
    )


# -- per subset
# -------------------------------------------------------------------------------------------------
@dataclass
class DrawResult:
    """One draw's sampled records (kept flag, kept tokens) and what they say about their shard.

    ``weights``: how many of the shard's records each sampled record stands for. With the shard's record count
    known (``exact``) the sample is a simple random sample of it (weights N/m); otherwise each line was taken
    with probability 1/weight (a byte window), so the count itself is estimated.
    """

    records: float  # the shard's records: exact when known, else estimated from the sample
    exact: bool
    full: bool  # every record of the shard was sampled exactly once: a census of the shard
    kept: list[int]
    tokens: list[int]
    weights: list[float]
    groups: list[int] | None = None  # independent windows of one draw (plain JSONL), else None
    pieces: int = 1

    @property
    def df(self) -> int:
        """Degrees of freedom of :meth:`variances`: windows - 1, else records - 1."""
        return self.pieces - 1 if self.groups is not None else len(self.weights) - 1

    def totals(self) -> tuple[float, float, float]:
        """(records, kept, kept tokens) of the shard, estimated from this draw alone."""
        kept = sum(w * k for w, k in zip(self.weights, self.kept, strict=True))
        return self.records, kept, sum(w * t for w, t in zip(self.weights, self.tokens, strict=True))

    def variances(self, pooled: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float, float]:
        """The sampling variance of :meth:`totals` estimated from this draw's records (0 for a census).

        Known count N, m records: ``N^2 (1 - m/N) s^2 / m`` (s^2 from the records; with one record, its
        square). Unknown count (lines of a byte window, each with probability 1/w): Horvitz-Thompson's
        Poisson-sampling ``sum((w^2 - w) y^2)``, which also covers the random number of lines. ``pooled``: the
        variance and mean square of kept tokens per record over the whole subset's sample, used where larger:
        document lengths are heavy-tailed, and a draw that met no long document would otherwise claim a narrow
        spread.
        """
        if self.full or not self.weights:
            return 0.0, 0.0, 0.0
        if self.groups is not None:  # the spread of the windows' own totals (pieces x each window's estimate)
            ys = ([1] * len(self.kept), self.kept, self.tokens)
            sums = [[0.0] * self.pieces for _ in ys]
            for k, g in enumerate(self.groups):
                for f, v in enumerate(ys):
                    sums[f][g] += self.pieces * self.weights[k] * v[k]
            return tuple(statistics.variance(t) / self.pieces for t in sums)
        if not self.exact:
            ys = ([1] * len(self.kept), self.kept, self.tokens)
            out = [sum((w * w - w) * y * y for w, y in zip(self.weights, v, strict=True)) for v in ys]
            out[2] = max(out[2], sum(w * w - w for w in self.weights) * pooled[1])
            return tuple(out)
        m, n = len(self.weights), self.records
        shrink = n * n * max(0.0, 1 - m / n) / m
        smooth = (sum(self.kept) + 1) / (m + 2)  # an all-kept sample still leaves room for a filtered record
        spread = statistics.variance(self.tokens) if m > 1 else float(self.tokens[0]) ** 2
        return 0.0, shrink * smooth * (1 - smooth) * m / max(1, m - 1), shrink * max(spread, pooled[0])


def _result_of(draw: Draw, results: dict[int, Any]) -> DrawResult:
    kept = [int(k in results and results[k].kept) for k in range(len(draw.weights))]
    tokens = [results[k].tokens if kept[k] else 0 for k in range(len(draw.weights))]
    weights = list(draw.weights)
    if draw.exact is not None and weights:  # a sample of a shard of known size: each record stands for N/m
        weights = [draw.exact / len(weights)] * len(weights)
    records = sum(weights) if draw.exact is None else draw.exact
    full = draw.exact is not None and len(draw.weights) == draw.exact and all(w == 1 for w in draw.weights)
    return DrawResult(records, draw.exact is not None, full, kept, tokens, weights, draw.groups, draw.pieces)


def shard_interval(draws: Sequence[DrawResult], pooled: tuple[float, float] = (0.0, 0.0)) -> list[tuple]:
    """(estimate, variance, degrees of freedom) of (records, kept, tokens) of one shard read by ``k`` draws.

    A census (a draw that read every record once) is exact. Otherwise the estimate is the draws' mean, its
    variance the larger of their own within-draw variances / k^2 (df: records sampled - 1) and (k >= 2) their
    spread / k (df: k - 1): a draw reads one row group or byte window, and differences between those show only
    across draws.
    """
    census = next((d for d in draws if d.full), None)
    if census is not None:
        return [(v, 0.0, 1) for v in census.totals()]
    k = len(draws)
    totals = [d.totals() for d in draws]
    within = [d.variances(pooled) for d in draws]
    out = []
    for f in range(3):
        values = [t[f] for t in totals]
        var, df = sum(w[f] for w in within) / k**2, max(1, sum(d.df for d in draws))
        if k > 1 and statistics.variance(values) / k > var:
            var, df = statistics.variance(values) / k, k - 1
        out.append((statistics.fmean(values), var, df))
    return out


@dataclass
class _SampleCosts:
    """What sampling one subset cost: CPU per record (read + pass) and per compressed / parquet byte."""

    record_s: float = 0.0
    decompress_s: float = 0.0
    decode_s: float = 0.0
    sampled: int = 0  # records sampled
    compressed: int = 0  # compressed bytes decompressed
    decoded: int = 0  # parquet row-group bytes decoded
    windowed: int = 0  # draws of a compressed shard larger than the window

    def add_read(self, draw: Draw, read_s: float) -> None:
        """``read_s``: CPU seconds the draw took to read, its decompression excluded."""
        # a parquet row group is decoded whole: the build pays that per byte, not per row
        if draw.decoded_bytes:
            self.decode_s, self.decoded = self.decode_s + read_s, self.decoded + draw.decoded_bytes
        else:
            self.record_s += read_s
        self.decompress_s += draw.decompress_s
        self.compressed += draw.compressed_bytes
        self.sampled += len(draw.documents)
        self.windowed += draw.compressed_bytes > 0 and draw.exact is None


@dataclass
class _SubsetSampler:
    """Draws records from the shards of one subset; knows each shard's format and the subset's bytes per
    line."""

    uris: list[str]
    sizes: list[int]
    entry: MixtureEntry
    per_draw: int  # records read per draw
    rng: random.Random
    formats: dict[str, str] = field(default_factory=dict)
    line_bytes: float | None = None  # plain JSONL: mean bytes per line, probed at the first such draw

    def draw(self, i: int) -> Draw:
        """Records of shard ``i``; a remote shard that cannot be read raises :class:`Unreachable`."""
        uri = self.uris[i]
        try:
            if uri not in self.formats:
                self.formats[uri] = shard_format_of(uri, self.entry.source, self.entry.subset)
            return self._draw(self.formats[uri], i)
        except (FileNotFoundError, Unreachable):
            raise
        except Exception as e:
            if "://" in uri and not uri.startswith(("file://", "memory://")):
                raise unreachable(uri, e) from e
            raise

    def _draw(self, fmt: str, i: int) -> Draw:
        uri, size = self.uris[i], self.sizes[i]
        if fmt == FORMAT_PARQUET:
            return draw_parquet(uri, self.per_draw, self.entry, self.rng)
        if fmt == FORMAT_JSONL:
            if self.line_bytes is None:
                self.line_bytes = bytes_per_line(self.uris, self.sizes, self.rng)
            return draw_plain_jsonl(uri, size, self.per_draw, self.line_bytes, self.entry, self.rng)
        return draw_compressed(uri, size, self.per_draw, fmt, self.entry, self.rng)


def _pass_results(draw: Draw, doc_pass: DocumentPass) -> dict[int, Any]:
    """The document pass's result per sampled record the reader did not reject, by its place in the draw."""
    read = [k for k, d in enumerate(draw.documents) if d is not None]
    return dict(zip(read, doc_pass.process([draw.documents[k] for k in read]), strict=True))


def stratum_of(uri: str) -> str:
    """A shard's stratum: the last suffix of its file name (``.parquet``, ``.jsonl``, ``.zst``, ``.gz``).
    Bytes per record and per token differ by format (pile/default mixes snappy parquet and zstd JSONL): each
    is sampled apart."""
    return Path(uri.split("?", 1)[0].rstrip("/")).suffix.lower()


@dataclass
class Stratum:
    """The shards of one format and the draws they get. Shards at least ``bytes / draws`` in size (a PPS draw
    would expect to pick them once or more) are read with certainty, each estimated as a shard
    (:func:`shard_interval`); the others are drawn with probability proportional to size, with replacement
    (Hansen-Hurwitz). Without that split one large shard took most draws, and the spread of identical draws
    said "no uncertainty" about the shards never read."""

    shards: list[int]
    certain: set[int]
    picks: list[int]  # the Hansen-Hurwitz draws (shard indices), besides one or more per certain shard

    @classmethod
    def plan(cls, shards: list[int], sizes: Sequence[int], draws: int, rng: random.Random) -> Stratum:
        if len(shards) <= draws:  # every shard is read, the draws split among them
            return cls(shards, set(shards), [])
        certain: set[int] = set()
        while True:
            rest = [i for i in shards if i not in certain]
            left, budget = sum(max(1, sizes[i]) for i in rest), draws - len(certain)
            big = {i for i in rest if budget * max(1, sizes[i]) >= left}
            if not big or len(rest) - len(big) < 2:
                break
            certain |= big
        rest = [i for i in shards if i not in certain]
        picks = rng.choices(rest, weights=[max(1, sizes[i]) for i in rest], k=max(8, draws - len(certain)))
        return cls(shards, certain, picks)

    def draw_order(self, draws: int) -> list[int]:
        """Shard of each draw: the certain shards round-robin over their share, then the sampled picks."""
        ordered = sorted(self.certain)
        share = max(len(ordered), draws - len(self.picks)) if ordered else 0
        return [ordered[k % len(ordered)] for k in range(share)] + self.picks


@dataclass
class DrawPlan:
    """Which shard each draw reads: the subset's draws (clamp(sqrt(sample_docs), 4, 64)) split among its
    format strata in proportion to their bytes (at least two each), each stratum planned by
    :meth:`Stratum.plan`."""

    strata: list[Stratum]
    picks: list[int]
    per_draw: int

    @classmethod
    def of(cls, uris: Sequence[str], sizes: Sequence[int], sample_docs: int, rng: random.Random) -> DrawPlan:
        draws = min(64, max(4, round(math.sqrt(sample_docs))))
        groups: dict[str, list[int]] = {}
        for i, uri in enumerate(uris):
            groups.setdefault(stratum_of(uri), []).append(i)
        if len(sizes) <= draws:  # every shard is read, the draws split among them
            strata = [Stratum(g, set(g), []) for g in groups.values()]
            return cls(strata, [k % len(sizes) for k in range(draws)], math.ceil(sample_docs / draws))
        total = sum(max(1, s) for s in sizes) or 1
        strata, picks = [], []
        for key in sorted(groups):
            shards = groups[key]
            share = max(2, round(draws * sum(max(1, sizes[i]) for i in shards) / total))
            stratum = Stratum.plan(shards, sizes, share, rng)
            strata.append(stratum)
            picks += stratum.draw_order(share)
        return cls(strata, picks, math.ceil(sample_docs / draws))


def _sampled_part(
    stratum: Stratum, hh: list[tuple[int, DrawResult]], sizes: Sequence[int], pooled: tuple[float, float]
) -> list[tuple]:
    """(estimate, variance, df) per figure of a stratum's shards not read with certainty (Hansen-Hurwitz).

    Each draw's shard estimate over its probability; variance the larger of their spread / n and their
    within-draw variances / n. When they all coincide but shards were never drawn, the spread says nothing
    about those: the half-width is then the estimate itself, or when that is 0 (no kept record met) the rule
    of three (3 / records sampled of the documents; for tokens times the root mean square of tokens per
    sampled record).
    """
    rest = sum(max(1, sizes[i]) for i in stratum.shards if i not in stratum.certain)
    z = [[v * rest / max(1, sizes[j]) for v in t.totals()] for j, t in hh]
    within = [[v * (rest / max(1, sizes[j])) ** 2 for v in t.variances(pooled)] for j, t in hh]
    n, unseen = len(hh), len({j for j, _ in hh}) < len(stratum.shards) - len(stratum.certain)
    means = [statistics.fmean(r[f] for r in z) for f in range(3)]
    three = 3 * means[0] / max(1, sum(len(t.weights) for _, t in hh))
    out = []
    for f, mean in enumerate(means):
        var = max(statistics.variance([r[f] for r in z]) / n, statistics.fmean(w[f] for w in within) / n)
        if unseen and len({r[f] for r in z}) == 1:
            floor = mean or (0.0, three, three * math.sqrt(pooled[1]))[f]
            var = max(var, (floor / t975(n - 1)) ** 2)
        out.append((mean, var, n - 1))
    return out


def _subset_figures(
    shard_totals: list[tuple[int, DrawResult]], plan: DrawPlan, sizes: Sequence[int], sampled: int
) -> list[Interval]:
    """(documents, kept, tokens) of the subset: per stratum, the certain shards' sum plus the sampled part.

    The width is zero only when every shard was counted record by record. Degrees of freedom: Satterthwaite's
    over the parts (a certain shard's: its records sampled - 1; a sampled part's: its draws - 1).
    """
    tokens = [float(t) for _, d in shard_totals for t in d.tokens]
    pooled = (
        (statistics.variance(tokens), statistics.fmean(t * t for t in tokens)) if len(tokens) > 1 else (0, 0)
    )
    parts: list[list[tuple]] = []
    for stratum in plan.strata:
        for i in sorted(stratum.certain):
            parts.append(shard_interval([t for j, t in shard_totals if j == i], pooled))
        hh = [(j, t) for j, t in shard_totals if j in stratum.shards and j not in stratum.certain]
        if hh:
            parts.append(_sampled_part(stratum, hh, sizes, pooled))
    out = []
    for f in range(3):
        value, var = sum(p[f][0] for p in parts), sum(p[f][1] for p in parts)
        spread = sum(p[f][1] ** 2 / p[f][2] for p in parts)
        out.append(Interval.around(value, var, round(var**2 / spread) if spread > 0 else max(1, sampled - 1)))
    return out


def estimate_entry(
    mixture: MixtureConfig, entry: MixtureEntry, doc_pass: DocumentPass, sample_docs: int, rng: random.Random
) -> SubsetEstimate:
    """The estimate of one source/subset from ``sample_docs`` records read from its shards."""
    uris = mixture.resolve_shards(entry)
    sizes = list_sizes(uris)
    plan = DrawPlan.of(uris, sizes, sample_docs, rng)
    picks = plan.picks
    sampler = _SubsetSampler(uris, sizes, entry, plan.per_draw, rng)
    costs = _SampleCosts()
    shard_totals: list[tuple[int, DrawResult]] = []
    for i in picks:
        start = time.process_time()
        draw = sampler.draw(i)
        costs.add_read(draw, time.process_time() - start - draw.decompress_s)
        start = time.process_time()
        results = _pass_results(draw, doc_pass)
        costs.record_s += time.process_time() - start
        shard_totals.append((i, _result_of(draw, results)))
    documents, kept, tokens = _subset_figures(shard_totals, plan, sizes, costs.sampled)
    return SubsetEstimate(
        key=entry.key,
        shards=len(uris),
        bytes=sum(sizes),
        largest_shard=max(sizes, default=0),
        draws=len(picks),
        records_sampled=costs.sampled,
        documents=documents,
        kept=kept,
        tokens=tokens,
        cpu_s_per_record=costs.record_s / max(1, costs.sampled),
        decompress_s_per_byte=costs.decompress_s / costs.compressed if costs.compressed else 0.0,
        decode_s_per_byte=costs.decode_s / costs.decoded if costs.decoded else 0.0,
        windowed=costs.windowed,
    )


def _sha256_s_per_byte() -> float:
    data = bytes(8 << 20)
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    return (time.perf_counter() - start) / len(data)


def estimate_mixture(
    mixture_path: str | Path,
    sample_docs: int = 1000,
    seed: int = 0,
    tokenizer: str | LlamaTokenizer | None = None,
    workers: int = 1,
    progress: bool = False,
) -> Estimate:
    """Estimate every subset of the mixture at ``mixture_path`` from about ``sample_docs`` records each
    (``progress``: a bar on stderr over the subsets, with the time left)."""
    if sample_docs < 1:
        raise InvalidValue(f"sample_docs must be >= 1, got {sample_docs}")
    started = time.perf_counter()
    mixture = MixtureConfig.load(mixture_path)
    remote.configure(mixture.retries, mixture.storage_options)  # as the build reads it (None: as is)
    tok = (
        tokenizer
        if isinstance(tokenizer, LlamaTokenizer)
        else resolve_tokenizer(tokenizer, mixture.tokenizer)
    )
    doc_pass = DocumentPass(mixture.filters, mixture.sequences, tok, num_threads=1)
    subsets = []
    bar = tqdm(
        mixture.entries, desc="sampling subsets", unit="subset", disable=not progress, dynamic_ncols=True
    )
    for entry in bar:
        rng = random.Random(f"{seed}:{entry.key}")
        subsets.append(estimate_entry(mixture, entry, doc_pass, sample_docs, rng))
    windowed = [s.key for s in subsets if s.windowed]
    notes = (
        [
            f"{', '.join(windowed)}: gzip/zstd shards larger than the {WINDOW_BYTES >> 20} MiB window were "
            "sampled from "
            "their start (no random access); drift along a file is not in the interval"
        ]
        if windowed
        else []
    )
    notes += build_only_notes(mixture)
    return Estimate(
        mixture=mixture.name,
        subsets=subsets,
        sample_docs=sample_docs,
        seed=seed,
        sha256_s_per_byte=_sha256_s_per_byte(),
        elapsed_s=time.perf_counter() - started,
        workers=workers,
        notes=notes,
    )


def build_only_notes(mixture: MixtureConfig) -> list[str]:
    """What the build does to the kept documents that a sample cannot say: hold some out (by doc id, which a
    sampled record of an id-less corpus does not have) and remove copies (over all shards at once)."""
    notes = []
    if fraction := mixture.heldout.fraction:
        notes.append(
            f"heldout.fraction {fraction}: the build holds out ~{fraction:.2%} of the kept documents (and "
            "their tokens) for evaluation; the kept and token figures above include them"
        )
    if mixture.filters.dedup:
        notes.append(
            f"filters.dedup {mixture.filters.dedup}: the build removes copies across all shards; the kept "
            "and token figures above include them (elm-data audit duplicates measures them once built)"
        )
    return notes


# -- report
# -----------------------------------------------------------------------------------------------------
def _n(x: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _bytes(x: float) -> str:
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def _cell(i: Interval) -> str:
    return f"{_n(i.value)} [{_n(i.low)}, {_n(i.high)}]"


def format_estimate(est: Estimate) -> str:
    """A table per source/subset (value [95% interval]) and the projected cost of the exact build."""
    head = ("source/subset", "shards", "bytes", "documents", "kept", "LLaMA tokens")
    rows = [
        (s.key, str(s.shards), _bytes(s.bytes), _cell(s.documents), _cell(s.kept), _cell(s.tokens))
        for s in est.subsets
    ]
    rows.append(
        (
            "TOTAL",
            str(sum(s.shards for s in est.subsets)),
            _bytes(est.network_bytes),
            *(_cell(est.total(f)) for f in FIGURES),
        )
    )
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = [
        "  ".join(
            v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    hours = est.core_hours
    lines += [
        "",
        f"95% intervals from {sum(s.records_sampled for s in est.subsets):,} sampled records "
        f"(--sample-docs {est.sample_docs} per subset, seed {est.seed}) in {est.elapsed_s:.1f} s.",
        f"Exact build: ~{hours:,.1f} core-hours (measured here: read + filter + tokenize per record, sha256 "
        "and "
        f"decompression per byte); on {est.workers} worker(s) ~{hours / est.workers:,.1f} h.",
        f"Network: {_bytes(est.network_bytes)} (every shard once). Temporary disk: "
        f"{_bytes(est.temp_disk_bytes())} ({2 * est.workers} fetched shard(s) of up to "
        f"{_bytes(max((s.largest_shard for s in est.subsets), default=0))} + the manifest, "
        f"~{_bytes(est.manifest_bytes)}, twice while it is assembled).",
        *(f"Note: {n}" for n in est.notes),
    ]
    return "\n".join(lines)
