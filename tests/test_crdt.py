"""Tests of abase_engine.crdt: lattice laws, convergence, sequential models, bad input."""

from __future__ import annotations

import copy
import doctest
import functools
import math
import random
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from abase_engine import crdt
from abase_engine.crdt import (
    EWFlag,
    GCounter,
    GSet,
    LWWRegister,
    MVRegister,
    Operation,
    ORMap,
    ORSet,
    PNCounter,
    SortedSet,
)
from abase_engine.errors import MergeOperandError
from abase_engine.merge import MergeOperator
from abase_engine.record import Timestamp

NODES = [5, 1, 4_000_000_000]  # includes a multi-byte varint node id
BASE_MS = 1_700_000_000_000

# --------------------------------------------------------------------------
# simulation helpers


class Clock:
    """A shared hybrid clock: strictly increasing per node; ``same=True`` lets
    two nodes share an HLC value (ties broken by node id)."""

    def __init__(self) -> None:
        self.hlc = BASE_MS << 16
        self.last: Dict[int, int] = {}

    def tick(self, node: int, same: bool = False) -> Timestamp:
        if not (same and self.last.get(node, -1) < self.hlc):
            self.hlc += 1 + (self.hlc & 3)  # irregular gaps between HLC values
        self.last[node] = self.hlc
        return Timestamp(self.hlc >> 16, self.hlc & 0xFFFF, node)


class Replica:
    """A replica without the engine: an encoded state, updated like the engine does.

    ``memo=False`` clears the operator's decode memo before every call, so
    every state is decoded from its bytes.
    """

    def __init__(self, op: MergeOperator, node: int, clock: Clock, memo: bool = True):
        self.op = op
        self.node = node
        self.clock = clock
        self.memo = memo
        self.state: Optional[bytes] = None

    def _forget(self) -> None:
        if not self.memo:
            self.op._memo = None

    def do(self, operation: Any, same: bool = False) -> bytes:
        st_ = self.state if self.op.needs_state(operation) else None
        self._forget()
        operand = self.op.make_operand(operation, st_, self.clock.tick(self.node, same))
        self._forget()
        self.state = self.op.full_merge(self.state, [operand])
        return operand

    def delete(self) -> bytes:
        """A key delete, as ``ns.delete`` writes it: what this replica observed."""
        self._forget()
        removal = self.op.removal(self.state, self.clock.tick(self.node))
        self._forget()
        self.state = self.op.full_merge(self.state, [removal])
        return removal

    def receive(self, data: bytes) -> None:
        self._forget()
        self.state = self.op.full_merge(self.state, [data])

    @property
    def value(self) -> Any:
        return self.op.to_value(self.state)


# --------------------------------------------------------------------------
# per-type specs: operation strategy + sequential model

MEMBERS = st.sampled_from([b"", b"a", b"b", b"c\x00", b"m" * 130])
FIELDS = st.sampled_from([b"f", b"g", b"", b"h" * 200])
VALUES = st.sampled_from([b"", b"v1", b"v2", b"\xff" * 3])
COUNTS = st.one_of(st.integers(0, 20), st.integers(0, 2**40))
AMOUNTS = st.one_of(st.integers(-20, 20), st.integers(-(2**40), 2**40))
SCORES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 1.5, -2.0, math.inf, -math.inf]),
                   st.floats(allow_nan=False, width=64))


@dataclass
class Spec:
    id: str
    op: MergeOperator
    ops: Any  # strategy of Operations
    init: Callable[[], Any]  # also the model after a key delete
    step: Callable[[Any, Operation], Any]  # model transition (pure)
    view: Callable[[Any], Any]  # model -> expected to_value (None: nothing visible)
    field_view: Optional[Callable[[Any], Any]] = None  # the value as an ORMap field (default: view)


def _pn(model, op):
    k = op.args[0]
    return model + (k if op.kind == "increment" else -k)


def _counted(step):
    """A counter model ``(value, live)``: live once a non-zero amount was
    counted since the last delete (a delete removes what was counted)."""
    return lambda m, op: (step(m[0], op), m[1] or op.args[0] != 0)


def _counter_view(m):
    return m[0] if m[1] else None


def _nonempty(m):
    return m if m else None


def _set_step(model, op):
    return model | {op.args[0]} if op.kind == "add" else model - {op.args[0]}


def _zset_step(model, op):
    d = dict(model)
    if op.kind == "add":
        d[op.args[0]] = op.args[1]
    else:
        d.pop(op.args[0], None)
    return d


def _zset_view(d):
    return [(m, s) for s, m in sorted((s, m) for m, s in d.items())]


