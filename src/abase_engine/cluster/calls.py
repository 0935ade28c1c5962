"""The client's call machinery: one protocol call to several replicas of a partition, driven to a deadline.

A :class:`Call` is one partition's share of a client call (the ``apply`` of
a write, the ``read`` of a get, ...): the replicas it may ask, the requests
in flight, the answers and the failures. :class:`CallRunner` sends calls
through the transport and drives them until each has ``need`` answers, a
replica refuses, or the deadline passes:

* a replica that fails as unavailable is retried (``attempts`` tries in
  all, pauses of ``backoff`` doubling each time) within the deadline;
* a call that is not ``spread`` (a read) asks ``need`` replicas, tops up
  with the next one when one fails, and also asks the next one, as a
  *hedge*, when still short of answers ``hedge_after`` s after its last
  send, so one slow replica costs a read ``hedge_after``, not the timeout;
* a replica that failed as unavailable, or is still silent at the deadline,
  is a *suspect* for ``suspect_seconds``: :meth:`CallRunner.order` puts it last.

Any other exception a replica raises is its *refusal* (``ClockSkewError``,
``MergeOperandError``, ...): it ends the call, and :meth:`Call.raise_refusal`
raises it again in the client.

Thread-safety: a :class:`CallRunner` is safe (its suspects are under a
lock); a :class:`Call` belongs to the thread that drives it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .context import ClientContext
from .errors import ReplicaUnavailableError
from .placement import replica_order
from .transport import ReplicaRef, failed

__all__ = ["Call", "CallRunner"]


class Call:
    """One partition's share of one protocol call, made to several of its replicas.

    :param partition: the partition.
    :param method: the replica protocol method (``apply``, ``read``, ...).
    :param args: its arguments.
    :param candidates: replica indexes to ask, in order.
    :param need: answers that make the call done.
    :param spread: send to every candidate at once (writes) rather than to
        ``need`` of them, topping up on failures (reads).

    After :meth:`CallRunner.drive`: ``ok`` maps replica index -> answer,
    ``errors`` index -> last unavailability, ``inflight`` index -> the
    future of a request still unanswered, ``refusal`` (index, exception) of
    the first replica that refused.
    """

    def __init__(self, partition: int, method: str, args: Sequence[Any], candidates: Sequence[int], need: int,
                 spread: bool) -> None:
        self.partition, self.method, self.args = partition, method, tuple(args)
        self.need, self.spread = need, spread
        self.unsent: List[int] = list(candidates)
        self.inflight: Dict[int, Future] = {}
        self.ok: Dict[int, Any] = {}
        self.errors: Dict[int, BaseException] = {}
        self.refusal: Optional[Tuple[int, BaseException]] = None
        self.tries: Dict[int, int] = {}
        self.retry_at: Dict[int, float] = {}
        self.hedge_at: Optional[float] = None  # reads: when to ask one more replica if still short

    @property
    def done(self) -> bool:
        """Enough answers, a refusal, or nothing left to wait for."""
        if len(self.ok) >= self.need or self.refusal is not None:
            return True
        return not self.inflight and not self.retry_at and not self.unsent

    def failures(self) -> str:
        """The replicas' failures, for an error message."""
        return ", ".join(f"r{i}: {exc}" for i, exc in sorted(self.errors.items())) or "no answer"

    def raise_refusal(self) -> None:
        """Raise the refusal of a replica, if one refused.

        :raises Exception: the replica's own exception (``ClockSkewError``, ...).
        """
        if self.refusal is not None:
            raise self.refusal[1]


