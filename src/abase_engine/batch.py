"""Batches and the commit of local writes.

:class:`Batch` collects puts, deletes and merge operations and commits them
atomically: after any crash all of them are there, or none (the log writes
the records with BATCH flags and recovery drops a batch without its end
record). Records of a batch get consecutive timestamps. Its records live in
a C buffer (``csrc/fast_batch.c``); a batch of plain puts and deletes is
written with one call into the core, like ``put_many``.

:class:`Committer` is the engine's write path above the log. Every local
write (a single put or delete, a batch, a merge) and every batch received
from a replica (``Engine.apply``) is appended through it, so it is the one
place that

* builds merge operands, reading the key's observed state where the
  operator needs it, under the *merge lock*, so concurrent local merges of
  one key see each other (a read-modify-write);
* writes *checkpoints*: when reads of a key would walk more than
  ``max_successive_merges`` operands, the key's whole state is appended as
  one record that reads stop at (like RocksDB's ``max_successive_merges``);
* keeps the digest tree current (option ``digests``) by hashing each written
  key before and after the write, under the merge lock;
* tells the commit listeners (``on_commit``) what was committed.

Batches are bounded: one may hold at most ``MAX_BATCH`` bytes as encoded in
the log (40 + key + value, padded to 8, a record), or it raises
:class:`~abase_engine.errors.ValueTooLargeError`, so that the segment that
holds it keeps every record address within 32 bits of offset.

Locks: ``merge_lock`` (re-entrant: operators are user code) serializes the
read-modify-writes, digest upkeep and ``apply``; ``fold_lock`` is taken
inside it by ``apply``, so that its read of stored versions never sees the
store and the log disagree while the compactor commits a fold. Lock order:
merge lock, then fold lock, then the log's own lock (in C).
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import _fast
from ._args import BYTES_LIKE, check_key, check_value
from .errors import AbaseError, MergeOperandError, ValueTooLargeError
from .lifecycle import Lifecycle
from .log import F_CHECKPOINT, F_TTL, MAX_VALUE, Log
from .record import Change, Op, Timestamp, from_packed
from .store import Store
from .ttl import absolute_expiry, expiry_option, refuse_in_merge_namespace, split_prefixed, with_expiry

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .digest import DigestTree
    from .feed import CommitListeners
    from .namespace import Namespace

__all__ = ["Batch", "Committer", "DELETE_OPERATION", "change_value"]

_PUT, _DELETE, _MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)

#: Stands in the merge list of a batch for a delete whose value (what it
#: removes) the committer builds from the key's state.
DELETE_OPERATION = object()


def change_value(op: int, value: bytes) -> Optional[bytes]:
    """The ``Change.value`` of a record: None for a delete without a value."""
    return None if op == _DELETE and not value else value


def _change(ns_name: str, op: int, key: bytes, value: bytes, ts: Timestamp, flag: int) -> Change:
    """The Change of a record as written: a TTL put's value loses its
    expire_at prefix, which becomes ``expire_at``."""
    if flag & F_TTL:
        expire_at, value = split_prefixed(value)
        return Change(ns_name, key, Op(op), value, ts, None, expire_at)
    return Change(ns_name, key, Op(op), change_value(op, value), ts)


def _add_checked(committer: "Committer", namespace: Callable[[Any], "Namespace"],
                 merges: List[Tuple[int, "Namespace", Any]], flags: Dict[int, int], buf: Any, op: int,
                 key: Any, value: Any, ns_arg: Any, ttl: Any = None, expire_at: Any = None) -> None:
    """A put or delete the C buffer could not take as it came: check it in
    Python (raising the documented errors) and append it; remember a
    namespace argument that names an LWW namespace, so the next ones stay in C.
    A delete in a namespace whose deletes join (the CRDTs) is listed in
    ``merges``: its value, what it removes, is built from the key's state
    when the batch commits. A put with a ttl or expire_at is appended with
    its prefix, and its log flag noted in ``flags`` (by record index)."""
    ns = namespace(ns_arg)
    if ns.owner is not committer.owner:
        raise ValueError("namespace belongs to another engine")
    k = check_key(key)
    v = check_value(value) if op == _PUT else b""
    expiry = expiry_option(ttl, expire_at)
    if expiry is not None:
        if not ns.lww:
            raise refuse_in_merge_namespace(ns.name)
        v = with_expiry(expiry, v)
        flags[len(buf)] = expiry[0]
        buf.append(op, ns.id, k, v)
        return
    if not ns.lww and op == _PUT:
        ns.merge_operator.check_operand(v)
    if op == _DELETE and not ns.lww and ns.merge_operator.deletes_join:
        merges.append((len(buf), ns, DELETE_OPERATION))
    buf.append(op, ns.id, k, v)
    if ns.lww and ns_arg is not None:
        buf.remember(ns_arg, ns.id)


class Batch:
    """An atomic group of writes: all of them survive a crash, or none.

    Use as ``with db.batch() as b: b.put(...)``; the writes are applied when
    the block exits without an exception, and discarded otherwise. Records
    get consecutive timestamps. Thread-safety: not safe; build a batch in
    one thread.

    Puts and deletes of exact ``bytes`` are appended in C
    (``_fast.BatchBuffer``) and a batch without merges is written with one
    call into the core, whatever namespaces it touches.

    :param committer: the engine's write path.
    :param namespace: resolves a ``namespace=`` argument given as a name or
        None to a Namespace handle.
    :param fastpath: the default namespace's C fast path (writes in one call
        when it is enabled), or None: always the general path.
    """

    def __init__(self, committer: "Committer", namespace: Callable[[Any], "Namespace"],
                 fastpath: Any = None) -> None:
        self._committer = committer
        self._namespace = namespace
        self._merges: List[Tuple[int, "Namespace", Any]] = []  # (index, ns, operation)
        self._flags: Dict[int, int] = {}  # index -> log flag of a put with a ttl or expire_at
        self._done = False
        self._buf = _fast.BatchBuffer(fastpath, partial(_add_checked, committer, namespace, self._merges,
                                                        self._flags))
        # The hot calls go straight to C; the methods below document them
        # (and are what a call through the class reaches).
        self.put = self._buf.put  # type: ignore[method-assign]
        self.delete = self._buf.delete  # type: ignore[method-assign]

    def _ns(self, namespace: Any) -> "Namespace":
        ns = self._namespace(namespace)
        if ns.owner is not self._committer.owner:
            raise ValueError("namespace belongs to another engine")
        return ns

    def put(self, key: bytes, value: bytes, namespace: Any = None, *, ttl: Optional[float] = None,
            expire_at: Any = None) -> None:
        """Add a put. Runtime complexity: O(len(key) + len(value)).

        ``ttl`` (seconds) or ``expire_at`` (ms since the epoch, or a
        Timestamp): the value expires (LWW namespaces; see :mod:`abase_engine.ttl`).

        :raises TypeError: key or value is not bytes-like; a bad ttl type.
        :raises KeyTooLargeError, ValueTooLargeError: over the size limits.
        :raises MergeOperandError: (merge namespace) value is not a valid state.
        :raises InvalidOptionError: a bad ttl/expire_at, or one in a merge namespace.
        :raises ValueError: the namespace belongs to another engine.
        """
        self._buf.put(key, value, namespace, ttl=ttl, expire_at=expire_at)

    def delete(self, key: bytes, namespace: Any = None) -> None:
        """Add a delete. In a namespace whose operator's deletes join (the
        CRDTs) its value, what it removes, is built from the key's state
        when the batch commits. :raises TypeError, KeyTooLargeError:"""
        self._buf.delete(key, namespace)

    def merge(self, key: bytes, operation: Any, namespace: Any = None) -> None:
        """Add a merge operation; its operand is built when the batch commits.

        :raises MergeOperandError: raw operand bytes that do not decode.
        """
        ns = self._ns(namespace)
        k = check_key(key)
        if ns.lww:  # merge on LWW: the operand is the new value
            self._buf.append(_PUT, ns.id, k, check_value(operation))
            return
        if isinstance(operation, BYTES_LIKE):
            ns.merge_operator.check_operand(bytes(operation))
        self._merges.append((len(self._buf), ns, operation))
        self._buf.append(_MERGE, ns.id, k, b"")

    def __len__(self) -> int:
        return len(self._buf)

    def commit(self) -> Optional[Timestamp]:
        """Apply the batch atomically; returns the last record's timestamp (None if empty).

        :raises AbaseError: the batch was already committed or discarded.
        :raises EngineClosedError: the engine is closed.
        :raises ValueTooLargeError: the batch is over ``MAX_BATCH`` encoded bytes.
        :raises IOFailedError: an I/O failure; writes are refused until reopened.
        """
        if self._done:
            raise AbaseError("batch already committed or discarded")
        self._done = True
        if not len(self._buf):
            self._committer.check_open("batch commit")
            return None
        if not self._merges and not self._flags:
            ts = self._buf.commit()  # one call into the core, when the fast path is on
            if ts is not None:
                return ts
        ops, nss, parts = self._buf.export()
        flags = bytes(self._flags.get(i, 0) for i in range(len(ops))) if self._flags else None
        return self._committer.commit(ops, nss, parts, self._merges, flags)

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._done = True


class Committer:
    """The engine's write path above the log (see the module docstring).

    Thread-safety: safe.
    """

    def __init__(self, log: Log, store: Store, catalog: "Catalog", listeners: "CommitListeners", *,
                 life: Lifecycle, node_id: int, merge_lock: threading.RLock, fold_lock: threading.Lock,
                 max_successive_merges: int, owner: object) -> None:
        self._log = log
        self._store = store
        self._catalog = catalog
        self._listeners = listeners
        self._life = life
        self._node_id = node_id
        self._merge_lock = merge_lock
        self._fold_lock = fold_lock
        self._cap = max_successive_merges
        #: the DigestTree to keep current on every write, or None (option ``digests`` off)
        self.digests: Optional["DigestTree"] = None
        #: the ``_fast.ApplyPath`` of received records into LWW namespaces, or None
        self.apply_path: Any = None
        #: the engine the written namespaces must belong to
        self.owner = owner

    def check_open(self, what: str) -> None:
        """:raises EngineClosedError: the engine is closed."""
        self._life.check(what)

    # -- single writes -------------------------------------------------------
    def write(self, ns: "Namespace", op: int, key: bytes, value: bytes) -> Timestamp:
        """Append one local put or delete (arguments already checked)."""
        digests = self.digests
        if digests is not None:
            with self._merge_lock:
                before = digests.track([(ns, key)])
                hlc = self._log.put(ns.id, op, key, value)
                digests.settle(before)
        else:
            hlc = self._log.put(ns.id, op, key, value)
        ts = from_packed(hlc, self._node_id)
        if self._listeners.active:
            self._listeners.notify([Change(ns.name, key, Op(op), change_value(op, value), ts)])
        return ts

    def write_expiring(self, ns: "Namespace", key: bytes, value: bytes, expiry: Tuple[int, int]) -> Timestamp:
        """Append one local put with an expiry (``ttl.expiry_option``'s
        result; arguments already checked) of an LWW namespace.
        :raises ValueTooLargeError: the value leaves no room for the expiry."""
        return self.commit(bytes([_PUT]), [ns.id], [key, with_expiry(expiry, value)], [], bytes([expiry[0]]))

    def merge_one(self, ns: "Namespace", key: bytes, operation: Any) -> Timestamp:
        """``ns.merge(key, operation)``: a batch of one merge."""
        b = Batch(self, lambda _arg: ns)
        b.merge(key, operation)
        ts = b.commit()
        assert ts is not None
        return ts

    def delete_one(self, ns: "Namespace", key: bytes) -> Timestamp:
        """``ns.delete(key)`` in a namespace whose deletes join: a batch of one
        delete, whose value is built from the key's state."""
        b = Batch(self, lambda _arg: ns)
        b.delete(key)
        ts = b.commit()
        assert ts is not None
        return ts

    def put_many(self, items: Iterable[Tuple[bytes, bytes]], ns_id: int = 0, *, ttl: Optional[float] = None,
                 expire_at: Any = None) -> Optional[Timestamp]:
        """``put_many`` of an LWW namespace (default: the default one),
        checked in Python (the C fast path's fallback); with ``ttl``/``expire_at``
        every pair gets that expiry.
        :raises TypeError, KeyTooLargeError, ValueTooLargeError, InvalidOptionError:"""
        self._life.check("put_many")
        expiry = expiry_option(ttl, expire_at)
        parts: List[bytes] = []
        for k, v in items:
            parts.append(check_key(k))
            parts.append(check_value(v) if expiry is None else with_expiry(expiry, check_value(v)))
        n = len(parts) // 2
        if n == 0:
            return None
        return self.commit(bytes([_PUT]) * n, [ns_id] * n, parts, [],
                           None if expiry is None else bytes([expiry[0]]) * n)

    # -- batches ---------------------------------------------------------------
    def commit(self, ops: bytes, nss: List[int], parts: List[bytes],
               merges: Sequence[Tuple[int, "Namespace", Any]], ttl_flags: Optional[bytes] = None) -> Timestamp:
        """Append a local batch atomically; returns its last timestamp.

        ``parts`` alternates key and value (b"" for deletes and merges);
        ``merges`` lists ``(index, namespace, operation)`` of the merge
        operations, whose operands are built here; ``ttl_flags``, if not
        None, holds per record ``F_TTL`` or ``F_TTL_RELATIVE`` for a put
        whose value starts with its expire_at or ttl (ms), else 0.
        """
        self._life.check("batch commit")
        if not merges and not self._listeners.active and self.digests is None:
            last, _ = self._log.write_batch(ops, nss, parts, flags=ttl_flags)
            return from_packed(last, self._node_id)
        return self._commit_with_merges(ops, nss, parts, merges, ttl_flags)

    def _commit_with_merges(self, b_ops: bytes, b_nss: List[int], b_parts: List[bytes],
                            merges: Sequence[Tuple[int, "Namespace", Any]],
                            ttl_flags: Optional[bytes] = None) -> Timestamp:
        """Build each operand and each CRDT delete's value (reading the
        observed state where needed) and append, under the merge lock so
        that concurrent local merges of a key see each other."""
        log = self._log
        handle = self._catalog.handle_by_id
        log.stall()  # backpressure before the lock (the C core stalls only local batches)
        with self._merge_lock:
            n = len(b_ops)
            before = self.digests.track([(handle(b_nss[i]), b_parts[2 * i]) for i in range(n)]) \
                if self.digests is not None else None
            hlcs = [log.clock_now() for _ in range(n)]
            parts = list(b_parts)
            flags = bytearray(n)
            if ttl_flags is not None:  # the timestamps are known here: make each ttl an expire_at
                for idx, f in enumerate(ttl_flags):
                    if f:
                        flags[idx] = F_TTL
                        parts[2 * idx + 1] = absolute_expiry(f, hlcs[idx], parts[2 * idx + 1])
            # The state each write observes includes the batch's own earlier
            # writes to the key (a delete removes from it, a put joins into it).
            pending: Dict[Tuple[int, bytes], Optional[bytes]] = {}
            chain: Dict[Tuple[int, bytes], int] = {}  # log versions a read of the key walks
            merge_at = {idx: (ns, operation) for idx, ns, operation in merges}
            # A key the batch touches twice has its state read even where the
            # first operation alone would not need it, so that the second
            # observes the first.
            seen_keys: Dict[Tuple[int, bytes], int] = {}
            for idx in range(n):
                k = (b_nss[idx], parts[2 * idx])
                seen_keys[k] = seen_keys.get(k, 0) + 1

            def observe(k: Tuple[int, bytes], ns: "Namespace") -> Optional[bytes]:
                if k not in pending:
                    pending[k], chain[k] = ns.reader.current_state(k[1])
                return pending[k]

            for idx in range(n):
                k = (b_nss[idx], parts[2 * idx])
                ts = from_packed(hlcs[idx], self._node_id)
                if idx not in merge_at:
                    ns_obj = handle(k[0])
                    if ns_obj is None or ns_obj.lww:
                        continue
                    if b_ops[idx] == _DELETE:  # an operator whose deletes reset the key
                        pending[k] = None
                        chain[k] = 1
                        continue
                    prev = observe(k, ns_obj)
                    value = parts[2 * idx + 1]
                    pending[k] = value if prev is None else ns_obj.merge_operator.full_merge(prev, [value])
                    chain[k] += 1
                    continue
                ns, operation = merge_at[idx]
                op = ns.merge_operator
                if operation is DELETE_OPERATION:
                    state = observe(k, ns)
                    removal = op.removal(state, ts)
                    after = removal if state is None else op.full_merge(state, [removal])
                    parts[2 * idx + 1] = removal
                    pending[k] = after
                    if after == removal:  # the whole state: reads stop at it
                        flags[idx] = F_CHECKPOINT
                        chain[k] = 1
                    else:
                        chain[k] += 1
                    continue
                needs = not isinstance(operation, BYTES_LIKE) and op.needs_state(operation)
                known = needs or k in pending or seen_keys[k] > 1
                state = observe(k, ns) if known else None
                operand = op.make_operand(operation, state if needs else None, ts)
                if not isinstance(operand, bytes):
                    raise MergeOperandError("make_operand must return bytes")
                if len(operand) > MAX_VALUE:
                    raise ValueTooLargeError("merge operand too large")
                parts[2 * idx + 1] = operand
                if known:
                    pending[k] = operand if state is None else op.full_merge(state, [operand])
                    chain[k] += 1
            ops, nss = bytearray(b_ops), list(b_nss)
            # A key whose reads walk too many operands gets a checkpoint: its
            # whole state as one record that reads stop at. It joins like any
            # put, so replicas that receive it stay equal.
            for k, walked in list(chain.items()):
                state = pending.get(k)
                if walked >= self._cap and state is not None:
                    chain[k] = 1
                    ops.append(_PUT)
                    nss.append(k[0])
                    parts += (k[1], state)
                    hlcs.append(log.clock_now())
                    flags.append(F_CHECKPOINT)
            m = len(ops)
            nodes = [self._node_id] * m
            modes = bytes(0 if o != _MERGE and not f & F_CHECKPOINT else 1 for o, f in zip(ops, flags))
            log.write_batch(bytes(ops), nss, parts, hlcs, nodes, [(0, 0)] * m, modes,
                            bytes(flags) if any(flags) else None)
            if before is not None:
                self.digests.settle(before)
            if self._listeners.active:
                self._listeners.notify([
                    _change(handle(nss[i]).name, ops[i], parts[2 * i], parts[2 * i + 1],
                            from_packed(hlcs[i], self._node_id), flags[i])
                    for i in range(n)])
            # The next local merge of these keys starts from the state just
            # written instead of folding the chain again.
            for k, state in pending.items():
                handle(k[0]).reader.remember(k[1], state, chain.get(k, 0))
        return from_packed(max(hlcs[:n]), self._node_id)

    # -- records from other replicas -------------------------------------------
    def observe_clock(self, newest: Timestamp, max_skew_ms: int) -> None:
        """Advance the clock past a received timestamp (an HLC receive).
        :raises ClockSkewError: ``newest`` is too far ahead (the clock stays)."""
        self._life.check("apply")
        self._log.clock_update(newest.hlc, max_skew_ms)

    def apply(self, recs: List[Tuple["Namespace", int, bytes, bytes, Timestamp, int]], newest: Timestamp,
              max_skew_ms: int) -> int:
        """Append records received from another replica (checked by
        ``Engine.apply``) as one atomic batch; returns how many changed
        anything. Each record is ``(namespace, op, key, value, timestamp,
        flag)``, flag ``F_TTL`` for a put whose value starts with its
        expire_at (else 0). A key of a merge namespace whose reads now walk
        ``max_successive_merges`` records or more then gets a checkpoint, as
        after a local merge. :raises ClockSkewError: ``newest`` is too far ahead."""
        self._life.check("apply")
        self._log.stall()  # backpressure, before the merge and fold locks the compactor needs
        self._log.clock_update(newest.hlc, max_skew_ms)
        parts: List[bytes] = []
        for _ns, _op, key, value, _t, _f in recs:
            parts += (key, value)
        flags = bytes(r[5] for r in recs)
        # The merge lock keeps a local merge's read-modify-write from
        # interleaving with received records for the same key.
        with self._merge_lock:
            before = self.digests.track([(r[0], r[2]) for r in recs]) if self.digests is not None else None
            with self._fold_lock:
                bases = []
                for ns, _op, key, _v, _t, _f in recs:
                    st = self._store.get(ns.id, key)
                    bases.append((0, 0) if st is None else (st[1], st[2]))
                _last, status = self._log.write_batch(
                    bytes(r[1] for r in recs), [r[0].id for r in recs], parts,
                    [r[4].hlc for r in recs], [r[4].node_id for r in recs], bases,
                    bytes(0 if r[0].lww else 1 for r in recs), flags if any(flags) else None)
            status = status or []
            self._checkpoint_long_chains({(r[0].id, r[2]): r[0] for r, st in zip(recs, status)
                                          if st and not r[0].lww})
            if before is not None:
                self.digests.settle(before)
        if self._listeners.active:
            applied = [_change(r[0].name, r[1], r[2], r[3], r[4], r[5]) for r, st in zip(recs, status) if st]
            if applied:
                self._listeners.notify(applied)
        return sum(status)

    def apply_received(self, changes: Sequence[Change], max_skew_ms: int) -> Optional[int]:
        """``Engine.apply`` in C (``csrc/fast_apply.c``, ``csrc/apply.c``) when
        every record goes to an LWW namespace and has exact types; returns how
        many changed anything, or None, having done nothing, for the general
        path (:meth:`apply`, which also raises the errors).

        One core call decides every record's last-writer-wins rule under the
        log lock and appends the batch atomically; the store is consulted only
        for keys whose log versions cannot decide, and (without digests) only
        for records not newer than its HLC high-water mark. Digest upkeep uses the
        predecessors the core reports, without reading the keys again.
        :raises ClockSkewError: a record is too far ahead (nothing applied).
        """
        path = self.apply_path
        if path is None or not changes:
            return None
        self._log.stall()  # backpressure, before the merge and fold locks the compactor needs
        digests = self.digests
        with self._merge_lock:  # digest upkeep and local read-modify-writes see whole applies
            with self._fold_lock:  # the store cannot change between the core's two calls
                # No stored version is newer than the store's HLC high-water
                # mark: a record above it needs no store lookup to be decided.
                below = self._store.meta_u64(b"hlc_high_water", 0)
                res = path.apply(changes, self._log.wall(), max_skew_ms, digests is not None, below)
            if res is None:
                return None
            count, status, appended = res
            if digests is not None and appended:
                digests.note_applied(changes, appended)
        if count and self._listeners.active:
            self._listeners.notify([
                Change(ch.namespace, ch.key, Op(_PUT if ch.op == _MERGE else ch.op),
                       None if ch.op == _DELETE else (ch.value if ch.value is not None else b""), ch.timestamp)
                for ch, st in zip(changes, status) if st])
        return count

    def _checkpoint_long_chains(self, keys: Dict[Tuple[int, bytes], "Namespace"]) -> None:
        """Append a checkpoint (the whole state, flagged so that reads stop at
        it) for each merge-namespace key whose reads walk ``max_successive_merges``
        log records or more: records received from peers are folded like
        local ones. Merge lock held."""
        log = self._log
        todo = []
        for (ns_id, key), ns in keys.items():
            if log.merge_walk(ns_id, key, self._cap + 1) >= self._cap:
                state, _walked = ns.reader.current_state(key)
                if state is not None:
                    todo.append((ns, key, state))
        if not todo:
            return
        n = len(todo)
        hlcs = [log.clock_now() for _ in range(n)]
        parts: List[bytes] = []
        for _ns, key, state in todo:
            parts += (key, state)
        log.write_batch(bytes([_PUT]) * n, [t[0].id for t in todo], parts, hlcs, [self._node_id] * n,
                        [(0, 0)] * n, bytes([1]) * n, bytes([F_CHECKPOINT]) * n)
        for ns, key, state in todo:
            ns.reader.remember(key, state, 1)
