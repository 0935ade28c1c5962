"""An in-process replica group: the cluster protocol over a simulated network.

:class:`ReplicaGroup` runs the same protocol as the Ray cluster
(:mod:`abase_engine.cluster`): P partitions x N replicas, each replica a
:class:`~abase_engine.cluster.replica.ReplicaService` (one engine in its own
directory, with its persisted hint store and request table), and a
:class:`~abase_engine.cluster.coordinator.Coordinator` as the client. Only
the transport differs: here it is a :class:`SimulatedNetwork`, which calls
the replicas in the caller's thread and can lose, delay, duplicate and
reorder calls, deterministically from a seed. So the hypothesis chaos tests
in ``tests/test_replication.py`` exercise the code that runs on Ray.

Replica ``i`` of every partition lives on simulated *node* ``i``:
``down(i)`` stops node ``i`` (its replicas' engines are closed; calls to them
fail as not delivered), ``up(i)`` reopens them from their directories and
replays the hints the other nodes hold for them; ``partition(i)`` on the
network makes calls to node ``i`` time out (they are not delivered).

On disk, ``root_dir`` has the cluster layout (see
:mod:`abase_engine.cluster`): ``ids/`` (the node id allocator),
``p<PPPP>/r<i>/{IDENTITY,engine/,hints/}``.

Thread-safety: client calls (``put``, ``get`` ...) may come from several
threads. ``down``, ``up``, ``restart``, ``settle``, ``anti_entropy`` and
``close`` are administrative: call them from one thread while no client
call is in flight.
"""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from .cluster.coordinator import Coordinator, WriteResult
from .cluster.errors import QuorumError, ReplicaDownError, ReplicaUnavailableError
from .cluster.ids import IdAllocator
from .cluster.placement import PARTITION_SEED, leaf_path, partition_of
from .cluster.repair import anti_entropy as _anti_entropy, deliver_hints as _deliver_hints, new_stats
from .cluster.replica import ReplicaService, check_namespaces, replica_dir
from .cluster.resolve import resolve
from .cluster.transport import ReplicaRef, Transport, completed, failed
from .cluster.wire import decode_changes, encode_changes
from .merge import MergeOperator
from .record import Timestamp

__all__ = [
    "ReplicaGroup", "SimulatedNetwork", "WriteResult", "QuorumError", "ReplicaDownError",
    "ReplicaUnavailableError", "partition_of", "leaf_path", "encode_changes", "decode_changes", "resolve",
    "PARTITION_SEED",
]


