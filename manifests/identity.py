"""What identifies a mixture: the manifest id, the pass-config hash and the Merkle root.

The manifest id hashes everything a consumer of the manifest reads, and nothing that merely says where
bytes were found: every shard record (source, subset, sha256, counts, the two digests of its block index in
``blocks.parquet``) without its URI and upstream location — so a local mirror of hub data keeps the id —,
the per-document pass as ``DocumentPass.describe()`` records it (minus the tokenizer's URI), the
``filters`` the stream rebuilds its pass from, the sequence config, the tokenizer record (sha256 and what
is derived from it, minus its URI), whether the text is synthetic (the sample), the seed, the held-out
choice, the mixture weights, the targets and the name.
What stays outside (:data:`OUTSIDE_THE_ID`) is location or build-time annotation; a consumer reads such a
field only where another check covers it (``docs/ARCHITECTURE.md``, "Every field a consumer reads", lists
each). ``totals`` are checked against the shard records, and each record's read/filtered/rejected sums
against its per-reason buckets (invariant 1). :func:`tampering` recomputes all of it from a manifest on disk.
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from elm_data.core.canonical_json import SORTED_UTF8
from elm_data.core.errors import ElmDataError

from .block_index import counts_digest, index_digest
from .merkle import merkle_root
from .shard_records import ShardRecord, totals_of

FORMAT_VERSION = 6  # 3: the id covers `filters` and the whole tokenizer record (not only its sha256)
# 4: the block index in blocks.parquet, committed per shard by two digests (start-up does not grow with it)
# 5: the ledger's `duplicate_of` column (filters.dedup: the doc id a removed duplicate copies)
# 6: held-out documents (ledger status `heldout`, shard columns docs_heldout and heldout_tokens, `heldout` in
# the id)


class ManifestTampered(ElmDataError, ValueError):
    """A manifest's files no longer compute its own id, Merkle root, totals or ledger digests."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pass_identity(pass_description: dict[str, Any]) -> dict[str, Any]:
    """The pass description without location-only fields (the tokenizer's URI)."""
    described = copy.deepcopy(pass_description)
    tokenizer = described.get("tokenizer")
    if isinstance(tokenizer, dict):
        tokenizer.pop("uri", None)
    return described


def pass_config_hash(
    pass_description: dict[str, Any],
    sequences: dict[str, Any],
    block_bytes: int,
    heldout: dict[str, Any] | None = None,
) -> str:
    """Key of per-shard results in a build workspace: same pass, sequences, blocks and held-out choice
    (``heldout``: the seed and fraction it depends on) => same shard result."""
    payload = {
        "format_version": FORMAT_VERSION,
        "pass": pass_identity(pass_description),
        "sequences": sequences,
        "block_bytes": block_bytes,
        "heldout": heldout,
    }
    return sha256_hex(SORTED_UTF8.encode(payload))


LOCATION_FIELDS = ("uri", "upstream", "upstream_revision")  # where bytes were found: not part of the id


def shard_identity(record: ShardRecord) -> dict[str, Any]:
    """A shard record without its location fields."""
    row = record.to_row()
    for name in LOCATION_FIELDS:
        row.pop(name)
    return row


