"""Deterministic resolution (DESIGN.md invariant 5) through ``Engine.apply``.

The visible value of a key is a pure function of the set of its records,
whatever their arrival order, duplication, or which layer (log or LMDB)
holds them. LWW picks the greatest ``(hlc, node id)``; a CRDT namespace joins
every record, deletes included (a delete's value is what it removed).

Every engine here runs on a :class:`FakeClock`, and records are stamped
relative to it, so the skew check and the tombstone grace are deterministic.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence

import pytest
from hypothesis import given, settings, strategies as st

import abase_engine as ae
from abase_engine import errors
from abase_engine.crdt import PNCounter
from abase_engine.record import Change, Op, Timestamp

from conftest import BASE_MS, FakeClock

T = BASE_MS
PN = PNCounter()


def ts(ms_before: int, logical: int = 0, node: int = 2) -> Timestamp:
    """A timestamp ``ms_before`` ms before the fake clock's start."""
    return Timestamp(T - ms_before, logical, node)


def put(key: bytes, value: bytes, t: Timestamp, ns: str = "") -> Change:
    return Change(ns, key, Op.PUT, value, t)


def delete(key: bytes, t: Timestamp, ns: str = "") -> Change:
    return Change(ns, key, Op.DELETE, None, t)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T)


@pytest.fixture
def engine(open_db, clock):
    """An engine on the fake clock; ``engine.reopen()`` closes and reopens it."""
    state = {}

    def _open():
        db = open_db(node_id=1, clock=clock, segment_size=4096)
        db.namespace("pn", merge=PNCounter()).get(b"warm-up")  # see test_api.py::test_check_right_after_namespace_creation
        state["db"] = db
        return db

    return _open


def _reopen(db: ae.Engine, clock: FakeClock, **kw) -> ae.Engine:
    db.close()
    new = ae.open(db.path, node_id=db.node_id, clock=clock, compact_interval=None, segment_size=4096, **kw)
    new.namespace("pn", merge=PNCounter()).get(b"warm-up")
    return new


# --------------------------------------------------------------------------
# LWW examples


@pytest.mark.parametrize("stage", ["log", "compacted", "reopened"])
def test_late_older_record_does_not_win(engine, clock, stage):
    db = engine()
    assert db.apply([put(b"k", b"new", ts(10))]) == 1
    if stage == "compacted":
        db.compact(wait=True)
    if stage == "reopened":
        db = _reopen(db, clock)
    try:
        assert db.apply([put(b"k", b"old", ts(20))]) == 0  # arrives late, older: changes nothing
        assert db.get(b"k") == b"new"
        db.compact(wait=True)
        assert db.get(b"k") == b"new"
        db = _reopen(db, clock)
        assert db.get(b"k") == b"new"
        assert db.apply([put(b"k", b"old", ts(20))]) == 0
        assert db.get(b"k") == b"new"
    finally:
        db.close()  # idempotent; the fixture closes the first engine too


def test_greater_timestamp_wins_even_if_appended_earlier(engine, clock):
    db = engine()
    # one call, newest first: the append order is the opposite of the HLC order
    assert db.apply([put(b"k", b"newest", ts(1)), put(b"k", b"older", ts(5)), put(b"k", b"oldest", ts(9))]) == 1
    assert db.get(b"k") == b"newest"
    # separate calls, newest first
    db.apply([put(b"j", b"newest", ts(1))])
    db.apply([put(b"j", b"older", ts(5))])
    assert db.get(b"j") == b"newest"
    # an older local write cannot exist (the clock moved past ts(1)), but a
    # local write after the receive is newer than everything received
    assert db.put(b"j", b"local") > ts(1)
    assert db.get(b"j") == b"local"
    db.compact(wait=True)
    assert (db.get(b"k"), db.get(b"j")) == (b"newest", b"local")


def test_equal_hlc_node_id_breaks_the_tie(engine, clock):
    db = engine()
    a = ts(5, 3, node=2)
    b = ts(5, 3, node=9)
    assert db.apply([put(b"k", b"from9", b)]) == 1
    assert db.apply([put(b"k", b"from2", a)]) == 0
    assert db.get(b"k") == b"from9"
    assert db.apply([put(b"j", b"from2", a)]) == 1
    assert db.apply([put(b"j", b"from9", b)]) == 1
    assert db.get(b"j") == b"from9"
    db.compact(wait=True)
    assert db.apply([put(b"k", b"from2-again", a)]) == 0
    assert (db.get(b"k"), db.get(b"j")) == (b"from9", b"from9")
    # a greater logical counter beats a greater node id
    assert db.apply([put(b"k", b"logical", ts(5, 4, node=0))]) == 1
    assert db.get(b"k") == b"logical"