class SimulatedNetwork(Transport):
    """A lossy, reordering network of in-process replicas, deterministic for a seed and a call order.

    Each call is lost with probability ``drop`` (half the time the request,
    half the time the reply: then it ran), else duplicated with probability
    ``duplicate``; each copy is held back with probability ``delay`` (the
    caller sees a timeout at once; the request runs later). Every call then
    releases one random held request with probability ``release``, so held
    requests overtake and are overtaken; :meth:`flush` releases all of them.
    ``partition(i)`` makes every call to node ``i`` time out, undelivered,
    until ``heal(i)``; a node that is down refuses calls (certainly not
    delivered). ``stats`` counts sent, dropped, duplicated, delayed.

    Calls run in the caller's thread, so a single-threaded test is
    deterministic. Thread-safety: safe (a lock around the random choices).
    """

    def __init__(self, seed: int = 0, drop: float = 0.0, duplicate: float = 0.0, delay: float = 0.0,
                 release: float = 0.5) -> None:
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.delay, self.release = drop, duplicate, delay, release
        self.partitioned: Set[int] = set()
        self.stats = {"sent": 0, "dropped": 0, "duplicated": 0, "delayed": 0}
        self._held: List[Tuple[ReplicaRef, str, Tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._lookup: Callable[[ReplicaRef], Optional[ReplicaService]] = lambda ref: None

    def attach(self, lookup: Callable[[ReplicaRef], Optional[ReplicaService]]) -> None:
        """Tell the network how to find a replica (the group does this)."""
        self._lookup = lookup

    def set_faults(self, drop: float = 0.0, duplicate: float = 0.0, delay: float = 0.0) -> None:
        """Change the fault rates (all zero: a reliable network from now on)."""
        with self._lock:
            self.drop, self.duplicate, self.delay = drop, duplicate, delay

    def partition(self, node: int) -> None:
        """Cut node ``node`` off: calls to it time out undelivered."""
        with self._lock:
            self.partitioned.add(node)

    def heal(self, node: Optional[int] = None) -> None:
        """End the partition of node ``node`` (None: of every node)."""
        with self._lock:
            if node is None:
                self.partitioned.clear()
            else:
                self.partitioned.discard(node)

    def held(self) -> int:
        """How many requests the network holds back."""
        with self._lock:
            return len(self._held)

    def _run(self, ref: ReplicaRef, method: str, args: Tuple[Any, ...]) -> "Future[Any]":
        svc = self._lookup(ref)
        if svc is None or svc.closed:
            return failed(ReplicaDownError(f"replica {ref} is down", delivered=False))
        try:
            return completed(svc.handle(method, args))
        except Exception as exc:
            return failed(exc)

    def call(self, ref: ReplicaRef, method: str, args: Sequence[Any]) -> "Future[Any]":
        args = tuple(args)
        now: List[Tuple[ReplicaRef, str, Tuple[Any, ...]]] = []
        answer: Optional[str] = None  # None: deliver; "lost", "late", "cut": the caller gets no answer
        with self._lock:
            rng = self.rng
            self.stats["sent"] += 1
            if ref.index in self.partitioned:
                self.stats["dropped"] += 1
                answer = "cut"
            elif rng.random() < self.drop:
                self.stats["dropped"] += 1
                answer = "lost" if rng.random() < 0.5 else "reply lost"
            copies = 0 if answer in ("cut", "lost") else 1
            if copies and rng.random() < self.duplicate:
                copies = 2
                self.stats["duplicated"] += 1
            first = True
            for _ in range(copies):
                if rng.random() < self.delay:
                    self.stats["delayed"] += 1
                    self._held.append((ref, method, args))
                    if first and answer is None:
                        answer = "late"
                else:
                    now.append((ref, method, args))
                first = False
            if self._held and rng.random() < self.release:
                now.append(self._held.pop(rng.randrange(len(self._held))))
        result: Optional[Future] = None
        for item in now:  # outside the lock: replicas may be slow
            if item[0].index in self.partitioned:
                continue
            fut = self._run(*item)
            if result is None and item[0] == ref and item[1] == method and item[2] is args:
                result = fut
        if answer == "cut":  # the sender cannot tell a cut-off node from a slow one
            return failed(ReplicaUnavailableError(f"call {method} to {ref} timed out (node partitioned)"))
        if answer is not None or result is None:
            return failed(ReplicaUnavailableError(f"call {method} to {ref} timed out ({answer or 'late'})"))
        return result

    def flush(self) -> None:
        """Run every held request, in a random order (those to cut-off nodes are dropped)."""
        with self._lock:
            held, self._held = self._held, []
            self.rng.shuffle(held)
        for ref, method, args in held:
            if ref.index in self.partitioned:
                with self._lock:
                    self.stats["dropped"] += 1
                continue
            self._run(ref, method, args)


class ReplicaGroup:
    """P partitions x N in-process replicas and a client, over a :class:`SimulatedNetwork`.

    :param root_dir: the cluster's directory (created if missing).
    :param n_replicas: N (also the number of simulated nodes).
    :param partitions: P.
    :param write_quorum: W of the group's client.
    :param read_quorum: R of the group's client.
    :param namespaces: ``{name: MergeOperator or None}``; ``""`` (LWW) is always there.
    :param transport: the network (default: a reliable :class:`SimulatedNetwork`).
    :param timeout: the client's call deadline, s (calls here never block).
    :param durability: of every engine.
    :param clock: wall-clock ms for the client's HLC (tests).
    :param engine_options: passed to every replica's ``abase_engine.open``.
    :raises ClusterConfigError: bad quorums, partitions or namespaces.
    """

    def __init__(self, root_dir: str, n_replicas: int = 3, partitions: int = 1, write_quorum: int = 2,
                 read_quorum: int = 2, namespaces: Optional[Dict[str, Optional[MergeOperator]]] = None,
                 transport: Optional[SimulatedNetwork] = None, timeout: float = 10.0, durability: str = "process",
                 clock: Optional[Callable[[], int]] = None, **engine_options: Any) -> None:
        self.root = os.fspath(root_dir)
        self.namespaces = check_namespaces(namespaces)
        self.network = transport if transport is not None else SimulatedNetwork()
        self.n, self.partitions = n_replicas, partitions
        self._durability, self._engine_options = durability, engine_options
        self._timeout = timeout
        os.makedirs(self.root, exist_ok=True)
        self.ids = IdAllocator(os.path.join(self.root, "ids"))
        # the client validates the configuration before any engine opens
        self.client = Coordinator(self.network, partitions=partitions, replicas=n_replicas,
                                  namespaces=self.namespaces, node_id=self.ids.allocate(),
                                  write_quorum=write_quorum, read_quorum=read_quorum, timeout=timeout,
                                  backoff=0.0, background_threads=0, clock=clock)
        self._services: Dict[Tuple[int, int], ReplicaService] = {}
        self._down: Set[int] = set()
        self.network.attach(self._lookup)
        try:
            for i in range(n_replicas):
                self._start_node(i)
        except BaseException:
            self.close()
            raise
        self.stats = {"hints_delivered": 0}

    # -- nodes -----------------------------------------------------------------------
    def _lookup(self, ref: ReplicaRef) -> Optional[ReplicaService]:
        if ref.index in self._down:
            return None
        return self._services.get((ref.partition, ref.index))

    def _start_node(self, i: int) -> None:
        for p in range(self.partitions):
            self._services[(p, i)] = ReplicaService(
                replica_dir(self.root, p, i), p, i, self.namespaces, self.ids.allocate,
                self._durability, self._engine_options)

    def replica(self, partition: int, index: int) -> ReplicaService:
        """Replica ``index`` of ``partition`` (up or down: a down one is closed)."""
        return self._services[(partition, index)]

    def replicas_of(self, key: bytes) -> List[ReplicaService]:
        """The N replicas of ``key``'s partition, by index."""
        p = partition_of(key, self.partitions)
        return [self._services[(p, i)] for i in range(self.n)]

    def is_up(self, node: int) -> bool:
        return node not in self._down

    def down(self, node: int) -> None:
        """Stop node ``node``: its replicas' engines close; calls to them fail, undelivered."""
        if node in self._down:
            return
        self._down.add(node)
        for p in range(self.partitions):
            self._services[(p, node)].close()

    def up(self, node: int) -> None:
        """Reopen node ``node``'s replicas from their directories and replay their hints."""
        if node not in self._down:
            return
        self._start_node(node)
        self._down.discard(node)
        self.deliver_hints()

    def restart(self, node: int) -> None:
        """Close and reopen node ``node``'s replicas (recovery from their own directories)."""
        self.down(node)
        self.up(node)

    # -- repair --------------------------------------------------------------------------
    def deliver_hints(self) -> Dict[str, int]:
        """Every up replica replays the hints it holds to their targets."""
        total = {"delivered": 0, "records": 0, "failed_targets": 0}
        for (p, i), svc in sorted(self._services.items()):
            if i in self._down or svc.closed:
                continue
            for k, v in _deliver_hints(svc, self.network, self._timeout).items():
                total[k] += v
        self.stats["hints_delivered"] += total["delivered"]
        return total

    def settle(self) -> None:
        """Release every held request, then replay hints."""
        self.network.flush()
        self.client.flush()
        self.deliver_hints()

    def anti_entropy(self) -> Dict[str, int]:
        """One anti-entropy sweep over every partition's up replicas (see
        :func:`abase_engine.cluster.repair.anti_entropy`)."""
        stats = new_stats()
        up = [i for i in range(self.n) if i not in self._down]
        for p in range(self.partitions):
            _anti_entropy(self.network, p, up, self.namespaces, self._timeout, stats)
        return stats

    # -- the client's calls ----------------------------------------------------------------
    def put(self, key: bytes, value: bytes, namespace: str = "", w: Optional[int] = None) -> WriteResult:
        """See :meth:`Coordinator.put`."""
        return self.client.put(key, value, namespace, w)

    def delete(self, key: bytes, namespace: str = "", w: Optional[int] = None) -> WriteResult:
        """See :meth:`Coordinator.delete`."""
        return self.client.delete(key, namespace, w)

    def merge(self, key: bytes, operation: Any, namespace: str = "", w: Optional[int] = None,
              observe_quorum: bool = False) -> WriteResult:
        """See :meth:`Coordinator.merge`."""
        return self.client.merge(key, operation, namespace, w, observe_quorum)

    def put_many(self, items: Iterable[Tuple[bytes, bytes]], namespace: str = "",
                 w: Optional[int] = None) -> Optional[Timestamp]:
        """See :meth:`Coordinator.put_many`."""
        return self.client.put_many(items, namespace, w)

    def get(self, key: bytes, default: Any = None, namespace: str = "", read_quorum: Optional[int] = None) -> Any:
        """See :meth:`Coordinator.get`."""
        return self.client.get(key, default, namespace, read_quorum)

    def get_many(self, keys: Iterable[bytes], namespace: str = "", r: Optional[int] = None) -> List[Any]:
        """See :meth:`Coordinator.get_many`."""
        return self.client.get_many(keys, namespace, r)

    def scan(self, partition: int, namespace: str = "", **kw: Any) -> Iterator[Tuple[bytes, Any]]:
        """See :meth:`Coordinator.scan`."""
        return self.client.scan(partition, namespace, **kw)

    def retry(self, result: Any, w: Optional[int] = None) -> Any:
        """See :meth:`Coordinator.retry`."""
        return self.client.retry(result, w)

    def new_client(self, **settings: Any) -> Coordinator:
        """Another client of this group, with a node id of its own."""
        settings.setdefault("backoff", 0.0)
        settings.setdefault("timeout", self._timeout)
        return Coordinator(self.network, partitions=self.partitions, replicas=self.n, namespaces=self.namespaces,
                           node_id=self.ids.allocate(), **settings)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the network, close the client and every replica. Safe to call twice."""
        try:
            self.network.flush()
            self.client.close()
        finally:
            for svc in self._services.values():
                svc.close()

    def __enter__(self) -> "ReplicaGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
