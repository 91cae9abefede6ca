"""What is in the mix, said where the manifest is published: stored audit reports and the dedup filter's
counts.

``audit contamination|duplicates MANIFEST --save`` keeps its JSON report (the one ``--format json`` prints) in
``MANIFEST/audits/KIND.json``, written atomically. A report is *bound* to the manifest it was computed from:
it names that manifest's id, and a report naming another id (a copy beside a rebuilt manifest) is never used.
The model card (``trainer/export/hf.py``) and the Croissant export (``croissant.py``) carry
:func:`mix_summary`: the dedup filter's setting and counts (from the manifest itself: ``pass.dedup``, each
shard's ``filtered_by_reason["duplicate"]``) and, when bound reports exist, their totals with each report's
sha256, so a reader can re-run the audit (deterministic at any worker count) and compare. A report restricted
to a run (``--run``) says nothing about the whole manifest and is not stored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from elm_data.core.errors import InvalidValue
from elm_data.core.outputs import write_atomic

from .manifest import Manifest

AUDITS_DIR = "audits"
KINDS = ("contamination", "duplicates")


def audit_path(manifest_dir: str | Path, kind: str) -> Path:
    if kind not in KINDS:
        raise InvalidValue(f"audit kind must be one of {KINDS}, got {kind!r}")
    return Path(manifest_dir) / AUDITS_DIR / f"{kind}.json"


def report_bytes(report: dict[str, Any]) -> bytes:
    """The stored bytes of a report: what ``--format json`` prints, with its newline."""
    return (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()


def save_audit(manifest: Manifest, kind: str, report: dict[str, Any]) -> Path:
    """Store ``report`` (computed from ``manifest``, over all of it) as ``MANIFEST/audits/KIND.json``."""
    if report.get("manifest_id") != manifest.manifest_id:
        raise InvalidValue(
            f"the {kind} report names manifest {report.get('manifest_id')}, not {manifest.manifest_id}"
        )
    if report.get("run") is not None:
        raise InvalidValue("--save keeps audits of the whole manifest; a --run audit is printed only")
    path = audit_path(manifest.path, kind)
    path.parent.mkdir(exist_ok=True)
    write_atomic(path, report_bytes(report))
    return path


def stored_audits(manifest: Manifest) -> dict[str, tuple[dict[str, Any], str]]:
    """``{kind: (report, sha256 of its file)}`` of the reports stored beside ``manifest`` and bound to its
    id."""
    found = {}
    for kind in KINDS:
        path = audit_path(manifest.path, kind)
        try:
            data = path.read_bytes()
            report = json.loads(data)
        except (OSError, ValueError, RecursionError):  # none stored, or not a report: nothing to say
            continue
        if (
            isinstance(report, dict)
            and report.get("manifest_id") == manifest.manifest_id
            and not report.get("run")
        ):
            found[kind] = (report, hashlib.sha256(data).hexdigest())
    return found


def dedup_counts(manifest: Manifest) -> dict[str, Any] | None:
    """The dedup filter's setting (``pass.dedup``, in the id) and the documents it removed (the totals'
    filtered ``duplicate``, recomputed on open), or None without it."""
    removed = manifest.info["totals"]["filtered_by_reason"].get("duplicate", 0)
    described = manifest.info["pass"].get("dedup")  # the dedup the build ran, as it describes itself
    if described is None:
        return None
    return {
        "mode": described["mode"],
        "threshold": described["threshold"] if described["near"] else None,
        "removed_documents": removed,
        "documents_kept": manifest.info["totals"]["docs_kept"],
    }


def mix_summary(manifest: Manifest) -> dict[str, Any]:
    """The dedup filter's counts and the bound audits' totals (see the module docstring); ``{}`` when none."""
    summary: dict[str, Any] = {}
    if (dedup := dedup_counts(manifest)) is not None:
        summary["dedup_filter"] = dedup
    for kind, (report, sha256) in stored_audits(manifest).items():
        summary[f"{kind}_audit"] = {
            "file": f"{AUDITS_DIR}/{kind}.json",
            "sha256": sha256,
            **_totals(kind, report),
        }
    return summary


def _totals(kind: str, report: dict[str, Any]) -> dict[str, Any]:
    if kind == "duplicates":
        t = report["totals"]
        return {k: t[k] for k in ("documents", "exact_redundant", "near_redundant")} | {
            "threshold": report["settings"]["threshold"] if report["settings"]["near"] else None
        }
    tasks = {
        name: {
            "items": task["items"],
            "contaminated_items": task["contaminated_items"],
            # subsets hold disjoint documents
            "documents": sum(c["documents"] for c in task["by_subset"].values()),
            "tokens": sum(c["tokens"] for c in task["by_subset"].values()),
        }
        for name, task in report["tasks"].items()
    }
    return {"ngram": report["settings"]["ngram"], "match": report["settings"]["match"], "tasks": tasks}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Plain sentences of a :func:`mix_summary` (the card's section): the filter's, then the audits'."""
    return filter_lines(summary) + audit_lines(summary)


def filter_lines(summary: dict[str, Any]) -> list[str]:
    """The dedup filter's sentence (a preprocessing step), or []."""
    if (d := summary.get("dedup_filter")) is None:
        return []
    rule = "same normalized text" if d["mode"] == "exact" else f"MinHash-LSH, Jaccard >= {d['threshold']}"
    return [
        f"Dedup filter ({d['mode']}: {rule}): {d['removed_documents']:,} documents removed as copies of an "
        f"earlier kept one, {d['documents_kept']:,} kept."
    ]


def audit_lines(summary: dict[str, Any]) -> list[str]:
    """The bound audits' sentences (what the mix still holds), or []."""
    lines = []
    if (a := summary.get("duplicates_audit")) is not None:
        lines.append(
            f"Duplicates audit ({a['file']}, sha256 {a['sha256']}): of {a['documents']:,} kept documents, "
            f"{a['exact_redundant']:,} exact and {a['near_redundant']:,} near copies of another."
        )
    if (a := summary.get("contamination_audit")) is not None:
        per_task = "; ".join(
            f"{name}: {t['contaminated_items']} of {t['items']} items, in {t['documents']:,} documents "
            f"({t['tokens']:,} tokens)"
            for name, t in sorted(a["tasks"].items())
        )
        lines.append(
            f"Contamination audit ({a['file']}, sha256 {a['sha256']}, {a['ngram']}-grams): {per_task}."
        )
    return lines
