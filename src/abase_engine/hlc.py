"""Hybrid logical clock (Kulkarni et al., 2014): :class:`HLC`.

A timestamp is physical milliseconds plus a logical counter, packed in 64
bits (``physical_ms << 16 | logical``), with the node id as the tiebreak, so
timestamps are unique and totally ordered across replicas. The algorithm
lives in C (``csrc/hlc.c``), where the engine's write path calls it under its
own lock; this class wraps the same C code for standalone use and tests.

Persistence: the engine's high-water mark is the greatest timestamp it has
written, kept by the log itself and, once compacted, in the store's ``meta``;
an engine reopened with its wall clock behind that mark keeps counting up
from it (``HLC(high_water=...)``), so it never issues a timestamp at or below
one it issued before.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from ._abase import ffi, lib
from .errors import ClockSkewError, error_for_status
from .record import Timestamp, from_packed

__all__ = ["HLC", "DEFAULT_MAX_CLOCK_SKEW_MS"]

#: A remote timestamp further ahead than this is refused (ClockSkewError).
DEFAULT_MAX_CLOCK_SKEW_MS = 500


class HLC:
    """A hybrid logical clock for one node.

    :param node_id: this node's id (0 .. 2**32-1), the tiebreak of equal clocks.
    :param clock: a callable returning wall-clock milliseconds; default: the
        system's real-time clock. Tests inject a fake.
    :param max_clock_skew_ms: how far ahead of our wall clock a remote
        timestamp may be before :meth:`update` refuses it.
    :param high_water: a floor (a :class:`Timestamp` or packed int); every
        timestamp issued is above it.
    :param sleep: with an injected ``clock``, called with seconds while the
        logical counter of the current millisecond is exhausted and the clock
        must advance (default ``time.sleep``); the counter never wraps. With
        the real clock the next millisecond is borrowed instead.

    >>> t = [1000]
    >>> c = HLC(7, clock=lambda: t[0])
    >>> c.now(), c.now()
    (Timestamp(1000, 0, 7), Timestamp(1000, 1, 7))

    Thread-safety: safe (an internal lock).
    """

    def __init__(
        self,
        node_id: int,
        *,
        clock: Optional[Callable[[], int]] = None,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
        high_water: "Timestamp | int | None" = None,
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        if not isinstance(node_id, int) or not 0 <= node_id <= 0xFFFFFFFF:
            raise ValueError(f"node_id must be an int in 0..2**32-1, got {node_id!r}")
        if not isinstance(max_clock_skew_ms, int) or max_clock_skew_ms < 0:
            raise ValueError("max_clock_skew_ms must be a non-negative int")
        self.node_id = node_id
        self.max_clock_skew_ms = max_clock_skew_ms
        self._clock = clock
        self._sleep = sleep or time.sleep
        self._state = ffi.new("abase_hlc *")
        self._out = ffi.new("uint64_t *")
        self._lock = threading.Lock()
        if high_water is not None:
            self.observe(high_water)

    def _wall(self) -> int:
        if self._clock is None:
            return -1  # C reads CLOCK_REALTIME itself
        ms = int(self._clock())
        if ms < 0:
            raise ValueError(f"wall clock reading out of range (must be 0 <= ms < 2**47), got {ms}")
        return ms

    def now(self) -> Timestamp:
        """Issue a timestamp for a local event, greater than every one before.

        Runtime complexity: O(1). When 65,536 events already used the
        millisecond, an injected clock is waited out (``sleep``); with the
        real clock the next millisecond is borrowed, never waited for.
        """
        with self._lock:
            while True:
                rc = lib.abase_hlc_now(self._state, self._wall(), self._out)
                if rc == lib.ABASE_EAGAIN:
                    self._sleep(0.0005)
                    continue
                _check_clock(rc)
                return from_packed(self._out[0], self.node_id)

    def update(self, remote: Timestamp) -> Timestamp:
        """Receive event: advance past ``remote`` and return a new local timestamp.

        :raises ClockSkewError: ``remote`` is more than ``max_clock_skew_ms``
            ahead of the wall clock; the clock does not move.
        """
        if not isinstance(remote, Timestamp):
            raise TypeError(f"HLC.update needs a Timestamp, not {type(remote).__name__}")
        with self._lock:
            while True:
                rc = lib.abase_hlc_update(self._state, remote.hlc, self._wall(), self.max_clock_skew_ms, self._out)
                if rc == lib.ABASE_EAGAIN:
                    self._sleep(0.0005)
                    continue
                if rc == lib.ABASE_ESKEW:
                    raise ClockSkewError(
                        f"remote timestamp {remote!r} is more than {self.max_clock_skew_ms} ms ahead of the local clock"
                    )
                _check_clock(rc)
                return from_packed(self._out[0], self.node_id)

    def observe(self, seen: "Timestamp | int") -> None:
        """Raise the floor to ``seen`` without a skew check (used at recovery)."""
        packed = seen.hlc if isinstance(seen, Timestamp) else int(seen)
        with self._lock:
            lib.abase_hlc_observe(self._state, packed)

    @property
    def high_water(self) -> int:
        """The packed value of the last timestamp issued or observed."""
        return int(self._state.last)


def _check_clock(rc: int) -> None:
    if rc != 0:
        raise error_for_status(rc, "hlc")
