"""The stream's saved state: one dict in plain types (``torch.load(weights_only=True)`` reads it back).

``{"version", "manifest_id", "plan", "global_batches", "batches", "rank", "world_size", "cursors",
"consumed"}``. ``global_batches``: global batches consumed by the whole run (all ranks in lockstep), so the
next batch of rank ``r`` is ``global_batches + r``; ``cursors``: for each partition this rank has read from,
its cursor after the last batch handed out (``partition.py``); ``consumed``: tokens per source handed out
since the run began (``consumed.py``). :func:`merge_states` joins the states of all ranks into one (no
``rank``, ``world_size`` or ``batches``), which any ``ranks × workers`` dividing the partition count can
resume from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from .consumed import ConsumedTokens
from .partition import Cursor
from .plan import PlanConfig, PlanError

STATE_VERSION = 3  # 3: the per-source token counts are saved as "consumed" (2 called them "ledger")


class MergedStreamState(TypedDict):
    """A stream state any ``ranks x workers`` dividing the partitions resumes (:func:`merge_states`)."""

    version: int
    manifest_id: str
    plan: dict[str, Any]  # PlanConfig.to_dict()
    global_batches: int
    cursors: dict[str, Cursor]  # partition (as a string) -> its cursor, in partition order
    consumed: dict[str, int]


class StreamState(MergedStreamState, total=False):
    """The saved stream state (see the module docstring): one rank's own has its layout too."""

    batches: int
    rank: int
    world_size: int


def stream_state(
    manifest_id: str,
    config: PlanConfig,
    global_batches: int,
    cursors: Mapping[int, Cursor],
    consumed: dict[str, int],
    rank: tuple[int, int, int] | None = None,
) -> StreamState:
    """The one builder of a stream state: ``rank`` = ``(batches, rank, world_size)`` for one rank's own state,
    None for a merged one (any layout resumes it). ``cursors`` by partition; saved in partition order."""
    state: Any = {  # keys in the order a state has always been saved in
        "version": STATE_VERSION,
        "manifest_id": manifest_id,
        "plan": config.to_dict(),
        "global_batches": global_batches,
    }
    if rank is not None:
        state["batches"], state["rank"], state["world_size"] = rank
    state["cursors"] = {str(p): c for p, c in sorted(cursors.items())}
    state["consumed"] = consumed
    return state


def merge_states(states: Sequence[StreamState]) -> MergedStreamState:
    """One stream state from every rank's (saved at the same step): all cursors, the consumed tokens
    summed."""
    first = states[0]
    if len({s["global_batches"] for s in states}) != 1 or len({s["manifest_id"] for s in states}) != 1:
        raise PlanError("stream states of different steps or manifests cannot be merged")
    consumed = ConsumedTokens()
    cursors: dict[str, Cursor] = {}
    for s in states:
        consumed.add(s["consumed"])
        cursors.update(s["cursors"])
    merged = {k: v for k, v in first.items() if k not in ("rank", "world_size", "batches")}
    ordered = dict(sorted(cursors.items(), key=lambda kv: int(kv[0])))
    return merged | {"cursors": ordered, "consumed": consumed.to_dict()}


def check_state(state: StreamState, manifest_id: str, config: PlanConfig, rank: int, world_size: int) -> None:
    """Refuse a state another stream wrote: other version, manifest or plan, a position ``world_size`` ranks
    cannot stand at, or one rank's state loaded by another layout (merge all ranks' states first)."""
    if state.get("version") != STATE_VERSION:
        raise PlanError(
            f"stream state version {state.get('version')} is not {STATE_VERSION}; start a new run"
        )
    if state.get("manifest_id") != manifest_id:
        raise PlanError(
            f"stream state is for manifest {state.get('manifest_id')}, the stream reads {manifest_id}"
        )
    mine, saved = config.to_dict(), state.get("plan") or {}
    differ = sorted(k for k in mine if saved.get(k) != mine[k])
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {mine[k]!r}" for k in differ)
        raise PlanError(f"stream state was saved with a different plan ({detail})")
    global_batches = int(state["global_batches"])
    if global_batches % world_size:
        raise PlanError(f"cannot resume at global batch {global_batches} with world_size {world_size}")
    if state.get("rank") is not None and (state["rank"], state["world_size"]) != (rank, world_size):
        raise PlanError("a single rank's stream state resumes only that rank; merge all ranks' states first")
