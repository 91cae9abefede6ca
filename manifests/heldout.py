"""Held-out documents: chosen at build time, counted in the ledger, never streamed for training.

The mixture's ``heldout: {fraction: F}`` (default 0: none) holds out about ``F`` of every source/subset's
documents that pass the filters. Whether a document is held out depends only on the mixture's ``seed``, its
``source/subset`` and its doc id (:func:`is_heldout`: a sha256 of the three read as a number in [0, 1), below
``F``), so the choice is the same at any number of workers, with the Beam runner, and for a document read
again (a copy of a held-out document with the same id is held out too). A held-out document gets its own
ledger status ``heldout`` (with the tokens and segments it would have contributed); a shard's ``docs_read`` is
``docs_kept + docs_heldout + docs_filtered + docs_rejected`` (``pipeline/counts.py``). The stream reads
``kept`` ledger rows only, so no held-out document reaches a training batch; the per-source evaluation during
training (``trainer/core/heldout_eval.py``) reads them back through :func:`heldout_documents`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from elm_data.core.settings import Settings, SettingsError

from .kept_text import shard_documents
from .manifest import Manifest

HELDOUT = "heldout"  # the ledger status of a held-out document
SELECTOR = "sha256(f'{seed}\\0{source}/{subset}\\0{doc_id}') / 2**256 < fraction"  # recorded in manifest.json


def heldout_point(seed: int, key: str, doc_id: str) -> float:
    """Where document ``doc_id`` of subset ``key`` falls in [0, 1) under ``seed``: uniform, fixed by the
    three."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest, "big") / 2**256


def is_heldout(seed: int, key: str, doc_id: str, fraction: float) -> bool:
    """Whether the document is held out: its point below ``fraction`` (never for a fraction of 0)."""
    return fraction > 0 and heldout_point(seed, key, doc_id) < fraction


@dataclass(frozen=True)
class HeldoutConfig(Settings):
    """The mixture's ``heldout:`` section: the share of each source/subset's passing documents held out."""

    fraction: float = 0.0  # 0: no document is held out (the default: a mixture trains on all it keeps)

    def __post_init__(self) -> None:
        if (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, int | float)
            or not 0 <= self.fraction < 1
        ):
            raise SettingsError(f"heldout.fraction: expected a number in [0, 1), got {self.fraction!r}")

    @classmethod
    def from_dict(cls, raw: Any) -> HeldoutConfig:
        kwargs = cls.check_mapping(raw, "heldout")
        if "fraction" in kwargs:
            kwargs["fraction"] = float(kwargs["fraction"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """``manifest.json``'s ``heldout`` (covered by the manifest id): the fraction and the rule applied."""
        return {"fraction": self.fraction, "selector": SELECTOR}


@dataclass(frozen=True)
class HeldoutSelector:
    """What a worker needs to choose held-out documents (picklable, for processes and Beam)."""

    seed: int = 0
    fraction: float = 0.0

    def selects(self, key: str, doc_id: str) -> bool:
        return is_heldout(self.seed, key, doc_id, self.fraction)


@dataclass(frozen=True, slots=True)
class HeldoutRow:
    """One held-out document as its ledger row says: shard, record index, doc id and tokens (no BOS/EOS)."""

    shard: int
    index: int
    doc_id: str
    tokens: int


def heldout_rows(
    manifest: Manifest, max_docs: int | None = None, max_tokens: int | None = None
) -> dict[str, list[HeldoutRow]]:
    """``{source/subset: held-out ledger rows}`` in manifest order (shard, then record): per subset the first
    ``max_docs`` whose ledger tokens add up to at most ``max_tokens`` (a document that alone would pass the
    budget left is skipped), so the set and its order are fixed by the manifest and the two bounds. Subsets
    with none are absent. Reads only the ledgers of shards that hold held-out documents."""
    import pyarrow.compute as pc  # here: a build imports this module and never needs it

    out: dict[str, list[HeldoutRow]] = {}
    budget: dict[str, int] = {}
    for record in manifest.shards:
        rows = out.get(record.key, [])
        if not record.docs_heldout or (max_docs is not None and len(rows) >= max_docs):
            continue
        table = manifest.documents(record.shard, ["index", "doc_id", "status", "tokens"])
        held = table.filter(pc.equal(table["status"], HELDOUT))
        for index, doc_id, tokens in zip(
            *(held[c].to_pylist() for c in ("index", "doc_id", "tokens")), strict=True
        ):
            if max_docs is not None and len(rows) >= max_docs:
                break
            if max_tokens is not None and budget.get(record.key, 0) + tokens > max_tokens:
                continue
            rows.append(HeldoutRow(record.shard, index, doc_id, tokens))
            budget[record.key] = budget.get(record.key, 0) + tokens
        if rows:
            out[record.key] = rows
    return out


def heldout_documents(manifest: Manifest, rows: list[HeldoutRow]) -> Iterator[tuple[HeldoutRow, str]]:
    """``(row, text)`` of each held-out row, in the rows' order, read through the verified blocks and checked
    against the ledger (same record, same doc id: ``kept_text.KeptTextChanged`` otherwise)."""
    by_shard: dict[int, list[HeldoutRow]] = {}
    for row in rows:
        by_shard.setdefault(row.shard, []).append(row)
    texts: dict[tuple[int, int], str] = {}
    for shard, wanted in by_shard.items():
        record = manifest.shards[shard]
        for doc in shard_documents(manifest, record, {r.index for r in wanted}, status=HELDOUT):
            texts[(shard, doc.index)] = doc.text
    for row in rows:
        yield row, texts[(row.shard, row.index)]
