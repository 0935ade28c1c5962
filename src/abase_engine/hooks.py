"""The replication hooks of an Engine: feed, slots, listeners, apply, digests.

:class:`ReplicationHooks` is the part of the :class:`~abase_engine.Engine`
API a replicated store is built on (DESIGN.md section 4): the change feed
of committed records (``changes``, persisted replication slots),
``on_commit`` listeners, ``apply`` for records from other replicas, and the
digests and leaf records of anti-entropy. It holds no state: each method
checks its arguments and delegates to the component that owns the concern
(``feed.py``, ``slots.py``, ``batch.py``'s committer, ``digest.py``), which
the engine wires at open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ._args import check_key, check_value
from .housekeeping import filter_covered
from .errors import InvalidOptionError, ValueTooLargeError
from .log import MAX_VALUE
from .record import Change, Op, Timestamp
from .ttl import expiry_option, prefixed, refuse_in_merge_namespace
from .slots import ReplicationSlot

if TYPE_CHECKING:  # pragma: no cover
    from .batch import Committer
    from .catalog import Catalog
    from .digest import DigestTree
    from .feed import ChangeFeed, CommitListeners
    from .housekeeping import Housekeeping
    from .lifecycle import Lifecycle
    from .namespace import Namespace
    from .slots import SlotTable

__all__ = ["ReplicationHooks"]

_PUT, _DELETE, _MERGE, _DELETE_RANGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE), int(Op.DELETE_RANGE)


class ReplicationHooks:
    """Replication methods of an Engine (see the module docstring).

    The engine sets the components below at open. Thread-safety: safe.
    """

    _life: "Lifecycle"
    _options: Dict[str, Any]
    _catalog: "Catalog"
    _committer: "Committer"
    _feed: "ChangeFeed"
    _slots: "SlotTable"
    _listeners: "CommitListeners"
    _digests: "DigestTree"
    _housekeeping: "Housekeeping"
    _namespace_arg: Callable[[Any], "Namespace"]

    def apply(self, changes: Iterable[Change]) -> int:
        """Apply records from another replica; returns how many changed anything.

        Idempotent and order-independent: a record already held, or (LWW) one
        older than the key's visible version or hidden by a range delete, is
        skipped. ``Op.DELETE_RANGE`` records (``key`` the start, ``value``
        the stop or None) are range deletes of LWW namespaces
        (:meth:`Namespace.delete_range`); they are appended first, each as
        its own record, then the other records as one atomic batch. The clock is
        advanced past the newest record (an HLC receive event); the whole
        call is refused, with nothing applied, if any record is more than
        ``max_clock_skew_ms`` ahead. The records are appended as one atomic
        batch. A batch whose records all go to LWW namespaces (exact
        ``Change`` tuples, bytes keys and values) is decoded and decided in C
        with one call into the core, O(records) with a store lookup only for
        keys the log cannot decide; others take the general path.

        :raises ClockSkewError: a record's timestamp is too far ahead.
        :raises TypeError: an item is not a Change.
        :raises MergeOperandError: a value does not decode for its namespace's
            operator, or a DELETE in a CRDT namespace lacks the context or
            totals its type needs (``ns.delete`` writes them; a delete is
            never guessed).
        :raises AbaseError: a record names a merge namespace this engine has not opened.
        :raises MergeOperandError: a DELETE_RANGE record names a merge namespace.
        :raises InvalidRangeError: a DELETE_RANGE record's start is after its stop.
        :raises InvalidOptionError: a record has an ``expire_at`` but is not a
            put of an LWW namespace, or one out of range.
        :raises TypeError: an ``expire_at`` that is not an int or Timestamp.
        :raises ValueTooLargeError: the records are over the batch bound
            (``MAX_BATCH`` bytes as encoded in the log): split them.
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        self._life.check("apply")
        batch = changes if isinstance(changes, (list, tuple)) else list(changes)
        done = self._committer.apply_received(batch, self._options["max_clock_skew_ms"])
        if done is not None:  # every record into an LWW namespace: decided and appended in C
            return done
        recs = []
        ranged = []  # DELETE_RANGE records: (ns, start, stop, timestamp)
        newest = None
        for ch in batch:
            if not isinstance(ch, Change):
                raise TypeError(f"apply takes Change records, not {type(ch).__name__}")
            if not isinstance(ch.timestamp, Timestamp):
                raise TypeError("Change.timestamp must be a Timestamp")
            op = int(ch.op)
            if op == _DELETE_RANGE:
                ranged.append(self._housekeeping.check_received(ch) + (ch.timestamp,))
                if newest is None or ch.timestamp > newest:
                    newest = ch.timestamp
                continue
            ns = self._catalog.for_apply(ch.namespace)
            if op not in (_PUT, _DELETE, _MERGE):
                raise ValueError(f"unknown op {ch.op!r}")
            key = check_key(ch.key)
            value = b"" if op == _DELETE else check_value(ch.value if ch.value is not None else b"")
            if not ns.lww:
                if op != _DELETE:
                    ns.merge_operator.check_operand(value)
                elif ns.merge_operator.deletes_join:  # a removal delta: what the delete removes
                    raw = None if ch.value is None else check_value(ch.value)
                    value = ns.merge_operator.delete_operand(raw, ch.timestamp)
            if op == _MERGE and ns.lww:
                op = _PUT
            flag = 0
            if ch.expire_at is not None:
                if not ns.lww:
                    raise refuse_in_merge_namespace(ns.name)
                if op != _PUT:
                    raise InvalidOptionError("Change.expire_at is for puts only")
                flag, ms = expiry_option(expire_at=ch.expire_at)  # type: ignore[misc]
                value = prefixed(ms, value)
                if len(value) > MAX_VALUE:
                    raise ValueTooLargeError(f"value of {len(value) - 8} bytes with an expiry; the maximum "
                                             f"is {MAX_VALUE - 8}")
            recs.append((ns, op, key, value, ch.timestamp, flag))
            if newest is None or ch.timestamp > newest:
                newest = ch.timestamp
        if newest is None:
            return 0
        applied = 0
        if ranged:  # range deletes first, so that the records they hide are skipped
            self._committer.observe_clock(newest, self._options["max_clock_skew_ms"])
            applied = self._housekeeping.apply(ranged)
        recs = filter_covered(self._housekeeping.covered, recs)
        if not recs:
            if not ranged:  # every record was hidden: still an HLC receive event
                self._committer.observe_clock(newest, self._options["max_clock_skew_ms"])
            return applied
        return applied + self._committer.apply(recs, newest, self._options["max_clock_skew_ms"])

    def changes(self, since: Optional[bytes] = None, include_applied: bool = False,
                limit: Optional[int] = None) -> Iterator[Change]:
        """Committed records in local log order, each with the ``cursor`` after it.

        ``since``: a cursor from an earlier Change (None: the oldest record
        still in the log). A resumed feed neither skips nor repeats a record,
        and a batch's records are never split by concurrent writers. Records
        received through :meth:`apply` (another node's id) are left out
        unless ``include_applied``. A range delete of an LWW namespace comes
        as one ``Op.DELETE_RANGE`` record (``key`` its start, ``value`` its
        stop or None). While the iterator is open the compactor
        keeps the segments it still has to read. The feed shows a record as
        soon as it is appended; with durability "sync" that is just before
        its fdatasync (use :meth:`on_commit` for "after durable").

        :raises SlotInvalidatedError: ``since`` lies in history already
            compacted away: fall back to anti-entropy.
        Thread-safety: safe; one iterator per thread.
        """
        self._life.check("changes")
        return self._feed.changes(since, include_applied, limit)

    def replication_slot(self, name: str) -> ReplicationSlot:
        """Create or open the persisted replication slot ``name``.

        A new slot starts at the oldest record still in the log. The
        compactor keeps every segment an active slot still needs, until the
        slot lags more than ``max_slot_lag_bytes``; then it is invalidated.
        """
        self._life.check("replication_slot")
        if not isinstance(name, str) or not name:
            raise TypeError("slot names are non-empty str")
        self._slots.create(name)
        return ReplicationSlot(self._life, self._slots, self._feed, name)

    def drop_replication_slot(self, name: str) -> None:
        """Forget the slot (it no longer holds the log). Not an error if absent."""
        self._life.check("drop_replication_slot")
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
        self._life.check("on_commit")
        return self._listeners.add(callback)

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
        self._life.check("digest")
        return self._digests.digest(self._namespace_arg(namespace), path)

    def records(self, namespace: str, path: Tuple[int, ...]) -> List[Change]:
        """The newest record of every key under the leaf at ``path`` (3 nibbles).

        LWW keys come as their winning PUT or DELETE with its own timestamp;
        CRDT keys as one MERGE record holding the whole state (what deletes
        removed included), stamped with the state's newest timestamp, so a
        receiver joins it (states are their own deltas). The range
        tombstones of an LWW namespace (``delete_range``) come as
        ``Op.DELETE_RANGE`` records, each in the leaf of its own record
        key; their ``key`` is the range's start. Keys of a merge
        namespace whose operator's deletes reset the key come as their
        newest delete (if any) and such a MERGE record.
        """
        self._life.check("records")
        return self._digests.records(self._namespace_arg(namespace), path)
