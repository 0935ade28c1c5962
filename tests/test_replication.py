"""Replication: the engine's hooks (change feed, slots, on_commit, apply,
digests) and the reference replica group built on them
(``abase_engine.replication``).

(a) feed semantics, (b) a two-replica example, (c) convergence of a
3-replica group under a hostile network (hypothesis), (d) a replica process
SIGKILLed while applying a stream (tests/replica_worker.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import shutil
from typing import Dict, List

import pytest
from hypothesis import given, settings, strategies as st

import abase_engine as ae
from abase_engine import crdt
from abase_engine.errors import SlotInvalidatedError
from abase_engine.replication import (
    QuorumError, ReplicaGroup, SimulatedNetwork, decode_changes, encode_changes, leaf_path, resolve,
)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "replica_worker.py")

SMALL = dict(segment_size=4096, compact_interval=None)


def plain(c: ae.Change) -> ae.Change:
    return ae.Change(c.namespace, c.key, c.op, c.value, c.timestamp)


def full_digest(db: ae.Engine, ns: str = "") -> List[List[int]]:
    """Every level-1 and level-2 node's child hashes: equal iff the trees are equal."""
    out = [db.digest(ns, ())]
    for a in range(16):
        out.append(db.digest(ns, (a,)))
    return out


# ---------------------------------------------------------------------------
# (a) feed semantics
# ---------------------------------------------------------------------------

def test_changes_resumed_feed_neither_skips_nor_repeats(open_db):
    db = open_db()
    for i in range(50):
        db.put(b"k%03d" % i, b"v%d" % i)
    db.delete(b"k007")
    with db.batch() as b:
        for i in range(5):
            b.put(b"b%d" % i, b"x")
    allc = list(db.changes())
    assert len(allc) == 56
    assert [c.key for c in allc[:50]] == [b"k%03d" % i for i in range(50)]
    assert allc[50].op == ae.Op.DELETE and allc[50].value is None
    ts = [c.timestamp for c in allc]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    # resume at every position, in pieces of every size: concatenation == the whole feed
    for step in (1, 7, 50):
        got, cur = [], None
        while True:
            part = list(db.changes(since=cur, limit=step))
            if not part:
                break
            got += part
            cur = part[-1].cursor
        assert [plain(c) for c in got] == [plain(c) for c in allc]
    # a cursor of the last record resumes with exactly the new writes
    last = allc[-1].cursor
    assert list(db.changes(since=last)) == []
    db.put(b"new", b"1")
    new = list(db.changes(since=last))
    assert [(c.key, c.value) for c in new] == [(b"new", b"1")]


def test_changes_survive_reopen_and_cursor_stays_valid(open_db, db_path):
    db = open_db()
    for i in range(10):
        db.put(b"k%d" % i, b"v")
    cur = list(db.changes())[4].cursor
    db.close()
    db = open_db()
    db.put(b"after", b"reopen")
    rest = list(db.changes(since=cur))
    assert [c.key for c in rest] == [b"k%d" % i for i in range(5, 10)] + [b"after"]


def test_batch_appears_whole_and_in_one_commit_callback(open_db):
    db = open_db()
    calls: List[List[ae.Change]] = []
    db.on_commit(lambda chs: calls.append(list(chs)))
    db.put(b"before", b"0")
    with db.batch() as b:
        b.put(b"a", b"1")
        b.delete(b"before")
        b.put(b"c", b"3")
    db.put(b"after", b"4")
    assert [len(c) for c in calls] == [1, 3, 1]
    assert [(c.key, c.op) for c in calls[1]] == [(b"a", ae.Op.PUT), (b"before", ae.Op.DELETE), (b"c", ae.Op.PUT)]
    feed = list(db.changes())
    assert [plain(c) for c in feed] == [plain(c) for call in calls for c in call]
    # from the cursor before the batch, the whole batch comes next
    nxt = list(db.changes(since=feed[0].cursor, limit=3))
    assert [c.key for c in nxt] == [b"a", b"before", b"c"]


