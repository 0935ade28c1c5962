"""The C CRDTs (csrc/crdt_*.c) against the Python reference (abase_engine.crdt).

The engine's fast paths fold, build operands and read values of the
built-in types in C. Here the C code runs on the same random histories
(operations on 2-3 replicas, state exchange, key deletes) as the Python
operators, and must give the same bytes: the join of any subset in any
order, each operand (and each delete's value) built from any state, the
state after a local operation, the Python value; and it must refuse
exactly the bytes Python refuses.
"""

from __future__ import annotations

import math
import random
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from abase_engine import _fast
from abase_engine.crdt import (EWFlag, GCounter, GSet, LWWRegister, MVRegister, Operation, ORSet, PNCounter,
                               SortedSet)
from abase_engine.errors import MergeOperandError
from abase_engine.record import Timestamp

NODES = [5, 1, 4_000_000_000, 31, 29]  # a multi-byte varint node id; indexes past 28 in a context
MEMBERS = st.sampled_from([b"", b"a", b"b", b"c\x00", b"m" * 130])
VALUES = st.sampled_from([b"", b"v1", b"v2", b"\xff" * 3])
SCORES = st.one_of(st.sampled_from([0.0, 1.0, 1.5, -2.0, math.inf, -math.inf]), st.floats(allow_nan=False))
AMOUNTS = st.one_of(st.integers(-20, 20), st.integers(-(2 ** 62), 2 ** 62))

OPS = {
    LWWRegister: st.builds(LWWRegister.set, VALUES),
    MVRegister: st.builds(MVRegister.set, VALUES),
    GCounter: st.builds(GCounter.increment, st.one_of(st.integers(0, 20), st.integers(0, 2 ** 62))),
    PNCounter: st.one_of(st.builds(PNCounter.increment, AMOUNTS), st.builds(PNCounter.decrement, AMOUNTS)),
    GSet: st.builds(GSet.add, MEMBERS),
    ORSet: st.one_of(st.builds(ORSet.add, MEMBERS), st.builds(ORSet.remove, MEMBERS)),
    SortedSet: st.one_of(st.builds(SortedSet.add, MEMBERS, SCORES), st.builds(SortedSet.remove, MEMBERS)),
    EWFlag: st.sampled_from([EWFlag.enable(), EWFlag.disable()]),
}
TYPES = list(OPS)
IDS = [t.__name__ for t in TYPES]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Sim:
    """Replicas of one key issuing operations and deletes, exchanging states."""

    def __init__(self, cls: type, n: int) -> None:
        self.op = cls()
        self.tag = cls.TAG
        self.hlc = 1_700_000_000_000 << 16
        self.states: List[Optional[bytes]] = [None] * n
        self.operands: List[bytes] = []
        self.seen: List[bytes] = []

    def tick(self, i: int) -> Timestamp:
        self.hlc += 1 + (self.hlc & 3)
        return Timestamp(self.hlc >> 16, self.hlc & 0xFFFF, NODES[i])

    def do(self, i: int, operation: Any) -> Tuple[Optional[bytes], Any, Timestamp, bytes]:
        s = self.states[i]
        ts = self.tick(i)
        if operation == "delete":
            d = self.op.removal(s, ts)
        else:
            d = self.op.make_operand(operation, s if self.op.needs_state(operation) else None, ts)
        self.states[i] = self.op.full_merge(s, [d])
        self.operands.append(d)
        self.seen.append(self.states[i])
        return s, operation, ts, d

    def exchange(self, a: int, b: int) -> None:
        if self.states[a] is not None:
            self.states[b] = self.op.full_merge(self.states[b], [self.states[a]])
            self.seen.append(self.states[b])


@st.composite
def histories(draw, cls: type):
    """(sim, [(state before, operation, ts, operand)])"""
    n = draw(st.integers(1, 5))
    sim = Sim(cls, n)
    steps = [sim.do(0, draw(OPS[cls]))]
    for _ in range(draw(st.integers(0, 25))):
        i = draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["op", "op", "op", "delete", "exchange"]))
        if kind == "exchange":
            sim.exchange(draw(st.integers(0, n - 1)), i)
            continue
        steps.append(sim.do(i, draw(OPS[cls]) if kind == "op" else "delete"))
    return sim, steps


