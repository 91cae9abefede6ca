"""The per-shard work, shared by the local process pool and the Beam pipeline.

One shard: fetched once when remote (``fetched``), sha256 and size of those bytes, then ``read_shard``
of the same bytes pinned to that sha256, batches of documents through the one ``DocumentPass``, and
its ``ShardTally`` (the shard's ``Counts`` plus one documents-ledger row per record) turned into the
shard's record and ledger, committed to the build workspace. A shard the workspace already
holds (same bytes, same pass) is not read again.

With ``dropped_per_reason = K > 0`` the shard also keeps, per ``status:reason``, its first K filtered
or rejected records (a :class:`~elm_data.pipeline.dropped.DroppedSamples` keyed by manifest order),
committed next to its ledger; the builder merges them into ``dropped_samples.jsonl``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa

from elm_data.core.errors import ElmDataError
from elm_data.core.redact import redact_text, redact_uri
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.counts import Counts
from elm_data.pipeline.document_pass import KEPT, DocumentPass, PassResult
from elm_data.pipeline.dropped import SAMPLE_CHARS, DroppedSamples
from elm_data.pipeline.tokenizer import LlamaTokenizer
from elm_data.sources import remote
from elm_data.sources.blocks import BLOCK_BYTES, Block, index_blocks
from elm_data.sources.document import Document, Rejection
from elm_data.sources.readers import fetched, read_shard, shard_format_of
from elm_data.sources.readers_common import UnsupportedFormat
from elm_data.sources.registry import subset_key

from .heldout import HELDOUT, HeldoutSelector
from .ledger_blocks import block_index
from .manifest import DOCUMENT_SCHEMA
from .shard_records import ShardRecord
from .workspace import BuildWorkspace, ShardChanged

COUNT_METHOD = "exact:sentencepiece"
# Documents per pass call: small enough that a pool worker left alone at the end switches to every core
# (build.py:SharedCores) within ~0.1 s of a batch; the per-call cost is negligible at this size.
BATCH_DOCUMENTS = 64


@dataclass(frozen=True)
class ShardTask:
    """One shard to count, at its position in the manifest."""

    shard: int
    source: str
    subset: str
    uri: str
    licence: str
    upstream: str | None = None
    block_bytes: int = BLOCK_BYTES  # target size of a plain-JSONL block
    heldout: HeldoutSelector = HeldoutSelector()  # which passing documents are held out (none by default)


@dataclass(frozen=True)
class PassSpec:
    """Everything a worker needs to build its own ``DocumentPass`` once (picklable, tokenizer included); the
    build counts ids and keeps none, so its pass returns them as arrays (``DocumentPass.ids_as_arrays``)."""

    filters: FilterConfig
    sequences: SequenceConfig
    tokenizer: LlamaTokenizer

    def build(self, pass_class: type[DocumentPass] = DocumentPass) -> DocumentPass:
        return pass_class(self.filters, self.sequences, self.tokenizer, num_threads=1, ids_as_arrays=True)


@dataclass
class ShardOutcome:
    """What a worker reports back: the shard's record, or why it failed."""

    shard: int
    uri: str
    record: ShardRecord | None = None
    error: str | None = None
    reused: bool = False
    remote: dict = field(default_factory=dict)  # remote reads while counting it: retries, bytes fetched


