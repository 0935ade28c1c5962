"""Scans: ordered iteration over a namespace, the log and the store merged.

A scan pins its timestamp (now, or its ``at``) in the engine's pin set for
as long as it runs, so the compactor keeps the history it reads; the
log's keys in range are fixed when the scan starts (``abase_scan_open``
copies them under the log's lock and sorts them outside it) and each is
resolved as of the pin when its chunk is read. The store is read through
one LMDB read transaction held for the whole scan, begun after the log's
keys are fixed: a key compacted in between is then in the store's view,
and one compacted later reads as "ask the store" in the log.

Two implementations:

* *LWW namespaces*: ``_fast.ScanIter`` (``csrc/fast_scan.c``) merges the
  log's chunks and a py-lmdb cursor in one C loop and builds each
  ``(key, value)`` once; no Python frame runs per item. A namespace of
  which the store holds nothing (the fast path's store-empty flag) is
  scanned from the log alone. Keys the log cannot decide (NEEDBASE, or
  compacted since the scan opened) are resolved through the key reader.
* *merge namespaces* (and an LWW namespace whose empty key is stored, or
  that has range tombstones, ``ranges.py``): the merge in Python below,
  folding with the namespace's operator or hiding what a tombstone covers.

Both open at the first ``next()``, which is when the scan's snapshot is
taken. Complexity: O(k log k) to start, k = keys the log holds in the
range, then O(1) per item. Locks: none of its own; the pin set's lock to
pin and unpin.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Tuple

import lmdb

from . import _fast
from . import store as _store
from .errors import CorruptionError, EngineClosedError, SnapshotTooOldError
from .log import DELETED, Log
from .record import MAX_NODE_ID, Timestamp, from_packed
from .snapshot import PinSet
from .store import TOMBSTONE, VALUE, Store, expiry_of
from .ttl import expired

if TYPE_CHECKING:  # pragma: no cover
    from .fastpath import FastPaths
    from .namespace import Namespace
    from .ranges import RangeTombstones

__all__ = ["Scanner", "prefix_end", "SCAN_COPY_LIMIT"]

#: An LWW scan copies its keys' entries (key and value) out of the log when
#: it opens, reading the log once in log order, while the live log is at
#: most this many bytes; it holds about 40 + key + value bytes (each padded
#: to 8) + 24 per key it returns until it ends. Above, it keeps only keys
#: and reads each value from the log when its chunk is due (a second,
#: random pass over the log).
SCAN_COPY_LIMIT = 1 << 30


def prefix_end(prefix: bytes) -> Optional[bytes]:
    """The first key after every key starting with ``prefix`` (None: no bound)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


