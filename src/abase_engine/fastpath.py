"""Wiring of the C fast paths of the namespaces.

Each LWW namespace gets a ``_fast.FastPath`` (``csrc/fastcall.c``): ``put``,
``get`` (and, for the default namespace, ``put_many`` and ``get_many``) in
one CPython-API call into the C core. Each namespace whose merge operator is
one of the built-in CRDTs that C implements (every one but ORMap; exactly
those classes, not subclasses) gets a ``_fast.CrdtPath``
(``csrc/crdt_path.c``): ``merge``, ``get``, ``delete``, ``merge_many`` and
``get_many``, folded and built in C with a cache of folded states. Both
fall back to the namespace's general Python methods for anything unusual
(non-bytes arguments, a snapshot read, an error, a raw operand).
:class:`FastPaths` is the registry that creates them and keeps three facts
current in all of them:

* *enabled*: writes may bypass Python. Off while anything needs to see each
  write in Python: an injected wall clock, maintained digests, a commit
  listener, or a closed engine (each a named *blocker*); and, for one LWW
  namespace, for good once it has a range tombstone (:meth:`FastPaths.hold`).
* *store_empty*: the store holds nothing of the namespace, so a key the log
  does not hold is absent without an LMDB lookup. Refreshed after every
  store commit (:meth:`FastPaths.store_written`), which comes before the log
  stops showing the versions that commit folded.
* *store_gen* (CRDT paths): the store's generation; a cached state folded
  at another one is folded again, since the commit may have moved its
  versions from the log into the store.

A key the log does not hold is otherwise looked up in C too, through the
store's per-thread read transactions (:attr:`Store.reader`,
``csrc/fast_store.c``), with no Python frame on the way.

Locks: one lock guards the registry and the blocker set. The CRDT paths
take the engine's merge lock (a ``_fast.MergeLock``) around each merge.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from . import _fast
from .crdt import Operation, c_tag
from .log import Log
from .record import Change, Timestamp
from .store import Store

if TYPE_CHECKING:  # pragma: no cover
    from .namespace import Namespace

__all__ = ["FastPaths"]


class FastPaths:
    """The fast paths of one engine's LWW namespaces (see the module docstring).

    :param log: provides the C handle, the function addresses and the
        status-to-exception mapping.
    :param store: answers which namespaces it holds nothing of.
    :param node_id: stamped into the Timestamps the fast paths return.
    :param merge_lock: the engine's merge lock (CRDT merges take it).
    :param max_successive_merges: records a read may walk before a merge
        also writes a checkpoint (the engine option).
    :param cache_keys: keys whose folded state each CRDT path keeps.
    """

    def __init__(self, log: Log, store: Store, node_id: int, *, merge_lock: Any = None,
                 max_successive_merges: int = 64, cache_keys: int = 1 << 18) -> None:
        self._log = log
        self._store = store
        self._node_id = node_id
        self._merge_lock = merge_lock
        self._max_merges = max_successive_merges
        self._cache_keys = cache_keys
        self._lock = threading.Lock()
        self._paths: List[Tuple["Namespace", Any]] = []
        self._by_ns: Dict[int, Any] = {}
        self._blockers: Set[str] = set()
        self._apply_paths: List[Any] = []  # the ApplyPaths made (they cache which namespaces they take)
        self._held: Set[int] = set()  # namespaces whose LWW fast path is off for good (range tombstones)

    def create(self, ns: "Namespace", put_many: Optional[Callable] = None) -> Any:
        """A new FastPath for the LWW namespace ``ns``, registered; the
        caller binds its methods. ``put_many``: the general put_many (the
        default namespace has one)."""
        handle, functions = self._log.fast_handle()
        fp = _fast.FastPath(
            handle, functions, ns.id, Timestamp, self._node_id,
            slow_put=type(ns).put.__get__(ns), slow_get=type(ns).get.__get__(ns),
            slow_put_many=put_many, store_get=ns.reader.stored_value, fail=self._log.error,
            reader=self._store.reader, dbi=self._store.db(ns.id))
        with self._lock:
            fp.enabled = not self._blockers and ns.id not in self._held
            self._paths.append((ns, fp))
            self._by_ns[ns.id] = fp
        return fp

    def bind(self, ns: "Namespace", fresh: bool) -> None:
        """Route ``ns.put`` and ``ns.get`` through a new fast path. ``fresh``:
        the namespace was just created, so the store holds nothing of it
        (otherwise decided at the next store commit)."""
        fp = self.create(ns, type(ns).put_many.__get__(ns))
        fp.store_empty = fresh
        ns.put = fp.put  # type: ignore[method-assign]
        ns.get = fp.get  # type: ignore[method-assign]
        ns.put_many = fp.put_many  # type: ignore[method-assign]
        ns.get_many = fp.get_many  # type: ignore[method-assign]

    def bind_crdt(self, ns: "Namespace", fresh: bool) -> bool:
        """Route ``merge``, ``get``, ``delete``, ``merge_many`` and
        ``get_many`` of the merge namespace ``ns`` through a new CRDT fast
        path, if C implements its operator's type; returns whether it does."""
        operator = ns.merge_operator
        tag = c_tag(operator)
        if tag is None or self._merge_lock is None:
            return False
        handle, functions = self._log.merge_handle()
        cp = _fast.CrdtPath(
            handle, functions, ns.id, tag, self._node_id, Timestamp, Operation, type(operator), self._merge_lock,
            self._max_merges, self._cache_keys,
            slow_merge=type(ns).merge.__get__(ns), slow_get=type(ns).get.__get__(ns),
            slow_delete=type(ns).delete.__get__(ns), store_get=ns.reader.stored_raw, fail=self._log.error)
        cp.store_empty = fresh
        cp.store_gen = self._store.generation
        with self._lock:
            cp.enabled = not self._blockers
            self._paths.append((ns, cp))
            self._by_ns[ns.id] = cp
        ns.merge = cp.merge  # type: ignore[method-assign]
        ns.get = cp.get  # type: ignore[method-assign]
        ns.delete = cp.delete  # type: ignore[method-assign]
        ns.merge_many = cp.merge_many  # type: ignore[method-assign]
        ns.get_many = cp.get_many  # type: ignore[method-assign]
        return True

    def apply_path(self, for_apply: Callable[[str], "Namespace"]) -> Any:
        """A ``_fast.ApplyPath``: ``Engine.apply`` of records into LWW
        namespaces decoded in C and appended with one core call
        (``csrc/fast_apply.c``). ``for_apply``: the catalog's name -> handle
        for received records (creates an LWW namespace on demand)."""
        def lww_path(name: Any) -> Any:
            # None sends the batch to the general path: merge namespaces, and
            # namespaces with range tombstones (the C path does not consult them)
            ns = for_apply(name)
            return self._by_ns.get(ns.id) if ns.lww and ns.id not in self._held else None

        handle, fn = self._log.apply_handle()
        path = _fast.ApplyPath(handle, fn, Change, lww_path, self._log.error)
        self._apply_paths.append(path)
        return path

    # -- the facts -----------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """True while no blocker holds the fast paths off."""
        return not self._blockers

    def block(self, reason: str, on: bool) -> None:
        """Hold the fast paths off for ``reason`` (``on``), or release that hold."""
        with self._lock:
            if on:
                self._blockers.add(reason)
            else:
                self._blockers.discard(reason)
            enabled = not self._blockers
            for ns, fp in self._paths:
                fp.enabled = enabled and ns.id not in self._held

    def hold(self, ns_id: int) -> None:
        """Turn the LWW fast path of namespace ``ns_id`` off for good (also if
        it is created later): it has range tombstones, which the C reads
        do not consult. Its puts and gets take the general path."""
        with self._lock:
            self._held.add(ns_id)
            for ns, fp in self._paths:
                if ns.id == ns_id and ns.lww:
                    fp.enabled = False
            for path in self._apply_paths:  # their cached "this namespace is LWW" answers
                path.forget()

    def path_of(self, ns: "Namespace") -> Any:
        """The fast path of the LWW namespace ``ns``.

        :raises KeyError: ``ns`` has none (a merge namespace)."""
        return self._by_ns[ns.id]

    def store_empty(self, ns: "Namespace") -> bool:
        """True if the store is known to hold nothing of the LWW namespace ``ns``."""
        fp = self._by_ns.get(ns.id)
        return fp is not None and bool(fp.store_empty)

    def store_written(self) -> None:
        """After each store commit: refresh every fast path's store-empty flag."""
        paths = list(self._paths)
        empty = self._store.holds_nothing([ns.id for ns, _fp in paths])
        gen = self._store.generation
        for ns, fp in paths:
            fp.store_empty = empty[ns.id]
            if not ns.lww:
                fp.store_gen = gen

    def detach_all(self) -> None:
        """At close: every fast path takes the general path from now on."""
        self.block("closed", True)
        for _ns, fp in list(self._paths):
            fp.detach()
