"""Sequence forming: frame kept segments with BOS/EOS and lay them into fixed-length rows.

A document's *framed* tokens are the concatenation, over its kept segments, of ``BOS + ids + EOS``;
span offsets (``doc_start``/``doc_end``) are positions in that framed sequence.

- ``packed``: the framed documents form one continuous stream cut into windows of ``seq_len + 1``
  tokens; a document continues into the next window, nothing is lost, only the very last window of a
  finite stream is padded.
- ``corenet``: each framed segment (a CoreNet piece) is one row on its own, truncated to
  ``seq_len + 1`` tokens (the rest is discarded) and right-padded with ``pad_id``, as CoreNet does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

from elm_data.pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID
from elm_data.sources.registry import subset_key

from .plan import BatchPlan, Plan, PlannedDoc


@dataclass(frozen=True)
class FramedDoc:
    """``ids``: framed tokens; ``starts``: offset of each segment's BOS, plus the total length at the end."""

    ids: np.ndarray
    starts: np.ndarray

    @property
    def segments(self) -> int:
        return len(self.starts) - 1


def frame_segments(segments: Sequence[Sequence[int]], bos: int = BOS_ID, eos: int = EOS_ID) -> FramedDoc:
    """``BOS + segment + EOS`` for every segment, concatenated: one document's :func:`frame_documents`."""
    return frame_documents([segments], bos, eos)[0]


def frame_documents(
    documents: Sequence[Sequence[Sequence[int]]], bos: int = BOS_ID, eos: int = EOS_ID
) -> list[FramedDoc]:
    """``BOS + segment + EOS`` for every segment of each document, with ONE int64 array for all of their
    tokens: each document's ``ids`` is a view of it; BOS/EOS are set around each segment by position.
    Segments may be lists of ints or numpy arrays (SentencePiece's ``return_type="numpy"``)."""
    flat = [seg for segments in documents for seg in segments]
    lengths = [len(seg) for seg in flat]
    framed_lengths = np.array(lengths, dtype=np.int64) + 2
    ends = np.cumsum(framed_lengths)  # where each framed segment ends in the one array
    ids = _framed_ids(flat, framed_lengths, ends, bos, eos)
    # each document's segment offsets, relative to its first token, behind a 0 of its own: one array
    counts = np.array([len(segments) for segments in documents], dtype=np.int64)
    firsts = np.cumsum(counts) - counts  # each document's first segment
    doc_of_segment = np.repeat(np.arange(len(documents)), counts)
    doc_pos = np.concatenate(([0], ends))[firsts]  # where each document's framed tokens start
    starts = np.zeros(len(flat) + len(documents), dtype=np.int64)
    starts[np.arange(len(flat)) + doc_of_segment + 1] = ends - doc_pos[doc_of_segment]
    bounds = (firsts + np.arange(len(documents))).tolist()
    return [
        FramedDoc(ids[pos : pos + int(starts[b + n])], starts[b : b + n + 1])
        for pos, b, n in zip(doc_pos.tolist(), bounds, counts.tolist(), strict=True)
    ]


def _framed_ids(flat: list, framed_lengths: np.ndarray, ends: np.ndarray, bos: int, eos: int) -> np.ndarray:
    """``BOS + segment + EOS`` of every segment, one after the other, in one int64 array. Numpy arrays (as the
    stream's pass gets them): one concatenation, cast on the way; lists: packed as 4-byte C ints (``struct``:
    about twice as fast as ``np.fromiter`` over Python ints; SentencePiece ids are far below 2**31) and set
    between BOS/EOS placed by position."""
    if all(isinstance(seg, np.ndarray) for seg in flat):
        first, last = np.array([bos], dtype=np.int64), np.array([eos], dtype=np.int64)
        parts = [part for seg in flat for part in (first, seg, last)]
        return np.concatenate(parts, dtype=np.int64) if parts else np.empty(0, dtype=np.int64)
    ids = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    content = np.ones(len(ids), dtype=bool)
    content[ends - framed_lengths] = content[ends - 1] = False
    ids[ends - framed_lengths], ids[ends - 1] = bos, eos
    ids[content] = np.frombuffer(b"".join(struct.pack(f"={len(seg)}i", *seg) for seg in flat), dtype="=i4")
    return ids


