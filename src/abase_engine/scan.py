"""Scans: ordered iteration over a namespace, the log and the store merged.

A scan pins the current timestamp (or its ``at``) in the engine's pin set
for as long as it runs, so the compactor keeps the history it reads; the
log's keys in range are fixed when the scan starts (``abase_scan_open``
copies them under the log's lock and sorts them outside it) and each is
resolved as of the pin when its chunk is read. The store is read through
one LMDB read transaction held for the whole scan, so both layers are seen
as of one moment.

Two shapes:

* *log only*: an LWW namespace of which the store holds nothing (the fast
  path's store-empty flag) is scanned from the log alone, decoded in C a
  chunk of ``(key, value)`` pairs at a time;
* *merged*: the log's sorted keys and an LMDB cursor are merged in key
  order; a key in both is resolved through the log's read path (which
  consults the store for NEEDBASE). Once one stream ends, the other is
  yielded in a tight loop.

Complexity: O(k log k) to start, k = keys the log holds in the range, then
O(1) per item. Locks: none of its own; the pin set's lock to pin and unpin.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterator, Optional, Tuple

import lmdb

from . import store as _store
from .errors import CorruptionError, SnapshotTooOldError
from .log import DELETED, Log
from .record import MAX_NODE_ID, Timestamp, from_packed
from .snapshot import PinSet
from .store import TOMBSTONE, VALUE, Store

if TYPE_CHECKING:  # pragma: no cover
    from .fastpath import FastPaths
    from .namespace import Namespace

__all__ = ["Scanner", "prefix_end"]


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
    :param fastpaths: knows which LWW namespaces the store holds nothing of.
    """

    def __init__(self, log: Log, store: Store, pins: PinSet, fastpaths: "FastPaths") -> None:
        self._log = log
        self._store = store
        self._pins = pins
        self._fastpaths = fastpaths

    def scan(self, ns: "Namespace", start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
             reverse: bool, at: Optional[Timestamp]) -> Iterator[Tuple[bytes, Any]]:
        """``(key, value)`` of ``ns`` in key order over ``[start, stop)`` and
        ``prefix`` as of ``at`` (None: the scan's first step); arguments checked."""
        if prefix is not None:
            lo = prefix if start is None or start < prefix else start
            hi = prefix_end(prefix)
            hi = hi if stop is None or (hi is not None and hi < stop) else stop
            start, stop = lo, hi
        pin = at if at is not None else from_packed(self._log.clock(), MAX_NODE_ID)
        self._pins.add(pin)
        try:
            if at is None and ns.lww and self._fastpaths.store_empty(ns):
                # The scan is the log's, decoded in C a batch at a time (here,
                # not in a helper generator: one delegation less per item). A
                # key compacted meanwhile reads as NOTFOUND or NEEDBASE and
                # is looked up through the general path.
                resolve = ns.reader.resolve_scan_entry
                for chunk, only_pairs in self._log.scan_chunks(ns.id, start, stop, None, reverse,
                                                               pin.hlc, pin.node_id, False, pairs=True):
                    if only_pairs:
                        yield from chunk
                        continue
                    for entry in chunk:
                        if len(entry) == 2:
                            yield entry
                        else:
                            item = resolve(entry, pin)
                            if item is not None:
                                yield entry[0], item
            else:
                yield from self._merged(ns, start, stop, reverse, pin, at is None)
        except lmdb.Error as exc:  # the store closed under the scan
            raise self._store.translate(exc) from exc
        finally:
            self._pins.remove(pin)

    def _merged(self, ns: "Namespace", start: Optional[bytes], stop: Optional[bytes], reverse: bool,
                pin: Timestamp, pin_is_now: bool) -> Iterator[Tuple[bytes, Any]]:
        store = self._store
        operator = None if ns.lww else ns.merge_operator
        resolve = ns.reader.resolve_scan_entry
        at_h, at_n = pin.hlc, pin.node_id
        dbi = store.db(ns.id)  # before the txn: a handle opened later is not valid in it
        txn = store.env.begin(buffers=False)
        try:
            log_iter = self._log.scan(ns.id, start, stop, None, reverse, at_h, at_n, operator is not None)
            cur = txn.cursor(db=dbi)
            store_iter = _cursor_range(cur, start, stop, reverse)
            empty = txn.get(_store.empty_key_slot(ns.id), db=store.meta)
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
                    lk = next(log_iter, None)
                elif lk is None or lk[0] != sk[0]:
                    key = sk[0]
                    kind, h, n, _ah, _an, val = _store.decode(sk[1], store.path)
                    if (h, n) > (at_h, at_n):
                        raise SnapshotTooOldError(f"history of {key!r} before {pin!r} was compacted")
                    item = None if kind == TOMBSTONE else (val if operator is None else operator.to_value(val))
                    sk = next(store_iter, None)
                else:
                    key, item = lk[0], resolve(lk, pin)
                    lk = next(log_iter, None)
                    sk = next(store_iter, None)
                if item is not None:
                    yield key, item
        finally:
            try:
                txn.abort()
            except lmdb.Error:
                pass  # the store was closed meanwhile: nothing left to abort


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


def _stored_values(items: Iterator[Tuple], where: str) -> Iterator[Tuple[bytes, bytes]]:
    """(key, value) of stored LWW versions, tombstones skipped; anything else
    is corruption, never a value."""
    for k, v in items:
        kind = v[0]
        if kind == VALUE and len(v) >= 13:
            yield k, v[13:]
        elif kind != TOMBSTONE or len(v) < 13:
            raise CorruptionError(f"stored value of key {k!r} has unknown kind {kind} or is truncated", where)


def _chain_empty(it: Iterator[Tuple], raw: bytes, reverse: bool) -> Iterator[Tuple]:
    if not reverse:
        yield b"", raw
    yield from it
    if reverse:
        yield b"", raw
