"""`elm-data eval`: OpenELM's zero-shot suite through lm-evaluation-harness, plus held-out perplexity.

Benchmarks: ``lm_eval.simple_evaluate`` with its ``hf`` model on a Hugging Face export (a checkpoint is
exported to a temporary folder first), ``add_bos_token=True`` as Apple evaluates OpenELM (rolling-perplexity
documents are scored after one BOS, not lm-eval's two: :func:`one_bos_hf_lm`). The default tasks are OpenELM's
zero-shot suite; they download their data from the Hugging Face hub, so without it the command stops with one
line. ``--include-path`` adds local task YAMLs (e.g. ``dataset_path: json`` over a local file).

Held-out perplexity (a checkpoint inside a run): the stream resumed from the checkpoint's own stream state
yields exactly the tokens the run would have read next, i.e. documents it has not consumed, as long as the run
has not yet passed over the whole manifest (then nothing is held out and the result says so). A document split
across the checkpoint's last batch contributes its unseen remainder. Packed sequences, as trained; pad labels
ignored.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from elm_data.core.errors import ElmDataError
from elm_data.core.outputs import write_atomic
from elm_data.manifests.manifest import Manifest
from elm_data.pipeline.stream.consumed import ConsumedTokens
from elm_data.pipeline.tokenizer import PAD_ID

from ..core.checkpoint import load_checkpoint_model, read_stream_state
from ..core.config import ConfigError, TrainConfig
from ..core.distributed import DistInfo
from ..core.loop import build_loader, load_tokenizer
from ..core.loss import loss_sums, split_inputs_labels
from ..proof.audit import audit_run
from .hf import export_checkpoint, newest_checkpoint, run_of

OPENELM_TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "sciq", "winogrande")


class EvalError(ElmDataError, RuntimeError):
    """An evaluation that cannot run (missing extra, unreachable hub, unknown task)."""


def lm_eval_results(
    model_dir: str | Path,
    tasks: list[str],
    limit: int | None = None,
    include_path: str | Path | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    log_samples: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on an export folder (it must carry the tokenizer)."""
    try:
        import lm_eval
        from lm_eval.tasks import get_task_dict
    except ImportError as error:
        raise EvalError("elm-data eval needs lm-eval: pip install 'elm-data[eval]'") from error
    if not (Path(model_dir) / "tokenizer_config.json").is_file():
        raise EvalError(f"{model_dir} has no tokenizer: export with --tokenizer (or $ELM_DATA_TOKENIZER)")
    manager = task_manager(tasks, include_path)
    try:
        get_task_dict(tasks, manager)  # loads the data now, so an unreachable hub fails here in one line
    except (ConnectionError, OSError) as error:
        raise EvalError(
            f"the tasks' data could not be loaded ({str(error).splitlines()[0][:200]}): the default tasks "
            "need the "
            "Hugging Face hub (or its cache); offline, pass --tasks with --include-path to local task YAMLs"
        ) from error
    model = one_bos_hf_lm(
        pretrained=str(model_dir),
        trust_remote_code=True,
        add_bos_token=True,
        dtype="float32",
        batch_size=batch_size,
        device=device,
    )
    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=manager, limit=limit, log_samples=log_samples
    )


def one_bos_hf_lm(**model_args: Any):
    """lm-eval's ``hf`` model (``HFLM(**model_args)``) whose rolling log-likelihoods condition on one BOS.

    With ``add_bos_token=True`` (as Apple evaluates OpenELM) lm-eval's ``loglikelihood_rolling`` encodes each
    document with the tokenizer's BOS and then prefixes the first window with ``prefix_token_id`` (BOS) again,
    so perplexity tasks scored ``log p(BOS | BOS)`` and every token after a doubled BOS (bits per byte 5.727
    instead of 5.594 on one run). Here the rolling encoding adds no special token: the document is scored as
    ``log p(t_1 .. t_n | BOS)``, the model's training frame. Multiple-choice and generation keep the
    tokenizer's BOS (``_encode_pair`` has no prefix of its own).
    """
    from lm_eval.models.huggingface import HFLM

    class OneBosHFLM(HFLM):
        rolling = False

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            self.rolling = True
            try:
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            finally:
                self.rolling = False

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            if self.rolling and add_special_tokens is None:
                # lm-eval puts prefix_token_id (BOS) before the first window itself
                add_special_tokens = False
            return super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)

    return OneBosHFLM(**model_args)


