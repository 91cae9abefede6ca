"""Plots of an efficiency matrix (rows from :mod:`.efficiency`): throughput/MFU bars, cost frontier.

Every cell gets a bar row; a cell without figures shows its status and reason instead of a bar (never
dropped). Labels name only the axes that vary across the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elm_data.core.outputs import atomic_file  # noqa: E402

from .matrix import AXES  # noqa: E402

STATUS_COLOURS = {"ok": "tab:blue", "unsupported": "tab:gray", "oom": "tab:red", "failed": "tab:orange"}


def labels(rows: list[dict[str, Any]]) -> list[str]:
    """One label per row from the axes whose values differ between rows (all of them if none differ)."""
    varying = [a for a in AXES if len({str(r[a]) for r in rows}) > 1] or ["model"]
    return [f"#{r['cell']} " + " ".join(f"{a}={r[a]}" for a in varying) for r in rows]


def _bars(ax, rows: list[dict[str, Any]], key: str, title: str, scale: float = 1.0) -> None:
    names = labels(rows)
    values = [(r.get(key) or 0.0) * scale for r in rows]
    colours = [STATUS_COLOURS.get(r["status"], "black") for r in rows]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.set_title(title, fontsize=9)
    if not any(values):
        ax.set_xlim(0, 1)  # notes only: start them at the left edge
    for i, row in enumerate(rows):
        note = None
        if row["status"] != "ok":
            note = f"{row['status']}: {row['reason']}"
        elif row.get(key) is None:
            note = row.get("mfu_note") or "n/a"
        if note:
            ax.text(0, i, " " + note[:80], va="center", fontsize=6, color="dimgray")


def plot_throughput(rows: list[dict[str, Any]], path: Path) -> Path:
    """Tokens/s and MFU (%) per cell, side by side."""
    height = 1.5 + 0.3 * len(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    _bars(left, rows, "tokens_per_s", "tokens/s (timed steps)")
    _bars(right, rows, "mfu", "MFU (%)", scale=100.0)
    left.invert_yaxis()  # the first cell on top (the axes are shared: invert once)
    fig.suptitle(f"training efficiency on {rows[0]['device'] if rows else '?'}", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> Path:
    """Loss after the token budget against its dollar cost; the Pareto frontier joined by a line."""
    priced = [r for r in rows if r["status"] == "ok" and r.get("usd_for_budget") is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    if priced:
        names = dict(zip((r["cell"] for r in rows), labels(rows), strict=True))
        ax.scatter(
            [r["usd_for_budget"] for r in priced], [r["loss_at_budget"] for r in priced], color="tab:blue"
        )
        for r in priced:  # full labels on the frontier, cell numbers elsewhere (see results.csv)
            text = names[r["cell"]] if r.get("on_frontier") else f"#{r['cell']}"
            ax.annotate(text, (r["usd_for_budget"], r["loss_at_budget"]), fontsize=6)
        front = sorted((r for r in priced if r.get("on_frontier")), key=lambda r: r["usd_for_budget"])
        ax.plot(
            [r["usd_for_budget"] for r in front],
            [r["loss_at_budget"] for r in front],
            color="tab:green",
            drawstyle="steps-post",
            label="frontier (cheapest for its loss)",
        )
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no cell has a price: set usd_per_device_hour", ha="center", transform=ax.transAxes)
    ax.set_xlabel("US$ for the token budget")
    ax.set_ylabel("loss after the token budget")
    ax.set_title("loss per dollar", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path
