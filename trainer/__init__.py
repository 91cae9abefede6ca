"""Pretraining on a manifest's token stream, with a log that is a receipt of the data each step ate.

Entry points: ``train(TrainConfig(manifest=..., model="tiny", ...), out_dir=...)`` runs the loop (checkpoints
and ``log.jsonl``); ``Trainer`` (setup, restore, step, save, run, finish) and ``Checkpointer`` (save, load)
are its parts, for a script, or a subclass that changes a run through the Trainer's hooks;
``audit_run(run_dir)`` sums the tokens a run consumed per source/subset against its manifest;
``verify_run(run_dir)`` recomputes the run's consumption receipt from the manifest and the plan alone;
``trace_doc(run_dir, "source/subset:doc_id")`` finds where a document was consumed;
``export_checkpoint(checkpoint, out_dir)`` writes a Hugging Face folder with a model card;
``write_report(run_dir)`` writes the run's one-page HTML report (and its charts as PNGs). Names load on first
use (the loop imports torch).
"""

from __future__ import annotations

from elm_data.core.lazy import lazy_attributes

_ENTRY_POINTS = {
    "TrainConfig": "core.config",
    "train": "core.loop",
    "Trainer": "core.loop",
    "Checkpointer": "core.checkpoint",
    "audit_run": "proof.audit",
    "verify_run": "proof.audit",
    "trace_doc": "proof.trace",
    "export_checkpoint": "export.hf",
    "write_report": "proof.report",
}

__all__ = list(_ENTRY_POINTS)
__getattr__, __dir__ = lazy_attributes(__name__, _ENTRY_POINTS)
