"""Time to live: the ``ttl=`` and ``expire_at=`` options of LWW puts, and
when an expiring version reads as absent.

A put with ``ttl=seconds`` expires at its own timestamp's physical
milliseconds plus the ttl (the C core adds them when it issues the
timestamp, so the expiry is on the HLC's clock, not the caller's); one with
``expire_at=`` expires at that moment (ms since the epoch, or a
:class:`~abase_engine.record.Timestamp`, whose physical ms is taken). A
version whose expiry is at or before a read's time reads as absent, exactly
as a tombstone with the same timestamp would: expiry never uncovers an older
version. A read's time is the HLC's physical clock for a read of the latest
value (:meth:`abase_engine.log.Log.clock_ms`: the wall clock, or further
ahead if the clock was raised by a remote timestamp) and the snapshot's
physical ms for a read at a timestamp (snapshots, scans, ``get(at=)``), so a
snapshot taken before the expiry still sees the value.

Format (``csrc/abase.h``): a put flagged ``ABASE_F_TTL`` whose value starts
with ``expire_at u64`` (little-endian); the store keeps the prefix behind a
kind bit (``store.py``). An expiry of 0 is never written (0 means "none"):
``expire_at=0`` is stored as 1, equally in the past.

Locks: none (pure functions).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Optional, Tuple

from .errors import InvalidOptionError, ValueTooLargeError
from .log import F_TTL, F_TTL_RELATIVE, MAX_VALUE
from .record import Timestamp

__all__ = ["expiry_option", "prefixed", "with_expiry", "absolute_expiry", "split_prefixed", "expired",
           "MAX_EXPIRE_MS", "refuse_in_merge_namespace"]

#: The largest expiry (and ttl) in ms an option may give: far beyond any
#: clock (the HLC's physical part is below 2**47), still a u64 on disk.
MAX_EXPIRE_MS = (1 << 63) - 1

_U64 = struct.Struct("<Q")

#: ``(flag, ms)``: ``F_TTL_RELATIVE`` with a ttl in ms, or ``F_TTL`` with an
#: absolute expire_at in ms.
Expiry = Tuple[int, int]


def expiry_option(ttl: Any = None, expire_at: Any = None) -> Optional[Expiry]:
    """Check the ``ttl=`` / ``expire_at=`` options of a put.

    :param ttl: seconds (int or float, > 0), or None.
    :param expire_at: ms since the epoch (int >= 0) or a Timestamp, or None.
    :return: None when neither is given, else ``(flag, ms)`` for the log.
    :raises TypeError: ttl is not a number (a bool is not), expire_at is not
        an int or Timestamp.
    :raises InvalidOptionError: both given; ttl not finite or not > 0;
        expire_at negative; either beyond ``MAX_EXPIRE_MS``.

    >>> expiry_option(1.5) == (F_TTL_RELATIVE, 1500)
    True
    >>> expiry_option(expire_at=0) == (F_TTL, 1)
    True
    """
    if ttl is None and expire_at is None:
        return None
    if ttl is not None and expire_at is not None:
        raise InvalidOptionError("give ttl= or expire_at=, not both")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
        if isinstance(ttl, float) and not math.isfinite(ttl):
            raise InvalidOptionError(f"ttl must be finite, not {ttl!r}")
        if ttl <= 0:
            raise InvalidOptionError(f"ttl must be > 0 seconds, not {ttl!r}")
        ms = math.ceil(ttl * 1000) if isinstance(ttl, float) else ttl * 1000
        if ms > MAX_EXPIRE_MS:
            raise InvalidOptionError(f"ttl of {ttl!r} s is out of range")
        return F_TTL_RELATIVE, max(1, int(ms))
    if isinstance(expire_at, Timestamp):
        return F_TTL, max(1, expire_at.physical_ms)
    if isinstance(expire_at, bool) or not isinstance(expire_at, int):
        raise TypeError(f"expire_at must be ms since the epoch (int) or a Timestamp, not {type(expire_at).__name__}")
    if expire_at < 0 or expire_at > MAX_EXPIRE_MS:
        raise InvalidOptionError(f"expire_at of {expire_at} ms is out of range")
    return F_TTL, max(1, expire_at)


def refuse_in_merge_namespace(name: str) -> InvalidOptionError:
    """The error for a TTL in a merge (CRDT) namespace, where expiry is not
    defined yet (a join with an expired state has no meaning)."""
    return InvalidOptionError(f"ttl/expire_at are for LWW namespaces; namespace {name!r} merges")


def prefixed(ms: int, value: bytes) -> bytes:
    """``value`` with its 8-byte expiry (or ttl) prefix, as the log takes it."""
    return _U64.pack(ms) + value


def with_expiry(expiry: Expiry, value: bytes) -> bytes:
    """``value`` prefixed with the ms of ``expiry`` (:func:`expiry_option`).

    :raises ValueTooLargeError: the value leaves no room for the 8-byte prefix.
    """
    if len(value) > MAX_VALUE - 8:
        raise ValueTooLargeError(f"value of {len(value)} bytes with a ttl/expire_at; the maximum is {MAX_VALUE - 8}")
    return _U64.pack(expiry[1]) + value


def absolute_expiry(flag: int, hlc: int, data: bytes) -> bytes:
    """A prefixed value whose prefix is absolute: a ttl (``F_TTL_RELATIVE``)
    becomes the timestamp ``hlc``'s physical ms plus the ttl, as the C core
    computes it for the timestamps it issues itself."""
    if flag != F_TTL_RELATIVE:
        return data
    ttl = _U64.unpack_from(data, 0)[0]
    return _U64.pack(min((hlc >> 16) + ttl, (1 << 64) - 1)) + data[8:]


def split_prefixed(data: bytes) -> Tuple[int, bytes]:
    """``(expire_at, value)`` of a prefixed value (at least 8 bytes)."""
    return max(1, _U64.unpack_from(data, 0)[0]), data[8:]


def expired(expire_at: int, now_ms: int) -> bool:
    """Whether a version with expiry ``expire_at`` (0: none) reads as absent
    at ``now_ms``. Runtime complexity: O(1).

    >>> expired(0, 10**12), expired(5, 5), expired(6, 5)
    (False, True, False)
    """
    return expire_at != 0 and expire_at <= now_ms
