"""The Engine facade: what ``abase_engine.open()`` returns.

An :class:`Engine` ties the layers together: local writes go to the log (C)
with an HLC timestamp, reads consult the log's index and fall back to, or
fold over, the store (LMDB), and a compactor thread moves sealed segments
into the store. Namespaces give each group of keys its own merge operator.

Guarantees (see docs/architecture.md):

* durability ``"none"``: writes land in memory-mapped segments; nothing is
  promised on a crash (in practice the page cache keeps them across a
  process kill). ``"process"``: an acknowledged write survives SIGKILL of the
  process. ``"sync"``: it survives power loss (fdatasync before the call
  returns; concurrent writers share one sync). ``sync()`` forces everything
  acknowledged so far to disk at any level.
* a batch is all or nothing after any crash;
* the visible value of a key is a pure function of its set of records.

Thread-safety: an Engine, its Namespaces and Snapshots are safe to share
between threads; a Batch is not (build it in one thread). ``close()`` must
not race with other calls on the same Engine.
"""

from __future__ import annotations

import builtins
import fcntl
import itertools
import json
import logging
import os
import struct
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import xxhash

from . import store as _store
from .compactor import Compactor, fold_merge
from .errors import (
    AbaseError,
    CorruptionError,
    EngineClosedError,
    InvalidOptionError,
    KeyTooLargeError,
    LockedError,
    MergeOperandError,
    MergeOperatorMismatch,
    SlotInvalidatedError,
    SnapshotTooOldError,
    ValueTooLargeError,
)
from . import _fast
from .log import DELETED, F_CHECKPOINT, MAX_KEY, MAX_VALUE, NEEDBASE, NS_DEFS, Log
from .merge import LWW, MergeOperator
from .record import MAX_NODE_ID, Change, Op, Timestamp
from .store import TOMBSTONE, VALUE, Store

__all__ = ["Engine", "Namespace", "Batch", "Snapshot", "ReplicationSlot", "open", "DEFAULT_OPTIONS"]

#: Every option open() takes, with its default and unit. Unknown keys are refused.
DEFAULT_OPTIONS: Dict[str, Any] = {
    "segment_size": 64 << 20,          # bytes of log per segment before it is sealed
    "max_clock_skew_ms": 500,          # ms a remote timestamp may be ahead of ours
    "tombstone_grace_ms": 24 * 3600 * 1000,  # ms a delete is kept in the store
    "compact_interval": 0.5,           # s between compactor checks; None: no thread
    "map_size": 1 << 40,               # bytes of address space for LMDB (grows if full)
    "max_namespaces": 4096,
    "max_successive_merges": 64,       # operands a read may walk before a merge writes a checkpoint
    "max_slot_lag_bytes": 1 << 30,     # bytes of log a replication slot may lag before it is invalidated
    "digests": False,                  # maintain anti-entropy digests on every write (replicas)
    "clock": None,                     # callable -> wall ms (tests); None: real clock
}

_PUT, _DELETE, _MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)
_OPEN_PATHS: Dict[str, "Engine"] = {}
_READ_CACHE_ENTRIES = 4096  # decoded values kept per merge namespace
_OPEN_LOCK = threading.Lock()
_BYTES_LIKE = (bytes, bytearray, memoryview)


def _key(key: Any) -> bytes:
    if type(key) is bytes:
        if len(key) > MAX_KEY:
            raise KeyTooLargeError(f"key of {len(key)} bytes; the maximum is {MAX_KEY}")
        return key
    if isinstance(key, _BYTES_LIKE):
        return _key(bytes(key))
    raise TypeError(f"keys must be bytes-like, not {type(key).__name__}")


def _value(value: Any) -> bytes:
    if type(value) is bytes:
        if len(value) > MAX_VALUE:
            raise ValueTooLargeError(f"value of {len(value)} bytes; the maximum is {MAX_VALUE}")
        return value
    if isinstance(value, _BYTES_LIKE):
        return _value(bytes(value))
    raise TypeError(f"values must be bytes-like, not {type(value).__name__}")


_new_ts = tuple.__new__
_logger = logging.getLogger("abase_engine")
builtins_open = builtins.open


def _ts(hlc: int, node: int) -> Timestamp:
    return _new_ts(Timestamp, (hlc, node))