class Scanner:
    """Runs the scans of one engine (see the module docstring).

    :param log, store: the two layers.
    :param pins: the engine's pin set.
    :param fastpaths: the LWW namespaces' fast paths (whether the store holds
        nothing of a namespace; the C scan checks through one that the
        engine is still open).
    """

    def __init__(self, log: Log, store: Store, pins: PinSet, fastpaths: "FastPaths",
                 ranges: Optional["RangeTombstones"] = None) -> None:
        self._log = log
        self._store = store
        self._pins = pins
        self._fastpaths = fastpaths
        #: range tombstones: an LWW namespace that has some is scanned in Python, filtered
        self._ranges = ranges

    def scan(self, ns: "Namespace", start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
             reverse: bool, at: Optional[Timestamp]) -> Iterator[Tuple[bytes, Any]]:
        """``(key, value)`` of ``ns`` in key order over ``[start, stop)`` and
        ``prefix`` as of ``at`` (None: the scan's first step); arguments checked."""
        if prefix is not None:
            lo = prefix if start is None or start < prefix else start
            hi = prefix_end(prefix)
            hi = hi if stop is None or (hi is not None and hi < stop) else stop
            start, stop = lo, hi
        ranged = ns.lww and self._ranges is not None and self._ranges.active(ns.id)
        if ns.lww and not ranged:
            return _fast.ScanIter(partial(self._open_lww, ns, start, stop, reverse, at))
        if ranged and at is not None and self._ranges.too_old(ns.id, start, stop, (at.hlc, at.node_id)):
            raise SnapshotTooOldError(f"history before {at!r} of a range of {ns.name!r} was range-deleted and compacted")
        return self._python_scan(ns, start, stop, reverse, at)

    def _pin(self, at: Optional[Timestamp]) -> Timestamp:
        # A timestamp issued now (not just the last one issued): every later
        # write is newer, and its physical ms is the time expiries are
        # judged at (ttl.py), which must move with the wall clock.
        pin = at if at is not None else from_packed(self._log.clock_now(), MAX_NODE_ID)
        self._pins.add(pin)
        return pin

    def _python_scan(self, ns: "Namespace", start: Optional[bytes], stop: Optional[bytes], reverse: bool,
                     at: Optional[Timestamp]) -> Iterator[Tuple[bytes, Any]]:
        pin = self._pin(at)
        try:
            yield from self._merged(ns, start, stop, reverse, pin, at is None)
        except lmdb.Error as exc:  # the store closed under the scan
            raise self._store.translate(exc) from exc
        finally:
            self._pins.remove(pin)

    def _open_lww(self, ns: "Namespace", start: Optional[bytes], stop: Optional[bytes], reverse: bool,
                  at: Optional[Timestamp]) -> Any:
        """The plan of a C scan (see ``fast_scan.c``), opened now: pin, log
        keys, then the store's cursor; or a Python scan when the store holds
        the namespace's empty key (kept in ``meta``, outside the cursor)."""
        log, store = self._log, self._store
        pin = self._pin(at)
        txn = None
        handle = 0
        try:
            handle, scan_next, scan_free = log.scan_handle(ns.id, start, stop, reverse, pin.hlc, pin.node_id,
                                                           SCAN_COPY_LIMIT)
            cursor_items = None
            if not self._fastpaths.store_empty(ns):
                dbi = store.db(ns.id)  # before the txn: a handle opened later is not valid in it
                txn = store.env.begin(buffers=False)
                if txn.get(_store.empty_key_slot(ns.id), db=store.meta) is not None and \
                        (start is None or start == b"") and (stop is None or stop != b""):
                    txn.abort()
                    log.scan_free(handle)
                    self._pins.remove(pin)
                    return self._python_scan(ns, start, stop, reverse, at)
                cursor_items = _positioned_items(txn.cursor(db=dbi), start, stop, reverse)
        except BaseException:
            if handle:
                log.scan_free(handle)
            if txn is not None:
                txn.abort()
            self._pins.remove(pin)
            raise
        reader, pins = ns.reader, self._pins

        def resolve(key: bytes, status: int, value: Optional[bytes], h: int, n: int, op: int) -> Any:
            return reader.resolve_scan_entry((key, status, value, h, n, op), pin)

        def make_error(kind: str, key: Optional[bytes]) -> Exception:
            if kind == "too_old":
                return SnapshotTooOldError(f"history of {key!r} before {pin!r} was compacted")
            if kind == "corrupt":
                return CorruptionError(f"stored value of key {key!r} has an unknown kind or is truncated",
                                       store.path)
            return EngineClosedError("scan used after the engine was closed")

        def on_close() -> None:
            try:
                if txn is not None:
                    txn.abort()
            finally:
                pins.remove(pin)

        return (handle, scan_next, scan_free, self._fastpaths.path_of(ns), cursor_items,
                start if reverse else stop, reverse, pin.hlc, pin.node_id, resolve, make_error, on_close)

    def _merged(self, ns: "Namespace", start: Optional[bytes], stop: Optional[bytes], reverse: bool,
                pin: Timestamp, pin_is_now: bool) -> Iterator[Tuple[bytes, Any]]:
        store = self._store
        operator = None if ns.lww else ns.merge_operator
        resolve = ns.reader.resolve_scan_entry
        at_h, at_n = pin.hlc, pin.node_id
        view = self._ranges.view(ns.id) if operator is None and self._ranges is not None else None
        hidden = (lambda k, h, n: view.covers(k, h, n, (at_h, at_n))) if view is not None else None
        dbi = store.db(ns.id)  # before the txn: a handle opened later is not valid in it
        # The log's keys are fixed first, then the store's view is taken: a
        # key compacted in between is in that view (see the module docstring).
        log_iter = self._log.scan(ns.id, start, stop, None, reverse, at_h, at_n, operator is not None)
        lk = next(log_iter, None)
        txn = store.env.begin(buffers=False)
        try:
            cur = txn.cursor(db=dbi)
            store_iter = _cursor_range(cur, start, stop, reverse)
            empty = txn.get(_store.empty_key_slot(ns.id), db=store.meta)
            chained = empty is not None and (start is None or start == b"") and (stop is None or stop != b"")
            if chained:
                # the empty key sorts first; LMDB cannot hold it, meta does
                store_iter = _chain_empty(store_iter, empty, reverse)
            sk = next(store_iter, None)
            # Every stored timestamp is at or below a pin taken now, so a scan
            # with no `at` needs no per-item snapshot check; once one stream
            # is exhausted the other is yielded in a tight loop.
            own_pin = operator is None and pin_is_now and hidden is None
            while lk is not None or sk is not None:
                if own_pin and lk is None:
                    if not reverse and stop is None and not chained:
                        # iternext() starts at the cursor's current item: sk
                        yield from _stored_values(cur.iternext(), store.path, pin)
                    else:
                        yield from _stored_values(itertools.chain((sk,), store_iter), store.path, pin)
                    return
                if own_pin and sk is None:
                    for entry in itertools.chain((lk,), log_iter):
                        if entry[1] >= 0:
                            yield entry[0], entry[2]
                        elif entry[1] != DELETED:
                            item = resolve(entry, pin)
                            if item is not None:
                                yield entry[0], item
                    return
                if sk is None or (lk is not None and (lk[0] > sk[0] if reverse else lk[0] < sk[0])):
                    key, item = lk[0], resolve(lk, pin)
                    if hidden is not None and lk[1] >= 0 and hidden(key, lk[3], lk[4]):
                        item = None  # a range tombstone hides it (other statuses: the reader checks)
                    lk = next(log_iter, None)
                elif lk is None or lk[0] != sk[0]:
                    key = sk[0]
                    st = _store.decode(sk[1], store.path)
                    if (st[1], st[2]) > (at_h, at_n):
                        raise SnapshotTooOldError(f"history of {key!r} before {pin!r} was compacted")
                    item = _stored_item(key, st, operator, pin)
                    if hidden is not None and hidden(key, st[1], st[2]):
                        item = None
                    sk = next(store_iter, None)
                else:
                    key, item = lk[0], resolve(lk, pin)
                    if hidden is not None and lk[1] >= 0 and hidden(key, lk[3], lk[4]):
                        item = None
                    lk = next(log_iter, None)
                    sk = next(store_iter, None)
                if item is not None:
                    yield key, item
        finally:
            try:
                txn.abort()
            except lmdb.Error:
                pass  # the store was closed meanwhile: nothing left to abort


