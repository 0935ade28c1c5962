"""One replica of one partition: an engine, its hint store, its request table.

A :class:`ReplicaService` is what both transports serve: the in-process
simulated network of :mod:`abase_engine.replication` calls its methods
directly, and a Ray actor (:mod:`abase_engine.cluster.ray_backend`) wraps
one. Its public methods named in :data:`PROTOCOL_METHODS` are the whole
replica-side protocol; their arguments and results are plain values (bytes,
str, ints, lists, tuples, ``Timestamp``, CRDT ``Operation``), so any
transport can carry them.

On disk (``<replica dir>/``)::

    IDENTITY   {"node_id": n, "partition": p, "replica": i}  (JSON; atomic replace + fsync)
    engine/    the replica's Engine (digests=True), the cluster's namespaces
               plus the internal namespace "__cluster.requests"
    hints/     its HintStore (hints it holds for its peers)

The node id in ``IDENTITY`` is reused only while ``engine/`` holds data: a
replica whose engine directory is missing or empty (a rebuilt node) takes a
new id from ``allocate_id``, because its clock may restart below the old
id's last timestamp, and a reused ``(HLC, node id)`` with another value is
skipped by ``apply`` for ever.

**Request table.** A CRDT operation executes here (the operand depends on
this replica's state) under a client-chosen request id. The id is written in
the *same atomic batch* as the operation, in ``__cluster.requests``
(key: the request id, 12 bytes: the client's HLC timestamp, so keys sort by
age; value: empty). A retry of the same request id finds it and returns the
key's current records instead of executing again, so a retried operation is
counted once, however the first attempt ended. Entries older than
``request_ttl_ms`` are deleted by :meth:`collect_requests`.

Thread-safety: safe. Every protocol method may run concurrently with the
others (the engines are thread-safe; CRDT executions are serialized by one
lock so that two attempts of one request id cannot both execute).
:meth:`close` waits for the calls in flight, later calls raise
:class:`~abase_engine.cluster.errors.ReplicaDownError`.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..engine import Engine, Namespace, open as _open_engine
from ..errors import ClockSkewError
from ..merge import LWW, MergeOperator
from ..record import Change, Op, Timestamp
from .errors import ClusterConfigError, ReplicaDownError, UnknownNamespaceError
from .hints import HintStore
from .placement import leaf_of, leaf_path
from .wire import decode_changes, encode_changes

__all__ = ["ReplicaService", "PROTOCOL_METHODS", "REQUESTS_NAMESPACE", "RESERVED_PREFIX", "check_namespaces",
           "replica_dir"]

#: Namespaces whose names start with this are the cluster's own, never a user's.
RESERVED_PREFIX = "__cluster."
REQUESTS_NAMESPACE = RESERVED_PREFIX + "requests"

#: The methods a transport may call on a replica (everything else is local).
PROTOCOL_METHODS = frozenset({
    "apply", "execute", "read", "read_records", "scan", "digest", "records", "store_hint", "hint_targets",
    "take_hints", "drop_hints", "info", "collect_requests", "ping",
})


def replica_dir(root: str, partition: int, index: int) -> str:
    """``<root>/p<partition, 4 digits>/r<index>``: one replica's directory."""
    return os.path.join(root, f"p{partition:04d}", f"r{index}")


def check_namespaces(namespaces: Optional[Dict[str, Any]]) -> Dict[str, Optional[MergeOperator]]:
    """Validate a cluster's ``{name: operator}`` map; LWW (or None) becomes None.

    The default namespace ``""`` (LWW) is always present.

    :raises ClusterConfigError: a name is not a str or is reserved, or an
        operator is not a :class:`~abase_engine.MergeOperator` (or None).
    """
    out: Dict[str, Optional[MergeOperator]] = {"": None}
    if namespaces is None:
        return out
    if not isinstance(namespaces, dict):
        raise ClusterConfigError(f"namespaces must be a dict {{name: MergeOperator or None}}, "
                                 f"not {type(namespaces).__name__}")
    for name, op in namespaces.items():
        if not isinstance(name, str):
            raise ClusterConfigError(f"namespace names are str, not {type(name).__name__}")
        if name.startswith(RESERVED_PREFIX):
            raise ClusterConfigError(f"namespace names starting with {RESERVED_PREFIX!r} are reserved: {name!r}")
        if op is not None and not isinstance(op, MergeOperator):
            raise ClusterConfigError(
                f"namespace {name!r}: the operator must be a MergeOperator (e.g. crdt.PNCounter()) or None "
                f"for last-write-wins, not {op!r}")
        if name == "" and op is not None and not isinstance(op, LWW):
            raise ClusterConfigError("the default namespace '' is last-write-wins; use a named namespace for a CRDT")
        out[name] = None if op is None or isinstance(op, LWW) else op
    return out


