"""Per-step health of a run: how well the loss is learned and whether the loader and the machine keep up.

The trainer adds these fields to each ``step`` record of the run log (beside ``loss``, ``lr``, ``grad_norm``,
``tokens_per_s``, ``mfu``, ``data_wait_s`` and ``step_time_s``, which it measures itself). They are
measurements, not part of the consumption receipt: ``audit-run --verify`` never recomputes them (no plan can),
and no figure about the data depends on them.

- ``loss_mean``: the mean ``loss`` of this step record and the ``LOSS_WINDOW - 1`` step records before it
(fewer
  at the start). A resumed run seeds the window from the log's effective step records, so its values equal an
  uninterrupted run's.
- ``data_share``: ``data_wait_s / step_time_s``, the share of the step spent waiting for the loader (the
stall).
- ``peak_memory_bytes``: on CUDA, the most memory torch allocated on the device since the previous step record
  (``torch.cuda.max_memory_allocated``, reset after each record); elsewhere the process's peak resident set
  size so far (``getrusage``'s ``ru_maxrss``), which never falls.

:func:`progress_postfix` is the live line of ``train``'s progress bar: loss (raw and mean), tokens/s, stall
and the current per-source shares of the tokens consumed.
"""

from __future__ import annotations

import resource
import sys
from collections import deque
from typing import Any

import torch

from .runlog import effective_steps

LOSS_WINDOW = 20  # step records in the running mean of the loss
HEALTH_FIELDS = ("loss_mean", "data_share", "peak_memory_bytes")  # measured, never part of the receipt
SHOWN_SOURCES = 4  # sources named in the progress bar's postfix (the largest shares; the rest summed)


class RunHealth:
    """The health fields of one run's step records (see the module's docstring); one per :class:`Trainer`."""

    def __init__(self, device: torch.device, window: int = LOSS_WINDOW) -> None:
        self.device = device
        self.losses: deque[float] = deque(maxlen=window)

    def resume(self, records: list[dict[str, Any]]) -> None:
        """Seed the loss window from a log's records (the effective step records, as the run finally went)."""
        self.losses.clear()
        self.losses.extend(float(r["loss"]) for r in effective_steps(records) if "loss" in r)

    def fields(self, loss: float, data_wait_s: float, step_time_s: float) -> dict[str, Any]:
        """The health fields of a step record whose loss and timings these are (the loss joins the window)."""
        self.losses.append(float(loss))
        return {
            "loss_mean": sum(self.losses) / len(self.losses),
            "data_share": data_wait_s / step_time_s if step_time_s > 0 else 0.0,
            "peak_memory_bytes": self.peak_memory_bytes(),
        }

    def peak_memory_bytes(self) -> int:
        """CUDA: the peak allocated on the device since the last call; else the process's peak RSS so far."""
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            return peak
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def source_shares(tokens_by_source: dict[str, int]) -> dict[str, float]:
    """Each ``source/subset``'s share of the tokens consumed so far, largest first."""
    total = sum(tokens_by_source.values())
    if not total:
        return {}
    return {k: n / total for k, n in sorted(tokens_by_source.items(), key=lambda kv: (-kv[1], kv[0]))}


def progress_postfix(record: dict[str, Any]) -> str:
    """The progress bar's postfix for the latest step record: loss (mean), tok/s, stall and source shares."""
    parts = [
        f"loss {record['loss']:.3f} (mean {record['loss_mean']:.3f})",
        f"{record['tokens_per_s']:,.0f} tok/s",
    ]
    parts.append(f"stall {record['data_share']:.0%}")
    shares = list(source_shares(record.get("tokens_by_source") or {}).items())
    named = [f"{key} {share:.0%}" for key, share in shares[:SHOWN_SOURCES]]
    if len(shares) > SHOWN_SOURCES:
        named.append(f"+{len(shares) - SHOWN_SOURCES} more {sum(s for _, s in shares[SHOWN_SOURCES:]):.0%}")
    if named:
        parts.append(" ".join(named))
    return " | ".join(parts)
