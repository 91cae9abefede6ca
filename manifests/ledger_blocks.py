"""A shard's block index as the manifest records it: each block of the shard with its kept totals and the
digest of its documents-ledger rows, computed from the blocks and the ledger alone.

Below both the shard's counting (:mod:`.shard_work`) and the build's dedup step (:mod:`.dedup_filter`, which
recomputes the index of a shard whose ledger lost duplicates), so neither imports the other.
"""

from __future__ import annotations

import pyarrow as pa

from elm_data.pipeline.document_pass import KEPT
from elm_data.sources.blocks import Block

from .manifest import ledger_digest, split_by_block


def block_index(blocks: list[Block], ledger: pa.Table) -> list[dict]:
    """The shard's block index for the manifest: each block with its kept totals and its ledger rows'
    digest."""
    if blocks and blocks[-1].records is None:  # one opaque (compressed) block: it holds every record read
        counts = ledger.column("count").to_pylist()
        blocks = [Block(b.start, b.end, b.sha256, 0, sum(counts)) for b in blocks]
    out = []
    for block, rows in zip(
        blocks, split_by_block([{"first_record": b.first_record} for b in blocks], ledger), strict=True
    ):
        kept = [n for n, status in enumerate(rows.column("status").to_pylist()) if status == KEPT]
        tokens, segments = rows.column("tokens").to_pylist(), rows.column("segments").to_pylist()
        out.append(
            {
                "start": block.start,
                "end": block.end,
                "sha256": block.sha256,
                "first_record": block.first_record,
                "records": block.records,
                "kept_docs": len(kept),
                "kept_tokens": sum(tokens[n] for n in kept),
                "kept_segments": sum(segments[n] for n in kept),
                "ledger_sha256": ledger_digest(rows),
            }
        )
    return out
