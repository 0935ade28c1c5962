"""Encoding primitives of the CRDT state formats (see the package docstring).

Varints are unsigned LEB128, minimal, at most 64 bits; byte strings are a
varint length then the bytes; scores are IEEE-754 doubles, big-endian, never
NaN; a timestamp is ``u(hlc) u(node)``; a *watermark* (the newest key delete
a timestamp-ordered state has seen) is ``0x00`` (none) or ``0x01`` then a
timestamp. Every reader raises :class:`~abase_engine.errors.MergeOperandError`
on malformed input and never reads past the buffer (Python slicing and
indexing do the bounds checks: an ``IndexError`` is turned into
``MergeOperandError`` by the caller).
"""

from __future__ import annotations

import struct
from typing import Any, Optional, Tuple

from ..errors import MergeOperandError
from ..record import MAX_NODE_ID

__all__ = ["FORMAT_VERSION", "U64", "BYTES_LIKE", "TS", "bad", "read_uv", "write_uv", "write_bytes",
           "read_bytes", "write_f64", "read_f64", "write_ts", "read_ts", "write_wm", "read_wm", "as_bytes",
           "as_count", "check_total", "max_ts"]

#: Leading byte of every encoded state and operand (2: states carry what deletes removed).
FORMAT_VERSION = 2

U64 = (1 << 64) - 1
BYTES_LIKE = (bytes, bytearray, memoryview)
_F64 = struct.Struct(">d")

#: A timestamp inside a state: ``(hlc, node)``, ordered as timestamps are.
TS = Tuple[int, int]


def bad(msg: str) -> MergeOperandError:
    """The error for malformed state bytes."""
    return MergeOperandError(msg)


def read_uv(buf: bytes, pos: int) -> Tuple[int, int]:
    """Read a varint at ``pos``: (value, next pos). Runtime complexity: O(bytes read)."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    x = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        if b < 0x80:
            if b == 0:
                raise bad("non-minimal varint")
            x |= b << shift
            if x > U64:
                raise bad("varint exceeds 64 bits")
            return x, pos
        x |= (b & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise bad("varint too long")


def write_uv(out: bytearray, x: int) -> None:
    """Append ``x`` (0 <= x < 2**64) as a varint."""
    if x < 0x80:
        out.append(x)
        return
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def write_bytes(out: bytearray, b: bytes) -> None:
    """Append ``u(len) b``."""
    n = len(b)
    if n < 0x80:
        out.append(n)
    else:
        write_uv(out, n)
    out += b


def read_bytes(buf: bytes, pos: int) -> Tuple[bytes, int]:
    """Read ``u(len) bytes`` at ``pos``."""
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = read_uv(buf, pos)
    end = pos + n
    if end > len(buf):
        raise bad("truncated byte string")
    return buf[pos:end], end


def write_f64(out: bytearray, x: float) -> None:
    """Append a score (8 bytes, big-endian)."""
    out += _F64.pack(x)


def read_f64(buf: bytes, pos: int) -> Tuple[float, int]:
    """Read a score; NaN is refused."""
    end = pos + 8
    if end > len(buf):
        raise bad("truncated score")
    (x,) = _F64.unpack_from(buf, pos)
    if x != x:
        raise bad("NaN score")
    return x, end


def write_ts(out: bytearray, ts: TS) -> None:
    """Append ``u(hlc) u(node)``."""
    write_uv(out, ts[0])
    write_uv(out, ts[1])


def read_ts(buf: bytes, pos: int) -> Tuple[TS, int]:
    """Read ``u(hlc) u(node)``; the node must fit 32 bits."""
    h, pos = read_uv(buf, pos)
    n, pos = read_uv(buf, pos)
    if n > MAX_NODE_ID:
        raise bad("node id out of range")
    return (h, n), pos


def write_wm(out: bytearray, wm: Optional[TS]) -> None:
    """Append a watermark: ``0x00`` or ``0x01 u(hlc) u(node)``."""
    if wm is None:
        out.append(0)
    else:
        out.append(1)
        write_ts(out, wm)


def read_wm(buf: bytes, pos: int) -> Tuple[Optional[TS], int]:
    """Read a watermark."""
    flag = buf[pos]
    if flag == 0:
        return None, pos + 1
    if flag != 1:
        raise bad("bad watermark flag")
    return read_ts(buf, pos + 1)


def max_ts(a: Optional[TS], b: Optional[TS]) -> Optional[TS]:
    """The greater of two optional timestamps (None is the least)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def as_bytes(value: Any, what: str) -> bytes:
    """``value`` as bytes. :raises TypeError: not bytes-like."""
    if type(value) is bytes:
        return value
    if isinstance(value, BYTES_LIKE):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def as_count(n: Any, what: str) -> int:
    """A non-negative 64-bit int. :raises TypeError, MergeOperandError:"""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"{what} must be int, not {type(n).__name__}")
    if not 0 <= n <= U64:
        raise MergeOperandError(f"{what}={n} out of range 0..2**64-1")
    return n


def check_total(x: int) -> int:
    """A counter total, refused past 64 bits. :raises MergeOperandError:"""
    if x > U64:
        raise MergeOperandError("counter total overflows 64 bits")
    return x
