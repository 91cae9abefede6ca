"""``elm-data report RUN``: one self-contained HTML page of a training run, and its charts as PNGs.

Written to ``RUN/report/`` (or ``--out``) as a whole directory (staged, then moved into place):
``report.html`` plus ``loss.png``, ``tokens.png``, ``throughput.png`` (and ``heldout.png`` when the log holds
held-out evaluation records). The page embeds every chart as a base64 PNG and its style inline: it loads
nothing from the network and can be mailed as one file.

What it shows, all read from the run log and (for the receipt and the targets) the run's manifest:

- the receipt's status: ``audit-run --verify`` recomputed now (verified, or the first step that differs, or
why
  it could not be checked), the manifest id and Merkle root, and a link to a model card when an export of this
  run is found (``--card``, else a ``README.md`` in a folder beside the run or inside it whose text names this
  run's manifest id and one of its logged chain heads);
- training loss, raw and its running mean (``loss_mean``; recomputed over 20 records for logs from before it);
- tokens consumed per source/subset over the steps against the OpenELM target shares (renormalised over the
  manifest's subsets, as ``audit-run``), and the final shares beside the targets;
- throughput (tokens/s) and the loader stall (``data_share``) over the steps;
- per-source held-out loss (``heldout`` records: ``{"step", "loss_by_source": {key: loss}}``) and, when the
  records hold it, bits per byte (``bits_per_byte_by_source``), or the words
  "no held-out records" when the log has none.
"""

from __future__ import annotations

import base64
import html
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import staged_dir
from elm_data.manifests.manifest import Manifest

from ..core.health import LOSS_WINDOW
from ..core.runlog import effective_steps, read_log
from .audit import audit_run, verify_run

REPORT_DIR = "report"
HEADER_FIELDS = ("device", "parameters", "world_size", "tokens_per_step")


class ReportError(ElmDataError, ValueError):
    """A run that cannot be reported (no step records)."""


