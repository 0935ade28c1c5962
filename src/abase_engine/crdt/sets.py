"""Sets and flags: GSet and SortedSet (timestamp-ordered key deletes), ORSet
and EWFlag (dot-based, observed-remove)."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ..errors import MergeOperandError
from ..record import Timestamp
from ._base import CrdtType, Operation
from ._causal import DOTSET, DotFunKind, DotMapKind, DotSetMapKind, claim, ctx_of
from ._codec import (TS, as_bytes, bad, max_ts, read_bytes, read_f64, read_ts, read_uv, read_wm, write_bytes,
                     write_f64, write_ts, write_uv, write_wm)

__all__ = ["GSet", "ORSet", "EWFlag", "SortedSet"]


class GSet(CrdtType):
    """Set of byte strings that only grows between key deletes: join = union.

    State: ``(watermark, {member: timestamp})``: each member keeps the
    greatest timestamp it was added at, and the watermark is the newest key
    delete seen. A key delete at ``T`` removes every member last added
    before ``T`` (a member is dropped from the state once the watermark
    passes it); a re-add after the delete, or a concurrent add newer than
    ``T``, survives. ``add`` needs no state.

    >>> g = GSet()
    >>> ops = [g.make_operand(GSet.add(x), None, Timestamp(1, i, 1)) for i, x in enumerate((b"b", b"a", b"b"))]
    >>> sorted(g.to_value(g.full_merge(None, ops)))
    [b'a', b'b']

    Encoding (after the header): ``wm u(n) { bytes(member) u(hlc) u(node) }*n``,
    members strictly increasing, each timestamp greater than the watermark.
    """

    name = "abase.GSet.v1"
    TAG = 5
    watermark = True
    OPS = {"add": False}

    @staticmethod
    def add(member: bytes) -> Operation:
        """Add ``member``. Runtime complexity: O(1) (the delta is ``{member}``)."""
        return Operation(GSet, "add", (as_bytes(member, "member"),))

    def new_state(self) -> Tuple[Optional[TS], Dict[bytes, TS]]:
        return (None, {})

    def copy_state(self, x: Any) -> Any:
        return (x[0], dict(x[1]))

    def join_state(self, a: Any, b: Any) -> Any:
        wm = max_ts(a[0], b[0])
        ma = a[1]
        for m, t in b[1].items():
            cur = ma.get(m)
            if cur is None or t > cur:
                ma[m] = t
        if wm is not None and a[0] != b[0]:  # else every member is newer than both
            dead = [m for m, t in ma.items() if t <= wm]
            for m in dead:
                del ma[m]
        return (wm, ma)

    def encode_state(self, out: bytearray, x: Any) -> None:
        write_wm(out, x[0])
        members = x[1]
        write_uv(out, len(members))
        for m in sorted(members):
            write_bytes(out, m)
            write_ts(out, members[m])

    def decode_state(self, buf: bytes, pos: int) -> Tuple[Any, int]:
        wm, pos = read_wm(buf, pos)
        cnt, pos = read_uv(buf, pos)
        members: Dict[bytes, TS] = {}
        prev = None
        for _ in range(cnt):
            m, pos = read_bytes(buf, pos)
            if prev is not None and m <= prev:
                raise bad("members not strictly increasing")
            prev = m
            t, pos = read_ts(buf, pos)
            if wm is not None and t <= wm:
                raise bad("member not newer than the watermark")
            members[m] = t
        return (wm, members), pos

    def delta_state(self, op: Operation, observed: Any, ts: Timestamp) -> Any:
        return (None, {op.args[0]: (ts.hlc, ts.node_id)})

    def state_value(self, x: Any) -> FrozenSet[bytes]:
        return frozenset(x[1])

    def state_live(self, x: Any) -> bool:
        return bool(x[1])

    def removal_state(self, x: Any, ts: Timestamp) -> Any:
        return ((ts.hlc, ts.node_id), {})

    def watermark_of(self, x: Any) -> Optional[TS]:
        return x[0]


class ORSet(CrdtType):
    """Add-wins observed-remove set (ORSWOT style: no per-element tombstones).

    State: ``DotMap {member: {dots}}`` plus causal context. For node ``n`` at
    ``h`` with ``D = dots(member)``::

        add(x)    = ({x: {(n, h)}}, D ∪ [p+1, h])
        remove(x) = ({},            D)

    A remove deletes exactly the adds it observed; a concurrent add survives.
    A key delete is an observed-remove of every member: it carries its
    writer's context, and an add it did not observe (concurrent, on another
    replica) survives it. On one replica it behaves like a Python ``set``;
    an empty set reads as absent (``None``).

    >>> s = ORSet(); st = None
    >>> for i, op in enumerate([ORSet.add(b"a"), ORSet.add(b"b"), ORSet.remove(b"a")]):
    ...     st = s.full_merge(st, [s.make_operand(op, st, Timestamp(i, 0, 1))])
    >>> s.to_value(st)
    frozenset({b'b'})

    Encoding (after the header): ``ctx u(n) { bytes(member) u(k>0) dot*k }*n``.
    """

    name = "abase.ORSet.v1"
    TAG = 6
    causal = True
    store_kind = DotSetMapKind()
    OPS = {"add": True, "remove": True}

    @staticmethod
    def add(member: bytes) -> Operation:
        """Add ``member``. Runtime complexity: O(1) delta (the engine reads only what it needs)."""
        return Operation(ORSet, "add", (as_bytes(member, "member"),))

    @staticmethod
    def remove(member: bytes) -> Operation:
        """Remove ``member`` as observed. Runtime complexity: O(1) delta."""
        return Operation(ORSet, "remove", (as_bytes(member, "member"),))

    def store_delta(self, op, store, ctx, ts):
        x = op.args[0]
        dots = store.get(x, ())
        if op.kind == "add":
            c = claim(ctx, ts)
            return {x: {(c[0], c[2])}}, ctx_of(dots, c)
        return {}, ctx_of(dots)

    def store_value(self, store) -> FrozenSet[bytes]:
        return frozenset(store)


class EWFlag(CrdtType):
    """Enable-wins flag: ``True`` iff an enable survives, else absent (``None``).

    State: a set of dots plus causal context. ``enable() = ({(n, h)}, D ∪ [p+1, h])``
    and ``disable() = ({}, D)`` with ``D`` the observed dots: a disable only
    cancels the enables it saw, so a concurrent enable wins. A disabled flag
    and a deleted one are the same state: both read as ``None``. A key delete
    is an observed-remove, like a disable.

    >>> f = EWFlag(); st = None
    >>> on = f.make_operand(EWFlag.enable(), st, Timestamp(1, 0, 1))
    >>> off = f.make_operand(EWFlag.disable(), f.full_merge(None, [on]), Timestamp(2, 0, 2))
    >>> again = f.make_operand(EWFlag.enable(), f.full_merge(None, [on]), Timestamp(2, 0, 1))
    >>> f.to_value(f.full_merge(None, [on, off])), f.to_value(f.full_merge(None, [on, off, again]))
    (None, True)

    Encoding (after the header): ``ctx u(k) dot*k``.
    """

    name = "abase.EWFlag.v1"
    TAG = 9
    causal = True
    store_kind = DOTSET
    OPS = {"enable": True, "disable": True}

    @staticmethod
    def enable() -> Operation:
        """Set the flag. Runtime complexity: O(concurrent enables)."""
        return Operation(EWFlag, "enable", ())

    @staticmethod
    def disable() -> Operation:
        """Clear the flag as observed. Runtime complexity: O(concurrent enables)."""
        return Operation(EWFlag, "disable", ())

    def store_delta(self, op, store, ctx, ts):
        if op.kind == "enable":
            c = claim(ctx, ts)
            return {(c[0], c[2])}, ctx_of(store, c)
        return set(), ctx_of(store)

    def store_value(self, store) -> bool:
        return True


def _score(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"score must be int or float, not {type(x).__name__}")
    x = float(x)
    if x != x:
        raise MergeOperandError("score must not be NaN")
    return x + 0.0  # -0.0 -> 0.0


def _max_score(a: float, b: float) -> float:
    return a if a >= b else b


class SortedSet(CrdtType):
    """Members with scores (like a Redis sorted set), add-wins membership.

    State: a watermark, ``DotMap {member: DotFun {dot: score}}`` and a causal
    context::

        add(m, s)  = ({m: {(n, h): s}}, dots(m) ∪ [p+1, h])
        remove(m)  = ({},               dots(m))

    Score rule: last-writer-wins by timestamp: a member's score is that of its
    surviving add with the greatest ``(hlc, node)`` (an add supersedes the adds
    it observed, so normally only one survives). Scores are floats, no NaN.
    Value: ``[(member, score)]`` sorted by ``(score, member)``; ``None`` when
    empty.

    A key delete at ``T`` is a watermark: it removes every add older than
    ``T``, whether or not the delete's writer had seen it; an add newer than
    ``T`` (a re-add after the delete, or a concurrent one) survives.

    >>> z = SortedSet(); st = None
    >>> for i, op in enumerate([SortedSet.add(b"a", 3), SortedSet.add(b"b", 1), SortedSet.add(b"a", 0.5)]):
    ...     st = z.full_merge(st, [z.make_operand(op, st, Timestamp(i, 0, 1))])
    >>> z.to_value(st)
    [(b'a', 0.5), (b'b', 1.0)]
    >>> SortedSet.range_by_score(st, 1, 10)
    [(b'b', 1.0)]

    Encoding (after the header): ``wm ctx u(n) { bytes(member) u(k>0)
    { dot f64be(score) }*k }*n``, every dot newer than the watermark.
    """

    name = "abase.SortedSet.v1"
    TAG = 8
    causal = True
    watermark = True
    store_kind = DotMapKind(DotFunKind(_max_score, write_f64, read_f64))
    OPS = {"add": True, "remove": True}

    @staticmethod
    def add(member: bytes, score: float) -> Operation:
        """Add ``member`` or set its score. Runtime complexity: O(1) delta."""
        return Operation(SortedSet, "add", (as_bytes(member, "member"), _score(score)))

    @staticmethod
    def remove(member: bytes) -> Operation:
        """Remove ``member`` as observed. Runtime complexity: O(1) delta."""
        return Operation(SortedSet, "remove", (as_bytes(member, "member"),))

    def store_delta(self, op, store, ctx, ts):
        m = op.args[0]
        fun = store.get(m)
        dots = fun.keys() if fun else ()
        if op.kind == "add":
            c = claim(ctx, ts)
            return {m: {(c[0], c[2]): op.args[1]}}, ctx_of(dots, c)
        return {}, ctx_of(dots)

    def store_value(self, store) -> List[Tuple[bytes, float]]:
        out = []
        for m, fun in store.items():
            if len(fun) == 1:
                for s in fun.values():
                    out.append((s, m))
            else:
                d = max(fun, key=lambda d: (d[1], d[0]))
                out.append((fun[d], m))
        out.sort()
        return [(m, s) for s, m in out]

    @staticmethod
    def range_by_score(state: Optional[bytes], lo: float, hi: float) -> List[Tuple[bytes, float]]:
        """Members with ``lo <= score <= hi``, sorted by ``(score, member)``.

        Runtime complexity: O(|state|) to decode, then O(log n + answer).
        """
        items = _SORTED_SET.to_value(state) or []
        scores = [s for _, s in items]
        return items[bisect_left(scores, lo):bisect_right(scores, hi)]


_SORTED_SET = SortedSet()