@dataclass
class ShardTally:
    """One shard as it is counted: its documents-ledger rows (``DOCUMENT_SCHEMA`` columns) and its ``Counts``.

    Each record read adds one ledger row and lands in one bucket of ``counts``; a whole-shard rejection
    is one row standing for ``count`` records. A document the pass keeps that ``heldout`` selects gets the
    status ``heldout`` (its tokens and segments recorded, counted apart from the kept ones).
    """

    shard: int
    count_pieces: bool = False  # corenet mode: count the pieces the per-piece rules dropped
    heldout: HeldoutSelector = HeldoutSelector()
    key: str = ""  # the shard's source/subset, which the held-out choice depends on
    columns: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in DOCUMENT_SCHEMA})
    counts: Counts = field(default_factory=Counts)
    # filters.dedup: a kept document's text -> its signature (dedup_filter.Signer)
    signer: Callable | None = None
    # (index, doc id, digest, signature) per kept document
    signatures: list[tuple] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.columns["index"])

    def _row(self, index, doc_id, status, reason, count, chars, tokens, segments) -> None:
        for name, value in zip(
            (
                "shard",
                "index",
                "doc_id",
                "status",
                "reason",
                "count",
                "chars",
                "tokens",
                "segments",
                "duplicate_of",
            ),
            (self.shard, index, doc_id, status, reason, count, chars, tokens, segments, None),
            strict=True,
        ):
            self.columns[name].append(value)

    def reject(self, item: Rejection) -> None:
        self.counts.add_rejection(item)
        self._row(item.index, "", "rejected", item.reason, item.count, 0, 0, 0)

    def add(self, result: PassResult) -> None:
        prov = result.document.provenance
        held = result.kept and self.heldout.selects(self.key, prov.doc_id)
        self.counts.add_result(result, count_pieces=self.count_pieces, heldout=held)
        if result.kept:
            status = HELDOUT if held else KEPT
            self._row(
                prov.index, prov.doc_id, status, None, 1, result.chars, result.tokens, len(result.segments)
            )
            # held-out documents too: a later copy of one is a duplicate, not trained on
            if self.signer is not None:
                self.signatures.append((prov.index, prov.doc_id, *self.signer(result.document.text)))
        else:
            self._row(prov.index, prov.doc_id, result.status, result.reason, 1, result.chars, 0, 0)

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=DOCUMENT_SCHEMA)


class HubHashMismatch(ElmDataError, ValueError):
    """The bytes read from a hub shard are not the bytes the hub publishes for it."""


def hub_file_info(uri: str) -> tuple[str | None, str | None]:
    """``(commit, lfs_sha256)`` the Hugging Face hub publishes for an ``hf://`` file, when online.

    Best effort and never required: offline, gated, or a non-LFS file gives ``None`` parts.
    """
    if not uri.startswith("hf://"):
        return None, None
    try:
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem()
        # a fault changes nothing
        info = remote.retrying(f"hub info of {uri}", lambda: fs.info(uri, expand_info=True))
        last_commit = info.get("last_commit")
        commit = last_commit.get("oid") if isinstance(last_commit, dict) else None
        lfs = info.get("lfs")
        lfs_sha = lfs.get("sha256") if isinstance(lfs, dict) else None
        return commit or fs.resolve_path(uri).revision, lfs_sha
    except Exception:  # offline, gated, or an older hub client: the upstream facts stay unknown
        return None, None


def hub_revision(uri: str, sha256: str) -> str | None:
    """The hub commit of ``uri``, after checking that the hub publishes the very bytes we hashed."""
    commit, lfs_sha = hub_file_info(uri)
    if lfs_sha is not None and lfs_sha != sha256:
        raise HubHashMismatch(f"{uri}: read bytes have sha256 {sha256}, the hub publishes {lfs_sha}")
    return commit