@dataclass
class Chart:
    """One chart of the page: its id (also its PNG's name), title, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class RunReport:
    """What :func:`write_report` wrote and found."""

    run_dir: Path
    out_dir: Path
    html: Path
    charts: list[str]
    receipt: str  # "verified", "FAILS at step k: ..." or "not checked: ..."
    card: Path | None
    heldout: bool
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---- the run's series
# -------------------------------------------------------------------------------------------
@dataclass
class Series:
    """The step records as arrays, one entry per logged step (as the run finally went)."""

    step: np.ndarray
    loss: np.ndarray
    loss_mean: np.ndarray
    tokens_per_s: np.ndarray
    data_share: np.ndarray
    tokens_total: np.ndarray
    by_source: dict[str, np.ndarray]  # cumulative tokens consumed per source/subset

    @classmethod
    def of(cls, steps: list[dict[str, Any]]) -> Series:
        """Arrays of the step records; fields a log from before them lacks are recomputed from the others."""
        column = lambda key, default=np.nan: np.array([float(s.get(key, default) or 0.0) for s in steps])  # noqa: E731
        loss = column("loss")
        if all("loss_mean" in s for s in steps):
            loss_mean = column("loss_mean")
        else:
            sums = np.concatenate([[0.0], np.cumsum(loss)])
            idx = np.arange(1, len(loss) + 1)
            loss_mean = (sums[idx] - sums[np.maximum(0, idx - LOSS_WINDOW)]) / np.minimum(idx, LOSS_WINDOW)
        wait, total = column("data_wait_s", 0.0), column("step_time_s", 0.0)
        share = (
            column("data_share")
            if all("data_share" in s for s in steps)
            else np.divide(wait, total, out=np.zeros_like(wait), where=total > 0)
        )
        keys = sorted({k for s in steps for k in (s.get("tokens_by_source") or {})})
        by_source = {
            k: np.array([float((s.get("tokens_by_source") or {}).get(k, 0)) for s in steps]) for k in keys
        }
        return cls(
            column("step"), loss, loss_mean, column("tokens_per_s"), share, column("tokens_total"), by_source
        )


# ---- charts
# ----------------------------------------------------------------------------------------------------
def _figure(rows: int = 1, cols: int = 1, height: float = 3.6, **kwargs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(10, height), **kwargs)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def loss_chart(series: Series) -> Chart:
    """Raw training loss (thin) and its running mean (bold) over the steps."""
    fig, ax = _figure()
    ax.plot(series.step, series.loss, lw=0.8, alpha=0.45, color="tab:blue", label="loss (raw)")
    ax.plot(
        series.step, series.loss_mean, lw=2.0, color="tab:blue", label=f"running mean ({LOSS_WINDOW} records)"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    last = f"last {series.loss[-1]:.3f}, mean {series.loss_mean[-1]:.3f}"
    return Chart("loss", "Training loss", f"{len(series.step):,} logged steps; {last}", _png(fig))


def tokens_chart(series: Series, targets: dict[str, float]) -> Chart:
    """Cumulative tokens per source/subset (solid) against its target share of all tokens consumed (dashed);
    beside it, the final shares next to the targets."""
    import matplotlib.pyplot as plt

    fig, (ax, bars) = _figure(1, 2, height=4.2, gridspec_kw={"width_ratios": [3, 2]})
    consumed = sum(series.by_source.values()) if series.by_source else np.zeros_like(series.step)
    colours = plt.get_cmap("tab20").colors
    keys = sorted(series.by_source, key=lambda k: -series.by_source[k][-1])
    for i, key in enumerate(keys):
        colour = colours[i % len(colours)]
        ax.plot(series.step, series.by_source[key], color=colour, lw=1.4, label=key)
        if key in targets:
            ax.plot(series.step, consumed * targets[key], color=colour, lw=1.0, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("tokens consumed (solid) / target (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    total = float(consumed[-1]) if len(consumed) else 0.0
    # subsets not consumed (yet) too
    listed = keys + sorted(set(targets) - set(keys), key=lambda k: -targets[k])
    shares = [
        100 * series.by_source[k][-1] / total if total and k in series.by_source else 0.0 for k in listed
    ]
    y = np.arange(len(listed))
    bars.barh(
        y - 0.2,
        shares,
        height=0.4,
        color=[colours[i % len(colours)] for i in range(len(listed))],
        label="run",
    )
    bars.barh(
        y + 0.2, [100 * targets.get(k, 0.0) for k in listed], height=0.4, color="lightgray", label="target"
    )
    bars.set_yticks(y, listed, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("share of tokens consumed (%)")
    bars.legend(fontsize=7, loc="lower right")
    caption = f"{total:,.0f} tokens consumed by {len(keys)} sources/subsets" + (
        "; targets: OpenELM's shares, renormalised over the manifest's subsets"
        if targets
        else "; no targets known"
    )
    return Chart("tokens", "Tokens per source against the targets", caption, _png(fig))


def throughput_chart(series: Series) -> Chart:
    """Tokens/s and the loader's stall (share of each step spent waiting for data) over the steps."""
    fig, (top, bottom) = _figure(2, 1, height=4.6, sharex=True)
    top.plot(series.step, series.tokens_per_s, lw=1.0, color="tab:green")
    top.set_ylabel("tokens/s")
    top.grid(alpha=0.3)
    bottom.plot(series.step, 100 * series.data_share, lw=1.0, color="tab:red")
    bottom.set_ylabel("stall (% of step)")
    bottom.set_xlabel("step")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    median_tps, median_stall = float(np.median(series.tokens_per_s)), float(np.median(series.data_share))
    caption = f"median {median_tps:,.0f} tokens/s; median stall {median_stall:.1%} of a step"
    return Chart("throughput", "Throughput and data-loading stall", caption, _png(fig))


def heldout_chart(records: list[dict[str, Any]]) -> Chart:
    """Per-source held-out loss over the steps (one line per source/subset), and beside it bits per byte when
    the records hold it (``heldout`` records of ``trainer/core/heldout_eval.py``)."""
    with_bpb = any(r.get("bits_per_byte_by_source") for r in records)
    fig, axes = _figure(1, 2) if with_bpb else _figure()
    panels = [("loss_by_source", "held-out loss (nats/token)"), ("bits_per_byte_by_source", "bits per byte")]
    for ax, (name, label) in zip(axes if with_bpb else [axes], panels, strict=False):
        keys = sorted({k for r in records for k in r.get(name) or {}})
        for key in keys:
            points = [(r["step"], r[name][key]) for r in records if (r.get(name) or {}).get(key) is not None]
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.2, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    (axes[0] if with_bpb else axes).legend(fontsize=6, ncol=2)
    last = records[-1]
    caption = f"{len(records)} evaluations"
    if last.get("docs_by_source"):
        caption += (
            f"; at step {last['step']}: {sum(last['docs_by_source'].values())} held-out documents, "
            f"{sum(last['tokens_by_source'].values()):,} tokens"
        )
    return Chart("heldout", "Held-out loss per source", caption, _png(fig))


