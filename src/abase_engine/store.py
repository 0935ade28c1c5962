"""The store layer: one compacted version per key, in LMDB (py-lmdb).

Layout of ``<dir>/store`` (one LMDB environment):

* ``meta``: format version, compaction marker, HLC high-water mark,
  namespace definitions (``ns:<name>`` -> id + operator name), replication
  state.
* ``n:<id>``: one database per namespace; key = user key, value =
  ``kind u8 | hlc u64 | node u32 [| anchor_hlc u64 | anchor_node u32]
  [| expire_at u64] | bytes`` (little-endian). ``kind`` is VALUE (an LWW
  value), TOMBSTONE (a delete kept for ``tombstone_grace``) or STATE (a
  merge namespace's folded state, stamped with its newest record's
  timestamp); bit 0x80 says an anchor (the newest delete folded into a
  STATE) follows: only for merge operators whose deletes reset the key (not
  the CRDTs, whose states carry what deletes removed and are never
  tombstones); bit 0x40 (LWW only) says an ``expire_at`` (physical ms, see
  ``ttl.py``) follows: a VALUE with it reads as absent from then on, and a
  TOMBSTONE with it (and no bytes) is such a value the compactor found
  expired, kept with its timestamp like any tombstone so that no older
  version can come back, then purged after ``tombstone_grace``.
* ``format``: the store's format version, ``FORMAT_VERSION`` in decimal;
  another one is refused with ``FormatVersionError`` (version 2 changed the
  CRDT state encodings; 3 added range tombstones to ``meta``, under
  ``ns:`` + their record key, see ranges.py, and the expiry bit 0x40 and
  ``expiring``; no upgrade path).
* ``tombstones``: ``hlc u64 BE | node u32 BE | ns u32 BE | xxh64(key)`` ->
  key, so purging expired tombstones reads only tombstones, oldest first.
* ``expiring``: ``expire_at u64 BE | ns u32 BE | xxh64(key)`` -> key for
  every VALUE with an expiry the compactor stored, so that turning expired
  values into tombstones reads only those, soonest first. An entry whose
  key has since been overwritten is dropped when its time comes.
* the empty key, which LMDB cannot store, is kept in ``meta`` under
  ``empty:<ns id>``.

The compactor is the only writer after open. Map size grows by doubling
when LMDB reports it full, instead of failing. A commit that fails for any
other reason raises :class:`~abase_engine.errors.IOFailedError` (the
compactor then makes the engine refuse writes).

Thread-safety: safe. Point reads go through a
:class:`~abase_engine._fast.StoreReader` (``csrc/fast_store.c``): one cached
read transaction per thread, renewed when the store changed since it began
(:attr:`Store.generation`), aborted when stale and idle before each write
transaction, and never open while the map grows. The C fast paths read
through the same object. :meth:`Store.close` may race other calls: py-lmdb
(3.0 and later) waits for its operations in flight and for another thread's
write transaction before it closes the environment, and invalidates every
transaction and cursor left; the LMDB errors that calls then meet become
EngineClosedError (:meth:`Store.translate`).
"""

from __future__ import annotations

import errno as _errno
import functools
import inspect
import os
import struct
import threading
from typing import Any, Callable, Iterator, Optional, Tuple, TypeVar

import lmdb
import xxhash

from . import _fast
from .errors import CorruptionError, EngineClosedError, FormatVersionError, io_failed

__all__ = ["Store", "Stored", "VALUE", "TOMBSTONE", "STATE", "FORMAT_VERSION", "fsync_dir", "expiry_of", "EXPIRY_BIT"]

FORMAT_VERSION = 3  # 2: CRDT states carry what deletes removed (no anchor); 3: range tombstones in meta, expiries (TTL)
VALUE = 1
TOMBSTONE = 2
STATE = 3
_HAS_ANCHOR = 0x80
_HAS_EXPIRY = 0x40
#: The kind bit of a stored LWW version followed by an expire_at.
EXPIRY_BIT = _HAS_EXPIRY

