"""Fuzz harness: ``apply`` of arbitrary Change sequences.

Input: a sequence of choices (see ``_common.Reader``) building 1-8 Changes:
namespace (LWW, a PNCounter, an ORSet, an MVRegister, one the engine does
not know), key (sometimes over the 511-byte limit), op (also invalid ones),
value (random bytes, or a valid operand of the namespace's CRDT), timestamp
(around now, far ahead, at the end of the clock's range, node ids up to
2**32-1). Allowed outcomes of ``apply``: a count, or TypeError, ValueError
(its subclasses: sizes, undecodable operands, out-of-range timestamps),
ClockSkewError, or the AbaseError for a merge namespace not opened.
Invariants: applying the same changes again changes nothing and returns
0; a compaction never changes a visible value; ``check()`` stays clean.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import Reader, ae, crdt  # noqa: E402

from abase_engine.errors import AbaseError, ClockSkewError  # noqa: E402
from abase_engine.record import MAX_NODE_ID  # noqa: E402

_WORK = _common.scratch_dir("apply")
with ae.open(_WORK, compact_interval=None) as _first:  # a merge namespace this engine will not open
    _first.namespace("unknown-merge", merge=crdt.GCounter())
_DB = ae.open(_WORK, compact_interval=None, segment_size=1 << 16, node_id=1)
_NS = {
    "": None,
    "ctr": _DB.namespace("ctr", merge=crdt.PNCounter()),
    "set": _DB.namespace("set", merge=crdt.ORSet()),
    "reg": _DB.namespace("reg", merge=crdt.MVRegister()),
}
_OPERATIONS = {
    "ctr": lambda r: crdt.PNCounter.increment(r.below(100)),
    "set": lambda r: crdt.ORSet.add(r.bytes(8)),
    "reg": lambda r: crdt.MVRegister.set(r.bytes(8)),
}
_MAX_MS = (1 << 47) - 1
_NAMES = ["", "ctr", "set", "reg", "lww2", "unknown-merge"]


def _value(r: Reader, ns: str, ts: ae.Timestamp):
    kind = r.below(4)
    if kind == 0:
        return None
    if kind == 1 and ns in _OPERATIONS:
        op = _NS[ns].merge_operator
        try:
            return op.make_operand(_OPERATIONS[ns](r), None, ts)
        except (ValueError, TypeError):
            return r.bytes(40)
    return r.bytes(64 if kind != 3 else 600)


def _timestamp(r: Reader):
    now = int(time.time() * 1000)
    physical = r.pick([now, now - r.below(10_000), now + r.below(1_000), now + 10_000_000, 0, _MAX_MS,
                       _MAX_MS - 1, r.int(6) & ((1 << 48) - 1)])
    try:
        return ae.Timestamp(physical, r.int(2), r.pick([2, 3, 0, MAX_NODE_ID, r.int(4)]))
    except (ValueError, TypeError):
        return None


def _changes(r: Reader):
    out = []
    for _ in range(1 + r.below(8)):
        ns = r.pick(_NAMES)
        ts = _timestamp(r)
        if ts is None:
            continue
        key = r.bytes(520) if r.below(8) == 0 else r.bytes(6)
        op = r.pick([ae.Op.PUT, ae.Op.DELETE, ae.Op.MERGE, 0, 7])
        out.append(ae.Change(ns, key, op, _value(r, ns, ts), ts))
    return out


def _visible(changes):
    out = {}
    for ch in changes:
        h = _NS.get(ch.namespace)
        if ch.namespace in _NS and isinstance(ch.key, bytes) and len(ch.key) <= 511:
            out[(ch.namespace, ch.key)] = (_DB.get(ch.key) if h is None else h.get(ch.key))
    return out


def TestOneInput(data: bytes) -> None:
    r = Reader(data)
    compact = r.below(16) == 0
    changes = _changes(r)
    try:
        _DB.apply(changes)
    except (TypeError, ValueError, ClockSkewError):
        return
    except AbaseError as exc:
        if "must be opened with its merge operator" not in str(exc):
            raise
        return
    seen = _visible(changes)
    again = _DB.apply(changes)
    if again != 0 or _visible(changes) != seen:
        raise AssertionError(f"apply is not idempotent: {changes!r} (second apply: {again})")
    if compact:
        _DB.compact(wait=True)
        if _visible(changes) != seen:
            raise AssertionError(f"compaction changed visible values after {changes!r}")
        problems = _DB.check()
        if problems:
            raise AssertionError(f"check after apply: {problems}")


if __name__ == "__main__":
    _common.main(TestOneInput)
