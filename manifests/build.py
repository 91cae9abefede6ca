"""Build a manifest from a mixture config: plan shards, count them (locally or with Beam), assemble.

Deterministic: shards are counted independently and assembled in mixture order, so the manifest id
and the parquet bytes do not depend on ``workers`` or the runner. Resumable: every counted shard is
committed to ``OUT.partial/`` first (see :mod:`.workspace`); a re-run after a crash reuses them.
Nothing half-written looks complete: the manifest directory appears atomically at the very end.
With ``dropped_samples=K`` each shard also commits its first K dropped records per reason, merged
at assembly into ``dropped_samples.jsonl`` (an inspection aid outside the manifest's identity).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from elm_data.core import __version__
from elm_data.core.errors import ElmDataError, InvalidValue, NotFound, OutputExists
from elm_data.core.outputs import old_path, output_lock, recover_dir
from elm_data.core.procs import die_with_parent, usable_cores
from elm_data.core.redact import redact_text, redact_uri
from elm_data.pipeline.document_pass import DocumentPass
from elm_data.pipeline.dropped import DroppedSamples
from elm_data.pipeline.tokenizer import LlamaTokenizer, resolve_tokenizer
from elm_data.sources import remote
from elm_data.sources.blocks import BLOCK_BYTES
from elm_data.sources.document import REJECT_SCHEMA, REJECT_TRUNCATED, REJECT_UNREADABLE
from elm_data.sources.registry import get_subset

from .heldout import HeldoutSelector
from .identity import FORMAT_VERSION, pass_config_hash, seal
from .manifest import DROPPED_SAMPLES_FILE, MANIFEST_FILE, Manifest, write_manifest_dir
from .mixture import MixtureConfig
from .shard_records import ShardRecord
from .shard_work import COUNT_METHOD, PassSpec, ShardOutcome, ShardTask, process_shard, process_shards
from .targets import load_targets
from .workspace import BuildWorkspace, workspace_path_for

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

RUNNERS = ("local", "beam", "beam-portable")


class BuildFailed(ElmDataError, RuntimeError):
    """Some shards could not be counted; ``failures`` lists (uri, message). No manifest was written."""

    def __init__(self, failures: list[tuple[str, str]], workspace: str):
        self.failures = failures = [(redact_uri(uri), redact_text(message)) for uri, message in failures]
        lines = "\n".join(f"  {uri}: {message}" for uri, message in failures)
        super().__init__(
            f"{len(failures)} shard(s) could not be counted; no manifest was written "
            f"(completed shards are kept in {workspace} for the next run):\n{lines}"
        )


class WorkerDied(ElmDataError, RuntimeError):
    """A local worker process died (e.g. killed for memory); the committed shards survive."""


@dataclass
class BuildResult:
    manifest_dir: Path
    manifest_id: str
    merkle_root: str
    shards: int
    shards_reused: int
    totals: dict[str, Any] = field(default_factory=dict)
    remote: dict[str, Any] = field(default_factory=dict)  # remote reads of the shards counted: retries, bytes
    tokenizer: dict[str, Any] = field(default_factory=dict)  # manifest.json's tokenizer record


SYNTHETIC_LICENCE = (
    "synthetic text (elm-data's sample generator), not a real corpus: no upstream licence applies"
)


def upstream_for(source: str, subset: str, uri: str, synthetic: bool = False) -> tuple[str, str | None]:
    """(licence, upstream location) of a shard: both from the sources registry; a synthetic shard (the sample,
    ``synthetic: true``) derives from no upstream file and carries no upstream licence."""
    spec = get_subset(source, subset)  # an unknown source/subset is refused here, synthetic or not
    if synthetic:
        return SYNTHETIC_LICENCE, None
    return spec.licence, spec.upstream_uri(uri)


def plan_shards(
    mixture: MixtureConfig, block_bytes: int = BLOCK_BYTES, allow_local: bool = False
) -> list[ShardTask]:
    """Every shard of the mixture, in mixture order, numbered from 0."""
    tasks: list[ShardTask] = []
    held = HeldoutSelector(mixture.seed, mixture.heldout.fraction)
    for entry in mixture.entries:
        for uri in mixture.resolve_shards(entry, allow_local):
            licence, upstream = upstream_for(entry.source, entry.subset, uri, mixture.synthetic)
            tasks.append(
                ShardTask(len(tasks), entry.source, entry.subset, uri, licence, upstream, block_bytes, held)
            )
    return tasks


# -- the local runner: a process pool, one DocumentPass per worker ------------------------------
_worker_state: dict[str, Any] = {}


@dataclass
class SharedCores:
    """What the pool's workers know of each other (counters in shared memory), to give the cores of the
    workers that have finished to the ones still counting.

    ``queued``: work items no worker has started; ``busy``: workers counting one now.
    """

    workers: int
    queued: Any  # multiprocessing.Value("i")
    busy: Any  # multiprocessing.Value("i")

    cores: int = 1  # the cores the pool may use: min(workers, this process' cores)

    @classmethod
    def of(cls, ctx: Any, workers: int, items: int) -> SharedCores:
        return cls(workers, ctx.Value("i", items), ctx.Value("i", 0), max(1, min(workers, usable_cores())))

    def threads(self) -> int:
        """SentencePiece threads for a worker's next batch: 1 while items wait (every core has a worker);
        once none does, the pool's cores shared among the workers still counting, so the last shards end on
        every core instead of one."""
        if self.queued.value > 0:
            return 1
        return max(1, self.cores // max(1, self.busy.value))

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """One work item started (no longer queued) and counted by this worker."""
        with self.queued.get_lock():
            self.queued.value -= 1
        with self.busy.get_lock():
            self.busy.value += 1
        try:
            yield
        finally:
            with self.busy.get_lock():
                self.busy.value -= 1


class CoreSharingPass(DocumentPass):
    """A pool worker's pass: each batch on :meth:`SharedCores.threads` SentencePiece threads (the same ids on
    any number). Set in :meth:`encode`, the one tokenizer call that ``process`` and a split pass
    (``prepare`` / ``encode`` / ``finish``, as the stream runs it) both go through."""

    cores: SharedCores | None = None

    def encode(self, texts):
        if self.cores is not None:
            self.num_threads = self.cores.threads()
        return super().encode(texts)


def _init_worker(
    spec: PassSpec,
    workspace_path: str,
    config_hash: str,
    dropped_per_reason: int = 0,
    remote_settings=None,
    cores: SharedCores | None = None,
) -> None:
    die_with_parent()  # a killed build leaves no worker still counting and committing shards
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker must not raise the CLI's Terminated
    remote.configure(**(remote_settings or {}))  # the parent's retry policy and storage options
    _worker_state["pass"] = document_pass = spec.build(CoreSharingPass)
    document_pass.cores = cores
    _worker_state["workspace"] = BuildWorkspace(workspace_path, config_hash)
    _worker_state["dropped_per_reason"] = dropped_per_reason


def _work(tasks: Sequence[ShardTask]) -> list[ShardOutcome]:
    state = _worker_state
    cores = state["pass"].cores
    with cores.counting() if cores is not None else contextlib.nullcontext():
        return list(_in_turn(tasks, state["pass"], state["workspace"], state["dropped_per_reason"]))


def _in_turn(tasks, document_pass, workspace, dropped_per_reason) -> Iterator[ShardOutcome]:
    """The tasks counted one after the other, each next shard fetched meanwhile (``process_shard`` looked up
    here)."""
    return process_shards(tasks, document_pass, workspace, dropped_per_reason, lambda *a: process_shard(*a))


def local_size(uri: str) -> int | None:
    """The size in bytes of a shard on the local disk; None for a remote one (or one not there: its own count
    reports that)."""
    try:
        fs, path = remote.filesystem(uri)
        return os.path.getsize(path) if not remote.is_remote(fs) else None
    except (OSError, ValueError):
        return None


def _groups(
    tasks: Sequence[ShardTask], workers: int, sizes: Sequence[int | None] | None = None
) -> list[Sequence[ShardTask]]:
    """The pool's work items, in the order they are handed out (each a worker's next item when it is free).

    Local shards (every one of ``sizes`` known): one shard an item, the largest first, so the last items
    are the smallest and the workers finish together (a longest-first schedule; counting time follows size).
    Otherwise consecutive shards in groups a worker counts in turn, fetching each next shard while counting
    one: up to 4 per group while every worker still gets about 2 groups (a lone shard overlaps nothing).
    """
    if sizes is not None and tasks and all(size is not None for size in sizes):
        by_size = sorted(range(len(tasks)), key=lambda i: (-sizes[i], i))
        return [[tasks[i]] for i in by_size]
    size = max(1, min(4, len(tasks) // (2 * workers)))
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


def _start_method() -> str:
    """How worker processes start: forked from this process on Linux, so they begin with its imports and
    its loaded tokenizer (~0.5 s sooner than a fork server's fresh interpreter, which imports the pipeline
    and parses the model again); elsewhere (no safe fork) a fork server, else spawn."""
    if sys.platform.startswith("linux"):
        return "fork"
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def run_local(
    tasks: Sequence[ShardTask],
    spec: PassSpec,
    workspace: BuildWorkspace,
    workers: int = 1,
    dropped_per_reason: int = 0,
) -> Iterator[ShardOutcome]:
    """Count shards in ``workers`` processes (in-process for 1), yielding outcomes in shard order."""
    if workers <= 1 or len(tasks) <= 1:
        yield from _in_turn(tasks, spec.build(), workspace, dropped_per_reason)
        return
    from concurrent.futures import ProcessPoolExecutor  # here: a one-process build never starts a pool
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context(_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["elm_data.manifests.shard_work"])
    groups = _groups(tasks, workers, [local_size(t.uri) for t in tasks])
    cores = SharedCores.of(ctx, min(workers, len(tasks)), len(groups))
    pool = ProcessPoolExecutor(
        cores.workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(spec, workspace.path, workspace.config_hash, dropped_per_reason, remote.settings(), cores),
    )
    try:
        yield from _in_task_order(pool, groups, tasks)
    except BrokenProcessPool as e:
        raise WorkerDied(
            f"a worker process died while counting shards (out of memory?); committed shards are kept in "
            f"{workspace.path} and a re-run resumes from them"
        ) from e
    finally:  # on error or interruption: drop queued shards; running ones finish and commit atomically
        pool.shutdown(wait=False, cancel_futures=True)


def _in_task_order(
    pool: ProcessPoolExecutor, groups: Sequence[Sequence[ShardTask]], tasks: Sequence[ShardTask]
) -> Iterator[ShardOutcome]:
    """Every group submitted to ``pool`` in the order given; the outcomes yielded in the order of ``tasks``,
    each as soon as it and every one before it are counted."""
    where = {}
    for group in groups:
        future = pool.submit(_work, group)
        where.update({task.shard: (future, n) for n, task in enumerate(group)})
    for task in tasks:
        future, n = where[task.shard]
        yield future.result()[n]


# -- assembly ----------------------------------------------------------------------------------
class _CommittedDocuments(Sequence):
    """The per-shard documents tables, read lazily from the workspace while the manifest is written."""

    def __init__(self, workspace: BuildWorkspace, count: int):
        self.workspace, self.count = workspace, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, shard: int) -> pa.Table:
        if not 0 <= shard < self.count:
            raise IndexError(shard)
        return self.workspace.read_documents(shard)


# Rejections that stand for a damaged shard rather than a bad record: part or all of the shard could
# not be read, so how many documents it held is unknown. They fail the build unless accepted.
DAMAGE_REASONS = (REJECT_SCHEMA, REJECT_TRUNCATED, REJECT_UNREADABLE)


def collect(
    tasks: Sequence[ShardTask], workspace: BuildWorkspace, accept_damaged: bool = False
) -> list[ShardRecord]:
    """The committed records of ``tasks``; raises :class:`BuildFailed` naming every shard that is not.

    A shard whose reader reported it damaged (truncated, unreadable, wrong schema) counts as failed
    too, unless ``accept_damaged``: then its damage stays in the manifest as counted rejections.
    """
    records, failures = [], []
    for task in tasks:
        error = workspace.error(task.shard)
        done = workspace.committed(task.shard)
        if error is not None:
            failures.append((task.uri, error["error"]))
        elif (
            done is None
            or done.config_hash != workspace.config_hash
            or done.record.uri != redact_uri(task.uri)
        ):
            failures.append((task.uri, "not counted (the runner did not commit a result)"))
        else:
            records.append(done.record)
            damage = {r: n for r, n in done.record.rejected_by_reason.items() if r in DAMAGE_REASONS}
            if damage and not accept_damaged:
                failures.append(
                    (
                        task.uri,
                        f"damaged shard ({', '.join(f'{r}: {n}' for r, n in damage.items())}); "
                        "fix or replace it, or accept the damage as counted rejections "
                        "(--accept-damaged)",
                    )
                )
    if failures:
        raise BuildFailed(failures, workspace.path)
    return records


def collect_dropped(records: Sequence[ShardRecord], workspace: BuildWorkspace, per_reason: int) -> bytes:
    """``dropped_samples.jsonl``: the first ``per_reason`` dropped records per reason in manifest order.

    Reads the shards' committed samples one at a time, so memory stays at ``per_reason`` per reason.
    """
    merged = DroppedSamples(per_reason)
    for record in records:
        if record.docs_filtered or record.docs_rejected:
            workspace.offer_dropped(record.shard, merged)
    return merged.to_jsonl()


def manifest_info(
    mixture: MixtureConfig,
    records: Sequence[ShardRecord],
    tokenizer: LlamaTokenizer,
    pass_description: dict[str, Any],
    targets: dict[str, Any] | None,
) -> dict[str, Any]:
    """``manifest.json``: everything the id covers, sealed by :func:`~.identity.seal` (the one place that
    computes the id, Merkle root, totals and per-entry shard counts; ``None`` marks what it fills in)."""
    weights = [{"source": e.source, "subset": e.subset, "weight": e.weight} for e in mixture.entries]
    info = {
        "format_version": FORMAT_VERSION,
        "manifest_id": None,
        "merkle_root": None,
        "name": mixture.name,
        "synthetic": mixture.synthetic,
        # a name only when the sha is known
        "tokenizer": tokenizer.describe() | {"uri": redact_uri(tokenizer.uri)},
        "filters": mixture.filters.to_dict(),
        "pass": pass_description,
        "sequences": mixture.sequences.to_dict(),
        "seed": mixture.seed,
        "heldout": mixture.heldout.to_dict(),
        "mixture": [
            w | {"shards": [redact_uri(p) for p in e.shards], "resolved_shards": None}
            for w, e in zip(weights, mixture.entries, strict=True)
        ],
        "targets": targets,
        "count_method": COUNT_METHOD,
        "tool": {"name": "elm-data", "version": __version__},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "totals": None,
    }
    return seal(info, records)


def _check_output_dir(out_dir: Path, overwrite: bool = False) -> None:
    if out_dir.exists() and not (out_dir / MANIFEST_FILE).exists() and any(out_dir.iterdir()):
        raise OutputExists(f"{out_dir} exists and is not a manifest directory; refusing to replace it")
    if (out_dir / MANIFEST_FILE).exists() and not overwrite:
        raise OutputExists(
            f"{out_dir} already holds a manifest; pass --overwrite (overwrite=True) to replace it and "
            "everything "
            "in it, or choose another --out"
        )


def _one_build_per_output(build: Callable[..., BuildResult]) -> Callable[..., BuildResult]:
    """Run ``build`` holding the lock of its output directory, after undoing what a killed build left
    there."""

    @functools.wraps(build)
    def locked(mixture_path: str | Path, out_dir: str | Path, *args: Any, **kwargs: Any) -> BuildResult:
        with output_lock(Path(out_dir), "manifest build"):
            recover_dir(Path(out_dir))
            return build(mixture_path, out_dir, *args, **kwargs)

    return locked


@_one_build_per_output
def build_manifest(
    mixture_path: str | Path,
    out_dir: str | Path,
    tokenizer: str | None = None,
    workers: int = 1,
    runner: str = "local",
    restart: bool = False,
    progress: bool = False,
    on_shard_done: Callable[[ShardOutcome], None] | None = None,
    beam_args: Sequence[str] | None = None,
    workspace: str | None = None,
    dropped_samples: int = 0,
    accept_damaged: bool = False,
    block_bytes: int = BLOCK_BYTES,
    overwrite: bool = False,
    allow_local_shards: bool = False,
    retries: remote.RetryPolicy | None = None,
) -> BuildResult:
    """Count every shard of a mixture and write the manifest directory ``out_dir`` atomically.

    ``tokenizer``: the ``--tokenizer`` flag (else the mixture's ``tokenizer:``, else ``$ELM_DATA_TOKENIZER``).
    ``restart`` discards an interrupted build's workspace. ``allow_local_shards``: a shard list that is not a
    local file may name local paths (``shard_lists.confine``). ``on_shard_done`` is called with each shard's
    outcome (local runner) as it completes.
    ``workspace``: where per-shard results go (default ``OUT.partial``); an fsspec URL every
    worker can reach when Beam runs on a cluster.
    ``accept_damaged``: record damaged shards (truncated, unreadable, wrong schema) as counted
    rejections instead of failing the build.
    ``block_bytes``: target size of a plain-JSONL block in the block index (the unit the stream verifies,
    resumes from and spreads over partitions).
    ``dropped_samples``: K > 0 also writes ``dropped_samples.jsonl``, the first K filtered documents and
    K rejected records per reason in manifest order (shard, then index); it changes neither the
    manifest id nor the parquet files.
    ``retries``: how remote reads are retried (else the mixture's ``retries:``); counted in ``remote``.
    ``overwrite``: replace a manifest already at ``out_dir`` (else :class:`OutputExists`). One build per
    ``out_dir`` at a time (:class:`~elm_data.core.errors.OutputLocked` names the holder).
    Raises :class:`BuildFailed` naming every shard that is missing, changed or unreadable.
    """
    _check_build_args(runner, dropped_samples, block_bytes)
    out_dir = Path(out_dir)
    _check_output_dir(out_dir, overwrite)
    mixture = MixtureConfig.load(mixture_path)
    # here and in the workers (None: as is)
    remote.configure(retries or mixture.retries, mixture.storage_options)
    tok = resolve_tokenizer(tokenizer, mixture.tokenizer)  # recorded as an absolute path or URL + sha256
    spec = PassSpec(mixture.filters, mixture.sequences, tok)
    pass_description = spec.build().describe() | _dedup_description(mixture.filters.dedup)
    targets = load_targets(mixture.targets, base_dir=mixture.base_dir) if mixture.targets else None
    tasks = plan_shards(mixture, block_bytes, allow_local_shards)
    key = pass_config_hash(pass_description, spec.sequences.to_dict(), block_bytes, _heldout_key(mixture))
    work = _open_workspace(workspace or workspace_path_for(str(out_dir)), key, restart)
    counting = (workers, beam_args, dropped_samples, runner, progress, on_shard_done)
    reused, fetched = _count_shards(tasks, spec, work, *counting)
    records, documents = _assembled(tasks, work, accept_damaged, mixture.filters.dedup)
    info = manifest_info(mixture, records, tok, pass_description, targets)
    write_manifest_dir(out_dir, info, records, documents, _extra_files(records, work, dropped_samples))
    work.remove()
    ids, totals = (info["manifest_id"], info["merkle_root"]), (info["totals"], remote.add_counts({}, fetched))
    return BuildResult(out_dir, *ids, len(records), reused, *totals, info["tokenizer"])


def _extra_files(records, work: BuildWorkspace, dropped_samples: int) -> dict[str, bytes] | None:
    """The manifest's optional files: ``dropped_samples.jsonl`` when ``dropped_samples`` > 0."""
    return (
        {DROPPED_SAMPLES_FILE: collect_dropped(records, work, dropped_samples)} if dropped_samples else None
    )


def _count_shards(tasks, spec, work, workers, beam_args, dropped_samples, runner, progress, on_shard_done):
    """``(shards reused, remote reads' counts)`` of counting ``tasks`` with the local runner or Beam."""
    if runner == "local":
        return _count_locally(tasks, spec, work, workers, dropped_samples, progress, on_shard_done)
    return _count_with_beam(tasks, spec, work, beam_args, dropped_samples, runner, progress)


def _assembled(tasks, work: BuildWorkspace, accept_damaged: bool, dedup: str | None):
    """The committed shard records and their ledgers (lazily), after ``filters.dedup``'s removals when set:
    which copies go is decided over every shard, in manifest order (``dedup_filter.py``)."""
    records = collect(tasks, work, accept_damaged)
    documents = _CommittedDocuments(work, len(records))
    if dedup is None:
        return records, documents
    from .dedup_filter import dedup_build  # with its audit modules: only for a mixture that dedups

    return dedup_build(records, documents, work.read_signatures, dedup)


def _dedup_description(mode: str | None) -> dict[str, Any]:
    """``pass.dedup`` (in the id and the workspace key) for ``filters.dedup``; refuses a missing datasketch
    first."""
    if mode is None:
        return {}
    from .dedup_filter import describe, signer_for

    signer_for(mode)  # minhash without the dedup extra: the pip line, before a shard is read
    return describe(mode)


def _heldout_key(mixture: MixtureConfig) -> dict[str, Any]:
    """What the held-out choice depends on besides a document: the seed and the fraction (a workspace key)."""
    return {"seed": mixture.seed, **mixture.heldout.to_dict()}


def _count_with_beam(tasks, spec, work, beam_args, dropped_samples: int, runner: str, progress: bool):
    """Count ``tasks`` as a Beam pipeline (with a bar of finished shards when ``progress``); reuses none;
    returns the remote reads' counts of Beam's workers (its counters), as the local runner's."""
    from .beam import run_beam

    with _polled_progress(work, len(tasks), progress):
        return 0, run_beam(tasks, spec, work, beam_args, dropped_samples, portable=runner == "beam-portable")


@contextlib.contextmanager
def _polled_progress(
    work: BuildWorkspace, shards: int, progress: bool, every_s: float = 1.0
) -> Iterator[None]:
    """A bar (stderr, with the time left) of the shards the Beam workers have finished, read from the
    workspace every ``every_s`` seconds while the pipeline runs (Beam reports nothing to the submitting
    process)."""
    if not progress:
        yield
        return
    from tqdm import tqdm

    stop = threading.Event()
    bar = tqdm(total=shards, unit="shard", desc="counting shards (beam)", dynamic_ncols=True)

    def poll() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(OSError):
                bar.update(min(shards, work.finished_shards()) - bar.n)

    poller = threading.Thread(target=poll, name="beam-progress", daemon=True)
    poller.start()
    try:
        yield
        bar.update(min(shards, work.finished_shards()) - bar.n)
    finally:
        stop.set()
        poller.join()
        bar.close()


def _check_build_args(runner: str, dropped_samples: int, block_bytes: int) -> None:
    if runner not in RUNNERS:
        raise InvalidValue(f"runner must be one of {RUNNERS}, got {runner!r}")
    if dropped_samples < 0:
        raise InvalidValue(f"dropped_samples must be >= 0, got {dropped_samples}")
    if block_bytes < 1:
        raise InvalidValue(f"block_bytes must be >= 1, got {block_bytes}")


def _open_workspace(path: str, config_hash: str, restart: bool) -> BuildWorkspace:
    """The build's workspace, created if absent; ``restart`` discards what an interrupted build committed."""
    work = BuildWorkspace(path, config_hash)
    if restart:
        work.remove()
    work.create()
    return work


def _count_locally(
    tasks: Sequence[ShardTask],
    spec: PassSpec,
    work: BuildWorkspace,
    workers: int,
    dropped_samples: int,
    progress: bool,
    on_shard_done: Callable[[ShardOutcome], None] | None,
) -> tuple[int, dict[str, Any]]:
    """Count ``tasks`` with the local runner, reporting each outcome; returns how many shards were reused and
    the remote reads' counts (retries, bytes fetched)."""
    fetched: dict[str, Any] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="shard", desc="counting shards", dynamic_ncols=True)
    reused = tokens = failed = 0
    try:
        for outcome in run_local(tasks, spec, work, workers, dropped_samples):
            reused += outcome.reused
            fetched = remote.add_counts(fetched, outcome.remote)
            failed += outcome.error is not None
            tokens += outcome.record.tokens if outcome.record is not None else 0
            if bar is not None:
                bar.set_postfix(tokens=f"{tokens:,}", reused=reused, failed=failed)
                bar.update(1)
            if on_shard_done is not None:
                on_shard_done(outcome)
    finally:
        if bar is not None:
            bar.close()
    return reused, fetched


def load_manifest(path: str | Path, verify: bool = True) -> Manifest:
    """Open a manifest directory with a readable error when it is not one (``verify``: see ``Manifest``)."""
    path = Path(path)
    if not path.exists() and old_path(path).is_dir():  # a replace killed between its renames: undo it
        with output_lock(path, "manifest build"):
            recover_dir(path)
    if not (path / MANIFEST_FILE).exists() and Path(workspace_path_for(str(path))).exists():
        raise NotFound(
            f"{path}: not a manifest yet — an interrupted build left {path}.partial; re-run the build"
        )
    if not path.exists():
        raise NotFound(f"{path}: no such manifest directory")
    return Manifest(path, verify=verify)
