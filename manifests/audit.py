"""The mixture audit: per source/subset counts of a manifest against target token counts.

Reads only ``manifest.json`` and ``shards.parquet`` (and, when present, counts the lines of
``dropped_samples.jsonl`` for a one-line mention). A source/subset the targets name but the
manifest lacks appears with zero counts, so a missing part of the mix shows as a deviation rather
than disappearing. Shares are fractions of the manifest's (resp. the targets') total tokens over
all rows; ``share_deviation`` is ``share - target_share`` and ``ratio`` is ``share / target_share``.
``weight_share`` is the share of training tokens the stream draws from a subset when the mixture sets
weights (weights are token shares), so it shows how the weights re-balance the natural ``share``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .manifest import DROPPED_SAMPLES_FILE, Manifest, ShardRecord, totals_of
from .targets import load_targets


@dataclass
class AuditRow:
    source: str
    subset: str
    shards: int = 0
    docs_read: int = 0
    docs_kept: int = 0
    docs_filtered: int = 0
    docs_rejected: int = 0
    filtered_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    pieces_filtered_by_reason: dict[str, int] = field(default_factory=dict)  # corenet: pieces dropped per reason
    chars: int = 0
    tokens: int = 0
    segments: int = 0
    weight: float | None = None
    weight_share: float | None = None  # share of training tokens the stream draws under the mixing weights
    share: float = 0.0
    target_tokens: int | None = None
    target_share: float | None = None
    share_deviation: float | None = None
    ratio: float | None = None

    @property
    def key(self) -> str:
        return f"{self.source}/{self.subset}"


@dataclass
class Audit:
    manifest_id: str
    manifest_name: str
    targets_name: str | None
    rows: list[AuditRow]
    dropped_samples: str | None = None  # one line about dropped_samples.jsonl when the manifest has it

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.rows)

    def to_json(self) -> dict[str, dict[str, Any]]:
        """One object keyed by ``"source/subset"``."""
        return {r.key: asdict(r) for r in self.rows}


def audit_manifest(path: str | Path | Manifest, targets: str | dict[str, Any] | None = None) -> Audit:
    """Audit a manifest against ``targets`` (preset name, YAML file or dict); default: the manifest's own."""
    manifest = path if isinstance(path, Manifest) else Manifest(path)
    resolved = load_targets(targets) if targets is not None else manifest.info.get("targets")
    target_tokens: dict[str, int] = dict((resolved or {}).get("tokens", {}))

    groups: dict[str, list[ShardRecord]] = {}
    for r in manifest.shards:
        groups.setdefault(r.key, []).append(r)
    rows: dict[str, AuditRow] = {}
    for key, records in groups.items():
        counts = totals_of(records)
        del counts["size_bytes"]
        rows[key] = AuditRow(records[0].source, records[0].subset, **counts)
    for entry in manifest.info.get("mixture", []):
        key = f"{entry['source']}/{entry['subset']}"
        if key in rows:
            rows[key].weight = entry.get("weight")
    for key in target_tokens:
        if key not in rows:
            source, subset = key.split("/", 1)
            rows[key] = AuditRow(source, subset)

    weights = {k: r.weight for k, r in rows.items() if r.weight is not None}
    weight_total = sum(weights.values())
    for key, row in rows.items():
        if weights and weight_total:
            row.weight_share = weights.get(key, 0.0) / weight_total
    total = sum(r.tokens for r in rows.values())
    target_total = sum(target_tokens.values())
    for key, row in rows.items():
        row.share = row.tokens / total if total else 0.0
        if key in target_tokens and target_total:
            row.target_tokens = target_tokens[key]
            row.target_share = target_tokens[key] / target_total
            row.share_deviation = row.share - row.target_share
            row.ratio = row.share / row.target_share if row.target_share else None
    ordered = sorted(rows.values(), key=lambda r: (-(r.target_share or 0.0), -r.tokens, r.key))
    audit = Audit(manifest.manifest_id, manifest.info.get("name", ""), (resolved or {}).get("name"), ordered)
    audit.dropped_samples = _dropped_samples_note(manifest.path / DROPPED_SAMPLES_FILE)
    return audit


def _dropped_samples_note(path: Path) -> str | None:
    if not path.exists():
        return None
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return f"dropped samples: {lines:,} filtered/rejected documents for inspection in {path}"


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def format_table(audit: Audit) -> str:
    """A fixed-width text table, one line per source/subset plus a total."""
    headers = [
        "source/subset",
        "shards",
        "read",
        "kept",
        "filtered",
        "rejected",
        "chars",
        "tokens",
        "share %",
        "target",
        "target %",
        "dev pp",
        "ratio",
        "weighted %",
    ]
    lines = []
    for r in audit.rows:
        lines.append(
            [
                r.key,
                str(r.shards),
                f"{r.docs_read:,}",
                f"{r.docs_kept:,}",
                f"{r.docs_filtered:,}",
                f"{r.docs_rejected:,}",
                f"{r.chars:,}",
                f"{r.tokens:,}",
                _pct(r.share),
                _human(r.target_tokens),
                _pct(r.target_share),
                _pct(r.share_deviation, signed=True),
                "-" if r.ratio is None else f"{r.ratio:.2f}x",
                _pct(r.weight_share),
            ]
        )
    rows = audit.rows
    lines.append(
        [
            "TOTAL",
            str(sum(r.shards for r in rows)),
            f"{sum(r.docs_read for r in rows):,}",
            f"{sum(r.docs_kept for r in rows):,}",
            f"{sum(r.docs_filtered for r in rows):,}",
            f"{sum(r.docs_rejected for r in rows):,}",
            f"{sum(r.chars for r in rows):,}",
            f"{audit.total_tokens:,}",
            "100.00",
            _human(sum(r.target_tokens or 0 for r in rows) or None),
            "",
            "",
            "",
            "",
        ]
    )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    title = f"Mixture audit of manifest {audit.manifest_id} ({audit.manifest_name})"
    if audit.targets_name:
        title += f" against target '{audit.targets_name}'"
    rule = "-" * len(fmt(headers))
    notes = (
        "tokens: LLaMA-2 tokens of kept documents, no BOS/EOS. share: of the manifest's tokens; target %: of the "
        "target's tokens; dev pp: share minus target share in percentage points; ratio: share / target share;\n"
        "weighted %: share of training tokens the stream draws under the mixture's weights ('-' when unweighted)."
    )
    body = [fmt(line) for line in lines[:-1]]
    extra = [audit.dropped_samples] if audit.dropped_samples else []
    return "\n".join([title, rule, fmt(headers), rule, *body, rule, fmt(lines[-1]), notes, *extra])