class Namespace:
    """A group of keys with its own merge operator; the Engine's default one is ``""``.

    All methods are also available on :class:`Engine` (for the default
    namespace). Thread-safety: safe.
    """

    def __init__(self, engine: "Engine", name: str, ns_id: int, operator: Optional[MergeOperator]) -> None:
        self._engine = engine
        self.name = name
        self._id = ns_id
        #: None for LWW (resolved by timestamp in C), else the merge operator.
        self._operator = operator
        self.merge_operator: MergeOperator = operator if operator is not None else LWW()
        #: key -> (head address, store generation, value): merge namespaces only.
        self._read_cache: Dict[bytes, Tuple[int, int, Any]] = {}
        #: The C fast path of an LWW namespace (see _bind_fast_path), else None.
        self._fastpath: Any = None

    def __repr__(self) -> str:
        return f"<Namespace {self.name!r} merge={self.merge_operator!r}>"

    # -- writes -----------------------------------------------------------
    def put(self, key: bytes, value: bytes) -> Timestamp:
        """Store ``value`` under ``key``; returns the write's timestamp.

        In a merge namespace a put joins ``value`` (an encoded state) like an
        operand. Runtime complexity: O(len(key) + len(value)).

        :raises TypeError: key or value is not bytes-like.
        :raises KeyTooLargeError: key longer than 511 bytes.
        :raises ValueTooLargeError: value longer than 256 MiB.
        :raises EngineClosedError: the engine is closed.
        """
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("put on a closed engine")
        if self._operator is not None:
            self._operator.check_operand(_value(value))
        key, value = _key(key), _value(value)
        if eng._leaves_on:
            with eng._merge_lock:
                before = eng._digest_before([(self, key)])
                ts = _ts(eng._log.put(self._id, _PUT, key, value, eng._wall()), eng.node_id)
                eng._digest_after(before)
        else:
            ts = _ts(eng._log.put(self._id, _PUT, key, value, eng._wall()), eng.node_id)
        if eng._listeners:
            eng._notify([Change(self.name, key, Op.PUT, value, ts)])
        return ts

    def delete(self, key: bytes) -> Timestamp:
        """Delete ``key`` (writes a tombstone); returns its timestamp.

        It is not an error if the key does not exist.
        """
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("delete on a closed engine")
        key = _key(key)
        if eng._leaves_on:
            with eng._merge_lock:
                before = eng._digest_before([(self, key)])
                ts = _ts(eng._log.put(self._id, _DELETE, key, b"", eng._wall()), eng.node_id)
                eng._digest_after(before)
        else:
            ts = _ts(eng._log.put(self._id, _DELETE, key, b"", eng._wall()), eng.node_id)
        if eng._listeners:
            eng._notify([Change(self.name, key, Op.DELETE, None, ts)])
        return ts

    def merge(self, key: bytes, operation: Any) -> Timestamp:
        """Apply a merge operation (e.g. ``PNCounter.increment(5)``) to ``key``.

        The operator turns the operation into an operand; when it needs the
        key's current state (an observed-remove, a counter's own entry) the
        engine reads it under a lock, so concurrent local merges of one key
        never lose each other. On an LWW namespace, merge behaves as put.

        :raises MergeOperandError: the operation does not fit the operator.
        """
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("merge on a closed engine")
        b = Batch(eng)
        b.merge(key, operation, namespace=self)
        return b.commit()

    # -- reads ------------------------------------------------------------
    def get(self, key: bytes, default: Any = None, *, at: Optional[Timestamp] = None) -> Any:
        """The visible value of ``key``, or ``default`` if it has none.

        ``at``: the value as of that timestamp, while the versions are still
        held. In a merge namespace the value is the operator's Python value
        (``to_value``). Runtime complexity: O(versions of the key in the log).

        :raises SnapshotTooOldError: compaction already discarded the history
            ``at`` needs.
        """
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("get on a closed engine")
        key = _key(key)
        if self._operator is None:
            r = self._get_lww(key, at)
            return default if r is None else r
        if at is None:
            # Folding operands in Python is the cost of a merge-namespace
            # read; the decoded value stays valid while the key's newest
            # log record and the store are unchanged.
            head = eng._log.head(self._id, key)
            gen = eng._store.generation
            hit = self._read_cache.get(key)
            if hit is not None and hit[0] == head and hit[1] == gen:
                state, value = hit[2], hit[3]
                if value is _MISSING:
                    value = None if state is None else self._operator.to_value(state)
                    self._read_cache[key] = (head, gen, state, value, hit[4])
                return default if value is None else value
            state = self._get_state(key, None)
            value = None if state is None else self._operator.to_value(state)
            self._remember(key, head, gen, state, value)
            return default if value is None else value
        state = self._get_state(key, at)
        return default if state is None else self._operator.to_value(state)

    def get_raw(self, key: bytes, *, at: Optional[Timestamp] = None) -> Optional[bytes]:
        """The encoded state (merge namespace) or value (LWW) of ``key``, or None."""
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("get_raw on a closed engine")
        key = _key(key)
        if self._operator is None:
            return self._get_lww(key, at)
        return self._get_state(key, at)

    def _get_stored(self, key: bytes, default: Any) -> Any:
        """get() of a key the log does not hold: its version in the store
        (LWW namespaces; the fast path's fallback after a log miss)."""
        store = self._engine._store
        r = store._readers.r
        with r.lock:
            txn = r.txn
            if r.generation != store.generation or txn is None:
                txn = store._fresh(r)
            raw = txn.get(key, None, self._dbi)  # positional: ~75 ns less than db=
        if raw is None:
            return default
        if raw[0] == VALUE:
            return raw[13:]
        if raw[0] == TOMBSTONE:
            return default
        return Namespace.get(self, key, default)

    def _bind_fast_path(self, fresh: bool) -> None:
        """Route this LWW namespace's put and get through csrc/fastcall.c,
        as the Engine does for the default namespace. ``fresh``: the
        namespace was just created, so the store holds nothing of it."""
        eng = self._engine
        self._dbi = eng._store.db(self._id)
        fp = self._fastpath = eng._new_fast_path(self, None)
        fp.enabled = eng._fast
        fp.store_empty = fresh  # else decided at the next store commit
        self.put = fp.put  # type: ignore[method-assign]
        self.get = fp.get  # type: ignore[method-assign]

    def _get_lww(self, key: bytes, at: Optional[Timestamp]) -> Optional[bytes]:
        eng = self._engine
        at_h, at_n = (at._hlc, at._node) if at is not None else (0, 0)
        status, value, hlc, node, op = eng._log.get_lww(self._id, key, at_h, at_n)
        if status >= 0:
            return value
        if status == DELETED:
            return None
        base = eng._store.get(self._id, key)  # after the log: see architecture.md
        if base is not None and at is not None and (base[1], base[2]) > (at_h, at_n):
            raise SnapshotTooOldError(f"history of {key!r} before {at!r} was compacted")
        if status == NEEDBASE and value is not None:
            if base is None or (hlc, node) > (base[1], base[2]):
                return None if op == _DELETE else value
        if base is None or base[0] == TOMBSTONE:
            return None
        return base[5]

    def _get_state(self, key: bytes, at: Optional[Timestamp]) -> Optional[bytes]:
        return self._get_state_counted(key, at)[0]

    def _remember(self, key: bytes, head: int, gen: int, state: Optional[bytes], value: Any, walked: int = 0) -> None:
        cache = self._read_cache
        if len(cache) >= _READ_CACHE_ENTRIES:
            cache.clear()
        cache[key] = (head, gen, state, value, walked)

    def _current_state(self, key: bytes) -> Tuple[Optional[bytes], int]:
        """The latest state (through the read cache) and how many log versions
        a read of it walks."""
        head = self._engine._log.head(self._id, key)
        gen = self._engine._store.generation
        hit = self._read_cache.get(key)
        if hit is not None and hit[0] == head and hit[1] == gen:
            return hit[2], hit[4]
        state, walked = self._get_state_counted(key, None)
        self._remember(key, head, gen, state, _MISSING, walked)
        return state, walked

    def _get_state_counted(self, key: bytes, at: Optional[Timestamp]) -> Tuple[Optional[bytes], int]:
        """The folded state and how many log versions the read had to walk."""
        eng = self._engine
        at_h, at_n = (at._hlc, at._node) if at is not None else (0, 0)
        complete, versions = eng._log.get_versions(self._id, key, at_h, at_n)
        base = None
        if not complete:
            base = eng._store.get(self._id, key)
            if base is not None and at is not None and (base[1], base[2]) > (at_h, at_n):
                raise SnapshotTooOldError(f"history of {key!r} before {at!r} was compacted")
        if not versions:
            if base is None or base[0] == TOMBSTONE:
                return None, 0
            return base[5], 0
        folded = fold_merge(self._operator, base, [(op, h, n, v) for op, _f, h, n, v in versions])
        if folded is None or folded[0] == TOMBSTONE:
            return None, len(versions)
        return folded[5], len(versions)

    def scan(self, start: Optional[bytes] = None, stop: Optional[bytes] = None, prefix: Optional[bytes] = None,
             reverse: bool = False, *, at: Optional[Timestamp] = None) -> Iterator[Tuple[bytes, Any]]:
        """Iterate ``(key, value)`` in key order over ``[start, stop)`` and ``prefix``.

        The scan sees the engine as of its first step (a snapshot), merging
        the log's keys with a store cursor. Runtime complexity: O(k log k)
        to start, k = keys the log holds in the namespace, then O(1) per item.
        """
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("scan on a closed engine")
        start = None if start is None else _key(start)
        stop = None if stop is None else _key(stop)
        prefix = None if prefix is None else _key(prefix)
        return eng._scan(self, start, stop, prefix, reverse, at)

    def keys(self, **kw) -> Iterator[bytes]:
        """Keys in order (same arguments as :meth:`scan`)."""
        return (k for k, _ in self.scan(**kw))

    def __len__(self) -> int:
        """Number of visible keys. Runtime complexity: O(n) (a key scan)."""
        return sum(1 for _ in self.scan())

    def __getitem__(self, key: bytes) -> Any:
        v = self.get(key, _MISSING)
        if v is _MISSING:
            raise KeyError(key)
        return v

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        """Delete ``key``; KeyError if it has no visible value (as a dict does)."""
        if self.get(key, _MISSING) is _MISSING:
            raise KeyError(key)
        self.delete(key)

    def __contains__(self, key: bytes) -> bool:
        return self.get(key, _MISSING) is not _MISSING


_MISSING = object()


class Batch:
    """An atomic group of writes: all of them survive a crash, or none.

    Use as ``with db.batch() as b: b.put(...)``; the writes are applied when
    the block exits without an exception, and discarded otherwise. Records
    get consecutive timestamps. Thread-safety: not safe; build a batch in
    one thread.
    """

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine
        self._ops = bytearray()
        self._nss: List[int] = []
        self._parts: List[bytes] = []
        self._merges: List[Tuple[int, Namespace, Any]] = []  # (index, ns, operation)
        self._done = False

    def _ns(self, namespace: Union[None, str, Namespace]) -> Namespace:
        if namespace is None:
            return self._engine._default
        if isinstance(namespace, Namespace):
            if namespace._engine is not self._engine:
                raise ValueError("namespace belongs to another engine")
            return namespace
        if isinstance(namespace, str):
            return self._engine.namespace(namespace)
        raise TypeError(f"namespace must be a Namespace, a str or None, not {type(namespace).__name__}")

    def put(self, key: bytes, value: bytes, namespace: Union[None, str, Namespace] = None) -> None:
        """Add a put. :raises TypeError, KeyTooLargeError, ValueTooLargeError:"""
        ns = self._ns(namespace)
        k, v = _key(key), _value(value)
        if ns._operator is not None:
            ns._operator.check_operand(v)
        self._ops.append(_PUT)
        self._nss.append(ns._id)
        self._parts += (k, v)

    def delete(self, key: bytes, namespace: Union[None, str, Namespace] = None) -> None:
        """Add a delete."""
        ns = self._ns(namespace)
        self._ops.append(_DELETE)
        self._nss.append(ns._id)
        self._parts += (_key(key), b"")

    def merge(self, key: bytes, operation: Any, namespace: Union[None, str, Namespace] = None) -> None:
        """Add a merge operation; its operand is built when the batch commits."""
        ns = self._ns(namespace)
        k = _key(key)
        if ns._operator is None:
            self._ops.append(_PUT)  # merge on LWW: the operand is the new value
            self._nss.append(ns._id)
            self._parts += (k, _value(operation))
            return
        if isinstance(operation, _BYTES_LIKE):
            ns._operator.check_operand(bytes(operation))
        self._merges.append((len(self._ops), ns, operation))
        self._ops.append(_MERGE)
        self._nss.append(ns._id)
        self._parts += (k, b"")

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> Optional[Timestamp]:
        """Apply the batch atomically; returns the last record's timestamp."""
        if self._done:
            raise AbaseError("batch already committed or discarded")
        self._done = True
        eng = self._engine
        if eng._closed:
            raise EngineClosedError("batch commit on a closed engine")
        if not self._ops:
            return None
        if not self._merges and not eng._listeners and not eng._leaves_on:
            last, _ = eng._log.write_batch(bytes(self._ops), self._nss, self._parts, eng._wall())
            return _ts(last, eng.node_id)
        return eng._commit_with_merges(self)

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._done = True


