"""Fixed-bucket latency histograms (what ``metrics.py`` exports).

A :class:`LatencyHistogram` counts durations into fixed upper bounds (in
seconds), Prometheus style: ``observe`` is one bisect and three additions
under a lock. It depends on nothing, so the compactor can time its passes
whether or not anyone reads them (a pass is long: the cost is nil), and the
timed wrappers ``metrics.register`` binds use the same type.

Thread-safety: safe (a leaf lock per histogram).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import List, Sequence, Tuple

__all__ = ["LatencyHistogram", "OP_BOUNDS", "PASS_BOUNDS"]

#: Upper bounds (seconds) for single operations: 1 us to 1 s.
OP_BOUNDS: Tuple[float, ...] = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
                                1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)
#: Upper bounds (seconds) for compaction passes: 1 ms to 2 min.
PASS_BOUNDS: Tuple[float, ...] = (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
                                  2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class LatencyHistogram:
    """Counts of durations per upper bound, their number and their sum.

    >>> h = LatencyHistogram((0.001, 0.01))
    >>> h.observe(0.0005); h.observe(0.005); h.observe(5.0)
    >>> h.snapshot()
    ([(0.001, 1), (0.01, 2), (inf, 3)], 3, 5.0055)

    Runtime complexity: ``observe`` O(log buckets).
    """

    __slots__ = ("bounds", "_counts", "_count", "_sum", "_lock")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct and increasing")
        self.bounds: Tuple[float, ...] = tuple(float(b) for b in bounds)
        self._counts: List[int] = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Count one duration (seconds)."""
        i = bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[i] += 1
            self._count += 1
            self._sum += seconds

    def snapshot(self) -> Tuple[List[Tuple[float, int]], int, float]:
        """``(cumulative [(upper bound, count <= it)], count, sum)``; the
        last bound is ``inf`` (every observation)."""
        with self._lock:
            counts, count, total = list(self._counts), self._count, self._sum
        out, running = [], 0
        for bound, c in zip(self.bounds + (float("inf"),), counts):
            running += c
            out.append((bound, running))
        return out, count, round(total, 12)
