"""Namespace and range housekeeping: ``delete_range``, ``drop_namespace``,
and the range deletes received by ``apply``.

What a range delete does depends on the namespace's merge rule:

* **LWW namespaces** (exact): one *range tombstone* ``(start, stop, T)``
  (``ranges.py``) hides every version of every key in ``[start, stop)``
  older than its timestamp ``T``: the versions already written, in the log
  or the store, and those that arrive later through ``apply`` with an older
  timestamp; versions newer than ``T`` survive. It is one record in the log
  (a PUT in ``NS_DEFS``, the catalog's record path), so it is atomic, it is
  in the change feed as a ``Change`` with ``op=Op.DELETE_RANGE``, ``key`` the
  start and ``value`` the stop (None: unbounded), and ``apply`` on another
  engine reproduces it.
* **merge namespaces** (CRDTs and application operators): a range delete
  follows the type's own delete rule. It deletes every key of the range that
  this replica holds a visible value for, each with an ordinary ``delete``
  (an observed-remove for the CRDTs: what the replica had not seen of a key,
  and keys it had not seen at all, survive); the deletes go out in atomic
  batches of ``_MERGE_CHUNK`` keys (the whole range is not one atomic
  write), and reach other replicas as the point deletes they are. A
  DELETE_RANGE record received for a merge namespace is refused.

``drop_namespace(name)`` is the range delete of the whole namespace. The
namespace stays defined (its name, id and merge operator): it is emptied,
not undefined, because records older than the drop may still arrive from
replicas and must be resolved with the same rule. Writing to it again
("re-creating" it) needs nothing: writes newer than the drop are visible;
``db.namespace(name, merge=<another operator>)`` is still refused with
``MergeOperatorMismatch``.

>>> import tempfile, abase_engine as ae
>>> with ae.open(tempfile.mkdtemp()) as db:
...     _ = db.put_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
...     _ = db.delete_range(b"a", b"c")
...     list(db.keys())
[b'c']

Locks: a range delete is written under the engine's merge lock (as
``apply``), so digest upkeep and local read-modify-writes see it whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from ._args import check_optional_key
from .errors import InvalidRangeError, MergeOperandError, NamespaceNotFoundError
from .lifecycle import Lifecycle
from .log import NS_DEFS, Log
from .merge import LWW
from .namespace import Namespace
from .ranges import RangeTombstones, Stamp, encode_record
from .record import Change, Op, Timestamp, from_packed

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .digest import DigestTree
    from .feed import CommitListeners

__all__ = ["Housekeeping", "check_range"]

_PUT = int(Op.PUT)
#: Keys per atomic batch of a range delete in a merge namespace.
_MERGE_CHUNK = 4096


def check_range(start: Any, stop: Any) -> Tuple[bytes, Optional[bytes]]:
    """``(start, stop)`` checked: bytes-like keys or None; start None is ``b""``.

    :raises TypeError: a bound is neither None nor bytes-like.
    :raises KeyTooLargeError: a bound is longer than a key may be.
    :raises InvalidRangeError: ``start`` is after ``stop``.
    """
    lo = check_optional_key(start)
    hi = check_optional_key(stop)
    lo = b"" if lo is None else lo
    if hi is not None and lo > hi:
        raise InvalidRangeError(f"range start {lo!r} is after its stop {hi!r}")
    return lo, hi


class Housekeeping:
    """Range deletes and namespace drops of one engine (see the module docstring).

    :param log: where tombstone records are appended; the clock.
    :param catalog: namespace handles and definitions.
    :param ranges: the engine's range tombstones.
    :param listeners: told about each range delete (``on_commit``).
    :param digests: the digest tree, told which namespaces a tombstone changed.
    :param merge_lock: the engine's merge lock.

    Thread-safety: safe.
    """

    def __init__(self, log: Log, catalog: "Catalog", ranges: RangeTombstones, listeners: "CommitListeners",
                 digests: "DigestTree", *, life: Lifecycle, node_id: int, merge_lock: Any) -> None:
        self._log = log
        self._catalog = catalog
        self._ranges = ranges
        self._listeners = listeners
        self._digests = digests
        self._life = life
        self._node_id = node_id
        self._merge_lock = merge_lock

    # -- local ------------------------------------------------------------------
    def resolve(self, namespace: Any, owner: object) -> "Namespace":
        """The handle a ``namespace=`` argument names, never creating one.

        :raises TypeError: not None, a str or a Namespace.
        :raises NamespaceNotFoundError: a name the directory does not define.
        :raises ValueError: a handle of another engine.
        :raises MergeOperatorMismatch: a merge namespace not opened in this
            process (its operator is needed to delete its keys).
        """
        if namespace is None:
            namespace = ""
        if isinstance(namespace, str):
            handle = self._catalog.handle(namespace)
            if handle is not None:
                return handle
            if namespace not in self._catalog.definitions():
                raise NamespaceNotFoundError(f"namespace {namespace!r} is not defined")
            return self._catalog.open(namespace, None)
        if isinstance(namespace, Namespace):
            if namespace.owner is not owner:
                raise ValueError("namespace belongs to another engine")
            return namespace
        if namespace is owner:
            return self.resolve("", owner)
        raise TypeError(f"namespace must be a Namespace, a str or None, not {type(namespace).__name__}")

    def delete_range(self, ns: "Namespace", start: Any, stop: Any) -> Optional[Timestamp]:
        """``ns.delete_range(start, stop)``: see the module docstring.

        Returns the tombstone's timestamp (LWW), or the last delete's (merge
        namespaces; None when the range held no visible key). An empty range
        (``start == stop``) writes nothing and returns None.

        :raises TypeError, KeyTooLargeError, InvalidRangeError: bad bounds.
        :raises EngineClosedError: the engine is closed.
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        self._life.check("delete_range")
        lo, hi = check_range(start, stop)
        if lo == hi:
            return None
        if not ns.lww:
            return self._delete_keys(ns, lo, hi)
        log = self._log
        log.stall()
        with self._merge_lock:
            hlc = log.clock_now()
            stamp = (hlc, self._node_id)
            self._append([(ns, lo, hi, stamp)])
        ts = from_packed(hlc, self._node_id)
        if self._listeners.active:
            self._listeners.notify([Change(ns.name, lo, Op.DELETE_RANGE, hi, ts)])
        return ts

    def drop(self, name: Any, owner: object) -> Optional[Timestamp]:
        """``Engine.drop_namespace(name)``: the range delete of every key.

        :raises TypeError: ``name`` is not a str.
        :raises NamespaceNotFoundError: the directory does not define ``name``.
        """
        if not isinstance(name, str):
            raise TypeError(f"namespace names are str, not {type(name).__name__}")
        self._life.check("drop_namespace")
        return self.delete_range(self.resolve(name, owner), None, None)

    def _delete_keys(self, ns: "Namespace", lo: bytes, hi: Optional[bytes]) -> Optional[Timestamp]:
        """A merge namespace's range delete: ``ns.delete`` of each visible key."""
        keys = list(ns.keys(start=lo, stop=hi))
        last = None
        for i in range(0, len(keys), _MERGE_CHUNK):
            b = ns.owner.batch()  # type: ignore[attr-defined]
            for key in keys[i:i + _MERGE_CHUNK]:
                b.delete(key, ns)
            last = b.commit()
        return last

    def _append(self, items: List[Tuple["Namespace", bytes, Optional[bytes], Stamp]]) -> List[int]:
        """Append tombstone records (merge lock held) and hold them; returns
        1 (new) / 0 (already held) per item."""
        status, seen = [], set()
        for it in items:
            status.append(0 if self._ranges.has(it[3]) or it[3] in seen else 1)
            seen.add(it[3])
        fresh = [it for it, st in zip(items, status) if st]
        if fresh:
            parts: List[bytes] = []
            for ns, lo, hi, stamp in fresh:
                parts += encode_record(ns.name, lo, hi, stamp)
            n = len(fresh)
            self._log.write_batch(bytes([_PUT]) * n, [NS_DEFS] * n, parts, [it[3][0] for it in fresh],
                                  [it[3][1] for it in fresh], [(0, 0)] * n, bytes(n))
            for ns, lo, hi, stamp in fresh:
                self._ranges.add(ns.id, lo, hi, stamp)
                self._digests.invalidate(ns.id)
        return status

    # -- received ---------------------------------------------------------------
    def check_received(self, ch: Change) -> Tuple["Namespace", bytes, Optional[bytes]]:
        """Check a received DELETE_RANGE record; returns ``(namespace, start, stop)``.

        :raises TypeError, KeyTooLargeError, InvalidRangeError: bad bounds.
        :raises MergeOperandError: the namespace is a merge namespace (range
            deletes of those travel as point deletes).
        """
        ns = self._catalog.for_apply(ch.namespace)
        if not ns.lww or ns.merge_operator.name != LWW.name:
            raise MergeOperandError(f"a DELETE_RANGE record for the merge namespace {ch.namespace!r}: "
                                    "range deletes of merge namespaces travel as point deletes")
        lo, hi = check_range(ch.key, ch.value)
        return ns, lo, hi

    def apply(self, ranged: List[Tuple["Namespace", bytes, Optional[bytes], Timestamp]]) -> int:
        """Append received range deletes (already checked; clock already
        advanced); returns how many were new."""
        if not ranged:
            return 0
        with self._merge_lock:
            status = self._append([(ns, lo, hi, (ts.hlc, ts.node_id)) for ns, lo, hi, ts in ranged])
        if self._listeners.active:
            applied = [Change(ns.name, lo, Op.DELETE_RANGE, hi, ts)
                       for (ns, lo, hi, ts), st in zip(ranged, status) if st]
            if applied:
                self._listeners.notify(applied)
        return sum(status)

    def covered(self, ns_id: int, key: bytes, ts: Timestamp) -> bool:
        """Whether a received record of an LWW key is hidden by a tombstone
        (apply skips it: it could never be visible). O(1) for a namespace
        without tombstones."""
        ranges = self._ranges
        return ranges.active(ns_id) and ranges.covers(ns_id, key, ts.hlc, ts.node_id)


def filter_covered(covered: Callable[[int, bytes, Timestamp], bool], recs: List[tuple]) -> List[tuple]:
    """The received point records ``(ns, op, key, value, ts)`` that no range
    tombstone hides (LWW namespaces only)."""
    return [r for r in recs if not (r[0].lww and covered(r[0].id, r[2], r[4]))]

