"""A reference leaderless replica group built on the engine's replication hooks.

This is an *example to build on*, not a network server: every replica is an
:class:`~abase_engine.Engine` in its own directory with its own node id,
served by its own worker thread, and "the network" is a :class:`Transport`
object that hands messages to the worker queues (a test can make it delay,
reorder, duplicate and drop them, deterministically from a seed). The pieces
are the ones a Dynamo-style store needs, each as short as it can be:

* **Placement.** A key is hashed (xxh64, seed :data:`PARTITION_SEED`) to one
  of ``partitions`` partitions. Every partition is replicated on *all*
  ``n_replicas`` replicas (N = n_replicas); the partition only decides the
  key's *preference list*: replica ``p % n`` first, then the next ones round
  the ring. The first replica of that list that is up coordinates the key.
  (A ring placement with N < n_replicas would need digests per partition;
  the engine's digests are per namespace, so here every replica holds
  everything and anti-entropy can compare whole namespaces.)
* **Writes** (:meth:`ReplicaGroup.put` / ``delete`` / ``merge``) run on the
  coordinator replica. Its ``on_commit`` listener captures the committed
  :class:`~abase_engine.Change` records (for a CRDT merge: the operand, a
  delta); they are sent to every other replica, whose worker ``apply()``-s
  them and acknowledges. The call returns after ``write_quorum`` (W) replicas,
  the coordinator included, hold the write. It is never rolled back: a write
  that misses its quorum raises :class:`QuorumError` but stays, and spreads
  later (hinted handoff, read repair, anti-entropy), as in Dynamo.
* **Reads** (:meth:`ReplicaGroup.get`) ask ``read_quorum`` (R) replicas for the
  key's newest record, resolve them (LWW: greatest timestamp; CRDT: join via
  the namespace's operator) and *read-repair*: the replicas that were behind
  get the records they lack. With W + R > N a read sees every acknowledged
  write (when no message is lost); W = 1, R = 2 of 3 is a fast-write setting.
* **Hinted handoff.** ``down(i)`` stops replica *i* (worker stopped, engine
  closed). Messages for it are kept as *hints* by the next replica up the
  ring and delivered when ``up(i)`` reopens it. Hints are held in memory by
  the holder's :class:`Replica` object (a production system would persist
  them, e.g. in a namespace of the holder's engine); a hint that finds no
  holder is dropped, and anti-entropy repairs what it carried.
* **Anti-entropy** (:meth:`ReplicaGroup.anti_entropy`) compares the engines'
  Merkle digests pairwise, top down, exchanging only the differing nodes,
  then the records of the differing leaves, and applies what each side
  misses. It is what makes the group converge whatever the network lost.

Everything replicas exchange is a list of ``Change`` records, and the engine
makes applying them idempotent and order-independent, so duplicates and
reordering are harmless by construction; only loss needs a repair path.

Thread-safety: ``put``/``delete``/``merge``/``get`` may be called from several
threads at once (each engine call runs on its replica's worker). ``down``,
``up``, ``restart``, ``anti_entropy``, ``settle`` and ``close`` are
administrative: call them from one thread while no client call is in flight.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import random
import struct
import threading
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import xxhash

from . import open as _open_engine
from .engine import Engine
from .errors import AbaseError
from .merge import LWW, MergeOperator
from .record import Change, Op, Timestamp

__all__ = [
    "ReplicaGroup", "Replica", "Transport", "SimulatedNetwork", "Message", "WriteResult", "QuorumError",
    "ReplicaDownError", "partition_of", "leaf_path", "encode_changes", "decode_changes", "resolve",
]

log = logging.getLogger(__name__)

#: Seed of the key -> partition hash (not the digest tree's hash, so the two stay independent).
PARTITION_SEED = 0x5EED
#: Depth of the engines' digest tree below its root, and its fan-out.
TREE_DEPTH, FANOUT = 3, 16
_HASH_BYTES = 8  # one child hash on the wire


class QuorumError(AbaseError):
    """Fewer than the required replicas answered in time. ``result`` holds what is known.

    For a write this is *not* a failure to write: the coordinator holds it and
    it will reach the others (hints, read repair, anti-entropy).
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class ReplicaDownError(AbaseError):
    """A request was sent to a replica that is down."""


# -- placement ---------------------------------------------------------------

