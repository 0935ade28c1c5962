"""The C fast path of CRDT namespaces (``_fast.CrdtPath``, csrc/crdt_path.c).

``merge``, ``get``, ``delete``, ``merge_many`` and ``get_many`` of a
namespace whose operator is a built-in CRDT (not ORMap, not a subclass) run
in C with a cache of folded states. These tests pin that it gives exactly
what the general Python path gives, whatever happens between two calls
(records applied from peers, Python-path batches, compaction, reopen, other
threads), that it writes checkpoints, and that it hands anything unusual
to the general path (which raises the errors).
"""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import abase_engine as ae
from abase_engine import _fast, errors
from abase_engine.crdt import (EWFlag, GCounter, GSet, LWWRegister, MVRegister, ORMap, ORSet, PNCounter,
                               SortedSet)
from abase_engine.namespace import Namespace
from abase_engine.record import Change, Op, Timestamp

KEYS = [b"a", b"b", b""]
MEMBERS = [b"x", b"y", b"z" * 100]


def _is_fast(ns) -> bool:
    return isinstance(getattr(ns.merge, "__self__", None), _fast.CrdtPath)


def _path(ns):
    return ns.merge.__self__


def test_bound_for_built_in_types_only(open_db):
    db = open_db()
    for op in (LWWRegister(), MVRegister(), GCounter(), PNCounter(), GSet(), ORSet(), SortedSet(), EWFlag()):
        assert _is_fast(db.namespace(type(op).__name__, merge=op)), op

    class MyCounter(PNCounter):
        pass

    assert not _is_fast(db.namespace("map", merge=ORMap(PNCounter())))
    assert not _is_fast(db.namespace("sub", merge=MyCounter()))


OPS = {
    "pn": (PNCounter, lambda d: (PNCounter.increment if d(st.booleans()) else PNCounter.decrement)(
        d(st.integers(-5, 9)))),
    "gc": (GCounter, lambda d: GCounter.increment(d(st.integers(0, 9)))),
    "lww": (LWWRegister, lambda d: LWWRegister.set(d(st.binary(max_size=3)))),
    "mv": (MVRegister, lambda d: MVRegister.set(d(st.binary(max_size=3)))),
    "gset": (GSet, lambda d: GSet.add(d(st.sampled_from(MEMBERS)))),
    "orset": (ORSet, lambda d: (ORSet.add if d(st.integers(0, 2)) else ORSet.remove)(d(st.sampled_from(MEMBERS)))),
    "zset": (SortedSet, lambda d: SortedSet.add(d(st.sampled_from(MEMBERS)), float(d(st.integers(-3, 3))))
             if d(st.integers(0, 2)) else SortedSet.remove(d(st.sampled_from(MEMBERS)))),
    "flag": (EWFlag, lambda d: EWFlag.enable() if d(st.booleans()) else EWFlag.disable()),
}


