"""Range tombstones: what ``delete_range`` and ``drop_namespace`` leave in an LWW namespace.

A range tombstone ``(start, stop, T)`` of a namespace hides every version of
every key in ``[start, stop)`` whose timestamp ``(hlc, node)`` is below ``T``,
wherever the version is (log or store) and whenever it arrives (a late
``apply`` of an older version stays hidden); versions at or above ``T``
survive. For LWW this is exactly a point DELETE at ``T`` of every key in the
range, the keys not yet written included, so the visible value of a key is
still a pure function of its records plus the namespace's range tombstones
(DESIGN.md invariant 5). ``stop`` None means no upper bound.

This module owns the tombstones of one engine: their record format, their
set in memory, the queries of the read paths, and what the compactor needs
(which tombstones it may act on, and the sweep of covered stored versions).

Record format. A tombstone is written through the log as a PUT in the
reserved namespace ``NS_DEFS`` (like a namespace definition, see
``catalog.py``), stamped with its own timestamp ``T``:

* key: ``0xFF 'R' | hlc u64 big-endian | node u32 big-endian`` (13 bytes;
  ``0xFF`` never starts a UTF-8 namespace name, so the catalog skips these
  keys; one timestamp names one tombstone, so keys never collide);
* value: ``name length u16 LE | namespace name (UTF-8) | start length u16 LE
  | start | has_stop u8 | stop (if has_stop)``.

The compactor folds them like definitions into the store's ``meta``
database, under ``ns:`` + key with the same value. At open they are read from
``meta`` and from the log. Tombstones are kept for good (a late version may
always arrive); they cost ~40 bytes + the bounds each, in memory and on disk.

Compaction. A tombstone whose ``T`` is at or below the oldest pin (open
snapshots and scans; every tombstone when nothing is pinned) is *effective*:
the compactor does not write the versions it covers into the store, and
*sweeps* it once per process: it deletes the covered stored versions of its
range. A read at a timestamp below ``T`` of a key whose tombstone may have
been acted on (``folded``: every tombstone loaded at open, and every one the
compactor made effective) raises ``SnapshotTooOldError`` instead of guessing.

Locks: one lock guards the set; readers take a consistent reference to the
per-namespace view (replaced whole on every change, never mutated).
"""

from __future__ import annotations

import bisect
import heapq
import struct
import threading
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import CorruptionError
from .log import NS_DEFS, Log
from .store import Store, decode

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog

__all__ = ["RangeTombstones", "RangeView", "Folding", "RANGE_PREFIX", "encode_record", "decode_record"]

#: First bytes of the ``NS_DEFS`` key of a range tombstone.
RANGE_PREFIX = b"\xffR"
_KEY = struct.Struct(">QI")
_U16 = struct.Struct("<H")

#: ``(hlc, node)``, ordered like a Timestamp.
Stamp = Tuple[int, int]


class _Tombstone:
    """One range tombstone; ``folded``/``swept`` are compaction state of this process."""

    __slots__ = ("start", "stop", "stamp", "folded", "swept")

    def __init__(self, start: bytes, stop: Optional[bytes], stamp: Stamp, folded: bool) -> None:
        self.start = start
        self.stop = stop
        self.stamp = stamp
        self.folded = folded
        self.swept = False

    def covers_key(self, key: bytes) -> bool:
        return self.start <= key and (self.stop is None or key < self.stop)

    def meets(self, start: Optional[bytes], stop: Optional[bytes]) -> bool:
        """Whether the tombstone's range intersects ``[start, stop)`` (None: unbounded)."""
        lo = b"" if start is None else start
        if stop is not None and stop <= self.start:
            return False
        return self.stop is None or lo < self.stop


def encode_record(name: str, start: bytes, stop: Optional[bytes], stamp: Stamp) -> Tuple[bytes, bytes]:
    """``(key, value)`` of the ``NS_DEFS`` record of a tombstone (module docstring)."""
    raw = name.encode()
    value = _U16.pack(len(raw)) + raw + _U16.pack(len(start)) + start
    value += b"\x00" if stop is None else b"\x01" + stop
    return RANGE_PREFIX + _KEY.pack(*stamp), value


