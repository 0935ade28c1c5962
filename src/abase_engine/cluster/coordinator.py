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

**Parts.** The Coordinator is a facade over parts with narrow interfaces,
one concern each:

* :mod:`.context`: :class:`~.context.ClientContext`, what every part shares
  (layout, validated settings, namespaces, the HLC, counters);
* :mod:`.calls`: the call machinery (send, top up, retry, hedge, suspects,
  drive to a deadline);
* :mod:`.followups`: work a call leaves behind (pool or inline, stragglers watched);
* :mod:`.writes`: LWW records, CRDT operations on an origin, replication, retries;
* :mod:`.handoff`: hints for the replicas a write missed;
* :mod:`.reads`: quorum reads, the second round, read repair, scans;
* :mod:`.inputs`: key and value checks.

Thread-safety: safe; one Coordinator may serve many threads. Follow-up work
(hints, read repairs) runs on ``background_threads`` worker threads, or
inline when that is 0 (the simulated network); :meth:`flush` waits for it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..merge import MergeOperator
from ..record import Timestamp
from .calls import CallRunner
from .context import DEFAULTS, ClientContext
from .followups import FollowUps
from .handoff import Handoff
from .inputs import check_key
from .placement import partition_of
from .reads import Reader
from .transport import Transport
from .writes import WriteResult, Writer

__all__ = ["Coordinator", "WriteResult", "DEFAULTS"]


def _setting(name: str, doc: Optional[str] = None) -> property:
    """A Coordinator attribute that is the shared context's setting ``name``:
    assigning it changes what every part of the client uses from then on."""
    def get(self: "Coordinator") -> Any:
        return getattr(self._ctx, name)

    def set_(self: "Coordinator", value: Any) -> None:
        setattr(self._ctx, name, value)

    return property(get, set_, doc=doc or f"The ``{name}`` setting (see :data:`DEFAULTS`); may be changed.")