def task_manager(tasks: list[str], include_path: str | Path | None):
    """lm-eval's task index: only ``include_path`` when it holds every task (indexing lm-eval's own thousands
    of task files takes most of a small run), else lm-eval's tasks plus ``include_path``."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise EvalError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    return manager


@torch.inference_mode()
def held_out_perplexity(checkpoint: str | Path, batches: int = 8) -> dict[str, Any]:
    """Mean next-token loss and perplexity on the next ``batches`` batches the run did not consume."""
    run = run_of(checkpoint)
    if run is None:
        return {"skipped": "not a checkpoint of a run directory: no stream state to know what was consumed"}
    audit = audit_run(run.run_dir, at_step=run.step)
    passed = [r.key for r in audit.rows if r.fraction_consumed is not None and r.fraction_consumed >= 1.0]
    if passed:
        return {
            "skipped": f"the run consumed every kept token of {', '.join(passed)}: nothing there is held out"
        }
    try:
        config = TrainConfig.from_dict(run.header["config"], base_dir=run.run_dir)
    except ConfigError as error:  # a run logged by another version of the trainer
        return {"skipped": f"cannot rebuild the run's stream from its logged config: {error}"}
    manifest = Manifest(run.header["manifest_dir"])
    loader = build_loader(config, manifest, load_tokenizer(config, manifest), DistInfo(0, 1))
    loader.load_state_dict(read_stream_state(run.checkpoint))
    model = load_checkpoint_model(checkpoint).eval()
    total, count, sources = 0.0, 0, ConsumedTokens()
    for index, batch in enumerate(loader):
        if index == batches:
            break
        inputs, labels = split_inputs_labels(batch["input_ids"], model.config.vocab_size, PAD_ID)
        sums = loss_sums(model(inputs), labels, PAD_ID)
        total, count = total + float(sums.ce), count + int(sums.count)
        sources.add(batch["tokens_by_source"])
    if not count:
        return {"skipped": "the stream has no unseen tokens left after this checkpoint"}
    loss = total / count
    result = {"step": run.step, "tokens": count, "loss": loss, "perplexity": math.exp(loss)}
    return result | {"tokens_by_source": sources.to_dict()}


def evaluate(
    target: str | Path,
    tasks: list[str] | None = None,
    limit: int | None = None,
    include_path: str | Path | None = None,
    out: str | Path | None = None,
    heldout_batches: int = 8,
    tokenizer: str | None = None,
    echo=print,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a checkpoint or an export; write the results JSON (default: beside the run) and return it."""
    target = newest_checkpoint(target)
    tasks = list(OPENELM_TASKS if tasks is None else tasks)
    run = run_of(target)
    report: dict[str, Any] = {"target": str(target), "tasks": tasks, "limit": limit}
    with tempfile.TemporaryDirectory(prefix="elm-data-eval-") as tmp:
        model_dir = target
        if (target / "model_config.json").is_file():  # our checkpoint: evaluate its export
            model_dir = export_checkpoint(target, Path(tmp) / "hf", tokenizer=tokenizer, echo=lambda *_: None)
        results = lm_eval_results(model_dir, tasks, limit, include_path) if tasks else {}
    report["results"] = results.get("results", {})
    report["versions"] = results.get("versions", {})
    report["n-samples"] = results.get("n-samples", {})
    if run is not None and heldout_batches:
        report["held_out"] = held_out_perplexity(target, heldout_batches)
    if out is None:
        out = (
            run.run_dir / "eval" / f"{target.name}.json" if run is not None else target / "eval_results.json"
        )
    write_atomic(out, json.dumps(report, indent=2, default=str) + "\n")
    return report, Path(out)


def format_report(report: dict[str, Any]) -> str:
    """One line per task metric, then the held-out perplexity."""
    lines = [f"{'task':<24}{'metric':<16}{'value':>10}{'stderr':>10}"]
    for task, metrics in report.get("results", {}).items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or key.endswith("_stderr,none") or "," not in key:
                continue
            stderr = metrics.get(key.replace(",", "_stderr,", 1))
            err = f"{stderr:.4f}" if isinstance(stderr, (int, float)) else "-"
            lines.append(f"{task:<24}{key.split(',')[0]:<16}{value:>10.4f}{err:>10}")
    held = report.get("held_out")
    if held:
        if "skipped" in held:
            lines.append(f"held-out perplexity: skipped ({held['skipped']})")
        else:
            lines.append(
                f"held-out perplexity {held['perplexity']:.2f} (loss {held['loss']:.4f}) on "
                f"{held['tokens']:,} "
                f"tokens the run did not consume after step {held['step']}"
            )
    return "\n".join(lines)
