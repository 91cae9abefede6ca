"""The per-shard counting as an Apache Beam pipeline (``elm-data build manifest --runner beam``).

``Create(shard tasks) -> Reshuffle -> ParDo(CountShardFn)``: each worker builds its own
``DocumentPass`` once (``DoFn.setup``) and commits each shard to the build workspace, exactly as the
local runner does; the driver then assembles the manifest from the workspace, so a Beam build and a
local build give the same manifest id and byte-identical parquet files. The tokenizer travels
inside the pickled DoFn (its model bytes), so workers need no access to the tokenizer file; so do the
driver's retry policy and storage options (``sources/remote.py``), and each worker's remote reads (retries
by reason, reads that gave up, bytes fetched) come back as Beam counters (``remote_*``), which
:func:`remote_counts` adds up for the build summary, as the local runner's counts are.

Without ``--runner`` in the pipeline arguments this uses the in-process DirectRunner (never the
Prism runner, which downloads a binary). For Flink, Spark or Dataflow pass their pipeline options
and a workspace every worker can reach (see docs/manifests.md).

``elm-data build manifest --runner beam-portable`` (``run_beam(..., portable=True)``) runs the same
pipeline through Beam's portability layer, as Flink, Spark and Dataflow do, on this machine and offline:
a ``PortableRunner`` submits the pipeline proto to Beam's local job service, whose ``FnApiRunner`` has an
SDK worker started by an external worker pool (``--environment_type=EXTERNAL``); the job service, the
pool and the worker are each a process of their own (:func:`local_job_service`, :func:`local_worker_pool`),
started for the run and stopped after it, and every gRPC server among them listens on 127.0.0.1 only.
Beam's local job service drives one SDK worker, so this checks the portable path; it is not faster.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import apache_beam as beam
import grpc
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

from elm_data.core.procs import die_with_parent
from elm_data.sources import remote

from .shard_work import PassSpec, ShardTask, process_shard
from .workspace import BuildWorkspace

METRICS_NAMESPACE = "elm_data.manifest"
LOOPBACK = "127.0.0.1"
SERVICE_START_TIMEOUT_S = 120.0  # importing apache_beam alone takes seconds on a busy machine
STOP_TIMEOUT_S = 10.0
SERVICE_MODULE = "elm_data.manifests.beam"  # this module, by its installed name: ``python -m`` it
REMOTE_COUNTER = "remote_"  # remote_retries, remote_failed, ...; remote_retries_by_reason/<reason>


class CountShardFn(beam.DoFn):
    """Count one shard into the shared workspace; emits ``(shard, ok, reused)``."""

    def __init__(self, spec: PassSpec, workspace_path: str, config_hash: str, dropped_per_reason: int = 0):
        self.spec, self.workspace_path, self.config_hash = spec, workspace_path, config_hash
        self.dropped_per_reason = dropped_per_reason
        self.counted = Metrics.counter(METRICS_NAMESPACE, "shards_counted")
        self.reused = Metrics.counter(METRICS_NAMESPACE, "shards_reused")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "shards_failed")
        self.tokens = Metrics.counter(METRICS_NAMESPACE, "tokens")
        self.remote_settings = remote.settings()  # the driver's retry policy and storage options

    def setup(self) -> None:
        remote.configure(**self.remote_settings)
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
        count_remote(outcome.remote)
        yield task.shard, outcome.error is None, outcome.reused


def count_remote(counts: dict) -> None:
    """Add one shard's remote-read counts (a ``remote.RemoteStats.to_dict`` delta) to this worker's Beam
    counters."""
    for name in remote.COUNTS:
        if counts.get(name):
            Metrics.counter(METRICS_NAMESPACE, REMOTE_COUNTER + name).inc(counts[name])
    for reason, n in counts.get("retries_by_reason", {}).items():
        Metrics.counter(METRICS_NAMESPACE, f"{REMOTE_COUNTER}retries_by_reason/{reason}").inc(n)


def remote_counts(result) -> dict:
    """The remote-read counts of every worker of a finished pipeline (``remote.add_counts`` shaped), from its
    committed counters (attempted ones where a runner commits none)."""
    from apache_beam.metrics.metric import MetricsFilter

    total: dict = {"retries_by_reason": {}}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        if name.startswith(f"{REMOTE_COUNTER}retries_by_reason/"):
            reason = name.split("/", 1)[1]
            total["retries_by_reason"][reason] = total["retries_by_reason"].get(reason, 0) + value
        elif name.startswith(REMOTE_COUNTER) and name[len(REMOTE_COUNTER) :] in remote.COUNTS:
            total[name[len(REMOTE_COUNTER) :]] = total.get(name[len(REMOTE_COUNTER) :], 0) + value
    return remote.add_counts({}, total)


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
        | "CountShards"
        >> beam.ParDo(CountShardFn(spec, workspace.path, workspace.config_hash, dropped_per_reason))
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
    portable: bool = False,
) -> dict:
    """Run the counting pipeline to completion; results land in ``workspace``; returns the workers'
    remote-read counts (:func:`remote_counts`).

    ``portable``: run through Beam's portability layer on this machine: a ``PortableRunner`` submits the
    pipeline to a local job service whose SDK worker comes from a local worker pool, each in a process of
    its own, started here and stopped after the run, also when it fails or is interrupted (see
    :func:`portable_args`). ``beam_args`` still apply after the portable ones (a later option wins).
    """
    with ExitStack() as stack:
        args = list(beam_args or [])
        if portable:  # the pool is stopped last: the job service first lets go of its workers
            pool, job_service = stack.enter_context(local_services("worker-pool", "job-service"))
            args = portable_args(job_service, pool) + args
        options = pipeline_options(args)
        if on_this_machine(options):
            stack.enter_context(job_service_on_loopback())  # the embedded job service's servers live here
        with beam.Pipeline(options=options) as pipeline:
            count_shards(pipeline, tasks, spec, workspace, dropped_per_reason)
        return remote_counts(pipeline.result)


# -- the portability layer on this machine: job service, external worker pool, loopback-only servers ------


def portable_args(job_endpoint: str, pool_address: str) -> list[str]:
    """Pipeline options for a ``PortableRunner`` on the job service at ``job_endpoint`` (``host:port``, or
    ``embed``: one in this process) with SDK workers from the external worker pool at ``pool_address``."""
    return [
        "--runner=PortableRunner",
        f"--job_endpoint={job_endpoint}",
        "--environment_type=EXTERNAL",
        f"--environment_config={pool_address}",
    ]


def on_this_machine(options: PipelineOptions) -> bool:
    """A ``PortableRunner`` on the embedded job service whose SDK workers come from a worker pool on a
    loopback address: every endpoint of the run can then stay on 127.0.0.1."""
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint != "embed" or portable.environment_type not in (
        "EXTERNAL",
        "beam:env:external:v1",
    ):
        return False
    host = (portable.environment_config or "").rpartition(":")[0].strip("[]")
    return host in (LOOPBACK, "localhost", "::1")


def _loopback(address: str) -> str:
    """``[::]:PORT`` / ``0.0.0.0:PORT`` / ``:PORT`` (every interface), ``localhost:PORT`` ->
    ``127.0.0.1:PORT``."""
    host, sep, port = address.rpartition(":")
    return f"{LOOPBACK}:{port}" if sep and host in ("", "[::]", "0.0.0.0", "::", "localhost") else address


@contextmanager
def job_service_on_loopback() -> Iterator[None]:
    """While open, a job service in this process listens on 127.0.0.1 only and tells SDK workers to come
    there.

    Beam binds its control, data, state, logging and artifact-staging servers to every interface
    (``[::]:0``), and tells workers of an external pool to reach them at this host's fully qualified name.
    Here every gRPC server created in this process binds to 127.0.0.1 where it asked for every interface
    or for ``localhost``, and external workers are given 127.0.0.1 (the pool is on this machine).
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    real_server, real_host = grpc.server, worker_handlers.ExternalWorkerHandler.host_from_worker

    def loopback_server(*args, **kwargs):
        server = real_server(*args, **kwargs)
        add_insecure_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_insecure_port(_loopback(address))
        return server

    grpc.server = loopback_server
    worker_handlers.ExternalWorkerHandler.host_from_worker = lambda self: LOOPBACK
    try:
        yield
    finally:
        grpc.server = real_server
        worker_handlers.ExternalWorkerHandler.host_from_worker = real_host