def _positioned_items(cur: Any, start: Optional[bytes], stop: Optional[bytes], reverse: bool) -> Optional[Any]:
    """py-lmdb's iterator of ``(key, stored)`` from the first item of the
    range in scan order (the C loop stops it at the far bound), or None when
    the range holds nothing."""
    if not reverse:
        ok = cur.set_range(start) if start is not None else cur.first()
        return cur.iternext(keys=True, values=True) if ok else None
    if stop is not None:
        ok = cur.set_range(stop)
        ok = cur.prev() if ok else cur.last()
    else:
        ok = cur.last()
    return cur.iterprev(keys=True, values=True) if ok else None


def _cursor_range(cur: Any, start: Optional[bytes], stop: Optional[bytes], reverse: bool) -> Iterator[Tuple]:
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


def _stored_item(key: bytes, st: tuple, operator: Any, pin: Timestamp) -> Any:
    """What a decoded stored version (not newer than ``pin``) shows the scan:
    the value (the operator's Python value in a merge namespace), or None
    for a tombstone or a value expired as of ``pin``.

    :raises SnapshotTooOldError: an expired value the compactor dropped
        that ``pin``, older than its expiry, would still see."""
    expire_at = expiry_of(st)
    if st[0] == TOMBSTONE:
        if expire_at and not expired(expire_at, pin.physical_ms):
            raise SnapshotTooOldError(f"the value of {key!r} as of {pin!r} expired and was compacted")
        return None
    if expire_at and expired(expire_at, pin.physical_ms):
        return None
    return st[5] if operator is None else operator.to_value(st[5])


def _stored_values(items: Iterator[Tuple], where: str, pin: Timestamp) -> Iterator[Tuple[bytes, bytes]]:
    """(key, value) of stored LWW versions, tombstones and values expired as
    of ``pin`` skipped; anything else is corruption, never a value."""
    for k, v in items:
        kind = v[0]
        if kind == VALUE and len(v) >= 13:
            yield k, v[13:]
        elif kind != TOMBSTONE or len(v) < 13:
            st = _store.decode(v, where)  # a version with an expiry, or CorruptionError
            if st[0] not in (VALUE, TOMBSTONE):
                raise CorruptionError(f"stored value of key {k!r} has kind {st[0]} in an LWW namespace", where)
            item = _stored_item(k, st, None, pin)
            if item is not None:
                yield k, item


def _chain_empty(it: Iterator[Tuple], raw: bytes, reverse: bool) -> Iterator[Tuple]:
    if not reverse:
        yield b"", raw
    yield from it
    if reverse:
        yield b"", raw
