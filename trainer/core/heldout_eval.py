"""Per-source evaluation on the manifest's held-out documents during training (issue 22.2).

The set: per source/subset, the held-out ledger rows (``manifests/heldout.py``) in manifest order, at most
``heldout_docs`` documents and ``heldout_tokens`` ledger tokens
(:func:`~elm_data.manifests.heldout.heldout_rows`), read once when the run starts through the verified blocks,
run through the manifest's own pass (its ``filters`` and ``sequences``) and checked against their ledger rows
(same doc id, same tokens), so the set and its order are the same at every evaluation, in every run of the
manifest with these bounds.

Scoring: each segment (the document in packed mode, each kept piece in corenet mode) framed as the stream
frames it, ``BOS + tokens + EOS``, cut into windows of ``seq_len + 1`` ids that overlap by one (every id after
the BOS is predicted exactly once, from at most ``seq_len`` ids of its own document); windows padded with
``PAD_ID`` (pad labels not scored), in batches of ``batch_size``, with the model in eval mode and the run's
autocast. Per source: ``loss`` = summed next-token cross-entropy (nats) / predicted tokens, ``perplexity =
exp(loss)``, ``bits_per_byte`` = summed cross-entropy / ln 2 / UTF-8 bytes of the documents' text. A
``heldout`` log record holds them per source (``*_by_source``) with the documents, predicted tokens and bytes;
it is a measurement of the model, outside the consumption receipt (held-out documents are not training data).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from elm_data.core.errors import ElmDataError
from elm_data.manifests.heldout import HeldoutRow, heldout_documents, heldout_rows
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.config import FilterConfig, SequenceConfig
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID, LlamaTokenizer
from elm_data.sources.document import Document, Provenance

from .hardware import autocast
from .loss import loss_sums, split_inputs_labels
from .runlog import HELDOUT_RECORD_FIELDS

# The per-source fields of a ``heldout`` record; their owner is the run log's module (torch-free, so
# audit-run reads them too).
RECORD_FIELDS = HELDOUT_RECORD_FIELDS


class HeldoutChanged(ElmDataError, RuntimeError):
    """A held-out document no longer gives the tokens its ledger row records (changed bytes, pass or
    tokenizer)."""


@dataclass
class SourceSet:
    """One source/subset's held-out windows (``[n, seq_len + 1]`` ids), documents, predicted tokens and
    bytes."""

    windows: torch.Tensor
    docs: int
    tokens: int
    bytes: int


@dataclass
class HeldoutSet:
    """The fixed evaluation set: one :class:`SourceSet` per source/subset, in manifest order."""

    sources: dict[str, SourceSet] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.sources)


def framed_windows(segment: list[int], seq_len: int) -> Iterator[list[int]]:
    """``BOS + segment + EOS`` in windows of ``seq_len + 1`` ids overlapping by one, the last one padded."""
    ids = [BOS_ID, *segment, EOS_ID]
    for start in range(0, len(ids) - 1, seq_len):
        window = ids[start : start + seq_len + 1]
        yield window + [PAD_ID] * (seq_len + 1 - len(window))


def load_heldout_set(
    manifest: Manifest, tokenizer: LlamaTokenizer, seq_len: int, max_docs: int, max_tokens: int
) -> HeldoutSet:
    """The held-out evaluation set of ``manifest`` (empty when it holds none out or ``max_docs`` is 0)."""
    if max_docs <= 0 or not any(r.docs_heldout for r in manifest.shards):
        return HeldoutSet()
    info = manifest.info
    doc_pass = DocumentPass(
        FilterConfig.from_dict(info["filters"]), SequenceConfig.from_dict(info["sequences"]), tokenizer
    )
    out = HeldoutSet()
    for key, rows in heldout_rows(manifest, max_docs, max_tokens).items():
        docs = [_document(manifest, row, text) for row, text in heldout_documents(manifest, rows)]
        windows, tokens = [], 0
        for row, result in zip(rows, doc_pass.process(docs), strict=True):
            if not result.kept or result.tokens != row.tokens:
                raise HeldoutChanged(
                    f"held-out document {key}:{row.doc_id} (shard {row.shard}, record {row.index}): the "
                    "ledger "
                    f"records {row.tokens} tokens, the pass now gives {result.status} with {result.tokens}"
                )
            for segment in result.segments:
                windows.extend(framed_windows(segment, seq_len))
                tokens += len(segment) + 1  # every id after the BOS, EOS included
        text_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
        out.sources[key] = SourceSet(torch.tensor(windows, dtype=torch.long), len(docs), tokens, text_bytes)
    return out


def _document(manifest: Manifest, row: HeldoutRow, text: str) -> Document:
    r = manifest.shards[row.shard]
    # not the pass's business, and not read (tests/test_record_coverage.py enumerates what train reads)
    licence = ""
    provenance = Provenance(r.source, r.subset, r.uri, r.sha256, row.index, row.doc_id, None, licence)
    return Document(text, provenance)


@torch.no_grad()
def evaluate_heldout(
    model: torch.nn.Module,
    heldout: HeldoutSet,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int,
) -> dict[str, Any]:
    """The ``heldout`` record's per-source fields (:data:`RECORD_FIELDS`) for ``model`` as it is now; the
    model is put back in the mode it was in. Every rank runs the same batches (a sharded model's forward is
    collective)."""
    was_training = model.training
    model.eval()
    record: dict[str, dict[str, float | int]] = {name: {} for name in RECORD_FIELDS}
    try:
        for key, part in heldout.sources.items():
            total = 0.0
            for start in range(0, len(part.windows), batch_size):
                ids = part.windows[start : start + batch_size].to(device)
                inputs, labels = split_inputs_labels(ids, model.config.vocab_size, PAD_ID)
                with autocast(device, amp_dtype):
                    logits = model(inputs)
                total += float(loss_sums(logits, labels, PAD_ID).ce.double())
            loss = total / part.tokens
            record["loss_by_source"][key] = loss
            record["perplexity_by_source"][key] = math.exp(loss)
            record["bits_per_byte_by_source"][key] = total / math.log(2) / part.bytes if part.bytes else None
            record["docs_by_source"][key] = part.docs
            record["tokens_by_source"][key] = part.tokens
            record["bytes_by_source"][key] = part.bytes
    finally:
        model.train(was_training)
    return record
