"""Deterministic weighted interleaving of per-source document cursors.

Each source is a function ``epoch -> iterator`` over its items. A seeded RNG picks the source of
every next item with probability proportional to its weight among the sources still active:

- ``restart=True`` (weighted mode): an exhausted source starts its next epoch, so the mix is endless
  and the long-run proportions of draws follow the weights;
- ``restart=False``: an exhausted source drops out and the mix ends when every source is exhausted,
  so each item is yielded exactly once.

Natural proportion uses :func:`proportional_interleave` instead: no sampling noise at all, every
source is spread evenly over the whole pass and all sources end together.

Nothing depends on wall time, process or worker: same inputs and seed give the same sequence.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import TypeVar

T = TypeVar("T")


def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed derived from ``seed`` and labels, stable across processes and Python versions."""
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def permutation(n: int, seed: int, *parts: object) -> list[int]:
    """A seeded permutation of ``range(n)``."""
    order = list(range(n))
    random.Random(derive_seed(seed, "perm", *parts)).shuffle(order)
    return order


def weighted_interleave(
    sources: Sequence[Callable[[int], Iterator[T]]],
    weights: Sequence[float],
    seed: int,
    *,
    restart: bool,
) -> Iterator[tuple[int, T]]:
    """Yield ``(source_position, item)`` drawn from ``sources`` by a seeded weighted RNG.

    Sources with weight 0 are never drawn. With ``restart=True`` a source that yields nothing in a
    whole epoch raises ``ValueError`` (it could never satisfy its weight).
    """
    if len(sources) != len(weights):
        raise ValueError("one weight per source is required")
    if any(w < 0 for w in weights):
        raise ValueError(f"mixing weights must be >= 0, got {list(weights)}")
    rng = random.Random(seed)
    epochs = [0] * len(sources)
    active = [i for i, w in enumerate(weights) if w > 0]
    iterators: dict[int, Iterator[T]] = {i: iter(sources[i](0)) for i in active}

    def cumulative() -> list[float]:
        return list(accumulate(weights[i] for i in active))

    cum = cumulative()
    while active:
        u = rng.random() * cum[-1]
        pos = min(bisect.bisect_right(cum, u), len(active) - 1)
        src = active[pos]
        try:
            item = next(iterators[src])
        except StopIteration:
            if restart:
                epochs[src] += 1
                iterators[src] = iter(sources[src](epochs[src]))
                try:
                    item = next(iterators[src])
                except StopIteration:
                    raise ValueError(f"source #{src} has no items to draw from (weight {weights[src]})") from None
            else:
                # natural mode: drop the source; the draw is repeated among the remaining ones
                del iterators[src]
                active.pop(pos)
                cum = cumulative()
                continue
        yield src, item


def proportional_interleave(
    sources: Sequence[Iterator[T]], counts: Sequence[int], seed: int
) -> Iterator[tuple[int, T]]:
    """Yield every item of every source once, each source spread evenly over the whole sequence.

    Source ``i``'s ``k``-th item is placed at time ``(k + phase_i) / counts[i]`` on a shared [0, 1)
    timeline (``phase_i`` seeded) and items come out in time order. Any stretch covering a fraction
    ``f`` of the pass holds ``f · counts[i]`` items of source ``i``, give or take one, so the mix has
    natural proportions at every point and all sources end together. ``counts`` must be exact.
    """
    if len(sources) != len(counts):
        raise ValueError("one count per source is required")
    rng = random.Random(seed)
    phases = [rng.random() for _ in sources]
    iterators = [iter(s) for s in sources]
    drawn = [0] * len(sources)
    heap = [(phases[i] / n, i) for i, n in enumerate(counts) if n > 0]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        try:
            item = next(iterators[i])
        except StopIteration:
            raise ValueError(f"source #{i} ended after {drawn[i]} of its {counts[i]} items") from None
        drawn[i] += 1
        if drawn[i] < counts[i]:
            heapq.heappush(heap, ((drawn[i] + phases[i]) / counts[i], i))
        yield i, item
    for i, it in enumerate(iterators):
        if next(it, None) is not None:
            raise ValueError(f"source #{i} has more than its {counts[i]} items")
