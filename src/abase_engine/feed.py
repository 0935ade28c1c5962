"""The change feed and commit listeners: how committed records leave the engine.

* :class:`ChangeFeed` reads committed records back from the log in local log
  order (``Engine.changes``), each with the cursor after it, and tells the
  compactor which segments open feeds and replication slots still need (the
  *retention floor*).
* :class:`CommitListeners` calls the ``on_commit`` callbacks after every
  committed write, in the writing thread.

Cursor format (12 bytes, what ``Change.cursor`` holds and ``since=`` takes):
``segment number u32 | offset u64``, big-endian, so that byte order is log
order. The offset is the position in the segment just after the record.

Cursors are untrusted input (peers send them over the network). Before a
feed reads from one, or a slot acknowledges one, the log proves that it is a
record boundary it really has (``Log.check_position``: the C core walks the
segment's records from its header, a bounded walk thanks to per-segment
marks), so a cursor pointing inside a record, even at bytes of a user's
value that form a whole record with a valid checksum, is refused with
``ValueError``; one in compacted history raises ``SlotInvalidatedError``.
Read buffers grow only to fit one record, never past the format's largest.

Locks: the listener list is copied before each notification, so callbacks
may unregister themselves; the floors of open feeds live in a dict updated
by whole-entry assignment (safe under the GIL). Records are read from the
mapped segments by the C core under its read lock.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from .lifecycle import Lifecycle
from .log import F_CHECKPOINT, F_TTL, NS_DEFS, Log
from .ranges import decode_record
from .record import Change, Op, from_packed
from .ttl import split_prefixed

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .slots import SlotTable

__all__ = ["ChangeFeed", "CommitListeners", "CURSOR", "parse_cursor"]

_logger = logging.getLogger("abase_engine")
_DELETE, _PUT = int(Op.DELETE), int(Op.PUT)

#: The cursor format (see the module docstring).
CURSOR = struct.Struct(">IQ")


def parse_cursor(cursor: Any) -> Tuple[int, int]:
    """``(segment, offset)`` of a feed cursor.

    :raises TypeError: the cursor is not bytes.
    :raises ValueError: the cursor is not 12 bytes long.
    """
    if not isinstance(cursor, (bytes, bytearray)):
        raise TypeError(f"a feed cursor is bytes, not {type(cursor).__name__}")
    if len(cursor) != CURSOR.size:
        raise ValueError(f"a feed cursor is {CURSOR.size} bytes, got {len(cursor)}")
    return CURSOR.unpack(bytes(cursor))


class CommitListeners:
    """The ``on_commit`` callbacks of one engine.

    :param on_change: called with True when the first listener is added and
        False when the last is removed (the engine turns its C fast paths,
        which notify nobody, off and on).
    """

    def __init__(self, on_change: Callable[[bool], None]) -> None:
        self._callbacks: List[Callable[[List[Change]], None]] = []
        self._on_change = on_change
        #: True while at least one listener is registered.
        self.active = False
        #: Exceptions raised by callbacks (logged, never propagated).
        self.errors = 0

    def add(self, callback: Callable[[List[Change]], None]) -> Callable[[], None]:
        """Register ``callback``; returns a function that unregisters it.

        :raises TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError("on_commit needs a callable")
        self._callbacks.append(callback)
        if not self.active:
            self.active = True
            self._on_change(True)

        def unsubscribe() -> None:
            try:
                self._callbacks.remove(callback)
            except ValueError:
                return
            if not self._callbacks and self.active:
                self.active = False
                self._on_change(False)

        return unsubscribe

    def notify(self, changes: List[Change]) -> None:
        """Call every listener with ``changes``; an exception is logged and counted."""
        for cb in list(self._callbacks):
            try:
                cb(changes)
            except Exception:  # reported, never breaks the engine
                self.errors += 1
                _logger.exception("on_commit listener failed")


class ChangeFeed:
    """Reads committed records from the log (see ``Engine.changes``).

    :param log: the engine's log.
    :param catalog: names the namespaces of the records.
    :param node_id: this replica's id (records of other ids were applied).
    """

    def __init__(self, life: Lifecycle, log: Log, catalog: "Catalog", node_id: int) -> None:
        self._life = life
        self._log = log
        self._catalog = catalog
        self._node_id = node_id
        self._floors: Dict[object, int] = {}
        #: the persisted slots, whose floors count too (set by the engine)
        self.slots: Optional["SlotTable"] = None

    def start(self) -> Tuple[int, int]:
        """``(segment, offset)`` of the oldest record still in the log."""
        segs = self._log.segments()
        return (segs[0]["no"], 0) if segs else (self._log.stats()["first_segment"], 0)

    def changes(self, since: Optional[bytes], include_applied: bool, limit: Optional[int]) -> Iterator[Change]:
        """See ``Engine.changes``.

        :raises TypeError: the cursor is not bytes.
        :raises ValueError: a bad limit, or a cursor that is not a record
            boundary of this log (checked now, not at the first ``next``).
        :raises SlotInvalidatedError: the cursor lies in compacted history.
        """
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise ValueError("limit must be a non-negative int or None")
        seg, off = self.start() if since is None else parse_cursor(since)
        if since is not None:
            self._log.check_position(seg, off)
        return self._read(seg, off, include_applied, limit)

    def _read(self, seg: int, off: int, include_applied: bool, limit: Optional[int]) -> Iterator[Change]:
        token = object()
        self._floors[token] = seg
        try:
            n = 0
            for seg_no, next_off, (ns, key, op, flags, hlc, node, value) in self._log.read_from(seg, off):
                self._floors[token] = seg_no
                ranged = decode_record(key, value) if ns == NS_DEFS else None  # a range delete (ranges.py)
                if (ns == NS_DEFS and ranged is None) or (flags & F_CHECKPOINT and op == _PUT):
                    continue  # local bookkeeping (a checkpoint put), not replicated; a delete is a write
                if node != self._node_id and not include_applied:
                    continue
                if limit is not None and n >= limit:
                    return
                if ranged is not None:
                    yield Change(ranged[0], ranged[1], Op.DELETE_RANGE, ranged[2], from_packed(hlc, node),
                                 CURSOR.pack(seg_no, next_off))
                else:
                    expire_at = None
                    if flags & F_TTL and op == _PUT and len(value) >= 8:
                        expire_at, value = split_prefixed(value)
                    yield Change(self._catalog.name_of(ns), key, Op(op),
                                 None if op == _DELETE and not value else value,
                                 from_packed(hlc, node), CURSOR.pack(seg_no, next_off), expire_at)
                n += 1
        finally:
            self._floors.pop(token, None)

    def retention_floor(self) -> Optional[int]:
        """The oldest segment an open feed or an active replication slot still
        reads (None: none); slots that lag too far are invalidated on the way."""
        floors = list(self._floors.values())
        if self.slots is not None:
            floors += self.slots.floors()
        return min(floors) if floors else None