def decode_record(key: bytes, value: bytes) -> Optional[Tuple[str, bytes, Optional[bytes], Stamp]]:
    """``(namespace name, start, stop, (hlc, node))`` of a tombstone record;
    None if ``key`` is not a tombstone's.

    :raises CorruptionError: a tombstone record whose bytes do not decode.
    """
    if not key.startswith(RANGE_PREFIX):
        return None
    try:
        if len(key) != len(RANGE_PREFIX) + _KEY.size:
            raise ValueError("key length")
        stamp = _KEY.unpack_from(key, len(RANGE_PREFIX))
        (n,) = _U16.unpack_from(value, 0)
        name = value[2:2 + n].decode()
        pos = 2 + n
        (s,) = _U16.unpack_from(value, pos)
        start = value[pos + 2:pos + 2 + s]
        pos += 2 + s
        if len(start) != s or pos >= len(value) or value[pos] not in (0, 1):
            raise ValueError("bounds")
        stop = None if value[pos] == 0 else value[pos + 1:]
        if stop is None and pos + 1 != len(value):
            raise ValueError("trailing bytes")
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise CorruptionError(f"range tombstone record {key!r} does not decode: {exc}") from None
    return name, start, stop, (stamp[0], stamp[1])


class RangeView:
    """The tombstones of one namespace, immutable: the raw list (for reads at
    a past timestamp) and a flattened map from key intervals to the greatest
    tombstone over them (for reads now: O(log n))."""

    __slots__ = ("tombs", "newest", "_bounds", "_cuts")

    def __init__(self, tombs: List[_Tombstone]) -> None:
        self.tombs = tombs
        #: the greatest tombstone timestamp: a read at or after it sees them all
        self.newest = max(t.stamp for t in tombs)
        bounds = sorted({t.start for t in tombs} | {t.stop for t in tombs if t.stop is not None})
        # A sweep over the bounds with a max-heap of the tombstones open at
        # each one (ended ones popped lazily): O((n + bounds) log n).
        by_start = sorted(tombs, key=lambda t: t.start)
        heap: List[Tuple[Tuple[int, int], int, Optional[bytes]]] = []
        cuts: List[Optional[Stamp]] = []
        j = 0
        for b in bounds:
            while j < len(by_start) and by_start[j].start <= b:
                t = by_start[j]
                heapq.heappush(heap, ((-t.stamp[0], -t.stamp[1]), j, t.stop))
                j += 1
            while heap and heap[0][2] is not None and heap[0][2] <= b:  # type: ignore[operator]
                heapq.heappop(heap)
            cuts.append((-heap[0][0][0], -heap[0][0][1]) if heap else None)
        self._bounds = bounds
        self._cuts = cuts

    def cut(self, key: bytes, at: Optional[Stamp] = None) -> Optional[Stamp]:
        """The greatest tombstone timestamp over ``key`` (visible at ``at``, if
        given), or None: versions of ``key`` below it are hidden. O(log n)
        when every tombstone is visible at ``at``, else O(n)."""
        if at is None or at >= self.newest:
            i = bisect.bisect_right(self._bounds, key) - 1
            return self._cuts[i] if i >= 0 else None
        best = None
        for t in self.tombs:
            if t.stamp <= at and t.covers_key(key) and (best is None or t.stamp > best):
                best = t.stamp
        return best

    def covers(self, key: bytes, hlc: int, node: int, at: Optional[Stamp] = None) -> bool:
        """Whether the version ``(hlc, node)`` of ``key`` is hidden (as of ``at``)."""
        c = self.cut(key, at)
        return c is not None and (hlc, node) < c


