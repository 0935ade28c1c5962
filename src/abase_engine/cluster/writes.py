"""The client's write path: records it stamps (LWW), CRDT operations run on an origin, replication to W.

* An LWW write (any put; delete and merge in an LWW namespace) is a record
  the client stamps with its own HLC and node id and sends with ``apply``
  to all N replicas of the key's partition; it returns once W hold it.
* A CRDT operation (merge; delete in a CRDT namespace) runs on one replica,
  the *origin*, under a request id; the records the origin wrote go to the
  others the same way, the origin counting as one of the W. The operation
  moves to another origin only when the first certainly never ran it
  (``ReplicaUnavailableError.delivered is False``).
* A retry reuses the records (same timestamps) or the request id, so it is
  idempotent: ``apply`` skips records a replica holds, and an origin does
  not run a request id twice.

Replicas that missed a write are hinted (:mod:`.handoff`).

Thread-safety: safe.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from ..record import Change, Op, Timestamp
from .calls import Call, CallRunner
from .context import ClientContext
from .errors import QuorumError
from .handoff import Handoff
from .inputs import BYTES_LIKE, check_key, check_value
from .placement import leaf_of, partition_of
from .resolve import plain
from .wire import decode_changes, encode_changes

__all__ = ["WriteResult", "Writer"]


class WriteResult(NamedTuple):
    """What a write returns (and what :meth:`Coordinator.retry` takes).

    ``timestamp``: the write's timestamp (a CRDT operation: its newest
    record's); ``changes``: the records written (empty if a CRDT origin never
    answered); ``acked``: replica indexes that hold it; ``missed``: those that
    did not answer in time (hinted); ``request_id``: a CRDT operation's id,
    which a retry must reuse; ``origin``: the replica that ran it.
    """

    timestamp: Optional[Timestamp]
    changes: Tuple[Change, ...]
    partition: int
    acked: Tuple[int, ...]
    missed: Tuple[int, ...]
    namespace: str = ""
    key: Optional[bytes] = None
    kind: str = "apply"           # "apply" (client-made records), "merge" or "delete" (executed)
    operation: Any = None
    request_id: Optional[bytes] = None
    origin: Optional[int] = None

    @property
    def acks(self) -> int:
        """How many replicas held the write when the call returned."""
        return len(self.acked)


class Writer:
    """The writes of one client (see :class:`~abase_engine.cluster.coordinator.Coordinator`
    for each method's contract). Counts ``writes``."""

    def __init__(self, ctx: ClientContext, calls: CallRunner, handoff: Handoff) -> None:
        self._ctx = ctx
        self._calls = calls
        self._handoff = handoff

    def origins(self, key: bytes) -> List[int]:
        """The replicas a CRDT operation on ``key`` (checked bytes) would try, in order."""
        return self._calls.order(partition_of(key, self._ctx.partitions), leaf_of(key))

    # -- the public operations ------------------------------------------------------------
    def put(self, key: bytes, value: bytes, namespace: str, w: Optional[int]) -> WriteResult:
        key, value = check_key(key), check_value(value)
        op = self._ctx.operator(namespace)
        if op is not None:
            op.check_operand(value)
        return self._write_records(key, namespace, [(Op.PUT, value)], w)

    def delete(self, key: bytes, namespace: str, w: Optional[int]) -> WriteResult:
        key = check_key(key)
        if self._ctx.operator(namespace) is None:
            return self._write_records(key, namespace, [(Op.DELETE, None)], w)
        return self._execute(key, namespace, "delete", None, w)

    def merge(self, key: bytes, operation: Any, namespace: str, w: Optional[int],
              observe_quorum: bool) -> WriteResult:
        key = check_key(key)
        op = self._ctx.operator(namespace)
        if op is None:
            return self._write_records(key, namespace, [(Op.PUT, check_value(operation))], w)
        if isinstance(operation, BYTES_LIKE):
            op.check_operand(bytes(operation))
        return self._execute(key, namespace, "merge", operation, w, observe_quorum=observe_quorum)

    def put_many(self, items: Iterable[Tuple[bytes, bytes]], namespace: str,
                 w: Optional[int]) -> Optional[Timestamp]:
        ctx = self._ctx
        op = ctx.operator(namespace)
        need = ctx.quorum(ctx.write_quorum if w is None else w, "w")
        by_part: Dict[int, List[Change]] = {}
        newest: Optional[Timestamp] = None
        for k, v in items:
            k, v = check_key(k), check_value(v)
            if op is not None:
                op.check_operand(v)
            ts = ctx.hlc.now()
            by_part.setdefault(partition_of(k, ctx.partitions), []).append(Change(namespace, k, Op.PUT, v, ts))
            newest = ts
        if not by_part:
            return None
        results = self._replicate({p: tuple(chs) for p, chs in by_part.items()}, need, {})
        bad = [r for r in results if r.acks < need]
        if bad:
            raise QuorumError(
                f"put_many: partitions {[r.partition for r in bad]} reached fewer than W={need} replicas "
                f"(acks {[r.acks for r in bad]})", results)
        return newest

    def retry(self, result: "WriteResult | Sequence[WriteResult]", w: Optional[int]
              ) -> "WriteResult | List[WriteResult]":
        if not isinstance(result, WriteResult):
            return [self.retry(r, w) for r in result]
        need = self._ctx.quorum(self._ctx.write_quorum if w is None else w, "w")
        if result.changes:
            out = self._replicate({result.partition: result.changes}, need, {})[0]
            out = out._replace(namespace=result.namespace, key=result.key, kind=result.kind,
                               operation=result.operation, request_id=result.request_id, origin=result.origin)
            if out.acks < need:
                raise QuorumError(f"retry reached {out.acks} of W={need} replicas", out)
            return out
        if result.request_id is None or result.key is None:
            raise ValueError("this WriteResult carries neither records nor a request id to retry")
        return self._execute(result.key, result.namespace, result.kind, result.operation, w,
                             request_id=result.request_id, origin=result.origin)

    # -- client-made records --------------------------------------------------------------
    def _write_records(self, key: bytes, namespace: str, ops: Sequence[Tuple[Op, Optional[bytes]]],
                       w: Optional[int]) -> WriteResult:
        ctx = self._ctx
        need = ctx.quorum(ctx.write_quorum if w is None else w, "w")
        p = partition_of(key, ctx.partitions)
        changes = tuple(Change(namespace, key, o, v, ctx.hlc.now()) for o, v in ops)
        res = self._replicate({p: changes}, need, {})[0]._replace(namespace=namespace, key=key)
        if res.acks < need:
            raise QuorumError(
                f"write of {key!r} reached {res.acks} of W={need} replicas of partition {p} "
                f"(missed {list(res.missed)})", res)
        return res

    def _replicate(self, records: Dict[int, Tuple[Change, ...]], need: int, holding: Dict[int, int]
                   ) -> List[WriteResult]:
        """Apply each partition's records on its replicas (except ``holding[p]``,
        which has them already) until ``need`` hold them; hint the others.

        :raises ClockSkewError: (or another refusal) a replica refused the records.
        """
        ctx = self._ctx
        ctx.count("writes")
        deadline = time.monotonic() + ctx.timeout
        calls: List[Call] = []
        blobs: Dict[int, bytes] = {}
        for p, chs in records.items():
            blobs[p] = blob = encode_changes(chs)
            have = holding.get(p)
            targets = [i for i in self._calls.order(p, p) if i != have]
            calls.append(Call(p, "apply", (blob,), targets, need - (have is not None), spread=True))
        self._calls.drive(calls, deadline)
        out = []
        for c in calls:
            acked = set(c.ok)
            if holding.get(c.partition) is not None:
                acked.add(holding[c.partition])
            self._handoff.after_write(c, blobs[c.partition], acked, deadline)
            chs = records[c.partition]
            out.append(WriteResult(max(ch.timestamp for ch in chs), chs, c.partition, tuple(sorted(acked)),
                                   tuple(sorted(i for i in range(ctx.replicas) if i not in acked))))
        for c in calls:
            c.raise_refusal()
        return out

    # -- CRDT operations, run on an origin ---------------------------------------------------
    def _execute(self, key: bytes, namespace: str, kind: str, operation: Any, w: Optional[int],
                 request_id: Optional[bytes] = None, origin: Optional[int] = None,
                 observe_quorum: bool = False) -> WriteResult:
        ctx = self._ctx
        need = ctx.quorum(ctx.write_quorum if w is None else w, "w")
        p = partition_of(key, ctx.partitions)
        rid = request_id if request_id is not None else ctx.hlc.now().to_bytes()
        deadline = time.monotonic() + ctx.timeout
        order = self.origins(key)
        if origin is not None:  # a retry goes back to the replica that may have run it
            order = [origin] + [i for i in order if i != origin]
        pending = WriteResult(None, (), p, (), tuple(range(ctx.replicas)), namespace, key, kind, operation, rid, None)
        blob = None
        for cand in order:
            if observe_quorum:
                self._observe(p, namespace, key, cand, deadline)
            c = Call(p, "execute", (rid, namespace, key, kind, operation), [cand], 1, spread=True)
            self._calls.drive([c], deadline)
            c.raise_refusal()
            if cand in c.ok:
                origin, blob = cand, c.ok[cand]
                break
            maybe_ran = any(getattr(e, "delivered", None) is not False for e in c.errors.values()) or c.inflight
            if maybe_ran:  # it may have run there: never run it elsewhere too
                raise QuorumError(
                    f"{kind} of {key!r}: origin replica p{p}/r{cand} did not answer ({c.failures()}); it may "
                    f"have run: retry with the same request id (Coordinator.retry)", pending._replace(origin=cand))
        if blob is None:
            raise QuorumError(f"{kind} of {key!r}: no replica of partition {p} is reachable", pending)
        changes = tuple(decode_changes(blob))
        if not changes:
            raise QuorumError(f"{kind} of {key!r}: origin p{p}/r{origin} returned no record", pending)
        ctx.receive(max(ch.timestamp for ch in changes), f"replica p{p}/r{origin}")
        res = self._replicate({p: changes}, need, {p: origin})[0]
        res = res._replace(namespace=namespace, key=key, kind=kind, operation=operation, request_id=rid,
                           origin=origin)
        if res.acks < need:
            raise QuorumError(f"{kind} of {key!r} reached {res.acks} of W={need} replicas of partition {p}", res)
        return res

    def _observe(self, p: int, namespace: str, key: bytes, origin: int, deadline: float) -> None:
        """Give ``origin`` the key's records from R replicas (before a state-dependent operation)."""
        read_quorum = self._ctx.read_quorum
        c = Call(p, "read_records", (namespace, [key]), self._calls.order(p, p), read_quorum, spread=False)
        self._calls.drive([c], deadline)
        c.raise_refusal()
        if len(c.ok) < read_quorum:
            raise QuorumError(f"observe_quorum: {len(c.ok)} of R={read_quorum} replicas answered "
                              f"({c.failures()})")
        recs = {plain(r) for blob in c.ok.values() for r in decode_changes(blob)}
        if recs:
            a = Call(p, "apply", (encode_changes(sorted(recs, key=lambda r: r.timestamp)),), [origin], 1, True)
            self._calls.drive([a], deadline)
            a.raise_refusal()
