"""Follow-up work a client call does not wait for: hint stores, read repairs, watched stragglers.

A write returns once W replicas hold it and a read once R answered; what is
left (storing hints for the replicas that missed a write, repairing the
replicas a read found behind, watching requests still unanswered) runs
after the call. :class:`FollowUps` runs it on ``threads`` worker threads,
or inline when that is 0 (the simulated network, where everything is
deterministic), and :meth:`FollowUps.flush` waits for it.

A follow-up never fails the client call that made it: its errors are logged.

Thread-safety: safe.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

__all__ = ["FollowUps"]

log = logging.getLogger(__name__)


class _Watcher:
    """Calls still running after their client call returned: on failure, or on
    no answer by their deadline, ``on_fail`` runs (once). One daemon thread,
    started on first use."""

    def __init__(self, run: Callable[[Callable[[], None]], None]) -> None:
        self._run = run
        self._heap: List[Tuple[float, int, Future, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._firing = 0

    def watch(self, fut: Future, deadline: float, on_fail: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), fut, on_fail))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="abase-cluster-watcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        """Calls watched or whose follow-up is being scheduled."""
        with self._cond:
            return len(self._heap) + self._firing

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                fire: List[Callable[[], None]] = []
                keep = []
                for item in self._heap:
                    deadline, _s, fut, on_fail = item
                    if fut.done():
                        if fut.exception() is not None:
                            fire.append(on_fail)
                    elif deadline <= now:
                        fire.append(on_fail)
                    else:
                        keep.append(item)
                heapq.heapify(keep)
                self._heap = keep
                if not fire:
                    self._cond.wait(0.05 if self._heap else 1.0)
                    continue
                self._firing += len(fire)
            for fn in fire:
                try:
                    self._run(fn)
                finally:
                    with self._cond:
                        self._firing -= 1

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()


class FollowUps:
    """Runs the work client calls leave behind; :meth:`flush` waits for it.

    :param threads: worker threads; 0 runs each piece of work inline, in the
        thread that schedules it.
    """

    def __init__(self, threads: int) -> None:
        self._pool: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="abase-cluster-bg") if threads else None)
        self._outstanding = 0
        self._idle = threading.Condition()
        self._watcher = _Watcher(self.later)

    def later(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the call (on the pool) or now (inline); its errors are logged, never raised."""
        def run() -> None:
            try:
                fn()
            except Exception:  # follow-up work never fails a client call
                log.exception("cluster follow-up work failed")
            finally:
                with self._idle:
                    self._outstanding -= 1
                    if self._outstanding == 0:
                        self._idle.notify_all()

        with self._idle:
            self._outstanding += 1
        if self._pool is None:
            run()
        else:
            try:
                self._pool.submit(run)
            except RuntimeError:  # the pool is shut down: run here
                run()

    def watch(self, fut: Future, deadline: float, on_fail: Callable[[], None]) -> None:
        """Run ``on_fail`` (through :meth:`later`, once) if ``fut`` fails, or
        has no answer by ``deadline`` (monotonic s); nothing if it succeeds."""
        self._watcher.watch(fut, deadline, on_fail)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every piece of work and every watched call is settled.

        :return: True if all settled within ``timeout`` s (None: as long as it takes).
        """
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._idle:
                if self._outstanding == 0 and self._watcher.pending() == 0:
                    return True
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.02 if left is None else min(0.02, left))

    def close(self) -> None:
        """Stop the watcher thread and the pool (after the work it holds)."""
        self._watcher.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
