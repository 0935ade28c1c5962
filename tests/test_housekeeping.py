"""Namespace and range housekeeping: ``delete_range``, ``drop_namespace``,
``get_many``/``put_many`` on namespaces and snapshots (issue 14, item 5).

A range delete of an LWW namespace is exact: it hides every version older
than it in its range, whether the version is in the log or the store, and
whether it arrives before or after the delete (by ``apply``); newer versions
survive. It is replicated as a record, and engines that received the same
records in any order, compacting at different points, have equal digests.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

import abase_engine as ae
from abase_engine import Change, Op, Timestamp
from abase_engine.crdt import GCounter, ORSet, PNCounter
from abase_engine.errors import (
    InvalidRangeError,
    KeyTooLargeError,
    MergeOperandError,
    MergeOperatorMismatch,
    NamespaceNotFoundError,
    SnapshotTooOldError,
)


def _fill(db, n: int = 20, ns=None, prefix: bytes = b"k", value: bytes = b"v") -> None:
    target = db if ns is None else ns
    for i in range(n):
        target.put(b"%s%02d" % (prefix, i), b"%s%02d" % (value, i))


def _older(ts: Timestamp, ms: int = 1, node: int = 9) -> Timestamp:
    return Timestamp(ts.physical_ms - ms, 0, node)


def _newer_than_remote(db) -> Timestamp:
    """A remote timestamp just ahead of the engine's clock (within skew)."""
    now = db.now()
    return Timestamp(now.physical_ms + 1, 0, 9)


def _feed(db) -> List[Change]:
    return list(db.changes(include_applied=True))


# -- basic semantics --------------------------------------------------------------

def test_delete_range_bounds_and_newer_writes(open_db):
    db = open_db()
    _fill(db)
    ts = db.delete_range(b"k05", b"k10")
    assert isinstance(ts, Timestamp)
    assert [db.get(b"k%02d" % i) for i in (4, 5, 9, 10)] == [b"v04", None, None, b"v10"]
    assert b"k07" not in db
    with pytest.raises(KeyError):
        db[b"k07"]
    db.put(b"k07", b"again")
    assert db.get(b"k07") == b"again"
    assert [k for k, _ in db.scan()] == [b"k%02d" % i for i in range(20) if not 5 <= i < 10 or i == 7]
    assert [k for k, _ in db.scan(reverse=True)][:3] == [b"k19", b"k18", b"k17"]
    assert dict(db.scan(prefix=b"k0")) == {b"k00": b"v00", b"k01": b"v01", b"k02": b"v02", b"k03": b"v03",
                                            b"k04": b"v04", b"k07": b"again"}
    assert db.get_many([b"k04", b"k05", b"k07"]) == [b"v04", None, b"again"]
    assert len(db) == 16


def test_unbounded_ranges_and_empty_key(open_db):
    db = open_db()
    db.put(b"", b"empty")
    _fill(db, 5)
    assert db.delete_range(None, b"k02") is not None
    assert db.get(b"") is None and db.get(b"k01") is None and db.get(b"k02") == b"v02"
    db.delete_range(b"k03")
    assert list(db.keys()) == [b"k02"]
    db.compact()
    assert list(db.keys()) == [b"k02"] and db.get(b"") is None
    assert db.delete_range(b"x", b"x") is None  # an empty range writes nothing


def test_namespace_delete_range_leaves_other_namespaces(open_db):
    db = open_db()
    a, b = db.namespace("a"), db.namespace("b")
    _fill(db, 5, a)
    _fill(db, 5, b)
    _fill(db, 5)
    a.delete_range(b"k01", b"k04")
    db.delete_range(b"k00", b"k02", namespace="b")
    assert list(a.keys()) == [b"k00", b"k04"]
    assert list(b.keys()) == [b"k02", b"k03", b"k04"]
    assert len(db) == 5


