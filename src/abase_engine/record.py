"""Value types shared by every layer: :class:`Timestamp`, :class:`Op` and :class:`Change`.

These are plain, immutable, constructible values so that a caller can build
records by hand (for ``Engine.apply``) and tests can write them literally.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple, Optional

__all__ = ["Timestamp", "Op", "Change", "from_packed", "LOGICAL_BITS", "MAX_PHYSICAL_MS", "MAX_LOGICAL",
           "MAX_NODE_ID"]

#: Bits of the packed 64-bit HLC given to the logical counter; the rest hold milliseconds.
LOGICAL_BITS = 16
MAX_LOGICAL = (1 << LOGICAL_BITS) - 1
#: Physical ms below 2**47 keep a packed HLC positive as a signed 64-bit int (year 6429).
MAX_PHYSICAL_MS = (1 << 47) - 1
MAX_NODE_ID = (1 << 32) - 1

_TS_STRUCT = struct.Struct(">QI")


class Timestamp(tuple):
    """A hybrid-logical-clock reading plus the node that issued it.

    Ordered by ``(physical_ms, logical, node_id)``, which is the total order
    used for last-write-wins; hashable; immutable. ``to_bytes()`` gives 12
    big-endian bytes whose byte order equals the timestamp order. It is a
    tuple ``(packed_hlc, node_id)`` underneath, so that the write path can
    build one cheaply; compare Timestamps only with Timestamps.

    >>> a = Timestamp(1000, 0, 1); b = Timestamp(1000, 1, 0)
    >>> a < b, Timestamp.from_bytes(a.to_bytes()) == a
    (True, True)

    Thread-safety: safe (immutable).
    """

    __slots__ = ()

    def __new__(cls, physical_ms: int, logical: int = 0, node_id: int = 0) -> "Timestamp":
        for name, v, hi in (("physical_ms", physical_ms, MAX_PHYSICAL_MS),
                            ("logical", logical, MAX_LOGICAL),
                            ("node_id", node_id, MAX_NODE_ID)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"Timestamp {name} must be int, not {type(v).__name__}")
            if not 0 <= v <= hi:
                raise ValueError(f"Timestamp {name}={v} out of range 0..{hi}")
        return tuple.__new__(cls, ((physical_ms << LOGICAL_BITS) | logical, node_id))

    @classmethod
    def _from_packed(cls, hlc: int, node_id: int) -> "Timestamp":
        """Build from the packed 64-bit HLC and the node id (no range checks: C-produced)."""
        return tuple.__new__(cls, (hlc, node_id))

    @property
    def _hlc(self) -> int:
        return self[0]

    @property
    def _node(self) -> int:
        return self[1]

    @property
    def physical_ms(self) -> int:
        """Milliseconds since the Unix epoch (the physical part of the HLC)."""
        return self[0] >> LOGICAL_BITS

    @property
    def logical(self) -> int:
        """The logical counter, which orders events within one millisecond."""
        return self[0] & MAX_LOGICAL

    @property
    def node_id(self) -> int:
        """The id of the node that issued this timestamp (the tiebreak)."""
        return self[1]

    @property
    def hlc(self) -> int:
        """The packed 64-bit HLC: ``physical_ms << 16 | logical``."""
        return self[0]

    def to_bytes(self) -> bytes:
        """12 bytes, big-endian ``hlc`` then ``node_id``: byte order equals timestamp order."""
        return _TS_STRUCT.pack(self[0], self[1])

    @classmethod
    def from_bytes(cls, data: bytes) -> "Timestamp":
        """Inverse of :meth:`to_bytes`. :raises ValueError: if ``data`` is not 12 bytes."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Timestamp.from_bytes needs bytes, not {type(data).__name__}")
        if len(data) != _TS_STRUCT.size:
            raise ValueError(f"Timestamp.from_bytes needs {_TS_STRUCT.size} bytes, got {len(data)}")
        hlc, node = _TS_STRUCT.unpack(bytes(data))
        return cls._from_packed(hlc, node)

    def __repr__(self) -> str:
        return f"Timestamp({self.physical_ms}, {self.logical}, {self[1]})"

    def __getnewargs__(self):
        return (self.physical_ms, self.logical, self[1])


_tuple_new = tuple.__new__


def from_packed(hlc: int, node_id: int) -> Timestamp:
    """A :class:`Timestamp` from a packed 64-bit HLC and a node id, without
    range checks: for values the C core produced (the engine's hot paths).
    Users build timestamps with ``Timestamp(physical_ms, logical, node_id)``."""
    return _tuple_new(Timestamp, (hlc, node_id))


class Op(enum.IntEnum):
    """What a record does to its key. The numbers are part of the on-disk format."""

    PUT = 1
    DELETE = 2
    MERGE = 3


class Change(NamedTuple):
    """One committed record: what ``Engine.changes()`` yields and ``Engine.apply()`` takes.

    ``namespace`` is the namespace name (``""`` for the default one), ``value``
    is ``None`` for a delete, except in a CRDT namespace, where a delete's
    value is what it removes (its writer's observed context or totals, or a
    watermark; see :mod:`abase_engine.crdt`), ``cursor`` is the feed position
    after this record (``None`` for a hand-built record).

    >>> Change("", b"k", Op.PUT, b"v", Timestamp(5, 0, 2))
    Change(namespace='', key=b'k', op=<Op.PUT: 1>, value=b'v', timestamp=Timestamp(5, 0, 2), cursor=None)
    """

    namespace: str
    key: bytes
    op: Op
    value: Optional[bytes]
    timestamp: Timestamp
    cursor: Optional[bytes] = None
