"""The client's read path: quorum reads, the second round on disputed keys, read repair, scans.

``get_many`` asks R replicas of each partition (one ``read`` call per
partition and replica, topped up and hedged by the :mod:`.calls` machinery)
for the keys' raw values and the replica's clock. Where the R answers agree
that is the value; where they differ, a second round (``read_records``)
fetches the keys' records from the same replicas, resolves them with the
engine's rules (:func:`~abase_engine.cluster.resolve.resolve`) and, as
follow-up work, *read-repairs* the replicas that were behind (LWW: the
winner; CRDT: the records they lacked). ``scan`` pages through one
partition the same way. Every clock reading goes into the client's HLC.

Thread-safety: safe.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from ..merge import MergeOperator
from ..record import Change, Op
from .calls import Call, CallRunner
from .context import ClientContext
from .errors import QuorumError
from .followups import FollowUps
from .inputs import check_key
from .placement import partition_of
from .resolve import resolve, same_record
from .transport import ReplicaRef
from .wire import decode_changes, encode_changes

__all__ = ["Reader"]

log = logging.getLogger(__name__)

_ABSENT = object()


class Reader:
    """The reads of one client (see :class:`~abase_engine.cluster.coordinator.Coordinator`
    for each method's contract). Counts ``reads``, ``disputed_keys`` and ``read_repairs``."""

    def __init__(self, ctx: ClientContext, calls: CallRunner, followups: FollowUps) -> None:
        self._ctx = ctx
        self._calls = calls
        self._followups = followups
        self._rr = itertools.count()  # spreads reads over the replicas

    def get_many(self, keys: Iterable[bytes], namespace: str, r: Optional[int]) -> List[Any]:
        ctx = self._ctx
        op = ctx.operator(namespace)
        need = ctx.quorum(ctx.read_quorum if r is None else r, "r")
        keys = [check_key(k) for k in keys]
        by_part: Dict[int, List[int]] = {}
        for idx, k in enumerate(keys):
            by_part.setdefault(partition_of(k, ctx.partitions), []).append(idx)
        out: List[Any] = [None] * len(keys)
        if not keys:
            return out
        ctx.count("reads")
        deadline = time.monotonic() + ctx.timeout
        calls = [Call(p, "read", (namespace, [keys[i] for i in idxs]), self._calls.order(p, next(self._rr)), need,
                      spread=False) for p, idxs in by_part.items()]
        self._calls.drive(calls, deadline)
        for c in calls:
            c.raise_refusal()
        short = [c for c in calls if len(c.ok) < need]
        if short:
            c = short[0]
            raise QuorumError(f"read: {len(c.ok)} of R={need} replicas of partition {c.partition} answered "
                              f"({c.failures()})")
        for c in calls:
            for i, (clock, _vals) in c.ok.items():
                ctx.receive(clock, f"replica p{c.partition}/r{i}")
        disputed: Dict[int, List[int]] = {}
        for c in calls:
            idxs = by_part[c.partition]
            answers = list(c.ok.values())
            for pos, idx in enumerate(idxs):
                vals = [a[1][pos] for a in answers]
                if all(v == vals[0] for v in vals):
                    out[idx] = None if vals[0] is None else (vals[0] if op is None else op.to_value(vals[0]))
                else:
                    disputed.setdefault(c.partition, []).append(idx)
        if disputed:
            responders = {c.partition: sorted(c.ok) for c in calls}
            resolved = self._resolve_keys(namespace, {p: [keys[i] for i in idxs] for p, idxs in disputed.items()},
                                          responders, deadline)
            for p, idxs in disputed.items():
                for idx in idxs:
                    out[idx] = _value_of(op, resolved.get((p, keys[idx])))
        return out

    def scan(self, partition: int, namespace: str, start: Optional[bytes], stop: Optional[bytes],
             prefix: Optional[bytes], r: Optional[int]) -> Iterator[Tuple[bytes, Any]]:
        # a generator: the arguments are checked when the first page is asked for
        ctx = self._ctx
        if not isinstance(partition, int) or not 0 <= partition < ctx.partitions:
            raise ValueError(f"partition must be an int in 0..{ctx.partitions - 1}, got {partition!r}")
        op = ctx.operator(namespace)
        need = ctx.quorum(ctx.read_quorum if r is None else r, "r")
        start = None if start is None else check_key(start)
        stop = None if stop is None else check_key(stop)
        prefix = None if prefix is None else check_key(prefix)
        cursor = start
        while True:
            deadline = time.monotonic() + ctx.timeout
            page = ctx.scan_page
            c = Call(partition, "scan", (namespace, cursor, stop, prefix, page),
                     self._calls.order(partition, next(self._rr)), need, spread=False)
            self._calls.drive([c], deadline)
            c.raise_refusal()
            if len(c.ok) < need:
                raise QuorumError(f"scan: {len(c.ok)} of R={need} replicas of partition {partition} answered "
                                  f"({c.failures()})")
            for i, (clock, _items) in c.ok.items():
                ctx.receive(clock, f"replica p{partition}/r{i}")
            pages = {i: items for i, (_clock, items) in c.ok.items()}
            full = [items[-1][0] for items in pages.values() if len(items) >= page]
            bound = min(full) if full else None
            views = {i: {k: v for k, v in items if bound is None or k <= bound} for i, items in pages.items()}
            union = sorted(set().union(*views.values()))
            agreed: Dict[bytes, Any] = {}
            disputed: List[bytes] = []
            for k in union:
                vals = [view.get(k, _ABSENT) for view in views.values()]
                if all(v is not _ABSENT and v == vals[0] for v in vals):
                    agreed[k] = vals[0]
                else:
                    disputed.append(k)
            if disputed:
                resolved = self._resolve_keys(namespace, {partition: disputed}, {partition: sorted(c.ok)}, deadline)
                for k in disputed:
                    v = _value_of(op, resolved.get((partition, k)))
                    if v is not None:
                        agreed[k] = v
            for k in sorted(agreed):
                yield k, agreed[k]
            if bound is None:
                return
            cursor = bound + b"\x00"

    # -- the second round and read repair ---------------------------------------------------
    def _resolve_keys(self, namespace: str, keys: Dict[int, List[bytes]], responders: Dict[int, List[int]],
                      deadline: float) -> Dict[Tuple[int, bytes], Optional[Change]]:
        """Second read round for keys the replicas disagree on: their records
        from the same replicas, resolved; the replicas behind are repaired."""
        op = self._ctx.operator(namespace)
        self._ctx.count("disputed_keys", sum(len(v) for v in keys.values()))
        calls = [Call(p, "read_records", (namespace, ks), responders[p], len(responders[p]), spread=True)
                 for p, ks in keys.items()]
        self._calls.drive(calls, deadline)
        for c in calls:
            c.raise_refusal()
            if len(c.ok) < c.need:
                raise QuorumError(f"read: replicas of partition {c.partition} disagree and "
                                  f"{c.need - len(c.ok)} of them did not answer the second round ({c.failures()})")
        out: Dict[Tuple[int, bytes], Optional[Change]] = {}
        for c in calls:
            per: Dict[int, Dict[bytes, List[Change]]] = {}
            for i, blob in c.ok.items():
                recs = decode_changes(blob)
                for rec in recs:
                    per.setdefault(i, {}).setdefault(rec.key, []).append(rec)
            fixes: Dict[int, List[Change]] = {}
            for k in keys[c.partition]:
                mine = {i: per.get(i, {}).get(k, []) for i in c.ok}
                allrecs = [rec for rs in mine.values() for rec in rs]
                winner = resolve(op, allrecs)
                out[(c.partition, k)] = winner
                if winner is None:
                    continue
                for i, rs in mine.items():
                    if same_record(op, rs[-1] if rs else None, winner):
                        continue
                    # LWW: the winner; CRDT: every record the others showed (a join is idempotent)
                    fixes.setdefault(i, []).extend([winner] if op is None else
                                                   [x for x in allrecs if x not in rs])
            if fixes:
                self._followups.later(lambda p=c.partition, fixes=fixes: self._repair(p, fixes))
        return out

    def _repair(self, p: int, fixes: Dict[int, List[Change]]) -> None:
        """Apply ``fixes`` (replica index -> records it lacks) to the replicas of ``p``."""
        futs = {i: self._ctx.transport.call(ReplicaRef(p, i), "apply", (encode_changes(recs),))
                for i, recs in fixes.items()}
        for i, f in futs.items():
            try:
                f.result(self._ctx.timeout)
            except Exception as exc:
                log.debug("read repair of p%d/r%d failed: %s", p, i, exc)
                continue
            self._ctx.count("read_repairs")


def _value_of(op: Optional[MergeOperator], rec: Optional[Change]) -> Any:
    """What a read returns for the resolved record ``rec`` (None: absent or deleted)."""
    if rec is None or rec.op == Op.DELETE:
        return None
    return rec.value if op is None else op.to_value(rec.value)