def _map_step(field_step, field_init, drop_empty):
    """Model of ORMap: field ops via field_step; a causal field whose value is bottom vanishes."""

    def step(model, op):
        d = dict(model)
        f = op.args[0]
        if op.kind == "remove":
            d.pop(f, None)
            return d
        present = f in d
        v = field_step(d[f] if present else field_init(), op.args[1])
        if drop_empty(v, present):
            d.pop(f, None)
        else:
            d[f] = v
        return d

    return step


def _never(v, present):
    return False


def _empty(v, present):
    return not v


ORMAP_OPS = lambda fops: st.one_of(  # noqa: E731
    st.builds(ORMap.update, FIELDS, fops), st.builds(ORMap.remove, FIELDS))

LWW_OPS = st.builds(LWWRegister.set, VALUES)
MV_OPS = st.builds(MVRegister.set, VALUES)
GC_OPS = st.builds(GCounter.increment, COUNTS)
PN_OPS = st.one_of(st.builds(PNCounter.increment, AMOUNTS), st.builds(PNCounter.decrement, AMOUNTS))
GSET_OPS = st.builds(GSet.add, MEMBERS)
ORSET_OPS = st.one_of(st.builds(ORSet.add, MEMBERS), st.builds(ORSet.remove, MEMBERS))
FLAG_OPS = st.sampled_from([EWFlag.enable(), EWFlag.disable()])
ZSET_OPS = st.one_of(st.builds(SortedSet.add, MEMBERS, SCORES), st.builds(SortedSet.remove, MEMBERS))

_lww_step = lambda m, op: op.args[0]  # noqa: E731
_mv_step = lambda m, op: frozenset({op.args[0]})  # noqa: E731
_gc_step = lambda m, op: m + op.args[0]  # noqa: E731
_flag_step = lambda m, op: op.kind == "enable"  # noqa: E731
_ident = lambda m: m  # noqa: E731

SPECS = [
    Spec("LWWRegister", LWWRegister(), LWW_OPS, lambda: None, _lww_step, _ident),
    Spec("MVRegister", MVRegister(), MV_OPS, frozenset, _mv_step, _nonempty),
    Spec("GCounter", GCounter(), GC_OPS, lambda: (0, False), _counted(_gc_step), _counter_view),
    Spec("PNCounter", PNCounter(), PN_OPS, lambda: (0, False), _counted(_pn), _counter_view),
    Spec("GSet", GSet(), GSET_OPS, frozenset, _set_step, _nonempty),
    Spec("ORSet", ORSet(), ORSET_OPS, frozenset, _set_step, _nonempty),
    Spec("EWFlag", EWFlag(), FLAG_OPS, bool, _flag_step, lambda m: True if m else None),
    Spec("SortedSet", SortedSet(), ZSET_OPS, dict, _zset_step, lambda d: _zset_view(d) if d else None),
    Spec("ORMap[PNCounter]", ORMap(PNCounter()), ORMAP_OPS(PN_OPS), dict, _map_step(_pn, int, _never), _nonempty),
    Spec("ORMap[LWWRegister]", ORMap(LWWRegister()), ORMAP_OPS(LWW_OPS), dict,
         _map_step(_lww_step, lambda: None, _never), _nonempty),
    Spec("ORMap[GSet]", ORMap(GSet()), ORMAP_OPS(GSET_OPS), dict, _map_step(_set_step, frozenset, _never),
         _nonempty),
    Spec("ORMap[ORSet]", ORMap(ORSet()), ORMAP_OPS(ORSET_OPS), dict, _map_step(_set_step, frozenset, _empty),
         _nonempty),
    Spec("ORMap[MVRegister]", ORMap(MVRegister()), ORMAP_OPS(MV_OPS), dict,
         _map_step(_mv_step, frozenset, _empty), _nonempty),
    Spec("ORMap[EWFlag]", ORMap(EWFlag()), ORMAP_OPS(FLAG_OPS), dict, _map_step(_flag_step, bool, _empty),
         _nonempty),
    Spec("ORMap[SortedSet]", ORMap(SortedSet()), ORMAP_OPS(ZSET_OPS), dict,
         _map_step(_zset_step, dict, _empty), lambda d: {f: _zset_view(z) for f, z in d.items()} or None),
    Spec("ORMap[ORMap[GCounter]]", ORMap(ORMap(GCounter())), ORMAP_OPS(ORMAP_OPS(GC_OPS)), dict,
         _map_step(_map_step(_gc_step, int, _never), dict, _empty), _nonempty),
]
SPEC_IDS = [s.id for s in SPECS]