# ---- what the page says about the run
# ---------------------------------------------------------------------------
def receipt_status(run_dir: Path, manifest_dir: Path | None) -> tuple[str, bool | None]:
    """``audit-run --verify``'s outcome in words, and whether it verified (None: it could not be checked)."""
    try:
        outcome = verify_run(run_dir, manifest_dir=manifest_dir)
    except ElmDataError as error:
        return f"not checked: {error}", None
    if outcome.ok:
        return (
            f"verified: {outcome.steps:,} steps recomputed from the manifest and plan; chain head "
            f"{outcome.head}",
            True,
        )
    return f"FAILS at step {outcome.first_bad_step}: {outcome.reason}", False


def target_shares(run_dir: Path, manifest_dir: Path | None, notes: list[str]) -> dict[str, float]:
    """Each subset's OpenELM target share, renormalised over the manifest's subsets (as ``audit-run``)."""
    try:
        rows = audit_run(run_dir, manifest_dir=manifest_dir).rows
    except ElmDataError as error:
        notes.append(f"no target shares: {error}")
        return {}
    return {r.key: r.target_share for r in rows if r.target_share is not None}


def find_card(run_dir: Path, manifest_id: str, heads: set[str], card: Path | None) -> Path | None:
    """A model card (``README.md``) of an export of this run: ``card`` (a folder or the file), else one in a
    folder beside the run or inside it that names the run's manifest id and one of its logged chain heads."""
    if card is not None:
        path = card / "README.md" if card.is_dir() else card
        return path if path.is_file() else None
    for path in sorted([*run_dir.parent.glob("*/README.md"), *run_dir.glob("*/README.md")]):
        text = path.read_text(encoding="utf-8", errors="replace")
        if manifest_id in text and any(
            h in text for h in re.findall(r"\b[0-9a-f]{64}\b", text) if h in heads
        ):
            return path
    return None


