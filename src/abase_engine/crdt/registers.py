"""Registers: LWWRegister (timestamp-ordered) and MVRegister (dot-based)."""

from __future__ import annotations

from typing import Any, FrozenSet, Optional, Tuple

from ..record import Timestamp
from ._base import CrdtType, Operation
from ._causal import DotFunKind, claim, ctx_of
from ._codec import TS, as_bytes, bad, max_ts, read_bytes, read_ts, read_wm, write_bytes, write_ts, write_wm

__all__ = ["LWWRegister", "MVRegister"]

#: (hlc, node, value) of the winning write
Reg = Tuple[int, int, bytes]


def _newer(a: Any, b: Any) -> Any:
    return a if a >= b else b


class LWWRegister(CrdtType):
    """Last-writer-wins register: the write with the greatest ``(hlc, node_id)`` wins.

    State: ``(watermark, register)``: the newest key delete seen, and the
    winning write ``(hlc, node, value)`` if it is newer than that delete.
    Join takes the max of each and drops a register not newer than the
    watermark, so ``join`` is commutative, associative and idempotent. The
    operand of ``set`` is a tiny state stamped with the record's timestamp:
    no state needed.

    A key delete at ``T`` is a watermark: it removes a write older than
    ``T`` (whenever the delete arrives, folded or not); a write newer than
    ``T``, concurrent or later, survives.

    >>> r = LWWRegister()
    >>> a = r.make_operand(LWWRegister.set(b"x"), None, Timestamp(10, 0, 1))
    >>> b = r.make_operand(LWWRegister.set(b"y"), None, Timestamp(9, 0, 2))
    >>> r.to_value(r.full_merge(None, [a, b])), r.to_value(r.full_merge(None, [b, a]))
    (b'x', b'x')
    >>> r.to_value(r.full_merge(a, [r.removal(None, Timestamp(11, 0, 3))])) is None
    True

    Encoding (after the header): ``wm reg`` with ``wm := 0x00 | 0x01 u(hlc)
    u(node)`` and ``reg := 0x00 | 0x01 u(hlc) u(node) bytes(value)``, the
    register's timestamp greater than the watermark.
    """

    name = "abase.LWWRegister.v1"
    TAG = 1
    watermark = True
    OPS = {"set": False}

    @staticmethod
    def set(value: bytes) -> Operation:
        """Set the register to ``value``. Runtime complexity: O(1)."""
        return Operation(LWWRegister, "set", (as_bytes(value, "value"),))

    def new_state(self) -> Tuple[Optional[TS], Optional[Reg]]:
        return (None, None)

    def copy_state(self, x: Any) -> Any:
        return x  # immutable

    def join_state(self, a: Any, b: Any) -> Any:
        wm = max_ts(a[0], b[0])
        ra, rb = a[1], b[1]
        reg = rb if ra is None else (ra if rb is None else _newer(ra, rb))
        if reg is not None and wm is not None and (reg[0], reg[1]) <= wm:
            reg = None
        return (wm, reg)

    def encode_state(self, out: bytearray, x: Any) -> None:
        write_wm(out, x[0])
        reg = x[1]
        if reg is None:
            out.append(0)
            return
        out.append(1)
        write_ts(out, (reg[0], reg[1]))
        write_bytes(out, reg[2])

    def decode_state(self, buf: bytes, pos: int) -> Tuple[Any, int]:
        wm, pos = read_wm(buf, pos)
        flag = buf[pos]
        pos += 1
        if flag == 0:
            return (wm, None), pos
        if flag != 1:
            raise bad("bad register flag")
        ts, pos = read_ts(buf, pos)
        if wm is not None and ts <= wm:
            raise bad("register not newer than its watermark")
        v, pos = read_bytes(buf, pos)
        return (wm, (ts[0], ts[1], v)), pos

    def delta_state(self, op: Operation, observed: Any, ts: Timestamp) -> Any:
        return (None, (ts.hlc, ts.node_id, op.args[0]))

    def state_value(self, x: Any) -> Optional[bytes]:
        return None if x[1] is None else x[1][2]

    def state_live(self, x: Any) -> bool:
        return x[1] is not None

    def removal_state(self, x: Any, ts: Timestamp) -> Any:
        return ((ts.hlc, ts.node_id), None)

    def watermark_of(self, x: Any) -> Optional[TS]:
        return x[0]


class MVRegister(CrdtType):
    """Multi-value register: keeps every concurrent write (like Riak siblings).

    State: ``DotFun`` ``{dot: value}`` plus causal context. ``set(v)`` by node
    ``n`` at ``h`` yields the delta ``({(n, h): v}, dots(state) ∪ [p+1, h])``:
    it supersedes every value it has seen, while writes it has not seen stay
    as siblings. Value: ``frozenset`` of the surviving values; ``None`` when
    none survives. A key delete removes the writes it observed; a concurrent
    write on another replica survives it.

    >>> r = MVRegister()
    >>> a = r.make_operand(MVRegister.set(b"a"), None, Timestamp(1, 0, 1))
    >>> b = r.make_operand(MVRegister.set(b"b"), None, Timestamp(1, 0, 2))
    >>> s = r.full_merge(None, [a, b]); sorted(r.to_value(s))
    [b'a', b'b']
    >>> c = r.make_operand(MVRegister.set(b"c"), s, Timestamp(2, 0, 1))
    >>> r.to_value(r.full_merge(s, [c]))
    frozenset({b'c'})

    Encoding (after the header): ``ctx u(n) { dot bytes(value) }*n``.
    """

    name = "abase.MVRegister.v1"
    TAG = 2
    causal = True
    store_kind = DotFunKind(_newer, write_bytes, read_bytes)
    OPS = {"set": True}

    @staticmethod
    def set(value: bytes) -> Operation:
        """Replace every observed value by ``value``. Runtime complexity: O(siblings)."""
        return Operation(MVRegister, "set", (as_bytes(value, "value"),))

    def store_delta(self, op, store, ctx, ts):
        n, lo, h = claim(ctx, ts)
        return {(n, h): op.args[0]}, ctx_of(store.keys(), (n, lo, h))

    def store_value(self, store) -> FrozenSet[bytes]:
        return frozenset(store.values())