@pytest.mark.parametrize("stage", ["log", "compacted", "reopened"])
def test_duplicates_are_idempotent(engine, clock, stage):
    db = engine()
    batch = [put(b"a", b"1", ts(9)), put(b"b", b"2", ts(8)), delete(b"c", ts(7)), put(b"a", b"3", ts(6))]
    assert db.apply(batch) == 4
    state = [db.get(k) for k in (b"a", b"b", b"c")]
    assert state == [b"3", b"2", None]
    if stage == "compacted":
        db.compact(wait=True)
    if stage == "reopened":
        db = _reopen(db, clock)
    try:
        assert db.apply(batch) == 0
        assert db.apply(list(reversed(batch)) + batch) == 0
        assert [db.get(k) for k in (b"a", b"b", b"c")] == state
        db.compact(wait=True)
        assert db.apply(batch) == 0
        assert [db.get(k) for k in (b"a", b"b", b"c")] == state
    finally:
        db.close()


def test_apply_returns_how_many_changed_anything(engine):
    db = engine()
    assert db.apply([]) == 0
    assert db.apply([put(b"a", b"1", ts(9)), put(b"a", b"0", ts(10)), put(b"b", b"1", ts(9))]) == 2
    assert db.apply(iter([put(b"a", b"2", ts(8)), put(b"a", b"2", ts(8))])) == 1


def test_apply_rejects_bad_records(engine):
    db = engine()
    with pytest.raises(TypeError):
        db.apply([("", b"k", Op.PUT, b"v", ts(1))])
    with pytest.raises(TypeError):
        db.apply([Change("", b"k", Op.PUT, b"v", (T, 0, 2))])
    with pytest.raises(TypeError):
        db.apply([Change(b"", b"k", Op.PUT, b"v", ts(1))])
    with pytest.raises(TypeError):
        db.apply([Change("", "k", Op.PUT, b"v", ts(1))])
    with pytest.raises(ValueError):
        db.apply([Change("", b"k", 9, b"v", ts(1))])
    with pytest.raises(errors.MergeOperandError):
        db.apply([Change("pn", b"k", Op.MERGE, b"not an operand", ts(1))])
    assert db.get(b"k") is None


@pytest.mark.parametrize("stage", ["log", "compacted", "reopened"])
def test_delete_beats_an_older_put_arriving_later(engine, clock, stage):
    db = engine()
    assert db.apply([put(b"k", b"v", ts(30)), delete(b"k", ts(10))]) == 2
    assert db.get(b"k") is None
    if stage == "compacted":
        db.compact(wait=True)
        assert db.stats()["store_keys"] == 1  # the tombstone is kept
    if stage == "reopened":
        db = _reopen(db, clock)
    try:
        assert db.apply([put(b"k", b"late", ts(20))]) == 0
        assert db.get(b"k") is None and b"k" not in db
        db.compact(wait=True)
        assert db.get(b"k") is None
        assert db.apply([put(b"k", b"later", ts(15))]) == 0
        assert db.get(b"k") is None
        assert list(db.scan()) == []
        # a newer put does win
        assert db.apply([put(b"k", b"newer", ts(5))]) == 1
        assert db.get(b"k") == b"newer"
    finally:
        db.close()