@st.composite
def scenarios(draw, spec: Spec, max_steps: int = 25):
    """Random interleaving of local ops, state shipping and delta delivery on 2-3 replicas."""
    n = draw(st.integers(2, 3))
    rep = st.integers(0, n - 1)
    step = st.one_of(
        st.tuples(st.just("op"), rep, spec.ops, st.booleans()),
        st.tuples(st.just("op"), rep, spec.ops, st.booleans()),
        st.tuples(st.just("state"), rep, rep, st.booleans()),
        st.tuples(st.just("delta"), rep, st.integers(0, 10**6), st.booleans()),
        st.tuples(st.just("delete"), rep, st.none(), st.booleans()),
    )
    first = draw(st.tuples(st.just("op"), rep, spec.ops, st.just(False)))
    return n, [first] + draw(st.lists(step, max_size=max_steps - 1))


def run(spec: Spec, scenario, memo: bool = True):
    """Play a scenario. Returns (replicas, issued operands, every state seen)."""
    n, steps = scenario
    clock = Clock()
    reps = [Replica(spec.op, NODES[i], clock, memo) for i in range(n)]
    issued: List[bytes] = []
    states: List[bytes] = []
    for kind, a, b, flag in steps:
        if kind == "op":
            issued.append(reps[a].do(b, same=flag))
            states.append(reps[a].state)
        elif kind == "delete":
            issued.append(reps[a].delete())
            states.append(reps[a].state)
        elif kind == "state":
            if reps[a].state is not None:
                reps[b].receive(reps[a].state)
                states.append(reps[b].state)
        elif issued:
            reps[a].receive(issued[b % len(issued)])
            states.append(reps[a].state)
    return reps, issued, states


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# lattice laws


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@SETTINGS
@given(data=st.data())
def test_partial_merge_is_a_join(spec, data):
    _, issued, states = run(spec, data.draw(scenarios(spec)))
    pool = issued + states
    pick = st.sampled_from(pool)
    op = spec.op
    pm = op.partial_merge
    for _ in range(4):
        a, b, c = data.draw(pick), data.draw(pick), data.draw(pick)
        assert pm(a, b) == pm(b, a)
        assert pm(pm(a, b), c) == pm(a, pm(b, c))
        assert pm(a, a) == a
        # a join is an upper bound: joining again changes nothing
        ab = pm(a, b)
        assert pm(ab, a) == ab
        # applying a delta to a state equals joining the two
        assert op.full_merge(a, [b]) == ab


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@SETTINGS
@given(data=st.data())
def test_full_merge_equals_fold_and_partial(spec, data):
    _, issued, states = run(spec, data.draw(scenarios(spec)))
    op = spec.op
    base = data.draw(st.one_of(st.none(), st.sampled_from(states)))
    ops = data.draw(st.lists(st.sampled_from(issued), min_size=1, max_size=8))
    whole = op.full_merge(base, ops)
    folded = base
    for o in ops:
        folded = op.full_merge(folded, [o])
    assert whole == folded
    assert whole == op.full_merge(base, [functools.reduce(op.partial_merge, ops)])
    assert op.full_merge(base, []) == (op.full_merge(None, []) if base is None else base)
    # canonical: re-encoding a state is the identity
    assert op.full_merge(None, [whole]) == whole


# --------------------------------------------------------------------------
# convergence


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@SETTINGS
@given(data=st.data())
def test_replicas_converge(spec, data):
    reps, issued, _ = run(spec, data.draw(scenarios(spec)))
    if not issued:
        return
    op = spec.op
    rnd = data.draw(st.randoms(use_true_random=False))
    expected = op.full_merge(None, issued)
    for r in reps:
        mode = rnd.choice(["deltas", "batched", "states"])
        if mode == "deltas":  # every delta, permuted, some twice
            batch = issued + rnd.sample(issued, rnd.randint(0, len(issued)))
            rnd.shuffle(batch)
            for o in batch:
                r.receive(o)
        elif mode == "batched":  # deltas pre-combined with partial_merge in random groups
            batch = issued[:]
            rnd.shuffle(batch)
            while batch:
                k = rnd.randint(1, len(batch))
                r.receive(functools.reduce(op.partial_merge, batch[:k]))
                batch = batch[k:]
        else:  # states of the other replicas, then their missing deltas
            for other in rnd.sample(reps, len(reps)):
                if other.state is not None:
                    r.receive(other.state)
            for o in issued:
                r.receive(o)
    # a final random anti-entropy round of full states changes nothing
    for r in reps:
        for other in reps:
            r.receive(other.state)
    raw = {r.state for r in reps}
    assert raw == {expected}
    assert all(r.value == reps[0].value for r in reps)