def test_include_applied(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"), node_id=1)
    b = open_db(str(tmp_path / "b"), node_id=2)
    a.put(b"x", b"from-a")
    b.put(b"y", b"from-b")
    assert b.apply(list(a.changes())) == 1
    assert [c.key for c in b.changes()] == [b"y"]
    both = list(b.changes(include_applied=True))
    assert sorted(c.key for c in both) == [b"x", b"y"]
    x = [c for c in both if c.key == b"x"][0]
    assert x.timestamp.node_id == 1 and x.value == b"from-a"
    # the applied record reached b's listeners only if asked; a's own feed is unchanged
    assert [c.key for c in a.changes()] == [b"x"]


def test_merge_operands_travel_as_merge_records(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"), node_id=1)
    b = open_db(str(tmp_path / "b"), node_id=2)
    ca = a.namespace("c", merge=crdt.PNCounter())
    cb = b.namespace("c", merge=crdt.PNCounter())
    ca.merge(b"n", crdt.PNCounter.increment(5))
    ca.merge(b"n", crdt.PNCounter.decrement(2))
    feed = list(a.changes())
    assert [c.op for c in feed] == [ae.Op.MERGE, ae.Op.MERGE] and all(c.namespace == "c" for c in feed)
    assert b.apply(feed) == 2
    assert b.apply(feed) == 0  # idempotent
    assert cb.get(b"n") == 3 and cb.get_raw(b"n") == ca.get_raw(b"n")


def test_slot_persists_across_reopen_and_ack_advances(open_db):
    db = open_db()
    slot = db.replication_slot("r1")
    assert slot.name == "r1"
    for i in range(20):
        db.put(b"k%02d" % i, b"v" * 20)
    got = list(slot.changes())
    assert len(got) == 20
    assert len(list(slot.changes())) == 20  # reading does not advance
    lag0 = slot.lag_bytes
    assert lag0 > 0
    slot.ack(got[9].cursor)
    assert 0 < slot.lag_bytes < lag0
    assert [c.key for c in slot.changes()] == [b"k%02d" % i for i in range(10, 20)]
    assert [c.key for c in slot.changes(limit=3)] == [b"k10", b"k11", b"k12"]
    st_ = db.stats()["slots"]["r1"]
    assert st_["invalidated"] is False and st_["lag_bytes"] == slot.lag_bytes
    db.close()
    db = open_db()
    slot = db.replication_slot("r1")
    assert [c.key for c in slot.changes()] == [b"k%02d" % i for i in range(10, 20)]
    slot.ack(list(slot.changes())[-1].cursor)
    assert list(slot.changes()) == [] and slot.lag_bytes == 0
    db.drop_replication_slot("r1")
    assert "r1" not in db.stats()["slots"]


def test_compaction_keeps_the_segments_a_slot_needs(open_db):
    db = open_db(**SMALL)
    slot = db.replication_slot("lagging")
    for i in range(600):
        db.put(b"k%04d" % i, b"v" * 40)
    before = db.stats()["segments"]
    assert before > 5
    db.compact(wait=True)
    got = list(slot.changes())
    assert [c.key for c in got] == [b"k%04d" % i for i in range(600)]
    assert db.stats()["slots"]["lagging"]["invalidated"] is False
    # once acknowledged, compaction frees them
    slot.ack(got[-1].cursor)
    db.put(b"tail", b"x")
    db.compact(wait=True)
    assert db.stats()["segments"] < before
    assert [c.key for c in slot.changes()] == [b"tail"]


def test_slot_lagging_too_far_is_invalidated(open_db):
    db = open_db(max_slot_lag_bytes=8192, **SMALL)
    slot = db.replication_slot("slow")
    ok = db.replication_slot("fast")
    first_cursor = None
    for i in range(600):
        db.put(b"k%04d" % i, b"v" * 40)
        if i == 0:
            first_cursor = list(db.changes())[0].cursor
    ok.ack(list(ok.changes())[-1].cursor)
    db.compact(wait=True)
    stats = db.stats()["slots"]
    assert stats["slow"]["invalidated"] is True
    assert stats["fast"]["invalidated"] is False
    with pytest.raises(SlotInvalidatedError):
        list(slot.changes())
    with pytest.raises(SlotInvalidatedError):
        list(db.changes(since=first_cursor))
    db.close()
    db = open_db(max_slot_lag_bytes=8192, **SMALL)
    with pytest.raises(SlotInvalidatedError):
        list(db.replication_slot("slow").changes())
    assert list(db.replication_slot("fast").changes()) == []


def test_on_commit_sees_every_change_and_listener_errors_do_not_break_writes(open_db):
    db = open_db()
    ctr = db.namespace("c", merge=crdt.PNCounter())
    seen: List[ae.Change] = []

    def boom(_chs):
        raise RuntimeError("listener bug")

    unsub = db.on_commit(boom)  # registered first: the next listener must still run
    db.on_commit(lambda chs: seen.extend(chs))
    db.put(b"a", b"1")
    db.delete(b"a")
    ctr.merge(b"n", crdt.PNCounter.increment(2))
    db.put_many([(b"m%d" % i, b"x") for i in range(4)])
    db.apply([ae.Change("", b"remote", ae.Op.PUT, b"r", ae.Timestamp(1000, 0, 7))])
    assert db.get(b"m3") == b"x"
    assert db.stats()["listener_errors"] >= 4
    local = [plain(c) for c in db.changes()]
    assert [plain(c) for c in seen if c.key != b"remote"] == local
    assert len(local) == 7
    unsub()
    n = db.stats()["listener_errors"]
    db.put(b"z", b"1")
    assert db.stats()["listener_errors"] == n
    assert plain(seen[-1]) == plain(list(db.changes())[-1])


def test_wire_encoding_roundtrip():
    chs = [ae.Change("", b"k", ae.Op.PUT, b"v", ae.Timestamp(5, 1, 2)),
           ae.Change("ns\u00e9", b"", ae.Op.DELETE, None, ae.Timestamp(6, 0, 3)),
           ae.Change("c", b"x" * 300, ae.Op.MERGE, b"\x00" * 1000, ae.Timestamp(7, 9, 4))]
    assert decode_changes(encode_changes(chs)) == chs
    with pytest.raises(ValueError):
        decode_changes(encode_changes(chs)[:-1])


# ---------------------------------------------------------------------------
# (b) two replicas: feed one into the other
# ---------------------------------------------------------------------------

def test_two_replica_example_converges(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"), node_id=1)
    b = open_db(str(tmp_path / "b"), node_id=2)
    for db in (a, b):
        db.namespace("hits", merge=crdt.PNCounter())
    slot = a.replication_slot("to-b")
    for i in range(200):
        a.put(b"k%03d" % i, b"v%d" % i)
    for i in range(0, 200, 7):
        a.delete(b"k%03d" % i)
    a.namespace("hits").merge(b"page", crdt.PNCounter.increment(3))
    b.namespace("hits").merge(b"page", crdt.PNCounter.increment(4))
    b.put(b"k001", b"b-wins")  # newer than a's k001
    # ship a -> b through the slot, in chunks
    while True:
        chunk = list(slot.changes(limit=64))
        if not chunk:
            break
        b.apply(chunk)
        slot.ack(chunk[-1].cursor)
    # and b's own writes -> a
    a.apply(list(b.changes()))
    for db in (a, b):
        assert db.get(b"k001") == b"b-wins"
        assert db.get(b"k007") is None and db.get(b"k008") == b"v8"
        assert db.namespace("hits").get(b"page") == 7
    assert dict(a.scan()) == dict(b.scan())
    for ns in ("", "hits"):
        assert full_digest(a, ns) == full_digest(b, ns)
        for leaf in [(0, 0, 0), leaf_path(b"k001")]:
            assert sorted(map(plain, a.records(ns, leaf))) == sorted(map(plain, b.records(ns, leaf)))


def test_digest_records_are_the_newest_record_per_key(open_db):
    db = open_db()
    db.put(b"k", b"1")
    ts = db.delete(b"k")
    recs = [r for r in db.records("", leaf_path(b"k")) if r.key == b"k"]
    assert len(recs) == 1 and recs[0].op == ae.Op.DELETE and recs[0].timestamp == ts
    assert db.digest("", ()) != [0] * 16


# ---------------------------------------------------------------------------
# The replica group: quorums, hinted handoff, read repair, anti-entropy
# ---------------------------------------------------------------------------

NAMESPACES = {"cnt": crdt.PNCounter(), "set": crdt.ORSet()}


@pytest.fixture
def group(tmp_path):
    groups = []

    def make(**kw):
        kw.setdefault("namespaces", NAMESPACES)
        g = ReplicaGroup(str(tmp_path / f"g{len(groups)}"), **{**SMALL, **kw})
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.close()


def values_everywhere(g: ReplicaGroup, key: bytes, ns: str = ""):
    return [r.ns[ns].get(key) for r in g.replicas]


def test_group_write_quorum_all_and_read(group):
    g = group(write_quorum=3, read_quorum=1)
    res = g.put(b"k", b"v")
    assert res.acks == 3 and res.coordinator == g.coordinator(b"k")
    assert values_everywhere(g, b"k") == [b"v"] * 3
    g.merge(b"n", crdt.PNCounter.increment(2), namespace="cnt")
    g.merge(b"n", crdt.PNCounter.increment(3), namespace="cnt")
    assert values_everywhere(g, b"n", "cnt") == [5, 5, 5]
    assert g.get(b"n", namespace="cnt") == 5
    g.delete(b"k")
    assert g.get(b"k", default="gone") == "gone"


def test_group_write_quorum_not_reached_raises_but_keeps_the_write(group):
    net = SimulatedNetwork(seed=1, drop=1.0)
    g = group(write_quorum=2, read_quorum=3, transport=net, timeout=0.2)
    with pytest.raises(QuorumError) as ei:
        g.put(b"k", b"v")
    assert ei.value.result.acks == 1
    # the coordinator has it; a read of all three repairs the others
    assert g.get(b"k") == b"v"
    assert values_everywhere(g, b"k") == [b"v"] * 3


def test_hinted_handoff(group):
    g = group(write_quorum=2, read_quorum=1)
    g.down(2)
    for i in range(20):
        g.put(b"k%d" % i, b"v%d" % i)
        g.merge(b"c", crdt.PNCounter.increment(1), namespace="cnt")
    assert g.stats["hints_stored"] == 40
    assert sum(len(v) for r in g.replicas for v in r.hints.values()) == 40
    g.up(2)
    assert g.stats["hints_delivered"] == 40
    eng = g.replicas[2].engine
    assert eng.get(b"k19") == b"v19" and g.replicas[2].ns["cnt"].get(b"c") == 20
    # nothing left to repair
    st_ = g.anti_entropy()
    assert st_["keys_repaired"] == 0 and st_["leaves"] == 0


def test_read_repair(group):
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=1, read_quorum=3, transport=net)
    key = b"k"
    coord = g.coordinator(key)
    stale = [i for i in range(3) if i != coord]
    for i in stale:
        net.partition(i)
    g.put(key, b"new")
    g.merge(key, crdt.ORSet.add(b"x"), namespace="set")
    net.heal()
    assert [g.replicas[i].engine.get(key) for i in stale] == [None, None]
    assert g.get(key) == b"new"
    assert g.get(key, namespace="set") == frozenset({b"x"})
    assert values_everywhere(g, key) == [b"new"] * 3
    assert values_everywhere(g, key, "set") == [frozenset({b"x"})] * 3
    assert g.stats["read_repairs"] == 4  # 2 stale replicas x 2 namespaces
    g.get(key); g.get(key, namespace="set")
    assert g.stats["read_repairs"] == 4  # equal states (stamped anew by records()) are not rewritten


def test_anti_entropy_repairs_both_ways(group):
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=1, read_quorum=1, transport=net)
    net.partition(0)
    net.partition(1)
    net.partition(2)
    written = {}
    for i in range(60):
        key = b"k%02d" % i
        g.put(key, b"v%d" % i)
        written[key] = b"v%d" % i
        g.merge(b"ctr", crdt.PNCounter.increment(1), namespace="cnt")
    net.heal()
    before = [full_digest(r.engine) for r in g.replicas]
    assert before[0] != before[1]
    st_ = g.anti_entropy()
    assert st_["keys_repaired"] > 0 and st_["bytes"] > 0
    for ns in g.namespaces:
        digests = [full_digest(r.engine, ns) for r in g.replicas]
        assert digests[0] == digests[1] == digests[2]
    for key, v in written.items():
        assert values_everywhere(g, key) == [v] * 3
    assert values_everywhere(g, b"ctr", "cnt") == [60] * 3
    again = g.anti_entropy()
    assert again["keys_repaired"] == 0 and again["leaves"] == 0
    assert again["rounds"] == 3 * len(g.namespaces)  # one root exchange per pair and namespace


def test_anti_entropy_repairs_a_crdt_delete(group):
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=1, read_quorum=1, transport=net)
    g.merge(b"n", crdt.PNCounter.increment(5), namespace="cnt")
    g.settle()
    assert values_everywhere(g, b"n", "cnt") == [5, 5, 5]
    coord = g.coordinator(b"n")
    for i in range(3):
        if i != coord:
            net.partition(i)
    g.delete(b"n", namespace="cnt")
    g.merge(b"n", crdt.PNCounter.increment(1), namespace="cnt")
    net.heal()
    g.anti_entropy()
    assert values_everywhere(g, b"n", "cnt") == [1, 1, 1]
    digests = [full_digest(r.engine, "cnt") for r in g.replicas]
    assert digests[0] == digests[1] == digests[2]


