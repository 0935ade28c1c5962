"""Unit tests of the compactor: the fold rules (fold_lww, fold_merge) as pure
functions, and compaction through the engine (explicit, background, pinned by
snapshots, tombstone purge)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import Change, Op, SnapshotTooOldError, Timestamp
from abase_engine.compactor import fold_lww, fold_merge
from abase_engine.store import STATE, TOMBSTONE, VALUE

PUT, DELETE, MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)
PN = ae.crdt.PNCounter
C = PN()


def _open(path, **kw):
    kw.setdefault("compact_interval", None)
    return ae.open(path, node_id=kw.pop("node_id", 1), **kw)


# ------------------------------------------------------------ strategies

_stamps = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 3)), unique=True, min_size=0, max_size=12)


def _lww_versions(stamps, ops):
    out = []
    for (h, n), op in zip(stamps, ops):
        out.append((op, h, n, b"" if op == DELETE else b"v%d.%d" % (h, n)))
    return out


@st.composite
def lww_case(draw):
    stamps = draw(_stamps)
    ops = draw(st.lists(st.sampled_from([PUT, DELETE]), min_size=len(stamps), max_size=len(stamps)))
    return _lww_versions(stamps, ops)


def _operand(h, n):
    # a PNCounter delta of node n; deterministic per (hlc, node) so duplicates are exact copies
    rnd = random.Random(h * 7 + n)
    parts = []
    for _ in range(rnd.randrange(1, 3)):
        node = rnd.randrange(0, 4)
        op = PN.increment(rnd.randrange(1, 50)) if rnd.random() < 0.7 else PN.decrement(rnd.randrange(1, 9))
        parts.append(C.make_operand(op, None, Timestamp(1, 0, node)))
    return parts[0] if len(parts) == 1 else C.full_merge(None, parts)


@st.composite
def merge_case(draw):
    """PNCounter versions of one key: operands, puts of states, and deletes
    whose values are what they observed (a random subset of the others)."""
    stamps = draw(_stamps)
    ops = draw(st.lists(st.sampled_from([MERGE, MERGE, PUT, DELETE]), min_size=len(stamps), max_size=len(stamps)))
    out = []
    for (h, n), op in zip(stamps, ops):
        if op == DELETE:
            seen = [v for v in out if draw(st.booleans())]
            state = C.full_merge(None, [v[3] for v in seen]) if seen else None
            out.append((op, h, n, C.removal(state, Timestamp(h, 0, n))))
        else:
            out.append((op, h, n, _operand(h, n)))
    return out


def _shuffled_with_dups(versions, rnd):
    vs = list(versions) + [v for v in versions if rnd.random() < 0.4]
    rnd.shuffle(vs)
    return vs


# ---------------------------------------------------------------- fold_lww

def test_fold_lww_basics():
    assert fold_lww(None, []) is None
    assert fold_lww(None, [(PUT, 5, 1, b"a"), (PUT, 3, 9, b"b")]) == (VALUE, 5, 1, 0, 0, b"a")
    # greatest (hlc, node), not the last appended; node breaks ties
    assert fold_lww(None, [(PUT, 5, 2, b"x"), (PUT, 5, 1, b"y")])[5] == b"x"
    assert fold_lww(None, [(PUT, 4, 1, b"a"), (DELETE, 6, 1, b"")]) == (TOMBSTONE, 6, 1, 0, 0, b"")
    base = (VALUE, 10, 1, 0, 0, b"base")
    assert fold_lww(base, [(PUT, 9, 5, b"older")]) is base
    assert fold_lww(base, []) is base
    assert fold_lww(base, [(PUT, 10, 1, b"same ts")]) is base
    assert fold_lww(base, [(PUT, 10, 2, b"newer")])[5] == b"newer"


@settings(max_examples=300, deadline=None)
@given(lww_case(), st.randoms(use_true_random=False))
def test_property_fold_lww_order_and_duplicates_do_not_matter(versions, rnd):
    ref = fold_lww(None, versions)
    assert fold_lww(None, _shuffled_with_dups(versions, rnd)) == ref
    if versions:
        best = max(versions, key=lambda v: (v[1], v[2]))
        assert (ref[1], ref[2]) == (best[1], best[2])
        assert ref[0] == (TOMBSTONE if best[0] == DELETE else VALUE)


@settings(max_examples=300, deadline=None)
@given(lww_case(), st.integers(0, 12), st.randoms(use_true_random=False))
def test_property_fold_lww_split_equals_one_fold(versions, cut, rnd):
    rnd.shuffle(versions)
    a, b = versions[:cut], versions[cut:]
    assert fold_lww(fold_lww(None, a), b) == fold_lww(None, versions)


# -------------------------------------------------------------- fold_merge

def _val(stored):
    return None if stored is None or stored[0] == TOMBSTONE else C.to_value(stored[5])


def test_fold_merge_basics():
    inc = lambda k, n: C.make_operand(PN.increment(k), None, Timestamp(1, 0, n))  # noqa: E731
    assert fold_merge(C, None, []) is None
    r = fold_merge(C, None, [(MERGE, 1, 1, inc(5, 1)), (MERGE, 2, 2, inc(3, 2))])
    assert r[0] == STATE and (r[1], r[2]) == (2, 2) and (r[3], r[4]) == (0, 0) and C.to_value(r[5]) == 8
    # a delete removes what it observed (node 1's 5), not node 2's concurrent 3
    gone = C.removal(inc(5, 1), Timestamp(2, 0, 1))
    r = fold_merge(C, None, [(MERGE, 1, 1, inc(5, 1)), (DELETE, 2, 1, gone), (MERGE, 3, 2, inc(3, 2))])
    assert r[0] == STATE and (r[1], r[2]) == (3, 2) and (r[3], r[4]) == (0, 0) and C.to_value(r[5]) == 3
    # everything removed: a state that reads as absent, never a tombstone
    r = fold_merge(C, None, [(MERGE, 1, 1, inc(5, 1)), (DELETE, 2, 1, gone)])
    assert r[0] == STATE and (r[1], r[2]) == (2, 1) and _val(r) is None
    # the stored state joins like any other version
    assert fold_merge(C, r, [(MERGE, 3, 2, inc(3, 2))])[5] == fold_merge(
        C, None, [(MERGE, 1, 1, inc(5, 1)), (DELETE, 2, 1, gone), (MERGE, 3, 2, inc(3, 2))])[5]


class _Concat(ae.merge.MergeOperator):
    """A user operator whose deletes reset the key (the anchor rule)."""

    name = "test.Concat"

    def full_merge(self, base, operands):
        return (base or b"") + b"".join(sorted(operands))

    def partial_merge(self, left, right):
        return left + right


def test_fold_merge_of_an_operator_whose_deletes_reset():
    cat = _Concat()
    assert not cat.deletes_join
    r = fold_merge(cat, None, [(MERGE, 1, 1, b"a"), (DELETE, 2, 1, b""), (MERGE, 3, 2, b"b")])
    assert r[0] == STATE and (r[3], r[4]) == (2, 1) and r[5] == b"b"
    assert fold_merge(cat, None, [(MERGE, 1, 1, b"a"), (DELETE, 2, 1, b"")]) == (TOMBSTONE, 2, 1, 0, 0, b"")


@settings(max_examples=300, deadline=None)
@given(merge_case(), st.randoms(use_true_random=False))
def test_property_fold_merge_order_and_duplicates_do_not_matter(versions, rnd):
    ref = fold_merge(C, None, versions)
    got = fold_merge(C, None, _shuffled_with_dups(versions, rnd))
    assert got == ref
    # the state is the join of every version, deletes included
    assert (ref is None) == (not versions)
    if versions:
        assert ref[5] == C.full_merge(None, [v[3] for v in versions])


@settings(max_examples=300, deadline=None)
@given(merge_case(), st.integers(0, 12), st.randoms(use_true_random=False))
def test_property_fold_merge_split_in_any_order_equals_one_fold(versions, cut, rnd):
    """Compaction folds whatever the log holds when it runs; a delete that
    arrives after the versions around it were folded gives the same state."""
    rnd.shuffle(versions)
    a, b = versions[:cut], versions[cut:]
    assert fold_merge(C, fold_merge(C, None, a), b) == fold_merge(C, None, versions)


def test_fold_merge_split_with_late_older_delete():
    """The "Why" of issue 10 as pure folds: a delete (that observed node 2's
    5) between two operands arrives after both were folded together."""
    op1 = C.make_operand(PN.increment(5), None, Timestamp(1, 0, 2))
    op3 = C.make_operand(PN.increment(7), None, Timestamp(3, 0, 1))
    gone = C.removal(op1, Timestamp(2, 0, 3))
    a = [(MERGE, 1 << 16, 2, op1), (MERGE, 3 << 16, 1, op3)]
    b = [(DELETE, 2 << 16, 3, gone)]
    one = fold_merge(C, None, a + b)
    assert _val(one) == 7
    assert fold_merge(C, fold_merge(C, None, a), b) == one
    assert fold_merge(C, fold_merge(C, None, b), a) == one


def _replica(path, clk):
    db = _open(path, node_id=9, clock=lambda: clk[0])
    return db, db.namespace("c", merge=PN())


def test_replicas_agree_when_late_delete_arrives_after_compaction(tmp_path):
    clk = [1_000_000]
    op1 = C.make_operand(PN.increment(5), None, Timestamp(999_000, 0, 2))
    op3 = C.make_operand(PN.increment(7), None, Timestamp(999_002, 0, 3))
    m1 = Change("c", b"x", Op.MERGE, op1, Timestamp(999_000, 0, 2))
    m3 = Change("c", b"x", Op.MERGE, op3, Timestamp(999_002, 0, 3))
    # node 4 had seen node 2's increment when it deleted the key
    d2 = Change("c", b"x", Op.DELETE, C.removal(op1, Timestamp(999_001, 0, 4)), Timestamp(999_001, 0, 4))
    x, cx = _replica(tmp_path / "x", clk)
    y, cy = _replica(tmp_path / "y", clk)
    try:
        x.apply([m1, m3])
        x.compact(wait=True)
        x.apply([d2])
        y.apply([m1, m3, d2])
        assert cy.get(b"x") == 7
        assert cx.get(b"x") == cy.get(b"x")
        assert cx.get_raw(b"x") == cy.get_raw(b"x")
        x.compact(wait=True)
        y.compact(wait=True)
        assert cx.get_raw(b"x") == cy.get_raw(b"x") and cx.get(b"x") == 7
        assert x.digest("c") == y.digest("c")
    finally:
        x.close()
        y.close()


def test_lww_replicas_converge_when_late_delete_arrives_after_compaction(tmp_path):
    clk = [1_000_000]
    p1 = Change("", b"x", Op.PUT, b"one", Timestamp(999_000, 0, 2))
    p3 = Change("", b"x", Op.PUT, b"three", Timestamp(999_002, 0, 3))
    d2 = Change("", b"x", Op.DELETE, None, Timestamp(999_001, 0, 4))
    x, _ = _replica(tmp_path / "x", clk)
    y, _ = _replica(tmp_path / "y", clk)
    try:
        x.apply([p1, p3])
        x.compact(wait=True)
        x.apply([d2])
        y.apply([d2, p3, p1])
        assert x.get(b"x") == y.get(b"x") == b"three"
        x.compact(wait=True)
        y.compact(wait=True)
        assert x.get(b"x") == y.get(b"x") == b"three"
    finally:
        x.close()
        y.close()


# ------------------------------------------------------- engine compaction

def _history(db, ctr, rnd, n=1500):
    model, counts = {}, {}
    for i in range(n):
        r = rnd.random()
        k = b"k%03d" % rnd.randrange(200)
        if r < 0.55:
            v = b"v%d" % i * rnd.randrange(1, 6)
            db.put(k, v)
            model[k] = v
        elif r < 0.7:
            db.delete(k)
            model.pop(k, None)
        elif r < 0.95:
            c = b"c%d" % rnd.randrange(5)
            amt = rnd.randrange(1, 10)
            ctr.merge(c, PN.increment(amt))
            counts[c] = counts.get(c, 0) + amt
        else:
            c = b"c%d" % rnd.randrange(5)
            ctr.delete(c)
            counts.pop(c, None)
    return model, counts


def test_compaction_keeps_values_and_counts(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        ctr = db.namespace("ctr", merge=PN())
        model, counts = _history(db, ctr, random.Random(1))
        assert dict(db.scan()) == model and dict(ctr.scan()) == counts
        s0 = db.stats()
        assert s0["compactions"] == 0 and s0["sealed_segments"] >= 5
        n = db.compact(wait=True)
        assert n == s0["segments"]  # the active segment is sealed and folded too
        s1 = db.stats()
        assert s1["compactions"] == n and s1["compaction_passes"] == 1
        assert s1["segments"] == 0 and s1["index_keys"] == 0 and s1["compaction_errors"] == 0
        assert dict(db.scan()) == model and dict(ctr.scan()) == counts
        assert all(db.get(b"k%03d" % i) == model.get(b"k%03d" % i) for i in range(200))
        assert db.check() == []
        # more history on top of the compacted state, then a second compaction
        _history(db, ctr, random.Random(2), n=500)
        model2, counts2 = dict(db.scan()), dict(ctr.scan())
        assert db.compact(wait=True) >= 1
        assert dict(db.scan()) == model2 and dict(ctr.scan()) == counts2
        assert db.stats()["compactions"] > n
        assert db.compact(wait=True) == 0  # nothing left
    with _open(tmp_path, segment_size=4096) as db:
        ctr = db.namespace("ctr", merge=PN())
        assert db.recovery["records"] == 0
        assert dict(db.scan()) == model2 and dict(ctr.scan()) == counts2


def test_compaction_is_equivalent_to_no_compaction(tmp_path):
    rnd_seed = 5
    with _open(tmp_path / "a", segment_size=4096) as a, _open(tmp_path / "b", segment_size=4096) as b:
        ca, cb = a.namespace("ctr", merge=PN()), b.namespace("ctr", merge=PN())
        rnd_a, rnd_b = random.Random(rnd_seed), random.Random(rnd_seed)
        for step in range(6):
            _history(a, ca, rnd_a, n=300)
            _history(b, cb, rnd_b, n=300)
            if step % 2 == 0:
                a.compact(wait=True)
            assert dict(a.scan()) == dict(b.scan())
            assert dict(ca.scan()) == dict(cb.scan())


def test_snapshot_pins_segments_and_keeps_old_values(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        old = {b"k%03d" % i: b"old%d" % i for i in range(150)}
        for k, v in old.items():
            db.put(k, v)
        snap = db.snapshot()
        new = {b"k%03d" % i: b"new%d" % i for i in range(0, 150, 2)}
        for k, v in new.items():
            db.put(k, v)
        db.delete(b"k001")
        with db.batch() as b:
            for i in range(300):
                b.put(b"z%03d" % i, b"z")
        db.compact(wait=True)
        st_ = db.stats()
        assert st_["segments"] >= 1  # segments newer than the snapshot are held back
        assert st_["compactions"] >= 1  # ... but older ones were folded
        for k, v in old.items():
            assert snap.get(k) == v
        assert dict(snap.scan()) == old
        cur = {**old, **new}
        del cur[b"k001"]
        assert all(db.get(k) == cur.get(k) for k in old)
        snap.close()
        with pytest.raises(ae.EngineClosedError):
            snap.get(b"k000")
        db.compact(wait=True)
        assert db.stats()["segments"] == 0
        assert all(db.get(k) == cur.get(k) for k in old)


def test_read_at_compacted_history_is_snapshot_too_old(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        t1 = db.put(b"k", b"1")
        db.put(b"k", b"2")
        assert db.get(b"k", at=t1) == b"1"
        db.compact(wait=True)
        with pytest.raises(SnapshotTooOldError):
            db.get(b"k", at=t1)
        assert db.get(b"k") == b"2"


def test_background_compaction_reaches_same_state(tmp_path):
    rnd = random.Random(9)
    with _open(tmp_path / "bg", segment_size=4096, compact_interval=0.01) as db, \
            _open(tmp_path / "fg", segment_size=4096) as ref:
        ctr, rctr = db.namespace("ctr", merge=PN()), ref.namespace("ctr", merge=PN())
        for _ in range(5):
            seed = rnd.randrange(1 << 30)
            model, counts = _history(db, ctr, random.Random(seed), n=400)
            _history(ref, rctr, random.Random(seed), n=400)
            db.compact(wait=False)  # a hint; the thread also runs by itself
        db.compact(wait=True)  # joins the thread's pass lock: a full pass after it
        s = db.stats()
        assert s["compaction_errors"] == 0
        assert s["segments"] == 0 and s["index_keys"] == 0
        # same records, same segment boundaries: every segment was folded exactly once
        assert s["compactions"] == ref.stats()["segments"]
        assert dict(db.scan()) == dict(ref.scan())
        assert dict(ctr.scan()) == dict(rctr.scan())


def test_tombstones_purged_after_grace(tmp_path):
    clk = [10_000_000]
    with _open(tmp_path, clock=lambda: clk[0], tombstone_grace_ms=1000) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
        db.delete(b"a")
        db.compact(wait=True)
        assert db.stats()["store_keys"] == 2  # b and a's tombstone
        assert db.get(b"a") is None
        clk[0] += 500
        db.compact(wait=True)
        assert db.stats()["store_keys"] == 2  # within grace
        clk[0] += 1000
        db.compact(wait=True)
        assert db.stats()["store_keys"] == 1
        assert db.get(b"a") is None and db.get(b"b") == b"2"
        assert dict(db.scan()) == {b"b": b"2"}


def test_merge_namespace_delete_then_increment_across_compaction(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        c = db.namespace("c", merge=PN())
        c.merge(b"x", PN.increment(5))
        db.compact(wait=True)
        c.delete(b"x")
        assert c.get(b"x") is None
        db.compact(wait=True)
        assert c.get(b"x") is None
        c.merge(b"x", PN.increment(2))
        assert c.get(b"x") == 2
        db.compact(wait=True)
        assert c.get(b"x") == 2
        c.merge(b"x", PN.decrement(3))
        assert c.get(b"x") == -1
        db.compact(wait=True)
        assert c.get(b"x") == -1