class ReplicaService:
    """The replica-side protocol over one engine directory.

    :param directory: this replica's directory (see the module docstring).
    :param partition: the partition it serves.
    :param index: its index among the partition's replicas.
    :param namespaces: ``{name: operator or None}`` (see :func:`check_namespaces`).
    :param allocate_id: returns a never-used node id; called when the
        directory holds no engine data yet.
    :param durability: the engines' durability level.
    :param engine_options: passed to :func:`abase_engine.open` (``digests``
        is always on).
    :param request_ttl_ms: how long a request id is remembered for retries.
    :raises abase_engine.errors.LockedError: another process holds the directory.
    :raises abase_engine.errors.MergeOperatorMismatch: a namespace exists with another operator.
    """

    def __init__(self, directory: str, partition: int, index: int,
                 namespaces: Dict[str, Optional[MergeOperator]], allocate_id: Callable[[], int],
                 durability: str = "process", engine_options: Optional[Dict[str, Any]] = None,
                 request_ttl_ms: int = 3600 * 1000) -> None:
        self.directory = os.fspath(directory)
        self.partition, self.index = partition, index
        self.namespaces = check_namespaces(namespaces)
        self.request_ttl_ms = request_ttl_ms
        os.makedirs(self.directory, exist_ok=True)
        self.node_id = self._identity(allocate_id)
        opts = dict(engine_options or {})
        opts["digests"] = True
        self.engine: Engine = _open_engine(os.path.join(self.directory, "engine"), node_id=self.node_id,
                                           durability=durability, **opts)
        try:
            self._ns: Dict[str, Namespace] = {
                name: (self.engine if name == "" else self.engine.namespace(name, merge=op))
                for name, op in self.namespaces.items()}
            self._requests = self.engine.namespace(REQUESTS_NAMESPACE)
            self.hints = HintStore(os.path.join(self.directory, "hints"), self.node_id, durability)
        except BaseException:
            self.engine.close()
            raise
        self._captured = threading.local()
        self._unsubscribe = self.engine.on_commit(self._on_commit)
        self._exec_lock = threading.Lock()
        self._state = threading.Condition()
        self._active = 0
        self._closed = False
        self.stats: Dict[str, int] = {"applied": 0, "executed": 0, "request_hits": 0, "reads": 0,
                                      "hints_stored": 0}

    # -- identity ---------------------------------------------------------------
    def _identity(self, allocate_id: Callable[[], int]) -> int:
        path = os.path.join(self.directory, "IDENTITY")
        engine_dir = os.path.join(self.directory, "engine")
        has_data = os.path.isdir(engine_dir) and bool(os.listdir(engine_dir))
        if has_data:
            try:
                with open(path, "r", encoding="utf-8") as f:
                    ident = json.load(f)
                if ident.get("partition") == self.partition and ident.get("replica") == self.index:
                    return int(ident["node_id"])
                raise ClusterConfigError(
                    f"{self.directory} belongs to partition {ident.get('partition')} replica "
                    f"{ident.get('replica')}, not partition {self.partition} replica {self.index}")
            except FileNotFoundError:
                pass  # data without an identity: its node id is unknown, so take a new one
        node_id = int(allocate_id())
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"node_id": node_id, "partition": self.partition, "replica": self.index}, f)
            f.flush()
            os.fsync(f.fileno())  # durability point: the identity's bytes
        os.replace(tmp, path)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)  # durability point: the rename
        finally:
            os.close(dfd)
        return node_id

    # -- call bookkeeping ------------------------------------------------------------
    def _enter(self) -> None:
        with self._state:
            if self._closed:
                raise ReplicaDownError(f"replica p{self.partition}/r{self.index} is closed", delivered=False)
            self._active += 1

    def _leave(self) -> None:
        with self._state:
            self._active -= 1
            if self._active == 0:
                self._state.notify_all()

    def handle(self, method: str, args: Sequence[Any]) -> Any:
        """Run protocol ``method`` with ``args`` (what a transport calls).

        :raises ValueError: ``method`` is not a protocol method.
        :raises ReplicaDownError: the replica is closed (nothing ran).
        """
        if method not in PROTOCOL_METHODS:
            raise ValueError(f"{method!r} is not a replica protocol method")
        self._enter()
        try:
            return getattr(self, method)(*args)
        finally:
            self._leave()

    def _namespace(self, name: str) -> Namespace:
        ns = self._ns.get(name)
        if ns is None:
            raise UnknownNamespaceError(f"namespace {name!r} is not one of this cluster's: {sorted(self._ns)}")
        return ns

    def _on_commit(self, changes: List[Change]) -> None:
        # Runs in the writing thread; only execute() sets a capture list.
        captured = getattr(self._captured, "changes", None)
        if captured is not None:
            captured.extend(changes)

    def clock(self) -> Timestamp:
        """A reading of this replica's clock: greater than every record it holds."""
        return self.engine.now()

    # -- protocol: writes ---------------------------------------------------------
    def apply(self, blob: bytes) -> int:
        """Apply wire-format records (see :meth:`abase_engine.Engine.apply`).

        :return: how many records changed something.
        :raises ClockSkewError: a record is too far ahead of this replica's
            clock; the message names both clocks and this replica.
        :raises ValueError: the blob does not decode.
        Runtime complexity: O(records).
        """
        changes = decode_changes(blob)
        for ch in changes:
            self._namespace(ch.namespace)
        try:
            n = self.engine.apply(changes)
        except ClockSkewError as exc:
            newest = max(c.timestamp for c in changes)
            raise ClockSkewError(
                f"replica p{self.partition}/r{self.index} (node {self.node_id}) refused records stamped up to "
                f"{newest!r} by node {newest.node_id}: its own clock reads {self.clock()!r}, more than "
                f"max_clock_skew_ms behind ({exc})") from None
        with self._state:
            self.stats["applied"] += n
        return n

    def execute(self, request_id: bytes, namespace: str, key: bytes, kind: str, operation: Any) -> bytes:
        """Run a state-dependent write here: a CRDT ``merge`` or a CRDT ``delete``.

        The request id is stored in the same atomic batch as the write. A
        request id seen before is not executed again: the key's current
        records are returned instead (they contain the first execution's
        effect, and joining them is idempotent).

        :param request_id: 12 bytes, unique per operation (the client's
            timestamp of it).
        :param kind: ``"merge"`` (``operation`` is the CRDT operation) or
            ``"delete"`` (``operation`` is ignored).
        :return: the records written (wire format) for the caller to
            replicate.
        :raises MergeOperandError: the operation does not fit the namespace's operator.
        :raises ValueError: a bad ``kind`` or request id.
        """
        if not isinstance(request_id, bytes) or len(request_id) != 12:
            raise ValueError("request ids are 12 bytes")
        if kind not in ("merge", "delete"):
            raise ValueError(f"execute kind must be 'merge' or 'delete', not {kind!r}")
        ns = self._namespace(namespace)
        with self._exec_lock:
            if self._requests.get(request_id) is not None:
                with self._state:
                    self.stats["request_hits"] += 1
                return encode_changes(self._key_records(namespace, key))
            self._captured.changes = []
            try:
                with self.engine.batch() as b:
                    b.put(request_id, b"", namespace=self._requests)
                    if kind == "merge":
                        b.merge(key, operation, namespace=ns)
                    else:
                        b.delete(key, namespace=ns)
                written = [c for c in self._captured.changes if c.namespace == namespace]
            finally:
                self._captured.changes = None
        with self._state:
            self.stats["executed"] += 1
        return encode_changes(c._replace(cursor=None) for c in written)  # expire_at travels

    def collect_requests(self, now_ms: Optional[int] = None) -> int:
        """Forget request ids older than ``request_ttl_ms``; returns how many.

        Runtime complexity: O(request ids removed).
        """
        now_ms = self.clock().physical_ms if now_ms is None else now_ms
        horizon = Timestamp(max(0, now_ms - self.request_ttl_ms), 0, 0).to_bytes()
        old = [k for k, _v in self._requests.scan(stop=horizon)]
        if old:
            with self.engine.batch() as b:
                for k in old:
                    b.delete(k, namespace=self._requests)
        return len(old)

    # -- protocol: reads ----------------------------------------------------------
    def read(self, namespace: str, keys: List[bytes]) -> Tuple[Timestamp, List[Optional[bytes]]]:
        """This replica's clock and the raw visible value of each key (LWW
        value or CRDT state; None: absent or deleted).

        Runtime complexity: O(len(keys)) engine reads.
        """
        ns = self._namespace(namespace)
        clock = self.clock()
        values = [ns.get_raw(k) for k in keys]
        with self._state:
            self.stats["reads"] += len(keys)
        return clock, values

    def _key_records(self, namespace: str, key: bytes) -> List[Change]:
        return [r for r in self.engine.records(namespace, leaf_path(key))
                if r.key == key and r.op != Op.DELETE_RANGE]  # a range delete's key is its start

    def read_records(self, namespace: str, keys: List[bytes]) -> bytes:
        """The newest records of ``keys`` with their timestamps (wire format):
        LWW keys their winning PUT or DELETE, CRDT keys their newest DELETE (if
        any) and their state. Keys never written have none.

        Runtime complexity: one :meth:`~abase_engine.Engine.records` call per
        distinct digest leaf of ``keys``.
        """
        self._namespace(namespace)
        wanted: Dict[int, set] = {}
        for k in keys:
            wanted.setdefault(leaf_of(k), set()).add(bytes(k))
        out: List[Change] = []
        for leaf, ks in wanted.items():
            path = (leaf >> 8, (leaf >> 4) & 15, leaf & 15)
            out.extend(r for r in self.engine.records(namespace, path) if r.key in ks and r.op != Op.DELETE_RANGE)
        return encode_changes(out)

    def scan(self, namespace: str, start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
             limit: int) -> Tuple[Timestamp, List[Tuple[bytes, Any]]]:
        """This replica's clock and up to ``limit`` visible ``(key, value)``
        pairs in key order (values as :meth:`Namespace.scan` gives them).

        Runtime complexity: O(limit) after the scan's start-up.
        """
        ns = self._namespace(namespace)
        clock = self.clock()
        return clock, list(itertools.islice(ns.scan(start=start, stop=stop, prefix=prefix), limit))

    # -- protocol: anti-entropy ------------------------------------------------------
    def digest(self, namespace: str, paths: List[Tuple[int, ...]]) -> List[List[int]]:
        """The 16 child hashes of each digest-tree node in ``paths``."""
        self._namespace(namespace)
        return [self.engine.digest(namespace, tuple(p)) for p in paths]

    def records(self, namespace: str, leaves: List[Tuple[int, int, int]]) -> bytes:
        """Every key's newest records under each leaf in ``leaves`` (wire format)."""
        self._namespace(namespace)
        return encode_changes(r for p in leaves for r in self.engine.records(namespace, tuple(p)))

    # -- protocol: hints ---------------------------------------------------------------
    def store_hint(self, target: int, blob: bytes) -> None:
        """Keep ``blob`` for replica ``target`` of this partition (persisted)."""
        self.hints.add(target, blob)
        with self._state:
            self.stats["hints_stored"] += 1

    def hint_targets(self) -> Dict[int, Tuple[int, int]]:
        """``{target: (hints, bytes)}`` this replica holds."""
        return self.hints.pending()

    def take_hints(self, target: int, max_bytes: int) -> Tuple[List[bytes], bytes]:
        """See :meth:`HintStore.take`."""
        return self.hints.take(target, max_bytes)

    def drop_hints(self, target: int, keys: List[bytes]) -> None:
        """See :meth:`HintStore.drop`."""
        self.hints.drop(target, keys)

    # -- protocol: diagnostics ------------------------------------------------------
    def ping(self) -> int:
        """This replica's node id (a cheap liveness check)."""
        return self.node_id

    def info(self) -> Dict[str, Any]:
        """Identity, counters and the root hash of every namespace."""
        with self._state:
            stats = dict(self.stats)
        return {
            "partition": self.partition, "replica": self.index, "node_id": self.node_id,
            "directory": self.directory, "stats": stats, "hints": self.hints.pending(),
            "roots": {name: self.engine.digest(name, ()) for name in self.namespaces},
        }

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def namespace(self, name: str) -> Namespace:
        """The engine namespace ``name`` (local access, for tests and tools)."""
        return self._namespace(name)

    def close(self) -> None:
        """Refuse new calls, wait for the ones in flight, close both engines.
        Safe to call twice."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
        try:
            self._unsubscribe()
            self.hints.close()
        finally:
            self.engine.close()