class Folding:
    """What one compaction pass may act on: the tombstones at or below the
    oldest pin (see the module docstring). Made by :meth:`RangeTombstones.folding`."""

    def __init__(self, effective: Dict[int, RangeView], all_views: Dict[int, RangeView]) -> None:
        self._effective = effective
        self._all = all_views

    def active(self, ns_id: int) -> bool:
        """Whether namespace ``ns_id`` has any tombstone at all."""
        return ns_id in self._all

    def covers(self, ns_id: int, key: bytes, hlc: int, node: int) -> bool:
        """Whether the pass may drop this version (an effective tombstone hides it)."""
        view = self._effective.get(ns_id)
        return view is not None and view.covers(key, hlc, node)

    def written(self, ns_id: int, key: bytes, hlc: int, node: int) -> None:
        """The pass stores a version that a not-yet-effective tombstone covers:
        that tombstone must be swept again once it is effective."""
        view = self._all.get(ns_id)
        if view is not None:
            for t in view.tombs:
                if t.swept and t.covers_key(key) and (hlc, node) < t.stamp:
                    t.swept = False

    def unswept(self) -> List[Tuple[int, _Tombstone]]:
        """``(ns_id, tombstone)`` of the effective tombstones not yet swept."""
        return [(ns_id, t) for ns_id, view in self._effective.items() for t in view.tombs if not t.swept]

    @staticmethod
    def sweep(store: Store, txn: object, todo: List[Tuple[int, _Tombstone]]) -> int:
        """Delete the stored versions the tombstones ``todo`` cover, in a write
        transaction (handles opened before it); returns how many. The caller
        marks them swept once the transaction committed (:meth:`swept`)."""
        return sum(_sweep_one(store, txn, ns_id, t) for ns_id, t in todo)

    @staticmethod
    def swept(todo: List[Tuple[int, _Tombstone]]) -> None:
        """The sweep of ``todo`` committed."""
        for _ns_id, t in todo:
            t.swept = True

    def namespaces(self) -> List[int]:
        """Namespaces with effective tombstones (their handles must be open before the txn)."""
        return list(self._effective)


def _sweep_one(store: Store, txn: object, ns_id: int, t: _Tombstone) -> int:
    removed = 0
    if t.start == b"":
        raw = store.get_in(txn, ns_id, b"")
        if raw is not None and decode(raw, store.path)[1:3] < t.stamp:
            store.delete_in(txn, ns_id, b"")
            removed += 1
    dbi = store.db(ns_id)
    cur = txn.cursor(db=dbi)  # type: ignore[attr-defined]
    ok = cur.set_range(t.start) if t.start else cur.first()
    doomed = []
    while ok:
        key = bytes(cur.key())
        if t.stop is not None and key >= t.stop:
            break
        if decode(bytes(cur.value()), store.path)[1:3] < t.stamp:
            doomed.append(key)
        ok = cur.next()
    for key in doomed:
        txn.delete(key, db=dbi)  # type: ignore[attr-defined]
    return removed + len(doomed)


