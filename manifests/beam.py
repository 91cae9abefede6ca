"""The per-shard counting as an Apache Beam pipeline (``elm-data build manifest --runner beam``).

``Create(shard tasks) -> Reshuffle -> ParDo(CountShardFn)``: each worker builds its own
``DocumentPass`` once (``DoFn.setup``) and commits each shard to the build workspace, exactly as the
local runner does; the driver then assembles the manifest from the workspace, so a Beam build and a
local build give the same manifest id and byte-identical parquet files. The tokenizer travels
inside the pickled DoFn (its model bytes), so workers need no access to the tokenizer file.

Without ``--runner`` in the pipeline arguments this uses the in-process DirectRunner (never the
Prism runner, which downloads a binary). For Flink, Spark or Dataflow pass their pipeline options
and a workspace every worker can reach (see docs/manifests.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from .shard_work import PassSpec, ShardTask, process_shard
from .workspace import BuildWorkspace

METRICS_NAMESPACE = "elm_data.manifest"


class CountShardFn(beam.DoFn):
    """Count one shard into the shared workspace; emits ``(shard, ok, reused)``."""

    def __init__(self, spec: PassSpec, workspace_path: str, config_hash: str, dropped_per_reason: int = 0):
        self.spec, self.workspace_path, self.config_hash = spec, workspace_path, config_hash
        self.dropped_per_reason = dropped_per_reason
        self.counted = Metrics.counter(METRICS_NAMESPACE, "shards_counted")
        self.reused = Metrics.counter(METRICS_NAMESPACE, "shards_reused")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "shards_failed")
        self.tokens = Metrics.counter(METRICS_NAMESPACE, "tokens")

    def setup(self) -> None:
        self._pass = self.spec.build()
        self._workspace = BuildWorkspace(self.workspace_path, self.config_hash)

    def process(self, task: ShardTask):
        outcome = process_shard(task, self._pass, self._workspace, self.dropped_per_reason)
        if outcome.error is not None:
            self.failed.inc()
        elif outcome.reused:
            self.reused.inc()
        else:
            self.counted.inc()
            self.tokens.inc(outcome.record.tokens)
        yield task.shard, outcome.error is None, outcome.reused


def count_shards(
    pipeline: beam.Pipeline,
    tasks: Sequence[ShardTask],
    spec: PassSpec,
    workspace: BuildWorkspace,
    dropped_per_reason: int = 0,
):
    """Add the counting stages to ``pipeline``; returns the PCollection of ``(shard, ok, reused)``.

    ``dropped_per_reason``: K > 0 also commits each shard's first K dropped records per reason.
    """
    return (
        pipeline
        | "ShardTasks" >> beam.Create(list(tasks))
        | "SpreadShards" >> beam.Reshuffle()
        | "CountShards" >> beam.ParDo(CountShardFn(spec, workspace.path, workspace.config_hash, dropped_per_reason))
    )


def pipeline_options(beam_args: Sequence[str] | None = None) -> PipelineOptions:
    """Options from ``beam_args``; without an explicit runner: DirectRunner, in-memory."""
    options = PipelineOptions(list(beam_args or []))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"
    if standard.runner in ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"):
        direct = options.view_as(DirectOptions)
        if not direct.direct_running_mode:
            direct.direct_running_mode = "in_memory"
    return options


def run_beam(
    tasks: Sequence[ShardTask],
    spec: PassSpec,
    workspace: BuildWorkspace,
    beam_args: Sequence[str] | None = None,
    dropped_per_reason: int = 0,
) -> None:
    """Run the counting pipeline to completion; results land in ``workspace``."""
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        count_shards(pipeline, tasks, spec, workspace, dropped_per_reason)
