"""Read a partition's documents from verified blocks: each block's sha256 is checked before any of its records.

A partition keeps at most one open reader per source. A plain-JSONL shard is read one block at a time
(a view of exactly that block's bytes, numbered from its first record), any other shard through a view
of the whole file in which only the blocks touched are loaded: a parquet reader loads the footer and
the row groups it reads, a compressed shard is one block. Only the records asked for are decoded
(``read_shard(select=)``), and every record must be the kept document the manifest says.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator
from contextlib import ExitStack

from elm_data.core.errors import ElmDataError
from elm_data.core.redact import redact_text
from elm_data.manifests.manifest import Manifest, ShardRecord
from elm_data.sources.blocks import Block, BlockChanged, VerifiedView, open_verified
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

from .plan import PlannedDoc


class StreamIntegrityError(ElmDataError, RuntimeError):
    """The corpus or the pass no longer matches the manifest; nothing of it is fed."""


def _blocks(record: ShardRecord) -> list[Block]:
    return [Block(b["start"], b["end"], b["sha256"], b["first_record"], b["records"]) for b in record.blocks]


class _OpenReader:
    """A reader over part of one shard: records ``[first, end)``; decodes only the record ``target``."""

    __slots__ = ("shard", "end", "items", "next_index", "target", "resources", "view")

    def __init__(self, shard: int, target: int, end: int):
        self.shard, self.next_index, self.target, self.end = shard, target, target, end
        self.items: Generator = (x for x in ())
        self.resources = ExitStack()
        self.view: VerifiedView | None = None

    def selected(self, index: int) -> bool:
        return index == self.target

    def close(self) -> None:
        self.items.close()
        self.resources.close()


class DocumentFetcher:
    """Fetches planned documents forward, one open reader per source; ``bytes_loaded`` counts storage reads."""

    def __init__(self, manifest: Manifest):
        self.records = manifest.shards
        self._blocks = {r.shard: _blocks(r) for r in self.records}
        self._open: dict[str, _OpenReader] = {}
        self.bytes_loaded = 0

    def close(self) -> None:
        for key in list(self._open):
            self._leave(key)

    def _leave(self, key: str) -> None:
        current = self._open.pop(key, None)
        if current is not None:
            self.bytes_loaded += current.view.bytes_loaded if current.view is not None else 0
            current.close()

    def _open_reader(self, doc: PlannedDoc) -> _OpenReader:
        rec = self.records[doc.shard]
        blocks = self._blocks[doc.shard]
        lo, hi, first, end = 0, blocks[-1].end, 0, rec.docs_read
        if rec.format.startswith("jsonl") and len(blocks) > 1:  # a view of this block only, numbered from its first
            b = blocks[bisect.bisect_right([x.first_record for x in blocks], doc.index) - 1]
            lo, hi, first, end = b.start, b.end, b.first_record, b.first_record + (b.records or 0)
        opened = _OpenReader(doc.shard, doc.index, end)
        try:
            url, opened.view = opened.resources.enter_context(open_verified(rec.uri, blocks, lo, hi))
            footer = opened.view.parquet_metadata() if rec.format == "parquet" and len(blocks) > 1 else None
            opened.items = read_shard(
                rec.uri, rec.source, rec.subset, shard_sha256=rec.sha256, skip=doc.index, select=opened.selected,
                local_path=url, first_index=first, fmt=rec.format or None, parquet_metadata=footer,
            )  # fmt: skip
        except BaseException:
            opened.close()
            raise
        return opened

    def fetch(self, doc: PlannedDoc) -> Document:
        """The ``Document`` at (doc.shard, doc.index), reading forward from its source's current position."""
        rec = self.records[doc.shard]
        current = self._open.get(rec.key)
        if current is None or current.shard != doc.shard or not current.next_index <= doc.index < current.end:
            self._leave(rec.key)
            current = self._open[rec.key] = self._open_reader(doc)
        current.target = doc.index
        try:
            for item in current.items:
                is_doc = isinstance(item, Document)
                index = item.provenance.index if is_doc else item.index
                if index + (1 if is_doc else max(1, item.count)) <= doc.index:
                    continue
                if index != doc.index or not is_doc:
                    what = "a document" if is_doc else f"a rejection ({item.reason})"
                    raise StreamIntegrityError(
                        f"shard {doc.shard} ({rec.uri}): record {doc.index} (doc {doc.doc_id}) is kept in the "
                        f"manifest but the reader gave {what} at record {index}"
                    )
                if item.provenance.doc_id != doc.doc_id:
                    raise StreamIntegrityError(
                        f"shard {doc.shard} ({rec.uri}) record {doc.index}: doc id {item.provenance.doc_id}, "
                        f"manifest says {doc.doc_id}"
                    )
                current.next_index = doc.index + 1
                return item
        except BlockChanged as changed:
            self._leave(rec.key)
            raise StreamIntegrityError(redact_text(f"shard {doc.shard} ({rec.key}): {changed}")) from None
        except StreamIntegrityError:
            self._leave(rec.key)
            raise
        self._leave(rec.key)
        raise StreamIntegrityError(f"shard {doc.shard} ({rec.uri}) ended before record {doc.index} (doc {doc.doc_id})")

    def loaded(self) -> int:
        """Bytes read from shard storage so far (closed and open readers)."""
        return self.bytes_loaded + sum(r.view.bytes_loaded for r in self._open.values() if r.view is not None)
