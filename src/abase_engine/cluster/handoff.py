"""Hinted handoff, the client's side: where the records a replica missed are stored for it.

When a write returns, every replica of the partition that does not hold it
gets a *hint*: the write's records, stored (``store_hint``) on a replica
that took the write, which persists them in its
:class:`~abase_engine.cluster.hints.HintStore` and replays them when the
missing replica answers again (:func:`~abase_engine.cluster.repair.deliver_hints`).
A replica whose call failed is hinted at once (after the call, as
follow-up work); one whose call is still running is watched, and hinted
if that call fails or is still unanswered ``timeout`` s after the write's
deadline. Hints do not count toward W.

Thread-safety: safe.
"""

from __future__ import annotations

import logging
from typing import AbstractSet, Sequence

from .calls import Call, CallRunner
from .context import ClientContext
from .followups import FollowUps
from .transport import ReplicaRef

__all__ = ["Handoff"]

log = logging.getLogger(__name__)


class Handoff:
    """Stores hints for the replicas a write missed (when ``ctx.hinted_handoff`` is on).

    Counts ``hints_stored``, and ``hints_lost`` when no holder took a hint
    (anti-entropy then repairs what it carried).
    """

    def __init__(self, ctx: ClientContext, calls: CallRunner, followups: FollowUps) -> None:
        self._ctx = ctx
        self._calls = calls
        self._followups = followups

    def after_write(self, call: Call, blob: bytes, acked: AbstractSet[int], deadline: float) -> None:
        """Hint the replicas of ``call``'s partition not in ``acked`` with
        ``blob`` (the encoded records); watch the requests still running."""
        if not self._ctx.hinted_handoff:
            return
        p = call.partition
        holders = sorted(acked)
        for i in range(self._ctx.replicas):
            if i in acked:
                continue
            fut = call.inflight.get(i)
            if fut is None:
                self._followups.later(lambda i=i: self._store_hint(p, i, blob, holders))
            else:
                self._followups.watch(fut, deadline + self._ctx.timeout,
                                      lambda i=i: self._straggled(p, i, blob, holders))

    def _straggled(self, p: int, target: int, blob: bytes, holders: Sequence[int]) -> None:
        """A write still unanswered after the call (failed, or silent past its
        deadline plus ``timeout``): the replica becomes a suspect and gets a hint."""
        self._calls.suspect(p, target)
        self._store_hint(p, target, blob, holders)

    def _store_hint(self, p: int, target: int, blob: bytes, holders: Sequence[int]) -> None:
        """Persist ``blob`` for ``target`` on the first holder that takes it."""
        n = self._ctx.replicas
        ring = sorted((h for h in holders if h != target), key=lambda h: (h - target) % n)
        for h in ring:
            try:
                self._ctx.transport.call(ReplicaRef(p, h), "store_hint", (target, blob)).result(self._ctx.timeout)
            except Exception as exc:  # try the next holder
                log.debug("hint for p%d/r%d on r%d failed: %s", p, target, h, exc)
                continue
            self._ctx.count("hints_stored")
            return
        self._ctx.count("hints_lost")  # anti-entropy repairs what it carried