@contextmanager
def local_services(*kinds: str, max_seconds: float | None = None) -> Iterator[list[str]]:
    """Start ``python -m elm_data.manifests.beam KIND`` for each KIND (``job-service``, ``worker-pool``)
    together, each on a free port of 127.0.0.1; yield their ``127.0.0.1:PORT``s; on exit stop them, last
    first, with every process they started. They also stop by themselves when this process exits (even
    killed), and after ``max_seconds`` when given."""
    procs: list[subprocess.Popen] = []
    try:
        for kind in kinds:
            command = [
                sys.executable,
                "-m",
                SERVICE_MODULE,
                kind,
                "--port",
                "0",
                "--parent-pid",
                str(os.getpid()),
            ]
            if max_seconds is not None:
                command += ["--max-seconds", str(max_seconds)]
            # Its own session: a Ctrl-C in the terminal reaches this process, which then stops the service.
            procs.append(
                subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
                )
            )
        yield [
            f"{LOOPBACK}:{_read_port(proc, kind, SERVICE_START_TIMEOUT_S)}"
            for proc, kind in zip(procs, kinds, strict=True)
        ]
    finally:
        for proc in reversed(procs):
            _stop(proc)


@contextmanager
def local_worker_pool(max_seconds: float | None = None) -> Iterator[str]:
    """An external SDK worker pool (:class:`WorkerPool`) in a process of its own: ``with ... as address``."""
    with local_services("worker-pool", max_seconds=max_seconds) as (address,):
        yield address