class RangeTombstones:
    """The range tombstones of one engine (see the module docstring).

    :param on_first: called with a namespace id when it gets its first
        tombstone (the engine holds that namespace's C fast path off: the C
        reads do not consult tombstones).

    Thread-safety: safe.
    """

    def __init__(self, on_first: Callable[[int], None]) -> None:
        self._lock = threading.Lock()
        self._views: Dict[int, RangeView] = {}
        self._seen: set = set()  # stamps of the tombstones held
        self._on_first = on_first

    # -- loading and adding ----------------------------------------------------
    def load(self, log: Log, store: Store, catalog: "Catalog") -> None:
        """Read the tombstones from the store's ``meta`` and the log (at open).
        Every one counts as folded: an earlier process may have acted on it.

        :raises CorruptionError: a tombstone record does not decode.
        """
        found = []
        for k, v in store.meta_items(b"ns:" + RANGE_PREFIX):
            found.append(decode_record(k[3:], v))
        if log.recovery.ns_def_records:
            for key, status, value, _h, _n, _op in log.scan(NS_DEFS, RANGE_PREFIX, None, None, False, 0, 0, False):
                if status >= 0 and value is not None and key.startswith(RANGE_PREFIX):
                    found.append(decode_record(key, value))
        for rec in found:
            if rec is not None:
                name, start, stop, stamp = rec
                self.add(catalog.for_apply(name).id, start, stop, stamp, folded=True)

    def add(self, ns_id: int, start: bytes, stop: Optional[bytes], stamp: Stamp, folded: bool = False) -> bool:
        """Hold a tombstone; returns False if it was already held (same stamp)."""
        if ns_id not in self._views:
            self._on_first(ns_id)  # before any read can see the tombstone (idempotent)
        with self._lock:
            if stamp in self._seen:
                return False
            self._seen.add(stamp)
            view = self._views.get(ns_id)
            tombs = [] if view is None else list(view.tombs)
            tombs.append(_Tombstone(start, stop, stamp, folded))
            self._views[ns_id] = RangeView(tombs)
        return True

    def has(self, stamp: Stamp) -> bool:
        """Whether the tombstone stamped ``stamp`` is held."""
        return stamp in self._seen

    # -- reads -----------------------------------------------------------------
    def active(self, ns_id: int) -> bool:
        """Whether namespace ``ns_id`` has any range tombstone. O(1)."""
        return ns_id in self._views

    def view(self, ns_id: int) -> Optional[RangeView]:
        """The namespace's tombstones (None: none)."""
        return self._views.get(ns_id)

    def covers(self, ns_id: int, key: bytes, hlc: int, node: int, at: Optional[Stamp] = None) -> bool:
        """Whether version ``(hlc, node)`` of ``key`` is hidden (as of ``at``)."""
        view = self._views.get(ns_id)
        return view is not None and view.covers(key, hlc, node, at)

    def too_old(self, ns_id: int, start: Optional[bytes], stop: Optional[bytes], at: Stamp) -> bool:
        """Whether a read at ``at`` of keys in ``[start, stop)`` may miss
        versions a compaction dropped: a folded tombstone newer than ``at``
        meets the range."""
        view = self._views.get(ns_id)
        return view is not None and any(t.folded and t.stamp > at and t.meets(start, stop) for t in view.tombs)

    def records(self) -> Iterator[Tuple[int, bytes, Optional[bytes], Stamp]]:
        """``(ns_id, start, stop, stamp)`` of every tombstone held."""
        for ns_id, view in list(self._views.items()):
            for t in view.tombs:
                yield ns_id, t.start, t.stop, t.stamp

    def digest_entries(self, ns_id: int) -> List[Tuple[bytes, bytes, bytes, Optional[bytes], Stamp]]:
        """``(digest key, canonical bytes, start, stop, stamp)`` of each
        tombstone of the namespace, for the digest tree (``digest.py``):
        the digest key (its record key) places it in a leaf, the canonical
        bytes are what the leaf hashes."""
        view = self._views.get(ns_id)
        out = []
        for t in ([] if view is None else view.tombs):
            key = RANGE_PREFIX + _KEY.pack(*t.stamp)
            canon = b"\x05" + _U16.pack(len(t.start)) + t.start + (b"\x00" if t.stop is None else b"\x01" + t.stop)
            out.append((key, canon, t.start, t.stop, t.stamp))
        return out

    # -- compaction ------------------------------------------------------------
    def folding(self, pin: Optional[Stamp]) -> Optional[Folding]:
        """What a compaction pass may act on given the oldest pin (None: no
        pin); None when there is no tombstone at all."""
        views = dict(self._views)
        if not views:
            return None
        effective = {}
        for ns_id, view in views.items():
            tombs = view.tombs if pin is None else [t for t in view.tombs if t.stamp <= pin]
            for t in tombs:
                t.folded = True  # from now on the pass may drop what it covers
            if tombs:
                effective[ns_id] = view if len(tombs) == len(view.tombs) else RangeView(tombs)
        return Folding(effective, views)