def test_survives_compaction_and_restart(open_db, db_path):
    db = open_db(segment_size=4096)
    db.put_many([(b"k%03d" % i, b"x" * 40) for i in range(200)])
    db.compact()
    stored = db.stats()["store_keys"]
    assert stored >= 200
    ts = db.delete_range(b"k050", b"k150")
    db.put_many([(b"k1%02d" % i, b"new") for i in range(20)])  # k100..k119 again, newer than the delete
    db.compact()
    expected = {b"k%03d" % i: b"x" * 40 for i in range(200) if not 50 <= i < 150}
    expected.update({b"k1%02d" % i: b"new" for i in range(20)})
    assert dict(db.scan()) == expected
    assert db.stats()["store_keys"] < stored  # the compactor swept the covered stored versions
    db.close()
    db = open_db(segment_size=4096)
    assert dict(db.scan()) == expected
    late = Change("", b"k060", Op.PUT, b"late", _older(ts))
    assert db.apply([late]) == 0
    assert db.get(b"k060") is None
    db.compact()
    assert dict(db.scan()) == expected
    assert db.get_many([b"k049", b"k050", b"k101", b"k149", b"k150"]) == [b"x" * 40, None, b"new", None, b"x" * 40]
    db._check()


# -- late arrivals ---------------------------------------------------------------

@pytest.mark.parametrize("compact_between", [False, True])
def test_late_older_versions_stay_deleted_newer_survive(open_db, db_path, tmp_path, compact_between):
    db = open_db()
    _fill(db, 10)
    ts = db.delete_range(b"k02", b"k08")
    if compact_between:
        db.compact()
    changes = [Change("", b"k03", Op.PUT, b"old", _older(ts)),
               Change("", b"k04", Op.DELETE, None, _older(ts, 5)),
               Change("", b"k05", Op.PUT, b"tie-node", Timestamp(ts.physical_ms, ts.logical, 0)),
               Change("", b"k06", Op.PUT, b"newer", _newer_than_remote(db))]
    db.apply(changes)
    assert [db.get(k) for k in (b"k03", b"k04", b"k05", b"k06")] == [None, None, None, b"newer"]
    db.compact()
    db.close()
    db = open_db()
    assert [db.get(k) for k in (b"k03", b"k04", b"k05", b"k06")] == [None, None, None, b"newer"]
    assert dict(db.scan(start=b"k02", stop=b"k08")) == {b"k06": b"newer"}


@pytest.mark.parametrize("digests", [False, True])
def test_apply_after_the_c_apply_path_took_the_namespace(tmp_path, digests):
    """The C apply path remembers which namespaces it takes; once one gets a
    range tombstone, a late older record for it must be hidden (the general
    path checks tombstones) and the digests must not count it."""
    a = ae.open(str(tmp_path / "a"), node_id=1, compact_interval=None, digests=digests)
    b = ae.open(str(tmp_path / "b"), node_id=2, compact_interval=None, digests=digests)
    try:
        old = _older(b.now(), 50)
        warm = [Change("", b"j0", Op.PUT, b"x", _newer_than_remote(b))]
        for db in (a, b):
            db.apply(warm)  # the C path takes the default namespace (and caches that)
        ts = b.delete_range(b"k", b"l")
        a.apply([ch for ch in b.changes(include_applied=True) if ch.op == Op.DELETE_RANGE])
        assert b.apply([Change("", b"k1", Op.PUT, b"old", old)]) == 0
        assert b.get(b"k1") is None and old < ts
        assert a.digest() == b.digest()
    finally:
        a.close()
        b.close()


def test_delete_range_arriving_after_the_versions_it_hides(open_db, tmp_path):
    """B holds versions first and compacts them; A's range delete, older than
    some of B's versions and newer than others, arrives later."""
    a = open_db(str(tmp_path / "a"), node_id=1)
    b = open_db(str(tmp_path / "b"), node_id=2)
    _fill(b, 10)
    b.compact()
    a.apply(_feed(b))
    ts = a.delete_range(b"k00", b"k05")
    a.put(b"zz", b"tick")  # b learns a timestamp past the delete, not the delete itself
    b.apply([c for c in _feed(a) if c.key == b"zz"])
    after = b.put(b"k01", b"after")
    assert after > ts
    b.apply([c for c in _feed(a) if c.op == Op.DELETE_RANGE])
    assert b.get(b"k00") is None and b.get(b"k04") is None and b.get(b"k05") == b"v05"
    assert b.get(b"k01") == b"after"
    b.compact()
    assert [k for k, _ in b.scan()] == [b"k01", b"k05", b"k06", b"k07", b"k08", b"k09", b"zz"]


