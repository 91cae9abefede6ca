"""The text of a manifest's kept documents, read back through the verified blocks, the readers and the ledger.

The audits that look at text (``audit contamination``, ``audit duplicates``) read the corpus only here: for
each shard, the documents ledger says which records were kept (and their doc ids and tokens); the shard is
opened through ``sources/blocks.py:open_verified`` (every block's sha256 checked before one of its bytes is
used) and ``sources/readers.py:read_shard`` decodes only those records. Every record returned must be the kept
document the ledger names (same index, same doc id), else :class:`KeptTextChanged`. ``only`` restricts the
walk to some records per shard (a run's consumed documents); it must name kept records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass

from elm_data.core.errors import ElmDataError
from elm_data.core.redact import redact_text
from elm_data.pipeline.config import FilterConfig
from elm_data.sources.blocks import Block, BlockChanged, open_verified
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

from .manifest import Manifest
from .shard_records import ShardRecord


class KeptTextChanged(ElmDataError, RuntimeError):
    """A shard no longer gives the kept documents its manifest records (changed bytes or a different
    reader)."""


@dataclass(frozen=True, slots=True)
class KeptDocument:
    """One kept document: its shard record, record index, doc id, ledger tokens (no BOS/EOS) and text."""

    shard: ShardRecord
    index: int
    doc_id: str
    tokens: int
    text: str

    @property
    def key(self) -> str:
        """``source/subset`` of its shard."""
        return self.shard.key


def kept_ledger(manifest: Manifest, shard: int, status: str = "kept") -> dict[int, tuple[str, int]]:
    """``{record index: (doc_id, tokens)}`` of the shard's kept documents (checked ledger rows); ``status``:
    the documents of another ledger status that has tokens (``heldout``)."""
    import pyarrow.compute as pc  # here: a build imports this module and never needs it

    table = manifest.documents(shard, ["index", "doc_id", "status", "tokens"])
    kept = table.filter(pc.equal(table["status"], status))
    return dict(
        zip(
            kept["index"].to_pylist(),
            zip(kept["doc_id"].to_pylist(), kept["tokens"].to_pylist(), strict=True),
            strict=True,
        )
    )


def shard_documents(
    manifest: Manifest, record: ShardRecord, only: Set[int] | None = None, status: str = "kept"
) -> Iterator[KeptDocument]:
    """The kept documents of one shard in record order (those in ``only`` when given); ``status``: the
    documents of that ledger status instead (``heldout``)."""
    ledger = kept_ledger(manifest, record.shard, status)
    wanted = set(ledger) if only is None else set(only)
    if not wanted:
        return
    unknown = wanted - set(ledger)
    if unknown:
        raise KeptTextChanged(
            f"shard {record.shard} ({record.key}): records {sorted(unknown)[:5]} are not {status}"
        )
    index = manifest.blocks(record.shard)  # the shard's block index, checked against the manifest
    blocks = [Block(b["start"], b["end"], b["sha256"], b["first_record"], b["records"]) for b in index]
    limit = FilterConfig.from_dict(manifest.info.get("filters")).max_record_bytes
    try:
        with open_verified(record.uri, blocks) as view:
            items = read_shard(
                record.uri,
                record.source,
                record.subset,
                shard_sha256=record.sha256,
                select=frozenset(wanted),
                fmt=record.format or None,
                max_record_bytes=limit,
                view=view,
            )
            yield from _checked(record, ledger, wanted, items)
    except BlockChanged as changed:
        raise KeptTextChanged(redact_text(f"shard {record.shard} ({record.key}): {changed}")) from None


def _checked(record: ShardRecord, ledger, wanted: set[int], items) -> Iterator[KeptDocument]:
    """The reader's documents for ``wanted``, each checked against its ledger row; all of them, or an
    error."""
    seen = 0
    for item in items:
        if not isinstance(item, Document):
            if item.index in wanted or item.index < 0:
                raise KeptTextChanged(
                    f"shard {record.shard} ({record.key}) record {item.index}: kept in the manifest "
                    f"but the reader rejects it ({item.reason})"
                )
            continue
        index = item.provenance.index
        if index not in wanted:
            continue
        doc_id, tokens = ledger[index]
        if item.provenance.doc_id != doc_id:
            raise KeptTextChanged(
                f"shard {record.shard} ({record.key}) record {index}: doc id "
                f"{item.provenance.doc_id}, manifest says {doc_id}"
            )
        seen += 1
        yield KeptDocument(record, index, doc_id, tokens, item.text)
    if seen != len(wanted):
        raise KeptTextChanged(
            f"shard {record.shard} ({record.key}): {len(wanted) - seen} kept records not found"
        )


def kept_documents(manifest: Manifest, only: Mapping[int, Set[int]] | None = None) -> Iterator[KeptDocument]:
    """Every kept document of the manifest in manifest order; ``only``: ``{shard: record indices}`` to
    read."""
    for record in manifest.shards:
        if only is not None and record.shard not in only:
            continue
        yield from shard_documents(manifest, record, None if only is None else only[record.shard])


_WORKER: dict[str, object] = {}


def _init_worker(path: str, setup, setup_args) -> None:
    _WORKER["manifest"] = Manifest(path)
    _WORKER["state"] = setup(*setup_args) if setup is not None else None


def _one_shard(job):
    shard, only, fn = job
    manifest = _WORKER["manifest"]
    return fn(_WORKER["state"], shard_documents(manifest, manifest.shards[shard], only))


def map_shards(manifest: Manifest, fn, only=None, workers: int = 1, setup=None, setup_args=(), state=None):
    """``fn(state, kept documents of one shard)`` for every shard (those in ``only``), results in manifest
    order.

    ``state`` is ``setup(*setup_args)``, made once per process (in this one, ``state`` when given); with
    ``workers`` > 1 the shards are spread over that many processes (each opens the manifest itself, checked),
    and the results still come in manifest order,
    so a caller that merges them in order gets the same answer at any worker count.
    """
    shards = [r.shard for r in manifest.shards if only is None or r.shard in only]
    jobs = [(s, None if only is None else only[s], fn) for s in shards]
    if workers <= 1 or len(jobs) <= 1:
        state = state if state is not None or setup is None else setup(*setup_args)
        for shard, wanted, _ in jobs:
            yield fn(state, shard_documents(manifest, manifest.shards[shard], wanted))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no fork of a parent holding threads or open readers
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(str(manifest.path), setup, setup_args),
    ) as pool:
        yield from pool.map(_one_shard, jobs)