def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key``: xxh64(key, PARTITION_SEED) mod ``partitions``."""
    return xxhash.xxh64_intdigest(bytes(key), seed=PARTITION_SEED) % partitions


def leaf_path(key: bytes) -> Tuple[int, int, int]:
    """The digest-tree leaf holding ``key``: the top three nibbles of xxh64(key)."""
    h = xxhash.xxh64_intdigest(bytes(key))
    return (h >> 60) & 15, (h >> 56) & 15, (h >> 52) & 15


# -- wire format -------------------------------------------------------------
# One record: op u8, hlc u64, node u32, len(ns) u16, len(key) u16, len(value) u32
# (0xFFFFFFFF: None), then ns, key, value. Little-endian. Used for hints, the
# crash test's stream file and the byte counts of anti-entropy.

_REC = struct.Struct("<BQIHHI")
_NONE = 0xFFFFFFFF


def encode_changes(changes: Iterable[Change]) -> bytes:
    """Serialize Change records (cursors are not sent: they are local positions)."""
    out = bytearray()
    for ch in changes:
        ns = ch.namespace.encode()
        v = ch.value
        out += _REC.pack(int(ch.op), ch.timestamp.hlc, ch.timestamp.node_id, len(ns), len(ch.key),
                         _NONE if v is None else len(v))
        out += ns
        out += ch.key
        if v is not None:
            out += v
    return bytes(out)


def decode_changes(data: bytes) -> List[Change]:
    """Inverse of :func:`encode_changes`. :raises ValueError: truncated input."""
    out: List[Change] = []
    pos, n = 0, len(data)
    mv = memoryview(data)
    while pos < n:
        if pos + _REC.size > n:
            raise ValueError(f"truncated change record at offset {pos}")
        op, hlc, node, ln, lk, lv = _REC.unpack_from(data, pos)
        pos += _REC.size
        end = pos + ln + lk + (0 if lv == _NONE else lv)
        if end > n:
            raise ValueError(f"truncated change record at offset {pos - _REC.size}")
        ns = bytes(mv[pos:pos + ln]).decode()
        key = bytes(mv[pos + ln:pos + ln + lk])
        value = None if lv == _NONE else bytes(mv[pos + ln + lk:end])
        out.append(Change(ns, key, Op(op), value, Timestamp._from_packed(hlc, node)))
        pos = end
    return out


def _wire_size(changes: Sequence[Change]) -> int:
    return sum(_REC.size + len(c.namespace) + len(c.key) + len(c.value or b"") for c in changes)


# -- resolution --------------------------------------------------------------

def resolve(operator: Optional[MergeOperator], records: Iterable[Optional[Change]]) -> Optional[Change]:
    """The winning record of one key among replicas' newest records (None: absent).

    LWW (``operator`` None or LWW): the greatest timestamp, a DELETE included.
    CRDT: the newest DELETE is the anchor; every state newer than it is
    joined with ``operator.full_merge`` into one MERGE record carrying the
    newest timestamp (the engine's own rule, :mod:`abase_engine.merge`).
    """
    recs = [r for r in records if r is not None]
    if not recs:
        return None
    if operator is None or isinstance(operator, LWW):
        return max(recs, key=lambda r: r.timestamp)
    anchor = max((r for r in recs if r.op == Op.DELETE), key=lambda r: r.timestamp, default=None)
    live = sorted((r for r in recs if r.op != Op.DELETE and (anchor is None or r.timestamp > anchor.timestamp)),
                  key=lambda r: r.timestamp)
    if not live:
        return anchor
    state = live[0].value if len(live) == 1 else operator.full_merge(None, [r.value for r in live])
    return Change(live[-1].namespace, live[-1].key, Op.MERGE, state, live[-1].timestamp)


# -- the network ---------------------------------------------------------------

class Message(NamedTuple):
    """Replication traffic: ``changes`` from replica ``source`` for replica ``target``.

    ``ack`` (or None) is called with the target's index once it applied them.
    """

    source: int
    target: int
    changes: Tuple[Change, ...]
    ack: Optional[Callable[[int], None]] = None


class Transport:
    """A perfect network: every message is delivered at once, exactly once, in order.

    Subclass and override :meth:`send` (and :meth:`flush`) to model another
    network. ``deliver(msg)`` hands a message to its target (its worker queue,
    or a hint holder when the target is down); it never blocks.
    Thread-safety: ``send`` may be called from several threads.
    """

    def send(self, msg: Message, deliver: Callable[[Message], None]) -> None:
        deliver(msg)

    def flush(self) -> None:
        """Deliver every message still held (no-op: nothing is ever held)."""

    def held(self) -> int:
        """How many messages are in flight inside the transport."""
        return 0


class SimulatedNetwork(Transport):
    """A lossy, reordering network, deterministic for a given seed and send order.

    Each message is dropped with probability ``drop``, else sent twice with
    probability ``duplicate``; each copy is held back with probability
    ``delay``. Every send then releases one random held message with
    probability ``release`` (so held messages overtake and are overtaken:
    reordering); :meth:`flush` releases all of them in a random order.
    ``partition(i)`` drops everything to or from replica ``i`` until
    ``heal(i)``. ``stats`` counts sent, dropped, duplicated, delayed.
    """

    def __init__(self, seed: int = 0, drop: float = 0.0, duplicate: float = 0.0, delay: float = 0.0,
                 release: float = 0.5) -> None:
        self.rng = random.Random(seed)
        self.drop, self.duplicate, self.delay, self.release = drop, duplicate, delay, release
        self.partitioned: Set[int] = set()
        self.stats = {"sent": 0, "dropped": 0, "duplicated": 0, "delayed": 0}
        self._held: List[Tuple[Message, Callable[[Message], None]]] = []
        self._lock = threading.Lock()

    def partition(self, i: int) -> None:
        with self._lock:
            self.partitioned.add(i)

    def heal(self, i: Optional[int] = None) -> None:
        """End the partition of replica ``i`` (None: of every replica)."""
        with self._lock:
            if i is None:
                self.partitioned.clear()
            else:
                self.partitioned.discard(i)

    def _cut(self, msg: Message) -> bool:
        return msg.source in self.partitioned or msg.target in self.partitioned

    def send(self, msg: Message, deliver: Callable[[Message], None]) -> None:
        out = []
        with self._lock:
            rng = self.rng
            self.stats["sent"] += 1
            if self._cut(msg) or rng.random() < self.drop:
                self.stats["dropped"] += 1
            else:
                copies = 1
                if rng.random() < self.duplicate:
                    copies = 2
                    self.stats["duplicated"] += 1
                for _ in range(copies):
                    if rng.random() < self.delay:
                        self.stats["delayed"] += 1
                        self._held.append((msg, deliver))
                    else:
                        out.append((msg, deliver))
            if self._held and rng.random() < self.release:
                m, d = self._held.pop(rng.randrange(len(self._held)))
                if self._cut(m):
                    self.stats["dropped"] += 1
                else:
                    out.append((m, d))
        for m, d in out:  # outside the lock: delivery takes the group's lock
            d(m)

    def flush(self) -> None:
        with self._lock:
            held, self._held = self._held, []
            self.rng.shuffle(held)
            out = [(m, d) for m, d in held if not self._cut(m)]
            self.stats["dropped"] += len(held) - len(out)
        for m, d in out:
            d(m)

    def held(self) -> int:
        with self._lock:
            return len(self._held)


# -- one replica ---------------------------------------------------------------

_STOP = object()


class Replica:
    """One engine plus the worker thread that serves it.

    Every engine call of the group runs on this worker, taken from ``inbox``
    in FIFO order: ``("apply", Message)`` from the network, or ``("call", fn,
    future)`` for requests (local writes, reads, digests). The engine is
    thread-safe anyway; the single worker makes a replica behave like a remote
    node: one queue, requests served in arrival order.

    ``hints`` maps a down replica's index to the change lists held for it.
    Thread-safety: ``submit`` from any thread; ``start``/``stop`` are the
    group's (under its lock).
    """

    def __init__(self, index: int, path: str, node_id: int, namespaces: Dict[str, Optional[MergeOperator]],
                 durability: str, engine_options: Dict[str, Any]) -> None:
        self.index, self.path, self.node_id = index, path, node_id
        self._namespaces = namespaces
        self._durability, self._engine_options = durability, engine_options
        self.engine: Optional[Engine] = None
        self.ns: Dict[str, Any] = {}
        self.is_up = False
        self.hints: Dict[int, List[Tuple[Change, ...]]] = {}
        self.applied = 0        # apply() results: records that changed something here
        self.errors = 0         # failed applies (logged)
        self.inbox: "queue.Queue[Any]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._captured: Optional[List[Change]] = None
        self._unsubscribe: Optional[Callable[[], None]] = None

    def start(self) -> None:
        """Open the engine (and its namespaces with their operators) and start the worker."""
        eng = _open_engine(self.path, node_id=self.node_id, durability=self._durability, **self._engine_options)
        self.engine = eng
        self.ns = {name: (eng if name == "" else eng.namespace(name, merge=op))
                   for name, op in self._namespaces.items()}
        self._unsubscribe = eng.on_commit(self._on_commit)
        self.inbox = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"replica-{self.index}", daemon=True)
        self.is_up = True
        self._thread.start()

    def stop(self) -> List[Any]:
        """Stop the worker (after what is already queued), close the engine.

        Returns the inbox items that arrived after the stop request (the
        group turns their messages into hints).
        """
        self.is_up = False
        self.inbox.put(_STOP)
        assert self._thread is not None
        self._thread.join()
        late = []
        while True:
            try:
                late.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if self._unsubscribe is not None:
            self._unsubscribe()
        assert self.engine is not None
        self.engine.close()
        self.engine = None
        return late

    def submit(self, fn: Callable[[Engine], Any]) -> "Future[Any]":
        """Run ``fn(engine)`` on the worker; the future holds its result or exception."""
        fut: "Future[Any]" = Future()
        if not self.is_up:
            fut.set_exception(ReplicaDownError(f"replica {self.index} is down"))
        else:
            self.inbox.put(("call", fn, fut))
        return fut

    def call(self, fn: Callable[[Engine], Any], timeout: Optional[float] = None) -> Any:
        return self.submit(fn).result(timeout)

    def write_local(self, fn: Callable[[], Any]) -> Tuple[Any, List[Change]]:
        """On the worker: run the local write ``fn`` and return (its result, the
        Change records it committed, as the on_commit listener saw them)."""
        self._captured = []
        try:
            result = fn()
            return result, self._captured
        finally:
            self._captured = None

    def _on_commit(self, changes: List[Change]) -> None:
        # Runs in the writing thread: the worker, inside write_local.
        if self._captured is not None:
            self._captured.extend(changes)

    def _run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is _STOP:
                return
            if item[0] == "apply":
                msg = item[1]
                try:
                    self.applied += self.engine.apply(msg.changes)
                except Exception:  # a bad message must not kill the replica
                    self.errors += 1
                    log.exception("replica %d: apply from %d failed", self.index, msg.source)
                    continue
                if msg.ack is not None:
                    msg.ack(self.index)
            else:
                _kind, fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(self.engine))
                    except BaseException as exc:
                        fut.set_exception(exc)


class _Acks:
    """Distinct replicas that hold one write; wait() until ``n`` of them do."""

    def __init__(self, first: int) -> None:
        self.replicas = {first}
        self._cond = threading.Condition()

    def __call__(self, index: int) -> None:
        with self._cond:
            self.replicas.add(index)  # a duplicate message acknowledges once
            self._cond.notify_all()

    def wait(self, n: int, timeout: Optional[float]) -> int:
        with self._cond:
            self._cond.wait_for(lambda: len(self.replicas) >= n, timeout)
            return len(self.replicas)


class WriteResult(NamedTuple):
    """What a group write returns: the record's timestamp, the records the
    coordinator committed (and replicated), the coordinator's index, and how
    many replicas held it when the call returned."""

    timestamp: Timestamp
    changes: Tuple[Change, ...]
    coordinator: int
    acks: int


# -- the group -------------------------------------------------------------------

class ReplicaGroup:
    """``n_replicas`` engines under ``root_dir`` that replicate each other, leaderless.

    :param namespaces: ``{name: operator}``; the default namespace ``""`` (LWW)
        is always there. None as an operator means LWW.
    :param partitions: P, partitions keys hash to (they pick the coordinator).
    :param write_quorum: W, replicas that must hold a write before it returns.
    :param read_quorum: R, replicas a read consults.
    :param transport: the network (default: a perfect one, :class:`Transport`).
    :param timeout: seconds a write waits for W acknowledgements.
    :param engine_options: passed to every ``abase_engine.open``.

    Replica ``i`` lives in ``root_dir/replica-<i>`` with node id ``i + 1``.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, root_dir: str, n_replicas: int = 3, partitions: int = 16, write_quorum: int = 2,
                 read_quorum: int = 2, namespaces: Optional[Dict[str, Optional[MergeOperator]]] = None,
                 transport: Optional[Transport] = None, timeout: float = 10.0, durability: str = "process",
                 **engine_options: Any) -> None:
        if not 1 <= write_quorum <= n_replicas or not 1 <= read_quorum <= n_replicas:
            raise ValueError("quorums must be in 1..n_replicas")
        self.n, self.partitions = n_replicas, partitions
        self.write_quorum, self.read_quorum = write_quorum, read_quorum
        self.namespaces: Dict[str, Optional[MergeOperator]] = {"": None}
        for name, op in (namespaces or {}).items():
            self.namespaces[name] = None if op is None or isinstance(op, LWW) else op
        self.transport = transport if transport is not None else Transport()
        self.timeout = timeout
        self.stats = {"hints_stored": 0, "hints_delivered": 0, "hints_dropped": 0, "read_repairs": 0}
        self._lock = threading.RLock()  # membership (is_up) and hints
        os.makedirs(root_dir, exist_ok=True)
        self.replicas = [Replica(i, os.path.join(root_dir, f"replica-{i}"), i + 1, self.namespaces, durability,
                                 engine_options) for i in range(n_replicas)]
        try:
            for r in self.replicas:
                r.start()
        except BaseException:
            self.close()
            raise

    # -- placement ---------------------------------------------------------------
    def preference_list(self, key: bytes) -> List[int]:
        """Replica indexes for ``key``, coordinator first: ``p % n`` then round the ring."""
        p = partition_of(key, self.partitions)
        return [(p + j) % self.n for j in range(self.n)]

    def coordinator(self, key: bytes) -> int:
        """The first replica of the key's preference list that is up."""
        for i in self.preference_list(key):
            if self.replicas[i].is_up:
                return i
        raise ReplicaDownError("every replica is down")

    # -- writes ------------------------------------------------------------------
    def put(self, key: bytes, value: bytes, namespace: str = "") -> WriteResult:
        """Put ``key`` on the key's coordinator, replicate, return after W acks."""
        return self._write(key, namespace, lambda ns: ns.put(key, value))

    def delete(self, key: bytes, namespace: str = "") -> WriteResult:
        """Delete ``key`` (a tombstone that replicates like a put)."""
        return self._write(key, namespace, lambda ns: ns.delete(key))

    def merge(self, key: bytes, operation: Any, namespace: str = "") -> WriteResult:
        """A CRDT operation (e.g. ``PNCounter.increment(1)``): the coordinator
        turns it into an operand (a delta) from its own state; that delta is
        what replicates."""
        return self._write(key, namespace, lambda ns: ns.merge(key, operation))

    def _write(self, key: bytes, namespace: str, fn: Callable[[Any], Timestamp]) -> WriteResult:
        if namespace not in self.namespaces:
            raise KeyError(f"namespace {namespace!r} is not one of the group's")
        coord = self.coordinator(key)
        rep = self.replicas[coord]
        ts, changes = rep.call(lambda _e: rep.write_local(lambda: fn(rep.ns[namespace])))
        changes = tuple(Change(c.namespace, c.key, c.op, c.value, c.timestamp) for c in changes)  # no cursors
        acks = _Acks(coord)
        for target in range(self.n):
            if target != coord:
                self.transport.send(Message(coord, target, changes, acks), self._deliver)
        got = acks.wait(self.write_quorum, self.timeout)
        result = WriteResult(ts, changes, coord, got)
        if got < self.write_quorum:
            raise QuorumError(f"write acknowledged by {got} of {self.write_quorum} replicas in {self.timeout}s",
                              result)
        return result

    def _deliver(self, msg: Message) -> None:
        """The transport's hand-off: the target's queue, or a hint when it is down."""
        with self._lock:
            target = self.replicas[msg.target]
            if target.is_up:
                target.inbox.put(("apply", msg))
                return
            self._store_hint(msg.target, msg.changes)

    def _store_hint(self, target: int, changes: Tuple[Change, ...]) -> None:
        for j in range(1, self.n):
            holder = self.replicas[(target + j) % self.n]
            if holder.is_up:
                holder.hints.setdefault(target, []).append(changes)
                self.stats["hints_stored"] += 1
                return
        self.stats["hints_dropped"] += 1

    # -- reads -------------------------------------------------------------------
    def get(self, key: bytes, default: Any = None, namespace: str = "", read_quorum: Optional[int] = None) -> Any:
        """The resolved value of ``key`` from R replicas, repairing the stale ones.

        :raises QuorumError: fewer than R replicas are up.
        """
        record = self.get_record(key, namespace, read_quorum)
        if record is None or record.op == Op.DELETE:
            return default
        op = self.namespaces[namespace]
        return record.value if op is None else op.to_value(record.value)

    def get_record(self, key: bytes, namespace: str = "", read_quorum: Optional[int] = None) -> Optional[Change]:
        """The resolved newest record of ``key`` (see :func:`resolve`), after read repair."""
        r = self.read_quorum if read_quorum is None else read_quorum
        targets = [i for i in self.preference_list(key) if self.replicas[i].is_up][:r]
        if len(targets) < r:
            raise QuorumError(f"only {len(targets)} of {r} replicas are up")
        futs = [self.replicas[i].submit(lambda e, key=key: _key_record(e, namespace, key)) for i in targets]
        seen = [f.result(self.timeout) for f in futs]
        winner = resolve(self.namespaces[namespace], seen)
        if winner is None:
            return None
        operator = self.namespaces[namespace]
        repairs = []
        for i, rec in zip(targets, seen):
            if _same(operator, rec, winner):
                continue
            # LWW: the winner; CRDT: the others' states (a join is idempotent).
            fix = [winner] if operator is None else [s for s in seen if s is not None and s != rec]
            repairs.append(self.replicas[i].submit(lambda e, fix=fix: e.apply(fix)))
        for f in repairs:
            self.stats["read_repairs"] += 1 if f.result(self.timeout) else 0
        return winner

    # -- membership, hinted handoff ------------------------------------------------
    def down(self, i: int) -> None:
        """Take replica ``i`` down: stop its worker, close its engine. Messages
        for it from now on (and any that raced the stop) become hints."""
        with self._lock:
            rep = self.replicas[i]
            if not rep.is_up:
                return
            for item in rep.stop():
                if item is not _STOP and item[0] == "apply":
                    self._store_hint(i, item[1].changes)
                elif item is not _STOP:
                    item[2].set_exception(ReplicaDownError(f"replica {i} went down"))

    def up(self, i: int) -> None:
        """Reopen replica ``i`` and hand it every hint held for it (waits until applied)."""
        with self._lock:
            rep = self.replicas[i]
            if rep.is_up:
                return
            rep.start()
            for holder in self.replicas:
                for changes in holder.hints.pop(i, []):
                    rep.inbox.put(("apply", Message(holder.index, i, changes, None)))
                    self.stats["hints_delivered"] += 1
        rep.call(lambda e: None, self.timeout)  # FIFO: the hints are applied after this returns

    def restart(self, i: int) -> None:
        """Close and reopen replica ``i`` (its engine recovers from its own directory)."""
        self.down(i)
        self.up(i)

    def settle(self) -> None:
        """Flush the transport and wait until every up replica applied what it was sent."""
        self.transport.flush()
        for rep in self.replicas:
            if rep.is_up:
                rep.call(lambda e: None, self.timeout)

    # -- anti-entropy ----------------------------------------------------------------
    def anti_entropy(self) -> Dict[str, int]:
        """Make every pair of up replicas equal, by Merkle digests.

        For each pair (a, b), in lexicographic order, and each namespace: one
        exchange per tree level sends a's hashes of the children of every node
        still differing (b compares with its own and answers with the
        differing ones), then one exchange swaps the records of the differing
        leaves, and each side applies what it lacks. In that pair order
        replica 0 holds everything after its last pair, replica n-1 after its
        first, and replica k after its pair with n-1: one sweep converges.

        :return: ``{"rounds": exchanges, "bytes": approximate bytes on the wire,
            "keys_repaired": records that changed something when applied,
            "leaves": differing leaves compared}``.
        """
        stats = {"rounds": 0, "bytes": 0, "keys_repaired": 0, "leaves": 0}
        up = [r for r in self.replicas if r.is_up]
        for a, b in itertools.combinations(up, 2):
            for name in self.namespaces:
                self._sync_pair(a, b, name, stats)
        return stats

    def _sync_pair(self, a: Replica, b: Replica, namespace: str, stats: Dict[str, int]) -> None:
        frontier: List[Tuple[int, ...]] = [()]
        for _depth in range(TREE_DEPTH):
            paths = list(frontier)
            ha = a.call(lambda e: [e.digest(namespace, p) for p in paths], self.timeout)
            hb = b.call(lambda e: [e.digest(namespace, p) for p in paths], self.timeout)
            stats["rounds"] += 1
            # a -> b: the paths and their 16 child hashes; b -> a: a 16-bit mask per path
            stats["bytes"] += sum(len(p) + 1 + FANOUT * _HASH_BYTES + 2 for p in paths)
            frontier = [p + (c,) for p, da, db in zip(paths, ha, hb) for c in range(FANOUT) if da[c] != db[c]]
            if not frontier:
                return
        leaves = frontier
        stats["leaves"] += len(leaves)
        ra = a.call(lambda e: [r for p in leaves for r in e.records(namespace, p)], self.timeout)
        rb = b.call(lambda e: [r for p in leaves for r in e.records(namespace, p)], self.timeout)
        stats["rounds"] += 1
        to_a, to_b = _diff(self.namespaces[namespace], ra, rb)
        # a sends its leaf records; b answers with the ones a lacks
        stats["bytes"] += _wire_size(ra) + _wire_size(to_a) + len(leaves) * (TREE_DEPTH + 1)
        for rep, recs in ((a, to_a), (b, to_b)):
            if recs:
                stats["keys_repaired"] += rep.call(lambda e, recs=recs: e.apply(recs), self.timeout)

    # -- lifecycle -----------------------------------------------------------------
    def close(self) -> None:
        """Flush the network, stop every worker, close every engine."""
        try:
            self.transport.flush()
        finally:
            with self._lock:
                for r in self.replicas:
                    if r.is_up:
                        r.stop()

    def __enter__(self) -> "ReplicaGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _key_record(engine: Engine, namespace: str, key: bytes) -> Optional[Change]:
    """The newest record of ``key`` on this engine (None: never written), from its digest leaf."""
    for r in engine.records(namespace, leaf_path(key)):
        if r.key == key:
            return Change(r.namespace, r.key, r.op, r.value, r.timestamp)
    return None