_HDR = struct.Struct("<BQI")
_ANCHOR = struct.Struct("<QI")
_TOMB_KEY = struct.Struct(">QII")
_EXPIRY_KEY = struct.Struct(">QI")
_U64 = struct.Struct("<Q")
_INITIAL_MAP = 64 << 20

#: A decoded stored version: kind, hlc, node, anchor_hlc, anchor_node, value;
#: an LWW version with an expiry has a seventh item, its expire_at (read it
#: with :func:`expiry_of`).
Stored = Tuple[Any, ...]


def encode(kind: int, hlc: int, node: int, value: bytes, anchor: Optional[Tuple[int, int]] = None,
           expire_at: int = 0) -> bytes:
    """Encode one stored version (see the module docstring); ``expire_at``
    (VALUE or TOMBSTONE, not with an anchor) > 0 adds the expiry."""
    if anchor is not None and anchor != (0, 0):
        return _HDR.pack(kind | _HAS_ANCHOR, hlc, node) + _ANCHOR.pack(*anchor) + value
    if expire_at:
        return _HDR.pack(kind | _HAS_EXPIRY, hlc, node) + _U64.pack(expire_at) + value
    return _HDR.pack(kind, hlc, node) + value


def decode(raw: bytes, where: str = "store") -> Stored:
    """Decode one stored version. :raises CorruptionError: bad bytes."""
    try:
        kind, hlc, node = _HDR.unpack_from(raw, 0)
        if kind & _HAS_ANCHOR:
            ah, an = _ANCHOR.unpack_from(raw, 13)
            body = raw[25:]
            kind &= 0x7F
        elif kind & _HAS_EXPIRY:
            kind &= ~_HAS_EXPIRY
            if kind not in (VALUE, TOMBSTONE):
                raise CorruptionError(f"stored value of kind {kind} with an expiry", where)
            expire_at = max(1, _U64.unpack_from(raw, 13)[0])
            return kind, hlc, node, 0, 0, bytes(raw[21:]), expire_at
        else:
            ah, an = 0, 0
            body = raw[13:]
    except struct.error:
        raise CorruptionError("stored value shorter than its header", where) from None
    if kind not in (VALUE, TOMBSTONE, STATE):
        raise CorruptionError(f"stored value of unknown kind {kind}", where)
    return kind, hlc, node, ah, an, bytes(body)


def expiry_of(stored: Stored) -> int:
    """The expire_at of a decoded stored version, 0 if it has none."""
    return stored[6] if len(stored) > 6 else 0


_F = TypeVar("_F", bound=Callable[..., Any])


