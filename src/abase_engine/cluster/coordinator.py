"""The leaderless client protocol: quorum writes and reads, read repair, hint placement.

A :class:`Coordinator` is the client side of the cluster; it is written once
over a :class:`~abase_engine.cluster.transport.Transport`, and both the Ray
:class:`~abase_engine.cluster.ray_backend.Client` and the in-process
:class:`~abase_engine.replication.ReplicaGroup` are a Coordinator over their
transport.

**Writes.** An LWW write (any PUT, an LWW namespace's DELETE or merge) is a
record the client makes: the client stamps it with its own HLC and node id
and sends it with ``apply`` to all N replicas of the key's partition, then
returns once W of them hold it. A CRDT operation (``merge``, and ``delete``
in a CRDT namespace: its effect depends on what the replica has seen) runs
on one live replica, the *origin*, under a request id; the origin returns
the records it wrote and the client sends them to the other replicas the
same way, the origin counting as one of the W. A retry (inside the call, or
:meth:`Coordinator.retry` later) reuses the records and the request id, so
an acknowledged CRDT operation is counted exactly once and one whose call
raised at most once: the operation moves to another origin only when the
first certainly never ran it (``ReplicaUnavailableError.delivered is
False``).

**Reads.** ``get``/``get_many`` ask R replicas (one call per partition and
replica; one more when a call fails, or has not answered ``hedge_after``
seconds after the last request) for the raw values and the replica's clock. Where they all agree
that is the answer; where they differ, a second round fetches the keys'
records with their timestamps, resolves them with the engine's rules
(:func:`~abase_engine.cluster.resolve.resolve`) and read-repairs the
replicas that were behind. With R + W > N a read sees every acknowledged
write. ``scan`` pages through one partition the same way.

**Clocks.** Every clock reading a read brings back goes into the client's
HLC (a receive event), so the client never stamps a write behind what it
has seen; a reading more than ``max_clock_skew_ms`` ahead fails the call
with ``ClockSkewError`` naming both clocks. A replica refusing a record as
too far ahead fails the write the same way. Nothing is ever silently
restamped.

**Failures.** Each call to a replica that does not answer before the
call's deadline (``timeout``), or fails as unavailable, is retried (up to
``attempts`` times, exponential ``backoff``) while the quorum is not met;
the call fails with :class:`~abase_engine.cluster.errors.QuorumError` only
when W (or R) answers cannot be had. Replicas that missed a write get a
*hint*: the records are stored, persisted, on another live replica of the
partition, which replays them when the missing one answers again
(:func:`~abase_engine.cluster.repair.deliver_hints`). Calls still
unanswered when the quorum is met are watched in the background and hinted
if they fail or time out.

Thread-safety: safe; one Coordinator may serve many threads. Follow-up work
(hints, read repairs) runs on ``background_threads`` worker threads, or
inline when that is 0 (the simulated network); :meth:`flush` waits for it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import ClockSkewError, KeyTooLargeError, ValueTooLargeError
from ..hlc import HLC
from ..log import MAX_KEY, MAX_VALUE
from ..merge import MergeOperator
from ..record import Change, Op, Timestamp
from .errors import ClusterConfigError, QuorumError, ReplicaUnavailableError, UnknownNamespaceError
from .placement import leaf_of, partition_of, replica_order
from .replica import check_namespaces
from .resolve import plain, resolve, same_record
from .transport import ReplicaRef, Transport, failed
from .wire import decode_changes, encode_changes

__all__ = ["Coordinator", "WriteResult", "DEFAULTS"]

log = logging.getLogger(__name__)

#: Client settings and their defaults (units in the comments).
DEFAULTS: Dict[str, Any] = {
    "write_quorum": 2,          # W: replicas that hold a write before it returns
    "read_quorum": 2,           # R: replicas a read consults
    "timeout": 5.0,             # s: deadline of one client call
    "attempts": 3,              # tries per replica within one call
    "backoff": 0.05,            # s: first pause before a retry (doubles each time)
    "max_clock_skew_ms": 500,   # ms: how far ahead a clock reading may be
    "hinted_handoff": True,     # store hints for replicas that missed a write
    "suspect_seconds": 2.0,     # s: a replica that failed or timed out is asked last for this long
    "hedge_after": None,        # s: a read still short of R answers then also asks one more replica
                                #    (None: timeout / 5)
    "scan_page": 1000,          # keys per replica per scan round trip
    "background_threads": 0,    # threads for hints and repairs; 0: inline
}


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


# -- helpers --------------------------------------------------------------------

_BYTES = (bytes, bytearray, memoryview)


def _key(key: Any) -> bytes:
    if isinstance(key, _BYTES):
        key = bytes(key)
        if len(key) > MAX_KEY:
            raise KeyTooLargeError(f"key of {len(key)} bytes; the maximum is {MAX_KEY}")
        return key
    raise TypeError(f"keys must be bytes-like, not {type(key).__name__}")


def _value(value: Any) -> bytes:
    if isinstance(value, _BYTES):
        value = bytes(value)
        if len(value) > MAX_VALUE:
            raise ValueTooLargeError(f"value of {len(value)} bytes; the maximum is {MAX_VALUE}")
        return value
    raise TypeError(f"values must be bytes-like, not {type(value).__name__}")


class _Call:
    """One partition's share of one protocol call, made to several of its replicas.

    ``spread``: send to every candidate at once (writes) rather than to
    ``need`` of them, topping up on failures (reads).
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
        if len(self.ok) >= self.need or self.refusal is not None:
            return True
        return not self.inflight and not self.retry_at and not self.unsent

    def failures(self) -> str:
        return ", ".join(f"r{i}: {exc}" for i, exc in sorted(self.errors.items())) or "no answer"


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


