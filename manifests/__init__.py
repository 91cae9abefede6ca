"""Manifests: every shard of a mixture counted and hashed, then verified, audited and exported — never
re-read.

Entry points: ``MixtureConfig.load(path)`` (what to read); ``build_manifest(mixture, out_dir)`` runs the
per-document pass over every shard and writes the manifest atomically; ``Manifest(dir)`` opens one and checks
its id and Merkle root (``load_manifest`` also says when a directory is not one); ``verify_manifest(dir)``
re-hashes the shards; ``audit_manifest(dir, targets)`` compares tokens per source/subset with a target mix;
``export_croissant(dir)`` writes Croissant JSON-LD. Names load on first use.
"""

from __future__ import annotations

from elm_data.core.lazy import lazy_attributes

_ENTRY_POINTS = {
    "MixtureConfig": "mixture",
    "build_manifest": "build",
    "load_manifest": "build",
    "Manifest": "manifest",
    "verify_manifest": "verify",
    "audit_manifest": "audit",
    "export_croissant": "croissant",
}

__all__ = list(_ENTRY_POINTS)
__getattr__, __dir__ = lazy_attributes(__name__, _ENTRY_POINTS)