# --------------------------------------------------------------------------
# sequential model (no concurrency: each op issued after seeing all before it)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@SETTINGS
@given(writers=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 7)), max_size=30), data=st.data())
def test_sequential_model(spec, writers, data):
    """Each write sees every earlier one: the values are those of a plain
    Python model, and a key delete takes the model back to its start."""
    clock = Clock()
    reps = [Replica(spec.op, NODES[i], clock) for i in range(3)]
    model = spec.init()
    last = None
    for who, what in writers:
        r = reps[who]
        if last is not None and r.state != last:
            r.receive(last)  # causally after every earlier op
        if what == 0:
            r.delete()
            model = spec.init()
            operation = "delete"
        else:
            operation = data.draw(spec.ops)
            r.do(operation)
            model = spec.step(model, operation)
        last = r.state
        assert r.value == spec.view(model), operation


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_decode_memo_never_changes_results(spec, data):
    scenario = data.draw(scenarios(spec))
    _, issued, states = run(spec, scenario, memo=True)
    _, issued2, states2 = run(spec, scenario, memo=False)
    assert issued == issued2 and states == states2
    op = spec.op
    op._memo = None
    values = [op.to_value(x) for x in states]
    for x in states:  # merges and reads through the memo leave cached states intact
        op.full_merge(x, issued)
        op.partial_merge(x, issued[-1])
    assert [op.to_value(x) for x in states] == values
    # white-box: a merge never mutates the memoized decoded state (other threads may be reading it)
    for x in states[-4:]:
        for d in issued[-3:]:
            for cached, merge in ((x, lambda: op.full_merge(x, [d, x, d])), (d, lambda: op.full_merge(x, [d, d])),
                                  (x, lambda: op.partial_merge(x, d)), (d, lambda: op.partial_merge(d, x))):
                op.to_value(cached)
                memo_bytes, memo_obj = op._memo
                snapshot = copy.deepcopy(memo_obj)
                merge()
                assert memo_obj == snapshot


def test_operators_are_thread_safe():
    """Four threads share one operator (and its memo); each result equals a memo-free replay."""
    spec = next(s for s in SPECS if s.id == "ORMap[ORSet]")
    reps = [Replica(spec.op, 10 + i, Clock()) for i in range(4)]
    rnd = random.Random(7)
    plans = [[ORMap.update(rnd.choice([b"f", b"g"]), rnd.choice([ORSet.add, ORSet.remove])(b"%d" % rnd.randrange(20)))
              for _ in range(150)] for _ in reps]
    issued: List[List[bytes]] = [[] for _ in reps]

    def work(i):
        for operation in plans[i]:
            issued[i].append(reps[i].do(operation))
            spec.op.to_value(reps[(i + 1) % 4].state or reps[i].state)  # churn the shared memo

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = ORMap(ORSet())
    for r, mine in zip(reps, issued):
        replay = None
        for d in mine:
            fresh._memo = None
            replay = fresh.full_merge(replay, [d])
        assert r.state == replay
    assert spec.op.full_merge(None, [r.state for r in reps]) == fresh.full_merge(None, sum(issued, []))


@pytest.mark.parametrize("spec_id", ["ORSet", "ORMap[ORSet]", "ORMap[PNCounter]", "GCounter", "SortedSet",
                                     "ORMap[ORMap[GCounter]]"])
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_memo_is_never_mutated_under_concurrent_merges(spec_id, data):
    """Readers hit the memo for S while a writer merges deltas into S: readers
    must always see S itself (a merge works on a copy of the memoized state)."""
    spec = next(s for s in SPECS if s.id == spec_id)
    op = spec.op
    (a,) = _reps(op, 1)
    for operation in data.draw(st.lists(spec.ops, min_size=40, max_size=60)):
        a.do(operation)
    base = a.state
    deltas = [a.do(operation) for operation in data.draw(st.lists(spec.ops, min_size=10, max_size=10))]
    expected = op.to_value(base)
    stop = threading.Event()
    errors: List[str] = []

    def reader():
        while not stop.is_set():
            if op.to_value(base) != expected:
                errors.append("reader saw a mutated state")
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for i in range(300):
            op.full_merge(base, [deltas[i % len(deltas)]])
            op.full_merge(base, [base, deltas[(i + 1) % len(deltas)]])
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors


# --------------------------------------------------------------------------
# bad input


def _other_op(op: MergeOperator) -> Operation:
    """An operation that ``op`` does not take."""
    return EWFlag.enable() if not isinstance(op, EWFlag) else ORSet.add(b"x")


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_wrong_operation_type(spec):
    op = spec.op
    ts = Timestamp(1, 0, 1)
    state = op.full_merge(None, [])
    bad_ops = [_other_op(op), 5, "str", None, ("add", b"x"), Operation(type(op), "bogus", ()),
               Operation(GSet, "add", (b"x",)) if not isinstance(op, GSet) else Operation(ORSet, "add", (b"x",))]
    for bad in bad_ops:
        assert op.needs_state(bad) is False
        with pytest.raises(MergeOperandError):
            op.make_operand(bad, state, ts)
    if isinstance(op, ORMap):
        with pytest.raises(MergeOperandError):  # an operation for another field type
            op.make_operand(ORMap.update(b"f", _other_op(op.field_type)), state, ts)