class CallRunner:
    """Sends :class:`Call` s through ``ctx.transport`` and drives them to a deadline.

    Reads ``transport``, ``attempts``, ``backoff``, ``hedge_after``,
    ``suspect_seconds`` and ``replicas`` from ``ctx`` at each use; counts
    ``retries`` and ``hedges``.
    """

    def __init__(self, ctx: ClientContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._suspect: Dict[Tuple[int, int], float] = {}  # (partition, index) -> suspect until (monotonic s)

    def order(self, p: int, salt: int) -> List[int]:
        """Replicas of partition ``p`` to ask, rotated by ``salt``, suspects last."""
        now = time.monotonic()
        order = replica_order(salt % self._ctx.replicas, self._ctx.replicas)
        with self._lock:
            return sorted(order, key=lambda i: self._suspect.get((p, i), 0.0) > now)

    def suspect(self, p: int, i: int) -> None:
        """Ask replica ``i`` of partition ``p`` last for the next ``suspect_seconds``."""
        with self._lock:
            self._suspect[(p, i)] = time.monotonic() + self._ctx.suspect_seconds

    def drive(self, calls: Sequence[Call], deadline: float) -> None:
        """Run ``calls`` until each is done or the deadline (monotonic s) passes.

        Never raises for a replica's failure or refusal: they are in each
        call's ``errors`` and ``refusal``. Replicas still silent at the
        deadline become suspects.
        """
        ctx = self._ctx
        start = time.monotonic()
        for c in calls:
            self._top_up(c)
            if not c.spread:
                c.hedge_at = start + ctx.hedge_after
        while True:
            live = [c for c in calls if not c.done]
            if not live:
                return
            now = time.monotonic()
            if now >= deadline:
                with self._lock:
                    for c in live:
                        for i in c.inflight:
                            self._suspect[(c.partition, i)] = now + ctx.suspect_seconds
                return
            futs: Dict[Future, Tuple[Call, int]] = {}
            for c in live:
                for i, f in c.inflight.items():
                    futs[f] = (c, i)
            due = min([t for c in live for t in c.retry_at.values()]
                      + [c.hedge_at for c in live if c.hedge_at is not None and c.unsent], default=None)
            until = deadline if due is None else min(deadline, due)
            if futs:
                done, _ = wait(list(futs), timeout=max(0.0, until - now), return_when=FIRST_COMPLETED)
                for f in done:
                    c, i = futs[f]
                    self._settle(c, i, f)
            elif due is not None:
                time.sleep(max(0.0, until - now))
            else:
                return  # nothing in flight, nothing scheduled
            now = time.monotonic()
            for c in live:
                for i, t in list(c.retry_at.items()):
                    if t <= now and not c.done:
                        del c.retry_at[i]
                        self._send(c, i)
                if c.hedge_at is not None and now >= c.hedge_at and c.unsent and not c.done:
                    self._send(c, c.unsent.pop(0))  # a hedge: the slow ones stay in flight
                    ctx.count("hedges")
                    c.hedge_at = now + ctx.hedge_after
                self._top_up(c)

    def _send(self, c: Call, i: int) -> None:
        c.tries[i] = c.tries.get(i, 0) + 1
        if c.tries[i] > 1:
            self._ctx.count("retries")
        try:
            fut = self._ctx.transport.call(ReplicaRef(c.partition, i), c.method, c.args)
        except Exception as exc:  # a transport that raises instead of failing the future
            fut = failed(exc)
        c.inflight[i] = fut

    def _top_up(self, c: Call) -> None:
        if c.done:
            return
        if c.spread:
            while c.unsent:
                self._send(c, c.unsent.pop(0))
        else:
            while c.unsent and len(c.ok) + len(c.inflight) < c.need:
                self._send(c, c.unsent.pop(0))

    def _settle(self, c: Call, i: int, fut: Future) -> None:
        c.inflight.pop(i, None)
        exc = fut.exception()
        if exc is None:
            c.ok[i] = fut.result()
            c.errors.pop(i, None)
            with self._lock:
                self._suspect.pop((c.partition, i), None)
            return
        if isinstance(exc, ReplicaUnavailableError):
            c.errors[i] = exc
            self.suspect(c.partition, i)
            if c.tries.get(i, 0) < self._ctx.attempts:
                c.retry_at[i] = time.monotonic() + self._ctx.backoff * (2 ** (c.tries[i] - 1))
            return
        if c.refusal is None:
            c.refusal = (i, exc)
