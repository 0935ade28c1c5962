"""Counters: GCounter and PNCounter, with observed-reset deletes.

A counter state keeps, per node, its cumulative totals (``P``, and ``N``
for decrements) and the totals a key delete observed (``Pr``, ``Nr``, the
*removed* vector). Join is the pointwise max of every component; the value
is ``Σ(P − Pr) − Σ(N − Nr)``. An increment by node ``n`` carries ``n``'s new
cumulative total, so a duplicated or replayed operand never double-counts;
it needs only ``n``'s own entry of the state.

A key delete carries the totals it observed, as totals and as removed
totals (``P = Pr``, ``N = Nr``): it removes exactly what its writer had
counted. Nodes keep counting from their totals after a delete (they never
restart at 0), so an increment concurrent with the delete, or after it,
survives; a delete that arrives late removes the same amount whether or not
the operands around it were already folded. A state in which every node's
totals equal its removed totals reads as absent (``None``); it is kept (not
purged by ``tombstone_grace_ms``), since dropping the removed vector would
let old increments count again.
"""

from __future__ import annotations

from typing import Any, Tuple

from ..errors import MergeOperandError
from ..record import MAX_NODE_ID, Timestamp
from ._base import CrdtType, Operation
from ._codec import U64, as_count, bad, check_total, read_uv, write_uv

__all__ = ["GCounter", "PNCounter"]


def _read_node(buf: bytes, pos: int, prev: int) -> Tuple[int, int]:
    d, pos = read_uv(buf, pos)
    n = prev + d + 1
    if n > MAX_NODE_ID:
        raise bad("node id out of range")
    return n, pos


def _amount(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"amount must be int, not {type(n).__name__}")
    if not -U64 <= n <= U64:
        raise MergeOperandError(f"amount={n} out of range")
    return n


class GCounter(CrdtType):
    """Grow-only counter: ``{node: (P, Pr)}``, value = Σ(P − Pr).

    ``increment(k)`` by node ``n`` yields ``{n: (P_n + k, 0)}``: the issuing
    node's new cumulative total (read from the state, so ``needs_state``).
    A duplicated operand joins to itself (``max(t, t) == t``), no double
    count. A delete removes the totals it observed; an increment it did not
    observe (concurrent, on another replica) survives.

    >>> c = GCounter()
    >>> op = c.make_operand(GCounter.increment(5), None, Timestamp(1, 0, 7))
    >>> c.to_value(c.full_merge(None, [op, op]))
    5
    >>> gone = c.removal(op, Timestamp(2, 0, 1))
    >>> c.to_value(c.full_merge(op, [gone])) is None
    True

    Encoding (after the header): ``u(n) { u(nodeΔ) u(P > 0) u(Pr <= P) }*n``,
    nodes increasing (``nodeΔ``: first id, then the gap minus one).
    """

    name = "abase.GCounter.v1"
    TAG = 3
    OPS = {"increment": True}

    @staticmethod
    def increment(n: int = 1) -> Operation:
        """Add ``n >= 0``. Runtime complexity: O(nodes)."""
        return Operation(GCounter, "increment", (as_count(n, "increment"),))

    def new_state(self) -> dict:
        return {}

    def copy_state(self, x: dict) -> dict:
        return dict(x)

    def join_state(self, a: dict, b: dict) -> dict:
        for n, v in b.items():
            cur = a.get(n)
            if cur is None:
                a[n] = v
            elif cur != v:
                a[n] = (max(cur[0], v[0]), max(cur[1], v[1]))
        return a

    def encode_state(self, out: bytearray, x: dict) -> None:
        write_uv(out, len(x))
        prev = -1
        for n in sorted(x):
            write_uv(out, n - prev - 1)
            prev = n
            p, r = x[n]
            write_uv(out, p)
            write_uv(out, r)

    def decode_state(self, buf: bytes, pos: int) -> Tuple[dict, int]:
        cnt, pos = read_uv(buf, pos)
        x = {}
        n = -1
        for _ in range(cnt):
            n, pos = _read_node(buf, pos, n)
            p, pos = read_uv(buf, pos)
            r, pos = read_uv(buf, pos)
            if p == 0:
                raise bad("zero counter entry")
            if r > p:
                raise bad("removed total above the total")
            x[n] = (p, r)
        return x, pos

    def delta_state(self, op: Operation, observed: dict, ts: Timestamp) -> dict:
        n = ts.node_id
        t = check_total(observed.get(n, (0, 0))[0] + op.args[0])
        return {n: (t, 0)} if t else {}

    def state_value(self, x: dict) -> int:
        return sum(p - r for p, r in x.values())

    def state_live(self, x: dict) -> bool:
        return any(p != r for p, r in x.values())

    def removal_state(self, x: dict, ts: Timestamp) -> dict:
        return {n: (p, p) for n, (p, _r) in x.items()}