@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fast_path_equals_the_general_path(tmp_path_factory, name, data):
    """The same operations through the fast path (engine A) and through the
    general Python path (engine B, fast paths off by a commit listener);
    records from a peer, compaction, reopen and batches in between. The two
    hold the same bytes and values at every step, and the fast path's
    records equal B's (apart from timestamps) once exchanged."""
    draw = data.draw
    cls, gen = OPS[name]
    base = tmp_path_factory.mktemp("fp")
    cap = draw(st.sampled_from([64, 1, 3]))
    opts = dict(compact_interval=None, segment_size=4096, max_successive_merges=cap,
                crdt_cache_keys=draw(st.sampled_from([1 << 18, 1])))
    a = ae.open(str(base / "a"), node_id=1, **opts)
    b = ae.open(str(base / "b"), node_id=2, **opts)
    b.on_commit(lambda changes: None)  # a listener: every write takes the general path
    peer = cls()
    peer_state = {}
    hlc = (a.now().physical_ms - 10_000) << 16
    try:
        na, nb = a.namespace("n", merge=cls()), b.namespace("n", merge=cls())
        assert _is_fast(na)
        for _ in range(draw(st.integers(1, 30))):
            kind = draw(st.sampled_from(["op"] * 5 + ["delete", "peer", "batch", "compact", "reopen", "many"]))
            key = draw(st.sampled_from(KEYS))
            if kind == "op":
                op = gen(draw)
                for ns in (na, nb):
                    ns.merge(key, op)
            elif kind == "many":
                items = [(draw(st.sampled_from(KEYS)), gen(draw)) for _ in range(draw(st.integers(0, 4)))]
                for ns in (na, nb):
                    ns.merge_many(items)
            elif kind == "delete":
                for ns in (na, nb):
                    ns.delete(key)
            elif kind == "peer":  # a record from another replica, applied to both
                hlc += draw(st.integers(1, 1 << 16))
                ts = Timestamp(hlc >> 16, hlc & 0xFFFF, 77)
                s = peer_state.get(key)
                op = gen(draw)
                operand = peer.make_operand(op, s if peer.needs_state(op) else None, ts)
                peer_state[key] = peer.full_merge(s, [operand])
                for db in (a, b):
                    db.apply([Change("n", key, Op.MERGE, operand, ts)])
            elif kind == "batch":  # the Python write path, then the fast one again
                op = gen(draw)
                for db, ns in ((a, na), (b, nb)):
                    with db.batch() as bt:
                        bt.merge(key, op, namespace=ns)
            elif kind == "compact":
                for db in (a, b):
                    db.compact(wait=True)
            else:
                a.close()
                b.close()
                a = ae.open(str(base / "a"), node_id=1, **opts)
                b = ae.open(str(base / "b"), node_id=2, **opts)
                b.on_commit(lambda changes: None)
                na, nb = a.namespace("n", merge=cls()), b.namespace("n", merge=cls())
            for k in KEYS:
                assert na.get(k) == nb.get(k), (kind, k)
            assert na.get_many(KEYS) == nb.get_many(KEYS)
            # same values; the bytes differ only by the timestamps the two engines issued
            for k in KEYS:
                assert (na.get_raw(k) is None) == (nb.get_raw(k) is None)
        # exchanging their states (a state is its own delta) makes them equal, byte for byte
        ts = a.now()
        sa = [Change("n", k, Op.MERGE, na.get_raw(k), ts) for k in KEYS if na.get_raw(k) is not None]
        sb = [Change("n", k, Op.MERGE, nb.get_raw(k), ts) for k in KEYS if nb.get_raw(k) is not None]
        a.apply(sb)
        b.apply(sa)
        assert {k: na.get_raw(k) for k in KEYS} == {k: nb.get_raw(k) for k in KEYS}
        assert na.get_many(KEYS) == nb.get_many(KEYS)
        assert a.check() == [] and b.check() == []
    finally:
        a.close()
        b.close()


def test_fast_merges_are_what_python_would_write(open_db):
    """Each record a fast merge appends equals the operand the Python
    operator builds from the state it observed, at the record's timestamp."""
    db = open_db(segment_size=4096)
    s = db.namespace("s", merge=ORSet())
    M = ORSet()
    state = None
    rnd = random.Random(3)
    for i in range(300):
        op = (ORSet.add if rnd.random() < 0.7 else ORSet.remove)(b"m%d" % rnd.randrange(40))
        ts = s.merge(b"k", op)
        want = M.make_operand(op, state, ts)
        state = M.full_merge(state, [want])
        assert s.get_raw(b"k") == state
        if i % 50 == 49:
            db.compact(wait=True)
    mine = [c for c in db.changes() if c.op == Op.MERGE]
    assert M.full_merge(None, [c.value for c in mine]) == s.get_raw(b"k") or mine == []


def test_fast_merges_write_checkpoints(open_db):
    db = open_db(max_successive_merges=8)
    c = db.namespace("c", merge=PNCounter())
    for _ in range(200):
        c.merge(b"k", PNCounter.increment(1))
    # a read of the key walks no more than the cap (plus the records since the last checkpoint)
    assert db._log.merge_walk(c.id, b"k", 1000) <= 9
    _path(c).forget()
    assert c.get(b"k") == 200
    # the feed holds the operands, not the checkpoints
    assert sum(1 for ch in db.changes() if ch.key == b"k") == 200


