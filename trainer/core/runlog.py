"""The run's JSONL log (``RUN_DIR/log.jsonl``): a header naming the data, then one record per logged step.

Records (one JSON object per line, ``"event"`` says which):

- ``header``  — manifest id and dir, tokenizer sha256, the full training config, the model config, parameter
  count, code version (elm_data version + git commit), device, world size, the stream's initial state;
- ``step``    — step, loss, ce_loss, z_loss, lr, grad_norm, tokens (this step), tokens_total, tokens_per_s,
  mfu (null where the device's peak FLOPs are unknown, e.g. CPU), data_wait_s, step_time_s and
  ``tokens_by_source`` (cumulative tokens consumed per ``source/subset``, from the loader's consumed tokens);
- ``heldout`` — per-source loss, perplexity and bits per byte on the manifest's held-out documents at a step
  (``heldout_eval.py``; every ``heldout_every`` steps and at the end), with the documents, tokens and bytes
  scored;
- ``resume``  — a run continued from a checkpoint (step records after it supersede any later ones before it);
- ``checkpoint`` / ``end`` — a checkpoint written; the run finished.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import elm_data.core
from elm_data.core.canonical_json import json_safe
from elm_data.core.errors import ElmDataError, NotFound
from elm_data.core.outputs import disk_full_error

# The per-source fields of a ``heldout`` record (each ``{source/subset: value}``), besides ``step``,
# ``event`` and ``eval_time_s`` (core/heldout_eval.py writes them; proof/audit.py declares them measurements).
HELDOUT_RECORD_FIELDS = (
    "loss_by_source",
    "perplexity_by_source",
    "bits_per_byte_by_source",
    "docs_by_source",
    "tokens_by_source",
    "bytes_by_source",
)

LOG_FILE = "log.jsonl"


class RunLogError(ElmDataError, ValueError):
    """A run log that is not as the trainer writes it (a line that is not JSON, other than a cut last one)."""


def code_version() -> dict[str, Any]:
    """``elm_data.core.__version__`` plus the git commit of the source tree, when it is a git checkout."""
    root = Path(elm_data.core.__file__).resolve().parents[2]
    commit, dirty = None, None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"elm_data": elm_data.core.__version__, "git_commit": commit, "git_dirty": dirty}


class RunLog:
    """Appends JSON records to ``log.jsonl``, flushing each so a killed run keeps what it logged.

    Opening an existing log drops a cut last line (what a writer killed mid-record left, which
    :func:`read_log` skips), so the records appended after it stay one per line."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.path = Path(run_dir) / LOG_FILE
        self.enabled = enabled
        self._file = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a+b")
            _drop_cut_last_line(self._file)

    def write(self, event: str, **fields: Any) -> None:
        """Append one record (``{"event": event, **fields}``) as a JSON line and flush it; a no-op when
        disabled."""
        if self._file is None:
            return
        line = json.dumps({"event": event, **fields}, default=json_safe) + "\n"
        try:
            self._file.write(line.encode("utf-8"))
            self._file.flush()
        except OSError as error:
            full = disk_full_error(self.path, error)
            if full is None:
                raise
            raise full from error

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_cut_last_line(handle) -> None:
    """Truncate ``handle`` (a log opened ``a+b``) after its last newline when its last line is incomplete."""
    size = handle.seek(0, 2)
    if size == 0:
        return
    handle.seek(max(0, size - 1))
    if handle.read(1) == b"\n":
        return
    end = size
    while end > 0:  # back to the last newline, a block at a time
        start = max(0, end - 65536)
        handle.seek(start)
        cut = handle.read(end - start).rfind(b"\n")
        if cut >= 0:
            handle.truncate(start + cut + 1)
            return
        end = start
    handle.truncate(0)


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``RUN_DIR/log.jsonl`` in order; a cut last line (a killed run) is skipped, any other
    bad line is a :class:`RunLogError`."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise NotFound(f"{run_dir} has no {LOG_FILE}: not a training run directory")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # a run killed mid-write leaves at most a partial last line; anything else is corruption
            if number != len(lines):
                raise RunLogError(f"{path}:{number} is not valid JSON") from None
    return records


def effective_steps(records: list[dict[str, Any]], event: str = "step") -> list[dict[str, Any]]:
    """The step records (or the records of another ``event`` with a ``step``, e.g. ``heldout``) of the run as
    it finally went: a resume from step k drops earlier records after k."""
    steps: list[dict[str, Any]] = []
    for record in records:
        if record.get("event") == "resume":
            steps = [r for r in steps if r["step"] <= record["from_step"]]
        elif record.get("event") == event:
            steps.append(record)
    return steps