UNDECODABLE = [b"", b"\x02", b"\x01\x06\x00\x00", b"\x02\x06\x00\x01", b"\x02\x06\x00\x00\x00",
               b"\x02\x06\x80", b"\x02\x03\x01\x00\x00\x00", b"\x02\x03\x01\x80\x00\x01\x00",
               b"\x02\x03\x01\x00\x02\x03",  # removed total above the total
               b"\x02\x04\x01\x00\x00\x00\x00\x00",  # a zero PNCounter entry
               b"\x02\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x02\x09\x01\x00\x00\x00\x01\x00\x05",
               b"\x02\x01\x01\x05\x00\x01\x05\x00\x00",  # LWWRegister write not newer than its watermark
               b"\x02\x05\x01\x05\x01\x01\x01x\x04\x01",  # GSet member older than the watermark
               b"\x02\x05\x02\x00\x00"]  # bad watermark flag


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_undecodable_bytes(spec):
    op = spec.op
    good = op.full_merge(None, [])
    others = [s.op.full_merge(None, []) for s in SPECS if s.op.name != op.name]
    for bad in UNDECODABLE + others + [good + b"\x00", b"\x01" + good[1:], b"\x03" + good[1:],
                                       bytearray(b"\x02\x00")]:
        for call in (op.check_operand, op.to_value, lambda x: op.full_merge(None, [x]),
                     lambda x: op.full_merge(x, [good]), lambda x: op.partial_merge(good, x),
                     lambda x: op.make_operand(x, None, Timestamp(1, 0, 1))):
            with pytest.raises(MergeOperandError):
                call(bad)
    with pytest.raises(MergeOperandError):
        op.full_merge(None, ["not bytes"])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_corrupted_states_raise_only_merge_operand_error(spec, data):
    _, issued, states = run(spec, data.draw(scenarios(spec, max_steps=10)))
    op = spec.op
    good = data.draw(st.sampled_from(issued + states))
    # every strict prefix is invalid (the grammar is self-delimiting)
    for i in range(len(good)):
        with pytest.raises(MergeOperandError):
            op.check_operand(good[:i])
    # random byte edits: either decodes, or raises MergeOperandError; nothing else leaks
    for _ in range(10):
        b = bytearray(good)
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            b.insert(data.draw(st.integers(2, len(b))), data.draw(st.integers(0, 255)))
        bad = bytes(b)
        try:
            op.check_operand(bad)
        except MergeOperandError:
            continue
        op.to_value(bad)
        merged = op.full_merge(good, [bad])
        assert op.full_merge(None, [merged]) == merged


# --------------------------------------------------------------------------
# specific semantics


def _reps(op, n=3):
    clock = Clock()
    return [Replica(op, NODES[i], clock) for i in range(n)]


def test_orset_add_wins_and_remove_of_unseen_add():
    a, b, _ = _reps(ORSet())
    a.do(ORSet.add(b"x"))
    b.receive(a.state)
    b.do(ORSet.remove(b"x"))  # observed the first add
    a.do(ORSet.add(b"x"))  # concurrent re-add
    a.do(ORSet.add(b"y"))
    b.do(ORSet.remove(b"y"))  # b never saw y: no-op
    a.receive(b.state)
    b.receive(a.state)
    assert a.state == b.state
    assert a.value == {b"x", b"y"}


def test_orset_removes_leave_no_tombstones():
    (a,) = _reps(ORSet(), 1)
    empty = ORSet().full_merge(None, [])
    for i in range(500):
        a.do(ORSet.add(b"%d" % i))
        a.do(ORSet.remove(b"%d" % i))
    assert a.value is None  # nothing visible: the key reads as absent
    # only the header + one interval for the node remain
    assert len(a.state) < 20, a.state
    assert len(a.state) - len(empty) < 17


def test_orset_out_of_order_deltas_keep_unseen_adds():
    a, b, _ = _reps(ORSet())
    d1 = a.do(ORSet.add(b"x"))
    d2 = a.do(ORSet.add(b"y"))
    b.receive(d2)  # y's delta before x's: the context must not claim x's dot
    b.receive(d1)
    assert b.value == {b"x", b"y"}
    assert b.state == a.state


def test_mvregister_siblings_then_overwrite():
    a, b, c = _reps(MVRegister())
    a.do(MVRegister.set(b"1"))
    b.do(MVRegister.set(b"2"))
    c.receive(a.state)
    c.receive(b.state)
    assert c.value == {b"1", b"2"}
    c.do(MVRegister.set(b"3"))
    a.receive(c.state)
    assert a.value == {b"3"}
    b.do(MVRegister.set(b"4"))  # concurrent with 3, has seen only 2
    a.receive(b.state)
    assert a.value == {b"3", b"4"}