def test_records_applied_between_fast_merges_are_not_missed(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    M = PNCounter()
    now = db.now().physical_ms
    for i in range(50):
        c.merge(b"k", PNCounter.increment(1))
        ts = Timestamp(now - 1000 + i, 0, 9)
        db.apply([Change("c", b"k", Op.MERGE, M.make_operand(PNCounter.increment(10), None, ts), ts)])
        c.merge(b"k", PNCounter.increment(1))
        if i % 10 == 0:
            db.compact(wait=True)
    # node 9's operands carry its cumulative totals of 10 each: only the last counts
    assert c.get(b"k") == 100 + 10
    assert _path(c).stats()["conflicts"] >= 1


def test_threads_merging_one_key_lose_nothing(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    s = db.namespace("s", merge=ORSet())

    def work(i):
        for j in range(300):
            c.merge(b"k", PNCounter.increment(1))
            if j % 3 == 0:
                with db.batch() as b:  # the Python path, interleaved
                    b.merge(b"k", PNCounter.increment(1), namespace=c)
            s.merge(b"k", ORSet.add(b"%d-%d" % (i, j)))
            if j == 150 and i == 0:
                db.compact(wait=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get(b"k") == 4 * (300 + 100)
    assert len(s.get(b"k")) == 1200
    db.compact(wait=True)
    _path(c).forget()
    assert c.get(b"k") == 1600


def test_unusual_calls_take_the_general_path(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    top = (1 << 64) - 1
    c.merge(b"k", PNCounter.increment(top))
    raw = c.get_raw(b"k")
    with pytest.raises(errors.MergeOperandError):  # overflow: raised by the general path, nothing written
        c.merge(b"k", PNCounter.increment(1))
    assert c.get_raw(b"k") == raw
    with pytest.raises(errors.MergeOperandError):
        c.merge(b"k", ORSet.add(b"x"))  # another type's operation
    with pytest.raises(errors.MergeOperandError):
        c.merge(b"k", b"not an operand")
    operand = PNCounter().make_operand(PNCounter.increment(1), None, Timestamp(1, 0, 5))
    c.merge(b"j", operand)  # raw operand bytes: joined
    assert c.get(b"j") == 1
    with pytest.raises(TypeError):
        c.get("not bytes")
    with pytest.raises(errors.KeyTooLargeError):
        c.merge(b"x" * 600, PNCounter.increment(1))
    ts = c.merge(b"j", PNCounter.increment(1))
    assert c.get(b"j", at=ts) == 2 and c.get(b"missing", 7) == 7
    with pytest.raises(TypeError):
        c.merge_many([b"k"])
    assert c.merge_many([]) is None
    db.close()
    with pytest.raises(errors.EngineClosedError):
        c.merge(b"k", PNCounter.increment(1))
    with pytest.raises(errors.EngineClosedError):
        c.get(b"k")


def test_durability_sync_and_fake_clocks_still_work(open_db, tmp_path):
    from conftest import FakeClock

    for db in (open_db(str(tmp_path / "sync"), durability="sync"), open_db(str(tmp_path / "fake"), clock=FakeClock())):
        c = db.namespace("c", merge=PNCounter())
        for _ in range(20):
            c.merge(b"k", PNCounter.increment(2))
        c.delete(b"k")
        c.merge(b"k", PNCounter.increment(1))
        assert c.get(b"k") == 1
        assert c.get_many([b"k", b"x"]) == [1, None]


def test_small_cache_evicts_and_stays_right(open_db):
    db = open_db(crdt_cache_keys=3)
    c = db.namespace("c", merge=PNCounter())
    keys = [b"k%d" % i for i in range(50)]
    for r in range(5):
        c.merge_many([(k, PNCounter.increment(1)) for k in keys])
        if r == 2:
            db.compact(wait=True)
    assert c.get_many(keys) == [5] * 50
    assert _path(c).stats()["cached"] <= 3
    db.close()
    with pytest.raises(errors.InvalidOptionError):
        open_db(crdt_cache_keys=0)


def test_general_methods_exist_for_every_namespace(open_db):
    db = open_db()
    plain = db.namespace("plain")
    plain.put(b"a", b"1")
    assert plain.get_many([b"a", b"b"]) == [b"1", None]
    m = db.namespace("m", merge=ORMap(PNCounter()))
    m.merge_many([(b"k", ORMap.update(b"f", PNCounter.increment(2)))])
    assert m.get_many([b"k"]) == [{b"f": 2}]
    assert Namespace.get_many(m, [b"k", b"z"]) == [{b"f": 2}, None]


def test_values_handed_out_are_the_callers_own(open_db):
    """Reads of a cached key return the cached value object when it is
    immutable (int, bytes, frozenset); a SortedSet's list is a new one each
    time, so a caller that changes it changes nothing else."""
    db = open_db()
    z = db.namespace("z", merge=SortedSet())
    z.merge(b"k", SortedSet.add(b"a", 1))
    first = z.get(b"k")
    first.append((b"junk", 0.0))
    assert z.get(b"k") == [(b"a", 1.0)]
    z.merge(b"k", SortedSet.add(b"b", 0.5))
    assert z.get(b"k") == [(b"b", 0.5), (b"a", 1.0)]
    s = db.namespace("s", merge=ORSet())
    s.merge(b"k", ORSet.add(b"x"))
    assert s.get(b"k") is s.get(b"k")  # the cached frozenset
    s.merge(b"k", ORSet.add(b"y"))
    assert s.get(b"k") == {b"x", b"y"}


@pytest.mark.parametrize("batch", [1, 7])
def test_records_received_through_apply_get_checkpoints(open_db, batch):
    """A key receiving operands from peers, one apply() at a time or a few
    at once, gets checkpoints like a key merged locally: reads of it walk no
    more than max_successive_merges records (plus one apply's worth)."""
    cap = 8
    db = open_db(max_successive_merges=cap)
    c = db.namespace("c", merge=PNCounter())
    M = PNCounter()
    now = db.now().physical_ms
    recs = []
    for i in range(120):
        ts = Timestamp(now - 1000 + i, 0, 100 + i % 30)
        recs.append(Change("c", b"k", Op.MERGE, M.make_operand(PNCounter.increment(1 + i // 30), None, ts), ts))
    for i in range(0, len(recs), batch):
        db.apply(recs[i:i + batch])
        assert db._log.merge_walk(c.id, b"k", 1000) <= cap + batch
    want = M.to_value(M.full_merge(None, [r.value for r in recs]))
    _path(c).forget()
    assert c.get(b"k") == want
    # checkpoints are local bookkeeping: the feed holds the received records, not them
    assert list(db.changes()) == []
    assert len(list(db.changes(include_applied=True))) == len(recs)


def test_readers_writers_and_a_tiny_cache_under_threads(open_db):
    """Merging and reading threads share a cache of 2 keys (evictions on
    nearly every call), with applies and compactions in between: counts
    only grow, and none is lost."""
    db = open_db(crdt_cache_keys=2, segment_size=1 << 16)
    c = db.namespace("c", merge=PNCounter())
    keys = [b"k%d" % i for i in range(5)]
    errors_seen: list = []
    stop = threading.Event()

    def writer(i):
        for j in range(400):
            c.merge(keys[(i + j) % 5], PNCounter.increment(1))

    def reader():
        last = [0] * 5
        while not stop.is_set():
            for i, k in enumerate(keys):
                v = c.get(k) or 0
                if v < last[i]:
                    errors_seen.append((k, v, last[i]))
                last[i] = v

    def applier():
        M = PNCounter()
        now = db.now().physical_ms
        for j in range(100):
            ts = Timestamp(now - 1000 + j, 0, 50)
            db.apply([Change("c", keys[j % 5], Op.MERGE, M.make_operand(PNCounter.increment(j + 1), None, ts), ts)])
            if j % 25 == 0:
                db.compact(wait=True)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(3)] + [threading.Thread(target=applier)]
    for t in readers + workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors_seen == []
    # node 50's operands carry its cumulative totals: the greatest counts, once per key
    remote = {k: max(j + 1 for j in range(100) if j % 5 == i) for i, k in enumerate(keys)}
    assert c.get_many(keys) == [3 * 400 // 5 + remote[k] for k in keys]
