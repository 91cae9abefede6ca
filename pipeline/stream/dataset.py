"""The resumable training stream: partitions → verified blocks → per-document pass → sequences → whole
batches.

``TokenStream`` is what to stream (a manifest, a plan config, this rank's place) and never changes once
made; ``TokenStream.readers(position)`` is what a reader (this process, or a DataLoader worker) iterates, and
``StreamLoader`` (``loader.py``) wraps it in a ``DataLoader(batch_size=None)``, hands batches out in global
order and keeps the position (one cursor per partition) and the tokens consumed. Which reader makes which
batch is fixed by the plan (``plan.py``): rank ``r`` of ``R`` and worker ``w`` of ``W`` read only their own
partitions, so each block is read once by one reader, and every ``R × W`` dividing the partition count
yields the same global batches.

Integrity: every block's sha256 is checked before any of its records is fed (``reading.py``), every
document's pass outcome must equal the manifest's (kept, same token and segment counts), the manifest must
recompute its own id (``Manifest``; again in each worker, which must also see the parent's manifest id),
and the tokenizer's sha256 must equal the manifest's. Any mismatch stops the stream with an error.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict

from elm_data.core.procs import return_freed_memory, usable_cores
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.tokenizer import LlamaTokenizer, TokenizerMismatch, resolve_tokenizer
from elm_data.sources import remote
from elm_data.sources.blocks import READER_MEMORY, set_reader_memory

from . import ahead
from .ahead import PassedAhead, steps
from .network import NetworkSettings
from .partition import Cursor, PartitionWalk, first_batch_of, planned_batches
from .plan import (
    NATURAL,
    BatchPlan,
    Plan,
    PlanConfig,
    PlanError,
    default_partitions,
    manifest_mode,
    manifest_weights,
)
from .process_readers import current_worker
from .readahead import readahead_settings
from .reading import DocumentFetcher, StreamIntegrityError
from .sequences import LAYOUTS, Span, span_base_of


class StreamBatch(TypedDict, total=False):
    """One batch of the stream (the fields :class:`TokenStream` documents); arrays are tensors, or numpy
    arrays when read with ``numpy``. ``spans``: with ``provenance``; ``segment_ids``: with ``document_masks``;
    ``remote_reads``: only when there were any since the reader's last batch."""

    input_ids: Any
    spans: list[list[Span]]
    tokens_by_source: dict[str, int]
    segment_ids: Any
    batch_index: int
    partition: int
    cursor: Cursor
    pad_tokens: int
    discarded_tokens: int
    remote_reads: dict[str, Any]


def _resolve_weights(weights: str | dict[str, float] | None, manifest: Manifest) -> dict[str, float] | None:
    if weights is None:
        return manifest_weights(manifest)
    if isinstance(weights, str):
        if weights != NATURAL:
            raise PlanError(f"weights must be 'natural', a mapping or None, got {weights!r}")
        return None
    return {str(k): float(v) for k, v in dict(weights).items()}


def _reader_memory(limit: int | None) -> int:
    """The cap on verified block bytes a reader process holds in memory: ``limit``, else the environment's
    ``ELM_DATA_READER_MEMORY`` (bytes), else ``sources.blocks.READER_MEMORY``."""
    raw = os.environ.get("ELM_DATA_READER_MEMORY") if limit is None else limit
    if raw is None:
        return READER_MEMORY
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise PlanError(f"reader memory must be a number of bytes >= 0, got {raw!r} (ELM_DATA_READER_MEMORY)")
    return value


def _tokenizer_for(tokenizer: str | LlamaTokenizer | None, info: dict[str, Any]) -> LlamaTokenizer:
    if not isinstance(tokenizer, LlamaTokenizer):
        return resolve_tokenizer(tokenizer, None, info)
    expected = info["tokenizer"]["sha256"]
    if tokenizer.sha256 != expected:
        raise TokenizerMismatch(
            f"tokenizer {tokenizer.uri} has sha256 {tokenizer.sha256}, but the manifest was counted with "
            f"{expected}"
        )
    return tokenizer


