"""The Engine facade: what ``abase_engine.open()`` returns.

An :class:`Engine` opens one directory, takes its lock, checks the options
and wires the components together; every method either delegates to a
component or to the default namespace. The components, each in its module
and each owning its state and lock (``docs/architecture.md`` has the picture):

========================  ==================================================
``log.py`` (+ C core)      segments, index, HLC; the only cffi caller
``store.py``               LMDB: one compacted version per key
``catalog.py``             namespace definitions and handles
``namespace.py``           the put/get/delete/merge/scan handle
``resolve.py``             how records fold into a visible value
``batch.py``               batches and the commit of every local write
``snapshot.py``            snapshots and the pin set
``scan.py``                ordered iteration over both layers
``feed.py``, ``slots.py``  change feed, listeners, replication slots
``digest.py``              anti-entropy digest trees
``fastpath.py``            the C fast paths of LWW namespaces
``compactor.py``           folds sealed segments into the store
``ranges.py``              range tombstones of LWW namespaces
``housekeeping.py``        range deletes, namespace drops
========================  ==================================================

Guarantees (see docs/architecture.md):

* durability ``"none"``: writes land in memory-mapped segments; nothing is
  promised on a crash (in practice the page cache keeps them across a
  process kill). ``"process"``: an acknowledged write survives SIGKILL of the
  process. ``"sync"``: it survives power loss (fdatasync before the call
  returns; concurrent writers share one sync). ``sync()`` forces everything
  acknowledged so far to disk at any level.
* a batch is all or nothing after any crash;
* the visible value of a key is a pure function of its set of records;
* I/O errors are sticky: after a failed sync, seal, segment allocation or
  store commit every write raises ``IOFailedError`` until the engine is
  reopened, reads keep working, and ``stats()["io_error"]`` says what
  failed (``docs/reliability.md``).

Locks owned here and handed to the components: the *merge lock*
(re-entrant; local read-modify-writes, ``apply``, digest upkeep, tombstone
purges) and the *fold lock* (``apply``'s store read against the compactor's
commit). Lock order: merge lock, fold lock, then the C core's own locks.

Thread-safety: an Engine, its Namespaces and Snapshots are safe to share
between threads; a Batch is not (build it in one thread). ``close()`` may
race any other call from any thread: calls in flight finish or raise
EngineClosedError, later ones raise EngineClosedError, and nothing is freed
while a thread can still touch it (see ``lifecycle.py``).
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Union

from ._fast import MergeLock
from .backup import take_backup
from .batch import Batch, Committer
from .catalog import Catalog
from .compactor import Compactor
from .digest import DigestTree
from .errors import InvalidOptionError, LockedError
from .fastpath import FastPaths
from .hooks import ReplicationHooks
from .housekeeping import Housekeeping
from .feed import ChangeFeed, CommitListeners
from .lifecycle import Lifecycle
from .log import TAIL_WINDOW, Log
from .merge import MergeOperator
from .namespace import DefaultNamespaceMethods, Namespace
from .node_ids import claim_node_id
from .ranges import RangeTombstones
from .record import MAX_NODE_ID, Op, Timestamp, from_packed
from .repair import repair
from .resolve import KeyReader
from .scan import Scanner
from .slots import ReplicationSlot, SlotTable
from .snapshot import PinSet, Snapshot
from .store import Store, fsync_dir
from .timing import LatencyHistogram

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
    "crdt_cache_keys": 1 << 18,        # keys per CRDT namespace whose folded state the C fast path keeps
    "clock": None,                     # callable -> wall ms (tests); None: real clock
    "stall_log_bytes": 4 << 30,        # bytes of uncompacted log past which writes stall; None: never
    "stall_max_ms": 100,               # ms one stalled write waits at most for the compactor
    "tail_window": TAIL_WINDOW,        # bytes kept mapped writable ahead of the appends; 0: no keeper thread
}

_PUT, _DELETE, _MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)
_OPEN_PATHS: Dict[str, "Engine"] = {}
_OPEN_LOCK = threading.Lock()


class Engine(DefaultNamespaceMethods, ReplicationHooks):
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
      state as a checkpoint record, so reads stay short (the C fast path of
      CRDT namespaces also waits until the records since the last checkpoint
      add up to the state's size, so that big states stay O(1) per merge);
      ``apply`` does the same for the keys it wrote to.
    * ``max_slot_lag_bytes`` (bytes, default 1 GiB): a replication slot
      further behind the end of the log is invalidated, so it cannot hold
      the log forever.
    * ``digests`` (default False): keep the anti-entropy digest tree up to
      date on every write (O(1) extra read per written key) and across
      clean restarts, instead of rebuilding it when digest() is called
      after writes. Replicas should turn it on.
    * ``crdt_cache_keys`` (default 262144): per CRDT namespace, how many
      keys' folded states the C fast path keeps in memory (merges and reads
      of a cached key need no fold; others are folded from the log and the
      store on first use).
    * ``clock``: a callable returning wall-clock ms, for tests.
    * ``stall_log_bytes`` (bytes, default 4 GiB) and ``stall_max_ms`` (ms,
      default 100): write stalls, the backpressure of a compactor that
      falls behind. A write that finds more than ``stall_log_bytes`` of log
      not yet compacted first waits until compaction brings the log under
      the limit, at most ``stall_max_ms`` (each write waits once, so a
      stall delays a write by at most ``stall_max_ms``; it never fails it).
      ``stats()`` reports ``stalls`` and ``stall_ms``. None disables stalls.
    * ``tail_window`` (bytes, default 16 MiB): a thread of the C core keeps
      this much of the active log segment ahead of the appends mapped
      writable, so that puts do not take page faults (docs/performance.md,
      "put p99 while compacting"); 0 runs no such thread. Not under
      durability ``"sync"``.

    Every method of :class:`Namespace` is available on the engine and acts
    on the default namespace ``""`` (the engine is not itself a Namespace:
    ``db.namespace("")`` is that handle).

    It is an error to open the same directory twice at once, in this
    process or another (LockedError).
    """

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
        stall = opts["stall_log_bytes"]
        if stall is not None and (not isinstance(stall, int) or isinstance(stall, bool) or stall < 0):
            raise InvalidOptionError("stall_log_bytes must be None or an int >= 0 (bytes)")
        wait = opts["stall_max_ms"]
        if not isinstance(wait, int) or isinstance(wait, bool) or not 0 <= wait <= 86_400_000:
            raise InvalidOptionError("stall_max_ms must be an int in 0..86400000 (ms)")
        tw = opts["tail_window"]
        if not isinstance(tw, int) or isinstance(tw, bool) or not 0 <= tw <= (1 << 31):
            raise InvalidOptionError("tail_window must be an int in 0..2**31 (bytes)")
        ck = opts["crdt_cache_keys"]
        if not isinstance(ck, int) or isinstance(ck, bool) or not 1 <= ck <= (1 << 31):
            raise InvalidOptionError("crdt_cache_keys must be an int in 1..2**31")
        self._options = opts
        self.path = os.path.realpath(os.fspath(path))
        self.node_id = node_id
        self.durability = durability
        self._life = Lifecycle()
        self._life.closed = True  # until open completes
        _make_dir(self.path)
        self._lock_fd = self._take_lock()
        try:
            claim_node_id(self.path, node_id)  # NODE: refuse a retired id; fsync'd before any timestamp
            self._open_layers()
        except BaseException:
            self._release_lock()
            raise
        try:
            self._wire()
        except BaseException:  # e.g. a damaged slots.json: release everything
            self._log.close()
            self._store.close()
            self._release_lock()
            raise
        self._life.closed = False
        # The hot calls resolve straight to C, saving a Python frame each
        # (~0.1 us); the methods below say what they do, and stay in charge
        # for a subclass that overrides them.
        cls = type(self)
        for name in ("put", "get", "put_many", "get_many"):
            if getattr(cls, name) is getattr(Engine, name):
                setattr(self, name, getattr(self._fastpath, name))
        self._compactor = Compactor(
            self._log, self._store, self._catalog, oldest_pin=self._pins.oldest,
            retention_floor=self._feed.retention_floor, fold_lock=self._fold_lock, merge_lock=self._merge_lock,
            digests=self._digests if self._digests.maintained else None,
            tombstone_grace_ms=opts["tombstone_grace_ms"], interval=opts["compact_interval"], ranges=self._ranges)

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
        """Open the store, then the log (recovery), then read the catalog."""
        opts = self._options
        self._store = Store(self.path, opts["map_size"], opts["max_namespaces"])
        try:
            first_live = self._store.meta_u64(b"compacted_through", -1) + 1
            self._log = Log(self.path, self.node_id, opts["segment_size"], self.durability, first_live,
                            clock=opts["clock"], stall_log_bytes=opts["stall_log_bytes"],
                            stall_max_ms=opts["stall_max_ms"], tail_window=opts["tail_window"])
        except BaseException:
            self._store.close()
            raise
        try:
            # The log raised the clock past every record it holds; the store's
            # high-water mark covers what was compacted. No skew check: these
            # are our own past timestamps.
            hw = self._store.meta_u64(b"hlc_high_water", 0)
            if hw:
                self._log.clock_observe(hw)
            self._catalog = Catalog(self._log, self._store, self._make_handle)
        except BaseException:
            self._log.close()
            self._store.close()
            raise
        rec = self._log.recovery
        self.recovery = {
            "segments": rec.segments, "records": rec.records, "bytes": rec.bytes,
            "dropped_bytes": rec.dropped_bytes, "dropped_offset": rec.dropped_offset,
            "dropped_segments": rec.dropped_segments, "durable_end": rec.mark_end,
            "rebooted": bool(rec.rebooted), "after_failure": bool(rec.mark_flags),
        }

    def _wire(self) -> None:
        """Create the components and hand each its collaborators."""
        opts, log, store = self._options, self._log, self._store
        self._merge_lock = MergeLock()  # re-entrant (operators are user code); the C merge paths take it too
        self._fold_lock = threading.Lock()
        self._pins = PinSet()
        self._fastpaths = FastPaths(log, store, self.node_id, merge_lock=self._merge_lock,
                                    max_successive_merges=opts["max_successive_merges"],
                                    cache_keys=opts["crdt_cache_keys"])
        self._listeners = CommitListeners(lambda on: self._fastpaths.block("listeners", on))
        self._digests = DigestTree(log, store, self._catalog, self._merge_lock, self.path, opts["digests"])
        self._committer = Committer(
            log, store, self._catalog, self._listeners, life=self._life, node_id=self.node_id,
            merge_lock=self._merge_lock, fold_lock=self._fold_lock,
            max_successive_merges=opts["max_successive_merges"], owner=self)
        if self._digests.maintained:
            self._committer.digests = self._digests
            self._digests.load(bool(self.recovery["dropped_bytes"]))
        self._ranges = RangeTombstones(self._fastpaths.hold)
        self._digests.ranges = self._ranges
        self._housekeeping = Housekeeping(log, self._catalog, self._ranges, self._listeners, self._digests,
                                          life=self._life, node_id=self.node_id, merge_lock=self._merge_lock)
        self._scanner = Scanner(log, store, self._pins, self._fastpaths, self._ranges)
        self._feed = ChangeFeed(self._life, log, self._catalog, self.node_id)
        self._slots = SlotTable(self.path, log, self.durability, opts["max_slot_lag_bytes"], self._feed.start)
        self._feed.slots = self._slots
        # a fake clock or digest upkeep takes the general path
        self._fastpaths.block("clock", not log.real_clock)
        self._fastpaths.block("digests", self._digests.maintained)
        self._default = Namespace("", 0, None, life=self._life, reader=KeyReader(log, store, 0, None, self._ranges),
                                  committer=self._committer, scanner=self._scanner, owner=self,
                                  housekeeping=self._housekeeping)
        self._catalog.add_default(self._default)
        self._fastpath = self._fastpaths.create(self._default, self._committer.put_many)
        self._committer.apply_path = self._fastpaths.apply_path(self._catalog.for_apply)
        # While a namespace has nothing in the store, a key the log does not
        # hold is absent: the fast path answers without LMDB. Kept current
        # after every store commit.
        store.after_write = self._fastpaths.store_written
        self._fastpaths.store_written()
        self._ranges.load(log, store, self._catalog)

    def _make_handle(self, name: str, ns_id: int, operator: Optional[MergeOperator], fresh: bool) -> Namespace:
        """The catalog's factory of Namespace handles."""
        ns = Namespace(name, ns_id, operator, life=self._life,
                       reader=KeyReader(self._log, self._store, ns_id, operator, self._ranges),
                       committer=self._committer, scanner=self._scanner, owner=self,
                       housekeeping=self._housekeeping)
        if operator is None:
            self._fastpaths.bind(ns, fresh)
        else:
            self._fastpaths.bind_crdt(ns, fresh)
        return ns

    def close(self) -> None:
        """Stop the compactor, close the log and the store, release the lock.

        A clean close syncs the log and writes its durable end mark, so that
        recovery can tell corruption from a torn tail; after an I/O failure
        it syncs nothing. Safe to call twice, and safe while other threads
        use the engine: their calls in flight finish or raise
        EngineClosedError; every call after raises it. A second, concurrent
        close() returns when the first has finished.

        :raises IOFailedError: the closing sync failed (the engine is closed
            all the same).
        """
        if not self._life.begin_close():
            return
        try:
            self._fastpaths.detach_all()
            self._compactor.stop()
            try:
                if self._digests.maintained and self._log.failure() is None:
                    self._digests.save()
                self._log.close()  # syncs and marks, then waits for the C calls in flight
            finally:
                self._store.close()  # py-lmdb waits for its calls in flight
        finally:
            self._release_lock()
            self._life.end_close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        closed = " closed" if self._life.closed else ""
        return f"<Engine {self.path!r} node_id={self.node_id} durability={self.durability!r}{closed}>"

    def _check_open(self, what: str = "call") -> None:
        self._life.check(what)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._life.closed

    @property
    def _fast(self) -> bool:
        """Whether the C fast paths are on (tests)."""
        return self._fastpaths.enabled

    @property
    def compaction_timings(self) -> LatencyHistogram:
        """Durations (s) of the compaction passes that folded segments (``abase_engine.metrics``)."""
        return self._compactor.pass_seconds

    @property
    def listener_errors(self) -> int:
        """Exceptions raised by ``on_commit`` callbacks (logged, never propagated)."""
        return self._listeners.errors

    def now(self) -> Timestamp:
        """A fresh timestamp from this engine's clock (greater than every one issued)."""
        self._check_open("now")
        return from_packed(self._log.clock_now(), self.node_id)

    # -- namespaces ----------------------------------------------------------
    def namespace(self, name: str, merge: Optional[MergeOperator] = None) -> Namespace:
        """Open or create the namespace ``name`` with merge operator ``merge``.

        ``merge=None`` opens an existing namespace with its own operator, or
        creates an LWW one. The operator's name is persisted.

        :raises MergeOperatorMismatch: the namespace exists with another operator.
        :raises TypeError: ``name`` is not a str, or ``merge`` not a MergeOperator.
        """
        self._check_open("namespace")
        return self._catalog.open(name, merge)

    def namespaces(self) -> Dict[str, str]:
        """Every namespace defined in this directory: name -> operator name."""
        return self._catalog.definitions()

    def drop_namespace(self, name: str) -> Optional[Timestamp]:
        """Delete every key of namespace ``name``; see :mod:`abase_engine.housekeeping`
        (the namespace stays defined and usable). :raises NamespaceNotFoundError:"""
        return self._housekeeping.drop(name, self)

    def delete_range(self, start: Optional[bytes] = None, stop: Optional[bytes] = None,
                     namespace: Union[None, str, Namespace] = None) -> Optional[Timestamp]:
        """``Namespace.delete_range`` of ``namespace`` (default: the default one,
        never created here). :raises NamespaceNotFoundError, InvalidRangeError:"""
        self._check_open("delete_range")
        return self._housekeeping.delete_range(self._housekeeping.resolve(namespace, self), start, stop)

    def _namespace_arg(self, namespace: Union[None, str, Namespace, "Engine"]) -> Namespace:
        """A ``namespace=`` argument (None, a name, a handle, an engine) as a handle."""
        if namespace is None or namespace is self:
            return self._default
        if isinstance(namespace, Namespace):
            return namespace
        if isinstance(namespace, str):
            return self.namespace(namespace)
        if isinstance(namespace, Engine):
            raise ValueError("namespace belongs to another engine")
        raise TypeError(f"namespace must be a Namespace, a str or None, not {type(namespace).__name__}")

    # -- batches, snapshots ------------------------------------------------------
    def batch(self) -> Batch:
        """A new atomic batch (use as a context manager)."""
        self._check_open("batch")
        return Batch(self._committer, self._namespace_arg, self._fastpath)

    def snapshot(self) -> Snapshot:
        """A fixed view as of now; use as a context manager and close it promptly."""
        self._check_open("snapshot")
        return Snapshot(self._life, self._log.clock_now, self._pins, self._namespace_arg)

    # -- maintenance ---------------------------------------------------------
    def compact(self, wait: bool = True) -> int:
        """Fold the log into the store. ``wait=True`` seals the active segment
        and runs a full pass now, returning the number of segments folded;
        ``wait=False`` only wakes the compactor thread.

        :raises IOFailedError: the store's commit failed (from then on writes
            are refused), or writes are refused after an earlier I/O failure.
        """
        self._check_open("compact")
        if not wait:
            self._compactor.wake()
            return 0
        return self._compactor.run_pass(seal=True)

    def backup(self, path: str, progress: Optional[Callable[[int, int], None]] = None) -> Timestamp:
        """Copy this directory to ``path`` (missing or empty) while writers and the compactor
        run; returns its timestamp T: every local write stamped <= T (all acknowledged before
        the call), none later (``backup.py``; :func:`abase_engine.restore` opens it).
        :raises FileExistsError: ``path`` is not an empty directory. :raises IOFailedError:"""
        self._check_open("backup")
        return take_backup(path, source=self.path, node_id=self.node_id, log=self._log, store=self._store,
                           fold_lock=self._fold_lock, progress=progress)

    def sync(self) -> None:
        """Force every write acknowledged so far to disk (fdatasync of the
        segments, fsync of the log directory) and advance the durable end mark.

        :raises IOFailedError: a sync failed now or earlier (writes are refused
            until the engine is reopened).
        """
        self._check_open("sync")
        self._log.sync()

    def stats(self) -> Dict[str, Any]:
        """Counters: keys, log bytes, segments, index bytes, compaction lag, ...

        ``keys`` is approximate: keys in the log's index plus entries in the
        store (a key in both counts twice; tombstones count). ``len()`` is exact.
        ``io_error`` is None, or the first I/O failure (``file``, ``syscall``,
        ``errno``, ``message``) after which writes are refused;
        ``durable_end`` the log address below which everything is known to be
        on disk; ``stalls``, ``stall_ms`` and ``stalled_writers`` count write
        stalls (option ``stall_log_bytes``).
        """
        self._check_open("stats")
        ls = self._log.stats()
        segs = self._log.segments()
        store_keys = sum(self._store.count(h.id) for h in self._catalog.handles())
        compactor = self._compactor
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
            "compactions": compactor.segments_compacted,
            "compaction_passes": compactor.passes,
            "compaction_errors": len(compactor.errors),
            "log_bytes_written": ls["log_bytes_written"],
            "store_bytes_written": self._store.bytes_written,
            "store_bytes": self._store.size_bytes(),
            "records_appended": ls["records_appended"],
            "syncs": ls["syncs"],
            "slots": self._slots.stats(),
            "listener_errors": self._listeners.errors,
            "recovery": dict(self.recovery),
            "durable_end": ls["durable_end"],
            "stalls": ls["stalls"],
            "stall_ms": ls["stall_ns"] / 1e6,
            "stalled_writers": ls["stalled_writers"],
            "io_error": self._log.failure(),
        }

    def check(self, fix: bool = False) -> List[str]:
        """Check log checksums and that the index agrees with the log and the
        store; returns a list of findings (empty: healthy).

        ``fix=True`` on a healthy engine changes nothing and returns [].
        When something is found, it closes the engine (the damaged files
        must not be mapped while they are cut), salvages the directory with
        :func:`abase_engine.repair` and returns the findings followed by the
        repair's report (what was dropped, moved aside or rebuilt); reopen
        the directory to go on. A directory too damaged to open at all is
        repaired with ``abase_engine.repair(path)``.

        :raises EngineClosedError: the engine is closed.
        Thread-safety: safe; with ``fix=True`` and damage found, as ``close()``.
        """
        self._check_open("check")
        findings = self._log.check()
        for name, ns_id, _op in self._catalog.ids():
            for key, exc in self._store.check_namespace(ns_id):
                findings.append(f"namespace {name!r} key {key!r}: {exc}")
        if fix and findings:
            self.close()
            findings += repair(self.path, self.node_id)
        return findings

    def _check(self) -> None:
        """Assert internal invariants (tests call this after every step)."""
        problems = self.check()
        assert not problems, problems


def _make_dir(path: str) -> None:
    """Create the engine directory (and missing parents) with their names on
    disk: each created directory is fsync'd into its parent."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _make_dir(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent or ".")  # fsync point: the new directory's name


def open(path: Union[str, "os.PathLike[str]"], node_id: int = 1, durability: str = "process", **options: Any) -> Engine:
    """Open (creating if needed) the engine directory ``path``.

    >>> import tempfile, abase_engine as ae
    >>> with ae.open(tempfile.mkdtemp(), node_id=1) as db:
    ...     _ = db.put(b"k", b"v")
    ...     db.get(b"k")
    b'v'

    :raises LockedError: the directory is open elsewhere.
    :raises CorruptionError: a segment is damaged before the durable end mark,
        or in a way a process kill cannot explain.
    :raises IOFailedError: an OS call failed while opening.
    :raises FormatVersionError: written by an unknown format version.
    :raises InvalidOptionError: an unknown or out-of-range option.
    :raises NodeIdRetiredError: ``node_id`` is retired in this directory (a
        restored copy opened under an id of its original; ``NODE`` file).
    """
    return Engine(path, node_id, durability, **options)

