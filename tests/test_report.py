"""`elm-data report`: the page's content from a log, and the page as a real browser draws it (headless
Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from elm_data.trainer.core.health import LOSS_WINDOW
from elm_data.trainer.core.runlog import effective_steps, read_log
from elm_data.trainer.proof.report import REPORT_DIR, ReportError, Series, write_report
from elm_data.trainer.report_cli import report as report_command

CHARTS = ["loss", "tokens", "throughput"]
SOURCES = {"redpajama/c4": 3, "refinedweb/default": 5, "dolma/stack": 2}


def synthetic_log(run_dir: Path, steps: int, heldout_every: int = 0) -> Path:
    """A run log as the trainer writes it (header, step records with the health fields, an end record) for a
    run whose manifest is not here: the report must still draw every chart."""
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [
        {
            "event": "header",
            "manifest_id": "ab" * 32,
            "manifest_dir": str(run_dir / "gone"),
            "device": "cpu",
            "config": {"model": "tiny"},
            "parameters": 1234,
            "world_size": 1,
        }
    ]
    consumed = dict.fromkeys(SOURCES, 0)
    for step in range(1, steps + 1):
        for key, rate in SOURCES.items():
            consumed[key] += int(rng.integers(0, 2 * rate * 64))
        loss = 10.0 * np.exp(-step / 300) + 2.0 + rng.normal(0, 0.3)
        # as a log from before the health fields: no loss_mean, no data_share (the report recomputes them)
        lines.append(
            {
                "event": "step",
                "step": step,
                "loss": loss,
                "tokens_per_s": 900.0 + step,
                "data_wait_s": 0.01,
                "step_time_s": 0.2,
                "tokens_total": 640 * step,
                "tokens_by_source": dict(consumed),
                "receipt": f"{step:064x}",
            }
        )
        if heldout_every and step % heldout_every == 0:
            lines.append(
                {"event": "heldout", "step": step, "loss_by_source": {k: loss + 0.1 for k in SOURCES}}
            )
    lines.append({"event": "end", "step": steps, "merkle_root": "cd" * 32})
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


class PageParts(HTMLParser):
    """Every tag of a page with its attributes (to check what it would load)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def page_parts(path: Path) -> PageParts:
    parts = PageParts()
    parts.feed(path.read_text(encoding="utf-8"))
    return parts


# ---- quick: the page from a log
# ---------------------------------------------------------------------------------
def test_report_of_a_log_is_one_self_contained_page_with_every_chart(tmp_path):
    run = synthetic_log(tmp_path / "run", steps=50)
    result = write_report(run)
    assert result.out_dir == run / REPORT_DIR and result.charts == CHARTS and not result.heldout
    parts = page_parts(result.html)
    assert not [t for t, _ in parts.tags if t in ("script", "link", "iframe", "object", "embed")]
    sources = [a.get("src") or "" for t, a in parts.tags if t == "img"]
    assert len(sources) == len(CHARTS) and all(s.startswith("data:image/png;base64,") for s in sources)
    ids = [a.get("id") for t, a in parts.tags if t == "figure"]
    assert ids == [f"chart-{c}" for c in CHARTS] + ["heldout"]
    text = result.html.read_text()
    assert "no held-out records" in text and "ab" * 32 in text and "cd" * 32 in text
    assert "receipt not checked" in text  # the manifest is gone: said, not hidden
    for chart in CHARTS:
        with Image.open(run / REPORT_DIR / f"{chart}.png") as image:
            assert image.format == "PNG" and image.width > 500
    series = Series.of(effective_steps(read_log(run)))  # the fields a log from before them lacks, recomputed
    losses = series.loss.tolist()
    oracle = [statistics.fmean(losses[max(0, i - LOSS_WINDOW + 1) : i + 1]) for i in range(len(losses))]
    assert series.loss_mean.tolist() == pytest.approx(oracle, rel=1e-12)
    assert series.data_share.tolist() == pytest.approx([0.05] * 50)


@pytest.mark.slow
def test_held_out_records_get_their_chart_and_an_empty_log_is_one_line(tmp_path):
    run = synthetic_log(tmp_path / "run", steps=40, heldout_every=10)
    result = write_report(run, out=tmp_path / "page")
    assert (
        result.heldout
        and result.charts == [*CHARTS, "heldout"]
        and (tmp_path / "page" / "heldout.png").is_file()
    )
    assert "no held-out records" not in result.html.read_text()
    assert write_report(run, out=tmp_path / "page").charts == result.charts  # an earlier report is replaced
    mine = tmp_path / "mine"
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not a report"):
        write_report(run, out=mine)  # a folder of other files is never replaced
    assert (mine / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "log.jsonl").write_text(json.dumps({"event": "header", "manifest_id": "x"}) + "\n")
    with pytest.raises(ReportError, match="no step records"):
        write_report(empty)
    outcome = CliRunner().invoke(report_command, [str(empty)])
    assert outcome.exit_code == 2 and len(outcome.output.strip().splitlines()) == 1


