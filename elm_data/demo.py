"""`elm-data demo`: the whole product on the bundled sample corpus, in ~17 CPU-s (13 s wall idle, 2.5 min
busy).

sample shards (every source in its native format) → manifest → verify → audit (+ plot)
→ Croissant → a tiny OpenELM trained on the stream → run audit → Hugging Face export → the run's report page.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path

import click

from elm_data.core.commands import command
from elm_data.core.errors import ElmDataError, OutputExists
from elm_data.pipeline.tokenizer import resolve_tokenizer
from elm_data.sources.remote_option import retries_option

# The demo's training: demo.yaml's tiny model for a smoke run (loss falls, every stage runs), not a trained
# model.
# 20 steps of 2 x 128 tokens keep it to seconds on a CPU; `elm-data train trainer/configs/demo.yaml` runs it
# longer. Every 10 steps and at the end: held-out loss on one document of <= 1024 tokens per source.
DEMO_TRAINING = {
    "max_steps": 20,
    "seq_len": 128,
    "warmup_steps": 2,
    "checkpoint_every": 10,
    "heldout_every": 10,
    "heldout_docs": 1,
    "heldout_tokens": 1024,
    "heldout_batch_size": 16,
}
# The demo's mixture holds out ~20% of each subset's passing documents: the run's per-source held-out loss.
DEMO_HELDOUT_FRACTION = 0.2


def _step(title: str) -> tuple[float, float]:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter(), time.process_time()


def _done(start: tuple[float, float], what: str) -> None:
    """``what`` with the stage's wall time and this process's CPU time (on a loaded machine the two
    differ)."""
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    click.echo(f"   {what} ({wall:.1f} s, {cpu:.1f} CPU-s)")


def demo_config_path() -> Path:
    return Path(str(resources.files("elm_data.trainer") / "configs" / "demo.yaml"))


def _clear_previous(paths: dict[str, Path], overwrite: bool) -> None:
    """Refuse to run over an earlier demo's outputs unless ``overwrite`` (then they are removed first)."""
    present = [p for p in paths.values() if p.exists()]
    if present and not overwrite:
        raise OutputExists(
            f"{present[0].parent} already holds a demo run ({', '.join(p.name for p in present)}); "
            "pass --overwrite to replace it, or choose another OUT_DIR"
        )
    for path in present:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)  # (the run's report goes with the run)


def demo_paths(out: Path) -> dict[str, Path]:
    """Where each of the demo's outputs goes under ``out``."""
    out = out.resolve()
    return {
        "sample corpus": out / "sample",
        "manifest": out / "manifest",
        "audit plot": out / "audit.png",
        "croissant": out / "croissant.json",
        "training run": out / "run",
        "hf export": out / "hf",
        "run report": out / "run" / "report" / "report.html",
    }