# -- replication and digests --------------------------------------------------------

def _history(tmp_path) -> Tuple[List[Change], Dict[bytes, bytes]]:
    """Records of a history with range deletes, and the visible state after it."""
    db = ae.open(str(tmp_path / "src"), node_id=1, compact_interval=None, segment_size=4096)
    try:
        _fill(db, 30)
        db.delete(b"k03")
        db.delete_range(b"k05", b"k15")
        db.put(b"k07", b"back")
        _fill(db, 5, prefix=b"k2", value=b"w")
        db.delete_range(b"k20", b"k22")
        records = _feed(db)
        state = dict(db.scan())
        return records, state
    finally:
        db.close()


@settings(max_examples=15)
@given(seed=st.integers(0, 10 ** 6), cuts=st.lists(st.integers(0, 60), max_size=3))
def test_same_records_any_order_equal_digests(tmp_path_factory, seed, cuts):
    tmp = tmp_path_factory.mktemp("dig")
    records, state = _history(tmp)
    assert any(r.op == Op.DELETE_RANGE for r in records)
    order = list(records)
    random.Random(seed).shuffle(order)
    a = ae.open(str(tmp / "a"), node_id=2, compact_interval=None, segment_size=4096)
    b = ae.open(str(tmp / "b"), node_id=3, compact_interval=None, segment_size=4096)
    try:
        a.apply(records)  # in feed order, one call
        a.compact()
        start = 0
        for cut in sorted(set(cuts)) + [len(order)]:
            for ch in order[start:cut]:
                b.apply([ch])
            start = max(start, cut)
            b.compact()
        assert dict(a.scan()) == state
        assert dict(b.scan()) == state
        assert a.digest("") == b.digest("")
        for path in [(i,) for i in range(16)]:
            assert a.digest("", path) == b.digest("", path)
    finally:
        a.close()
        b.close()