def test_lwwregister_ties_broken_by_node_id():
    r = LWWRegister()
    lo = r.make_operand(LWWRegister.set(b"low"), None, Timestamp(7, 3, 1))
    hi = r.make_operand(LWWRegister.set(b"high"), None, Timestamp(7, 3, 2))
    assert r.to_value(r.full_merge(None, [hi, lo])) == b"high"
    assert r.to_value(r.full_merge(None, [lo, hi])) == b"high"
    assert r.to_value(r.full_merge(None, [])) is None
    assert r.needs_state(LWWRegister.set(b"x")) is False


def test_counters_do_not_double_count_duplicates():
    for op, inc in ((GCounter(), GCounter.increment), (PNCounter(), PNCounter.increment)):
        (a,) = _reps(op, 1)
        d = a.do(inc(5))
        a.receive(d)
        a.receive(d)
        a.do(inc(2))
        a.receive(d)
        assert a.value == 7
    p = PNCounter()
    (a,) = _reps(p, 1)
    a.do(PNCounter.decrement(3))
    a.do(PNCounter.increment(-2))
    a.do(PNCounter.decrement(-1))
    assert a.value == -4


def test_pncounter_concurrent_nodes_add_up():
    reps = _reps(PNCounter())
    for i, r in enumerate(reps):
        r.do(PNCounter.increment(10 * (i + 1)))
        r.do(PNCounter.decrement(i))
    for r in reps:
        for o in reps:
            r.receive(o.state)
    assert {r.value for r in reps} == {60 - 3}


def test_ewflag_enable_wins():
    a, b, _ = _reps(EWFlag())
    a.do(EWFlag.enable())
    b.receive(a.state)
    b.do(EWFlag.disable())
    a.do(EWFlag.enable())
    a.receive(b.state)
    assert a.value is True
    b.receive(a.state)
    b.do(EWFlag.disable())
    a.receive(b.state)
    assert a.value is None  # disabled: absent


def test_sortedset_lww_score_and_range():
    z = SortedSet()
    a, b, _ = _reps(z)
    a.do(SortedSet.add(b"m", 1))
    b.do(SortedSet.add(b"m", 2))  # later timestamp, concurrent
    b.do(SortedSet.add(b"n", -1.5))
    b.do(SortedSet.add(b"o", 2))
    a.receive(b.state)
    assert a.value == [(b"n", -1.5), (b"m", 2.0), (b"o", 2.0)]
    assert SortedSet.range_by_score(a.state, -1.5, 1.9) == [(b"n", -1.5)]
    assert SortedSet.range_by_score(a.state, 2, 2) == [(b"m", 2.0), (b"o", 2.0)]
    assert SortedSet.range_by_score(a.state, 3, math.inf) == []
    assert SortedSet.range_by_score(None, 0, 1) == []
    a.do(SortedSet.remove(b"m"))
    assert [m for m, _ in a.value] == [b"n", b"o"]


def test_ormap_update_wins_over_concurrent_remove():
    m = ORMap(ORSet())
    a, b, _ = _reps(m)
    a.do(ORMap.update(b"f", ORSet.add(b"x")))
    b.receive(a.state)
    b.do(ORMap.remove(b"f"))
    a.do(ORMap.update(b"f", ORSet.add(b"y")))  # concurrent with the remove
    a.receive(b.state)
    b.receive(a.state)
    assert a.state == b.state
    assert a.value == {b"f": frozenset({b"y"})}  # the observed x is gone, y survives

    c = ORMap(PNCounter())
    a, b, _ = _reps(c)
    a.do(ORMap.update(b"n", PNCounter.increment(5)))
    b.receive(a.state)
    b.do(ORMap.remove(b"n"))
    a.do(ORMap.update(b"n", PNCounter.increment(1)))
    a.receive(b.state)
    assert a.value == {b"n": 6}  # update wins, with the value its writer had observed
    a.do(ORMap.remove(b"n"))
    a.do(ORMap.update(b"n", PNCounter.increment(2)))
    assert a.value == {b"n": 2}  # a re-created field starts from zero


def test_delete_keeps_the_context_and_stale_timestamps_are_refused():
    """A delete keeps the causal context, so a node's next dot claims only
    what came after it (never its own earlier dots again)."""
    s = ORSet()
    a, b, _ = _reps(s)
    a.do(ORSet.add(b"x"))
    b.receive(a.state)
    a.delete()
    assert a.value is None
    a.do(ORSet.add(b"y"))
    assert a.value == {b"y"}
    b.do(ORSet.add(b"z"))  # concurrent with the delete: b's own add survives it
    a.receive(b.state)
    assert a.value == {b"y", b"z"}
    with pytest.raises(MergeOperandError):  # a timestamp not newer than the node's last dot
        s.make_operand(ORSet.add(b"w"), a.state, Timestamp(1, 0, a.node))


