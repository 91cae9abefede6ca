"""The consumption receipt: a hash chain over the spans of every batch a run consumed, from the plan alone.

A batch's digest is a sha256 over its global index and, row by row, the provenance fields of its spans
(``source, subset, shard_sha256, doc_id, index, doc_start, doc_end, start, end``; in corenet mode the piece's
token range needs piece lengths the manifest does not record, so a corenet row is bound by the identity fields
and ``start`` only). The stream's ``batch["spans"]`` and :func:`plan_batch_digest` (the plan, no corpus, no
tokenizer) give the same digest: both make their spans with ``sequences.plan_spans``' code.

The chain: ``head_0 = sha256("elm-data receipt v1" | manifest_id | plan)``, then for each training step ``k``
``head_k = sha256(head_{k-1} || step_digest_k)`` where ``step_digest_k`` is the sha256 of the concatenated
digests of the step's batches (all ranks, all accumulation micro-batches) in global batch order. Invariant 8:
from a run's log and its manifest anyone can recompute what the run ate, in order
(``trainer/proof/audit.py``'s ``verify_run``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from elm_data.core.canonical_json import ORDERED_UTF8, SORTED_ASCII

from .partition import Cursor, PartitionWalk, first_batch_of, planned_batches
from .plan import BatchPlan, Plan
from .sequences import Span, plan_spans, span_base_of
from .state import MergedStreamState, stream_state

if TYPE_CHECKING:
    from .dataset import StreamBatch

RECEIPT_VERSION = "elm-data receipt v1"
PACKED_FIELDS = (
    "source",
    "subset",
    "shard_sha256",
    "doc_id",
    "index",
    "doc_start",
    "doc_end",
    "start",
    "end",
)
CORENET_FIELDS = ("source", "subset", "shard_sha256", "doc_id", "index", "start")


def span_fields(mode: str) -> tuple[str, ...]:
    return PACKED_FIELDS if mode == "packed" else CORENET_FIELDS


def digest_spans(batch_index: int, spans: list[list[Span]], mode: str) -> bytes:
    """The digest of one batch: its global index and the receipt fields of every span, row by row."""
    fields = span_fields(mode)
    rows = [[[span[f] for f in fields] for span in row] for row in spans]
    return hashlib.sha256(ORDERED_UTF8.encode([int(batch_index), rows])).digest()


def batch_spans(batch: BatchPlan, plan: Plan) -> list[list[Span]]:
    """The spans of a planned batch (packed: exactly the stream's ``batch["spans"]``)."""
    return plan_spans(batch, span_base_of(plan), plan.config.window, plan.config.mode)


def label_positions(spans: list[list[Span]], seq_len: int, mode: str) -> tuple[int, int | None]:
    """(label positions, label positions that count) of a batch from its spans, as the trainer counts them
    (``labels = ids[:, 1:]``; a label counts when it is not the pad id). A row's ids are its spans' tokens,
    then pads, so every label after its first id counts. The counted figure needs the spans' token ranges:
    packed mode only (None in corenet mode)."""
    positions = len(spans) * seq_len
    if mode != "packed":
        return positions, None
    return positions, sum(max(0, sum(span["end"] - span["start"] for span in row) - 1) for row in spans)


def plan_batch_digest(batch: BatchPlan, plan: Plan) -> bytes:
    """A batch's digest from the plan alone (equal to :func:`stream_batch_digest` of the batch the stream
    made)."""
    return digest_spans(batch.batch, batch_spans(batch, plan), plan.config.mode)


def stream_batch_digest(batch: StreamBatch, mode: str) -> bytes:
    """A batch's digest from the stream's batch (needs ``provenance=True``)."""
    return digest_spans(batch["batch_index"], batch["spans"], mode)


def genesis(manifest_id: str, plan_config: dict[str, Any]) -> str:
    """``head_0``: binds the chain to the manifest and the stream's plan parameters."""
    return hashlib.sha256(SORTED_ASCII.encode([RECEIPT_VERSION, manifest_id, plan_config])).hexdigest()


def step_digest(batch_digests: Iterable[bytes]) -> bytes:
    """One step's digest: its batches' digests (in global batch order) concatenated, hashed."""
    h = hashlib.sha256()
    for d in batch_digests:
        h.update(d)
    return h.digest()


def chain(head: str, step: bytes) -> str:
    """``head_k = sha256(head_{k-1} || step_digest_k)`` (hex)."""
    return hashlib.sha256(bytes.fromhex(head) + step).hexdigest()


def global_batches(plan: Plan) -> Iterator[BatchPlan]:
    """Every global batch of the plan in global order, from the start, as the stream makes them
    (a partition whose data ended gives empty batches until the last round of a finite stream)."""
    return (batch for _, batch, _ in planned_batches(plan, range(plan.partitions)))


def state_at(plan: Plan, manifest_id: str, global_batch: int) -> MergedStreamState:
    """A merged stream state (``StreamLoader.load_state_dict``) standing at ``global_batch``, from the plan
    alone: each partition's cursor before its first batch at or after ``global_batch``."""
    cursors: dict[int, Cursor] = {}
    for p in range(plan.partitions):
        first = first_batch_of(p, global_batch, plan.partitions)
        walk = PartitionWalk(plan, p)
        cursor = walk.start()
        if first:
            cursor = {"batch": first, "done": True}
            for bp, after in walk.batches(walk.start()):
                if bp.batch // plan.partitions == first - 1:
                    cursor = after if after["batch"] == first else cursor
                    break
        cursors[p] = cursor
    return stream_state(manifest_id, plan.config, global_batch, cursors, {})