def _diff(operator: Optional[MergeOperator], ra: Sequence[Change], rb: Sequence[Change]
          ) -> Tuple[List[Change], List[Change]]:
    """(records a lacks, records b lacks) between two leaf record lists.

    LWW: the side with the older (or no) record gets the newer one. CRDT: if
    the two states differ, each side gets the other's (join is idempotent).
    """
    # A CRDT key may come as two records (its newest delete, then its
    # state): keep them all, compare by the last (the state or the winner).
    ma: Dict[Tuple[str, bytes], List[Change]] = {}
    mb: Dict[Tuple[str, bytes], List[Change]] = {}
    for m, recs in ((ma, ra), (mb, rb)):
        for r in recs:
            m.setdefault((r.namespace, r.key), []).append(r)
    to_a: List[Change] = []
    to_b: List[Change] = []
    for k in ma.keys() | mb.keys():
        xs, ys = ma.get(k, []), mb.get(k, [])
        x, y = (xs[-1] if xs else None), (ys[-1] if ys else None)
        if _same(operator, x, y) and len(xs) == len(ys):
            continue
        if operator is None:
            if y is None or (x is not None and x.timestamp > y.timestamp):
                to_b.append(_plain(x))
            else:
                to_a.append(_plain(y))
        else:
            to_b.extend(_plain(r) for r in xs)
            to_a.extend(_plain(r) for r in ys)
    return to_a, to_b


def _same(operator: Optional[MergeOperator], x: Optional[Change], y: Optional[Change]) -> bool:
    """Whether two replicas' newest records of a key agree. A CRDT state
    record is stamped when ``records()`` builds it, so only its value counts."""
    if x is None or y is None:
        return x is y
    if operator is not None and x.op != Op.DELETE:
        return x.op == y.op and x.value == y.value
    return x.op == y.op and x.timestamp == y.timestamp and x.value == y.value


def _plain(c: Change) -> Change:
    return Change(c.namespace, c.key, c.op, c.value, c.timestamp)