# --------------------------------------------------------------------------
# deletes: the user-visible rule of each type


def _late_delete_same_either_way(op: MergeOperator, before: List[bytes], delete: bytes, after: List[bytes]):
    """The state is the same whether the delete is joined first, last, or
    after everything around it was folded into one state."""
    everything = before + [delete] + after
    one = op.full_merge(None, everything)
    folded = op.full_merge(None, before + after)
    assert op.full_merge(folded, [delete]) == one
    assert op.full_merge(op.full_merge(None, [delete]), [folded]) == one
    return one


def test_counter_delete_is_an_observed_reset():
    for op, inc in ((PNCounter(), PNCounter.increment), (GCounter(), GCounter.increment)):
        a, b, _ = _reps(op)
        d1 = a.do(inc(5))
        b.receive(a.state)  # b has seen the 5
        d2 = b.delete()
        d3 = a.do(inc(2))  # concurrent with the delete: survives it
        assert b.value is None
        one = _late_delete_same_either_way(op, [d1, d3], d2, [])
        assert op.to_value(one) == 2
        # the node keeps counting from its totals, never from 0
        b.receive(one)
        d4 = b.do(inc(1))
        assert b.value == 3
        assert op.to_value(op.full_merge(None, [d1, d2, d3, d4])) == 3
        # a delete that saw nothing removes nothing
        c = Replica(op, 77, a.clock)
        nothing = c.delete()
        assert op.to_value(op.full_merge(one, [nothing])) == 2


def test_pncounter_delete_removes_decrements_too():
    op = PNCounter()
    (a,) = _reps(op, 1)
    a.do(PNCounter.increment(3))
    a.do(PNCounter.decrement(10))
    assert a.value == -7
    a.delete()
    assert a.value is None
    a.do(PNCounter.decrement(1))
    assert a.value == -1


@pytest.mark.parametrize("cls", [ORSet, MVRegister, EWFlag])
def test_dot_based_delete_is_an_observed_remove(cls):
    op = cls()
    write = {ORSet: lambda: ORSet.add(b"x"), MVRegister: lambda: MVRegister.set(b"x"),
             EWFlag: lambda: EWFlag.enable()}[cls]
    a, b, _ = _reps(op)
    seen = a.do(write())
    b.receive(a.state)
    d = b.delete()  # observed `seen`
    unseen = a.do(write())  # concurrent with the delete: survives
    one = _late_delete_same_either_way(op, [seen, unseen], d, [])
    assert op.to_value(one) is not None
    assert op.to_value(op.full_merge(None, [seen, d])) is None
    # a delete issued after seeing everything removes everything
    b.receive(one)
    d2 = b.delete()
    assert op.to_value(op.full_merge(one, [d2])) is None


def test_ormap_delete_removes_observed_fields_and_keeps_concurrent_updates():
    m = ORMap(ORSet())
    a, b, _ = _reps(m)
    x = a.do(ORMap.update(b"f", ORSet.add(b"x")))
    b.receive(a.state)
    d = b.delete()
    y = a.do(ORMap.update(b"f", ORSet.add(b"y")))  # concurrent: survives
    z = a.do(ORMap.update(b"g", ORSet.add(b"z")))
    one = _late_delete_same_either_way(m, [x, y], d, [z])
    assert m.to_value(one) == {b"f": frozenset({b"y"}), b"g": frozenset({b"z"})}


@pytest.mark.parametrize("cls", [LWWRegister, GSet, SortedSet])
def test_timestamp_ordered_delete_is_a_watermark(cls):
    op = cls()
    write = {LWWRegister: lambda v: LWWRegister.set(v), GSet: lambda v: GSet.add(v),
             SortedSet: lambda v: SortedSet.add(v, 1.0)}[cls]
    a, b, _ = _reps(op)
    old = a.do(write(b"old"))
    # b never saw `old`: its delete removes it anyway (it is older)
    d = b.delete()
    new = a.do(write(b"new"))  # newer than the delete: survives
    one = _late_delete_same_either_way(op, [old, new], d, [])
    value = op.to_value(one)
    flat = {LWWRegister: lambda v: {v}, GSet: set, SortedSet: lambda v: {m for m, _s in v}}[cls](value)
    assert flat == {b"new"}
    # a re-add after the delete works
    b.receive(one)
    again = b.do(write(b"old"))
    assert b"old" in {LWWRegister: lambda v: {v}, GSet: set, SortedSet: lambda v: {m for m, _s in v}}[cls](
        op.to_value(op.full_merge(one, [again])))