def _closed_is_engine_closed(fn: _F) -> _F:
    """Make an LMDB error met because the store was closed meanwhile an
    EngineClosedError (for methods and generator methods of Store)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(self: "Store", *args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(self, *args, **kwargs)
            except lmdb.Error as exc:
                raise self.translate(exc) from exc
        return gen  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(self: "Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except lmdb.Error as exc:
            raise self.translate(exc) from exc
    return call  # type: ignore[return-value]


class Store:
    """The LMDB environment of one engine directory.

    :param path: the engine directory; the environment lives in ``path/store``.
    :param map_size: initial map size in bytes (grows by doubling).
    :raises FormatVersionError: the directory was written by an unknown format.
    """

    def __init__(self, path: str, map_size: int = _INITIAL_MAP, max_namespaces: int = 4096) -> None:
        self.path = os.path.join(path, "store")
        os.makedirs(self.path, exist_ok=True)
        # sync=True: a compaction commit is on disk before the segments it
        # folded are deleted (fsync point: store commit).
        self.env = lmdb.open(self.path, map_size=map_size, max_dbs=max_namespaces + 3, sync=True,
                             metasync=True, readahead=False, max_readers=1024, lock=True)
        # fsync point: LMDB does not sync a directory; the names of its files
        # and of store/ must be on disk before a commit counts.
        try:
            fsync_dir(self.path)
            fsync_dir(path)
        except OSError as exc:
            self.env.close()
            raise io_failed(f"open store: cannot sync a directory ({exc.strerror})", exc.filename, "fsync",
                            exc.errno or 0) from exc
        self.meta = self.env.open_db(b"meta")
        self.tombs = self.env.open_db(b"tombstones")
        self._dbs: dict = {}
        self._reader = _fast.StoreReader(self.env, lmdb.Error)
        self._lock = threading.Lock()
        #: Called after every committed write transaction (the engine keeps
        #: facts about the store's contents up to date with it).
        self.after_write: Optional[Callable[[], None]] = None
        self.bytes_written = 0
        #: True once close() has begun.
        self.closed = False
        raw = self.meta_get(b"format")
        if raw is None:
            self.write(lambda txn: txn.put(b"format", str(FORMAT_VERSION).encode(), db=self.meta))
        elif raw != str(FORMAT_VERSION).encode():
            self.env.close()
            raise FormatVersionError(f"store format version {raw.decode(errors='replace')!r}, this build reads {FORMAT_VERSION} ({self.path})")
        self.expiring = self.env.open_db(b"expiring")  # after the check: an old store stays as it was

    def close(self) -> None:
        """Close the environment, after the point reads in flight (the cached
        read transactions are aborted); calls racing this one finish or raise
        EngineClosedError."""
        self.closed = True
        try:
            self._reader.close()
        finally:
            self.env.close()

    @property
    def generation(self) -> int:
        """Incremented after every commit (and database creation): cached
        read transactions and the merge namespaces' state caches are valid
        for one generation."""
        return self._reader.generation

    @property
    def reader(self) -> Any:
        """The per-thread read transactions (a ``_fast.StoreReader``), for
        the C fast paths' lookups of keys the log does not hold."""
        return self._reader

    def translate(self, exc: BaseException) -> BaseException:
        """``exc`` (an LMDB error), or EngineClosedError if the store was
        closed: the error then comes from the close, not from the data."""
        if self.closed:
            return EngineClosedError(f"store used after close ({type(exc).__name__}: {exc})")
        return exc

    # -- databases -------------------------------------------------------
    @_closed_is_engine_closed
    def db(self, ns_id: int):
        """The LMDB database of namespace ``ns_id`` (created on first use)."""
        d = self._dbs.get(ns_id)
        if d is None:
            with self._lock:
                d = self._dbs.get(ns_id)
                if d is None:
                    try:
                        d = self.env.open_db(b"n:%d" % ns_id)  # a write transaction when new
                    except lmdb.Error as exc:
                        raise self._commit_failed(exc) from exc
                    self._dbs[ns_id] = d
                    # Read transactions begun before this handle existed cannot use it.
                    self._reader.invalidate()
        return d

    # -- reads -----------------------------------------------------------
    def _release_readers(self) -> None:
        """Abort cached read transactions that are stale and not in use.

        LMDB cannot reuse a page freed after the oldest open read transaction
        began, so a thread that read once and went idle would make the file
        grow by a copy of every page the compactor rewrites.
        """
        self._reader.release_stale()

    @_closed_is_engine_closed
    def get_raw(self, ns_id: int, key: bytes) -> Optional[bytes]:
        """The encoded stored version of ``key``, or None."""
        dbi = self.meta if not key else self.db(ns_id)  # first: a new handle renews transactions
        return self._reader.get(dbi, empty_key_slot(ns_id) if not key else key)

    def lookup(self, dbi, key: bytes) -> Optional[bytes]:
        """The encoded stored version of a non-empty ``key`` in the database
        handle ``dbi`` (from :meth:`db`), or None: :meth:`get_raw` without
        the empty-key case, for the read path after a log miss."""
        try:
            return self._reader.get(dbi, key)
        except lmdb.Error as exc:
            raise self.translate(exc) from exc

    @_closed_is_engine_closed
    def get(self, ns_id: int, key: bytes) -> Optional[Stored]:
        """The decoded stored version of ``key``, or None."""
        raw = self.get_raw(ns_id, key)
        return None if raw is None else decode(raw, self.path)

    @_closed_is_engine_closed
    def meta_get(self, key: bytes) -> Optional[bytes]:
        with self.env.begin(db=self.meta) as txn:
            return txn.get(key)

    @_closed_is_engine_closed
    def meta_items(self, prefix: bytes) -> Iterator[Tuple[bytes, bytes]]:
        with self.env.begin(db=self.meta) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    yield k, v

    @_closed_is_engine_closed
    def count(self, ns_id: int) -> int:
        """Entries (tombstones included) in a namespace's database."""
        dbi = self.db(ns_id)  # before the txn: a later handle is not valid in it
        with self.env.begin() as txn:
            return txn.stat(dbi)["entries"]

    @_closed_is_engine_closed
    def keys(self, ns_id: int) -> Iterator[bytes]:
        """Every key the namespace holds in the store, tombstones included,
        the empty key first; from one read transaction."""
        dbi = self.db(ns_id)  # before the txn: a later handle is not valid in it
        with self.env.begin(buffers=False) as txn:
            if txn.get(empty_key_slot(ns_id), db=self.meta) is not None:
                yield b""
            yield from txn.cursor(db=dbi).iternext(keys=True, values=False)

    @_closed_is_engine_closed
    def holds_nothing(self, ns_ids) -> dict:
        """``{ns_id: True}`` for each namespace of which the store holds no
        entry (not even the empty key), else False; one read transaction."""
        dbis = [(ns_id, self.db(ns_id)) for ns_id in ns_ids]
        with self.env.begin(buffers=False) as txn:
            return {ns_id: txn.stat(dbi)["entries"] == 0 and txn.get(empty_key_slot(ns_id), db=self.meta) is None
                    for ns_id, dbi in dbis}

    @_closed_is_engine_closed
    def check_namespace(self, ns_id: int) -> Iterator[Tuple[bytes, CorruptionError]]:
        """``(key, error)`` for every stored version of the namespace that does not decode."""
        dbi = self.db(ns_id)
        with self.env.begin(buffers=False) as txn:
            for k, raw in txn.cursor(db=dbi):
                try:
                    decode(raw, self.path)
                except CorruptionError as exc:
                    yield k, exc

    @_closed_is_engine_closed
    def size_bytes(self) -> int:
        info = self.env.info()
        stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    # -- writes (the compactor) -----------------------------------------
    @_closed_is_engine_closed
    def write(self, fn: Callable):
        """Run ``fn(txn)`` in one write transaction and commit it durably.

        On MapFullError the map is doubled and ``fn`` runs again from the
        start in a fresh transaction, so ``fn`` must not have side effects
        outside the transaction.
        """
        self._release_readers()
        while True:
            txn = self.env.begin(write=True)
            try:
                result = fn(txn)
            except lmdb.MapFullError:
                self._grow_map(txn)
                continue
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()  # fsync point: store commit (sync=True)
            except lmdb.MapFullError:
                self._grow_map()
                continue  # a failed commit has ended the transaction
            except lmdb.Error as exc:
                raise self._commit_failed(exc) from exc
            self._reader.invalidate()
            if self.after_write is not None:
                self.after_write()
            return result

    def _commit_failed(self, exc: "lmdb.Error") -> Exception:
        """The error for a failed commit. py-lmdb reports an OS error (EIO
        from a failed fdatasync, ENOSPC, ...) as ``Error("call: strerror")``
        (or ``Error(call, errno)``); that is an :class:`IOFailedError`. Any
        other LMDB condition is returned unchanged (re-raised)."""
        call, code = _lmdb_errno(exc)
        if not code:
            return exc
        return io_failed(f"store commit failed: {os.strerror(code)}", os.path.join(self.path, "data.mdb"),
                         call or "mdb_txn_commit", code)

    def _grow_map(self, failed_txn: Any = None) -> None:
        """Abort ``failed_txn`` (the write transaction that found the map
        full), if any, and double the map. LMDB must have no transaction open
        in the process while it remaps: point reads wait meanwhile and their
        cached transactions are aborted first (``StoreReader.block``). Other
        read transactions (a running scan's) are invalidated by py-lmdb.
        The abort comes after ``block()`` too: py-lmdb (3.0) makes a write
        transaction's abort wait until no other operation is in flight, which
        readers calling ``get`` without pause would otherwise never allow."""
        self._reader.block()
        try:
            if failed_txn is not None:
                failed_txn.abort()
            self.env.set_mapsize(self.env.info()["map_size"] * 2)
        finally:
            self._reader.unblock()

    def put_meta_u64(self, txn, key: bytes, value: int) -> None:
        txn.put(key, _U64.pack(value), db=self.meta)

    def meta_u64(self, key: bytes, default: int) -> int:
        raw = self.meta_get(key)
        return default if raw is None else _U64.unpack(raw)[0]

    @staticmethod
    def tomb_key(hlc: int, node: int, ns_id: int, key: bytes) -> bytes:
        """Key of a tombstone's entry in ``tombstones`` (the user key itself is
        the entry's value: a 511-byte key would not fit in an LMDB key)."""
        return _TOMB_KEY.pack(hlc, node, ns_id) + xxhash.xxh64_digest(key)

    @staticmethod
    def expiry_key(expire_at: int, ns_id: int, key: bytes) -> bytes:
        """Key of a stored value's entry in ``expiring`` (soonest first)."""
        return _EXPIRY_KEY.pack(expire_at, ns_id) + xxhash.xxh64_digest(key)

    @staticmethod
    def split_expiry_key(raw: bytes) -> Tuple[int, int]:
        """``(expire_at, ns_id)`` of an ``expiring`` key."""
        expire_at, ns_id = _EXPIRY_KEY.unpack_from(raw, 0)
        return expire_at, ns_id

    @staticmethod
    def split_tomb_key(raw: bytes) -> Tuple[int, int, int]:
        hlc, node, ns_id = _TOMB_KEY.unpack_from(raw, 0)
        return hlc, node, ns_id

    def put_in(self, txn, ns_id: int, key: bytes, value: bytes) -> None:
        """Write a stored version (the empty key, which LMDB refuses, lives in meta)."""
        if key:
            txn.put(key, value, db=self.db(ns_id))
        else:
            txn.put(empty_key_slot(ns_id), value, db=self.meta)

    def get_in(self, txn, ns_id: int, key: bytes) -> Optional[bytes]:
        if key:
            return txn.get(key, db=self.db(ns_id))
        return txn.get(empty_key_slot(ns_id), db=self.meta)

    def delete_in(self, txn, ns_id: int, key: bytes) -> None:
        if key:
            txn.delete(key, db=self.db(ns_id))
        else:
            txn.delete(empty_key_slot(ns_id), db=self.meta)


def _lmdb_errno(exc: "lmdb.Error") -> Tuple[str, int]:
    """``(call, errno)`` of an LMDB error that carries an OS error, else ``(call, 0)``."""
    args = exc.args
    if len(args) > 1 and isinstance(args[1], int):
        return str(args[0]), args[1] if 0 < args[1] < 4096 else 0
    text = str(args[0]) if args else ""
    call, _sep, message = text.partition(": ")
    for code in _errno.errorcode:
        if os.strerror(code) == message:
            return call, code
    return call, 0


def fsync_dir(path: str) -> None:
    """fsync the directory ``path`` (the names created in it reach the disk).

    :raises OSError: the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def empty_key_slot(ns_id: int) -> bytes:
    """Where namespace ``ns_id`` keeps the empty key's version, in ``meta``."""
    return b"empty:%d" % ns_id