def dropped_sample(task: ShardTask, sha256: str, item: PassResult | Rejection) -> tuple[str, dict]:
    """``(bucket, record)`` of one filtered document or rejection for ``dropped_samples.jsonl``.

    The bucket is ``"filtered:<reason>"`` or ``"rejected:<reason>"``, so a filter reason and a
    reader's rejection reason never share a sample. Fields mirror the ledger row (``shard`` is the
    manifest position, ``chars``/``count`` as in ``documents.parquet``) plus where the bytes are.
    """
    record = {
        "shard": task.shard,
        "source": task.source,
        "subset": task.subset,
        "shard_uri": redact_uri(task.uri),
        "shard_sha256": sha256,
    }
    if isinstance(item, Rejection):
        record |= {
            "index": item.index,
            "doc_id": "",
            "status": "rejected",
            "reason": item.reason,
            "count": item.count,
            "chars": 0,
            # a library's message may echo the URI
            "detail": redact_text(item.detail, task.uri)[:SAMPLE_CHARS],
        }
    else:
        prov = item.document.provenance
        record |= {
            "index": prov.index,
            "doc_id": prov.doc_id,
            "status": item.status,
            "reason": item.reason,
            "count": 1,
            "chars": item.chars,
            "text": item.document.text[:SAMPLE_CHARS],
        }
    return f"{record['status']}:{record['reason']}", record


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a shard is counted (back on after, as it was).

    The pass holds a batch of documents, their results and every kept document's token list at once; each of
    CPython's young-generation collections, triggered by that many live containers, walks every token of every
    list held (~0.1 CPU-s a build of 10 M tokens, ~1 % of the build). What counting allocates is freed by
    reference counting (no cycles), so pausing changes no result and holds no memory longer; a cycle made
    meanwhile is collected once the collector is back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def count_shard(
    task: ShardTask,
    document_pass: DocumentPass,
    sha256: str,
    size: int,
    dropped: DroppedSamples | None = None,
    local_path: str | None = None,
    blocks: list[Block] | None = None,
    fmt: str | None = None,
) -> tuple[ShardRecord, pa.Table, pa.Table | None]:
    """Read one shard through the pass into its record, its documents ledger (one row per input record) and,
    with ``filters.dedup``, its kept documents' signatures (``dedup_filter.SIGNATURE_SCHEMA``; else None).

    ``dropped``: offered every filtered and rejected record, keyed ``(shard, index, ledger row)``.
    ``local_path``: the local copy of ``task.uri`` that was hashed (see ``fetched``).
    """
    with collector_paused():
        tally = tally_shard(task, document_pass, sha256, dropped, local_path, fmt)
    record = shard_record(task, sha256, size, tally.counts, fmt)
    table = tally.table()
    record.blocks = block_index(blocks or [Block(0, size, sha256, 0, None)], table)
    if tally.signer is None:
        return record, table, None
    from .dedup_filter import signature_table

    return record, table, signature_table(tally.signatures)


def tally_shard(
    task: ShardTask,
    document_pass: DocumentPass,
    sha256: str,
    dropped: DroppedSamples | None = None,
    local_path: str | None = None,
    fmt: str | None = None,
) -> ShardTally:
    """Every record of the shard (read pinned to ``sha256``) in the tally, in order; documents go through the
    pass in batches of ``BATCH_DOCUMENTS``, rejections straight to their bucket."""
    corenet = document_pass.sequences.mode == "corenet"
    tally = ShardTally(
        task.shard, count_pieces=corenet, heldout=task.heldout, key=subset_key(task.source, task.subset)
    )
    if document_pass.filters.dedup is not None:
        from .dedup_filter import signer_for

        tally.signer = signer_for(document_pass.filters.dedup)
    pending: list[Document | Rejection] = []

    def sample(item: PassResult | Rejection) -> None:
        if dropped is not None and (isinstance(item, Rejection) or not item.kept):
            bucket, record = dropped_sample(task, sha256, item)
            dropped.offer(bucket, (task.shard, record["index"], tally.rows), record)

    def flush() -> None:
        docs = [item for item in pending if isinstance(item, Document)]
        results = iter(document_pass.process(docs)) if docs else iter(())
        for item in pending:
            if isinstance(item, Rejection):
                sample(item)
                tally.reject(item)
            else:
                result = next(results)
                sample(result)
                tally.add(result)
        pending.clear()

    n_docs = 0
    limit = document_pass.filters.max_record_bytes
    for item in read_shard(
        task.uri,
        task.source,
        task.subset,
        shard_sha256=sha256,
        local_path=local_path,
        fmt=fmt,
        max_record_bytes=limit,
    ):
        pending.append(item)
        if isinstance(item, Document):
            n_docs += 1
            if n_docs % BATCH_DOCUMENTS == 0:
                flush()
    flush()
    return tally


def shard_record(task: ShardTask, sha256: str, size: int, counts: Counts, fmt: str | None) -> ShardRecord:
    """The shard's manifest record (without its block index); no credentials in any URI it holds."""
    return ShardRecord(
        shard=task.shard,
        source=task.source,
        subset=task.subset,
        uri=redact_uri(task.uri),  # the read used the full URI
        size_bytes=size,
        sha256=sha256,
        licence=task.licence,
        upstream=redact_uri(task.upstream) if task.upstream else task.upstream,
        upstream_revision=hub_revision(task.uri, sha256),
        **counts.to_dict(),
        count_method=COUNT_METHOD,
        format=fmt or "",
    )