# ---- the page
# ----------------------------------------------------------------------------------------------------
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:17px;margin:0 0 8px} .sub{color:#5b6475;margin:0 0 18px}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden}
td,th{padding:6px 12px;border-bottom:1px solid #e8ebf0;text-align:left;vertical-align:top}
th{width:190px;color:#5b6475;font-weight:600} code{font-size:12.5px;word-break:break-all}
.ok{color:#0a7d32;font-weight:700} .bad{color:#b3261e;font-weight:700} .unknown{color:#8a5a00;font-weight:700}
figure{background:#fff;border-radius:8px;margin:18px 0;padding:16px 18px;box-shadow:0 1px 2px #0001}
figure img{width:100%;height:auto;display:block} figcaption{color:#5b6475;font-size:13px;margin-top:6px}
.empty{padding:28px;text-align:center;color:#5b6475;border:2px dashed #d5dae3;border-radius:8px}
ul.notes{color:#5b6475;font-size:13px}
"""


def _row(name: str, value: str) -> str:
    return f"<tr><th>{html.escape(name)}</th><td>{value}</td></tr>"


def summary_table(
    header: dict[str, Any],
    last: dict[str, Any],
    merkle_root: str | None,
    receipt: tuple[str, bool | None],
    card: Path | None,
    out_dir: Path,
) -> str:
    """The facts at the top of the page: the receipt's status, the data (manifest id, Merkle root), the
    run."""
    text, ok = receipt
    css = {True: "ok", False: "bad", None: "unknown"}[ok]
    label = {True: "✔ receipt verified", False: "✘ receipt does not verify", None: "? receipt not checked"}[
        ok
    ]
    rows = [
        _row(
            "consumption receipt", f'<span class="{css}">{label}</span><br><code>{html.escape(text)}</code>'
        ),
        _row("manifest id", f"<code>{html.escape(str(header.get('manifest_id')))}</code>"),
        _row("Merkle root", f"<code>{html.escape(str(merkle_root))}</code>"),
        _row("steps / tokens", f"{int(last['step']):,} steps, {int(last.get('tokens_total') or 0):,} tokens"),
    ]
    if card is not None:
        link = html.escape(Path(_relative(card, out_dir)).as_posix(), quote=True)
        rows.append(_row("model card", f'<a href="{link}">{html.escape(str(card))}</a>'))
    else:
        rows.append(
            _row("model card", "no export of this run found (<code>elm-data export hf</code> writes one)")
        )
    rows += [
        _row(
            k.replace("_", " "),
            html.escape(f"{header[k]:,}" if isinstance(header[k], int) else str(header[k])),
        )
        for k in HEADER_FIELDS
        if header.get(k) is not None
    ]
    return "<table>" + "".join(rows) + "</table>"


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def figure_html(chart: Chart) -> str:
    """A chart as a figure with the PNG inline (base64), so the page needs no other file."""
    data = base64.b64encode(chart.png).decode("ascii")
    return (
        f'<figure class="chart" id="chart-{chart.name}"><h2>{html.escape(chart.title)}</h2>'
        f'<img alt="{html.escape(chart.title, quote=True)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(chart.caption)}</figcaption></figure>"
    )


def page(
    title: str, subtitle: str, table: str, charts: list[Chart], heldout: Chart | None, notes: list[str]
) -> str:
    """The whole HTML document (inline style, inline images, no script, no network asset)."""
    held = (
        figure_html(heldout)
        if heldout
        else (
            '<figure id="heldout"><h2>Held-out loss per source</h2><div class="empty">no held-out records in '
            "this run's "
            "log</div></figure>"
        )
    )
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<meta name="viewport" content="width=device-width, '
        f'initial-scale=1"><style>{STYLE}</style></head><body><main>'
        f'<h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>{table}'
        + "".join(figure_html(c) for c in charts)
        + held
        + (f'<ul class="notes">{items}</ul>' if notes else "")
        + "</main></body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    manifest_dir: str | Path | None = None,
    card: str | Path | None = None,
) -> RunReport:
    """Write ``report.html`` and the charts' PNGs for the run in ``run_dir`` into ``out`` (``RUN/report``)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir / REPORT_DIR
    manifest_dir = Path(manifest_dir) if manifest_dir is not None else None
    refuse_foreign_folder(out_dir)
    records = read_log(run_dir)
    header = next((r for r in records if r.get("event") == "header"), {})
    steps = effective_steps(records)
    if not steps:
        raise ReportError(f"{run_dir}/log.jsonl has no step records: nothing to report yet")
    notes: list[str] = []
    series = Series.of(steps)
    charts = [
        loss_chart(series),
        tokens_chart(series, target_shares(run_dir, manifest_dir, notes)),
        throughput_chart(series),
    ]
    # a resume supersedes evaluations past its checkpoint
    heldout_records = effective_steps(records, "heldout")
    heldout = heldout_chart(heldout_records) if heldout_records else None
    receipt = receipt_status(run_dir, manifest_dir)
    heads = {str(r["receipt"]) for r in records if "receipt" in r}
    found = find_card(run_dir, str(header.get("manifest_id")), heads, Path(card) if card else None)
    end = next((r for r in reversed(records) if r.get("event") == "end"), {})
    merkle = end.get("merkle_root") or _manifest_root(header, manifest_dir)
    table = summary_table(header, steps[-1], merkle, receipt, found, out_dir)
    model = (header.get("config") or {}).get("model")
    subtitle = f"{run_dir.resolve()} · model {model if isinstance(model, str) else (model or {}).get('name')}"
    document = page(f"Training run {run_dir.resolve().name}", subtitle, table, charts, heldout, notes)
    with staged_dir(out_dir) as tmp:
        (tmp / "report.html").write_text(document, encoding="utf-8")
        for chart in [*charts, *([heldout] if heldout else [])]:
            (tmp / f"{chart.name}.png").write_bytes(chart.png)
    names = [c.name for c in charts] + (["heldout"] if heldout else [])
    return RunReport(
        run_dir,
        out_dir,
        out_dir / "report.html",
        names,
        receipt[0],
        found,
        heldout is not None,
        time.perf_counter() - started,
        notes,
    )


def refuse_foreign_folder(out_dir: Path) -> None:
    """The report replaces its folder whole: refuse one that holds anything but an earlier report (invariant
    5)."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "report.html").is_file():
        raise ReportError(
            f"{out_dir} holds files that are not a report: choose a new or empty folder for --out"
        )


def _manifest_root(header: dict[str, Any], manifest_dir: Path | None) -> str | None:
    """The Merkle root of the run's manifest, for a log without an ``end`` record (None when it cannot be
    read)."""
    try:
        return Manifest(manifest_dir or header["manifest_dir"]).info["merkle_root"]
    except (ElmDataError, KeyError):
        return None