def _c_args(operation: Any) -> Tuple[str, tuple]:
    return ("delete", ()) if operation == "delete" else (operation.kind, operation.args)


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_c_join_equals_python(cls, data):
    sim, _steps = data.draw(histories(cls))
    pool = sim.operands + sim.seen
    rnd = data.draw(st.randoms(use_true_random=False))
    for _ in range(5):
        picked = rnd.sample(pool, rnd.randint(1, len(pool)))
        picked += rnd.sample(picked, rnd.randint(0, len(picked)))  # duplicates
        rnd.shuffle(picked)
        want = sim.op.full_merge(None, picked)
        assert _fast.crdt_fold(sim.tag, picked) == want
    assert _fast.crdt_fold(sim.tag, []) == sim.op.full_merge(None, [])


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_c_operands_values_and_local_apply_equal_python(cls, data):
    sim, steps = data.draw(histories(cls))
    op = sim.op
    for before, operation, ts, operand in steps:
        kind, args = _c_args(operation)
        state = before if operation == "delete" or op.needs_state(operation) else None
        # the operand (or the delete's value) built from the state the writer had
        assert _fast.crdt_operand(sim.tag, before, kind, args, ts.hlc, ts.node_id) == operand
        # the state after the operation, without decoding the operand
        assert _fast.crdt_apply(sim.tag, before, kind, args, ts.hlc, ts.node_id) == op.full_merge(before, [operand])
        del state
    for s in sim.seen + sim.operands:
        assert _fast.crdt_value(sim.tag, s) == op.to_value(s)
    assert _fast.crdt_value(sim.tag, None) is None


@pytest.mark.parametrize("cls", TYPES, ids=IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_c_refuses_what_python_refuses(cls, data):
    sim, _steps = data.draw(histories(cls))
    op = sim.op
    good = data.draw(st.sampled_from(sim.seen + sim.operands))
    for i in range(len(good)):  # every strict prefix
        with pytest.raises(ValueError):
            _fast.crdt_fold(sim.tag, [good[:i]])
    rnd = random.Random(data.draw(st.integers(0, 2 ** 32 - 1)))
    for _ in range(30):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        if rnd.random() < 0.5:
            b.insert(rnd.randint(2, len(b)), rnd.randrange(256))
        bad = bytes(b)
        try:
            want = op.full_merge(None, [bad])
        except MergeOperandError:
            with pytest.raises(ValueError):
                _fast.crdt_fold(sim.tag, [bad])
            continue
        assert _fast.crdt_fold(sim.tag, [bad]) == want
        assert _fast.crdt_value(sim.tag, bad) == op.to_value(bad)


def test_c_counter_overflow_and_stale_clock_are_left_to_python():
    g = GCounter()
    top = g.make_operand(GCounter.increment(2 ** 64 - 1), None, Timestamp(1, 0, 1))
    with pytest.raises(ValueError, match="overflow"):
        _fast.crdt_operand(GCounter.TAG, top, "increment", (1,), 2 << 16, 1)
    s = ORSet()
    st_ = s.make_operand(ORSet.add(b"x"), None, Timestamp(5, 0, 1))
    with pytest.raises(ValueError, match="stale"):
        _fast.crdt_operand(ORSet.TAG, st_, "add", (b"y",), 4 << 16, 1)
    with pytest.raises(ValueError):
        _fast.crdt_fold(7, [])  # ORMap has no C path


def test_merge_lock_is_reentrant_and_exclusive():
    import threading

    lock = _fast.MergeLock()
    with lock:
        with lock:
            assert lock._is_owned()
        got = []
        t = threading.Thread(target=lambda: got.append(lock.acquire(False)))
        t.start()
        t.join()
        assert got == [False]
    assert not lock._is_owned()
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire(timeout=0.01) and lock.acquire(blocking=False)
    lock.release()
    lock.release()


def test_big_sets_and_many_nodes():
    """A context with more than 28 nodes (the dot escape) and a set of 2,000
    members, with removes, deletes and re-adds."""
    s = ORSet()
    state = None
    ops = []
    for i in range(2000):
        node = 100 + i % 40
        ts = Timestamp(1_000 + i, 0, node)
        o = s.make_operand(ORSet.add(b"m%d" % (i % 1500)), state, ts)
        if i % 7 == 3:
            o = s.make_operand(ORSet.remove(b"m%d" % (i // 2)), state, ts)
        if i == 1200:
            o = s.removal(state, ts)
        ops.append(o)
        state = s.full_merge(state, [o])
    assert _fast.crdt_fold(ORSet.TAG, ops) == state
    assert _fast.crdt_fold(ORSet.TAG, [state]) == state
    assert _fast.crdt_value(ORSet.TAG, state) == s.to_value(state)
    assert _fast.crdt_apply(ORSet.TAG, state, "add", (b"new",), 5_000 << 16, 7) == \
        s.full_merge(state, [s.make_operand(ORSet.add(b"new"), state, Timestamp(5_000, 0, 7))])
    assert isinstance(Operation(ORSet, "add", (b"x",)), tuple)
