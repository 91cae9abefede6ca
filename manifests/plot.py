"""Plot an audit: token share per source/subset in the manifest next to the target share."""

from __future__ import annotations

from pathlib import Path

from elm_data.core.errors import InvalidValue
from elm_data.core.outputs import atomic_file

from .audit import Audit, AuditRow

MANIFEST_COLOUR, TARGET_COLOUR = "#1f77b4", "#bbbbbb"


def check_plot_path(out_path: str | Path) -> Path:
    """``out_path`` when matplotlib writes its suffix (``.png``, ``.pdf``, ``.svg``, …), else
    :class:`InvalidValue`."""
    from matplotlib.backend_bases import FigureCanvasBase

    out_path = Path(out_path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out_path.suffix[1:].lower() not in formats:
        raise InvalidValue(
            f"--plot {out_path}: cannot write a {out_path.suffix or 'suffix-less'} file; "
            f"name it with one of {', '.join('.' + f for f in sorted(formats))}"
        )
    return out_path


def plot_audit(audit: Audit, out_path: str | Path) -> Path:
    """Horizontal bars of shares in %, manifest vs target, one pair per source/subset; writes the chart in the
    format its suffix names (:func:`check_plot_path` refuses one matplotlib cannot write)."""
    out_path = check_plot_path(out_path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(audit.rows))  # largest target share on top
    labels = [r.key for r in rows]
    manifest_pct = [100 * r.share for r in rows]
    target_pct = [100 * r.target_share if r.target_share is not None else 0.0 for r in rows]
    has_target = any(r.target_share is not None for r in rows)

    height = 1.2 + 0.55 * len(rows)
    fig, ax = plt.subplots(figsize=(10, max(3.5, height)), dpi=120)
    ys = range(len(rows))
    bar = 0.38
    ax.barh([y + bar / 2 for y in ys], manifest_pct, height=bar, color=MANIFEST_COLOUR, label="this manifest")
    if has_target:
        ax.barh(
            [y - bar / 2 for y in ys],
            target_pct,
            height=bar,
            color=TARGET_COLOUR,
            label=f"target ({audit.targets_name})",
            edgecolor="#777777",
            linewidth=0.5,
        )
    xmax = max([*manifest_pct, *target_pct, 1.0])
    _label_bars(ax, rows, manifest_pct, target_pct if has_target else None, xmax, bar)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, xmax * 1.35)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= min(100.0, xmax * 1.35)])
    ax.set_xlabel(f"share of tokens (%)  —  {audit.token_unit} of kept documents, no BOS/EOS")
    ax.set_title(_title(audit, has_target), fontsize=11)
    ax.grid(axis="x", linestyle=":", alpha=0.6)
    ax.set_axisbelow(True)
    ax.legend(loc="best", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    with atomic_file(out_path) as handle:  # the format from the name's suffix, as savefig(out_path) would
        fig.savefig(handle, format=out_path.suffix[1:].lower())
    plt.close(fig)
    return out_path


def _label_bars(ax, rows: list[AuditRow], manifest_pct, target_pct, xmax: float, bar: float) -> None:
    """Each bar's value at its end: the manifest's share with its tokens, and the target's (None: no
    targets)."""
    for y, r in enumerate(rows):
        m = manifest_pct[y]
        label = f"{m:.1f}%  ({r.counts.tokens:,} tokens)" if r.shards else "not in this manifest"
        ax.text(m + xmax * 0.01, y + bar / 2, label, va="center", fontsize=8)
        if target_pct is not None:
            t = target_pct[y]
            text = f"{t:.1f}%" if r.target_share is not None else "no target"
            ax.text(t + xmax * 0.01, y - bar / 2, text, va="center", fontsize=8, color="#555555")


def _title(audit: Audit, has_target: bool) -> str:
    title = f"Token mix by source/subset: manifest {audit.manifest_id[:12]}"
    if audit.manifest_name:
        title += f" ({audit.manifest_name})"
    subtitle = f"{audit.total_tokens:,} tokens in the manifest"
    if has_target:
        subtitle += f" vs target mix '{audit.targets_name}' (each side's shares sum to 100%)"
    return f"{title}\n{subtitle}"
