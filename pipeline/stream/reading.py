"""Read a partition's documents from verified blocks: each block's sha256 is checked before any of its
records.

A partition keeps at most one open reader per source. A JSONL shard with several blocks is read one block
at a time (a view of exactly that block's bytes, numbered from its first record), any other shard through
a view of the whole file in which only the blocks touched are loaded: a parquet reader loads the footer and
the row groups it reads, a single-block shard is one block. Within a view, ``read_shard`` runs over one
block at a time and decodes only that block's kept records from the first one asked for on
(``read_shard(select=)``), the set the plan's walk read from the documents ledger (``PlannedDoc.block_kept``:
each ledger block is read and checked once, by the walk): the plan asks a source for its kept documents
block by block, in record order, so these are exactly the records it will ask for next. Every record
returned must be the kept document the manifest says.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import ExitStack

from elm_data.core.errors import ElmDataError
from elm_data.core.redact import redact_text
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.config import FilterConfig
from elm_data.sources.blocks import Block, BlockChanged, VerifiedView, open_verified
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

from .partition import PartitionWalk
from .plan import PlannedDoc
from .readahead import ReadAhead


class StreamIntegrityError(ElmDataError, RuntimeError):
    """The corpus or the pass no longer matches the manifest; nothing of it is fed."""


FIRSTS_KEPT = 256  # shards whose block boundaries a fetcher keeps


def _blocks(index: list[dict]) -> list[Block]:
    return [Block(b["start"], b["end"], b["sha256"], b["first_record"], b["records"]) for b in index]


class _OpenReader:
    """One source's open shard: a verified view holding records ``[first, end)`` (the whole file, or one block
    of a JSONL shard), and ``items``, ``read_shard`` over block ``block`` of it; ``next_index`` is the first
    record it can still give (records are only read forward)."""

    __slots__ = ("shard", "first", "end", "resources", "view", "block", "items", "next_index")

    def __init__(self, shard: int, first: int, end: int, next_index: int):
        self.shard, self.first, self.end, self.next_index = shard, first, end, next_index
        self.resources = ExitStack()
        self.view: VerifiedView | None = None
        self.block = -1
        self.items: Iterator = iter(())

    def read(self, block: int, items: Iterator) -> None:
        """Read ``block`` through ``items`` from now on (the previous block's reader is closed)."""
        _close(self.items)
        self.block, self.items = block, items

    def close(self) -> None:
        _close(self.items)
        self.resources.close()


def _close(items: Iterator) -> None:
    close = getattr(items, "close", None)  # a generator; read_shard may also return a plain iterator
    if close is not None:
        close()


class DocumentFetcher:
    """Fetches planned documents forward, one open reader per source; ``bytes_loaded`` counts storage
    reads."""

    def __init__(self, manifest: Manifest, walk: PartitionWalk | None = None):
        self.manifest = manifest
        self.records = manifest.shards
        # the partition's next remote blocks fetched in the background (``walk``: the partition read)
        self.ahead = ReadAhead(walk) if walk is not None else None
        self._firsts: dict[int, list[int]] = {}  # first records of the blocks of the shards read lately
        self._open: dict[str, _OpenReader] = {}
        self.bytes_loaded = 0
        # the build's
        self.max_record_bytes = FilterConfig.from_dict(manifest.info.get("filters")).max_record_bytes

    def close(self) -> None:
        for key in list(self._open):
            self._leave(key)
        if self.ahead is not None:
            self.ahead.close()

    def _leave(self, key: str) -> None:
        current = self._open.pop(key, None)
        if current is not None:
            self.bytes_loaded += current.view.bytes_loaded if current.view is not None else 0
            current.close()

    def _open_view(self, doc: PlannedDoc) -> _OpenReader:
        """A verified view from ``doc``'s record on: of its block (JSONL with several blocks) or the whole
        shard."""
        rec = self.records[doc.shard]
        blocks = _blocks(self.manifest.blocks(doc.shard))  # the shard's block index, checked on first use
        lo, hi, first, end = 0, blocks[-1].end, 0, rec.docs_read
        # a view of this block only, numbered from its first
        if rec.format.startswith("jsonl") and len(blocks) > 1:
            b = blocks[self._block_of(doc)]
            lo, hi, first, end = b.start, b.end, b.first_record, b.first_record + (b.records or 0)
        opened = _OpenReader(doc.shard, first, end, doc.index)
        try:
            opened.view = opened.resources.enter_context(open_verified(rec.uri, blocks, lo, hi, self.ahead))
            if rec.format == "parquet":
                opened.view.parquet_metadata()  # the footer, read (and verified) once per view
        except BaseException:
            opened.close()
            raise
        return opened

    def _block_of(self, doc: PlannedDoc) -> int:
        """The block of ``doc``'s shard that holds its record."""
        firsts = self._firsts.get(doc.shard)
        if firsts is None:
            if len(self._firsts) >= FIRSTS_KEPT:
                del self._firsts[next(iter(self._firsts))]
            firsts = self._firsts[doc.shard] = [b["first_record"] for b in self.manifest.blocks(doc.shard)]
        return bisect.bisect_right(firsts, doc.index) - 1

    def _read_block(self, current: _OpenReader, doc: PlannedDoc) -> None:
        """Point ``current`` at ``doc``'s block: ``read_shard`` over the view from ``doc``'s record on."""
        rec = self.records[doc.shard]
        block = self._block_of(doc)
        wanted = doc.block_kept  # the block's kept records, as the walk read them from the ledger
        current.read(
            block,
            read_shard(
                rec.uri,
                rec.source,
                rec.subset,
                rec.sha256,
                doc.index,
                select=wanted,
                fmt=rec.format or None,
                max_record_bytes=self.max_record_bytes,
                view=current.view,
            ),
        )

    def fetch(self, doc: PlannedDoc) -> Document:
        """The ``Document`` at (doc.shard, doc.index), reading forward from its source's current position."""
        rec = self.records[doc.shard]
        current = self._open.get(rec.key)
        if current is None or current.shard != doc.shard or not current.next_index <= doc.index < current.end:
            self._leave(rec.key)
            current = self._open[rec.key] = self._open_view(doc)
        try:
            if current.block != self._block_of(doc):
                if self.ahead is not None:
                    # and fetch the source's next blocks
                    self.ahead.at(doc.src, doc.shard, self._block_of(doc))
                self._read_block(current, doc)
            item = self._next_at(current, doc)
        except BlockChanged as changed:
            self._leave(rec.key)
            raise StreamIntegrityError(redact_text(f"shard {doc.shard} ({rec.key}): {changed}")) from None
        except BaseException:
            self._leave(rec.key)
            raise
        current.next_index = doc.index + 1
        return item

    def _next_at(self, current: _OpenReader, doc: PlannedDoc) -> Document:
        """The reader's item for ``doc``'s record, which must be the kept document the manifest names."""
        uri = self.records[doc.shard].uri
        for item in current.items:
            is_doc = isinstance(item, Document)
            index = item.provenance.index if is_doc else item.index
            if index + (1 if is_doc else max(1, item.count)) <= doc.index:
                continue
            if index != doc.index or not is_doc:
                what = "a document" if is_doc else f"a rejection ({item.reason})"
                raise StreamIntegrityError(
                    f"shard {doc.shard} ({uri}): record {doc.index} (doc {doc.doc_id}) is kept in the "
                    f"manifest but the reader gave {what} at record {index}"
                )
            if item.provenance.doc_id != doc.doc_id:
                raise StreamIntegrityError(
                    f"shard {doc.shard} ({uri}) record {doc.index}: doc id {item.provenance.doc_id}, "
                    f"manifest says {doc.doc_id}"
                )
            return item
        raise StreamIntegrityError(
            f"shard {doc.shard} ({uri}) ended before record {doc.index} (doc {doc.doc_id})"
        )

    def loaded(self) -> int:
        """Bytes read from shard storage so far (closed and open readers)."""
        return self.bytes_loaded + sum(r.view.bytes_loaded for r in self._open.values() if r.view is not None)
