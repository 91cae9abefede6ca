"""The resumable training stream: plan → read → per-document pass → sequences → whole batches.

``TokenStream`` is an ``IterableDataset`` that yields whole batches; ``StreamLoader`` wraps it in a
``DataLoader(batch_size=None)`` and keeps the state (batches handed out) and the per-source ledger.

Ownership: global batch ``b`` belongs to rank ``b % world_size``; a rank's ``j``-th batch (counted from
the resume point) belongs to DataLoader worker ``j % num_workers``. The DataLoader takes batches from its
workers round-robin, so batches come out in global order whatever ``num_workers`` is, and resuming with
a different worker count is bit-exact. Every worker walks the cheap plan (``plan.py``), reads shards
forward, and tokenizes only the documents of its own batches, in one ``DocumentPass.process`` call per batch.

Integrity: a shard's sha256 is checked against the manifest every time a worker opens it, every
document's pass outcome must equal the manifest's (kept, same token and segment counts), and the
tokenizer's sha256 must equal the manifest's. Any mismatch stops the stream with an error.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from elm_data.errors import ElmDataError
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.ledger import Ledger, StreamStats
from elm_data.pipeline.plan import (
    NATURAL,
    BatchPlan,
    Plan,
    PlanConfig,
    PlannedDoc,
    manifest_mode,
    manifest_weights,
)
from elm_data.pipeline.sequences import LAYOUTS, FramedDoc, frame_segments
from elm_data.pipeline.tokenizer import ENV_VAR, PAD_ID, LlamaTokenizer, resolve_tokenizer_uri
from elm_data.sources.document import Document

STATE_VERSION = 1


class StreamIntegrityError(ElmDataError, RuntimeError):
    """The corpus or the pass no longer matches the manifest; nothing of it is fed."""


class TokenizerMismatch(ElmDataError, ValueError):
    """The tokenizer given is not the one the manifest was counted with."""


def _resolve_weights(weights: str | dict[str, float] | None, info: dict[str, Any]) -> dict[str, float] | None:
    if weights is None:
        return manifest_weights(info)
    if isinstance(weights, str):
        if weights != NATURAL:
            raise ValueError(f"weights must be 'natural', a mapping or None, got {weights!r}")
        return None
    return {str(k): float(v) for k, v in dict(weights).items()}


def _resolve_tokenizer(tokenizer: str | LlamaTokenizer | None, info: dict[str, Any]) -> LlamaTokenizer:
    expected = (info.get("tokenizer") or {}).get("sha256")
    if not isinstance(tokenizer, LlamaTokenizer):
        uri = resolve_tokenizer_uri(tokenizer or os.environ.get(ENV_VAR), (info.get("tokenizer") or {}).get("uri"))
        tokenizer = LlamaTokenizer(uri)
    if expected and tokenizer.sha256 != expected:
        raise TokenizerMismatch(
            f"tokenizer {tokenizer.uri} has sha256 {tokenizer.sha256}, but the manifest was counted with "
            f"{expected}; pass the manifest's tokenizer (--tokenizer or ${ENV_VAR}) or rebuild the manifest"
        )
    return tokenizer


class _OpenShard:
    """A shard being read forward; the reader decodes only the record ``target`` (the one being fetched).

    The reader generator holds ``selected`` (so this object): a reference cycle that only the cyclic
    garbage collector would free, with the shard's file, decompressor and buffers in it. ``close()``
    ends the generator at once (and drops a remote shard's local copy); every shard is closed when it
    is left.
    """

    __slots__ = ("shard", "items", "next_index", "target", "resources")

    def __init__(self, shard: int, target: int):
        self.shard, self.next_index, self.target = shard, target, target
        self.items: Generator = (x for x in ())
        self.resources = ExitStack()

    def selected(self, index: int) -> bool:
        return index == self.target

    def close(self) -> None:
        self.items.close()
        self.resources.close()


class ShardReaders:
    """Forward readers over the corpus, one per source, that verify each shard's sha256 on opening.

    Only the records fetched are decoded: the readers skip every other record (``read_shard(select=)``),
    so a worker pays the parsing only for the documents of its own batches.
    """

    def __init__(self, manifest: Manifest):
        self.records = manifest.shards
        self._open: dict[str, _OpenShard] = {}  # source key -> its open shard

    def _leave(self, key: str) -> None:
        """Close the shard open for source ``key``, if any."""
        current = self._open.pop(key, None)
        if current is not None:
            current.close()

    def close(self) -> None:
        for key in list(self._open):
            self._leave(key)

    def _open_shard(self, shard: int, skip: int) -> _OpenShard:
        from elm_data.sources.readers import fetched, read_shard, sha256_of

        rec = self.records[shard]
        opened = _OpenShard(shard, skip)
        try:
            local = opened.resources.enter_context(fetched(rec.uri))  # the bytes hashed are the bytes read
            actual = sha256_of(local)
            if actual != rec.sha256:
                raise StreamIntegrityError(
                    f"shard {shard} ({rec.key}) {rec.uri} has changed: sha256 {actual}, manifest says {rec.sha256}; "
                    "refusing to feed it (restore the shard or rebuild the manifest)"
                )
            opened.items = read_shard(
                rec.uri, rec.source, rec.subset, shard_sha256=rec.sha256, skip=skip, select=opened.selected,
                local_path=local,
            )
        except BaseException:
            opened.close()
            raise
        return opened

    def fetch(self, doc: PlannedDoc):
        """The ``Document`` at (doc.shard, doc.index), reading forward from the source's current position."""
        rec = self.records[doc.shard]
        current = self._open.get(rec.key)
        if current is None or current.shard != doc.shard or current.next_index > doc.index:
            self._leave(rec.key)
            current = self._open_shard(doc.shard, doc.index)
        current.target = doc.index
        for item in current.items:
            is_doc = isinstance(item, Document)
            index = item.provenance.index if is_doc else item.index
            if index + (1 if is_doc else max(1, item.count)) <= doc.index:
                continue
            if index != doc.index or not is_doc:
                self._leave(rec.key)
                what = "a document" if is_doc else f"a rejection ({item.reason})"
                raise StreamIntegrityError(
                    f"shard {doc.shard} ({rec.uri}): record {doc.index} (doc {doc.doc_id}) is kept in the manifest "
                    f"but the reader gave {what} at record {index}"
                )
            if item.provenance.doc_id != doc.doc_id:
                self._leave(rec.key)
                raise StreamIntegrityError(
                    f"shard {doc.shard} ({rec.uri}) record {doc.index}: doc id {item.provenance.doc_id}, "
                    f"manifest says {doc.doc_id}"
                )
            current.next_index = doc.index + 1
            self._open[rec.key] = current
            return item
        self._leave(rec.key)
        raise StreamIntegrityError(f"shard {doc.shard} ({rec.uri}) ended before record {doc.index} (doc {doc.doc_id})")


class TokenStream(IterableDataset):
    """Whole batches of a manifest's kept documents: deterministic, sharded by rank and worker, resumable.

    Each batch is a dict: ``input_ids`` LongTensor[B, seq_len + 1]; ``spans`` (when ``provenance``):
    per sequence, a list of ``{source, subset, shard_sha256, doc_id, index, doc_start, doc_end, start, end}``
    (window positions ``[start, end)`` hold the document's framed tokens ``[doc_start, doc_end)``, framed =
    BOS + ids + EOS per kept segment); ``tokens_by_source`` non-pad tokens per ``"source/subset"``;
    ``segment_ids`` (when ``document_masks``) LongTensor[B, seq_len + 1], -1 on padding; and
    ``batch_index`` (global), ``pad_tokens``, ``discarded_tokens`` (ints).
    The last batch of a finite stream may hold fewer than ``batch_size`` sequences.
    """

    def __init__(
        self,
        manifest_dir: str | Path,
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
        document_masks: bool = False,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.manifest_dir = Path(manifest_dir)
        manifest = Manifest(self.manifest_dir)
        info = manifest.info
        self.manifest_id = manifest.manifest_id
        self.sequences = SequenceConfig.from_dict(info.get("sequences"))
        self.filters = FilterConfig.from_dict(info.get("filters"))
        self.config = PlanConfig(
            mode=mode or manifest_mode(info),
            seq_len=int(seq_len or self.sequences.seq_len),
            batch_size=int(batch_size),
            seed=int(info.get("seed", 0) if seed is None else seed),
            weights=_resolve_weights(weights, info),
            epochs=epochs,
        )
        Plan(manifest, self.config)  # validates mode and weights now, not in a worker
        self.tokenizer = _resolve_tokenizer(tokenizer, info)
        self.rank, self.world_size = rank, world_size
        self.provenance, self.document_masks = provenance, document_masks
        self.start_global_batch = 0  # first global batch to yield (set by resume); a multiple of world_size
        self._manifest: Manifest | None = manifest
        self._stats = StreamStats(self.config.mode)
        # set by StreamLoader on its worker copy: batches per DataLoader item, and numpy (not tensor) arrays
        self._item_batches = 1
        self._numpy = False

    # -- pickling for DataLoader workers: the manifest handle is reopened there
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_manifest"] = None
        return state

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest(self.manifest_dir)
        return self._manifest

    def plan(self) -> Plan:
        return Plan(self.manifest, self.config)

    def stats(self) -> dict[str, Any]:
        """Padding fraction, discarded tokens (CoreNet truncation), sequences: over the batches handed out."""
        return self._stats.to_dict() | {"seq_len": self.config.seq_len, "batch_size": self.config.batch_size}

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        start, world, rank, group = self.start_global_batch, self.world_size, self.rank, self._item_batches
        if start % world:
            raise ValueError(f"start_global_batch {start} is not a multiple of world_size {world}")

        def item_of(b: int) -> int:  # this rank's batches since the resume point, `group` per item
            return (b - start) // world // group

        def owns(b: int) -> bool:
            return b >= start and b % world == rank and item_of(b) % workers == worker

        batches = self._batches(self.plan().batches(owns, start_batch=start), item_of)
        if group == 1:
            yield from batches
            return
        item: list[dict[str, Any]] = []
        for batch in batches:
            if item and item_of(batch["batch_index"]) != item_of(item[0]["batch_index"]):
                yield item
                item = []
            item.append(batch)
        if item:
            yield item

    def _batches(self, plans: Iterator[BatchPlan], item_of: Callable[[int], int]) -> Iterator[dict[str, Any]]:
        """Lay out the planned batches; the documents of one item's batches are tokenized in one pass call."""
        manifest = self.manifest
        readers = ShardReaders(manifest)
        shards = manifest.shards
        doc_pass = DocumentPass(self.filters, self.sequences, self.tokenizer, num_threads=1)
        sources = self.plan().sources
        layout = LAYOUTS[self.config.mode]
        window = self.config.window
        units_per_sequence = window if self.config.mode == "packed" else 1
        as_array = (lambda a: a) if self._numpy else torch.from_numpy
        cache: dict[tuple[int, int], FramedDoc] = {}

        def span_base(doc: PlannedDoc) -> dict[str, Any]:
            src = sources[doc.src]
            return {"source": src.source, "subset": src.subset, "shard_sha256": shards[doc.shard].sha256,
                    "doc_id": doc.doc_id, "index": doc.index}

        try:
            for _, group in itertools.groupby(plans, key=lambda bp: item_of(bp.batch)):
                group = list(group)
                missing = list({(d.shard, d.index): d for bp in group for d in bp.docs
                                if (d.shard, d.index) not in cache}.values())
                results = doc_pass.process([readers.fetch(d) for d in missing]) if missing else []
                for doc, result in zip(missing, results, strict=True):
                    if not result.kept or result.tokens != doc.tokens or len(result.segments) != doc.segments:
                        raise StreamIntegrityError(
                            f"document {doc.doc_id} (shard {doc.shard}, record {doc.index}, {shards[doc.shard].uri}): "
                            f"the pass now gives {result.status} with {result.tokens} tokens in {len(result.segments)} "
                            f"segment(s); the manifest recorded kept, {doc.tokens} tokens, {doc.segments} segment(s) "
                            "(filter or tokenizer drift: rebuild the manifest)"
                        )
                    cache[(doc.shard, doc.index)] = frame_segments(result.segments)
                for bp in group:
                    rows = layout(bp, lambda d, c=cache: c[(d.shard, d.index)], span_base, window, PAD_ID,
                                  self.document_masks)
                    batch: dict[str, Any] = {
                        "input_ids": as_array(rows.input_ids),
                        "tokens_by_source": rows.tokens_by_source,
                        "batch_index": bp.batch,
                        "pad_tokens": rows.pad_tokens,
                        "discarded_tokens": rows.discarded_tokens,
                    }
                    if self.provenance:
                        batch["spans"] = rows.spans
                    if rows.segment_ids is not None:
                        batch["segment_ids"] = as_array(rows.segment_ids)
                    yield batch
                # keep only documents that continue past this item (a long document is tokenized once per worker)
                last = group[-1]
                item_end = last.start + last.sequences * units_per_sequence
                cache = {
                    (d.shard, d.index): cache[(d.shard, d.index)] for d in last.docs if d.start + d.units > item_end
                }
        finally:
            readers.close()  # a stream stopped early (or failing) leaves no shard open


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The DataLoader's collate step: batches are already whole (spans stay plain lists, no conversion pass)."""
    return batch


class StreamLoader:
    """``DataLoader(stream, batch_size=None)`` that counts the batches it hands out, for exact resume.

    ``state_dict()`` → ``{"version", "manifest_id", "global_batches", "batches", "rank", "world_size",
    "plan", "ledger"}`` (plain types). ``global_batches``: global batches consumed by the whole run (all ranks
    in lockstep), i.e. the next batch of rank ``r`` is ``global_batches + r``; ``batches``: this rank's count.
    Iterating again after a ``break`` continues where the last handed-out batch left off.

    With workers, each worker makes ``batches_per_item`` consecutive batches of this rank at a time (default:
    enough for about ``ITEM_TOKENS`` token slots), so a document that straddles two batches is tokenized by
    two workers only at item edges, and the DataLoader's per-item cost (about 0.6 ms of the main process'
    CPU) is paid once per item. Workers send numpy arrays (a pipe copy, cheaper than shared-memory
    tensors); the loader hands out tensors either way.
    """

    ITEM_TOKENS = 1 << 17

    def __init__(
        self,
        stream: TokenStream,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        multiprocessing_context: str | None = None,
        pin_memory: bool = False,
        batches_per_item: int | None = None,
    ):
        if batches_per_item is not None and batches_per_item < 1:
            raise ValueError(f"batches_per_item must be >= 1, got {batches_per_item}")
        self.stream = stream
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.pin_memory = pin_memory
        if batches_per_item is None:
            slots = stream.config.batch_size * stream.config.window
            batches_per_item = max(1, math.ceil(self.ITEM_TOKENS / slots)) if num_workers else 1
        self.batches_per_item = batches_per_item
        self.global_batches = stream.start_global_batch
        self.batches = 0
        self.ledger = Ledger()

    def _worker_stream(self) -> TokenStream:
        """The stream as the DataLoader's workers see it: a copy, so the caller's stream keeps its defaults."""
        dataset = TokenStream.__new__(TokenStream)
        dataset.__dict__.update(self.stream.__dict__)
        dataset._item_batches = self.batches_per_item
        dataset._numpy = self.num_workers > 0
        return dataset

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.stream
        stream.start_global_batch = self.global_batches
        kwargs: dict[str, Any] = {}
        if self.num_workers:
            kwargs["prefetch_factor"] = self.prefetch_factor or 2
            kwargs["multiprocessing_context"] = self.multiprocessing_context
        loader = DataLoader(self._worker_stream(), batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                            **kwargs)
        window = stream.config.window
        pin = self.pin_memory and torch.cuda.is_available()  # as DataLoader(pin_memory=True): a no-op without a GPU
        for item in loader:
            for batch in item if isinstance(item, list) else (item,):
                expected = self.global_batches + stream.rank
                if batch["batch_index"] != expected:
                    raise RuntimeError(
                        f"stream out of order: got global batch {batch['batch_index']}, expected {expected}"
                    )
                for key in ("input_ids", "segment_ids"):
                    if isinstance(batch.get(key), np.ndarray):
                        batch[key] = torch.from_numpy(batch[key])
                    if pin and key in batch:
                        batch[key] = batch[key].pin_memory()
                self.global_batches += stream.world_size
                self.batches += 1
                self.ledger.add(batch["tokens_by_source"])
                stream._stats.add_batch(len(batch["input_ids"]), window, batch["pad_tokens"],
                                        batch["discarded_tokens"], batch["tokens_by_source"])
                yield batch

    def state_dict(self) -> dict[str, Any]:
        s = self.stream
        return {
            "version": STATE_VERSION,
            "manifest_id": s.manifest_id,
            "global_batches": self.global_batches,
            "batches": self.batches,
            "rank": s.rank,
            "world_size": s.world_size,
            "plan": s.config.to_dict(),
            "ledger": self.ledger.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next batch exactly the one an uninterrupted run would hand out next."""
        s = self.stream
        if state.get("manifest_id") != s.manifest_id:
            raise ValueError(
                f"stream state is for manifest {state.get('manifest_id')}, this stream reads {s.manifest_id}"
            )
        mine = s.config.to_dict()
        saved = state.get("plan") or {}
        differ = sorted(k for k in mine if saved.get(k) != mine[k])
        if differ:
            detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {mine[k]!r}" for k in differ)
            raise ValueError(f"stream state was saved with a different plan ({detail})")
        global_batches = int(state["global_batches"])
        if global_batches % s.world_size:
            raise ValueError(
                f"cannot resume at global batch {global_batches} with world_size {s.world_size} (not a multiple)"
            )
        self.global_batches = global_batches
        s.start_global_batch = global_batches
        self.batches = int(state.get("batches", global_batches // s.world_size))
        self.ledger = Ledger(state.get("ledger") or {})


def take_sequences(stream: TokenStream, n: int) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """The first ``n`` sequences (token ids, spans) of a stream, in order (single process)."""
    count = 0
    for batch in StreamLoader(stream):
        spans = batch.get("spans") or [[] for _ in range(len(batch["input_ids"]))]
        for ids, seq_spans in zip(batch["input_ids"].numpy(), spans, strict=True):
            yield ids, seq_spans
            count += 1
            if count >= n:
                return