def test_delete_operand_checks_what_a_received_delete_carries():
    t = Timestamp(5, 0, 3)
    for op in (ORSet(), MVRegister(), EWFlag(), ORMap(PNCounter()), PNCounter(), GCounter()):
        for missing in (None, b""):
            with pytest.raises(MergeOperandError):  # a context or totals are needed: never guessed
                op.delete_operand(missing, t)
        rem = op.removal(None, t)
        assert op.delete_operand(rem, t) == rem
    for op in (LWWRegister(), GSet(), SortedSet()):
        assert op.delete_operand(None, t) == op.delete_operand(b"", t) == op.removal(None, t)
        with pytest.raises(MergeOperandError):  # the watermark must be the record's own timestamp
            op.delete_operand(op.removal(None, Timestamp(4, 0, 3)), t)
    # a delete must not add anything
    s = ORSet()
    add = s.make_operand(ORSet.add(b"x"), None, t)
    with pytest.raises(MergeOperandError):
        s.delete_operand(add, t)
    c = PNCounter()
    inc = c.make_operand(PNCounter.increment(1), None, t)
    with pytest.raises(MergeOperandError):
        c.delete_operand(inc, t)
    with pytest.raises(MergeOperandError):
        s.delete_operand(b"garbage", t)


def test_names_needs_state_and_constructors():
    assert PNCounter().name == "abase.PNCounter.v1"
    assert ORMap(ORMap(PNCounter())).name == "abase.ORMap.v1[abase.ORMap.v1[abase.PNCounter.v1]]"
    assert repr(ORMap(PNCounter())) == "ORMap(PNCounter())"
    assert len({s.op.name for s in SPECS}) == len(SPECS)
    assert ORMap(GSet()) == ORMap(GSet()) and ORMap(GSet()) != ORMap(ORSet())
    expected = {
        LWWRegister.set(b"x"): False, MVRegister.set(b"x"): True, GCounter.increment(1): True,
        PNCounter.increment(1): True, PNCounter.decrement(1): True, GSet.add(b"x"): False,
        ORSet.add(b"x"): True, ORSet.remove(b"x"): True, SortedSet.add(b"x", 1): True,
        SortedSet.remove(b"x"): True, EWFlag.enable(): True, EWFlag.disable(): True,
    }
    for operation, needs in expected.items():
        assert operation.crdt().needs_state(operation) is needs, operation
        assert operation.crdt().needs_state(b"raw") is False
    assert ORMap(GSet()).needs_state(ORMap.update(b"f", GSet.add(b"x"))) is True
    assert ORMap(GSet()).needs_state(ORMap.remove(b"f")) is True
    assert repr(ORMap.update(b"f", PNCounter.increment(2))) == "ORMap.update(b'f', PNCounter.increment(2))"
    assert ORSet.add(bytearray(b"x")) == ORSet.add(b"x")
    with pytest.raises(TypeError):
        ORSet.add("x")
    with pytest.raises(TypeError):
        GCounter.increment(1.0)
    with pytest.raises(TypeError):
        PNCounter.increment(True)
    with pytest.raises(TypeError):
        SortedSet.add(b"x", "1")
    with pytest.raises(TypeError):
        ORMap.update(b"f", b"raw")
    with pytest.raises(TypeError):
        ORMap(object())
    with pytest.raises(MergeOperandError):
        GCounter.increment(-1)
    with pytest.raises(MergeOperandError):
        SortedSet.add(b"x", math.nan)
    assert SortedSet.add(b"x", -0.0).args[1] == 0.0
    with pytest.raises(TypeError):
        ORSet().make_operand(ORSet.add(b"x"), None, (1, 0, 1))


def test_raw_bytes_operands_and_mismatched_field_type():
    s = ORSet()
    (a,) = _reps(s, 1)
    d = a.do(ORSet.add(b"x"))
    assert s.make_operand(d, None, Timestamp(1, 0, 9)) == d
    assert s.make_operand(memoryview(d), None, Timestamp(1, 0, 9)) == d
    m1, m2 = ORMap(ORSet()), ORMap(GSet())
    state = m1.full_merge(None, [])
    with pytest.raises(MergeOperandError):
        m2.check_operand(state)
    with pytest.raises(MergeOperandError):
        ORMap(ORMap(ORSet())).check_operand(state)


def test_counter_overflow_is_rejected():
    g = GCounter()
    (a,) = _reps(g, 1)
    a.do(GCounter.increment(2**64 - 1))
    with pytest.raises(MergeOperandError):
        a.do(GCounter.increment(1))
    assert a.value == 2**64 - 1


def test_doctests():
    from abase_engine.crdt import counters, maps, registers, sets
    attempted = 0
    for mod in (crdt, counters, registers, sets, maps):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, mod.__name__
        attempted += result.attempted
    assert attempted > 30