class DocIdentity(TypedDict):
    """Which document a span comes from: the fields every span of a planned document shares."""

    source: str
    subset: str
    shard_sha256: str
    doc_id: str
    index: int  # record (row/line) in its shard


class Span(DocIdentity, total=False):
    """Where a document's framed tokens ``[doc_start, doc_end)`` lie in a row: window positions ``[start,
    end)`` (a corenet span from the plan alone has ``start`` only: its token range needs the piece's
    length)."""

    doc_start: int
    doc_end: int
    start: int
    end: int


@dataclass
class BatchRows:
    """One batch laid out: token rows, provenance spans, per-source token counts and padding figures."""

    input_ids: np.ndarray  # [sequences, window] int64
    spans: list[list[Span]]
    tokens_by_source: dict[str, int]
    segment_ids: np.ndarray | None = None  # [sequences, window]: segment number within the row, -1 on padding
    pad_tokens: int = 0
    discarded_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


SpanBase = Callable[[PlannedDoc], DocIdentity]


def span_base_of(plan: Plan) -> SpanBase:
    """``doc -> {source, subset, shard_sha256, doc_id, index}``: the identity fields of a planned document
    (the one definition the stream's batches and the receipt's plan spans share)."""
    sources, shards = plan.sources, plan.manifest.shards

    def base(doc: PlannedDoc) -> DocIdentity:
        src = sources[doc.src]
        return {
            "source": src.source,
            "subset": src.subset,
            "shard_sha256": shards[doc.shard].sha256,
            "doc_id": doc.doc_id,
            "index": doc.index,
        }

    return base


def _count(tokens_by_source: dict[str, int], base: DocIdentity, n: int) -> None:
    key = subset_key(base["source"], base["subset"])
    tokens_by_source[key] = tokens_by_source.get(key, 0) + n


def packed_doc_spans(
    doc: PlannedDoc, base: DocIdentity, batch_start: int, lo: int, hi: int, window: int
) -> list[tuple[int, Span]]:
    """``(row, span)`` for the stream units ``[lo, hi)`` of ``doc`` in the packed batch starting at
    ``batch_start`` (one span per row the range touches). Needs the plan only: used by :func:`layout_packed`
    and by :func:`plan_spans` (the consumption receipt), so both make the same spans."""
    out = []
    pos = lo
    while pos < hi:
        row = (pos - batch_start) // window
        row_start = batch_start + row * window
        end = min(hi, row_start + window)
        span = {**base, "doc_start": pos - doc.start, "doc_end": end - doc.start}
        out.append((row, span | {"start": pos - row_start, "end": end - row_start}))
        pos = end
    return out


def corenet_doc_rows(doc: PlannedDoc, plan: BatchPlan) -> list[tuple[int, int]]:
    """``(piece, row)`` of each of ``doc``'s kept pieces that falls in the corenet batch ``plan``."""
    return [
        (piece, doc.start + piece - plan.start)
        for piece in range(doc.segments)
        if 0 <= doc.start + piece - plan.start < plan.sequences
    ]


def plan_spans(plan: BatchPlan, span_base: SpanBase, window: int, mode: str) -> list[list[Span]]:
    """The spans of a batch from its plan alone (no corpus, no tokenizer): in packed mode exactly the stream's
    ``batch["spans"]``; in corenet mode each piece's span without its token range (``doc_start``, ``doc_end``
    and ``end`` need the piece's length, which the manifest does not record): ``start`` = 0 and the identity
    fields."""
    spans: list[list[Span]] = [[] for _ in range(plan.sequences)]
    batch_end = plan.start + plan.sequences * window
    for doc in plan.docs:
        base = span_base(doc)
        if mode == "packed":
            lo, hi = max(doc.start, plan.start), min(doc.start + doc.units, batch_end)
            for row, span in packed_doc_spans(doc, base, plan.start, lo, hi, window):
                spans[row].append(span)
        else:
            for _piece, row in corenet_doc_rows(doc, plan):
                spans[row].append({**base, "start": 0})
    return spans


