"""Resolution: how a key's visible value follows from its records.

DESIGN.md invariant 5: the visible value of a key is a pure function of the
set of its records, wherever they sit (log or store) and whatever order they
arrived in. This module holds that rule once, for every reader:

* :func:`fold_lww` and :func:`fold_merge` fold a stored version and log
  versions into one stored version (the compactor writes their result; the
  read paths compute the same thing on the fly);
* :class:`KeyReader` reads one namespace's keys through the log's index and
  the store: ``lww`` for LWW namespaces, ``state`` (the folded encoded
  state) for merge namespaces, ``visible_record`` for digests, and a small
  cache of folded states that stays valid while the key's newest log record
  and the store are unchanged.

Locks: none of its own. Reads take the log's lock in C and a per-thread
store read transaction; the state cache is a dict updated by whole-entry
assignment (safe under the GIL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ._fast import crdt_fold
from .crdt import c_tag
from .errors import SnapshotTooOldError
from .log import DELETED, EXPIRES, NEEDBASE, Log
from .merge import MergeOperator
from .record import Op, Timestamp
from .store import STATE, TOMBSTONE, VALUE, Store, Stored, expiry_of
from .ttl import expired

if TYPE_CHECKING:  # pragma: no cover
    from .ranges import RangeTombstones

__all__ = ["fold_lww", "fold_merge", "join_all", "KeyReader", "Version", "MISSING"]

_PUT, _DELETE, _MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)

#: (op, hlc, node, value) of one log version.
Version = Tuple[int, int, int, bytes]

#: "No value here": distinct from None, which can be a caller's default.
MISSING: Any = object()

_STATE_CACHE_ENTRIES = 4096  # decoded states kept per merge namespace


def fold_lww(base: Optional[Stored], versions: Sequence[Version]) -> Optional[Stored]:
    """The LWW result of a stored version and log versions: the greatest (hlc, node)."""
    best = None
    for op, hlc, node, value in versions:
        if best is None or (hlc, node) > (best[1], best[2]):
            best = (op, hlc, node, value)
    if base is not None and (best is None or (base[1], base[2]) >= (best[1], best[2])):
        return base
    if best is None:
        return None
    op, hlc, node, value = best
    if op == _DELETE:
        return (TOMBSTONE, hlc, node, 0, 0, b"")
    return (VALUE, hlc, node, 0, 0, value)


def fold_merge(operator: MergeOperator, base: Optional[Stored], versions: Sequence[Version]) -> Optional[Stored]:
    """The merge-namespace result of a stored version and log versions.

    With an operator whose deletes join (every CRDT), the result is the join
    of the stored state and every version's value, deletes included (their
    values are removal deltas), stamped with the newest timestamp: a STATE,
    or None when there is nothing. Otherwise (a user operator) the anchor is
    the newest delete and every put or merge operand newer than it is
    joined; the result is a STATE (with its anchor), a TOMBSTONE, or None.
    """
    if operator.deletes_join:
        return _fold_joins(operator, base, versions)
    anchor = (0, 0)
    for op, hlc, node, _v in versions:
        if op == _DELETE and (hlc, node) > anchor:
            anchor = (hlc, node)
    if base is not None:
        kind, bh, bn, ah, an = base[:5]
        if kind == TOMBSTONE and (bh, bn) > anchor:
            anchor = (bh, bn)
        elif kind != TOMBSTONE and (ah, an) > anchor:
            anchor = (ah, an)
    operands: List[bytes] = []
    newest = anchor
    if base is not None and base[0] != TOMBSTONE and (base[1], base[2]) > anchor:
        operands.append(base[5])
        newest = max(newest, (base[1], base[2]))
    for op, hlc, node, value in sorted(versions, key=lambda v: (v[1], v[2])):
        if op != _DELETE and (hlc, node) > anchor:
            operands.append(value)
            newest = max(newest, (hlc, node))
    if not operands:
        if anchor == (0, 0):
            return None
        return (TOMBSTONE, anchor[0], anchor[1], 0, 0, b"")
    state = operands[0] if len(operands) == 1 else operator.full_merge(None, operands)
    return (STATE, newest[0], newest[1], anchor[0], anchor[1], state)


def _fold_joins(operator: MergeOperator, base: Optional[Stored], versions: Sequence[Version]) -> Optional[Stored]:
    """:func:`fold_merge` for operators whose deletes join: join everything."""
    values: List[bytes] = []
    newest = (0, 0)
    if base is not None and base[0] == STATE:
        values.append(base[5])
        newest = (base[1], base[2])
    for _op, hlc, node, value in versions:
        values.append(value)
        if (hlc, node) > newest:
            newest = (hlc, node)
    if not values:
        return None
    return (STATE, newest[0], newest[1], 0, 0, join_all(operator, values))


def join_all(operator: MergeOperator, values: List[bytes]) -> bytes:
    """The join of encoded states, in C for the built-in CRDTs the C core
    implements (the same bytes as ``operator.full_merge(None, values)``,
    which also says what is wrong with an undecodable value)."""
    if len(values) == 1:
        return values[0]
    tag = c_tag(operator)
    if tag is not None:
        try:
            return crdt_fold(tag, values)
        except ValueError:
            pass  # the Python operator raises the right MergeOperandError
    return operator.full_merge(None, values)


def _at(at: Optional[Timestamp]) -> Tuple[int, int]:
    return (0, 0) if at is None else (at.hlc, at.node_id)


class KeyReader:
    """Reads the keys of one namespace from the log and the store.

    :param log: the engine's log.
    :param store: the engine's store.
    :param ns_id: the namespace's id.
    :param operator: the merge operator, or None for an LWW namespace.

    Thread-safety: safe.
    """

    def __init__(self, log: Log, store: Store, ns_id: int, operator: Optional[MergeOperator],
                 ranges: Optional["RangeTombstones"] = None) -> None:
        self._log = log
        self._store = store
        self._ns = ns_id
        self._operator = operator
        #: the engine's range tombstones (LWW reads consult them), or None
        self._ranges = ranges
        #: key -> (head address, store generation, state, value or MISSING, versions walked)
        self._cache: Dict[bytes, Tuple[int, int, Optional[bytes], Any, int]] = {}
        self._dbi = store.db(ns_id)

    # -- LWW namespaces ------------------------------------------------------
    def _now_ms(self, at: Optional[Timestamp]) -> int:
        """The time expiry is judged at: ``at``'s physical ms, else the HLC's clock."""
        return at.physical_ms if at is not None else self._log.clock_ms()

    def lww(self, key: bytes, at: Optional[Timestamp]) -> Optional[bytes]:
        """The visible value of an LWW key as of ``at`` (None: now), or None.
        A version whose expiry has come (see ttl.py) reads as None.

        :raises SnapshotTooOldError: the store's version is newer than ``at``
            and the log no longer holds what ``at`` would see; or the
            compactor already dropped an expired value that ``at``, older
            than its expiry, would still see.
        """
        ranges = self._ranges
        if ranges is not None and ranges.active(self._ns):  # range deletes (ranges.py)
            return self._lww_ranged(ranges, key, at)
        at_h, at_n = _at(at)
        status, value, hlc, node, op, expire_at = self._log.get_lww(self._ns, key, at_h, at_n)
        if status >= 0:
            return value
        if status == EXPIRES:
            return None if expired(expire_at, self._now_ms(at)) else value
        if status == DELETED:
            return None
        base = self._store.get(self._ns, key)  # after the log: see architecture.md
        if base is not None and at is not None and (base[1], base[2]) > (at_h, at_n):
            raise SnapshotTooOldError(f"history of {key!r} before {at!r} was compacted")
        if status == NEEDBASE and value is not None:
            if base is None or (hlc, node) > (base[1], base[2]):
                if op == _DELETE or expired(expire_at, self._now_ms(at)):
                    return None
                return value
        return self._stored_lww(key, base, at)

    def _stored_lww(self, key: bytes, base: Optional[Stored], at: Optional[Timestamp]) -> Optional[bytes]:
        """The value a stored LWW version shows as of ``at``, or None."""
        if base is None:
            return None
        expire_at = expiry_of(base)
        if base[0] == TOMBSTONE:
            if expire_at and not expired(expire_at, self._now_ms(at)):
                raise SnapshotTooOldError(f"the value of {key!r} as of {at!r} expired and was compacted")
            return None
        if expire_at and expired(expire_at, self._now_ms(at)):
            return None
        return base[5]

    def _lww_ranged(self, ranges: "RangeTombstones", key: bytes, at: Optional[Timestamp]) -> Optional[bytes]:
        """:meth:`lww` in a namespace with range tombstones: the visible
        version, unless a tombstone (visible at ``at``) is newer.

        :raises SnapshotTooOldError: ``at`` is older than a tombstone over
            the key that compaction may already have acted on."""
        stamp = None if at is None else (at.hlc, at.node_id)
        if stamp is not None and ranges.too_old(self._ns, key, key + b"\x00", stamp):
            raise SnapshotTooOldError(f"history of {key!r} before {at!r} was range-deleted and compacted")
        rec = self.lww_record(key, at)
        if rec is None or ranges.covers(self._ns, key, rec[1], rec[2], stamp):
            return None
        kind, _hlc, _node, value, expire_at = rec
        if kind == TOMBSTONE:
            if expire_at and not expired(expire_at, self._now_ms(at)):
                raise SnapshotTooOldError(f"the value of {key!r} as of {at!r} expired and was compacted")
            return None
        return None if expire_at and expired(expire_at, self._now_ms(at)) else value

    def lww_record(self, key: bytes, at: Optional[Timestamp]) -> Optional[Tuple[int, int, int, bytes, int]]:
        """``(kind, hlc, node, value, expire_at)`` of an LWW key's visible
        version as of ``at`` (None: now), tombstones included (an expired value
        the compactor dropped is a TOMBSTONE that keeps its expiry); expire_at
        0: none. None: the key has no version. Neither range tombstones nor
        expiries are judged here.

        :raises SnapshotTooOldError: as :meth:`lww`."""
        at_h, at_n = _at(at)
        status, value, hlc, node, op, expire_at = self._log.get_lww(self._ns, key, at_h, at_n)
        if status >= 0 or status == EXPIRES:
            return VALUE, hlc, node, value, expire_at if status == EXPIRES else 0
        if status == DELETED:
            return TOMBSTONE, hlc, node, b"", 0
        base = self._store.get(self._ns, key)
        if base is not None and at is not None and (base[1], base[2]) > (at_h, at_n):
            raise SnapshotTooOldError(f"history of {key!r} before {at!r} was compacted")
        if status == NEEDBASE and value is not None and (base is None or (hlc, node) > (base[1], base[2])):
            if op == _DELETE:
                return TOMBSTONE, hlc, node, b"", 0
            return VALUE, hlc, node, value, expire_at
        if base is None:
            return None
        return base[0], base[1], base[2], base[5], expiry_of(base)

    def stored_value(self, key: bytes, default: Any) -> Any:
        """The value of a non-empty LWW key the log does not hold: its version
        in the store, or ``default`` (the fast path's fallback after a log miss)."""
        raw = self._store.lookup(self._dbi, key)
        if raw is None:
            return default
        if raw[0] == VALUE:  # not with an expiry (kind bit 0x40): lww() below checks it
            return raw[13:]
        if raw[0] == TOMBSTONE:
            return default
        value = self.lww(key, None)  # decodes, so an unknown kind raises CorruptionError
        return default if value is None else value

    # -- merge namespaces ----------------------------------------------------
    def stored_raw(self, key: bytes) -> Optional[bytes]:
        """The key's stored version, encoded as the store keeps it, or None
        (the C merge fast path folds it after the log's versions)."""
        if key:
            return self._store.lookup(self._dbi, key)
        return self._store.get_raw(self._ns, key)

    def state(self, key: bytes, at: Optional[Timestamp]) -> Optional[bytes]:
        """The folded encoded state of a merge-namespace key as of ``at``, or None."""
        return self.state_counted(key, at)[0]

    def state_counted(self, key: bytes, at: Optional[Timestamp]) -> Tuple[Optional[bytes], int]:
        """The folded state and how many log versions the read had to walk."""
        at_h, at_n = _at(at)
        complete, versions = self._log.get_versions(self._ns, key, at_h, at_n)
        base = None
        if not complete:
            base = self._store.get(self._ns, key)
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

    def value(self, key: bytes) -> Any:
        """The current Python value (``to_value``) of a merge-namespace key,
        or None; through the state cache."""
        head = self._log.head(self._ns, key)
        gen = self._store.generation
        hit = self._cache.get(key)
        if hit is not None and hit[0] == head and hit[1] == gen:
            state, value = hit[2], hit[3]
            if value is MISSING:
                value = None if state is None else self._operator.to_value(state)
                self._cache[key] = (head, gen, state, value, hit[4])
            return value
        state, walked = self.state_counted(key, None)
        value = None if state is None else self._operator.to_value(state)
        self._remember(key, head, gen, state, value, walked)
        return value

    def current_state(self, key: bytes) -> Tuple[Optional[bytes], int]:
        """The latest state (through the cache) and how many log versions a
        read of it walks."""
        head = self._log.head(self._ns, key)
        gen = self._store.generation
        hit = self._cache.get(key)
        if hit is not None and hit[0] == head and hit[1] == gen:
            return hit[2], hit[4]
        state, walked = self.state_counted(key, None)
        self._remember(key, head, gen, state, MISSING, walked)
        return state, walked

    def remember(self, key: bytes, state: Optional[bytes], walked: int) -> None:
        """Cache ``state`` as the key's current one, valid while its newest
        log record and the store stay as they are now (call it right after
        writing the key, with the merge lock held)."""
        self._remember(key, self._log.head(self._ns, key), self._store.generation, state, MISSING, walked)

    def _remember(self, key: bytes, head: int, gen: int, state: Optional[bytes], value: Any, walked: int) -> None:
        cache = self._cache
        if len(cache) >= _STATE_CACHE_ENTRIES:
            cache.clear()
        cache[key] = (head, gen, state, value, walked)

    # -- both ----------------------------------------------------------------
    def visible_record(self, key: bytes) -> Optional[Tuple[int, int, int, bytes, Tuple[int, int], int]]:
        """``(kind, hlc, node, value, anchor, expire_at)`` of the key's
        visible version, tombstones included; anchor is the newest delete's
        (hlc, node) folded into a CRDT state, else (0, 0); expire_at the
        version's expiry (0: none; an expired value the compactor dropped is
        a TOMBSTONE that keeps it). None: the key has no version."""
        log, store, ns = self._log, self._store, self._ns
        if self._operator is None:
            status, value, hlc, node, op, expire_at = log.get_lww(ns, key, 0, 0)
            base = store.get(ns, key)
            if status >= 0 or status == EXPIRES:
                return VALUE, hlc, node, value, (0, 0), expire_at
            if status == DELETED:
                return TOMBSTONE, hlc, node, b"", (0, 0), 0
            if status == NEEDBASE and value is not None and (base is None or (hlc, node) > (base[1], base[2])):
                if op == _DELETE:
                    return TOMBSTONE, hlc, node, b"", (0, 0), 0
                return VALUE, hlc, node, value, (0, 0), expire_at
            if base is None:
                return None
            return base[0], base[1], base[2], base[5], (0, 0), expiry_of(base)
        complete, versions = log.get_versions(ns, key, 0, 0)
        base = None if complete else store.get(ns, key)
        folded = fold_merge(self._operator, base, [(op, h, n, v) for op, _f, h, n, v in versions])
        if folded is None:
            return None
        return folded[0], folded[1], folded[2], folded[5], (folded[3], folded[4]), 0

    def resolve_scan_entry(self, entry: tuple, pin: Timestamp) -> Any:
        """The value of one log scan entry ``(key, status, value, hlc, node,
        op)`` as of ``pin``; None for an absent key."""
        key, status, value, _h, _n, _op = entry
        if self._operator is None:
            if status >= 0:
                return value
            if status == DELETED:
                return None
            return self.lww(key, pin)
        state = self.state(key, pin)
        return None if state is None else self._operator.to_value(state)

