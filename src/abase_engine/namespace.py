"""Namespace handles: the put/get/delete/merge/scan API of one group of keys.

A :class:`Namespace` is what ``Engine.namespace(name, merge=...)`` returns;
the engine's own methods act on its default namespace ``""``. A handle owns
no state of the engine: it checks arguments and hands the work to its
collaborators, which it is given when the catalog creates it:

* writes go to the engine's :class:`~abase_engine.batch.Committer` (which
  appends to the log, keeps digests current and tells listeners);
* reads go to its :class:`~abase_engine.resolve.KeyReader` (log index, then
  store, folded with the namespace's merge operator);
* scans go to the engine's :class:`~abase_engine.scan.Scanner`.

For an LWW namespace the engine's fast-path registry replaces ``put`` and
``get`` on the handle with the C fast path (``csrc/fastcall.c``), which
falls back to the methods below for anything unusual.

Locks: none of its own. Thread-safety: safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Optional, Tuple

from ._args import check_key, check_optional_key, check_value
from .lifecycle import Lifecycle
from .merge import LWW, MergeOperator
from .record import Op, Timestamp
from .resolve import MISSING, KeyReader
from .ttl import expiry_option, refuse_in_merge_namespace

if TYPE_CHECKING:  # pragma: no cover
    from .batch import Committer
    from .housekeeping import Housekeeping
    from .scan import Scanner

__all__ = ["Namespace", "DefaultNamespaceMethods"]

_PUT, _DELETE = int(Op.PUT), int(Op.DELETE)


class Namespace:
    """A group of keys with its own merge operator; the Engine's default one is ``""``.

    All methods are also available on :class:`Engine` (for the default
    namespace). Thread-safety: safe.

    Attributes: ``name``; ``id`` (its number in the log and the store);
    ``merge_operator`` (``LWW()`` for an LWW namespace); ``lww`` (True when
    resolved by timestamp); ``reader`` (engine internals: the key reader).
    """

    def __init__(self, name: str, ns_id: int, operator: Optional[MergeOperator], *, life: Lifecycle,
                 reader: KeyReader, committer: "Committer", scanner: "Scanner", owner: object,
                 housekeeping: Optional["Housekeeping"] = None) -> None:
        self.name = name
        self.id = ns_id
        self.lww = operator is None
        self.merge_operator: MergeOperator = operator if operator is not None else LWW()
        self.reader = reader
        #: the engine this handle belongs to (batches refuse another engine's namespaces)
        self.owner = owner
        self._life = life
        self._committer = committer
        self._scanner = scanner
        self._housekeeping = housekeeping

    def __repr__(self) -> str:
        return f"<Namespace {self.name!r} merge={self.merge_operator!r}>"

    # -- writes -----------------------------------------------------------
    def put(self, key: bytes, value: bytes, *, ttl: Optional[float] = None, expire_at: Any = None) -> Timestamp:
        """Store ``value`` under ``key``; returns the write's timestamp.

        In a merge namespace a put joins ``value`` (an encoded state) like an
        operand. ``ttl`` (seconds after the write's own timestamp) or
        ``expire_at`` (ms since the epoch, or a Timestamp) makes the value
        read as absent from then on (LWW namespaces only; see
        :mod:`abase_engine.ttl`). Runtime complexity: O(len(key) + len(value)).

        :raises TypeError: key or value is not bytes-like; ttl not a number.
        :raises KeyTooLargeError: key longer than 511 bytes.
        :raises ValueTooLargeError: value longer than 256 MiB (8 bytes less
            with a ttl or expire_at).
        :raises MergeOperandError: (merge namespace) value is not a valid state.
        :raises InvalidOptionError: a ttl that is not > 0 and finite, a
            negative expire_at, both given, or either in a merge namespace.
        :raises EngineClosedError: the engine is closed.
        :raises IOFailedError: an I/O failure (now or earlier): writes are
            refused until the engine is reopened (docs/reliability.md).
        """
        self._life.check("put")
        if ttl is not None or expire_at is not None:
            expiry = expiry_option(ttl, expire_at)
            if not self.lww:
                raise refuse_in_merge_namespace(self.name)
            assert expiry is not None
            return self._committer.write_expiring(self, check_key(key), check_value(value), expiry)
        if not self.lww:
            self.merge_operator.check_operand(check_value(value))
        return self._committer.write(self, _PUT, check_key(key), check_value(value))

    def delete(self, key: bytes) -> Timestamp:
        """Delete ``key`` (writes a tombstone); returns its timestamp.

        It is not an error if the key does not exist. In a CRDT namespace the
        delete removes what this replica has seen of the key (its context,
        its counters' totals, or everything older, per the type: see
        :mod:`abase_engine.crdt`); what it had not seen survives, and the key
        reads as absent until something new is written.

        :raises TypeError, KeyTooLargeError, EngineClosedError:
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        self._life.check("delete")
        key = check_key(key)
        if not self.lww and self.merge_operator.deletes_join:
            return self._committer.delete_one(self, key)
        return self._committer.write(self, _DELETE, key, b"")

    def merge(self, key: bytes, operation: Any) -> Timestamp:
        """Apply a merge operation (e.g. ``PNCounter.increment(5)``) to ``key``.

        The operator turns the operation into an operand; when it needs the
        key's current state (an observed-remove, a counter's own entry) the
        engine reads it under a lock, so concurrent local merges of one key
        never lose each other. On an LWW namespace, merge behaves as put.

        :raises MergeOperandError: the operation does not fit the operator.
        :raises EngineClosedError: the engine is closed.
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        self._life.check("merge")
        return self._committer.merge_one(self, key, operation)

    def merge_many(self, items: Iterable[Tuple[bytes, Any]]) -> Optional[Timestamp]:
        """Apply ``merge(key, operation)`` for each pair, in order; returns the
        last timestamp (None for no pairs).

        Not atomic: a failure leaves the earlier merges written (use a
        batch for all-or-nothing). In a CRDT namespace with a C fast path
        the whole list crosses into C once. Runtime complexity: O(pairs).

        :raises TypeError: an item is not a (key, operation) pair.
        :raises MergeOperandError: an operation does not fit the operator.
        """
        last = None
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError("merge_many takes (key, operation) pairs")
            last = self.merge(item[0], item[1])
        return last

    def put_many(self, items: Iterable[Tuple[bytes, bytes]]) -> Optional[Timestamp]:
        """Put many ``(key, value)`` pairs as one atomic batch; returns the
        last record's timestamp (None for no pairs).

        In an LWW namespace a list of ``(bytes, bytes)`` tuples crosses into
        C once (the C fast path). In a merge namespace each value is an
        encoded state joined like :meth:`put` (not an operation: use
        :meth:`merge_many` or a batch for those). Runtime complexity: O(pairs).

        :raises TypeError: an item is not a (key, value) pair of bytes-like.
        :raises KeyTooLargeError, ValueTooLargeError: a bad pair, or a batch
            over ``MAX_BATCH`` encoded bytes.
        :raises MergeOperandError: (merge namespace) a value is not a valid state.
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        self._life.check("put_many")
        if self.lww:
            return self._committer.put_many(items, self.id)
        batch = self.owner.batch()  # type: ignore[attr-defined]
        for key, value in items:
            batch.put(key, value, self)
        return batch.commit()

    def delete_range(self, start: Optional[bytes] = None, stop: Optional[bytes] = None) -> Optional[Timestamp]:
        """Delete every key in ``[start, stop)`` (None: unbounded); returns the
        delete's timestamp (None if nothing was written).

        LWW namespaces: exact and atomic; every version older than the
        delete is hidden, including versions that arrive later from replicas
        with an older timestamp; newer ones survive. Merge namespaces: each
        visible key of the range is deleted by the type's own rule
        (observed-remove), in atomic batches of 4096 keys. See
        :mod:`abase_engine.housekeeping`. Runtime complexity: O(1) (LWW);
        O(keys in range) (merge). After the first range delete, puts, gets and
        scans of an LWW namespace leave the C fast path for good (measured on a
        shared machine: put ~3-4 us instead of ~0.4-0.9, get ~8-9 us instead
        of ~0.3, scan ~2-3 us a key instead of ~0.5-0.6).

        :raises TypeError: a bound is neither None nor bytes-like.
        :raises KeyTooLargeError: a bound is longer than 511 bytes.
        :raises InvalidRangeError: ``start`` is after ``stop`` (a ValueError).
        :raises EngineClosedError: the engine is closed.
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        assert self._housekeeping is not None, "a handle made by the engine"
        return self._housekeeping.delete_range(self, start, stop)

    # -- reads ------------------------------------------------------------
    def get_many(self, keys: Iterable[bytes]) -> List[Any]:
        """The values of many keys (None where absent), in order.

        In an LWW namespace, and a CRDT namespace with a C fast path, the
        whole list crosses into C once. Runtime complexity: O(keys).

        :raises TypeError: a key is not bytes-like.
        """
        return [self.get(k) for k in keys]

    def get(self, key: bytes, default: Any = None, *, at: Optional[Timestamp] = None) -> Any:
        """The visible value of ``key``, or ``default`` if it has none.

        ``at``: the value as of that timestamp, while the versions are still
        held. In a merge namespace the value is the operator's Python value
        (``to_value``). Runtime complexity: O(versions of the key in the log).

        :raises SnapshotTooOldError: compaction already discarded the history
            ``at`` needs.
        :raises EngineClosedError: the engine is closed.
        """
        self._life.check("get")
        key = check_key(key)
        if self.lww:
            value = self.reader.lww(key, at)
        elif at is None:
            value = self.reader.value(key)
        else:
            state = self.reader.state(key, at)
            value = None if state is None else self.merge_operator.to_value(state)
        return default if value is None else value

    def get_raw(self, key: bytes, *, at: Optional[Timestamp] = None) -> Optional[bytes]:
        """The encoded state (merge namespace) or value (LWW) of ``key``, or None."""
        self._life.check("get_raw")
        key = check_key(key)
        if self.lww:
            return self.reader.lww(key, at)
        return self.reader.state(key, at)

    def scan(self, start: Optional[bytes] = None, stop: Optional[bytes] = None, prefix: Optional[bytes] = None,
             reverse: bool = False, *, at: Optional[Timestamp] = None) -> Iterator[Tuple[bytes, Any]]:
        """Iterate ``(key, value)`` in key order over ``[start, stop)`` and ``prefix``.

        The scan sees the engine as of its first step (a snapshot), merging
        the log's keys with a store cursor. Runtime complexity: O(k log k)
        to start, k = keys the log holds in the namespace, then O(1) per item.
        """
        self._life.check("scan")
        return self._scanner.scan(self, check_optional_key(start), check_optional_key(stop),
                                  check_optional_key(prefix), reverse, at)

    def keys(self, **kw: Any) -> Iterator[bytes]:
        """Keys in order (same arguments as :meth:`scan`)."""
        return (k for k, _ in self.scan(**kw))

    def __len__(self) -> int:
        """Number of visible keys. Runtime complexity: O(n) (a key scan)."""
        return sum(1 for _ in self.scan())

    def __getitem__(self, key: bytes) -> Any:
        v = self.get(key, MISSING)
        if v is MISSING:
            raise KeyError(key)
        return v

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        """Delete ``key``; KeyError if it has no visible value (as a dict does)."""
        if self.get(key, MISSING) is MISSING:
            raise KeyError(key)
        self.delete(key)

    def __contains__(self, key: bytes) -> bool:
        return self.get(key, MISSING) is not MISSING


class DefaultNamespaceMethods:
    """The :class:`Namespace` methods of an Engine, acting on its default namespace ``""``.

    The engine sets ``_default`` (the handle) and ``_fastpath`` (its C fast
    path) at open, and binds ``put``, ``get``, ``put_many`` and ``get_many``
    of the instance straight to the fast path; the methods below are what a
    subclass that overrides them, or a call through the class, reaches.
    """

    _default: Namespace
    _fastpath: Any

    def put(self, key: bytes, value: bytes, *, ttl: Optional[float] = None, expire_at: Any = None) -> Timestamp:
        """Store ``value`` under ``key`` in the default namespace; returns its timestamp.

        ``ttl``/``expire_at``: see :meth:`Namespace.put` (a put with one
        takes the general path). Runtime complexity: O(len(key) + len(value)); one C call.

        :raises TypeError: key or value is not bytes-like.
        :raises KeyTooLargeError: key longer than 511 bytes.
        :raises ValueTooLargeError: value longer than 256 MiB.
        :raises EngineClosedError: the engine is closed.
        :raises IOFailedError: writes are refused after an I/O failure.

        Thread-safety: safe.
        """
        if ttl is not None or expire_at is not None:
            return self._default.put(key, value, ttl=ttl, expire_at=expire_at)
        return self._fastpath.put(key, value)

    def get(self, key: bytes, default: Any = None, *, at: Optional[Timestamp] = None) -> Any:
        """The value of ``key`` in the default namespace, or ``default``.

        ``at``: the value as of that timestamp while the history is held.
        Runtime complexity: O(versions of the key in the log); one C call
        when the key lives in the log, plus one LMDB lookup otherwise.

        :raises SnapshotTooOldError: the history ``at`` needs was compacted.
        """
        if at is not None:
            return self._default.get(key, default, at=at)
        return self._fastpath.get(key, default)

    def put_many(self, items: Iterable[Tuple[bytes, bytes]], *, ttl: Optional[float] = None,
                 expire_at: Any = None) -> Optional[Timestamp]:
        """Put many (key, value) pairs in the default namespace as one atomic batch.

        Returns the last record's timestamp, None for no pairs. A list of
        ``(bytes, bytes)`` tuples crosses into C once for the whole batch.
        ``ttl``/``expire_at`` (as for :meth:`put`) give every pair that
        expiry (the general path).

        :raises TypeError, KeyTooLargeError, ValueTooLargeError: a bad pair.
        :raises ValueTooLargeError: the batch is over ``MAX_BATCH`` (2 GiB)
            bytes as encoded in the log (40 + key + value, padded to 8, a pair).
        :raises IOFailedError: writes are refused after an I/O failure.
        """
        if ttl is not None or expire_at is not None:
            return self._fastpath.put_many(items, ttl=ttl, expire_at=expire_at)
        return self._fastpath.put_many(items)

    def get_many(self, keys: Iterable[bytes]) -> List[Optional[bytes]]:
        """Values of many keys of the default namespace (None where missing),
        in one C call for the keys the log holds."""
        return self._fastpath.get_many(keys)

    def delete(self, key: bytes) -> Timestamp:
        """Delete ``key`` from the default namespace (see :meth:`Namespace.delete`)."""
        return self._default.delete(key)

    def merge(self, key: bytes, operation: Any) -> Timestamp:
        """On the default (LWW) namespace a merge is a put (see :meth:`Namespace.merge`)."""
        return self._default.merge(key, operation)

    def get_raw(self, key: bytes, *, at: Optional[Timestamp] = None) -> Optional[bytes]:
        """The stored bytes of ``key`` in the default namespace, or None."""
        return self._default.get_raw(key, at=at)

    def scan(self, start: Optional[bytes] = None, stop: Optional[bytes] = None, prefix: Optional[bytes] = None,
             reverse: bool = False, *, at: Optional[Timestamp] = None) -> Iterator[Tuple[bytes, Any]]:
        """Ordered ``(key, value)`` pairs of the default namespace (see :meth:`Namespace.scan`)."""
        return self._default.scan(start, stop, prefix, reverse, at=at)

    def keys(self, **kw: Any) -> Iterator[bytes]:
        """Keys of the default namespace in order (same arguments as :meth:`scan`)."""
        return self._default.keys(**kw)

    def __len__(self) -> int:
        """Number of visible keys of the default namespace. O(n)."""
        return len(self._default)

    def __getitem__(self, key: bytes) -> Any:
        return self._default[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        del self._default[key]

    def __contains__(self, key: bytes) -> bool:
        return key in self._default

    @property
    def name(self) -> str:
        """The default namespace's name, ``""``."""
        return ""

    @property
    def merge_operator(self) -> MergeOperator:
        """The default namespace's operator (LWW)."""
        return self._default.merge_operator
