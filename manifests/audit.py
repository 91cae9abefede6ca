"""The mixture audit: per source/subset counts of a manifest against target token counts.

Reads ``manifest.json`` and ``shards.parquet``, and checks the documents ledger agrees with them
(``Manifest.check_ledgers``: every row group against its digest, its sums against the shard's counts, no
stray file); when present, counts the lines of ``dropped_samples.jsonl`` for a one-line mention.
A source/subset the targets name but the manifest lacks appears with zero counts, so a missing part
of the mix shows as a deviation rather than disappearing. Shares are fractions of the manifest's
(resp. the targets') total tokens over all rows; ``share_deviation`` is ``share - target_share`` and
``ratio`` is ``share / target_share``. ``weight_share`` is the share of training tokens the stream draws
from a subset when the mixture sets weights (weights are token shares), so it shows how the weights
re-balance the natural ``share``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from elm_data.core.known_tokenizers import token_unit
from elm_data.pipeline.counts import Counts
from elm_data.sources.registry import subset_key

from .manifest import DROPPED_SAMPLES_FILE, Manifest
from .mixture import resolved_weights
from .targets import load_targets


@dataclass
class AuditRow:
    """One source/subset: its shards' summed ``counts`` and its shares of the manifest and the targets."""

    source: str
    subset: str
    shards: int = 0
    counts: Counts = field(default_factory=Counts)
    weight: float | None = None
    weight_share: float | None = None  # share of training tokens the stream draws under the mixing weights
    share: float = 0.0
    target_tokens: int | None = None
    target_share: float | None = None
    share_deviation: float | None = None
    ratio: float | None = None

    @property
    def key(self) -> str:
        return subset_key(self.source, self.subset)

    def to_dict(self) -> dict[str, Any]:
        """The row's fields with its counts flattened in (``Counts.to_dict``)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "counts"}
        return row | self.counts.to_dict()


@dataclass
class Audit:
    manifest_id: str
    manifest_name: str
    targets_name: str | None
    rows: list[AuditRow]
    dropped_samples: str | None = None  # one line about dropped_samples.jsonl when the manifest has it
    token_unit: str = "tokens"  # what the counted tokens are ("LLaMA-2 tokens" only for that model's sha256)
    # the share of each subset's passing documents held out (manifests/heldout.py)
    heldout_fraction: float = 0.0

    @property
    def totals(self) -> Counts:
        return Counts.sum(r.counts for r in self.rows)

    @property
    def total_tokens(self) -> int:
        return self.totals.tokens

    def to_json(self) -> dict[str, dict[str, Any]]:
        """One object keyed by ``"source/subset"``."""
        return {r.key: r.to_dict() for r in self.rows}


def audit_manifest(path: str | Path | Manifest, targets: str | dict[str, Any] | None = None) -> Audit:
    """Audit a manifest against ``targets`` (preset name, YAML file or dict); default: the manifest's own."""
    manifest = path if isinstance(path, Manifest) else Manifest(path, every_block=True)
    manifest.check_ledgers()  # the counts reported are the ledger's: a ledger that disagrees is refused
    resolved = load_targets(targets) if targets is not None else manifest.info["targets"]
    target_tokens: dict[str, int] = dict((resolved or {}).get("tokens", {}))

    rows: dict[str, AuditRow] = {}
    for r in manifest.shards:
        row = rows.setdefault(r.key, AuditRow(r.source, r.subset))
        row.shards += 1
        row.counts.merge(r.counts)
    for entry in manifest.info["mixture"]:
        key = subset_key(entry["source"], entry["subset"])
        if key in rows:
            rows[key].weight = entry.get("weight")
    for key in target_tokens:
        if key not in rows:
            source, subset = key.split("/", 1)
            rows[key] = AuditRow(source, subset)

    weights = resolved_weights(manifest.info["mixture"], {k: r.counts.tokens for k, r in rows.items()}) or {}
    weight_total = sum(weights.values())
    for key, row in rows.items():
        if weights and weight_total:
            row.weight_share = weights.get(key, 0.0) / weight_total
    total = sum(r.counts.tokens for r in rows.values())
    target_total = sum(target_tokens.values())
    for key, row in rows.items():
        row.share = row.counts.tokens / total if total else 0.0
        if key in target_tokens and target_total:
            row.target_tokens = target_tokens[key]
            row.target_share = target_tokens[key] / target_total
            row.share_deviation = row.share - row.target_share
            row.ratio = row.share / row.target_share if row.target_share else None
    ordered = sorted(rows.values(), key=lambda r: (-(r.target_share or 0.0), -r.counts.tokens, r.key))
    audit = Audit(manifest.manifest_id, manifest.info["name"], (resolved or {}).get("name"), ordered)
    audit.token_unit = token_unit(manifest.info["tokenizer"]["sha256"])
    audit.dropped_samples = _dropped_samples_note(manifest.path / DROPPED_SAMPLES_FILE)
    audit.heldout_fraction = float((manifest.info.get("heldout") or {}).get("fraction") or 0.0)
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


TABLE_HEADERS = (
    "source/subset",
    "shards",
    "read",
    "kept",
    "held out",
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
)


def _count_cells(counts: Counts) -> list[str]:
    """The read, kept, held-out, filtered, rejected, chars and tokens columns (read = the four buckets'
    sum)."""
    c = counts
    figures = (c.docs_read, c.docs_kept, c.docs_heldout, c.docs_filtered, c.docs_rejected, c.chars, c.tokens)
    return [f"{n:,}" for n in figures]


def _row_cells(r: AuditRow) -> list[str]:
    return [
        r.key,
        str(r.shards),
        *_count_cells(r.counts),
        _pct(r.share),
        _human(r.target_tokens),
        _pct(r.target_share),
        _pct(r.share_deviation, signed=True),
        "-" if r.ratio is None else f"{r.ratio:.2f}x",
        _pct(r.weight_share),
    ]


def _total_cells(audit: Audit) -> list[str]:
    target = _human(sum(r.target_tokens or 0 for r in audit.rows) or None)
    return [
        "TOTAL",
        str(sum(r.shards for r in audit.rows)),
        *_count_cells(audit.totals),
        "100.00",
        target,
        *[""] * 4,
    ]


def format_table(audit: Audit) -> str:
    """A fixed-width text table, one line per source/subset plus a total."""
    headers = list(TABLE_HEADERS)
    lines = [_row_cells(r) for r in audit.rows] + [_total_cells(audit)]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        padded = (
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded)

    title = f"Mixture audit of manifest {audit.manifest_id} ({audit.manifest_name})"
    if audit.targets_name:
        title += f" against target '{audit.targets_name}'"
    rule = "-" * len(fmt(headers))
    notes = (
        f"tokens: {audit.token_unit} of kept documents, no BOS/EOS. share: of the manifest's tokens; target "
        "%: of "
        "the target's tokens; dev pp: share minus target share in percentage points; ratio: share / target "
        "share;\n"
        "weighted %: share of training tokens the stream draws under the mixture's weights ('-' when "
        "unweighted)."
    )
    body = [fmt(line) for line in lines[:-1]]
    extra = [audit.dropped_samples] if audit.dropped_samples else []
    if audit.heldout_fraction:
        held = audit.totals
        extra.insert(
            0,
            f"held out: {held.docs_heldout:,} documents ({held.heldout_tokens:,} tokens), ~"
            f"{audit.heldout_fraction:.2%} of each subset's passing documents, for evaluation; "
            "never "
            "streamed for training, not in chars/tokens/shares",
        )
    return "\n".join([title, rule, fmt(headers), rule, *body, rule, fmt(lines[-1]), notes, *extra])
