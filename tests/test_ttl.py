"""TTL of LWW puts (``ttl=`` / ``expire_at=``): reads, scans, snapshots,
batches, compaction, restarts, replication between skewed clocks, digests,
refusals; and a stateful test against a dict model under a fake clock.

Time moves only through the fake clock (``clock=``); the C fast paths, which
need the real clock, are exercised with expiries set far in the past or the
future of the real clock, never by waiting.
"""

from __future__ import annotations

import math
import os
import shutil
import struct

import lmdb
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

import abase_engine as ae
from abase_engine.crdt import PNCounter
from abase_engine.errors import FormatVersionError, InvalidOptionError, SnapshotTooOldError, ValueTooLargeError

from conftest import BASE_MS, FakeClock, real_ms

DAY_MS = 24 * 3600 * 1000


def _open(open_db, path=None, clock=None, **kw):
    if clock is not None:
        kw["clock"] = clock
    return open_db(path, **kw)


# --------------------------------------------------------------- point reads

def test_ttl_expires_on_the_writes_own_clock(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    ts = db.put(b"k", b"v", ttl=5)
    assert ts.physical_ms == fake_clock.now
    assert db.get(b"k") == b"v" and b"k" in db and db[b"k"] == b"v"
    fake_clock.advance(4999)
    assert db.get(b"k") == b"v"
    fake_clock.advance(1)  # ts.physical_ms + 5000: gone
    assert db.get(b"k") is None and b"k" not in db and db.get(b"k", b"dflt") == b"dflt"
    with pytest.raises(KeyError):
        db[b"k"]
    assert db.get_many([b"k"]) == [None]


def test_fractional_ttl_rounds_up_and_expire_at_forms(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    db.put(b"a", b"1", ttl=0.0001)  # 1 ms, never 0
    db.put(b"b", b"2", expire_at=fake_clock.now + 10)
    db.put(b"c", b"3", expire_at=ae.Timestamp(fake_clock.now + 20, 7, 3))  # its physical ms
    db.put(b"d", b"4", expire_at=0)  # already past
    assert db.get_many([b"a", b"b", b"c", b"d"]) == [b"1", b"2", b"3", None]
    fake_clock.advance(1)
    assert db.get_many([b"a", b"b", b"c"]) == [None, b"2", b"3"]
    fake_clock.advance(10)
    assert db.get_many([b"a", b"b", b"c"]) == [None, None, b"3"]
    fake_clock.advance(10)
    assert db.get(b"c") is None


def test_expiry_never_uncovers_an_older_version(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    db.put(b"k", b"old")
    db.put(b"k", b"new", ttl=1)
    fake_clock.advance(1000)
    assert db.get(b"k") is None
    db.compact()
    assert db.get(b"k") is None
    db.put(b"k", b"again")  # a later put is a new value, with no expiry
    fake_clock.advance(10 * DAY_MS)
    assert db.get(b"k") == b"again"


def test_a_plain_put_clears_the_expiry(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    db.put(b"k", b"v1", ttl=1)
    db.put(b"k", b"v2")
    fake_clock.advance(5000)
    assert db.get(b"k") == b"v2"


def test_ttl_in_a_named_lww_namespace_and_get_at(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    ns = db.namespace("sessions")
    ts = ns.put(b"s1", b"alive", ttl=2)
    fake_clock.advance(2000)
    assert ns.get(b"s1") is None and b"s1" not in ns
    assert ns.get(b"s1", at=ts) == b"alive"  # as of its own timestamp it had not expired
    assert db.get(b"s1") is None  # other namespace


# ------------------------------------------------------------- batches and put_many

def test_batch_and_put_many_with_ttl(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    ns = db.namespace("n")
    with db.batch() as b:
        b.put(b"a", b"1", ttl=1)
        b.put(b"b", b"2")
        b.put(b"c", b"3", expire_at=fake_clock.now + 3000)
        b.put(b"x", b"9", namespace=ns, ttl=1)
        b.put(b"y", b"8", namespace="n")
        b.delete(b"zz")
    db.put_many([(b"p", b"1"), (b"q", b"2")], ttl=2)
    assert [k for k, _ in db.scan()] == [b"a", b"b", b"c", b"p", b"q"]
    fake_clock.advance(1000)
    assert dict(db.scan()) == {b"b": b"2", b"c": b"3", b"p": b"1", b"q": b"2"}
    assert dict(ns.scan()) == {b"y": b"8"}
    fake_clock.advance(1000)
    assert dict(db.scan()) == {b"b": b"2", b"c": b"3"}
    fake_clock.advance(1000)
    assert dict(db.scan()) == {b"b": b"2"}


def test_batch_with_ttl_is_atomic_and_discarded_on_error(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    with pytest.raises(RuntimeError):
        with db.batch() as b:
            b.put(b"a", b"1", ttl=5)
            raise RuntimeError("abort")
    assert db.get(b"a") is None
    with pytest.raises(InvalidOptionError):
        with db.batch() as b:
            b.put(b"a", b"1", ttl=5)
            b.put(b"b", b"1", ttl=-1)
    assert db.get(b"a") is None


def test_ttl_batch_with_listener_and_digests_takes_the_general_path(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock, digests=True)
    seen = []
    db.on_commit(seen.extend)
    with db.batch() as b:
        b.put(b"a", b"1", ttl=1)
        b.put(b"b", b"2")
    db.put(b"c", b"3", ttl=2)
    db.put_many([(b"d", b"4")], ttl=3)
    by_key = {c.key: c for c in seen}
    assert by_key[b"a"].expire_at == by_key[b"a"].timestamp.physical_ms + 1000
    assert by_key[b"b"].expire_at is None
    assert by_key[b"c"].expire_at == by_key[b"c"].timestamp.physical_ms + 2000
    assert by_key[b"d"].expire_at == by_key[b"d"].timestamp.physical_ms + 3000
    assert by_key[b"a"].value == b"1"
    fake_clock.advance(1000)
    assert db.get(b"a") is None and db.get(b"b") == b"2"


# -------------------------------------------------------------- scans and snapshots

def test_scans_log_resident_and_compacted(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    for i in range(20):
        db.put(b"k%02d" % i, b"v%d" % i, ttl=(i % 4) + 1 if i % 2 else None)
    db.compact()  # half of them in the store
    for i in range(20, 30):
        db.put(b"k%02d" % i, b"v%d" % i, ttl=1 if i % 2 else None)
    everything = {b"k%02d" % i: b"v%d" % i for i in range(30)}
    assert dict(db.scan()) == everything
    fake_clock.advance(1000)  # the log-resident ones with a ttl expire
    assert dict(db.scan()) == {k: v for k, v in everything.items() if int(k[1:]) % 2 == 0 or int(k[1:]) < 20}
    fake_clock.advance(1000)  # and the stored ones with 2 s
    alive = {k: v for k, v in everything.items() if int(k[1:]) % 2 == 0 or (int(k[1:]) < 20 and int(k[1:]) % 4 != 1)}
    assert dict(db.scan()) == alive
    assert [k for k, _ in db.scan(reverse=True)] == sorted(alive, reverse=True)
    assert dict(db.scan(prefix=b"k2")) == {k: v for k, v in alive.items() if k.startswith(b"k2")}
    assert dict(db.scan(start=b"k05", stop=b"k15")) == {k: v for k, v in alive.items() if b"k05" <= k < b"k15"}
    assert len(db) == len(alive)


def test_snapshot_before_expiry_sees_the_value_after_does_not(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    db.put(b"k", b"v", ttl=1)
    db.put(b"s", b"v", ttl=1)
    db.compact()  # s in the store, k re-written in the log
    db.put(b"k", b"v", ttl=1)
    early = db.snapshot()
    fake_clock.advance(1000)
    late = db.snapshot()
    assert early.get(b"k") == b"v" and early.get(b"s") == b"v"
    assert dict(early.scan()) == {b"k": b"v", b"s": b"v"}
    assert late.get(b"k") is None and late.get(b"s") is None and list(late.scan()) == []
    db.compact()  # the early snapshot holds the expired values back
    assert early.get(b"k") == b"v" and dict(early.scan()) == {b"k": b"v", b"s": b"v"}
    ts = early.timestamp
    early.close()
    late.close()
    db.compact()
    assert db.get(b"k") is None
    # the compactor dropped the value: a read as of before the expiry cannot
    # be answered any more, and says so
    with pytest.raises(SnapshotTooOldError):
        db.get(b"s", at=ts)


# --------------------------------------------------------------- compaction and restart

def test_reopen_keeps_expiries_in_the_log_and_the_store(open_db, fake_clock, db_path, tmp_path):
    db = _open(open_db, clock=fake_clock)
    db.put(b"stored", b"1", ttl=10)
    db.put(b"forever", b"2")
    db.compact()
    db.put(b"logged", b"3", ttl=10)
    db.close()
    db = _open(open_db, clock=fake_clock)
    assert dict(db.scan()) == {b"forever": b"2", b"logged": b"3", b"stored": b"1"}
    fake_clock.advance(10_000)
    assert dict(db.scan()) == {b"forever": b"2"}
    db.close()
    db = _open(open_db, clock=fake_clock)
    assert db.get(b"logged") is None and db.get(b"stored") is None and db.get(b"forever") == b"2"


def test_compaction_turns_expired_values_into_tombstones_then_purges(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock, tombstone_grace_ms=60_000)
    old = db.put(b"k", b"old")
    db.compact()
    db.put(b"k", b"v", ttl=1)   # expires before its segment is folded
    db.put(b"later", b"w", ttl=5)  # folded while alive, expires in the store
    fake_clock.advance(1000)
    db.compact()
    assert db.get(b"k") is None and db.get(b"later") == b"w"
    # an older version arriving late must not resurrect what expired
    assert db.apply([ae.Change("", b"k", ae.Op.PUT, b"zombie", old)]) == 0
    assert db.get(b"k") is None
    fake_clock.advance(4000)
    db.compact()  # the store's value expired: the sweep turns it into a tombstone
    assert db.get(b"later") is None
    recs = [r for leaf in _leaves() for r in db.records("", leaf)]
    assert {r.key for r in recs} == {b"k", b"later"}
    assert all(r.op == ae.Op.PUT and r.value == b"" and r.expire_at for r in recs)
    fake_clock.advance(60_000 + 1000)
    db.compact()  # past the grace: purged
    assert [r for leaf in _leaves() for r in db.records("", leaf)] == []
    assert db.get(b"k") is None and db.get(b"later") is None


def _leaves():
    return [(a, b, c) for a in range(16) for b in range(16) for c in range(16)]


# --------------------------------------------------------------- the C fast paths (real clock)

def test_fast_paths_with_the_real_clock(open_db):
    db = open_db()
    past, future = real_ms() - 10_000, real_ms() + DAY_MS
    db.put(b"gone", b"1", expire_at=past)
    db.put(b"here", b"2", expire_at=future)
    db.put(b"ttl", b"3", ttl=3600)
    db.put(b"plain", b"4")
    want = {b"here": b"2", b"ttl": b"3", b"plain": b"4"}
    assert db.get(b"gone") is None and db.get(b"here") == b"2" and db.get(b"ttl") == b"3"
    assert db.get_many([b"gone", b"here", b"plain"]) == [None, b"2", b"4"]
    assert dict(db.scan()) == want
    db.compact()
    assert db.get(b"gone") is None and db.get(b"here") == b"2"
    assert db.get_many([b"gone", b"here", b"ttl", b"plain"]) == [None, b"2", b"3", b"4"]
    assert dict(db.scan()) == want and [k for k, _ in db.scan(reverse=True)] == sorted(want, reverse=True)
    db.put(b"gone2", b"5", expire_at=past)
    db.put(b"here", b"6", expire_at=past)
    assert dict(db.scan()) == {b"ttl": b"3", b"plain": b"4"}
    # puts with ttl= through the C fast path: the core turns the ttl into an
    # expire_at on the timestamp it issues, exactly as the general path does
    t1 = db.put(b"f1", b"x", ttl=2)
    t2 = db.put(b"f2", b"y", ttl=0.0015)  # rounds up to 2 ms
    t3 = db.put(b"f3", b"z", ttl=10 ** 13)  # past the fast path's bound: the general path
    db.put(b"f4", b"w", expire_at=0)  # written as 1: long past
    fed = {c.key: c for c in db.changes()}
    assert fed[b"f4"].expire_at == 1 and db.get(b"f4") is None
    assert fed[b"f1"].expire_at == t1.physical_ms + 2000 and fed[b"f1"].value == b"x"
    assert fed[b"f2"].expire_at == t2.physical_ms + 2
    assert fed[b"f3"].expire_at == t3.physical_ms + 10 ** 16
    assert db.get(b"f1") == b"x" and db.get(b"f3") == b"z"
    ns = db.namespace("other")
    ns.put(b"a", b"1", expire_at=past)
    ns.put(b"b", b"2", expire_at=future)
    db.compact()
    assert ns.get(b"a") is None and ns.get(b"b") == b"2" and dict(ns.scan()) == {b"b": b"2"}


# --------------------------------------------------------------- replication

def test_apply_between_skewed_clocks(open_db, tmp_path):
    a_clock, b_clock = FakeClock(BASE_MS + 10_000), FakeClock(BASE_MS)  # A is 10 s ahead of B
    a = _open(open_db, str(tmp_path / "a"), clock=a_clock, node_id=1)
    b = _open(open_db, str(tmp_path / "b"), clock=b_clock, node_id=2, max_clock_skew_ms=60_000)
    ts = a.put(b"k", b"v", ttl=5)
    a.put(b"plain", b"p")
    changes = list(a.changes())
    assert changes[0].expire_at == ts.physical_ms + 5000 and changes[1].expire_at is None
    assert b.apply(changes) == 2
    assert b.apply(changes) == 0  # idempotent
    expire_at = ts.physical_ms + 5000
    # B's clock was raised to A's timestamp when it received it: both judge
    # the entry by its own expire_at on their HLC clocks
    assert b.get(b"k") == b"v" and a.get(b"k") == b"v"
    a_clock.advance(5000)
    b_clock.advance(5000)  # B's wall clock is still 5 s before expire_at
    assert a.get(b"k") is None
    assert b.get(b"k") == b"v"
    b_clock.now = expire_at
    assert b.get(b"k") is None
    fed = list(b.changes(include_applied=True))
    assert fed[0].expire_at == expire_at and fed[0].value == b"v"
    assert a.digest() == b.digest()


def test_apply_refuses_bad_expiries(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    counters = db.namespace("c", merge=PNCounter())
    counters.merge(b"x", PNCounter.increment(1))
    state = counters.get_raw(b"x")
    ts = ae.Timestamp(BASE_MS - 5, 0, 9)
    with pytest.raises(InvalidOptionError):
        db.apply([ae.Change("c", b"k", ae.Op.PUT, state, ts, None, BASE_MS)])
    with pytest.raises(InvalidOptionError):
        db.apply([ae.Change("", b"k", ae.Op.DELETE, None, ts, None, BASE_MS)])
    with pytest.raises(InvalidOptionError):
        db.apply([ae.Change("", b"k", ae.Op.PUT, b"v", ts, None, -1)])
    with pytest.raises(TypeError):
        db.apply([ae.Change("", b"k", ae.Op.PUT, b"v", ts, None, "soon")])
    assert db.get(b"k") is None and counters.get(b"k") is None
    assert db.apply([ae.Change("", b"k", ae.Op.PUT, b"v", ts, None, BASE_MS + 1)]) == 1
    assert db.get(b"k") == b"v"
    fake_clock.advance(1)
    assert db.get(b"k") is None


@pytest.mark.parametrize("maintained", [False, True])
def test_digests_do_not_depend_on_compaction_or_expiry(open_db, tmp_path, maintained):
    clocks = [FakeClock(), FakeClock()]
    dbs = [_open(open_db, str(tmp_path / f"r{i}"), clock=clocks[i], node_id=i + 1, digests=maintained)
           for i in range(2)]
    src = dbs[0]
    for i in range(40):
        src.put(b"k%d" % i, b"v", ttl=(i % 3) + 1 if i % 4 else None)
    src.delete(b"k0")
    dbs[1].apply(list(src.changes()))
    assert dbs[0].digest() == dbs[1].digest()
    for c in clocks:
        c.advance(3000)
    dbs[0].compact()  # expired values become tombstones in one of them only
    assert dbs[0].digest() == dbs[1].digest()
    for leaf in [(0, 0, 0), (15, 15, 15)] + _leaves()[::97]:
        assert dbs[0].digest("", leaf[:2]) == dbs[1].digest("", leaf[:2])
    dbs[1].compact()
    assert dbs[0].digest() == dbs[1].digest()
    # records() of the compacted replica repair a replica that has nothing
    fresh = _open(open_db, str(tmp_path / "fresh"), clock=clocks[0], node_id=3)
    fresh.apply([r for leaf in _leaves() for r in dbs[0].records("", leaf)])
    assert fresh.digest() == dbs[0].digest()
    assert dict(fresh.scan()) == dict(dbs[0].scan())


@pytest.mark.parametrize("maintained", [False, True])
def test_c_apply_over_versions_with_an_expiry_keeps_digests_right(open_db, tmp_path, fake_clock, maintained):
    """Plain records applied (by the C apply path) over versions that have
    an expiry: the digest upkeep must XOR out the predecessor's entry with
    its expiry canon, or the leaves drift from the state."""
    src = _open(open_db, str(tmp_path / "src"), clock=fake_clock, node_id=1)
    a = _open(open_db, str(tmp_path / "a"), clock=fake_clock, node_id=2, digests=maintained)
    b = _open(open_db, str(tmp_path / "b"), clock=fake_clock, node_id=3)
    for i in range(20):
        src.put(b"k%d" % i, b"old", ttl=60)
    first = list(src.changes())
    for i in range(0, 20, 2):
        src.put(b"k%d" % i, b"new")
    second = list(src.changes())[20:]
    assert all(ch.expire_at is None for ch in second)
    for db in (a, b):
        db.apply(first)
        db.apply(second)
    assert a.digest() == b.digest() == src.digest()
    assert [a.get(b"k%d" % i) for i in range(4)] == [b"new", b"old", b"new", b"old"]


# --------------------------------------------------------------- refusals and bad arguments

def test_ttl_is_refused_in_merge_namespaces(open_db, fake_clock):
    db = _open(open_db, clock=fake_clock)
    counters = db.namespace("c", merge=PNCounter())
    state = counters.get_raw(b"x") or b""
    with pytest.raises(InvalidOptionError, match="LWW"):
        counters.put(b"k", state, ttl=5)
    with pytest.raises(InvalidOptionError):
        with db.batch() as b:
            b.put(b"k", state, namespace=counters, ttl=5)
    assert counters.get(b"k") is None


@pytest.mark.parametrize("ttl, exc", [
    (-1, InvalidOptionError), (0, InvalidOptionError), (0.0, InvalidOptionError),
    (math.nan, InvalidOptionError), (math.inf, InvalidOptionError), (1e300, InvalidOptionError),
    (True, TypeError), ("5", TypeError), (b"5", TypeError), ([], TypeError),
])
def test_bad_ttl(open_db, ttl, exc):
    db = open_db()
    assert issubclass(InvalidOptionError, ValueError)
    with pytest.raises(exc):
        db.put(b"k", b"v", ttl=ttl)
    with pytest.raises(exc):
        db.put_many([(b"k", b"v")], ttl=ttl)
    with pytest.raises(exc):
        with db.batch() as b:
            b.put(b"k", b"v", ttl=ttl)
    assert db.get(b"k") is None


@pytest.mark.parametrize("expire_at, exc", [
    (-1, InvalidOptionError), (1 << 63, InvalidOptionError), (1.5, TypeError), ("x", TypeError), (False, TypeError),
])
def test_bad_expire_at(open_db, expire_at, exc):
    db = open_db()
    with pytest.raises(exc):
        db.put(b"k", b"v", expire_at=expire_at)
    with pytest.raises(InvalidOptionError):
        db.put(b"k", b"v", ttl=1, expire_at=real_ms() + 1000)
    assert db.get(b"k") is None


def test_value_size_limit_leaves_room_for_the_expiry(monkeypatch):
    from abase_engine import ttl
    monkeypatch.setattr(ttl, "MAX_VALUE", 16)  # not 256 MiB of test memory
    assert ttl.with_expiry((ttl.F_TTL, 5), bytes(8)) == struct.pack("<Q", 5) + bytes(8)
    with pytest.raises(ValueTooLargeError):
        ttl.with_expiry((ttl.F_TTL, 5), bytes(9))


# --------------------------------------------------------------- format versions

def test_a_directory_of_the_previous_format_is_refused(open_db, db_path):
    db = open_db()
    db.put(b"k", b"v")
    db.close()
    env = lmdb.open(os.path.join(db_path, "store"), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", b"2", db=meta)
    env.close()
    with pytest.raises(FormatVersionError):
        ae.open(db_path, compact_interval=None)


def test_a_log_of_format_3_is_refused(open_db, db_path):
    from abase_engine._abase import lib
    db = open_db()
    db.put(b"k", b"v")
    db.close()
    seg = os.path.join(db_path, "log", "00000000.seg")
    with open(seg, "r+b") as f:
        hdr = bytearray(f.read(64))
        struct.pack_into("<I", hdr, 8, 3)
        struct.pack_into("<I", hdr, 60, lib.abase_crc_mask(lib.abase_crc32c(0, bytes(hdr[:60]), 60)))
        f.seek(0)
        f.write(hdr)
    with pytest.raises(FormatVersionError):
        ae.open(db_path, compact_interval=None)


# --------------------------------------------------------------- properties

@settings(max_examples=30)
@given(ttl_ms=st.integers(1, 10_000), wait=st.integers(0, 12_000), compact=st.booleans())
def test_property_visible_iff_before_expiry(tmp_path_factory, ttl_ms, wait, compact):
    clock = FakeClock()
    with ae.open(str(tmp_path_factory.mktemp("p")), clock=clock, compact_interval=None) as db:
        ts = db.put(b"k", b"v", ttl=ttl_ms / 1000)
        clock.advance(wait)
        if compact:
            db.compact()
        alive = wait < ttl_ms
        assert (db.get(b"k") == b"v") == alive
        assert (list(db.scan()) == [(b"k", b"v")]) == alive
        if compact and not alive:  # the value was dropped: a read before its expiry says so
            with pytest.raises(SnapshotTooOldError):
                db.get(b"k", at=ts)
        else:
            assert db.get(b"k", at=ts) == b"v"


class TTLModel(RuleBasedStateMachine):
    """The engine against a dict ``key -> (value, expire_at or None)`` under a
    fake clock, with compactions and reopens between the steps."""

    keys = Bundle("keys")

    @initialize()
    def setup(self):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="ttlmodel-")
        self.clock = FakeClock()
        self.db = ae.open(self.dir, clock=self.clock, compact_interval=None, tombstone_grace_ms=5_000)
        self.model = {}

    @rule(target=keys, k=st.binary(min_size=0, max_size=4))
    def new_key(self, k):
        return k

    @rule(k=keys, v=st.binary(max_size=8), ttl_ms=st.one_of(st.none(), st.integers(1, 3000)))
    def put(self, k, v, ttl_ms):
        if ttl_ms is None:
            self.db.put(k, v)
            self.model[k] = (v, None)
        else:
            ts = self.db.put(k, v, ttl=ttl_ms / 1000)
            self.model[k] = (v, ts.physical_ms + ttl_ms)

    @rule(k=keys, v=st.binary(max_size=8), ahead=st.integers(0, 3000))
    def put_expire_at(self, k, v, ahead):
        self.db.put(k, v, expire_at=self.clock.now + ahead)
        self.model[k] = (v, max(1, self.clock.now + ahead))

    @rule(items=st.lists(st.tuples(keys, st.binary(max_size=4)), max_size=4), ttl_ms=st.integers(1, 3000))
    def batch(self, items, ttl_ms):
        with self.db.batch() as b:
            for k, v in items:
                b.put(k, v, ttl=ttl_ms / 1000)
        for k, v in items:
            self.model[k] = (v, self.clock.now + ttl_ms)  # the batch's timestamps are in this ms

    @rule(k=keys)
    def delete(self, k):
        self.db.delete(k)
        self.model.pop(k, None)

    @rule(ms=st.integers(1, 2500))
    def advance(self, ms):
        self.clock.advance(ms)

    @rule()
    def compact(self):
        self.db.compact()

    @precondition(lambda self: True)
    @rule()
    def reopen(self):
        self.db.close()
        self.db = ae.open(self.dir, clock=self.clock, compact_interval=None, tombstone_grace_ms=5_000)

    def _visible(self):
        now = self.clock.now
        return {k: v for k, (v, exp) in self.model.items() if exp is None or exp > now}

    @invariant()
    def reads_agree(self):
        want = self._visible()
        assert dict(self.db.scan()) == want
        for k in list(self.model)[:8]:
            assert self.db.get(k) == want.get(k)
            assert (k in self.db) == (k in want)

    def teardown(self):
        if hasattr(self, "db"):
            self.db.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TTLModel.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
test_ttl_model = TTLModel.TestCase


def test_expiry_travels_on_the_cluster_wire():
    from abase_engine.cluster.wire import decode_changes, encode_changes, wire_size
    ts = ae.Timestamp(BASE_MS, 3, 2)
    changes = [ae.Change("", b"k", ae.Op.PUT, b"v", ts, None, BASE_MS + 5000),
               ae.Change("ns", b"d", ae.Op.DELETE, None, ts),
               ae.Change("", b"p", ae.Op.PUT, b"plain", ts)]
    data = encode_changes(changes)
    assert len(data) == wire_size(changes)
    assert decode_changes(data) == changes
    with pytest.raises(ValueError, match="truncated"):
        decode_changes(data[:24])  # the header says an expiry follows; it is cut