class Snapshot:
    """A fixed view of the engine as of one timestamp.

    While a snapshot is open the compactor keeps every segment holding newer
    versions, so reads through it never raise SnapshotTooOldError for keys
    written since. Close it promptly (it holds compaction back).
    Thread-safety: safe.
    """

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine
        self.timestamp = _ts(engine._log.clock(), MAX_NODE_ID)
        engine._add_pin(self.timestamp)
        self._closed = False

    def get(self, key: bytes, default: Any = None, namespace: Union[None, str, Namespace] = None) -> Any:
        """The value of ``key`` as of the snapshot."""
        self._check()
        return self._ns(namespace).get(key, default, at=self.timestamp)

    def scan(self, start=None, stop=None, prefix=None, reverse=False, namespace=None):
        """A scan as of the snapshot (see :meth:`Namespace.scan`)."""
        self._check()
        return self._ns(namespace).scan(start, stop, prefix, reverse, at=self.timestamp)

    def _ns(self, namespace):
        if namespace is None:
            return self._engine._default
        return namespace if isinstance(namespace, Namespace) else self._engine.namespace(namespace)

    def _check(self) -> None:
        if self._closed:
            raise EngineClosedError("snapshot is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine._remove_pin(self.timestamp)

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Engine(Namespace):
    """An open engine directory. Create it with :func:`abase_engine.open`.

    Options (all keyword; unknown ones raise InvalidOptionError):

    * ``segment_size`` (bytes, default 64 MiB): log segment size; a sealed
      segment is what the compactor folds.
    * ``max_clock_skew_ms`` (ms, default 500): a remote timestamp further
      ahead is refused with ClockSkewError.
    * ``tombstone_grace_ms`` (ms, default 24 h): how long the store keeps a
      delete, so a late, older write from a replica cannot resurrect the key.
    * ``compact_interval`` (s, default 0.5): how often the compactor thread
      looks for sealed segments; None runs no thread (compact() only).
    * ``map_size`` (bytes, default 1 TiB of address space): LMDB map size.
    * ``max_successive_merges`` (default 64): when a merge finds the key's
      reads walking this many log operands, it also writes the key's whole
      state as a checkpoint record, so reads stay short.
    * ``max_slot_lag_bytes`` (bytes, default 1 GiB): a replication slot
      further behind the end of the log is invalidated, so it cannot hold
      the log forever.
    * ``digests`` (default False): keep the anti-entropy digest tree up to
      date on every write (O(1) extra read per written key) and across
      clean restarts, instead of rebuilding it when digest() is called
      after writes. Replicas should turn it on.
    * ``clock``: a callable returning wall-clock ms, for tests.

    It is an error to open the same directory twice at once, in this
    process or another (LockedError).
    """

    _NS_DEFS = NS_DEFS

    def __init__(self, path: str, node_id: int = 1, durability: str = "process", **options: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        if not isinstance(node_id, int) or isinstance(node_id, bool) or not 0 <= node_id <= MAX_NODE_ID:
            raise InvalidOptionError(f"node_id must be an int in 0..{MAX_NODE_ID}, got {node_id!r}")
        if durability not in ("none", "process", "sync"):
            raise InvalidOptionError(f"durability must be 'none', 'process' or 'sync', not {durability!r}")
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise InvalidOptionError(f"unknown option(s): {', '.join(sorted(unknown))}")
        opts = dict(DEFAULT_OPTIONS, **options)
        seg = opts["segment_size"]
        if not isinstance(seg, int) or not 4096 <= seg <= (1 << 31):
            raise InvalidOptionError("segment_size must be an int in 4096..2**31 bytes")
        self._options = opts
        self.path = os.path.realpath(os.fspath(path))
        self.node_id = node_id
        self.durability = durability
        self._closed = True
        self._clock_fn: Optional[Callable[[], int]] = opts["clock"]
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = self._take_lock()
        try:
            self._open_layers()
        except BaseException:
            self._release_lock()
            raise
        self._closed = False
        self._dbi = self._store.db(0)
        #: (namespace, its FastPath): the default namespace first, then every
        #: LWW namespace opened since (see Namespace._bind_fast_path).
        self._fastpaths: List[Tuple[Namespace, Any]] = []
        self._fastpath = self._new_fast_path(self, self._put_many_general)
        # a fake clock, a listener or digest upkeep takes the general path
        self._fast = self._clock_fn is None and not self._options["digests"]
        # While the default namespace has nothing in the store, a key the
        # log does not hold is absent: the fast path answers without LMDB.
        # Kept current after every store commit, which comes before the log
        # stops showing the versions that commit folded.
        self._store.after_write = self._store_written
        self._store_written()
        # The hot calls resolve straight to C, saving a Python frame each
        # (~0.1 us); the methods below say what they do, and stay in charge
        # for a subclass that overrides them.
        cls = type(self)
        for name in ("put", "get", "put_many", "get_many"):
            if getattr(cls, name) is getattr(Engine, name):
                setattr(self, name, getattr(self._fastpath, name))
        self._compactor = Compactor(self, opts["compact_interval"])

    # -- hot paths (default namespace) --------------------------------------
    # One C call per put, per log-resident get and per batch, made by
    # csrc/fastcall.c without going through cffi; everything unusual (a fake
    # clock, non-bytes arguments, a snapshot read, an error) takes the
    # general path in Namespace.

    @property
    def _fast(self) -> bool:
        return bool(self._fastpath.enabled)

    @_fast.setter
    def _fast(self, on: bool) -> None:
        for _ns, fp in self._fastpaths:
            fp.enabled = on

    def _new_fast_path(self, ns: Namespace, put_many: Optional[Callable]) -> Any:
        """A ``_fast.FastPath`` for the LWW namespace ``ns``, registered so
        that enabling, the store-empty flag and close reach it."""
        handle, functions = self._log.fast_handle()
        fp = _fast.FastPath(
            handle, functions, ns._id, Timestamp, self.node_id,
            slow_put=Namespace.put.__get__(ns), slow_get=Namespace.get.__get__(ns),
            slow_put_many=put_many, store_get=ns._get_stored, fail=self._log.error)
        self._fastpaths.append((ns, fp))
        return fp

    def put(self, key: bytes, value: bytes) -> Timestamp:
        """Store ``value`` under ``key`` in the default namespace; returns its timestamp.

        Runtime complexity: O(len(key) + len(value)); one C call.

        :raises TypeError: key or value is not bytes-like.
        :raises KeyTooLargeError: key longer than 511 bytes.
        :raises ValueTooLargeError: value longer than 256 MiB.
        :raises EngineClosedError: the engine is closed.

        Thread-safety: safe.
        """
        return self._fastpath.put(key, value)

    def get(self, key: bytes, default: Any = None, *, at: Optional[Timestamp] = None) -> Any:
        """The value of ``key`` in the default namespace, or ``default``.

        ``at``: the value as of that timestamp while the history is held.
        Runtime complexity: O(versions of the key in the log); one C call
        when the key lives in the log, plus one LMDB lookup otherwise.

        :raises SnapshotTooOldError: the history ``at`` needs was compacted.
        """
        if at is not None:
            return Namespace.get(self, key, default, at=at)
        return self._fastpath.get(key, default)

    # -- opening and closing ------------------------------------------------
    def _take_lock(self) -> int:
        with _OPEN_LOCK:
            if self.path in _OPEN_PATHS:
                raise LockedError(f"{self.path} is already open in this process")
            fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise LockedError(f"{self.path} is locked by another process") from None
            _OPEN_PATHS[self.path] = self
            return fd

    def _release_lock(self) -> None:
        with _OPEN_LOCK:
            _OPEN_PATHS.pop(self.path, None)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)

    def _open_layers(self) -> None:
        opts = self._options
        self._store = Store(self.path, opts["map_size"], opts["max_namespaces"])
        try:
            done = self._store.meta_get(b"compacted_through")
            first_live = 0 if done is None else _store._U64.unpack(done)[0] + 1
            self._log = Log(self.path, self.node_id, opts["segment_size"], self.durability, first_live)
        except BaseException:
            self._store.close()
            raise
        # The log raised the clock past every record it holds; the store's
        # high-water mark covers what was compacted. No skew check: these are
        # our own past timestamps.
        hw = self._store.meta_u64(b"hlc_high_water", 0)
        if hw:
            self._log.clock_observe(hw)
        self._fold_lock = threading.Lock()
        self._merge_lock = threading.RLock()  # re-entrant: operators are user code
        self._pins: Dict[Timestamp, int] = {}
        self._feed_floors: Dict[object, int] = {}
        self._listeners: List[Callable[[List[Change]], None]] = []
        self.listener_errors = 0
        self._digest_cache: Dict[int, tuple] = {}
        self._members_cache: Dict[int, tuple] = {}
        #: ns id -> 4096 leaf hashes, maintained on every write (option digests)
        self._leaves: Dict[int, List[int]] = {}
        self._leaves_gen: Dict[int, int] = {}  # bumped when a namespace's leaves change
        self._slots = _SlotTable(self)
        self._pins_lock = threading.Lock()
        self._namespaces: Dict[str, Namespace] = {}
        self._ns_by_id: Dict[int, Namespace] = {}
        self._default = self
        Namespace.__init__(self, self, "", 0, None)
        self._namespaces[""] = self
        self._ns_by_id[0] = self
        self._load_namespaces()
        rec = self._log.recovery
        self.recovery = {
            "segments": rec.segments, "records": rec.records, "bytes": rec.bytes,
            "dropped_bytes": rec.dropped_bytes, "dropped_offset": rec.dropped_offset,
        }
        if self._options["digests"]:
            self._load_digests()

    def _load_namespaces(self) -> None:
        self._ns_defs: Dict[str, Tuple[int, str]] = {}
        for k, v in self._store.meta_items(b"ns:"):
            self._ns_defs[k[3:].decode()] = _parse_ns_def(v)
        if not self._log.recovery.ns_def_records:
            return  # no definition in the log: skip a walk of the whole index
        for key, status, value, _h, _n, _op in self._log.scan(NS_DEFS, None, None, None, False, 0, 0, False):
            if status >= 0 and value is not None:
                self._ns_defs[key.decode()] = _parse_ns_def(value)

    def close(self) -> None:
        """Stop the compactor, close the log and the store, release the lock.

        Does not sync (durability levels already hold); safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        self._fast = False
        for _ns, fp in self._fastpaths:
            fp.detach()
        self._compactor.stop()
        if self._options["digests"]:
            self._save_digests()
        self._log.close()
        self._store.close()
        self._release_lock()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Engine {self.path!r} node_id={self.node_id} durability={self.durability!r}{' closed' if self._closed else ''}>"

    # -- time --------------------------------------------------------------
    def _wall(self) -> int:
        fn = self._clock_fn
        if fn is None:
            return -1  # C reads CLOCK_REALTIME itself
        ms = int(fn())
        if ms < 0:
            raise ValueError(f"clock returned {ms}: wall-clock ms must be >= 0")
        return ms

    def _wall_ms_now(self) -> int:
        fn = self._clock_fn
        return int(fn()) if fn is not None else int(time.time() * 1000)

    def now(self) -> Timestamp:
        """A fresh timestamp from this engine's clock (greater than every one issued)."""
        self._check_open()
        return _ts(self._log.clock_now(self._wall()), self.node_id)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("engine is closed")

    # -- namespaces ----------------------------------------------------------
    def namespace(self, name: str, merge: Optional[MergeOperator] = None) -> Namespace:
        """Open or create the namespace ``name`` with merge operator ``merge``.

        ``merge=None`` opens an existing namespace with its own operator, or
        creates an LWW one. The operator's name is persisted.

        :raises MergeOperatorMismatch: the namespace exists with another operator.
        :raises MergeOperandError: ``merge`` is not a MergeOperator.
        """
        self._check_open()
        if not isinstance(name, str):
            raise TypeError(f"namespace names are str, not {type(name).__name__}")
        if merge is not None and not isinstance(merge, MergeOperator):
            raise TypeError(f"merge must be a MergeOperator, not {type(merge).__name__}")
        ns = self._namespaces.get(name)
        if ns is not None:
            if merge is not None and merge.name != ns.merge_operator.name:
                raise MergeOperatorMismatch(
                    f"namespace {name!r} uses {ns.merge_operator.name!r}, not {merge.name!r}")
            return ns
        with self._merge_lock:
            ns = self._namespaces.get(name)
            if ns is not None:
                return self.namespace(name, merge)
            want = merge.name if merge is not None else LWW.name
            known = self._ns_defs.get(name)
            if name == "":
                return self
            if known is not None:
                ns_id, op_name = known
                if merge is None and op_name != LWW.name:
                    raise MergeOperatorMismatch(
                        f"namespace {name!r} was created with {op_name!r}: pass that merge operator")
                if op_name != want:
                    raise MergeOperatorMismatch(f"namespace {name!r} uses {op_name!r}, not {want!r}")
            else:
                ns_id = max([i for i, _ in self._ns_defs.values()] + [0]) + 1
                if ns_id >= NS_DEFS:
                    raise AbaseError("too many namespaces")
                encoded = name.encode()
                if len(encoded) > MAX_KEY:
                    raise KeyTooLargeError("namespace name too long")
                # Persist the definition through the log, so the compactor
                # stays the only writer of the store.
                self._log.put(NS_DEFS, _PUT, encoded, _ns_def(ns_id, want), self._wall())
                self._ns_defs[name] = (ns_id, want)
            operator = None if want == LWW.name else merge
            ns = Namespace(self, name, ns_id, operator)
            if operator is None:
                ns._bind_fast_path(fresh=known is None)
            self._ns_by_id[ns_id] = ns
            self._namespaces[name] = ns
            return ns

    def _operator_of(self, ns_id: int) -> Optional[MergeOperator]:
        ns = self._ns_by_id.get(ns_id)
        if ns is not None:
            return ns._operator
        for name, (i, op_name) in self._ns_defs.items():
            if i == ns_id and op_name != LWW.name:
                raise AbaseError(
                    f"namespace {name!r} ({op_name}) must be opened with its merge operator before compaction")
        return None

    def namespaces(self) -> Dict[str, str]:
        """Every namespace defined in this directory: name -> operator name."""
        return {name: op for name, (_i, op) in self._ns_defs.items()}

    # -- batches, merges -----------------------------------------------------
    def batch(self) -> Batch:
        """A new atomic batch (use as a context manager)."""
        self._check_open()
        return Batch(self)

    def put_many(self, items: Iterable[Tuple[bytes, bytes]]) -> Optional[Timestamp]:
        """Put many (key, value) pairs in the default namespace as one atomic batch.

        Returns the last record's timestamp, None for no pairs. A list of
        ``(bytes, bytes)`` tuples crosses into C once for the whole batch.
        """
        return self._fastpath.put_many(items)

    def _put_many_general(self, items: Iterable[Tuple[bytes, bytes]]) -> Optional[Timestamp]:
        self._check_open()
        parts: List[bytes] = []
        for k, v in items:
            parts.append(_key(k))
            parts.append(_value(v))
        n = len(parts) // 2
        if n == 0:
            return None
        if self._listeners or self._leaves_on:
            b = Batch(self)
            for i in range(0, len(parts), 2):
                b.put(parts[i], parts[i + 1])
            return b.commit()
        last, _ = self._log.write_batch(bytes([_PUT]) * n, [0] * n, parts, self._wall())
        return _ts(last, self.node_id)

    def get_many(self, keys: Iterable[bytes]) -> List[Optional[bytes]]:
        """Values of many keys of the default namespace (None where missing),
        in one C call for the keys the log holds."""
        return self._fastpath.get_many(keys)

    def _commit_with_merges(self, b: Batch) -> Timestamp:
        """Commit a batch holding merge operations: build each operand (reading
        the observed state where the operator needs it), under the merge lock
        so that concurrent local merges of a key see each other."""
        log = self._log
        with self._merge_lock:
            n = len(b._ops)
            before = self._digest_before(
                [(self._ns_by_id[b._nss[i]], b._parts[2 * i]) for i in range(n)]) if self._leaves_on else None
            hlcs = [log.clock_now(self._wall()) for _ in range(n)]
            parts = list(b._parts)
            # The state each merge observes includes the batch's own earlier
            # writes to the key: a delete empties it, a put joins into it.
            pending: Dict[Tuple[int, bytes], Optional[bytes]] = {}
            chain: Dict[Tuple[int, bytes], int] = {}  # log versions a read of the key walks
            merge_at = {idx: (ns, operation) for idx, ns, operation in b._merges}
            # A key the batch touches twice has its state read even where the
            # first operation alone would not need it, so that the second
            # observes the first.
            seen_keys: Dict[Tuple[int, bytes], int] = {}
            for idx in range(n):
                k = (b._nss[idx], parts[2 * idx])
                seen_keys[k] = seen_keys.get(k, 0) + 1
            for idx in range(n):
                ns_id = b._nss[idx]
                key = parts[2 * idx]
                if idx not in merge_at:
                    ns_obj = self._ns_by_id.get(ns_id)
                    if ns_obj is None or ns_obj._operator is None:
                        continue
                    if b._ops[idx] == _DELETE:
                        pending[(ns_id, key)] = None
                    else:
                        prev = pending[(ns_id, key)] if (ns_id, key) in pending else ns_obj._get_state(key, None)
                        value = parts[2 * idx + 1]
                        pending[(ns_id, key)] = value if prev is None else ns_obj._operator.full_merge(prev, [value])
                    continue
                ns, operation = merge_at[idx]
                op = ns._operator
                state = None
                needs = not isinstance(operation, _BYTES_LIKE) and op.needs_state(operation)
                known = needs or (ns_id, key) in pending or seen_keys[(ns_id, key)] > 1
                if known:
                    if (ns_id, key) in pending:
                        state = pending[(ns_id, key)]
                    else:
                        state, walked = ns._current_state(key)
                        chain[(ns_id, key)] = walked
                chain[(ns_id, key)] = chain.get((ns_id, key), 0) + 1
                if known and state is None and (ns_id, key) not in pending and not needs:
                    state, walked = ns._current_state(key)
                    chain[(ns_id, key)] = walked + chain.get((ns_id, key), 0)
                operand = op.make_operand(operation, state if needs else None, _ts(hlcs[idx], self.node_id))
                if not isinstance(operand, bytes):
                    raise MergeOperandError("make_operand must return bytes")
                if len(operand) > MAX_VALUE:
                    raise ValueTooLargeError("merge operand too large")
                parts[2 * idx + 1] = operand
                if known:
                    pending[(ns_id, key)] = operand if state is None else op.full_merge(state, [operand])
            ops, nss = bytearray(b._ops), list(b._nss)
            flags = bytearray(n)
            # A key whose reads walk too many operands gets a checkpoint: its
            # whole state as one record that reads stop at (like RocksDB's
            # max_successive_merges). It joins like any put, so replicas that
            # receive it stay equal.
            cap = self._options["max_successive_merges"]
            for (ns_id, key), walked in list(chain.items()):
                state = pending.get((ns_id, key))
                if walked >= cap and state is not None:
                    chain[(ns_id, key)] = 1
                    ops.append(_PUT)
                    nss.append(ns_id)
                    parts += (key, state)
                    hlcs.append(log.clock_now(self._wall()))
                    flags.append(F_CHECKPOINT)
            m = len(ops)
            nodes = [self.node_id] * m
            modes = bytes(0 if o != _MERGE and f == 0 else 1 for o, f in zip(ops, flags))
            log.write_batch(bytes(ops), nss, parts, self._wall(), hlcs, nodes, [(0, 0)] * m, modes,
                            bytes(flags) if any(flags) else None)
            if before is not None:
                self._digest_after(before)
            if self._listeners:
                self._notify([
                    Change(self._ns_by_id[nss[i]].name, parts[2 * i], Op(ops[i]),
                           None if ops[i] == _DELETE else parts[2 * i + 1], _ts(hlcs[i], self.node_id))
                    for i in range(n)])
            # The next local merge of these keys starts from the state just
            # written instead of folding the chain again.
            gen = self._store.generation
            for (ns_id, key), state in pending.items():
                ns_obj = self._ns_by_id[ns_id]
                ns_obj._remember(key, log.head(ns_id, key), gen, state, _MISSING, chain.get((ns_id, key), 0))
        return _ts(max(hlcs[:n]), self.node_id)

    # -- replication ----------------------------------------------------------
    def apply(self, changes: Iterable[Change]) -> int:
        """Apply records from another replica; returns how many changed anything.

        Idempotent and order-independent: a record already held, or (LWW) one
        older than the key's visible version, is skipped. The clock is
        advanced past the newest record (an HLC receive event); the whole
        call is refused, with nothing applied, if any record is more than
        ``max_clock_skew_ms`` ahead. The records are appended as one atomic
        batch.

        :raises ClockSkewError: a record's timestamp is too far ahead.
        :raises TypeError: an item is not a Change.
        :raises AbaseError: a record names a namespace this engine does not have.
        """
        self._check_open()
        recs = []
        newest = None
        for ch in changes:
            if not isinstance(ch, Change):
                raise TypeError(f"apply takes Change records, not {type(ch).__name__}")
            ns = self._namespace_for_apply(ch.namespace)
            op = int(ch.op)
            if op not in (_PUT, _DELETE, _MERGE):
                raise ValueError(f"unknown op {ch.op!r}")
            if not isinstance(ch.timestamp, Timestamp):
                raise TypeError("Change.timestamp must be a Timestamp")
            key = _key(ch.key)
            value = b"" if op == _DELETE else _value(ch.value if ch.value is not None else b"")
            if op != _DELETE and ns._operator is not None:
                ns._operator.check_operand(value)
            if op == _MERGE and ns._operator is None:
                op = _PUT
            recs.append((ns, op, key, value, ch.timestamp))
            if newest is None or ch.timestamp > newest:
                newest = ch.timestamp
        if not recs:
            return 0
        self._log.clock_update(newest._hlc, self._wall(), self._options["max_clock_skew_ms"])
        parts: List[bytes] = []
        for _ns, _op, key, value, _t in recs:
            parts += (key, value)
        # The merge lock keeps a local merge's read-modify-write from
        # interleaving with received records for the same key.
        with self._merge_lock, self._fold_lock:
            before = self._digest_before([(r[0], r[2]) for r in recs]) if self._leaves_on else None
            bases = []
            for ns, _op, key, _v, _t in recs:
                st = self._store.get(ns._id, key)
                bases.append((0, 0) if st is None else (st[1], st[2]))
            _last, status = self._log.write_batch(
                bytes(r[1] for r in recs), [r[0]._id for r in recs], parts, self._wall(),
                [r[4]._hlc for r in recs], [r[4]._node for r in recs], bases,
                bytes(0 if r[0]._operator is None else 1 for r in recs))
            if before is not None:
                self._digest_after(before)
        status = status or []
        if self._listeners:
            applied = [Change(r[0].name, r[2], Op(r[1]), None if r[1] == _DELETE else r[3], r[4])
                       for r, st in zip(recs, status) if st]
            if applied:
                self._notify(applied)
        return sum(status)

    def _namespace_for_apply(self, name: str) -> Namespace:
        if not isinstance(name, str):
            raise TypeError("Change.namespace must be a str")
        ns = self._namespaces.get(name)
        if ns is not None:
            return ns
        known = self._ns_defs.get(name)
        if known is None or known[1] == LWW.name:
            return self.namespace(name)
        raise AbaseError(f"namespace {name!r} ({known[1]}) must be opened with its merge operator before apply")

    # -- snapshots, pins -----------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A fixed view as of now; use as a context manager and close it promptly."""
        self._check_open()
        return Snapshot(self)

    def _add_pin(self, ts: Timestamp) -> None:
        with self._pins_lock:
            self._pins[ts] = self._pins.get(ts, 0) + 1

    def _remove_pin(self, ts: Timestamp) -> None:
        with self._pins_lock:
            n = self._pins.get(ts, 0) - 1
            if n <= 0:
                self._pins.pop(ts, None)
            else:
                self._pins[ts] = n

    def _oldest_pin(self) -> Optional[Tuple[int, int]]:
        with self._pins_lock:
            if not self._pins:
                return None
            t = min(self._pins)
            return (t._hlc, t._node)

    def _retention_floor(self) -> Optional[int]:
        """The oldest segment a change feed or replication slot still reads."""
        floors = list(self._feed_floors.values()) + self._slots.floors()
        return min(floors) if floors else None

    # -- replication hooks ----------------------------------------------------
    def changes(self, since: Optional[bytes] = None, include_applied: bool = False,
                limit: Optional[int] = None) -> Iterator[Change]:
        """Committed records in local log order, each with the ``cursor`` after it.

        ``since``: a cursor from an earlier Change (None: the oldest record
        still in the log). A resumed feed neither skips nor repeats a record,
        and a batch's records are never split by concurrent writers. Records
        received through :meth:`apply` (another node's id) are left out
        unless ``include_applied``. While the iterator is open the compactor
        keeps the segments it still has to read. The feed shows a record as
        soon as it is appended; with durability "sync" that is just before
        its fdatasync (use :meth:`on_commit` for "after durable").

        :raises SlotInvalidatedError: ``since`` lies in history already
            compacted away: fall back to anti-entropy.
        Thread-safety: safe; one iterator per thread.
        """
        self._check_open()
        if since is None:
            seg, off = self._log_start()
        else:
            seg, off = _parse_cursor(since)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError("limit must be a non-negative int or None")
        return self._feed(seg, off, include_applied, limit)

    def _log_start(self) -> Tuple[int, int]:
        segs = self._log.segments()
        return (segs[0]["no"], 0) if segs else (self._log.stats()["first_segment"], 0)

    def _feed(self, seg: int, off: int, include_applied: bool, limit: Optional[int]) -> Iterator[Change]:
        token = object()
        self._feed_floors[token] = seg
        try:
            n = 0
            for seg_no, next_off, (ns, key, op, flags, hlc, node, value) in self._log.read_from(seg, off):
                self._feed_floors[token] = seg_no
                if ns == NS_DEFS or flags & F_CHECKPOINT:
                    continue  # local bookkeeping, not replicated
                if node != self.node_id and not include_applied:
                    continue
                if limit is not None and n >= limit:
                    return
                ns_obj = self._ns_by_id.get(ns)
                name = ns_obj.name if ns_obj is not None else self._ns_name(ns)
                yield Change(name, key, Op(op), None if op == _DELETE else value, _ts(hlc, node),
                             _CURSOR.pack(seg_no, next_off))
                n += 1
        finally:
            self._feed_floors.pop(token, None)

    def _ns_name(self, ns_id: int) -> str:
        for name, (i, _op) in self._ns_defs.items():
            if i == ns_id:
                return name
        return ""

    def replication_slot(self, name: str) -> "ReplicationSlot":
        """Create or open the persisted replication slot ``name``.

        A new slot starts at the oldest record still in the log. The
        compactor keeps every segment an active slot still needs, until the
        slot lags more than ``max_slot_lag_bytes``; then it is invalidated.
        """
        self._check_open()
        if not isinstance(name, str) or not name:
            raise TypeError("slot names are non-empty str")
        return self._slots.open(name)

    def drop_replication_slot(self, name: str) -> None:
        """Forget the slot (it no longer holds the log). Not an error if absent."""
        self._check_open()
        self._slots.drop(name)

    def on_commit(self, callback: Callable[[List[Change]], None]) -> Callable[[], None]:
        """Call ``callback(changes)`` after every committed write or batch.

        Called in the writing thread after the write's durability point, with
        no engine lock held; local writes and records applied from other
        replicas both count. An exception in a callback is logged (logger
        ``abase_engine``) and counted in ``stats()["listener_errors"]``; the
        write stands. While a listener is registered, writes take the general
        path (slower). Returns a function that unregisters the callback.
        """
        self._check_open()
        if not callable(callback):
            raise TypeError("on_commit needs a callable")
        self._listeners.append(callback)
        self._fast = False

        def unsubscribe() -> None:
            try:
                self._listeners.remove(callback)
            except ValueError:
                pass
            if not self._listeners and self._clock_fn is None and not self._closed \
                    and not self._options["digests"]:
                self._fast = True

        return unsubscribe

    def _notify(self, changes: List[Change]) -> None:
        for cb in list(self._listeners):
            try:
                cb(changes)
            except Exception:  # reported, never breaks the engine
                self.listener_errors += 1
                _logger.exception("on_commit listener failed")

    def digest(self, namespace: str = "", path: Tuple[int, ...] = ()) -> List[int]:
        """Hashes of the 16 children of the digest-tree node at ``path``.

        The tree has 3 levels under the root with fan-out 16, by the first
        three nibbles of xxh64(key); a leaf hashes (key, newest timestamp and
        kind) of every key under it, tombstones included (CRDT namespaces:
        the encoded state instead of the timestamp). Replicas with equal
        visible state have equal digests, so comparing top-down finds the
        differing leaves in O(differences x depth) calls; then
        :meth:`records` gives a leaf's records.

        Runtime complexity: O(1) per call while nothing was written since
        the last; after writes, O(keys in the namespace) once to refresh.
        """
        self._check_open()
        path = _check_path(path, 2)
        level = self._digest_tree(namespace)[len(path)]
        base = 0
        for nib in path:
            base = base * 16 + nib
        return level[base * 16:base * 16 + 16]

    def records(self, namespace: str, path: Tuple[int, ...]) -> List[Change]:
        """The newest record of every key under the leaf at ``path`` (3 nibbles).

        LWW keys come as their winning PUT or DELETE with its own timestamp;
        CRDT keys as one MERGE record holding the whole state, stamped now,
        so a receiver joins it (states are their own deltas).
        """
        self._check_open()
        path = _check_path(path, 3)
        if len(path) != 3:
            raise ValueError("records() needs a leaf path of 3 nibbles")
        leaf = path[0] * 256 + path[1] * 16 + path[2]
        ns = self._namespaces.get(namespace)
        if ns is None:  # not `or`: a namespace's truth value is its len(), O(n)
            ns = self.namespace(namespace)
        out = []
        for key in self._leaf_members(ns).get(leaf, ()):
            rec = self._visible_record(ns, key)
            if rec is None:
                continue
            kind, hlc, node, value, anchor = rec
            if ns._operator is None or kind == TOMBSTONE:
                out.append(Change(namespace, key, Op.DELETE if kind == TOMBSTONE else Op.PUT,
                                  None if kind == TOMBSTONE else value, _ts(hlc, node)))
                continue
            # A CRDT key: its newest delete (so the receiver drops what that
            # delete removed), then its state stamped with the state's own
            # newest timestamp, never "now": a fresh stamp would outrank a
            # delete the sender has not seen yet and undo it.
            if anchor != (0, 0):
                out.append(Change(namespace, key, Op.DELETE, None, _ts(*anchor)))
            out.append(Change(namespace, key, Op.MERGE, value, _ts(hlc, node)))
        return out

    def _leaf_members(self, ns: Namespace) -> Dict[int, List[bytes]]:
        """Keys by digest leaf, from one pass over the namespace; reused until
        the next write or compaction (anti-entropy asks for many leaves)."""
        hit = self._members_cache.get(ns._id)
        if hit is None or hit[0] != self._write_version():
            self._scan_leaves(ns)
            hit = self._members_cache[ns._id]
        return hit[1]

    def _visible_record(self, ns: Namespace, key: bytes):
        """(kind, hlc, node, value, anchor) of the key's visible version,
        tombstones included; anchor is the newest delete's (hlc, node) folded
        into a CRDT state, else (0, 0). None: the key has no version."""
        if ns._operator is None:
            status, value, hlc, node, op = self._log.get_lww(ns._id, key, 0, 0)
            base = self._store.get(ns._id, key)
            if status >= 0:
                return VALUE, hlc, node, value, (0, 0)
            if status == DELETED:
                return TOMBSTONE, hlc, node, b"", (0, 0)
            if status == NEEDBASE and value is not None and (base is None or (hlc, node) > (base[1], base[2])):
                return (TOMBSTONE, hlc, node, b"", (0, 0)) if op == _DELETE else (VALUE, hlc, node, value, (0, 0))
            if base is None:
                return None
            return base[0], base[1], base[2], base[5], (0, 0)
        complete, versions = self._log.get_versions(ns._id, key, 0, 0)
        base = None if complete else self._store.get(ns._id, key)
        folded = fold_merge(ns._operator, base, [(op, h, n, v) for op, _f, h, n, v in versions])
        if folded is None:
            return None
        return folded[0], folded[1], folded[2], folded[5], (folded[3], folded[4])

    @property
    def _leaves_on(self) -> bool:
        return self._options["digests"]

    def _entry_hash(self, ns: Namespace, key: bytes) -> int:
        """The key's contribution to its leaf hash (0: the key is absent)."""
        rec = self._visible_record(ns, key)
        if rec is None:
            return 0
        kind, hlc, node, value, _anchor = rec
        if ns._operator is None or kind == TOMBSTONE:
            canon = _DIGEST_TS.pack(kind, hlc, node)
        else:
            canon = b"\x03" + value
        return xxhash.xxh64_intdigest(key + b"\x00" + canon)

    def _ns_leaves(self, ns: Namespace) -> List[int]:
        leaves = self._leaves.get(ns._id)
        if leaves is None:  # first use in this process: one full build
            leaves = self._leaves[ns._id] = self._scan_leaves(ns)
            self._leaves_gen[ns._id] = self._leaves_gen.get(ns._id, 0) + 1
        return leaves

    def _leaf_changed(self, ns_id: int, key: bytes, old: int, new: int) -> None:
        self._leaves[ns_id][xxhash.xxh64_intdigest(key) >> 52] ^= old ^ new
        self._leaves_gen[ns_id] = self._leaves_gen.get(ns_id, 0) + 1

    def _digest_before(self, items) -> Dict[Tuple[int, bytes], Tuple[Namespace, int]]:
        """Contributions of the keys about to be written (merge lock held)."""
        out: Dict[Tuple[int, bytes], Tuple[Namespace, int]] = {}
        for ns, key in items:
            if (ns._id, key) not in out:
                self._ns_leaves(ns)
                out[(ns._id, key)] = (ns, self._entry_hash(ns, key))
        return out

    def _digest_after(self, before) -> None:
        for (ns_id, key), (ns, old) in before.items():
            new = self._entry_hash(ns, key)
            if new != old:
                self._ns_leaves(ns)
                self._leaf_changed(ns_id, key, old, new)

    def _digest_path(self) -> str:
        return os.path.join(self.path, "digests.bin")

    def _log_end(self) -> Tuple[int, int]:
        segs = self._log.segments()
        return (segs[-1]["no"], segs[-1]["used"]) if segs else (self._log.stats()["first_segment"], 0)

    def _load_digests(self) -> None:
        """Take the leaves saved at the last clean close, if the log and store
        are exactly as they were then; the file is removed either way, so a
        crash later can never leave a stale one behind."""
        path = self._digest_path()
        try:
            with builtins_open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        os.unlink(path)
        marker = struct.pack(">IQQ", *self._log_end(), self._store.meta_u64(b"compacted_through", 1 << 63))
        if not data.startswith(marker) or self.recovery["dropped_bytes"]:
            return
        body = data[len(marker):]
        per = 4 + 4096 * 8
        for i in range(0, len(body) - per + 1, per):
            ns_id = struct.unpack_from(">I", body, i)[0]
            self._leaves[ns_id] = list(struct.unpack_from(">4096Q", body, i + 4))

    def _save_digests(self) -> None:
        marker = struct.pack(">IQQ", *self._log_end(), self._store.meta_u64(b"compacted_through", 1 << 63))
        parts = [marker]
        for ns_id, leaves in self._leaves.items():
            parts.append(struct.pack(">I", ns_id) + struct.pack(">4096Q", *leaves))
        tmp = self._digest_path() + ".tmp"
        with builtins_open(tmp, "wb") as f:
            f.write(b"".join(parts))
        os.replace(tmp, self._digest_path())

    def _digest_purged(self, purged) -> None:
        """The compactor purged tombstones (merge lock held): update leaves."""
        if not self._leaves_on:
            return
        for ns_id, key, old in purged:
            ns = self._ns_by_id.get(ns_id)
            if ns is None or ns_id not in self._leaves:
                continue
            new = self._entry_hash(ns, key)
            if new != old:
                self._leaf_changed(ns_id, key, old, new)

    def _write_version(self) -> Tuple[int, int]:
        """Changes whenever a record is appended or the store commits."""
        return self._log.stats()["records_appended"], self._store.generation

    def _scan_leaves(self, ns: Namespace) -> List[int]:
        """Leaf hashes from one pass over the namespace's keys; the leaf
        membership seen on the way is cached for records()."""
        version = self._write_version()
        leaves = [0] * 4096
        members: Dict[int, List[bytes]] = {}
        for key in self._all_keys(ns):
            leaf = xxhash.xxh64_intdigest(key) >> 52
            members.setdefault(leaf, []).append(key)
            leaves[leaf] ^= self._entry_hash(ns, key)
        self._members_cache[ns._id] = (version, members)
        return leaves

    def _digest_tree(self, namespace: str):
        """(level 1, level 2, leaves) hashes of the namespace, cached until it changes."""
        ns = self._namespaces.get(namespace)
        if ns is None:
            ns = self.namespace(namespace)
        with self._merge_lock:
            if self._leaves_on:
                leaves = self._ns_leaves(ns)
                version: tuple = ("maintained", self._leaves_gen.get(ns._id, 0))
            else:
                leaves = None
                version = self._write_version()
            hit = self._digest_cache.get(ns._id)
            if hit is not None and hit[0] == version:
                return hit[1]
            if leaves is None:
                leaves = self._scan_leaves(ns)
            lvl2 = [_hash_children(leaves, i) for i in range(256)]
            lvl1 = [_hash_children(lvl2, i) for i in range(16)]
            tree = (lvl1, lvl2, list(leaves))
            self._digest_cache[ns._id] = (version, tree)
            return tree

    def _all_keys(self, ns: Namespace) -> Iterator[bytes]:
        """Every key the namespace holds in either layer, tombstones included."""
        seen = set()
        for key, *_rest in self._log.scan(ns._id, None, None, None, False, 0, 0, True):
            seen.add(key)
            yield key
        dbi = self._store.db(ns._id)
        with self._store.env.begin(buffers=False) as txn:
            if txn.get(_store.empty_key_slot(ns._id), db=self._store.meta) is not None and b"" not in seen:
                yield b""
            for key in txn.cursor(db=dbi).iternext(keys=True, values=False):
                if key not in seen:
                    yield key

    # -- scans ---------------------------------------------------------------
    def _scan(self, ns: Namespace, start, stop, prefix, reverse, at) -> Iterator[Tuple[bytes, Any]]:
        if prefix is not None:
            lo = prefix if start is None or start < prefix else start
            hi = _prefix_end(prefix)
            hi = hi if stop is None or (hi is not None and hi < stop) else stop
            start, stop = lo, hi
        pin = at if at is not None else _ts(self._log.clock(), MAX_NODE_ID)
        self._add_pin(pin)
        try:
            fast = ns._fastpath if ns._operator is None else None
            if at is None and fast is not None and fast.store_empty:
                # The scan is the log's, decoded in C a batch at a time (here,
                # not in a helper generator: one delegation less per item). A
                # key compacted meanwhile reads as NOTFOUND or NEEDBASE and
                # is looked up through the general path.
                for chunk, only_pairs in self._log.scan_chunks(ns._id, start, stop, None, reverse,
                                                               pin._hlc, pin._node, False, pairs=True):
                    if only_pairs:
                        yield from chunk
                        continue
                    for entry in chunk:
                        if len(entry) == 2:
                            yield entry
                        else:
                            item = self._resolve_scan_item(ns, entry, pin)
                            if item is not None:
                                yield entry[0], item
            else:
                yield from self._scan_merge(ns, start, stop, reverse, pin, at is None)
        finally:
            self._remove_pin(pin)

    def _store_written(self) -> None:
        """After each store commit: which LWW namespaces the store holds
        nothing of (no entries, no empty-key slot), for the fast paths' and
        scans' shortcuts."""
        store = self._store
        pairs = [(ns, fp, ns._dbi) for ns, fp in list(self._fastpaths)]
        with store.env.begin(buffers=False) as txn:
            for ns, fp, dbi in pairs:
                fp.store_empty = (txn.stat(dbi)["entries"] == 0
                                  and txn.get(_store.empty_key_slot(ns._id), db=store.meta) is None)

    def _scan_merge(self, ns: Namespace, start, stop, reverse, pin: Timestamp, pin_is_now: bool = False):
        store = self._store
        operator = ns._operator
        at_h, at_n = pin._hlc, pin._node
        dbi = store.db(ns._id)  # before the txn: a handle opened later is not valid in it
        txn = store.env.begin(buffers=False)
        try:
            log_iter = self._log.scan(ns._id, start, stop, None, reverse, at_h, at_n, operator is not None)
            cur = txn.cursor(db=dbi)
            store_iter = _cursor_range(cur, start, stop, reverse)
            empty = txn.get(_store.empty_key_slot(ns._id), db=store.meta)
            chained = empty is not None and (start is None or start == b"") and (stop is None or stop != b"")
            if chained:
                # the empty key sorts first; LMDB cannot hold it, meta does
                store_iter = _chain_empty(store_iter, empty, reverse)
            lk = next(log_iter, None)
            sk = next(store_iter, None)
            # Every stored timestamp is at or below a pin taken now, so a scan
            # with no `at` needs no per-item snapshot check; once one stream
            # is exhausted the other is yielded in a tight loop.
            own_pin = operator is None and pin_is_now
            while lk is not None or sk is not None:
                if own_pin and lk is None:
                    if not reverse and stop is None and not chained:
                        # iternext() starts at the cursor's current item: sk
                        yield from _stored_values(cur.iternext(), store.path)
                    else:
                        yield from _stored_values(itertools.chain((sk,), store_iter), store.path)
                    return
                if own_pin and sk is None:
                    entries = itertools.chain((lk,), log_iter)
                    for entry in entries:
                        if entry[1] >= 0:
                            yield entry[0], entry[2]
                        elif entry[1] != DELETED:
                            item = self._resolve_scan_item(ns, entry, pin)
                            if item is not None:
                                yield entry[0], item
                    return
                if sk is None or (lk is not None and (lk[0] > sk[0] if reverse else lk[0] < sk[0])):
                    key, item = lk[0], self._resolve_scan_item(ns, lk, pin)
                    lk = next(log_iter, None)
                elif lk is None or lk[0] != sk[0]:
                    key = sk[0]
                    kind, h, n, _ah, _an, val = _store.decode(sk[1], store.path)
                    if (h, n) > (at_h, at_n):
                        raise SnapshotTooOldError(f"history of {key!r} before {pin!r} was compacted")
                    item = None if kind == TOMBSTONE else (val if operator is None else operator.to_value(val))
                    sk = next(store_iter, None)
                else:
                    key, item = lk[0], self._resolve_scan_item(ns, lk, pin)
                    lk = next(log_iter, None)
                    sk = next(store_iter, None)
                if item is not None:
                    yield key, item
        finally:
            txn.abort()

    def _resolve_scan_item(self, ns: Namespace, entry, pin: Timestamp):
        key, status, value, _h, _n, _op = entry
        if ns._operator is None:
            if status >= 0:
                return value
            if status == DELETED:
                return None
            return ns._get_lww(key, pin)
        state = ns._get_state(key, pin)
        return None if state is None else ns._operator.to_value(state)

    # -- maintenance ---------------------------------------------------------
    def compact(self, wait: bool = True) -> int:
        """Fold the log into the store. ``wait=True`` seals the active segment
        and runs a full pass now, returning the number of segments folded;
        ``wait=False`` only wakes the compactor thread."""
        self._check_open()
        if not wait:
            self._compactor.wake()
            return 0
        return self._compactor.run_pass(seal=True)

    def sync(self) -> None:
        """Force every write acknowledged so far to disk (fdatasync)."""
        self._check_open()
        self._log.sync()

    def stats(self) -> Dict[str, Any]:
        """Counters: keys, log bytes, segments, index bytes, compaction lag, ...

        ``keys`` is approximate: keys in the log's index plus entries in the
        store (a key in both counts twice; tombstones count). ``len()`` is exact.
        """
        self._check_open()
        ls = self._log.stats()
        segs = self._log.segments()
        store_keys = sum(self._store.count(i) for i in self._ns_by_id)
        return {
            "keys": ls["live_keys"] + store_keys,
            "index_keys": ls["live_keys"],
            "store_keys": store_keys,
            "log_bytes": ls["log_bytes"],
            "segments": len(segs),
            "sealed_segments": sum(1 for s in segs if s["sealed"]),
            "index_bytes": ls["index_bytes"],
            "index_capacity": ls["index_capacity"],
            "compaction_lag_bytes": sum(s["used"] for s in segs if s["sealed"]),
            "compactions": self._compactor.segments_compacted,
            "compaction_passes": self._compactor.passes,
            "compaction_errors": len(self._compactor.errors),
            "log_bytes_written": ls["log_bytes_written"],
            "store_bytes_written": self._store.bytes_written,
            "store_bytes": self._store.size_bytes(),
            "records_appended": ls["records_appended"],
            "syncs": ls["syncs"],
            "slots": self._slots.stats(),
            "listener_errors": self.listener_errors,
            "recovery": dict(self.recovery),
        }

    def check(self, fix: bool = False) -> List[str]:
        """Check log checksums and that the index agrees with the log and the
        store; returns a list of findings (empty: healthy). ``fix`` is not
        supported yet and raises NotImplementedError when True."""
        self._check_open()
        if fix:
            raise NotImplementedError("check(fix=True) is not implemented")
        findings = self._log.check()
        for name, (ns_id, _op) in list(self._ns_defs.items()) + [("", (0, LWW.name))]:
            dbi = self._store.db(ns_id)  # before the txn: a later handle is not valid in it
            with self._store.env.begin(buffers=False) as txn:
                for k, raw in txn.cursor(db=dbi):
                    try:
                        _store.decode(raw, self._store.path)
                    except AbaseError as exc:
                        findings.append(f"namespace {name!r} key {k!r}: {exc}")
        return findings

    def _check(self) -> None:
        """Assert internal invariants (tests call this after every step)."""
        problems = self.check()
        assert not problems, problems


def _cursor_range(cur, start, stop, reverse):
    if not reverse:
        ok = cur.set_range(start) if start is not None else cur.first()
        while ok:
            k = cur.key()
            if stop is not None and k >= stop:
                return
            yield k, cur.value()
            ok = cur.next()
    else:
        if stop is not None:
            ok = cur.set_range(stop)
            ok = cur.prev() if ok else cur.last()
        else:
            ok = cur.last()
        while ok:
            k = cur.key()
            if start is not None and k < start:
                return
            yield k, cur.value()
            ok = cur.prev()


def _stored_values(items, where: str):
    """(key, value) of stored LWW versions, tombstones skipped; anything else
    is corruption, never a value."""
    for k, v in items:
        kind = v[0]
        if kind == VALUE and len(v) >= 13:
            yield k, v[13:]
        elif kind != TOMBSTONE or len(v) < 13:
            raise CorruptionError(f"stored value of key {k!r} has unknown kind {kind} or is truncated", where)


def _chain_empty(it, raw: bytes, reverse: bool):
    if not reverse:
        yield b"", raw
    yield from it
    if reverse:
        yield b"", raw


def _prefix_end(prefix: bytes) -> Optional[bytes]:
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


_CURSOR = struct.Struct(">IQ")
_DIGEST_TS = struct.Struct(">BQI")


def _parse_cursor(cursor: Any) -> Tuple[int, int]:
    if not isinstance(cursor, (bytes, bytearray)):
        raise TypeError(f"a feed cursor is bytes, not {type(cursor).__name__}")
    if len(cursor) != _CURSOR.size:
        raise ValueError(f"a feed cursor is {_CURSOR.size} bytes, got {len(cursor)}")
    return _CURSOR.unpack(bytes(cursor))


def _check_path(path: Any, max_len: int) -> Tuple[int, ...]:
    if not isinstance(path, tuple):
        raise TypeError("a digest path is a tuple of ints")
    if len(path) > max_len or any(not isinstance(p, int) or not 0 <= p < 16 for p in path):
        raise ValueError(f"a digest path is up to {max_len} ints in 0..15, got {path!r}")
    return path


def _hash_children(level: List[int], i: int) -> int:
    return xxhash.xxh64_intdigest(struct.pack(">16Q", *level[i * 16:i * 16 + 16]))


class ReplicationSlot:
    """A named, persisted position in the change feed (see Engine.replication_slot).

    Thread-safety: safe.
    """

    def __init__(self, table: "_SlotTable", name: str) -> None:
        self._table = table
        self.name = name

    @property
    def position(self) -> bytes:
        """The cursor after the last acknowledged record."""
        return self._table.state(self.name)["cursor"]

    @property
    def invalidated(self) -> bool:
        return self._table.state(self.name)["invalidated"]

    @property
    def lag_bytes(self) -> int:
        """Bytes of log between the slot's position and the end of the log."""
        seg, off = _parse_cursor(self.position)
        return self._table.engine._log.lag(seg, off)

    def changes(self, limit: Optional[int] = None, include_applied: bool = False) -> Iterator[Change]:
        """Records after the slot's position (does not advance it: call :meth:`ack`).

        :raises SlotInvalidatedError: the slot fell too far behind.
        """
        if self.invalidated:
            raise SlotInvalidatedError(f"replication slot {self.name!r} was invalidated (lagged too far)")
        return self._table.engine.changes(since=self.position, include_applied=include_applied, limit=limit)

    def ack(self, cursor: bytes) -> None:
        """Advance the slot to ``cursor`` (persisted); an older cursor is ignored."""
        _parse_cursor(cursor)
        self._table.ack(self.name, bytes(cursor))

    def __repr__(self) -> str:
        return f"<ReplicationSlot {self.name!r} lag={self.lag_bytes}>"


class _SlotTable:
    """Slots persisted in ``<dir>/slots.json`` (atomic replace; fsync with
    durability "sync"), kept out of LMDB so the compactor stays its only
    writer."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self._path = os.path.join(engine.path, "slots.json")
        self._lock = threading.Lock()
        self._slots: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(self._path):
            with builtins_open(self._path) as f:
                raw = json.load(f)
            for name, st in raw.items():
                self._slots[name] = {"cursor": bytes.fromhex(st["cursor"]), "invalidated": bool(st["invalidated"])}

    def _save(self) -> None:
        tmp = self._path + ".tmp"
        data = {n: {"cursor": st["cursor"].hex(), "invalidated": st["invalidated"]} for n, st in self._slots.items()}
        with builtins_open(tmp, "w") as f:
            json.dump(data, f)
            if self.engine.durability == "sync":
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self._path)

    def open(self, name: str) -> ReplicationSlot:
        with self._lock:
            if name not in self._slots:
                seg, off = self.engine._log_start()
                self._slots[name] = {"cursor": _CURSOR.pack(seg, off), "invalidated": False}
                self._save()
        return ReplicationSlot(self, name)

    def drop(self, name: str) -> None:
        with self._lock:
            if self._slots.pop(name, None) is not None:
                self._save()

    def state(self, name: str) -> Dict[str, Any]:
        st = self._slots.get(name)
        if st is None:
            raise AbaseError(f"replication slot {name!r} was dropped")
        return st

    def ack(self, name: str, cursor: bytes) -> None:
        with self._lock:
            st = self.state(name)
            if _CURSOR.unpack(cursor) > _CURSOR.unpack(st["cursor"]):
                st["cursor"] = cursor
                self._save()

    def floors(self) -> List[int]:
        """Oldest segment each active slot needs; invalidates slots that lag too far."""
        limit = self.engine._options["max_slot_lag_bytes"]
        out = []
        with self._lock:
            changed = False
            for st in self._slots.values():
                if st["invalidated"]:
                    continue
                seg, off = _CURSOR.unpack(st["cursor"])
                if self.engine._log.lag(seg, off) > limit:
                    st["invalidated"] = True
                    changed = True
                    continue
                out.append(seg)
            if changed:
                self._save()
        return out

    def stats(self) -> Dict[str, Dict[str, Any]]:
        out = {}
        for name, st in list(self._slots.items()):
            seg, off = _CURSOR.unpack(st["cursor"])
            out[name] = {"lag_bytes": self.engine._log.lag(seg, off), "invalidated": st["invalidated"]}
        return out


def _ns_def(ns_id: int, op_name: str) -> bytes:
    return ns_id.to_bytes(4, "little") + op_name.encode()


def _parse_ns_def(raw: bytes) -> Tuple[int, str]:
    return int.from_bytes(raw[:4], "little"), raw[4:].decode()


def open(path: Union[str, "os.PathLike[str]"], node_id: int = 1, durability: str = "process", **options: Any) -> Engine:
    """Open (creating if needed) the engine directory ``path``.

    >>> import tempfile, abase_engine as ae
    >>> with ae.open(tempfile.mkdtemp(), node_id=1) as db:
    ...     _ = db.put(b"k", b"v")
    ...     db.get(b"k")
    b'v'

    :raises LockedError: the directory is open elsewhere.
    :raises CorruptionError: a segment is damaged outside the tail.
    :raises FormatVersionError: written by an unknown format version.
    :raises InvalidOptionError: an unknown or out-of-range option.
    """
    return Engine(path, node_id, durability, **options)