def test_resolve():
    t = ae.Timestamp
    a = ae.Change("", b"k", ae.Op.PUT, b"a", t(5, 0, 1))
    d = ae.Change("", b"k", ae.Op.DELETE, None, t(6, 0, 2))
    assert resolve(None, [a, None, d]) == d
    assert resolve(None, [None, None]) is None
    op = crdt.PNCounter()
    s1 = op.make_operand(crdt.PNCounter.increment(2), None, t(1, 0, 1))
    s2 = op.make_operand(crdt.PNCounter.increment(3), None, t(2, 0, 2))
    r = resolve(op, [ae.Change("c", b"k", ae.Op.MERGE, s1, t(1, 0, 1)),
                     ae.Change("c", b"k", ae.Op.MERGE, s2, t(2, 0, 2))])
    assert op.to_value(r.value) == 5 and r.timestamp == t(2, 0, 2)


# ---------------------------------------------------------------------------
# (c) convergence under a hostile network (hypothesis)
# ---------------------------------------------------------------------------

KEYS = st.sampled_from([b"a", b"b", b"c", b"d", b""])
REPLICA = st.integers(0, 2)
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(max_size=6)),
    st.tuples(st.just("del"), KEYS),
    st.tuples(st.just("inc"), KEYS, st.integers(-5, 5)),
    st.tuples(st.just("add"), KEYS, st.sampled_from([b"x", b"y"])),
    st.tuples(st.just("rem"), KEYS, st.sampled_from([b"x", b"y"])),
    st.tuples(st.just("get"), KEYS, st.sampled_from(["", "cnt", "set"]), st.integers(1, 3)),
    st.tuples(st.sampled_from(["down", "up", "restart", "partition", "heal", "compact"]), REPLICA),
), max_size=30)


