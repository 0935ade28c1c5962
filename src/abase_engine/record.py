"""Value types shared by every layer: :class:`Timestamp`, :class:`Op` and :class:`Change`.

These are plain, immutable, constructible values so that a caller can build
records by hand (for ``Engine.apply``) and tests can write them literally.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional

from . import _fast

__all__ = ["Timestamp", "Op", "Change", "from_packed", "LOGICAL_BITS", "MAX_PHYSICAL_MS", "MAX_LOGICAL",
           "MAX_NODE_ID"]

#: Bits of the packed 64-bit HLC given to the logical counter; the rest hold milliseconds.
LOGICAL_BITS = 16
MAX_LOGICAL = (1 << LOGICAL_BITS) - 1
#: Physical ms below 2**47 keep a packed HLC positive as a signed 64-bit int (year 6429).
MAX_PHYSICAL_MS = (1 << 47) - 1
MAX_NODE_ID = (1 << 32) - 1

#: A hybrid-logical-clock reading plus the node that issued it: an immutable
#: C value (``csrc/fast_timestamp.c``) holding only integers, so millions of
#: them kept alive cost the garbage collector nothing. Ordered by
#: ``(physical_ms, logical, node_id)``; see its docstring.
Timestamp = _fast.Timestamp

#: ``from_packed(hlc, node_id)``: a :class:`Timestamp` from a packed 64-bit
#: HLC and a node id, without range checks, for values the C core produced
#: (the engine's hot paths). Users build timestamps with
#: ``Timestamp(physical_ms, logical, node_id)``.
from_packed = _fast.from_packed


class Op(enum.IntEnum):
    """What a record does to its key. The numbers are part of the on-disk format."""

    PUT = 1
    DELETE = 2
    MERGE = 3
    #: Only in :class:`Change` records (never a log record's op): a range
    #: delete of an LWW namespace; ``key`` is the range's start (inclusive,
    #: ``b""`` for the first key), ``value`` its stop (exclusive; None: no
    #: bound). See ``Engine.delete_range``.
    DELETE_RANGE = 4


class Change(NamedTuple):
    """One committed record: what ``Engine.changes()`` yields and ``Engine.apply()`` takes.

    ``namespace`` is the namespace name (``""`` for the default one), ``value``
    is ``None`` for a delete, except in a CRDT namespace, where a delete's
    value is what it removes (its writer's observed context or totals, or a
    watermark; see :mod:`abase_engine.crdt`), ``cursor`` is the feed position
    after this record (``None`` for a hand-built record), ``expire_at`` the
    expiry of a put with a TTL (physical ms on the HLC's clock, see
    :mod:`abase_engine.ttl`; ``None``: none), which ``apply`` keeps.

    >>> Change("", b"k", Op.PUT, b"v", Timestamp(5, 0, 2))
    Change(namespace='', key=b'k', op=<Op.PUT: 1>, value=b'v', timestamp=Timestamp(5, 0, 2), cursor=None, expire_at=None)
    """

    namespace: str
    key: bytes
    op: Op
    value: Optional[bytes]
    timestamp: Timestamp
    cursor: Optional[bytes] = None
    expire_at: Optional[int] = None