def process_shards(
    tasks: Sequence[ShardTask],
    document_pass: DocumentPass,
    workspace: BuildWorkspace,
    dropped_per_reason: int = 0,
    count: Callable[..., ShardOutcome] | None = None,
) -> Iterator[ShardOutcome]:
    """``count`` (:func:`process_shard`) of each task in turn, the next remote shard fetched in the background
    meanwhile (so fetching overlaps counting; at most two scratch copies at a time)."""
    count = count or process_shard
    seen = remote.STATS.to_dict()
    with ThreadPoolExecutor(1, "elm-next-shard") as pool:
        ahead = pool.submit(_fetch_ahead, tasks[0].uri) if tasks else None
        for n, task in enumerate(tasks):
            current, ahead = (
                ahead,
                pool.submit(_fetch_ahead, tasks[n + 1].uri) if n + 1 < len(tasks) else None,
            )
            outcome = count(task, document_pass, workspace, dropped_per_reason, current)
            # the background fetches too
            outcome.remote, seen = remote.STATS.since(seen), remote.STATS.to_dict()
            yield outcome


def _fetch_ahead(uri: str) -> str | None:
    """A scratch copy of a remote shard, or None (a local one; or a failure, which the shard's own fetch
    reports)."""
    fs, _ = remote.filesystem(uri)
    if not remote.is_remote(fs):
        return None
    try:
        return remote.download_temp(uri)
    except Exception:
        return None


@contextmanager
def _fetched(uri: str, ahead: Future | None) -> Iterator[str]:
    local = ahead.result() if ahead is not None else None
    if local is None:
        with fetched(uri) as path:
            yield path
        return
    try:
        yield local
    finally:
        os.unlink(local)


def process_shard(
    task: ShardTask,
    document_pass: DocumentPass,
    workspace: BuildWorkspace,
    dropped_per_reason: int = 0,
    ahead: Future | None = None,
) -> ShardOutcome:
    """Count one shard into the workspace, or reuse its committed result; errors are reported, not raised.

    ``dropped_per_reason``: K > 0 also commits the shard's first K dropped records per reason; a
    committed result with fewer samples per reason than asked for is counted again. ``ahead``: a
    background fetch of the shard (:func:`process_shards`) giving its scratch copy (or None).
    """
    before = remote.STATS.to_dict()
    outcome = _process_shard(task, document_pass, workspace, dropped_per_reason, ahead)
    outcome.remote = remote.STATS.since(before)
    return outcome


def _process_shard(
    task: ShardTask, document_pass: DocumentPass, workspace: BuildWorkspace, dropped_per_reason: int, ahead
) -> ShardOutcome:
    try:
        with _fetched(task.uri, ahead) as local:  # hashed and read from the same bytes, fetched once
            try:
                fmt = shard_format_of(local, task.source, task.subset, name=task.uri)
            except UnsupportedFormat:
                fmt = None  # the reader turns it into a counted rejection naming the format
            sha256, size, blocks = index_blocks(local, fmt or "opaque", task.block_bytes)
            dedup = document_pass.filters.dedup is not None
            done = workspace.reusable(task.shard, task.uri, sha256, dropped_per_reason, signatures=dedup)
            if done is not None:
                workspace.clear_error(task.shard)
                return ShardOutcome(task.shard, task.uri, done.record, reused=True)
            dropped = DroppedSamples(dropped_per_reason) if dropped_per_reason > 0 else None
            record, documents, signatures = count_shard(
                task, document_pass, sha256, size, dropped, local, blocks, fmt
            )
        workspace.store(record, documents, dropped, signatures)
        return ShardOutcome(task.shard, task.uri, record)
    except (ShardChanged, FileNotFoundError) as e:
        message = str(e)
    except Exception as e:  # an unreadable shard must name itself, whatever the reader raised
        message = f"{task.uri}: {type(e).__name__}: {e}"
    workspace.store_error(task.shard, task.uri, message)
    return ShardOutcome(task.shard, task.uri, error=message)
