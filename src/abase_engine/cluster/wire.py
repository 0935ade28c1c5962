"""The wire format of change records: what replicas, clients and hint stores exchange.

One record::

    op u8 | hlc u64 | node u32 | len(namespace) u16 | len(key) u16 | len(value) u32 | namespace | key | value

little-endian; ``len(value) = 0xFFFFFFFF`` means "no value" (a delete).
Bit 0x80 of ``op`` says an ``expire_at u64`` (``Change.expire_at``, a put
with a TTL) follows the fixed header, before the namespace; records without
one are encoded as before, so hints written earlier still decode.
A message is records back to back. Cursors are not sent (they are local
feed positions). Hints are stored in this format, so it is an on-disk
format too: change it only with a version bump of the hint store.

Thread-safety: pure functions.
"""

from __future__ import annotations

import struct
from typing import Iterable, List, Sequence

from ..record import Change, Op, from_packed

__all__ = ["encode_changes", "decode_changes", "wire_size"]

_REC = struct.Struct("<BQIHHI")
_U64 = struct.Struct("<Q")
_NONE = 0xFFFFFFFF
_HAS_EXPIRY = 0x80
_OPS = {int(o): o for o in Op}


def encode_changes(changes: Iterable[Change]) -> bytes:
    """Serialize Change records.

    Runtime complexity: O(total bytes).

    :raises ValueError: a namespace or key longer than 65535 bytes.
    """
    out = bytearray()
    pack = _REC.pack
    for ch in changes:
        ns = ch.namespace.encode()
        v = ch.value
        ts = ch.timestamp
        expire_at = ch.expire_at
        try:
            out += pack(int(ch.op) | (0 if expire_at is None else _HAS_EXPIRY), ts.hlc, ts.node_id, len(ns),
                        len(ch.key), _NONE if v is None else len(v))
            if expire_at is not None:
                out += _U64.pack(expire_at)
        except struct.error as exc:
            raise ValueError(f"change record does not fit the wire format: {exc}") from None
        out += ns
        out += ch.key
        if v is not None:
            out += v
    return bytes(out)


def decode_changes(data: bytes) -> List[Change]:
    """Inverse of :func:`encode_changes`.

    :raises ValueError: truncated input or an unknown op (naming the offset).
    :raises TypeError: ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_changes needs bytes, not {type(data).__name__}")
    data = bytes(data)
    out: List[Change] = []
    pos, n = 0, len(data)
    size = _REC.size
    unpack = _REC.unpack_from
    new_ts = from_packed
    while pos < n:
        if pos + size > n:
            raise ValueError(f"truncated change record at offset {pos}")
        op, hlc, node, ln, lk, lv = unpack(data, pos)
        start = pos
        pos += size
        expire_at = None
        if op & _HAS_EXPIRY:
            if pos + 8 > n:
                raise ValueError(f"truncated change record at offset {start}")
            expire_at = _U64.unpack_from(data, pos)[0]
            op &= ~_HAS_EXPIRY
            pos += 8
        end = pos + ln + lk + (0 if lv == _NONE else lv)
        if end > n:
            raise ValueError(f"truncated change record at offset {start}")
        kind = _OPS.get(op)
        if kind is None:
            raise ValueError(f"unknown op {op} in change record at offset {start}")
        try:
            ns = data[pos:pos + ln].decode()
        except UnicodeDecodeError:
            raise ValueError(f"namespace of change record at offset {start} is not UTF-8") from None
        key = data[pos + ln:pos + ln + lk]
        value = None if lv == _NONE else data[pos + ln + lk:end]
        out.append(Change(ns, key, kind, value, new_ts(hlc, node), None, expire_at))
        pos = end
    return out


def wire_size(changes: Sequence[Change]) -> int:
    """Bytes ``changes`` take on the wire (without encoding them)."""
    return sum(_REC.size + len(c.namespace) + len(c.key) + len(c.value or b"") + (0 if c.expire_at is None else 8)
               for c in changes)
