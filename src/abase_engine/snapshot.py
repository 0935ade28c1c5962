"""Snapshots and the pin set that keeps their history from being compacted.

A :class:`Snapshot` is a fixed HLC view of the engine: reads through it see
every key as of one timestamp. Each open snapshot, and each running scan,
*pins* its timestamp in the engine's :class:`PinSet`; the compactor leaves
alone every segment holding a version newer than the oldest pin, so a pinned
read never needs history that was folded away.

Locks: :class:`PinSet` has one lock guarding its multiset of pins; a
snapshot takes it only to add and remove its pin. Complexity: ``add`` and
``remove`` O(1), ``oldest`` O(pins).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from .errors import EngineClosedError
from .lifecycle import Lifecycle
from .record import MAX_NODE_ID, Timestamp, from_packed

__all__ = ["PinSet", "Snapshot"]


class PinSet:
    """The timestamps that open snapshots and scans read at (a multiset).

    Thread-safety: safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pins: Dict[Timestamp, int] = {}

    def add(self, ts: Timestamp) -> None:
        with self._lock:
            self._pins[ts] = self._pins.get(ts, 0) + 1

    def remove(self, ts: Timestamp) -> None:
        with self._lock:
            n = self._pins.get(ts, 0) - 1
            if n <= 0:
                self._pins.pop(ts, None)
            else:
                self._pins[ts] = n

    def oldest(self) -> Optional[Tuple[int, int]]:
        """``(hlc, node)`` of the oldest pin, or None when nothing is pinned."""
        with self._lock:
            if not self._pins:
                return None
            t = min(self._pins)
            return (t.hlc, t.node_id)


class Snapshot:
    """A fixed view of the engine as of one timestamp.

    While a snapshot is open the compactor keeps every segment holding newer
    versions, so reads through it never raise SnapshotTooOldError for keys
    written since. Close it promptly (it holds compaction back).
    Thread-safety: safe.

    :param clock: issues a packed HLC (the snapshot's time: every later
        write is newer, and expiries are judged at its physical ms).
    :param pins: the engine's pin set.
    :param namespace: resolves a ``namespace=`` argument (None, a name or a
        Namespace) to a Namespace handle.
    """

    def __init__(self, life: Lifecycle, clock: Callable[[], int], pins: PinSet,
                 namespace: Callable[[Any], Any]) -> None:
        self._life = life
        self._pins = pins
        self._namespace = namespace
        self.timestamp = from_packed(clock(), MAX_NODE_ID)
        pins.add(self.timestamp)
        self._closed = False

    def get(self, key: bytes, default: Any = None, namespace: Any = None) -> Any:
        """The value of ``key`` as of the snapshot.

        :raises EngineClosedError: the snapshot or the engine is closed.
        """
        self._check()
        return self._namespace(namespace).get(key, default, at=self.timestamp)

    def get_many(self, keys: Iterable[bytes], namespace: Any = None) -> List[Any]:
        """The values of many keys as of the snapshot (None where absent), in
        order. Runtime complexity: O(keys).

        :raises TypeError: a key is not bytes-like.
        :raises EngineClosedError: the snapshot or the engine is closed.
        """
        self._check()
        ns = self._namespace(namespace)
        at = self.timestamp
        return [ns.get(k, None, at=at) for k in keys]

    def scan(self, start: Optional[bytes] = None, stop: Optional[bytes] = None, prefix: Optional[bytes] = None,
             reverse: bool = False, namespace: Any = None) -> Iterator[Tuple[bytes, Any]]:
        """A scan as of the snapshot (see :meth:`Namespace.scan`)."""
        self._check()
        return self._namespace(namespace).scan(start, stop, prefix, reverse, at=self.timestamp)

    def _check(self) -> None:
        if self._closed:
            raise EngineClosedError("snapshot is closed")
        self._life.check("snapshot read")

    def close(self) -> None:
        """Release the snapshot's pin (compaction may fold its history). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._pins.remove(self.timestamp)

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