@settings(max_examples=30)
@given(ops=OPS, seed=st.integers(0, 2 ** 16), drop=st.sampled_from([0.0, 0.3, 1.0]))
def test_group_converges_after_healing_and_one_anti_entropy(ops, seed, drop):
    root = tempfile.mkdtemp(prefix="abase-repl-")
    net = SimulatedNetwork(seed=seed, drop=drop, duplicate=0.3, delay=0.4)
    g = ReplicaGroup(root, n_replicas=3, partitions=8, write_quorum=1, read_quorum=1, namespaces=NAMESPACES,
                     transport=net, segment_size=4096, compact_interval=None)
    produced: List[ae.Change] = []
    counts: Dict[bytes, int] = {}
    try:
        for op in ops:
            kind = op[0]
            if kind in ("down", "up", "restart", "partition", "heal", "compact"):
                i = op[1]
                if kind == "down" and sum(r.is_up for r in g.replicas) > 1:
                    g.down(i)
                elif kind == "up":
                    g.up(i)
                elif kind == "restart" and g.replicas[i].is_up:
                    g.restart(i)
                elif kind == "partition":
                    net.partition(i)
                elif kind == "heal":
                    net.heal(i)
                elif kind == "compact" and g.replicas[i].is_up:
                    g.replicas[i].call(lambda e: e.compact(wait=True))
                continue
            key = op[1]
            if kind == "get":
                try:
                    g.get(key, namespace=op[2], read_quorum=op[3])
                except QuorumError:
                    pass
                continue
            if kind == "put":
                res = g.put(key, op[2])
            elif kind == "del":
                res = g.delete(key)
            elif kind == "inc":
                res = g.merge(key, crdt.PNCounter.increment(op[2]), namespace="cnt")
                counts[key] = counts.get(key, 0) + op[2]
            elif kind == "add":
                res = g.merge(key, crdt.ORSet.add(op[2]), namespace="set")
            else:
                res = g.merge(key, crdt.ORSet.remove(op[2]), namespace="set")
            assert res.acks >= 1 and res.changes
            produced += res.changes
        # heal everything, bring everyone back, then one anti-entropy sweep
        net.heal()
        for i in range(3):
            g.up(i)
        g.settle()
        g.anti_entropy()
        for name in g.namespaces:
            digests = [full_digest(r.engine, name) for r in g.replicas]
            assert digests[0] == digests[1] == digests[2], name
        # the visible values are the expected LWW / CRDT results
        for key in [b"a", b"b", b"c", b"d", b""]:
            lww = [c for c in produced if c.namespace == "" and c.key == key]
            want = None
            if lww:
                w = max(lww, key=lambda c: c.timestamp)
                want = None if w.op == ae.Op.DELETE else w.value
            assert values_everywhere(g, key) == [want] * 3
            for name in ("cnt", "set"):
                op = g.namespaces[name]
                deltas = [c.value for c in produced if c.namespace == name and c.key == key]
                raw = op.full_merge(None, deltas) if deltas else None
                assert [r.ns[name].get_raw(key) for r in g.replicas] == [raw] * 3, name
            assert values_everywhere(g, key, "cnt") == [counts.get(key)] * 3  # PNCounter: the exact sum
            assert g.get(key, namespace="", read_quorum=3) == want
        assert sum(r.errors for r in g.replicas) == 0
    finally:
        g.close()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------