# ---- the page in a real browser
# ---------------------------------------------------------------------------------
def chromium_binary() -> str:
    """Debian's Chromium; absent, the test skips with the reason, except in CI (CI=true) where it fails."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if found is None:
        reason = "no chromium on PATH (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: CI must render the report")
        pytest.skip(reason)
    return found


PROBE = """<script>addEventListener("load", () => {
  const boxes = [...document.querySelectorAll("figure")].map(f => { const i = f.querySelector("img");
    const r = (i || f).getBoundingClientRect();
    return {id: f.id, x: r.x, y: r.y + scrollY, w: r.width, h: r.height,
            decoded: i ? i.naturalWidth : -1}; });
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({boxes, height: document.documentElement.scrollHeight});
  document.body.appendChild(out); });</script>"""


def chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=5000",
        "--no-first-run",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def drawn(pixels: np.ndarray) -> tuple[float, int]:
    """(share of pixels that are not near-white, distinct colours) of an RGB crop."""
    ink = (pixels.astype(int).min(axis=2) < 235).mean()
    return float(ink), len(np.unique(pixels.reshape(-1, 3), axis=0))


def render(binary: str, page: Path, tmp: Path) -> tuple[dict, np.ndarray]:
    """The laid-out boxes of the page's figures (from a probe in a copy of it) and a screenshot of the
    page."""
    probed = tmp / "probed.html"
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    dom = chromium(binary, tmp, "--window-size=1280,900", "--dump-dom", probed.as_uri()).stdout
    layout = json.loads(dom.split('<pre id="probe">')[1].split("</pre>")[0].replace("&quot;", '"'))
    shot = tmp / "shot.png"
    chromium(
        binary, tmp, f"--window-size=1280,{int(layout['height'])}", f"--screenshot={shot}", page.as_uri()
    )
    with Image.open(shot) as image:
        return layout, np.asarray(image.convert("RGB"))


@pytest.mark.slow  # trains 6 steps, exports, reports and starts Chromium twice (~40 s)
def test_report_of_a_real_run_renders_in_chromium_with_every_chart(sample_manifest, tmp_path, tokenizer_path):
    binary = chromium_binary()
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.loop import train
    from elm_data.trainer.export.hf import export_checkpoint

    model = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32}
    config = TrainConfig(
        manifest=str(sample_manifest),
        model=model,
        seq_len=32,
        batch_size=2,
        max_steps=6,
        warmup_steps=2,
        lr=3e-3,
        epochs=None,
        precision="fp32",
        distributed="none",
    )
    result = train(config, out_dir=tmp_path / "demo" / "run", progress=False)
    export_checkpoint(
        result.checkpoint, tmp_path / "demo" / "hf", tokenizer=tokenizer_path, echo=lambda *_: None
    )
    outcome = CliRunner().invoke(report_command, [str(result.run_dir)])
    assert outcome.exit_code == 0, outcome.output
    page = result.run_dir / REPORT_DIR / "report.html"
    text = page.read_text()
    assert (
        "receipt verified" in text and 'href="../../hf/README.md"' in text and "no held-out records" in text
    )

    layout, pixels = render(binary, page, tmp_path)
    boxes = {b["id"]: b for b in layout["boxes"]}
    assert list(boxes) == [f"chart-{c}" for c in CHARTS] + ["heldout"]
    for chart in CHARTS:
        box = boxes[f"chart-{chart}"]
        assert box["decoded"] > 0 and box["w"] > 600 and box["h"] > 150, box  # the PNG decoded and laid out
        x, y, w, h = (int(box[k]) for k in ("x", "y", "w", "h"))
        ink, colours = drawn(pixels[y : y + h, x : x + w])
        # axes, lines and labels drawn, not a blank box
        assert ink > 0.03 and colours > 20, (chart, ink, colours)
    # the page's left margin: the check sees it as blank
    margin = pixels[:, : int(boxes["chart-loss"]["x"]) - 40]
    assert drawn(margin)[0] < 0.01


def test_without_chromium_the_browser_test_skips_here_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        chromium_binary()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must render the report"):
        chromium_binary()
