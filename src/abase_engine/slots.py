"""Replication slots: named, persisted positions in the change feed.

A slot remembers how far a consumer (another replica, a CDC pipeline) has
acknowledged the feed. While it is active the compactor keeps every segment
the slot still has to read, until the slot lags more than
``max_slot_lag_bytes`` behind the end of the log; then it is invalidated and
its reader must fall back to anti-entropy (``SlotInvalidatedError``).

File format: ``<dir>/slots.json``, a JSON object ``{name: {"cursor": hex of
the 12-byte feed cursor, "invalidated": bool}}``, replaced atomically
(write to ``slots.json.tmp``, then rename; under durability "sync" the
temporary file is fsync'd before the rename and the directory after it). It
lives outside LMDB so the compactor stays the store's only writer. A save
that fails (a short or failed write, a failed fsync or rename) raises
:class:`~abase_engine.errors.IOFailedError` and changes nothing: the slot
keeps its previous position, in memory and in the file. Such a failure does
not stop the engine's writes (the log does not depend on the file).

Locks: :class:`SlotTable` has one lock guarding its table and the file.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import AbaseError, CorruptionError, SlotInvalidatedError, io_failed
from .feed import CURSOR, parse_cursor
from .lifecycle import Lifecycle
from .log import Log
from .record import Change
from .store import fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    from .feed import ChangeFeed

__all__ = ["SlotTable", "ReplicationSlot", "parse_slots_file"]


def parse_slots_file(data: bytes, path: str) -> Dict[str, Dict[str, Any]]:
    """The slots in the bytes of ``slots.json``.

    :raises CorruptionError: not the format in the module docstring.
    """
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptionError(f"slots file is not valid JSON: {exc}", path) from None
    if not isinstance(raw, dict):
        raise CorruptionError("slots file does not hold a JSON object", path)
    out: Dict[str, Dict[str, Any]] = {}
    for name, st in raw.items():
        if not name:
            raise CorruptionError("a slot with an empty name", path)
        if not isinstance(st, dict) or not isinstance(st.get("cursor"), str) \
                or not isinstance(st.get("invalidated"), bool):
            raise CorruptionError(f"slot {name!r}: needs a hex 'cursor' and a bool 'invalidated'", path)
        try:
            cursor = bytes.fromhex(st["cursor"])
        except ValueError:
            raise CorruptionError(f"slot {name!r}: cursor is not hex", path) from None
        if len(cursor) != CURSOR.size:
            raise CorruptionError(f"slot {name!r}: cursor is {len(cursor)} bytes, not {CURSOR.size}", path)
        out[name] = {"cursor": cursor, "invalidated": st["invalidated"]}
    return out


class SlotTable:
    """The replication slots of one engine directory, persisted in ``slots.json``.

    :param path: the engine directory.
    :param log: measures how far behind a slot is.
    :param durability: the engine's level ("sync" fsyncs the file).
    :param max_lag_bytes: a slot further behind is invalidated.
    :param start: returns the ``(segment, offset)`` a new slot starts at.
    """

    def __init__(self, path: str, log: Log, durability: str, max_lag_bytes: int,
                 start: Callable[[], Tuple[int, int]]) -> None:
        self._path = os.path.join(path, "slots.json")
        self._log = log
        self._durability = durability
        self._max_lag = max_lag_bytes
        self._start = start
        self._lock = threading.Lock()
        self._slots: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(self._path):
            with open(self._path, "rb") as f:
                self._slots = parse_slots_file(f.read(), self._path)

    def _save(self, slots: Dict[str, Dict[str, Any]]) -> None:
        """Write ``slots`` to the file, replacing it atomically; then make
        them the table (only once the file holds them).

        :raises IOFailedError: a write, fsync or rename failed (nothing
            changed, unless only the directory's fsync after the rename did).
        """
        tmp = self._path + ".tmp"
        text = json.dumps({n: {"cursor": st["cursor"].hex(), "invalidated": st["invalidated"]}
                           for n, st in slots.items()}).encode()
        call = "open"
        renamed = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                call = "write"
                view = memoryview(text)
                while view:  # a short write is continued; an error stops the save
                    view = view[os.write(fd, view):]
                if self._durability == "sync":
                    call = "fsync"
                    os.fsync(fd)  # fsync point: the new slots, before they replace the old
            finally:
                os.close(fd)
            call = "rename"
            os.replace(tmp, self._path)
            renamed = True
            if self._durability == "sync":
                call = "fsync"
                fsync_dir(os.path.dirname(self._path))  # fsync point: the rename
        except OSError as exc:
            if renamed:
                self._slots = slots  # the file holds them, only their rename may not be on disk
            else:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise io_failed(f"saving replication slots failed: {exc.strerror}", exc.filename or tmp, call,
                            exc.errno or 0) from exc
        self._slots = slots

    def create(self, name: str) -> None:
        """Create slot ``name`` at the oldest record in the log, unless it exists."""
        with self._lock:
            if name not in self._slots:
                seg, off = self._start()
                self._save(dict(self._slots, **{name: {"cursor": CURSOR.pack(seg, off), "invalidated": False}}))

    def drop(self, name: str) -> None:
        """Forget slot ``name`` (not an error if absent)."""
        with self._lock:
            if name in self._slots:
                self._save({n: st for n, st in self._slots.items() if n != name})

    def state(self, name: str) -> Dict[str, Any]:
        """``{"cursor": bytes, "invalidated": bool}`` of slot ``name``.

        :raises AbaseError: the slot was dropped.
        """
        st = self._slots.get(name)
        if st is None:
            raise AbaseError(f"replication slot {name!r} was dropped")
        return st

    def lag(self, name: str) -> int:
        """Bytes of log between the slot's position and the end of the log."""
        seg, off = CURSOR.unpack(self.state(name)["cursor"])
        return self._log.lag(seg, off)

    def ack(self, name: str, cursor: bytes) -> None:
        """Advance slot ``name`` to ``cursor`` if it is ahead of its position (persisted).

        The cursor is untrusted: it must be a record boundary the log has.

        :raises ValueError: not a record boundary of this log.
        :raises SlotInvalidatedError: the cursor lies in compacted history.
        :raises IOFailedError: the file could not be saved (the slot stays where it was).
        """
        self._log.check_position(*parse_cursor(cursor))
        with self._lock:
            st = self.state(name)
            if CURSOR.unpack(cursor) > CURSOR.unpack(st["cursor"]):
                self._save(dict(self._slots, **{name: dict(st, cursor=cursor)}))

    def floors(self) -> List[int]:
        """Oldest segment each active slot needs; invalidates slots that lag too far."""
        out = []
        with self._lock:
            new = {}
            for name, st in self._slots.items():
                if st["invalidated"]:
                    continue
                seg, off = CURSOR.unpack(st["cursor"])
                if self._log.lag(seg, off) > self._max_lag:
                    new[name] = dict(st, invalidated=True)
                    continue
                out.append(seg)
            if new:
                try:
                    self._save(dict(self._slots, **new))
                except AbaseError:
                    # not persisted: the slots stay valid, so their segments stay too
                    out += [CURSOR.unpack(st["cursor"])[0] for st in new.values()]
        return out

    def stats(self) -> Dict[str, Dict[str, Any]]:
        """``{name: {"lag_bytes", "invalidated"}}`` of every slot."""
        out = {}
        for name, st in list(self._slots.items()):
            seg, off = CURSOR.unpack(st["cursor"])
            out[name] = {"lag_bytes": self._log.lag(seg, off), "invalidated": st["invalidated"]}
        return out


class ReplicationSlot:
    """A named, persisted position in the change feed (see ``Engine.replication_slot``).

    Thread-safety: safe.
    """

    def __init__(self, life: Lifecycle, table: SlotTable, feed: "ChangeFeed", name: str) -> None:
        self._life = life
        self._table = table
        self._feed = feed
        self.name = name

    @property
    def position(self) -> bytes:
        """The cursor after the last acknowledged record.

        :raises EngineClosedError: the engine is closed.
        """
        self._life.check("slot position")
        return self._table.state(self.name)["cursor"]

    @property
    def invalidated(self) -> bool:
        """True once the slot lagged too far and its history was discarded.

        :raises EngineClosedError: the engine is closed.
        """
        self._life.check("slot invalidated")
        return self._table.state(self.name)["invalidated"]

    @property
    def lag_bytes(self) -> int:
        """Bytes of log between the slot's position and the end of the log."""
        self._life.check("slot lag_bytes")
        return self._table.lag(self.name)

    def changes(self, limit: Optional[int] = None, include_applied: bool = False) -> Iterator[Change]:
        """Records after the slot's position (does not advance it: call :meth:`ack`).

        :raises SlotInvalidatedError: the slot fell too far behind.
        :raises EngineClosedError: the engine is closed.
        """
        self._life.check("slot changes")
        if self.invalidated:
            raise SlotInvalidatedError(f"replication slot {self.name!r} was invalidated (lagged too far)")
        return self._feed.changes(self.position, include_applied, limit)

    def ack(self, cursor: bytes) -> None:
        """Advance the slot to ``cursor`` (persisted); an older cursor is ignored.

        :raises TypeError: not bytes.
        :raises ValueError: not a feed cursor, or not a record boundary of this log.
        :raises SlotInvalidatedError: the cursor lies in compacted history.
        :raises EngineClosedError: the engine is closed.
        """
        self._life.check("slot ack")
        self._table.ack(self.name, bytes(cursor) if isinstance(cursor, (bytes, bytearray)) else cursor)

    def __repr__(self) -> str:
        try:
            lag = str(self.lag_bytes)
        except AbaseError:
            lag = "?"
        return f"<ReplicationSlot {self.name!r} lag={lag}>"