def test_digest_counts_hidden_versions_as_absent_before_and_after_compaction(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"), node_id=1, digests=True)
    b = open_db(str(tmp_path / "b"), node_id=2)
    _fill(a, 10)
    a.delete_range(b"k02", b"k06")
    b.apply(_feed(a))
    assert a.digest("") == b.digest("")
    a.compact()
    assert a.digest("") == b.digest("")
    # anti-entropy: records() carries the range delete, so a third replica catches up
    c = open_db(str(tmp_path / "c"), node_id=3)
    c.apply([r for r in _feed(b) if r.op == Op.PUT])  # the puts, not the range delete
    assert c.digest("") != a.digest("")
    recs = [r for p in ((x, y, z) for x in range(16) for y in range(16) for z in range(16))
            for r in a.records("", p)]
    assert any(r.op == Op.DELETE_RANGE for r in recs)
    c.apply(recs)
    assert dict(c.scan()) == dict(a.scan())
    assert c.digest("") == a.digest("")


def test_feed_and_listeners_carry_the_range_delete(open_db, tmp_path):
    db = open_db()
    seen: List[Change] = []
    db.on_commit(seen.extend)
    ts = db.delete_range(b"a", None, namespace=db.namespace("ns"))
    ch = [c for c in db.changes() if c.op == Op.DELETE_RANGE]
    assert [(c.namespace, c.key, c.value, c.timestamp) for c in ch] == [("ns", b"a", None, ts)]
    assert [(c.namespace, c.key, c.op, c.value) for c in seen] == [("ns", b"a", Op.DELETE_RANGE, None)]
    other = open_db(str(tmp_path / "o"), node_id=2)
    other.apply([Change("ns", b"b", Op.PUT, b"1", _older(ts)), Change("ns", b"A", Op.PUT, b"1", _older(ts))])
    assert other.apply(ch) == 1
    assert other.apply(ch) == 0  # idempotent
    assert list(other.namespace("ns").keys()) == [b"A"]


def test_concurrent_writes_range_deletes_and_background_compaction(open_db, db_path):
    """Writers, range deletes and the compactor thread at once: the end state
    is what the timestamps say, before and after a restart."""
    import threading

    db = open_db(segment_size=8192, compact_interval=0.005)
    lock = threading.Lock()
    latest: Dict[bytes, Tuple[Timestamp, bytes]] = {}
    tombs: List[Tuple[bytes, bytes, Timestamp]] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(1500):
            key = b"k%03d" % rng.randrange(300)
            value = b"%d-%d" % (seed, i)
            ts = db.put(key, value)
            with lock:
                if key not in latest or ts > latest[key][0]:
                    latest[key] = (ts, value)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    rng = random.Random(99)
    for _ in range(30):
        lo = rng.randrange(300)
        start, stop = b"k%03d" % lo, b"k%03d" % (lo + rng.randrange(1, 40))
        tombs.append((start, stop, db.delete_range(start, stop)))
    for t in threads:
        t.join()
    expected = {k: v for k, (ts, v) in latest.items()
                if not any(s <= k < e and ts < t for s, e, t in tombs)}
    assert dict(db.scan()) == expected
    db.compact()
    assert dict(db.scan()) == expected
    assert db.get_many(sorted(latest)) == [expected.get(k) for k in sorted(latest)]
    db.close()
    db = open_db()
    assert dict(db.scan()) == expected
    db._check()


# -- snapshots ----------------------------------------------------------------------

def test_snapshots_see_before_the_delete(open_db):
    db = open_db(segment_size=4096)
    _fill(db, 10)
    with db.snapshot() as before:
        db.delete_range(b"k00", b"k05")
        db.compact()  # the snapshot holds the history back
        assert before.get(b"k01") == b"v01"
        assert before.get_many([b"k01", b"k07", b"zz"]) == [b"v01", b"v07", None]
        assert len(list(before.scan())) == 10
        with db.snapshot() as after:
            assert after.get(b"k01") is None
            assert after.get_many([b"k01", b"k07"]) == [None, b"v07"]
            assert [k for k, _ in after.scan()] == [b"k%02d" % i for i in range(5, 10)]


def test_reads_before_a_compacted_range_delete_are_too_old(open_db):
    db = open_db()
    _fill(db, 5)
    old = db.now()
    db.delete_range(b"k00", b"k03")
    assert db.get(b"k01", at=old) == b"v01"  # not compacted yet: exact
    db.compact()
    with pytest.raises(SnapshotTooOldError):
        db.get(b"k01", at=old)
    with pytest.raises(SnapshotTooOldError):
        list(db.scan(at=old))
    assert db.get(b"k04", at=db.now()) == b"v04"


# -- drop_namespace -------------------------------------------------------------------

def test_drop_lww_namespace_then_reuse(open_db, db_path):
    db = open_db()
    ns = db.namespace("t")
    _fill(db, 10, ns)
    db.compact()
    _fill(db, 3, ns, prefix=b"j")
    assert db.drop_namespace("t") is not None
    assert list(ns.scan()) == [] and ns.get(b"k01") is None
    assert "t" in db.namespaces()  # it stays defined (see housekeeping.py)
    ns.put(b"k01", b"new")
    db.close()
    db = open_db()
    ns = db.namespace("t")
    assert dict(ns.scan()) == {b"k01": b"new"}
    db.compact()
    assert dict(ns.scan()) == {b"k01": b"new"}
    with pytest.raises(MergeOperatorMismatch):
        db.namespace("t", merge=GCounter())


def test_drop_default_namespace(open_db):
    db = open_db()
    _fill(db, 5)
    db.drop_namespace("")
    assert len(db) == 0 and db.get_many([b"k01"]) == [None]
    db.put(b"k01", b"x")
    assert db[b"k01"] == b"x"


def test_crdt_range_delete_is_observed_remove(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"), node_id=1)
    b = open_db(str(tmp_path / "b"), node_id=2)
    ca = a.namespace("c", merge=PNCounter())
    cb = b.namespace("c", merge=PNCounter())
    for i in range(6):
        ca.merge(b"n%d" % i, PNCounter.increment(i + 1))
    b.apply(_feed(a))
    cb.merge(b"n1", PNCounter.increment(100))  # not seen by a's delete
    ts = ca.delete_range(b"n0", b"n4")
    assert isinstance(ts, Timestamp)
    assert ca.get_many([b"n0", b"n3", b"n4"]) == [None, None, 5]
    a.apply([c for c in _feed(b) if c.timestamp.node_id == 2])
    b.apply([c for c in _feed(a) if c.timestamp.node_id == 1])
    assert ca.get(b"n1") == 100 and cb.get(b"n1") == 100  # add-wins: the unseen increment survives
    assert cb.get(b"n2") is None and cb.get(b"n5") == 6
    assert a.digest("c") == b.digest("c")
    assert not any(c.op == Op.DELETE_RANGE for c in _feed(a))  # point deletes, not a range record


def test_drop_crdt_namespace(open_db, db_path):
    db = open_db()
    s = db.namespace("s", merge=ORSet())
    for i in range(5):
        s.merge(b"k%d" % i, ORSet.add(b"x"))
    db.drop_namespace("s")
    assert list(s.scan()) == []
    s.merge(b"k1", ORSet.add(b"y"))
    assert s.get(b"k1") == {b"y"}
    db.close()
    db = open_db()
    with pytest.raises(MergeOperatorMismatch):  # its operator is needed to delete its keys
        db.drop_namespace("s")
    db.namespace("s", merge=ORSet())
    db.drop_namespace("s")
    assert list(db.namespace("s").scan()) == []


def test_range_records_for_merge_namespaces_are_refused(open_db):
    db = open_db()
    db.namespace("c", merge=GCounter())
    with pytest.raises(MergeOperandError):
        db.apply([Change("c", b"a", Op.DELETE_RANGE, b"b", db.now())])


# -- bad input ------------------------------------------------------------------------

def test_bad_input(open_db):
    db = open_db()
    db.put(b"a", b"1")
    for start, stop in [(1, None), (None, "z"), ([b"a"], None), (b"a", 3.0)]:
        with pytest.raises(TypeError):
            db.delete_range(start, stop)
    with pytest.raises(InvalidRangeError):
        db.delete_range(b"b", b"a")
    assert issubclass(InvalidRangeError, ValueError)
    with pytest.raises(KeyTooLargeError):
        db.delete_range(b"a", b"z" * 600)
    with pytest.raises(NamespaceNotFoundError):
        db.drop_namespace("nope")
    with pytest.raises(NamespaceNotFoundError):
        db.delete_range(b"a", b"b", namespace="nope")
    assert "nope" not in db.namespaces()
    with pytest.raises(TypeError):
        db.drop_namespace(5)
    with pytest.raises(TypeError):
        db.delete_range(b"a", b"b", namespace=5)
    # a bad record in apply: nothing of the call is applied
    with pytest.raises(InvalidRangeError):
        db.apply([Change("", b"a", Op.DELETE, None, _newer_than_remote(db)),
                  Change("", b"z", Op.DELETE_RANGE, b"a", db.now())])
    assert db.get(b"a") == b"1"
    with pytest.raises(TypeError):
        db.apply([Change("", 5, Op.DELETE_RANGE, None, db.now())])
    assert db.get(b"a") == b"1"
    db.close()
    with pytest.raises(ae.EngineClosedError):
        db.delete_range(b"a", b"b")


def test_other_engines_namespace_is_refused(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"))
    b = open_db(str(tmp_path / "b"))
    with pytest.raises(ValueError):
        a.delete_range(None, None, namespace=b.namespace("x"))


# -- fast path ------------------------------------------------------------------------

def test_fast_path_is_held_only_where_ranges_exist(open_db):
    db = open_db()
    plain, ranged = db.namespace("plain"), db.namespace("ranged")
    ranged.delete_range(b"a", b"b")
    assert db._fastpaths.path_of(plain).enabled
    assert not db._fastpaths.path_of(ranged).enabled
    assert db._fastpaths.path_of(db.namespace("")).enabled
    db.close()
    db = open_db()
    assert not db._fastpaths.path_of(db.namespace("ranged")).enabled
    assert db._fastpaths.path_of(db.namespace("plain")).enabled


# -- get_many / put_many ----------------------------------------------------------------

def test_put_many_get_many_on_namespaces(open_db):
    db = open_db()
    ns = db.namespace("lww")
    ts = ns.put_many([(b"a", b"1"), (b"b", b"2"), (bytearray(b"c"), memoryview(b"3"))])
    assert isinstance(ts, Timestamp)
    assert ns.get_many([b"a", b"b", b"c", b"d"]) == [b"1", b"2", b"3", None]
    assert ns.put_many([]) is None
    assert db.get_many([b"a"]) == [None]  # another namespace
    with pytest.raises(TypeError):
        ns.put_many([(b"x", b"1"), (b"y", 2)])
    assert ns.get(b"x") is None  # atomic: nothing of the bad batch
    with pytest.raises(TypeError):
        ns.get_many([b"a", 5])
    db.compact()
    assert ns.get_many([b"a", b"c"]) == [b"1", b"3"]
    c = db.namespace("c", merge=GCounter())
    state_ns = db.namespace("c2", merge=GCounter())
    c.merge(b"k", GCounter.increment(2))
    state = c.get_raw(b"k")
    state_ns.put_many([(b"k", state), (b"j", state)])
    assert state_ns.get_many([b"k", b"j", b"z"]) == [2, 2, None]
    with pytest.raises(MergeOperandError):
        state_ns.put_many([(b"m", state), (b"n", b"\xff\xfe garbage")])
    assert state_ns.get(b"m") is None


def test_snapshot_get_many_namespaces(open_db):
    db = open_db()
    ns = db.namespace("n")
    ns.put_many([(b"a", b"1")])
    with db.snapshot() as snap:
        ns.put(b"a", b"2")
        assert snap.get_many([b"a", b"b"], namespace="n") == [b"1", None]
        assert snap.get_many([b"a"], namespace=ns) == [b"1"]
        assert snap.get_many([]) == []
    with pytest.raises(ae.EngineClosedError):
        snap.get_many([b"a"])


# -- the tombstone map ---------------------------------------------------------------------

_VIEW_KEYS = [b"", b"a", b"ab", b"b", b"ba", b"bb", b"c", b"z", b"\xff"]
_tomb = st.tuples(st.sampled_from(_VIEW_KEYS), st.one_of(st.none(), st.sampled_from(_VIEW_KEYS)),
                  st.integers(1, 30), st.integers(0, 3))


@given(tombs=st.lists(_tomb, min_size=1, max_size=12, unique_by=lambda t: (t[2], t[3])),
       at=st.tuples(st.integers(0, 31), st.integers(0, 3)))
def test_range_view_agrees_with_brute_force(tombs, at):
    from abase_engine.ranges import RangeView, _Tombstone
    made = [_Tombstone(min(s, e) if e is not None else s, max(s, e) if e is not None else None, (h, n), False)
            for s, e, h, n in tombs]
    view = RangeView(made)
    for key in _VIEW_KEYS + [b"a\x00", b"zz"]:
        covering = [t.stamp for t in made if t.start <= key and (t.stop is None or key < t.stop)]
        assert view.cut(key) == max(covering, default=None)
        assert view.cut(key, at) == max((c for c in covering if c <= at), default=None)


# -- model ------------------------------------------------------------------------------

_KEYS = [b"", b"a", b"ab", b"b", b"ba", b"c", b"\xff"]
keys_st = st.sampled_from(_KEYS)
bounds_st = st.one_of(st.none(), keys_st)


class RangeMachine(RuleBasedStateMachine):
    """The engine against a model: per key its greatest (timestamp, value or
    None) and the list of range tombstones; a version is visible unless a
    tombstone newer than it covers its key."""

    keys = Bundle("keys")

    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="abase-ranges-")
        self.db = ae.open(self.dir, node_id=1, compact_interval=None, segment_size=4096)
        self.versions: Dict[bytes, Tuple[Timestamp, Optional[bytes]]] = {}
        self.tombs: List[Tuple[bytes, Optional[bytes], Timestamp]] = []
        self.snap = None
        self.snap_expected: Dict[bytes, bytes] = {}

    def teardown(self) -> None:
        if getattr(self, "db", None) is not None:
            if self.snap is not None:
                self.snap.close()
            self.db.close()
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    def _record(self, key: bytes, ts: Timestamp, value: Optional[bytes]) -> None:
        cur = self.versions.get(key)
        if cur is None or ts > cur[0]:
            self.versions[key] = (ts, value)

    def _expected(self) -> Dict[bytes, bytes]:
        out = {}
        for k, (ts, v) in self.versions.items():
            hidden = any(s <= k and (e is None or k < e) and ts < t for s, e, t in self.tombs)
            if v is not None and not hidden:
                out[k] = v
        return out

    @rule(target=keys, k=keys_st, v=st.binary(max_size=30))
    def put(self, k, v):
        self._record(k, self.db.put(k, v), v)
        return k

    @rule(k=keys)
    def delete(self, k):
        self._record(k, self.db.delete(k), None)

    @rule(start=bounds_st, stop=bounds_st)
    def delete_range(self, start, stop):
        lo = b"" if start is None else start
        if stop is not None and lo > stop:
            with pytest.raises(InvalidRangeError):
                self.db.delete_range(start, stop)
            return
        ts = self.db.delete_range(start, stop)
        if ts is not None:
            self.tombs.append((lo, stop, ts))

    @precondition(lambda self: self.snap is None)  # a snapshot would see a late record older than it
    @rule(k=keys_st, v=st.binary(max_size=10), back=st.integers(0, 50), node=st.integers(0, 20))
    def late_apply(self, k, v, back, node):
        """A record from another replica, possibly older than local writes
        and range deletes."""
        now = self.db.now()
        ts = Timestamp(max(now.physical_ms - back, 1), 0, node)
        self.db.apply([Change("", k, Op.PUT, v, ts)])
        self._record(k, ts, v)

    @rule()
    def compact(self):
        self.db.compact()

    @precondition(lambda self: self.snap is None)
    @rule()
    def reopen(self):
        self.db.close()
        self.db = ae.open(self.dir, node_id=1, compact_interval=None, segment_size=4096)

    @precondition(lambda self: self.snap is None)
    @rule()
    def take_snapshot(self):
        self.snap = self.db.snapshot()
        self.snap_expected = self._expected()

    @precondition(lambda self: self.snap is not None)
    @rule()
    def check_and_close_snapshot(self):
        assert dict(self.snap.scan()) == self.snap_expected
        assert self.snap.get_many(_KEYS) == [self.snap_expected.get(k) for k in _KEYS]
        self.snap.close()
        self.snap = None

    @invariant()
    def agrees(self):
        if not hasattr(self, "db"):
            return
        expected = self._expected()
        assert dict(self.db.scan()) == expected
        assert self.db.get_many(_KEYS) == [expected.get(k) for k in _KEYS]
        assert [k for k, _ in self.db.scan(reverse=True)] == sorted(expected, reverse=True)


TestRangeMachine = RangeMachine.TestCase
TestRangeMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# -- the command-line tool ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_dump_load_carries_range_deletes(tmp_path, capsys, fmt):
    from abase_engine.cli import main

    src, copy, out = str(tmp_path / "src"), str(tmp_path / "copy"), tmp_path / f"dump.{fmt}"
    with ae.open(src, node_id=1, compact_interval=None) as db:
        _fill(db, 10)
        db.delete_range(b"k02", b"k05")
        db.delete_range(b"k08")
        db.compact()
        state, digest = dict(db.scan()), db.digest("")
    assert main(["dump", src, "--format", fmt, "-o", str(out)]) == 0
    assert "delete_range" in out.read_text()
    assert main(["load", copy, "--create", "--node-id", "5", "--format", fmt, "-i", str(out), "-n", ""]) == 0
    with ae.open(copy, node_id=5, compact_interval=None) as db:
        assert dict(db.scan()) == state
        assert db.digest("") == digest
        # the loaded range delete still hides a late, older version
        ranges = [c for p in ((x, y, z) for x in range(16) for y in range(16) for z in range(16))
                  for c in db.records("", p) if c.op == Op.DELETE_RANGE]
        first = min(ranges, key=lambda c: c.timestamp)
        assert (first.key, first.value) == (b"k02", b"k05")
        assert db.apply([Change("", b"k03", Op.PUT, b"late", _older(first.timestamp))]) == 0
        assert db.get(b"k03") is None