def layout_packed(
    plan: BatchPlan,
    framed: Callable[[PlannedDoc], FramedDoc],
    span_base: SpanBase,
    window: int,
    pad_id: int = PAD_ID,
    document_masks: bool = False,
) -> BatchRows:
    """Fill ``plan.sequences`` consecutive windows of the packed stream starting at ``plan.start``."""
    n = plan.sequences
    flat = np.full(n * window, pad_id, dtype=np.int64)
    marks = np.zeros(n * window, dtype=np.int64) if document_masks else None
    spans: list[list[Span]] = [[] for _ in range(n)]
    by_source: dict[str, int] = {}
    batch_end = plan.start + n * window
    for doc in plan.docs:
        fd = framed(doc)
        if len(fd.ids) != doc.units:
            raise RuntimeError(
                f"document {doc.doc_id}: {len(fd.ids)} framed tokens, the plan expects {doc.units}"
            )
        lo, hi = max(doc.start, plan.start), min(doc.start + doc.units, batch_end)
        if lo >= hi:
            continue
        flat[lo - plan.start : hi - plan.start] = fd.ids[lo - doc.start : hi - doc.start]
        if marks is not None:
            seg_starts = fd.starts[:-1] + doc.start
            inside = seg_starts[(seg_starts >= lo) & (seg_starts < hi)] - plan.start
            marks[inside] = 1
        base = span_base(doc)
        for row, span in packed_doc_spans(doc, base, plan.start, lo, hi, window):
            spans[row].append(span)
        _count(by_source, base, hi - lo)
    rows = flat.reshape(n, window)
    filled = sum(by_source.values())
    segment_ids = None
    if marks is not None:
        marks = marks.reshape(n, window)
        marks[:, 0] = 1  # a row starting mid-document still begins its own segment 0
        segment_ids = np.cumsum(marks, axis=1) - 1
        used = np.arange(n * window).reshape(n, window) < filled  # packed rows fill from the front
        segment_ids[~used] = -1
    return BatchRows(rows, spans, by_source, segment_ids, pad_tokens=n * window - filled)


def layout_corenet(
    plan: BatchPlan,
    framed: Callable[[PlannedDoc], FramedDoc],
    span_base: SpanBase,
    window: int,
    pad_id: int = PAD_ID,
    document_masks: bool = False,
) -> BatchRows:
    """One row per kept piece: ``BOS + piece + EOS`` truncated to ``window`` and right-padded with
    ``pad_id``."""
    n = plan.sequences
    rows = np.full((n, window), pad_id, dtype=np.int64)
    segment_ids = np.full((n, window), -1, dtype=np.int64) if document_masks else None
    spans: list[list[Span]] = [[] for _ in range(n)]
    by_source: dict[str, int] = {}
    discarded = 0
    for doc in plan.docs:
        fd = framed(doc)
        if fd.segments != doc.segments:
            raise RuntimeError(
                f"document {doc.doc_id}: {fd.segments} pieces, the plan expects {doc.segments}"
            )
        base = span_base(doc)
        for piece, row in corenet_doc_rows(doc, plan):
            begin, end = int(fd.starts[piece]), int(fd.starts[piece + 1])
            kept = min(end - begin, window)
            rows[row, :kept] = fd.ids[begin : begin + kept]
            if segment_ids is not None:
                segment_ids[row, :kept] = 0
            discarded += end - begin - kept
            spans[row].append({**base, "doc_start": begin, "doc_end": begin + kept, "start": 0, "end": kept})
            _count(by_source, base, kept)
    pad = n * window - sum(by_source.values())
    return BatchRows(rows, spans, by_source, segment_ids, pad_tokens=pad, discarded_tokens=discarded)


LAYOUTS = {"packed": layout_packed, "corenet": layout_corenet}