def default_encode_threads(workers: int = 0) -> int:
    """SentencePiece threads per reading process when none are asked for: the cores this process may use
    (its CPU affinity), shared among ``workers`` reading processes (0: this one reads), at least 1."""
    return max(1, usable_cores() // max(1, workers))


class TokenStream:
    """Whole batches of a manifest's kept documents: deterministic, partitioned over ranks and workers,
    resumable.

    Each batch is a dict: ``input_ids`` LongTensor[B, seq_len + 1]; ``spans`` (when ``provenance``): per
    sequence, a list of ``{source, subset, shard_sha256, doc_id, index, doc_start, doc_end, start, end}``
    (window positions ``[start, end)`` hold the document's framed tokens ``[doc_start, doc_end)``, framed =
    BOS + ids + EOS per kept segment); ``tokens_by_source`` non-pad tokens per ``"source/subset"``;
    ``segment_ids`` (when ``document_masks``) LongTensor[B, seq_len + 1], -1 on padding; ``batch_index``
    (global), ``partition``, ``cursor`` (the partition's cursor after this batch), ``pad_tokens``,
    ``discarded_tokens`` (ints); ``remote_reads`` (only when there were any: retries and bytes fetched from
    remote stores by this reader since its last batch, see ``sources/remote.py``). At the end of a finite
    stream a partition's last batch may be short and a partition whose data ended gives empty batches (B = 0).

    ``manifest``: a :class:`Manifest` already open (and so verified) in this process, or its directory. The
    stream holds no position: iterating it reads this rank's batches from the start; :meth:`readers` gives a
    dataset standing anywhere (``StreamLoader`` keeps the position and resumes with it).

    ``reader_memory``: the verified block bytes each reading process holds in memory at most (default
    ``ELM_DATA_READER_MEMORY`` or 128 MiB; beyond it, blocks wait in temp files:
    ``sources.blocks.HeldBlocks``). It changes no byte of the stream.

    ``encode_threads``: SentencePiece threads in each reading process (this one, or each DataLoader worker);
    a step's documents are encoded in one call split over them. It changes no byte of the stream either.
    """

    def __init__(
        self,
        manifest: str | Path | Manifest,
        *,
        batch_size: int,
        seq_len: int | None = None,
        mode: str | None = None,
        weights: str | dict[str, float] | None = None,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        tokenizer: str | LlamaTokenizer | None = None,
        epochs: int | None = 1,
        provenance: bool = True,
        document_masks: bool | None = None,
        partitions: int | None = None,
        network: NetworkSettings | None = None,
        reader_memory: int | None = None,
        encode_threads: int = 1,
    ):
        if encode_threads < 1:
            raise PlanError(f"encode_threads must be at least 1, got {encode_threads}")
        self.encode_threads = encode_threads
        self.reader_memory = _reader_memory(reader_memory)
        return_freed_memory()  # before the manifest is read (and again in each reading process: batches())
        if network is not None:
            network.apply()
        self.network = NetworkSettings.current()  # applied again in each DataLoader worker
        if not 0 <= rank < world_size:
            raise PlanError(f"rank {rank} is outside world_size {world_size}")
        # one open and verified is used as it is
        if not isinstance(manifest, Manifest) or not manifest.verified:
            manifest = Manifest(manifest.path if isinstance(manifest, Manifest) else manifest)
        self.manifest_dir = manifest.path
        info = manifest.info
        self.manifest_id = manifest.manifest_id
        self.sequences = SequenceConfig.from_dict(info["sequences"])
        self.filters = FilterConfig.from_dict(info["filters"])
        config = PlanConfig(
            mode=mode or manifest_mode(info),
            seq_len=int(self.sequences.seq_len if seq_len is None else seq_len),
            batch_size=int(batch_size),
            seed=int(info["seed"] if seed is None else seed),
            weights=_resolve_weights(weights, manifest),
            epochs=epochs,
        )
        partitions = default_partitions(manifest, config) if partitions is None else partitions
        self.config = replace(config, partitions=int(partitions))
        self._manifest: Manifest | None = manifest
        self._plan: Plan | None = None
        self.plan().readers_layout(rank, world_size, 1)  # validates mode, weights and the layout now
        self.tokenizer = _tokenizer_for(tokenizer, info)
        self.rank, self.world_size = rank, world_size
        self.provenance = provenance
        self.document_masks = self.sequences.document_masks if document_masks is None else document_masks

    def __getstate__(self) -> dict[str, Any]:  # the manifest is reopened (and re-checked) in each worker
        return dict(self.__dict__, _manifest=None, _plan=None)

    def reopened(self) -> TokenStream:
        """A copy that reopens and re-checks its manifest on first use (a forked worker inherits the
        parent's)."""
        return copy.copy(self)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            manifest = Manifest(self.manifest_dir)
            if manifest.manifest_id != self.manifest_id:
                raise StreamIntegrityError(
                    f"{self.manifest_dir} now holds manifest {manifest.manifest_id}, but this stream was "
                    f"started on {self.manifest_id} (rebuilt while running?); refusing to mix them"
                )
            self._manifest = manifest
        return self._manifest

    def plan(self) -> Plan:
        """The plan of this stream's manifest and config, made once per process."""
        if self._plan is None:
            self._plan = Plan(self.manifest, self.config)
        return self._plan

    def readers(
        self,
        global_batch: int = 0,
        cursors: Mapping[int, Cursor] | None = None,
        *,
        batches_per_item: int = 1,
        numpy: bool = False,
    ) -> StreamReaders:
        """This rank's batches from ``global_batch`` on, as the dataset a DataLoader's readers iterate.

        ``global_batch``: the next global batch of rank 0, a multiple of ``world_size`` (ranks move in
        lockstep); ``cursors``: each partition's cursor there (see :func:`~.partition.planned_batches`). The
        stream itself is left as it is: any number of readers may stand at different positions.
        """
        if global_batch % self.world_size:
            raise PlanError(f"global batch {global_batch} is not a multiple of world_size {self.world_size}")
        if batches_per_item < 1:
            raise PlanError(f"batches_per_item must be >= 1, got {batches_per_item}")
        return StreamReaders(self, global_batch, dict(cursors or {}), batches_per_item, numpy)

    def __iter__(self) -> Iterator[StreamBatch]:
        return iter(self.readers())

    def batches(
        self,
        partitions: Iterable[int],
        global_batch: int = 0,
        cursors: Mapping[int, Cursor] | None = None,
        *,
        numpy: bool = False,
    ) -> Iterator[StreamBatch]:
        """The batches of ``partitions`` in global order from ``global_batch`` on, read, checked and laid out
        (numpy arrays instead of tensors with ``numpy``). Every shard opened is closed when the iterator ends,
        fails or is closed early."""
        plan = self.plan()
        set_reader_memory(self.reader_memory)  # in this process (a DataLoader worker too)
        return_freed_memory()
        maker = _BatchMaker(self, plan, numpy)
        try:
            partitions = list(partitions)
            # a partition read from its start fetches every source's first blocks at once
            for p in partitions:
                if first_batch_of(p, global_batch, plan.partitions) == 0:
                    maker.fetcher(p, warm=True)
            yield from maker.run(planned_batches(plan, partitions, global_batch, cursors))
        finally:
            maker.close()


class StreamReaders:
    """One rank's batches of a stream from a position, iterated in this process, by a ``DataLoader``'s
    workers (``torch_data.data_loader``) or by torch-free worker processes (``process_readers``: numpy
    batches); this module imports no torch: a stream read without tensors never needs it.

    Worker ``w`` of ``W`` reads the partitions ``plan.readers_layout(rank, world_size, W)[w]`` and
    yields their batches in global order, ``batches_per_item`` consecutive ones per item (a list when > 1, the
    last one possibly shorter), as numpy arrays with ``numpy`` (cheaper through a worker's pipe); the caller
    puts the workers' batches back in global order by ``batch_index`` (``StreamLoader``). It keeps no
    position: iterating it again starts again where it was made to stand.
    """

    def __init__(
        self,
        stream: TokenStream,
        global_batch: int,
        cursors: dict[int, Cursor],
        batches_per_item: int,
        numpy: bool,
    ):
        self.stream, self.global_batch, self.cursors = stream, global_batch, cursors
        self.batches_per_item, self.numpy = batches_per_item, numpy

    def __iter__(self) -> Iterator[Any]:
        info = _worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        stream = self.stream if info is None else self.stream.reopened()
        if info is not None:
            stream.network.apply()
        mine = stream.plan().readers_layout(stream.rank, stream.world_size, workers)[worker]
        batches = stream.batches(mine, self.global_batch, self.cursors, numpy=self.numpy)
        if self.batches_per_item == 1:
            yield from batches
            return
        item: list[StreamBatch] = []
        for batch in batches:
            item.append(batch)
            if len(item) == self.batches_per_item:
                yield item
                item = []
        if item:
            yield item


def _worker_info() -> Any:
    """Which worker this process is: of ``process_readers`` (numpy batches without torch), else torch's
    ``get_worker_info()`` in a DataLoader worker, else None (torch not imported: no DataLoader runs)."""
    mine = current_worker()
    if mine is not None:
        return mine
    data = sys.modules.get("torch.utils.data")
    return None if data is None else data.get_worker_info()


def _from_numpy(array: Any) -> Any:
    from .torch_data import from_numpy

    return from_numpy(array)


class _BatchMaker:
    """Reads, checks and lays out planned batches. Per partition: one ``DocumentFetcher`` (one open reader per
    source) and the framed documents of its next batches (``ahead.PassedAhead``: fetched and passed in steps
    of the plan, held until their last batch), so a document spanning batches is read and tokenized once.
    Every document's pass outcome must be the manifest's (else :class:`StreamIntegrityError`)."""

    def __init__(self, stream: TokenStream, plan: Plan, numpy: bool):
        self.stream, self.plan, self.config = stream, plan, plan.config
        # ids as numpy arrays where SentencePiece gives them: no Python int per token, framed without a loop
        self.doc_pass = DocumentPass(
            stream.filters,
            stream.sequences,
            stream.tokenizer,
            num_threads=stream.encode_threads,
            ids_as_arrays=True,
        )
        self.layout = LAYOUTS[plan.config.mode]
        self.span_base = span_base_of(plan)
        self.as_array = (lambda a: a) if numpy else _from_numpy
        self.fetchers: dict[int, DocumentFetcher] = {}
        # documents held per partition
        self.ahead = PassedAhead(self.doc_pass, self.fetcher, plan.manifest.shards)
        self.remote_seen = remote.STATS.to_dict()  # this process' remote reads counted into batches so far
        self.remote_mark = _remote_mark()  # unchanged: nothing counted since (counts only grow)

    def close(self) -> None:
        self.ahead.close()  # the pass thread first: it may be passing documents of a shard closed below
        for fetcher in self.fetchers.values():
            fetcher.close()  # a stream stopped early (or failing) leaves no shard open

    def fetcher(self, p: int, warm: bool = False) -> DocumentFetcher:
        """Partition ``p``'s fetcher (made on first use); ``warm``: its read-ahead starts at every source's
        first block now (a partition read from its start)."""
        if p not in self.fetchers:
            walk = PartitionWalk(self.plan, p) if readahead_settings()["bytes"] > 0 else None
            self.fetchers[p] = DocumentFetcher(self.plan.manifest, walk)
            if warm and self.fetchers[p].ahead is not None:
                self.fetchers[p].ahead.warm()
        return self.fetchers[p]

    def run(self, planned: Iterable[tuple[int, BatchPlan, Cursor]]) -> Iterator[StreamBatch]:
        """The batches of ``planned``, in order. Their documents go in steps of ``ahead.LOOKAHEAD_TOKENS``
        planned tokens, one step in flight: step k+1 is fetched and its pass started (on the pass thread)
        before step k's batches are laid out, so reading, layout and SentencePiece overlap. A planning
        failure comes after the batches planned before it."""
        runs = steps(planned, ahead.LOOKAHEAD_TOKENS)
        previous = None
        while True:
            try:
                run = next(runs)
            except StopIteration:
                break
            except Exception:
                if previous is not None:
                    yield from self._made(*previous)
                raise
            current = (run, self.ahead.fetch(run))
            if previous is not None:
                yield from self._made(*previous)
            previous = current
        if previous is not None:
            yield from self._made(*previous)

    def _made(self, run: list[tuple[int, BatchPlan, Cursor]], step: ahead.Step) -> Iterator[StreamBatch]:
        self.ahead.settle(step)
        for p, batch_plan, cursor in run:
            yield self.make(p, batch_plan, cursor)

    def make(self, p: int, planned: BatchPlan, cursor: Cursor) -> StreamBatch:
        """One stream batch (see :class:`TokenStream`) of partition ``p``."""
        framed = self.ahead.framed(p, planned)
        config, stream = self.config, self.stream
        rows = self.layout(
            planned,
            lambda d: framed[d.shard, d.index, d.start],
            self.span_base,
            config.window,
            stream.sequences.pad_id,
            stream.document_masks,
        )
        self.ahead.release(p, planned, planned.start + config.units_per_batch)
        batch: StreamBatch = {
            "input_ids": self.as_array(rows.input_ids),
            "tokens_by_source": rows.tokens_by_source,
            "batch_index": planned.batch,
            "partition": p,
            "cursor": cursor,
            "pad_tokens": rows.pad_tokens,
            "discarded_tokens": rows.discarded_tokens,
        }
        if stream.provenance:
            batch["spans"] = rows.spans
        if _remote_mark() != self.remote_mark:  # remote reads since the last batch (the loader sums them)
            reads = remote.STATS.since(self.remote_seen)
            if remote.any_counted(reads):
                batch["remote_reads"], self.remote_seen = reads, remote.STATS.to_dict()
            self.remote_mark = _remote_mark()
        if rows.segment_ids is not None:
            batch["segment_ids"] = self.as_array(rows.segment_ids)
        return batch


def _remote_mark() -> tuple[int, int, int, int]:
    """The totals of this process' remote counts: they only grow, so an unchanged mark means nothing was
    counted."""
    stats = remote.STATS
    return stats.failed, stats.bytes_fetched, stats.bytes_from_cache, stats.retries.total()