def run_demo(
    out: Path,
    tokenizer: str | None = None,
    steps: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Run every stage on the sample corpus under ``out``; return where each output is.

    An earlier demo's outputs in ``out`` are refused (:class:`OutputExists`) unless ``overwrite``."""
    tokenizer_uri = resolve_tokenizer(tokenizer).uri  # flag > $ELM_DATA_TOKENIZER > the cache, by sha256
    paths = demo_paths(out)
    _clear_previous(paths, overwrite)
    _data_stages(paths, tokenizer_uri, workers)
    _model_stages(paths, tokenizer_uri, steps)
    return paths


def _data_stages(paths: dict[str, Path], tokenizer_uri: str, workers: int) -> None:
    """Stages 1-3: the sample corpus, its manifest, verify, audit (+ plot) and Croissant."""
    from elm_data.manifests.audit import audit_manifest, format_table
    from elm_data.manifests.build import build_manifest
    from elm_data.manifests.croissant import export_croissant
    from elm_data.manifests.plot import plot_audit
    from elm_data.manifests.verify import verify_manifest
    from elm_data.sources.sample import write_sample_corpus

    t = _step("1/6 sample corpus: every source and subset in its native on-disk format")
    mixture = write_sample_corpus(paths["sample corpus"], seed=0, heldout_fraction=DEMO_HELDOUT_FRACTION)
    _done(t, f"wrote {mixture}")

    t = _step("2/6 build manifest: hash, read, filter (OpenELM rule), count tokens per shard")
    built = build_manifest(
        mixture, paths["manifest"], tokenizer=tokenizer_uri, workers=workers, progress=True
    )
    totals = built.totals
    _done(
        t,
        f"manifest {built.manifest_id[:16]}…: {built.shards} shards, {totals['docs_read']:,} documents read, "
        f"{totals['docs_kept']:,} kept, {totals['tokens']:,} tokens",
    )

    t = _step("3/6 verify and audit against the OpenELM target mix")
    report = verify_manifest(paths["manifest"])
    if not report.ok:
        raise ElmDataError(report.summary())
    audit = audit_manifest(paths["manifest"], targets="openelm")
    click.echo(format_table(audit))
    plot_audit(audit, paths["audit plot"])
    export_croissant(paths["manifest"], paths["croissant"])
    _done(t, f"{report.shards_checked} shards verified; plot and Croissant written")


def _model_stages(paths: dict[str, Path], tokenizer_uri: str, steps: int | None) -> None:
    """Stages 4-6: a tiny OpenELM trained on the stream, the run's audit, the Hugging Face export."""
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.loop import train
    from elm_data.trainer.export.hf import export_checkpoint
    from elm_data.trainer.proof.audit import audit_run
    from elm_data.trainer.proof.report import write_report

    t = _step(
        f"4/6 train a tiny OpenELM on the packed, mixed stream ({steps or DEMO_TRAINING['max_steps']} steps)"
    )
    overrides = DEMO_TRAINING | ({"max_steps": steps} if steps else {})
    config = TrainConfig.from_yaml(
        demo_config_path(), manifest=str(paths["manifest"]), tokenizer=tokenizer_uri, **overrides
    )
    result = train(config, out_dir=paths["training run"])
    _done(t, f"{result.final_step} steps, loss {result.first_loss:.3f} → {result.last_loss:.3f}")
    _say_heldout(paths["training run"])

    t = _step("5/6 which data did the run eat?")
    click.echo(audit_run(paths["training run"]).format_table())
    _done(t, "run audited against its manifest")

    t = _step("6/6 export the checkpoint: Hugging Face folder (loads offline) with tokenizer and model card")
    export_checkpoint(result.checkpoint, paths["hf export"], tokenizer=tokenizer_uri, echo=click.echo)
    _done(t, f"exported {result.checkpoint}")
    page = write_report(paths["training run"])  # after the export, so the page links its model card
    click.echo(f"report: {page.html} (receipt {page.receipt.split(':')[0]}; open it in a browser)")


def _say_heldout(run_dir: Path) -> None:
    """One line on the run's last held-out evaluation (per-source loss on documents it never trained on)."""
    from elm_data.trainer.core.runlog import effective_steps, read_log

    held = effective_steps(read_log(run_dir), "heldout")
    if held:
        losses = held[-1]["loss_by_source"]
        low, high = min(losses, key=losses.get), max(losses, key=losses.get)
        step, sources = held[-1]["step"], len(losses)
        click.echo(
            f"held-out loss at step {step} ({sources} sources, documents never trained on): "
            f"{losses[low]:.3f} ({low}) to {losses[high]:.3f} ({high})"
        )


@command("demo")
@retries_option
@click.argument("out_dir", default="demo", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tokenizer", default=None, help="LLaMA SentencePiece model (else $ELM_DATA_TOKENIZER, else the cache)."
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps [default: 20].")
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Manifest build processes."
)
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo in OUT_DIR.")
def demo(out_dir: Path, tokenizer: str | None, steps: int | None, workers: int, overwrite: bool) -> None:
    """Run the whole product on the bundled sample corpus and say where every output is."""
    paths = run_demo(out_dir, tokenizer=tokenizer, steps=steps, workers=workers, overwrite=overwrite)
    click.secho("\nOutputs", bold=True)
    for what, path in paths.items():
        click.echo(f"  {what:<14} {path}")
    click.echo(
        f"\nNext: elm-data audit {paths['manifest']}   |   elm-data stream {paths['manifest']} --take 2"
    )
