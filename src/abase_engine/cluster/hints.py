"""Persisted hinted handoff: writes a replica holds for a peer that missed them.

When a client cannot reach replica ``t`` of a partition, it hands the records
``t`` missed to another live replica of the partition, which keeps them here
and replays them to ``t`` once ``t`` answers again
(:func:`abase_engine.cluster.repair.deliver_hints`). The store is a small
engine of its own (``<replica dir>/hints``), so a hint survives the client
that made it and any crash or restart of the replica that holds it.

Layout of the hint engine's default namespace::

    key   = target replica index u16 big-endian | sequence u64 big-endian
    value = the records, in the wire format of :mod:`abase_engine.cluster.wire`

The sequence is the hint engine's own clock, so hints for one target replay
in the order they were stored (order does not matter for correctness:
``apply`` is order-independent). A delivered hint is deleted; its tombstone
is dropped at the next compaction (no grace: hints never replicate).

Thread-safety: safe. ``add`` may race deliveries; :attr:`delivery_lock`
serializes deliveries so that one hint is not sent twice by two threads
(sending twice would be harmless, the counts would not).
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Dict, List, Optional, Tuple

from ..engine import Engine, open as _open_engine
from ..errors import EngineClosedError

__all__ = ["HintStore"]

_KEY = struct.Struct(">HQ")


class HintStore:
    """The hints one replica holds, by target replica index.

    :param path: directory of the hint engine (created if missing).
    :param node_id: the holder's node id (its records never leave this store).
    :param durability: the engine durability level (as the replica's engine).
    :raises abase_engine.errors.LockedError: another process holds ``path``.
    """

    def __init__(self, path: str, node_id: int, durability: str = "process") -> None:
        self.path = path
        self._node_id, self._durability = node_id, durability
        self._lock = threading.Lock()
        self.delivery_lock = threading.Lock()
        self._count: Dict[int, int] = {}
        self._bytes: Dict[int, int] = {}
        self._db: Optional[Engine] = None
        self._closed = False
        if os.path.isdir(path):  # hints from an earlier run: open now, count them
            db = self._engine()
            for key, value in db.scan():
                target = _KEY.unpack(key)[0]
                self._count[target] = self._count.get(target, 0) + 1
                self._bytes[target] = self._bytes.get(target, 0) + len(value)

    def _engine(self) -> Engine:
        """The hint engine, opened on first use (most replicas never hold a hint)."""
        with self._lock:
            if self._closed:
                raise EngineClosedError(f"hint store {self.path} is closed")
            if self._db is None:
                self._db = _open_engine(self.path, node_id=self._node_id, durability=self._durability,
                                        segment_size=4 << 20, tombstone_grace_ms=0, compact_interval=2.0)
            return self._db

    def add(self, target: int, blob: bytes) -> None:
        """Persist ``blob`` (wire-format records) for replica ``target``.

        Durable (per the durability level) when this returns.

        :raises TypeError: ``blob`` is not bytes.
        :raises ValueError: ``target`` is outside 0..65535.
        """
        if not isinstance(blob, (bytes, bytearray)):
            raise TypeError(f"hints are bytes, not {type(blob).__name__}")
        if not isinstance(target, int) or not 0 <= target <= 0xFFFF:
            raise ValueError(f"hint target must be a replica index in 0..65535, got {target!r}")
        if not blob:
            return
        db = self._engine()
        key = _KEY.pack(target, db.now().hlc)
        db.put(key, bytes(blob))
        with self._lock:
            self._count[target] = self._count.get(target, 0) + 1
            self._bytes[target] = self._bytes.get(target, 0) + len(blob)

    def pending(self) -> Dict[int, Tuple[int, int]]:
        """``{target: (hints, bytes)}`` for every target with hints. O(targets)."""
        with self._lock:
            return {t: (n, self._bytes.get(t, 0)) for t, n in self._count.items() if n}

    def take(self, target: int, max_bytes: int = 1 << 20) -> Tuple[List[bytes], bytes]:
        """The oldest hints for ``target``: (their keys, their records concatenated).

        Takes at least one hint, then more while the total stays under
        ``max_bytes``. Nothing is removed until :meth:`drop`.
        Runtime complexity: O(hints taken).
        """
        keys: List[bytes] = []
        parts: List[bytes] = []
        size = 0
        if not self.pending().get(target):
            return keys, b""
        for key, value in self._engine().scan(prefix=struct.pack(">H", target)):
            if keys and size + len(value) > max_bytes:
                break
            keys.append(key)
            parts.append(value)
            size += len(value)
        return keys, b"".join(parts)

    def drop(self, target: int, keys: List[bytes]) -> None:
        """Forget delivered hints (one atomic batch of deletes)."""
        if not keys:
            return
        gone = 0
        size = 0
        db = self._engine()
        with db.batch() as b:
            for key in keys:
                value = db.get(key)
                if value is None:
                    continue
                gone += 1
                size += len(value)
                b.delete(key)
        with self._lock:
            self._count[target] = max(0, self._count.get(target, 0) - gone)
            self._bytes[target] = max(0, self._bytes.get(target, 0) - size)

    def close(self) -> None:
        """Close the hint engine (hints stay on disk). Safe to call twice."""
        with self._lock:
            self._closed = True
            db, self._db = self._db, None
        if db is not None:
            db.close()
