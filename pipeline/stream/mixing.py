"""Deterministic, resumable mixing of per-source document cursors.

Both mixers are functions of their position, so a stream resumes from a small state instead of
replaying its past:

- :func:`proportional_draws` (natural proportions): source ``i``'s ``k``-th item sits at time
  ``(k + phase_i) / n_i`` on a shared [0, 1) timeline (``phase_i`` seeded) and items come out in time
  order. Any stretch covering a fraction ``f`` of the pass holds ``f · n_i`` items of source ``i``,
  give or take one, all sources end together, and the state is how many items each source gave.
- :class:`WeightedDraws` (target weights): draw ``n`` picks a source with probability ∝ its weight
  from a uniform number that depends only on ``(seed, n)``; the state is ``n``.

Nothing depends on wall time, process or worker: same inputs and seed give the same sequence.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
from collections.abc import Iterator, Sequence
from itertools import accumulate

DRAW_BLOCK = 1024  # uniforms generated per seeded block of weighted draws


def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed derived from ``seed`` and labels, stable across processes and Python versions."""
    text = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def permutation(n: int, seed: int, *parts: object) -> list[int]:
    """A seeded permutation of ``range(n)``."""
    order = list(range(n))
    random.Random(derive_seed(seed, "perm", *parts)).shuffle(order)
    return order


def proportional_draws(counts: Sequence[int], seed: int, drawn: Sequence[int] | None = None) -> Iterator[int]:
    """The source of every next item until each source ``i`` gave ``counts[i]``, after ``drawn[i]`` were
    taken."""
    rng = random.Random(seed)
    phases = [rng.random() for _ in counts]
    taken = list(drawn or [0] * len(counts))
    if len(taken) != len(counts) or any(not 0 <= t <= n for t, n in zip(taken, counts, strict=True)):
        raise ValueError(f"drawn {list(taken)} does not fit counts {list(counts)}")
    heap = [((taken[i] + phases[i]) / n, i) for i, n in enumerate(counts) if taken[i] < n]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        taken[i] += 1
        if taken[i] < counts[i]:
            heapq.heappush(heap, ((taken[i] + phases[i]) / counts[i], i))
        yield i


class WeightedDraws:
    """Draw ``n``'s source, ∝ ``weights``, from the ``n``-th uniform of a seeded counter-based sequence."""

    def __init__(self, weights: Sequence[float], seed: int):
        if any(w < 0 for w in weights):
            raise ValueError(f"mixing weights must be >= 0, got {list(weights)}")
        if not any(w > 0 for w in weights):
            raise ValueError("at least one mixing weight must be > 0")
        self.cumulative = list(accumulate(weights))
        self.seed = seed
        self._block, self._uniforms = -1, []

    def source_at(self, n: int) -> int:
        block, offset = divmod(n, DRAW_BLOCK)
        if block != self._block:
            rng = random.Random(derive_seed(self.seed, "draws", block))
            self._block, self._uniforms = block, [rng.random() for _ in range(DRAW_BLOCK)]
        u = self._uniforms[offset] * self.cumulative[-1]
        return min(bisect.bisect_right(self.cumulative, u), len(self.cumulative) - 1)