@contextmanager
def local_job_service(max_seconds: float | None = None) -> Iterator[str]:
    """Beam's local job service in a process of its own, all its servers on 127.0.0.1: ``with ... as
    endpoint``."""
    with local_services("job-service", max_seconds=max_seconds) as (endpoint,):
        yield endpoint


def _read_port(proc: subprocess.Popen, kind: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"the Beam {kind} did not start within {timeout_s:.0f} s")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
        if ready:
            line = proc.stdout.readline().decode().strip()
            if line.isdigit():
                return int(line)
            raise RuntimeError(f"the Beam {kind} failed to start (exit code {proc.poll()}, said {line!r})")
        if proc.poll() is not None:
            raise RuntimeError(f"the Beam {kind} exited with code {proc.returncode} before serving")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; reaps the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# Run by each SDK worker process (argv: control endpoint, worker id, the pool's pid): it dies with the pool
# (at once if the pool is already gone), then serves the job service's control endpoint.
_SDK_WORKER = (
    "import sys; from elm_data.core.procs import die_with_parent; die_with_parent(int(sys.argv[3])); "
    "from apache_beam.runners.worker.sdk_worker import SdkHarness; "
    "SdkHarness(sys.argv[1], worker_id=sys.argv[2], state_cache_size=0, data_buffer_time_limit_ms=-1).run()"
)


class WorkerPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Beam's external worker pool service: one SDK harness process per ``StartWorker`` request, run with
    this interpreter (Beam's own ``worker_pool_main`` runs whatever ``python`` is on the PATH)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._workers: dict[str, subprocess.Popen] = {}

    def StartWorker(self, request, context):  # noqa: N802 (the gRPC method name)
        command = [
            sys.executable,
            "-c",
            _SDK_WORKER,
            request.control_endpoint.url,
            request.worker_id,
            str(os.getpid()),
        ]
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as e:
            return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start an SDK worker: {e}")
        with self._lock:
            self._workers[request.worker_id] = proc
        return beam_fn_api_pb2.StartWorkerResponse()

    def StopWorker(self, request, context):  # noqa: N802
        with self._lock:
            proc = self._workers.pop(request.worker_id, None)
        if proc is not None:
            _stop(proc)
        return beam_fn_api_pb2.StopWorkerResponse()

    def stop_all(self) -> None:
        with self._lock:
            procs, self._workers = list(self._workers.values()), {}
        for proc in procs:
            _stop(proc)


def _serve(start, port: int, parent_pid: int | None, max_seconds: float | None) -> None:
    """Run a service process: ``start(port) -> (bound port, stop callable)``; print the bound port as the
    first line of stdout; serve until SIGTERM/SIGINT, ``max_seconds`` or the exit of ``parent_pid``; then stop
    and leave at once (a job still running in a thread of Beam's job service would otherwise keep it
    alive)."""
    if parent_pid is not None:
        die_with_parent(parent_pid)  # the workers of a pool die with it in turn (they watch the pool)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    try:
        bound, shutdown = start(port)
        try:
            print(bound, flush=True)
            stop.wait(max_seconds)
        finally:
            shutdown()
    except BaseException as e:  # noqa: BLE001 (reported, then the process leaves with code 1)
        print(f"error: {e!r}", file=sys.stderr, flush=True)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start_worker_pool(port: int):
    from concurrent.futures import ThreadPoolExecutor

    pool = WorkerPool()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    bound = server.add_insecure_port(f"{LOOPBACK}:{port}")
    server.start()

    def shutdown():
        server.stop(0)
        pool.stop_all()

    return bound, shutdown


def _start_job_service(port: int):
    from apache_beam.runners.portability.local_job_service import LocalJobServicer

    loopback = ExitStack()  # for the life of the process: each job starts its servers later
    loopback.enter_context(job_service_on_loopback())
    servicer = LocalJobServicer()  # a temporary staging folder, removed by stop()
    bound = servicer.start_grpc_server(port)  # the job API and artifact staging, both on 127.0.0.1

    def shutdown():
        servicer.stop()
        loopback.close()

    return bound, shutdown


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m elm_data.manifests.beam worker-pool|job-service [--port N]``: a loopback-only external SDK
    worker pool (for ``--environment_type=EXTERNAL --environment_config=127.0.0.1:N``) or Beam's local job
    service (for ``--runner=PortableRunner --job_endpoint=localhost:N``)."""
    parser = argparse.ArgumentParser(prog="python -m elm_data.manifests.beam")
    parser.add_argument("service", choices=["worker-pool", "job-service"])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one); printed")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process exits")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    start = _start_worker_pool if args.service == "worker-pool" else _start_job_service
    _serve(start, args.port, args.parent_pid, args.max_seconds)


if __name__ == "__main__":
    main()
