"""Fuzz harness: the CRDT decoders, through the public operator API only
(``check_operand``, ``full_merge``, ``to_value``), so it stays valid while
crdt.py changes.

Input: byte 0 picks an operator; the rest is split into up to three
encoded operands. For each: ``check_operand`` either accepts it or raises
ValueError (MergeOperandError); whatever it accepts, ``to_value`` and
``full_merge`` must handle, and the joins must obey the semilattice laws
on the decoded values: commutative, associative, idempotent. Any other
exception (struct.error, IndexError, RecursionError, ...) is a finding.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import Reader, crdt  # noqa: E402

_OPERATORS = [crdt.LWWRegister(), crdt.MVRegister(), crdt.GCounter(), crdt.PNCounter(), crdt.GSet(),
              crdt.ORSet(), crdt.EWFlag(), crdt.SortedSet(), crdt.ORMap(crdt.PNCounter()),
              crdt.ORMap(crdt.ORSet())]


def _value(op, state):
    v = op.to_value(state)
    return repr(v) if isinstance(v, float) else v  # NaN != NaN: compare floats by repr


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    op = _OPERATORS[data[0] % len(_OPERATORS)]
    r = Reader(data[1:])
    parts = [r.bytes(200) for _ in range(1 + r.below(3))]
    valid = []
    for p in parts:
        try:
            op.check_operand(p)
        except ValueError:
            try:
                op.full_merge(None, [p])
            except ValueError:
                continue
            raise AssertionError(f"{op!r}: full_merge accepted an operand check_operand refused: {p!r}")
        op.to_value(p)
        valid.append(p)
    if not valid:
        return
    a = valid[0]
    b = valid[-1]
    c = valid[len(valid) // 2]
    joined = op.full_merge(None, [a])
    if _value(op, op.full_merge(a, [a])) != _value(op, joined):
        raise AssertionError(f"{op!r}: join is not idempotent for {a!r}")
    if _value(op, op.full_merge(a, [b])) != _value(op, op.full_merge(b, [a])):
        raise AssertionError(f"{op!r}: join is not commutative for {a!r}, {b!r}")
    left = op.full_merge(op.full_merge(a, [b]), [c])
    right = op.full_merge(a, [op.full_merge(b, [c])])
    if _value(op, left) != _value(op, right):
        raise AssertionError(f"{op!r}: join is not associative for {a!r}, {b!r}, {c!r}")


if __name__ == "__main__":
    _common.main(TestOneInput)