def _fixed(name: str, doc: str) -> property:
    """A read-only Coordinator attribute taken from the shared context."""
    def get(self: "Coordinator") -> Any:
        return getattr(self._ctx, name)

    return property(get, doc=doc)


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
    :param settings: any of :data:`DEFAULTS`. All but ``background_threads``
        are also attributes (``client.timeout``, ...); a change takes effect
        from the next call on, unchecked.
    :raises ClusterConfigError: a setting out of range (W or R outside 1..N, ...).
    """

    transport = _setting("transport", "What carries the calls to replicas; may be replaced (tests wrap it).")
    partitions = _fixed("partitions", "P, the number of partitions.")
    replicas = _fixed("replicas", "N, replicas per partition.")
    namespaces = _fixed(
        "namespaces", "``{name: MergeOperator or None}`` (None: LWW).")
    node_id = _fixed("node_id", "This client's node id.")
    hlc = _fixed("hlc", "This client's hybrid logical clock (it stamps the client's writes).")
    stats = _fixed("stats", "Counters: ``writes``, ``reads``, ``retries``, ``hedges``, "
                                            "``hints_stored``, ``hints_lost``, ``read_repairs``, ``disputed_keys``.")
    write_quorum = _setting("write_quorum")
    read_quorum = _setting("read_quorum")
    timeout = _setting("timeout")
    attempts = _setting("attempts")
    backoff = _setting("backoff")
    hinted_handoff = _setting("hinted_handoff")
    suspect_seconds = _setting("suspect_seconds")
    hedge_after = _setting("hedge_after")
    scan_page = _setting("scan_page")
    max_clock_skew_ms = _setting("max_clock_skew_ms")

    def __init__(self, transport: Transport, *, partitions: int, replicas: int,
                 namespaces: Optional[Dict[str, Optional[MergeOperator]]], node_id: int,
                 clock: Optional[Callable[[], int]] = None, **settings: Any) -> None:
        self._ctx = ClientContext(transport, partitions=partitions, replicas=replicas, namespaces=namespaces,
                                  node_id=node_id, clock=clock, **settings)
        self._followups = FollowUps(self._ctx.background_threads)
        calls = CallRunner(self._ctx)
        self._writes = Writer(self._ctx, calls, Handoff(self._ctx, calls, self._followups))
        self._reads = Reader(self._ctx, calls, self._followups)
        self._closed = False

    # -- placement -----------------------------------------------------------------------------
    def partition_of(self, key: bytes) -> int:
        """The partition ``key`` belongs to."""
        return partition_of(check_key(key), self._ctx.partitions)

    def origins(self, key: bytes) -> List[int]:
        """The replicas (indexes in ``key``'s partition) a CRDT operation on
        ``key`` would try, in order: rotated by the key's digest leaf, so one
        key's operations run on one replica while it answers; replicas that
        failed in the last ``suspect_seconds`` come last."""
        return self._writes.origins(check_key(key))

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
        return self._writes.put(key, value, namespace, w)

    def delete(self, key: bytes, namespace: str = "", w: Optional[int] = None) -> WriteResult:
        """Delete ``key``. LWW: a tombstone stamped by this client. CRDT: an
        observed-remove run on one replica (what it had seen is removed).

        Not an error if the key does not exist. Raises as :meth:`put`.
        """
        return self._writes.delete(key, namespace, w)

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
        return self._writes.merge(key, operation, namespace, w, observe_quorum)

    def put_many(self, items: Iterable[Tuple[bytes, bytes]], namespace: str = "",
                 w: Optional[int] = None) -> Optional[Timestamp]:
        """Put many pairs: one ``apply`` per partition and replica, all partitions at once.

        Not atomic across partitions; each replica applies its partition's
        records as one atomic batch.

        :return: the newest timestamp (None: no items).
        :raises QuorumError: some partition missed W (``.result``: a
            WriteResult per partition, each retriable).
        """
        return self._writes.put_many(items, namespace, w)

    def retry(self, result: "WriteResult | Sequence[WriteResult]", w: Optional[int] = None
              ) -> "WriteResult | List[WriteResult]":
        """Send a write again, reusing its records (same timestamps) or its request id.

        For a :class:`QuorumError`'s ``result``. Idempotent: a record already
        held is skipped by ``apply``, a request id already executed is not
        executed again.

        :raises QuorumError: as the original call.
        :raises ValueError: ``result`` carries neither records nor a request id.
        """
        return self._writes.retry(result, w)

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: bytes, default: Any = None, namespace: str = "", r: Optional[int] = None) -> Any:
        """The value of ``key`` resolved from R replicas (``default`` if absent).

        CRDT namespaces give the operator's value (``to_value``).

        :raises QuorumError: fewer than R replicas answered.
        :raises ClockSkewError: a replica's clock is too far ahead of ours.
        """
        v = self._reads.get_many([key], namespace, r)[0]
        return default if v is None else v

    def get_many(self, keys: Iterable[bytes], namespace: str = "", r: Optional[int] = None) -> List[Any]:
        """Values of many keys (None where absent): one ``read`` per partition and replica.

        :raises QuorumError: some partition had fewer than R replicas answer.
        """
        return self._reads.get_many(keys, namespace, r)

    def scan(self, partition: int, namespace: str = "", start: Optional[bytes] = None, stop: Optional[bytes] = None,
             prefix: Optional[bytes] = None, r: Optional[int] = None) -> Iterator[Tuple[bytes, Any]]:
        """Visible ``(key, value)`` pairs of one partition in key order, from R replicas.

        Pages of ``scan_page`` keys; within a page, keys every replica
        shows with the same value are taken as they are, the others resolved
        by their records (and read-repaired), as in :meth:`get_many`. The
        view is not a snapshot across pages. The arguments are checked when
        the first pair is asked for.

        :raises ValueError: ``partition`` outside 0..P-1.
        :raises QuorumError: fewer than R replicas answered a page.
        """
        return self._reads.scan(partition, namespace, start, stop, prefix, r)

    # -- lifecycle ----------------------------------------------------------------------------
    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every hint, read repair and watched straggler is settled.

        :return: True if all settled within ``timeout`` (None: wait as long as
            it takes; a straggler is settled at the latest ``timeout`` after
            its call's deadline).
        """
        return self._followups.flush(timeout)

    def close(self, timeout: Optional[float] = 30.0) -> None:
        """Flush follow-up work (up to ``timeout`` s) and stop the background threads."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout)
        finally:
            self._followups.close()

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
