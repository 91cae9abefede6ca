"""Experiment trackers a run may also write to, opt-in by the config's ``trackers:`` section: TensorBoard
(``RUN_DIR/tensorboard``, through ``torch.utils.tensorboard``) and Weights & Biases in offline mode
(``RUN_DIR/wandb/offline-run-*``; ``wandb sync`` uploads it later, if ever).

Each receives, at each step record, the same scalars as the run log (:func:`record_scalars`): every numeric
field of the record under its own name, and each per-source mapping as ``FIELD/source/subset``. The log stays
the record of the run (the receipt); a tracker is a view of it. Neither package is needed to train: a tracker
enabled without its package is refused before the first step with a one-line hint (``pip install
'elm-data[track]'``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .config import ConfigError, TrackersConfig

INSTALL_HINT = "pip install 'elm-data[track]'"


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a step record: numeric fields by name (``step`` aside, nulls left out), per-source
    mappings flattened to ``FIELD/source/subset``."""
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "event") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            scalars[key] = float(value)
        elif isinstance(value, dict):
            scalars.update({f"{key}/{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
    return scalars


def require(module: str, setting: str) -> None:
    """Refuse (one line, with the pip hint) a tracker whose package is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"trackers.{setting}: needs the {module} package: {INSTALL_HINT}")


class Trackers:
    """The open trackers of one run (none when the section enables none, or off rank 0)."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = writers

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Send a step record's scalars to every tracker."""
        if not self.writers:
            return
        scalars = record_scalars(record)
        for writer in self.writers:
            writer.log(step, scalars)

    def close(self) -> None:
        """Flush and close every tracker (idempotent)."""
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.close()


class _TensorBoard:
    def __init__(self, run_dir: Path, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run purges the events the interrupted run wrote past its checkpoint (as the log's resume
        # does)
        purge = first_step if first_step > 1 else None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class _WandbOffline:
    def __init__(self, run_dir: Path, project: str, config: dict[str, Any]) -> None:
        import wandb

        settings = wandb.Settings(silent=True, console="off")
        self.run = wandb.init(
            project=project,
            dir=str(run_dir),
            mode="offline",
            name=run_dir.name,
            config=config,
            settings=settings,
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(
    section: TrackersConfig,
    run_dir: Path,
    config: dict[str, Any],
    *,
    first_step: int = 1,
    enabled: bool = True,
) -> Trackers:
    """The trackers ``section`` enables, writing under ``run_dir`` (``config``: the run's settings, for W&B);
    ``first_step`` is the first step this invocation logs. None off rank 0 (``enabled`` False)."""
    if not enabled:
        return Trackers([])
    if section.tensorboard:
        require("tensorboard", "tensorboard")
    if section.wandb:
        require("wandb", "wandb")
    writers: list[Any] = []
    if section.tensorboard:
        writers.append(_TensorBoard(run_dir, first_step))
    if section.wandb:
        writers.append(_WandbOffline(run_dir, section.wandb_project, config))
    return Trackers(writers)