class PNCounter(CrdtType):
    """Counter with increments and decrements: ``{node: (P, N, Pr, Nr)}``,
    value = Σ(P − Pr) − Σ(N − Nr).

    Join is the pointwise max of each component. ``increment(k)`` by node
    ``n`` yields ``{n: (P_n + k, 0, 0, 0)}`` and ``decrement(k)`` yields
    ``{n: (0, N_n + k, 0, 0)}`` (only the changed cumulative total; 0 is
    bottom for a component), so duplicates never double count. A negative
    ``k`` does the opposite. A delete removes the totals it observed: a
    delete concurrent with an increment on another replica leaves that
    increment, and counting after a delete starts from 0 again.

    >>> c = PNCounter(); s = None
    >>> for i, op in enumerate([PNCounter.increment(5), PNCounter.decrement(2)]):
    ...     s = c.full_merge(s, [c.make_operand(op, s, Timestamp(i, 0, 1))])
    >>> c.to_value(s)
    3
    >>> s = c.full_merge(s, [c.removal(s, Timestamp(5, 0, 2))])
    >>> s = c.full_merge(s, [c.make_operand(PNCounter.increment(1), s, Timestamp(6, 0, 1))])
    >>> c.to_value(s)
    1

    Encoding (after the header): ``u(n) { u(nodeΔ) u(P) u(N) u(Pr <= P)
    u(Nr <= N) }*n``, nodes increasing, ``P`` and ``N`` not both 0.
    """

    name = "abase.PNCounter.v1"
    TAG = 4
    OPS = {"increment": True, "decrement": True}

    @staticmethod
    def increment(n: int = 1) -> Operation:
        """Add ``n``. Runtime complexity: O(nodes)."""
        return Operation(PNCounter, "increment", (_amount(n),))

    @staticmethod
    def decrement(n: int = 1) -> Operation:
        """Subtract ``n``. Runtime complexity: O(nodes)."""
        return Operation(PNCounter, "decrement", (_amount(n),))

    def new_state(self) -> dict:
        return {}

    def copy_state(self, x: dict) -> dict:
        return dict(x)

    def join_state(self, a: dict, b: dict) -> dict:
        for n, v in b.items():
            cur = a.get(n)
            if cur is None:
                a[n] = v
            elif cur != v:
                a[n] = (max(cur[0], v[0]), max(cur[1], v[1]), max(cur[2], v[2]), max(cur[3], v[3]))
        return a

    def encode_state(self, out: bytearray, x: dict) -> None:
        write_uv(out, len(x))
        prev = -1
        for n in sorted(x):
            write_uv(out, n - prev - 1)
            prev = n
            for c in x[n]:
                write_uv(out, c)

    def decode_state(self, buf: bytes, pos: int) -> Tuple[dict, int]:
        cnt, pos = read_uv(buf, pos)
        x = {}
        n = -1
        for _ in range(cnt):
            n, pos = _read_node(buf, pos, n)
            p, pos = read_uv(buf, pos)
            m, pos = read_uv(buf, pos)
            pr, pos = read_uv(buf, pos)
            mr, pos = read_uv(buf, pos)
            if p == 0 and m == 0:
                raise bad("zero counter entry")
            if pr > p or mr > m:
                raise bad("removed total above the total")
            x[n] = (p, m, pr, mr)
        return x, pos

    def delta_state(self, op: Operation, observed: dict, ts: Timestamp) -> dict:
        n = ts.node_id
        k = op.args[0] if op.kind == "increment" else -op.args[0]
        p, m = observed.get(n, (0, 0, 0, 0))[:2]
        if k > 0:
            return {n: (check_total(p + k), 0, 0, 0)}
        if k < 0:
            return {n: (0, check_total(m - k), 0, 0)}
        return {}

    def state_value(self, x: dict) -> int:
        return sum(p - pr - m + mr for p, m, pr, mr in x.values())

    def state_live(self, x: dict) -> bool:
        return any(p != pr or m != mr for p, m, pr, mr in x.values())

    def removal_state(self, x: dict, ts: Timestamp) -> dict:
        return {n: (p, m, p, m) for n, (p, m, _pr, _mr) in x.items()}