# (d) a replica process SIGKILLed mid-stream resumes exactly
# ---------------------------------------------------------------------------

sys.path.insert(0, HERE)
import replica_worker  # noqa: E402


def make_source(path: str):
    """A source engine with puts, overwrites, deletes, batches and PNCounter
    merges; returns (engine, the exact sum of every increment)."""
    src = ae.open(path, node_id=1, compact_interval=None)
    ctr = src.namespace(replica_worker.COUNTER_NS, merge=crdt.PNCounter())
    total = 0
    for i in range(1500):
        r = i % 10
        if r < 6:
            src.put(b"k%04d" % (i % 700), b"v%d" % i)
        elif r == 6:
            src.delete(b"k%04d" % ((i * 7) % 700))
        elif r == 7:
            with src.batch() as b:
                for j in range(3):
                    b.put(b"b%d-%d" % (i, j), b"x" * j)
        else:
            n = (i % 13) - 4
            ctr.merge(b"ctr%d" % (i % 3), crdt.PNCounter.increment(n))
            total += n
    return src, total


def test_replica_worker_sigkilled_mid_stream_resumes_exactly(tmp_path):
    src, expected_total = make_source(str(tmp_path / "src"))
    try:
        slot = src.replication_slot("child")
        records = [plain(c) for c in slot.changes()]
        stream = tmp_path / "stream.bin"
        stream.write_bytes(encode_changes(records))
        chunk = 40
        # the reference: the same chunks applied once, in one process
        ref_changed: Dict[int, int] = {}
        with replica_worker.open_target(str(tmp_path / "ref")) as ref:
            replica_worker.run(ref, records, chunk,
                               lambda line: ref_changed.__setitem__(*map(int, line.split()[1:3]))
                               if line.startswith("ack") else None)
        target = str(tmp_path / "dst")
        boundaries = set(range(0, len(records), chunk)) | {len(records)}
        acked = 0
        kills = 0
        for stop_after, allowance in ((3, 12), (2, 9), (4, 15), (None, None)):
            proc = subprocess.Popen([sys.executable, WORKER, target, str(stream), str(chunk)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                resume = proc.stdout.readline().split()
                assert resume[0] == b"resume"
                pos = int(resume[1])
                # nothing acknowledged is lost, nothing is redone, and it restarts at a chunk boundary
                assert pos >= acked and pos in boundaries
                limit = len(records) if allowance is None else min(len(records), pos + allowance * chunk)
                proc.stdin.write(b"go %d\n" % limit)
                proc.stdin.flush()
                seen = 0
                while True:
                    line = proc.stdout.readline().split()
                    assert line, proc.stderr.read().decode()
                    if line[0] == b"done":
                        break
                    assert line[0] == b"ack"
                    end, changed = int(line[1]), int(line[2])
                    assert changed == ref_changed[end], (end, changed)  # neither skipped nor applied twice
                    acked = end
                    seen += 1
                    if stop_after is not None and seen == stop_after:
                        os.kill(proc.pid, signal.SIGKILL)
                        kills += 1
                        break
            finally:
                if proc.poll() is None and stop_after is None:
                    proc.wait(60)
                proc.kill()  # no-op if it has exited
                rc = proc.wait()
                for f in (proc.stdin, proc.stdout, proc.stderr):
                    f.close()
            assert rc == (0 if stop_after is None else -signal.SIGKILL)
        assert kills == 3 and acked == len(records)
        # the source's slot: acknowledge what the replica now holds
        slot.ack(list(slot.changes())[-1].cursor)
        assert list(slot.changes()) == []
        with replica_worker.open_target(target) as dst:
            assert replica_worker.position(dst) == len(records)
            for ns in ("", replica_worker.COUNTER_NS):
                assert full_digest(dst, ns) == full_digest(src, ns)
                assert list(dst.namespace(ns).scan()) == list(src.namespace(ns).scan())
            total = sum(dst.namespace(replica_worker.COUNTER_NS).get(b"ctr%d" % j, 0) for j in range(3))
            assert total == expected_total
    finally:
        src.close()