def test_tombstone_kept_for_the_grace_then_purged(open_db, clock):
    grace = 60_000
    db = open_db(node_id=1, clock=clock, tombstone_grace_ms=grace)
    db.apply([put(b"k", b"v", ts(30)), delete(b"k", ts(10)), put(b"keep", b"v", ts(30))])
    db.compact(wait=True)
    assert db.stats()["store_keys"] == 2  # the tombstone and b"keep"
    clock.advance(grace // 2)  # within the grace: kept, still beats late writes
    db.compact(wait=True)
    assert db.stats()["store_keys"] == 2
    assert db.apply([put(b"k", b"late", ts(20))]) == 0
    db.compact(wait=True)
    assert db.get(b"k") is None
    clock.advance(grace)  # the grace has passed
    db.compact(wait=True)
    assert db.stats()["store_keys"] == 1  # purged
    assert db.get(b"k") is None and db.get(b"keep") == b"v"
    assert list(db.scan()) == [(b"keep", b"v")]
    db._check()


def test_tombstone_purge_survives_reopen(db_path, clock):
    db = ae.open(db_path, clock=clock, compact_interval=None, tombstone_grace_ms=1000)
    db.apply([put(b"k", b"v", ts(30)), delete(b"k", ts(10))])
    db.compact(wait=True)
    db.close()
    clock.advance(5000)
    db = ae.open(db_path, clock=clock, compact_interval=None, tombstone_grace_ms=1000)
    try:
        assert db.stats()["store_keys"] == 1
        db.compact(wait=True)
        assert db.stats()["store_keys"] == 0
        assert db.get(b"k") is None
    finally:
        db.close()


# --------------------------------------------------------------------------
# PNCounter examples


class Node:
    """A replica that only sees its own operations: builds PNCounter operands
    by hand, as the engine would (``make_operand`` with the node's own state)."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.state: Dict[bytes, Optional[bytes]] = {}

    def inc(self, key: bytes, n: int, t: Timestamp, ns: str = "pn") -> Change:
        assert t.node_id == self.node_id
        op = PNCounter.increment(n) if n >= 0 else PNCounter.decrement(-n)
        cur = self.state.get(key)
        operand = PN.make_operand(op, cur, t)
        self.state[key] = PN.full_merge(cur, [operand])
        return Change(ns, key, Op.MERGE, operand, t)

    def see(self, change: Change) -> None:
        """Receive another node's record of the key (gossip)."""
        cur = self.state.get(change.key)
        self.state[change.key] = PN.full_merge(cur, [change.value])

    def delete(self, key: bytes, t: Timestamp, ns: str = "pn") -> Change:
        """A key delete as ``ns.delete`` writes it: removes what this node has seen."""
        assert t.node_id == self.node_id
        cur = self.state.get(key)
        removal = PN.removal(cur, t)
        self.state[key] = PN.full_merge(cur, [removal])
        return Change(ns, key, Op.DELETE, removal, t)


def test_counter_operands_in_any_order(engine, clock):
    n1, n2 = Node(1), Node(2)
    changes = [n1.inc(b"c", 5, ts(50, node=1)), n2.inc(b"c", 3, ts(49, node=2)),
               n1.inc(b"c", -2, ts(40, node=1)), n2.inc(b"c", 10, ts(30, node=2)),
               n1.inc(b"c", 1, ts(20, node=1))]
    expect = 5 + 3 - 2 + 10 + 1
    db = engine()
    pn = db.namespace("pn")
    assert db.apply(list(reversed(changes))) == 5
    assert pn.get(b"c") == expect
    raw = pn.get_raw(b"c")
    assert raw == PN.full_merge(None, [c.value for c in changes])  # canonical bytes
    assert db.apply(changes) == 0  # duplicates while in the log
    db.compact(wait=True)
    assert pn.get(b"c") == expect and pn.get_raw(b"c") == raw
    db.apply(changes[:2])  # duplicates after compaction: the value does not move
    assert pn.get(b"c") == expect and pn.get_raw(b"c") == raw
    db.compact(wait=True)
    assert pn.get(b"c") == expect and pn.get_raw(b"c") == raw


def test_counter_delete_removes_what_it_observed(engine, clock):
    n1, n3 = Node(1), Node(3)
    before = n1.inc(b"c", 5, ts(50, node=1))
    n3.see(before)
    gone = n3.delete(b"c", ts(30, node=3))  # observed node 1's 5
    after = n1.inc(b"c", 7, ts(20, node=1))  # cumulative: P = 12; 7 of it after the delete
    db = engine()
    pn = db.namespace("pn")
    db.apply([after, gone])
    assert pn.get(b"c") == 7
    db.apply([before])  # observed by the delete: removed, whenever it arrives
    assert pn.get(b"c") == 7
    db.compact(wait=True)
    db.apply([before, gone])
    assert pn.get(b"c") == 7
    n3.see(after)
    db.apply([n3.delete(b"c", ts(10, node=3))])  # a delete that has seen everything removes everything
    assert pn.get(b"c") is None and b"c" not in db.namespace("pn")
    assert pn.get_raw(b"c") is not None  # the removed totals are kept
    db.compact(wait=True)
    db.apply([after, before])
    assert pn.get(b"c") is None


def test_counter_delete_without_its_observed_totals_is_refused(engine):
    db = engine()
    for value in (None, b""):
        with pytest.raises(errors.MergeOperandError):
            db.apply([Change("pn", b"c", Op.DELETE, value, ts(5))])
    assert db.namespace("pn").get_raw(b"c") is None


# --------------------------------------------------------------------------
# property: arrival order, duplication and layers do not matter

KEYS = [b"a", b"b", b"c"]


@st.composite
def lww_histories(draw):
    """Records over few keys with unique (key, hlc, node); offsets may be a
    little ahead of the clock (within the skew)."""
    raw = draw(st.lists(st.tuples(st.sampled_from(KEYS), st.integers(-300, 30), st.integers(0, 2),
                                  st.integers(1, 3), st.sampled_from([Op.PUT, Op.PUT, Op.DELETE])),
                        min_size=1, max_size=25))
    seen = set()
    out = []
    for key, ms_before, logical, node, op in raw:
        t = ts(ms_before, logical, node)
        if (key, t) in seen:
            continue
        seen.add((key, t))
        value = None if op == Op.DELETE else b"%s@%d.%d.%d" % (key, t.physical_ms, logical, node)
        out.append(Change("", key, op, value, t))
    return out


def _lww_model(changes: Sequence[Change]) -> Dict[bytes, Optional[bytes]]:
    best: Dict[bytes, Change] = {}
    for c in changes:
        if c.key not in best or c.timestamp > best[c.key].timestamp:
            best[c.key] = c
    return {k: (None if c.op == Op.DELETE else c.value) for k, c in best.items()}


def _schedule(rnd: random.Random, changes: Sequence[Change], compact: bool = True) -> List[object]:
    """A random arrival order with duplicates, cut into apply() calls, with
    "compact" (unless ``compact`` is false) and "reopen" steps in between."""
    items = list(changes) + rnd.sample(list(changes), k=rnd.randint(0, len(changes)))
    rnd.shuffle(items)
    steps: List[object] = []
    i = 0
    while i < len(items):
        n = rnd.randint(1, 4)
        steps.append(items[i:i + n])
        i += n
        r = rnd.random()
        if r < 0.2:
            steps.append("compact" if compact else "reopen")
        elif r < 0.3:
            steps.append("reopen")
    return steps


class Replica:
    """An engine in its own temporary directory, on its own fake clock."""

    def __init__(self, node_id: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="abase-res-")
        self.clock = FakeClock(T)
        self.node_id = node_id
        self.db = self._open()

    def _open(self) -> ae.Engine:
        db = ae.open(self.dir, node_id=self.node_id, clock=self.clock, compact_interval=None, segment_size=4096)
        db.namespace("pn", merge=PNCounter()).get(b"warm-up")  # see test_api.py::test_check_right_after_namespace_creation
        return db

    def run(self, steps: Sequence[object]) -> None:
        for step in steps:
            if step == "compact":
                self.db.compact(wait=True)
            elif step == "reopen":
                self.db.close()
                self.db = self._open()
            else:
                self.db.apply(step)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@settings(max_examples=100, deadline=None)
@given(changes=lww_histories(), seed=st.integers(0, 2 ** 32 - 1))
def test_lww_is_a_function_of_the_set_of_records(changes, seed):
    rnd = random.Random(seed)
    expect = _lww_model(changes)
    replicas = [Replica(10), Replica(11)]
    try:
        for r in replicas:
            r.run(_schedule(rnd, changes))
        for r in replicas:
            got = {k: r.db.get(k) for k in KEYS}
            assert got == {k: expect.get(k) for k in KEYS}
            assert list(r.db.scan()) == sorted((k, v) for k, v in expect.items() if v is not None)
            # every record again, in yet another order: nothing changes
            again = list(changes)
            rnd.shuffle(again)
            assert r.db.apply(again) == 0
            r.db.compact(wait=True)
            assert {k: r.db.get(k) for k in KEYS} == got
            r.run(["reopen"])
            assert {k: r.db.get(k) for k in KEYS} == got
            r.db._check()
    finally:
        for r in replicas:
            r.close()


@st.composite
def counter_histories(draw, deletes: bool):
    """PNCounter operands built by three nodes that each see only their own
    updates, (sometimes) whole-state puts and, if ``deletes``, deletes."""
    nodes = {n: Node(n) for n in (1, 2, 3)}
    kinds = ["inc"] * 6 + ["put"] + (["delete", "gossip"] if deletes else [])
    events = draw(st.lists(st.tuples(st.sampled_from(KEYS[:2]), st.integers(1, 3), st.integers(-20, 20),
                                     st.sampled_from(kinds)),
                           min_size=1, max_size=20))
    out: List[Change] = []
    # each node's events get increasing timestamps; nodes interleave in HLC order
    ms = {1: 400, 2: 401, 3: 399}
    for key, node, amount, kind in events:
        ms[node] -= draw(st.integers(1, 15))
        t = ts(ms[node], 0, node)
        if kind == "inc":
            out.append(nodes[node].inc(key, amount, t))
        elif kind == "delete":  # removes what the node has seen of the key
            out.append(nodes[node].delete(key, t))
        elif kind == "gossip":  # the node sees some of the others' records
            for c in out:
                if c.key == key and draw(st.booleans()):
                    nodes[node].see(c)
        else:  # a whole state: a put joins like an operand in a merge namespace
            state = PN.full_merge(None, [PN.make_operand(PNCounter.increment(abs(amount) + 1), None, t)])
            out.append(Change("pn", key, Op.PUT, state, t))
    return out


def _counter_model(changes: Sequence[Change]) -> Dict[bytes, Optional[bytes]]:
    """The documented rule: the join of every record of the key, deletes
    (removal deltas) included."""
    out: Dict[bytes, Optional[bytes]] = {}
    for key in {c.key for c in changes}:
        out[key] = PN.full_merge(None, [c.value for c in changes if c.key == key])
    return out


def _check_counter_replicas(changes: Sequence[Change], seed: int, compact_midway: bool) -> None:
    rnd = random.Random(seed)
    expect = _counter_model(changes)
    replicas = [Replica(10), Replica(11)]
    try:
        for r in replicas:
            r.run(_schedule(rnd, changes, compact=compact_midway))
        snapshots = []
        for r in replicas:
            pn = r.db.namespace("pn")
            raw = {k: pn.get_raw(k) for k in KEYS[:2]}
            assert raw == {k: expect.get(k) for k in KEYS[:2]}
            assert {k: pn.get(k) for k in KEYS[:2]} == {
                k: (None if v is None else PN.to_value(v)) for k, v in raw.items()}
            r.db.compact(wait=True)
            assert {k: pn.get_raw(k) for k in KEYS[:2]} == raw
            r.run(["reopen"])
            pn = r.db.namespace("pn")
            assert {k: pn.get_raw(k) for k in KEYS[:2]} == raw
            again = list(changes)
            rnd.shuffle(again)
            r.db.apply(again)  # duplicates never double count
            assert {k: pn.get_raw(k) for k in KEYS[:2]} == raw
            r.db.compact(wait=True)
            assert {k: pn.get_raw(k) for k in KEYS[:2]} == raw
            r.db._check()
            snapshots.append(raw)
        assert snapshots[0] == snapshots[1]
    finally:
        for r in replicas:
            r.close()


@settings(max_examples=100, deadline=None)
@given(changes=counter_histories(deletes=False), seed=st.integers(0, 2 ** 32 - 1))
def test_pncounter_is_a_function_of_the_set_of_records(changes, seed):
    """Merges and puts only (a join): any order, duplicates, compaction and
    reopen at any point give the same bytes."""
    _check_counter_replicas(changes, seed, compact_midway=True)


@settings(max_examples=80, deadline=None)
@given(changes=counter_histories(deletes=True), seed=st.integers(0, 2 ** 32 - 1))
def test_pncounter_with_deletes_is_a_function_of_the_set_of_records(changes, seed):
    """With deletes that observed part of the history: any order, duplicates,
    compaction and reopen at any point give the same bytes."""
    _check_counter_replicas(changes, seed, compact_midway=True)


def test_late_delete_after_compaction_of_straddling_operands(open_db, clock, tmp_path):
    """The "Why" of issue 10: a delete whose timestamp lies between two
    operands arrives after both were folded into one stored state."""
    n1, n2, n3 = Node(1), Node(2), Node(3)
    older = n2.inc(b"c", 5, ts(30, node=2))  # {2: (5, 0)}
    n3.see(older)
    reset = n3.delete(b"c", ts(20, node=3))  # observed node 2's 5
    newer = n1.inc(b"c", 1, ts(10, node=1))  # {1: (1, 0)}
    expect = _counter_model([older, reset, newer])[b"c"]
    assert PN.to_value(expect) == 1

    def replica(name):
        db = open_db(str(tmp_path / name), node_id=9, clock=clock)
        return db, db.namespace("pn", merge=PNCounter())

    # every record in the log, then compacted
    db, pn = replica("in-order")
    db.apply([older, reset, newer])
    db.compact(wait=True)
    assert pn.get_raw(b"c") == expect
    ref = db.digest("pn")
    # the delete arrives after the operands around it were compacted
    db, pn = replica("late-delete")
    db.apply([older, newer])
    db.compact(wait=True)
    db.apply([reset])
    assert pn.get(b"c") == 1
    assert pn.get_raw(b"c") == expect
    db.compact(wait=True)
    assert pn.get_raw(b"c") == expect and db.digest("pn") == ref