def tokenizer_identity(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """The manifest's tokenizer record without its location (the sha256 and what is derived from it)."""
    return {key: value for key, value in tokenizer.items() if key != "uri"}


def manifest_id(
    records: Sequence[ShardRecord],
    pass_description: dict[str, Any],
    sequences: dict[str, Any],
    tokenizer: dict[str, Any],
    seed: int,
    weights: Sequence[dict[str, Any]],
    targets: Any,
    name: str | None,
    filters: dict[str, Any],
    synthetic: bool = False,
    heldout: dict[str, Any] | None = None,
) -> str:
    """sha256 over the canonical JSON of what defines the mixture and what its consumers read.

    ``weights``: mixture entries as ``{"source", "subset", "weight"}`` in mixture order; ``tokenizer``: the
    manifest's tokenizer record (its ``uri`` is left out); ``filters``: the filter config the stream rebuilds
    its pass from (``manifest.json``'s ``filters``); ``synthetic``: the shards hold generated text (the
    sample); ``heldout``: the held-out choice (``manifest.json``'s ``heldout``: fraction and selector).
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "shards": [shard_identity(r) for r in records],
        "pass": pass_identity(pass_description),
        "filters": filters,
        "sequences": sequences,
        "tokenizer": tokenizer_identity(tokenizer),
        "seed": seed,
        "weights": [
            {"source": w["source"], "subset": w["subset"], "weight": w.get("weight")} for w in weights
        ],
        "targets": targets,
        "name": name,
        "heldout": heldout,
    }
    if synthetic:  # only when set, so a manifest that does not say it keeps its id
        payload["synthetic"] = True
    return sha256_hex(SORTED_UTF8.encode(payload))


# Fields of manifest.json the id does not cover, and why: where things were found, or when and by what the
# build ran. A consumer that reads one relies on the check named here (the enumerating test holds it to this).
OUTSIDE_THE_ID = {
    "tokenizer.uri": "where the model was found; the file loaded must hash to tokenizer.sha256 (covered)",
    "pass.tokenizer.uri": "the same location, as the pass describes itself",
    "mixture[].shards": "the globs as written; what they resolved to is the shard records (covered)",
    "created_at": "the build's clock; says nothing about the data",
    "tool": "the build's elm-data version; the pass it ran is pass.pass_version (covered)",
    "count_method": "a label; each shard record's count_method is covered",
}


def manifest_id_of_info(info: dict[str, Any], records: Sequence[ShardRecord]) -> str:
    """Recompute a manifest's id from its ``manifest.json`` fields and shard records."""
    return manifest_id(
        records,
        info["pass"],
        info["sequences"],
        info["tokenizer"],
        info["seed"],
        info["mixture"],
        info["targets"],
        info["name"],
        info["filters"],
        info.get("synthetic") is True,
        info.get("heldout"),  # a manifest written without it (a test's synthetic one) holds out nothing
    )


def shards_per_entry(records: Sequence[ShardRecord]) -> Counter:
    """Shards per ``(source, subset)``: what each mixture entry records as ``resolved_shards``."""
    return Counter((r.source, r.subset) for r in records)


def seal(info: dict[str, Any], records: Sequence[ShardRecord]) -> dict[str, Any]:
    """``info`` with the id, Merkle root, totals and per-entry shard counts recomputed from ``records``."""
    per_entry = shards_per_entry(records)
    mixture = [e | {"resolved_shards": per_entry[(e["source"], e["subset"])]} for e in info["mixture"]]
    sealed = info | {"mixture": mixture, "totals": totals_of(records), "merkle_root": merkle_root_of(records)}
    return sealed | {"manifest_id": manifest_id_of_info(sealed, records)}


def tampering(info: dict[str, Any], records: Sequence[ShardRecord]) -> list[str]:
    """What no longer matches in a manifest: id, Merkle root, totals, per-entry shard counts, and shards whose
    document counts do not add up (empty when sound)."""
    problems = []
    try:
        if manifest_id_of_info(info, records) != info.get("manifest_id"):
            problems.append("manifest_id does not recompute from the shard records and config it covers")
    except (KeyError, TypeError, AttributeError) as e:
        problems.append(f"manifest.json lacks or mangles {e}")
    if merkle_root_of(records) != info.get("merkle_root"):
        problems.append("the Merkle root of shards.parquet does not match manifest.json")
    unbalanced = [r.shard for r in records if not r.counts_add_up()]
    if unbalanced:
        problems.append(
            f"shards {unbalanced[:5]}: docs_read, docs_filtered or docs_rejected differ from the buckets"
        )
    if info.get("totals") != totals_of(records):
        problems.append("totals in manifest.json differ from the sum of the shard records")
    per_entry = shards_per_entry(records)
    for entry in info.get("mixture") or []:
        if (
            isinstance(entry, dict)
            and entry.get("resolved_shards") != per_entry[(entry.get("source"), entry.get("subset"))]
        ):
            problems.append(
                f"mixture entry {entry.get('source')}/{entry.get('subset')}: resolved_shards differs"
            )
            break
    return problems


def merkle_root_of(records: Sequence[ShardRecord]) -> str:
    """RFC 6962 root over the shard records' canonical bytes, in manifest order."""
    return merkle_root([r.canonical_bytes() for r in records])


def block_tampering(manifest: Any, every_block: bool = False) -> list[str]:
    """Shards of an open :class:`~.manifest.Manifest` whose rows of ``blocks.parquet`` differ from the digests
    their shard records commit: the block counts of every shard (one compact array), and with ``every_block``
    every shard's whole block index too (empty when sound)."""
    counts = manifest.block_counts_or_problem()
    if isinstance(counts, str):
        return [counts]
    bad = [r.shard for r in manifest.shards if counts_digest(counts.of(r.shard)) != r.block_counts_sha256]
    if bad:
        return [f"blocks.parquet: the block counts of shards {bad[:5]} differ from their digests"]
    problems = []
    for r in manifest.shards if every_block else ():
        try:
            manifest.blocks(r.shard)
        except ManifestTampered as e:
            problems.append(str(e).split("refusing an altered manifest: ", 1)[-1])
    return problems


def index_matches(record: ShardRecord, rows: Sequence[dict[str, Any]]) -> bool:
    """Whether a shard's block index (its rows of ``blocks.parquet``) is the one its record commits."""
    return index_digest(rows) == record.blocks_sha256
