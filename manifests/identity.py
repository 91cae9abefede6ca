"""What identifies a mixture: the manifest id, the pass-config hash and the Merkle root.

The manifest id hashes everything that decides which tokens a mixture yields, and nothing that
merely says where bytes were found: per shard (source, subset, sha256) — not the URI, so a local
mirror of hub data keeps the id —, the per-document pass as ``DocumentPass.describe()`` records it
(filters with resolved quality-filter parameters, minus the tokenizer's URI), the sequence config,
the tokenizer's sha256, the seed and the mixture weights. ``created_at`` and the tool version are
not part of it. :func:`manifest_id_of_info` recomputes it from a manifest on disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from .manifest import FORMAT_VERSION, ShardRecord
from .merkle import merkle_root


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pass_identity(pass_description: dict[str, Any]) -> dict[str, Any]:
    """The pass description without location-only fields (the tokenizer's URI)."""
    described = copy.deepcopy(pass_description)
    tokenizer = described.get("tokenizer")
    if isinstance(tokenizer, dict):
        tokenizer.pop("uri", None)
    return described


def pass_config_hash(pass_description: dict[str, Any], sequences: dict[str, Any]) -> str:
    """Key of per-shard results in a build workspace: same pass and sequences => same shard result."""
    payload = {"format_version": FORMAT_VERSION, "pass": pass_identity(pass_description), "sequences": sequences}
    return sha256_hex(canonical_json(payload))


def manifest_id(
    shards: Sequence[tuple[str, str, str]],
    pass_description: dict[str, Any],
    sequences: dict[str, Any],
    tokenizer_sha256: str,
    seed: int,
    weights: Sequence[dict[str, Any]],
) -> str:
    """sha256 over the canonical JSON of what defines the mixture.

    ``shards``: (source, subset, sha256) in manifest order; ``weights``: mixture entries as
    ``{"source", "subset", "weight"}`` in mixture order.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "shards": [{"source": s, "subset": sub, "sha256": h} for s, sub, h in shards],
        "pass": pass_identity(pass_description),
        "sequences": sequences,
        "tokenizer_sha256": tokenizer_sha256,
        "seed": seed,
        "weights": [{"source": w["source"], "subset": w["subset"], "weight": w.get("weight")} for w in weights],
    }
    return sha256_hex(canonical_json(payload))


def manifest_id_of_info(info: dict[str, Any], records: Sequence[ShardRecord]) -> str:
    """Recompute a manifest's id from its ``manifest.json`` fields and shard records."""
    return manifest_id(
        [(r.source, r.subset, r.sha256) for r in records],
        info["pass"],
        info["sequences"],
        info["tokenizer"]["sha256"],
        info["seed"],
        info["mixture"],
    )


def merkle_root_of(records: Sequence[ShardRecord]) -> str:
    """RFC 6962 root over the shard records' canonical bytes, in manifest order."""
    return merkle_root([r.canonical_bytes() for r in records])