class Coordinator:
    """A leaderless client of P partitions x N replicas reached through ``transport``.

    :param transport: carries calls to replicas.
    :param partitions: P.
    :param replicas: N, replicas per partition.
    :param namespaces: ``{name: MergeOperator or None}`` as the cluster was
        made with (the default namespace ``""`` is LWW and always present).
    :param node_id: this client's node id; it must never have been used by
        any other client or replica (take it from the cluster's allocator).
    :param clock: wall-clock ms for the HLC (tests); default the real clock.
    :param settings: any of :data:`DEFAULTS`.
    :raises ClusterConfigError: a setting out of range (W or R outside 1..N, ...).
    """

    def __init__(self, transport: Transport, *, partitions: int, replicas: int,
                 namespaces: Optional[Dict[str, Optional[MergeOperator]]], node_id: int,
                 clock: Optional[Callable[[], int]] = None, **settings: Any) -> None:
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise ClusterConfigError(f"unknown client setting(s): {', '.join(sorted(unknown))}")
        cfg = dict(DEFAULTS, **settings)
        for name, v in (("partitions", partitions), ("replicas", replicas)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ClusterConfigError(f"{name} must be an int >= 1, got {v!r}")
        self.transport = transport
        self.partitions, self.replicas = partitions, replicas
        self.namespaces = check_namespaces(namespaces)
        self.write_quorum = self._quorum(cfg["write_quorum"], "write_quorum (W)")
        self.read_quorum = self._quorum(cfg["read_quorum"], "read_quorum (R)")
        for name in ("timeout", "backoff", "suspect_seconds"):
            if not isinstance(cfg[name], (int, float)) or cfg[name] < 0 or (name == "timeout" and cfg[name] == 0):
                raise ClusterConfigError(f"{name} must be a positive number of seconds, got {cfg[name]!r}")
        for name in ("attempts", "scan_page"):
            if not isinstance(cfg[name], int) or cfg[name] < 1:
                raise ClusterConfigError(f"{name} must be an int >= 1, got {cfg[name]!r}")
        self.timeout = float(cfg["timeout"])
        self.attempts = cfg["attempts"]
        self.backoff = float(cfg["backoff"])
        self.hinted_handoff = bool(cfg["hinted_handoff"])
        self.suspect_seconds = float(cfg["suspect_seconds"])
        hedge = cfg["hedge_after"]
        if hedge is not None and (not isinstance(hedge, (int, float)) or hedge <= 0):
            raise ClusterConfigError(f"hedge_after must be a positive number of seconds or None, got {hedge!r}")
        self.hedge_after = float(hedge) if hedge is not None else self.timeout / 5
        self.scan_page = cfg["scan_page"]
        self.max_clock_skew_ms = cfg["max_clock_skew_ms"]
        self.node_id = node_id
        self.hlc = HLC(node_id, clock=clock, max_clock_skew_ms=self.max_clock_skew_ms)
        self.stats: Dict[str, int] = {
            "writes": 0, "reads": 0, "retries": 0, "hedges": 0, "hints_stored": 0, "hints_lost": 0,
            "read_repairs": 0, "disputed_keys": 0,
        }
        self._lock = threading.Lock()
        self._suspect: Dict[Tuple[int, int], float] = {}
        self._rr = itertools.count()
        threads = cfg["background_threads"]
        self._pool: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="abase-cluster-bg") if threads else None)
        self._outstanding = 0
        self._idle = threading.Condition()
        self._watcher = _Watcher(self._later)
        self._closed = False

    # -- configuration helpers -------------------------------------------------------
    def _quorum(self, value: Any, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= self.replicas:
            raise ClusterConfigError(f"{what} must be an int in 1..N={self.replicas}, got {value!r}")
        return value

    def _operator(self, namespace: str) -> Optional[MergeOperator]:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace names are str, not {type(namespace).__name__}")
        try:
            return self.namespaces[namespace]
        except KeyError:
            raise UnknownNamespaceError(
                f"namespace {namespace!r} is not one of this cluster's: {sorted(self.namespaces)}") from None

    def partition_of(self, key: bytes) -> int:
        """The partition ``key`` belongs to."""
        return partition_of(_key(key), self.partitions)

    def origins(self, key: bytes) -> List[int]:
        """The replicas (indexes in ``key``'s partition) a CRDT operation on
        ``key`` would try, in order: rotated by the key's digest leaf, so one
        key's operations run on one replica while it answers; replicas that
        failed in the last ``suspect_seconds`` come last."""
        key = _key(key)
        return self._order(partition_of(key, self.partitions), leaf_of(key))

    # -- background work -------------------------------------------------------------
    def _later(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the call (on the pool) or now (inline); errors are logged."""
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

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every hint, read repair and watched straggler is settled.

        :return: True if all settled within ``timeout`` (None: wait as long as
            it takes; a straggler is settled at the latest ``timeout`` after
            its call's deadline).
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

    # -- replica choice and the call engine -----------------------------------------------
    def _order(self, p: int, salt: int) -> List[int]:
        """Replicas of partition ``p`` to ask, rotated by ``salt``, suspects last."""
        now = time.monotonic()
        order = replica_order(salt % self.replicas, self.replicas)
        with self._lock:
            return sorted(order, key=lambda i: self._suspect.get((p, i), 0.0) > now)

    def _send(self, c: _Call, i: int) -> None:
        c.tries[i] = c.tries.get(i, 0) + 1
        if c.tries[i] > 1:
            with self._lock:
                self.stats["retries"] += 1
        try:
            fut = self.transport.call(ReplicaRef(c.partition, i), c.method, c.args)
        except Exception as exc:  # a transport that raises instead of failing the future
            fut = failed(exc)
        c.inflight[i] = fut

    def _top_up(self, c: _Call) -> None:
        if c.done:
            return
        if c.spread:
            while c.unsent:
                self._send(c, c.unsent.pop(0))
        else:
            while c.unsent and len(c.ok) + len(c.inflight) < c.need:
                self._send(c, c.unsent.pop(0))

    def _settle(self, c: _Call, i: int, fut: Future) -> None:
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
            with self._lock:
                self._suspect[(c.partition, i)] = time.monotonic() + self.suspect_seconds
            if c.tries.get(i, 0) < self.attempts:
                c.retry_at[i] = time.monotonic() + self.backoff * (2 ** (c.tries[i] - 1))
            return
        if c.refusal is None:
            c.refusal = (i, exc)

    def _drive(self, calls: Sequence[_Call], deadline: float) -> None:
        """Run ``calls`` until each is done or the deadline passes.

        A read (not ``spread``) still short of answers ``hedge_after`` s after
        its last send also asks the next replica, so one slow replica costs a
        read ``hedge_after``, not the whole timeout. Replicas still silent at
        the deadline become suspects (asked last for ``suspect_seconds``).
        """
        start = time.monotonic()
        for c in calls:
            self._top_up(c)
            if not c.spread:
                c.hedge_at = start + self.hedge_after
        while True:
            live = [c for c in calls if not c.done]
            if not live:
                return
            now = time.monotonic()
            if now >= deadline:
                with self._lock:
                    for c in live:
                        for i in c.inflight:
                            self._suspect[(c.partition, i)] = now + self.suspect_seconds
                return
            futs: Dict[Future, Tuple[_Call, int]] = {}
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
                    with self._lock:
                        self.stats["hedges"] += 1
                    c.hedge_at = now + self.hedge_after
                self._top_up(c)

    @staticmethod
    def _raise_refusal(c: _Call) -> None:
        if c.refusal is not None:
            raise c.refusal[1]

    # -- clocks ------------------------------------------------------------------------------
    def _receive(self, ts: Timestamp, source: str) -> None:
        """HLC receive of a timestamp read back; refuse one too far ahead."""
        try:
            self.hlc.update(ts)
        except ClockSkewError:
            raise ClockSkewError(
                f"{source} returned {ts!r} (node {ts.node_id}), more than {self.max_clock_skew_ms} ms ahead of "
                f"client node {self.node_id}'s clock ({int(time.time() * 1000)} ms wall, last "
                f"{Timestamp._from_packed(self.hlc.high_water, self.node_id)!r})") from None

    # -- writes ------------------------------------------------------------------------------
    def put(self, key: bytes, value: bytes, namespace: str = "", w: Optional[int] = None) -> WriteResult:
        """Write ``value`` under ``key``: a record stamped by this client, applied by W replicas.

        In a CRDT namespace ``value`` is an encoded state, joined like an operand.

        :raises TypeError: key or value is not bytes-like.
        :raises KeyTooLargeError, ValueTooLargeError: sizes (also ValueError).
        :raises UnknownNamespaceError: ``namespace`` is not the cluster's.
        :raises MergeOperandError: a CRDT namespace's state does not decode.
        :raises QuorumError: fewer than W replicas took it (``.result`` can be retried).
        :raises ClockSkewError: a replica refused the timestamp.
        """
        key, value = _key(key), _value(value)
        op = self._operator(namespace)
        if op is not None:
            op.check_operand(value)
        return self._write_records(key, namespace, [(Op.PUT, value)], w)

    def delete(self, key: bytes, namespace: str = "", w: Optional[int] = None) -> WriteResult:
        """Delete ``key``. LWW: a tombstone stamped by this client. CRDT: an
        observed-remove run on one replica (what it had seen is removed).

        Not an error if the key does not exist. Raises as :meth:`put`.
        """
        key = _key(key)
        if self._operator(namespace) is None:
            return self._write_records(key, namespace, [(Op.DELETE, None)], w)
        return self._execute(key, namespace, "delete", None, w)

    def merge(self, key: bytes, operation: Any, namespace: str = "", w: Optional[int] = None,
              observe_quorum: bool = False) -> WriteResult:
        """Apply a CRDT operation (e.g. ``PNCounter.increment(5)``) to ``key``.

        It runs on one live replica (which turns it into an operand from its
        own state); the record it writes is sent to the others. On an LWW
        namespace, merge is a put of ``operation`` (bytes).

        ``observe_quorum``: first give the origin replica the key's records
        from R replicas, so that a state-dependent operation (an ORSet
        remove) observes every acknowledged write when R + W > N. Without
        it, it observes what its origin had seen (see docs/cluster.md).

        :raises MergeOperandError: the operation does not fit the operator.
        :raises QuorumError: the origin did not answer, or fewer than W replicas hold the result.
        """
        key = _key(key)
        op = self._operator(namespace)
        if op is None:
            return self._write_records(key, namespace, [(Op.PUT, _value(operation))], w)
        if isinstance(operation, _BYTES):
            op.check_operand(bytes(operation))
        return self._execute(key, namespace, "merge", operation, w, observe_quorum=observe_quorum)

    def put_many(self, items: Iterable[Tuple[bytes, bytes]], namespace: str = "",
                 w: Optional[int] = None) -> Optional[Timestamp]:
        """Put many pairs: one ``apply`` per partition and replica, all partitions at once.

        Not atomic across partitions; each replica applies its partition's
        records as one atomic batch.

        :return: the newest timestamp (None: no items).
        :raises QuorumError: some partition missed W (``.result``: a
            WriteResult per partition, each retriable).
        """
        op = self._operator(namespace)
        need = self._quorum(self.write_quorum if w is None else w, "w")
        by_part: Dict[int, List[Change]] = {}
        newest: Optional[Timestamp] = None
        for k, v in items:
            k, v = _key(k), _value(v)
            if op is not None:
                op.check_operand(v)
            ts = self.hlc.now()
            by_part.setdefault(partition_of(k, self.partitions), []).append(Change(namespace, k, Op.PUT, v, ts))
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

    def retry(self, result: "WriteResult | Sequence[WriteResult]", w: Optional[int] = None
              ) -> "WriteResult | List[WriteResult]":
        """Send a write again, reusing its records (same timestamps) or its request id.

        For a :class:`QuorumError`'s ``result``. Idempotent: a record already
        held is skipped by ``apply``, a request id already executed is not
        executed again.

        :raises QuorumError: as the original call.
        """
        if not isinstance(result, WriteResult):
            return [self.retry(r, w) for r in result]
        need = self._quorum(self.write_quorum if w is None else w, "w")
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

    def _write_records(self, key: bytes, namespace: str, ops: Sequence[Tuple[Op, Optional[bytes]]],
                       w: Optional[int]) -> WriteResult:
        need = self._quorum(self.write_quorum if w is None else w, "w")
        p = partition_of(key, self.partitions)
        changes = tuple(Change(namespace, key, o, v, self.hlc.now()) for o, v in ops)
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
        with self._lock:
            self.stats["writes"] += 1
        deadline = time.monotonic() + self.timeout
        calls: List[_Call] = []
        blobs: Dict[int, bytes] = {}
        for p, chs in records.items():
            blobs[p] = blob = encode_changes(chs)
            have = holding.get(p)
            targets = [i for i in self._order(p, p) if i != have]
            calls.append(_Call(p, "apply", (blob,), targets, need - (have is not None), spread=True))
        self._drive(calls, deadline)
        out = []
        for c in calls:
            acked = set(c.ok)
            if holding.get(c.partition) is not None:
                acked.add(holding[c.partition])
            self._hint_missed(c, blobs[c.partition], acked, deadline)
            chs = records[c.partition]
            out.append(WriteResult(max(ch.timestamp for ch in chs), chs, c.partition, tuple(sorted(acked)),
                                   tuple(sorted(i for i in range(self.replicas) if i not in acked))))
        for c in calls:
            self._raise_refusal(c)
        return out

    def _hint_missed(self, c: _Call, blob: bytes, acked: set, deadline: float) -> None:
        """Hint the replicas of ``c`` that missed ``blob``; watch those still running."""
        if not self.hinted_handoff:
            return
        holders = sorted(acked)
        for i in range(self.replicas):
            if i in acked:
                continue
            fut = c.inflight.get(i)
            if fut is None:
                self._later(lambda i=i: self._store_hint(c.partition, i, blob, holders))
            else:
                self._watcher.watch(fut, deadline + self.timeout,
                                    lambda i=i: self._straggled(c.partition, i, blob, holders))

    def _straggled(self, p: int, target: int, blob: bytes, holders: Sequence[int]) -> None:
        """A write still unanswered after the call (failed, or silent past its
        deadline plus ``timeout``): the replica becomes a suspect and gets a hint."""
        with self._lock:
            self._suspect[(p, target)] = time.monotonic() + self.suspect_seconds
        self._store_hint(p, target, blob, holders)

    def _store_hint(self, p: int, target: int, blob: bytes, holders: Sequence[int]) -> None:
        """Persist ``blob`` for ``target`` on the first holder that takes it."""
        ring = sorted((h for h in holders if h != target), key=lambda h: (h - target) % self.replicas)
        for h in ring:
            try:
                self.transport.call(ReplicaRef(p, h), "store_hint", (target, blob)).result(self.timeout)
            except Exception as exc:  # try the next holder
                log.debug("hint for p%d/r%d on r%d failed: %s", p, target, h, exc)
                continue
            with self._lock:
                self.stats["hints_stored"] += 1
            return
        with self._lock:
            self.stats["hints_lost"] += 1  # anti-entropy repairs what it carried

    def _execute(self, key: bytes, namespace: str, kind: str, operation: Any, w: Optional[int],
                 request_id: Optional[bytes] = None, origin: Optional[int] = None,
                 observe_quorum: bool = False) -> WriteResult:
        need = self._quorum(self.write_quorum if w is None else w, "w")
        p = partition_of(key, self.partitions)
        rid = request_id if request_id is not None else self.hlc.now().to_bytes()
        deadline = time.monotonic() + self.timeout
        order = self.origins(key)
        if origin is not None:  # a retry goes back to the replica that may have run it
            order = [origin] + [i for i in order if i != origin]
        pending = WriteResult(None, (), p, (), tuple(range(self.replicas)), namespace, key, kind, operation, rid, None)
        blob = None
        for cand in order:
            if observe_quorum:
                self._observe(p, namespace, key, cand, deadline)
            c = _Call(p, "execute", (rid, namespace, key, kind, operation), [cand], 1, spread=True)
            self._drive([c], deadline)
            self._raise_refusal(c)
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
        self._receive(max(ch.timestamp for ch in changes), f"replica p{p}/r{origin}")
        res = self._replicate({p: changes}, need, {p: origin})[0]
        res = res._replace(namespace=namespace, key=key, kind=kind, operation=operation, request_id=rid,
                           origin=origin)
        if res.acks < need:
            raise QuorumError(f"{kind} of {key!r} reached {res.acks} of W={need} replicas of partition {p}", res)
        return res

    def _observe(self, p: int, namespace: str, key: bytes, origin: int, deadline: float) -> None:
        """Give ``origin`` the key's records from R replicas (before a state-dependent operation)."""
        c = _Call(p, "read_records", (namespace, [key]), self._order(p, p), self.read_quorum, spread=False)
        self._drive([c], deadline)
        self._raise_refusal(c)
        if len(c.ok) < self.read_quorum:
            raise QuorumError(f"observe_quorum: {len(c.ok)} of R={self.read_quorum} replicas answered "
                              f"({c.failures()})")
        recs = {plain(r) for blob in c.ok.values() for r in decode_changes(blob)}
        if recs:
            a = _Call(p, "apply", (encode_changes(sorted(recs, key=lambda r: r.timestamp)),), [origin], 1, True)
            self._drive([a], deadline)
            self._raise_refusal(a)

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: bytes, default: Any = None, namespace: str = "", r: Optional[int] = None) -> Any:
        """The value of ``key`` resolved from R replicas (``default`` if absent).

        CRDT namespaces give the operator's value (``to_value``).

        :raises QuorumError: fewer than R replicas answered.
        :raises ClockSkewError: a replica's clock is too far ahead of ours.
        """
        v = self.get_many([key], namespace, r)[0]
        return default if v is None else v

    def get_many(self, keys: Iterable[bytes], namespace: str = "", r: Optional[int] = None) -> List[Any]:
        """Values of many keys (None where absent): one ``read`` per partition and replica.

        :raises QuorumError: some partition had fewer than R replicas answer.
        """
        op = self._operator(namespace)
        need = self._quorum(self.read_quorum if r is None else r, "r")
        keys = [_key(k) for k in keys]
        by_part: Dict[int, List[int]] = {}
        for idx, k in enumerate(keys):
            by_part.setdefault(partition_of(k, self.partitions), []).append(idx)
        out: List[Any] = [None] * len(keys)
        if not keys:
            return out
        with self._lock:
            self.stats["reads"] += 1
        deadline = time.monotonic() + self.timeout
        calls = [_Call(p, "read", (namespace, [keys[i] for i in idxs]), self._order(p, next(self._rr)), need,
                       spread=False) for p, idxs in by_part.items()]
        self._drive(calls, deadline)
        for c in calls:
            self._raise_refusal(c)
        short = [c for c in calls if len(c.ok) < need]
        if short:
            c = short[0]
            raise QuorumError(f"read: {len(c.ok)} of R={need} replicas of partition {c.partition} answered "
                              f"({c.failures()})")
        for c in calls:
            for i, (clock, _vals) in c.ok.items():
                self._receive(clock, f"replica p{c.partition}/r{i}")
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
                    out[idx] = self._value_of(op, resolved.get((p, keys[idx])))
        return out

    @staticmethod
    def _value_of(op: Optional[MergeOperator], rec: Optional[Change]) -> Any:
        if rec is None or rec.op == Op.DELETE:
            return None
        return rec.value if op is None else op.to_value(rec.value)

    def _resolve_keys(self, namespace: str, keys: Dict[int, List[bytes]], responders: Dict[int, List[int]],
                      deadline: float) -> Dict[Tuple[int, bytes], Optional[Change]]:
        """Second read round for keys the replicas disagree on: their records
        from the same replicas, resolved; the replicas behind are repaired."""
        op = self._operator(namespace)
        with self._lock:
            self.stats["disputed_keys"] += sum(len(v) for v in keys.values())
        calls = [_Call(p, "read_records", (namespace, ks), responders[p], len(responders[p]), spread=True)
                 for p, ks in keys.items()]
        self._drive(calls, deadline)
        for c in calls:
            self._raise_refusal(c)
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
                self._later(lambda p=c.partition, fixes=fixes: self._repair(p, fixes))
        return out

    def _repair(self, p: int, fixes: Dict[int, List[Change]]) -> None:
        futs = {i: self.transport.call(ReplicaRef(p, i), "apply", (encode_changes(recs),)) for i, recs in fixes.items()}
        for i, f in futs.items():
            try:
                f.result(self.timeout)
            except Exception as exc:
                log.debug("read repair of p%d/r%d failed: %s", p, i, exc)
                continue
            with self._lock:
                self.stats["read_repairs"] += 1

    def scan(self, partition: int, namespace: str = "", start: Optional[bytes] = None, stop: Optional[bytes] = None,
             prefix: Optional[bytes] = None, r: Optional[int] = None) -> Iterator[Tuple[bytes, Any]]:
        """Visible ``(key, value)`` pairs of one partition in key order, from R replicas.

        Pages of ``scan_page`` keys; within a page, keys every replica
        shows with the same value are taken as they are, the others resolved
        by their records (and read-repaired), as in :meth:`get_many`. The
        view is not a snapshot across pages.

        :raises ValueError: ``partition`` outside 0..P-1.
        :raises QuorumError: fewer than R replicas answered a page.
        """
        if not isinstance(partition, int) or not 0 <= partition < self.partitions:
            raise ValueError(f"partition must be an int in 0..{self.partitions - 1}, got {partition!r}")
        op = self._operator(namespace)
        need = self._quorum(self.read_quorum if r is None else r, "r")
        start = None if start is None else _key(start)
        stop = None if stop is None else _key(stop)
        prefix = None if prefix is None else _key(prefix)
        cursor = start
        while True:
            deadline = time.monotonic() + self.timeout
            c = _Call(partition, "scan", (namespace, cursor, stop, prefix, self.scan_page),
                      self._order(partition, next(self._rr)), need, spread=False)
            self._drive([c], deadline)
            self._raise_refusal(c)
            if len(c.ok) < need:
                raise QuorumError(f"scan: {len(c.ok)} of R={need} replicas of partition {partition} answered "
                                  f"({c.failures()})")
            for i, (clock, _items) in c.ok.items():
                self._receive(clock, f"replica p{partition}/r{i}")
            pages = {i: items for i, (_clock, items) in c.ok.items()}
            full = [items[-1][0] for items in pages.values() if len(items) >= self.scan_page]
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
                    v = self._value_of(op, resolved.get((partition, k)))
                    if v is not None:
                        agreed[k] = v
            for k in sorted(agreed):
                yield k, agreed[k]
            if bound is None:
                return
            cursor = bound + b"\x00"

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self, timeout: Optional[float] = 30.0) -> None:
        """Flush follow-up work (up to ``timeout`` s) and stop the background threads."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._watcher.stop()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_ABSENT = object()
