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
from concurrent.futures import Future
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

import abase_engine as ae
from abase_engine import crdt
from abase_engine.cluster import ClusterConfigError, IdAllocator, Transport, UnknownNamespaceError
from abase_engine.cluster.resolve import plain
from abase_engine.errors import SlotInvalidatedError
from abase_engine.replication import (
    QuorumError, ReplicaGroup, ReplicaUnavailableError, SimulatedNetwork, decode_changes, encode_changes,
    leaf_path, partition_of, resolve,
)
from conftest import real_ms

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "replica_worker.py")

SMALL = dict(segment_size=4096, compact_interval=None)


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
# The replica group (the cluster protocol over the simulated network):
# quorums, retries, hinted handoff, read repair, anti-entropy
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
    return [r.namespace(ns).get(key) for r in g.replicas_of(key)]


def key_record(svc, ns: str, key: bytes):
    recs = [r for r in svc.engine.records(ns, leaf_path(key)) if r.key == key]
    return recs[-1] if recs else None


class LoseReplies(Transport):
    """Wraps a transport: the replies of the first ``n`` calls of ``method`` are
    lost after the call ran (the caller sees an ambiguous failure)."""

    def __init__(self, inner: Transport, method: str, n: int) -> None:
        self.inner, self.method, self.left = inner, method, n

    def call(self, ref, method, args):
        fut = self.inner.call(ref, method, args)
        if method == self.method and self.left > 0:
            self.left -= 1
            fut.result()  # it ran
            out: Future = Future()
            out.set_exception(ReplicaUnavailableError(f"reply of {method} to {ref} lost"))
            return out
        return fut


def test_group_write_quorum_all_and_read(group):
    g = group(write_quorum=3, read_quorum=1, partitions=2)
    res = g.put(b"k", b"v")
    assert res.acks == 3 and res.acked == (0, 1, 2) and res.missed == ()
    assert res.partition == partition_of(b"k", 2) and res.timestamp.node_id == g.client.node_id
    assert values_everywhere(g, b"k") == [b"v"] * 3
    r1 = g.merge(b"n", crdt.PNCounter.increment(2), namespace="cnt")
    g.merge(b"n", crdt.PNCounter.increment(3), namespace="cnt")
    assert r1.kind == "merge" and r1.origin is not None and r1.timestamp.node_id == g.replica(r1.partition,
                                                                                              r1.origin).node_id
    assert values_everywhere(g, b"n", "cnt") == [5, 5, 5]
    assert g.get(b"n", namespace="cnt") == 5
    g.delete(b"k")
    assert g.get(b"k", default="gone") == "gone"
    # a key of the other partition is not on this partition's replicas
    other = next(b"x%d" % i for i in range(100) if partition_of(b"x%d" % i, 2) != partition_of(b"k", 2))
    g.put(other, b"o")
    assert [r.engine.get(other) for r in g.replicas_of(b"k")] == [None] * 3


def test_write_quorum_not_reached_raises_and_a_retry_reuses_the_record(group):
    net = SimulatedNetwork(seed=1, drop=1.0)
    g = group(write_quorum=2, read_quorum=2, transport=net)
    with pytest.raises(QuorumError) as ei:
        g.put(b"k", b"v")
    res = ei.value.result
    assert res.acks <= 1 and len(res.changes) == 1
    net.set_faults()  # the network recovers
    again = g.retry(res)
    assert again.timestamp == res.timestamp and again.changes == res.changes and again.acks == 3
    assert g.get(b"k") == b"v"
    assert {key_record(r, "", b"k").timestamp for r in g.replicas_of(b"k")} == {res.timestamp}


def test_crdt_retry_after_a_lost_reply_counts_once(group):
    g = group()
    g.client.transport = LoseReplies(g.network, "execute", 1)
    res = g.merge(b"c", crdt.PNCounter.increment(7), namespace="cnt")
    origin = g.replica(res.partition, res.origin)
    assert origin.stats["executed"] == 1 and origin.stats["request_hits"] == 1
    assert g.get(b"c", namespace="cnt") == 7
    assert values_everywhere(g, b"c", "cnt") == [7, 7, 7]


def test_crdt_origin_silent_raises_counts_at_most_once_and_retry_counts_once(group):
    g = group()
    g.client.transport = LoseReplies(g.network, "execute", 10)  # every attempt runs, no reply comes back
    with pytest.raises(QuorumError) as ei:
        g.merge(b"c", crdt.PNCounter.increment(4), namespace="cnt")
    res = ei.value.result
    assert res.request_id is not None and res.changes == () and res.origin is not None
    # it may have run, on the origin only, and once
    assert g.replica(res.partition, res.origin).namespace("cnt").get(b"c") == 4
    assert g.get(b"c", namespace="cnt", read_quorum=3) == 4  # read repair spreads it
    g.client.transport = g.network
    done = g.retry(res)
    assert done.request_id == res.request_id and done.acks == 3
    assert values_everywhere(g, b"c", "cnt") == [4, 4, 4]  # the retry did not add again


def test_request_ids_are_forgotten_after_their_ttl(group):
    g = group()
    res = g.merge(b"c", crdt.PNCounter.increment(1), namespace="cnt")
    origin = g.replica(res.partition, res.origin)
    assert origin.collect_requests() == 0  # younger than the TTL: kept for retries
    later = origin.clock().physical_ms + origin.request_ttl_ms + 1000
    assert origin.collect_requests(now_ms=later) == 1
    assert origin.collect_requests(now_ms=later) == 0
    assert g.get(b"c", namespace="cnt") == 1  # the operation itself stays


def test_crdt_operation_moves_to_another_origin_only_when_undelivered(group):
    g = group()
    key = b"c"
    first = g.client.origins(key)[0]
    g.down(first)  # certainly not delivered: the operation may move
    res = g.merge(key, crdt.PNCounter.increment(1), namespace="cnt")
    assert res.origin != first and res.acks == 2 and res.missed == (first,)
    g.up(first)  # the hint brings it
    assert values_everywhere(g, key, "cnt") == [1, 1, 1]


def test_hinted_handoff_outlives_the_holder_and_the_client(group):
    g = group(write_quorum=2, read_quorum=1)
    g.down(2)
    for i in range(20):
        g.put(b"k%d" % i, b"v%d" % i)
        g.merge(b"c", crdt.PNCounter.increment(1), namespace="cnt")
    assert g.client.stats["hints_stored"] == 40 and g.client.stats["hints_lost"] == 0
    held = {i: g.replica(0, i).hint_targets() for i in (0, 1)}
    assert sum(v[2][0] for v in held.values() if 2 in v) == 40
    # the holders restart (hints are persisted) and the client goes away
    g.restart(0)
    g.restart(1)
    g.client.close()
    assert sum(g.replica(0, i).hint_targets().get(2, (0, 0))[0] for i in (0, 1)) == 40
    g.up(2)
    assert g.stats["hints_delivered"] == 40
    assert all(not g.replica(0, i).hint_targets() for i in range(3))
    r2 = g.replica(0, 2)
    assert r2.engine.get(b"k19") == b"v19" and r2.namespace("cnt").get(b"c") == 20
    st_ = g.anti_entropy()
    assert st_["keys_repaired"] == 0 and st_["leaves"] == 0


def test_read_repair(group):
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=1, read_quorum=3, transport=net)
    key = b"k"
    g.client.hinted_handoff = False  # this test is about read repair
    net.partition(1)
    net.partition(2)
    g.put(key, b"new")
    assert g.client.origins(key)[0] == 0  # 1 and 2 just failed: they are asked last
    g.merge(key, crdt.ORSet.add(b"x"), namespace="set")
    net.heal()
    assert [r.engine.get(key) for r in g.replicas_of(key)] == [b"new", None, None]
    assert g.get(key) == b"new"
    assert g.get(key, namespace="set") == frozenset({b"x"})
    assert values_everywhere(g, key) == [b"new"] * 3
    assert values_everywhere(g, key, "set") == [frozenset({b"x"})] * 3
    assert g.client.stats["read_repairs"] == 4  # 2 stale replicas x 2 namespaces
    g.get(key)
    g.get(key, namespace="set")
    assert g.client.stats["read_repairs"] == 4  # nothing left to repair


def test_anti_entropy_repairs_both_ways(group):
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=1, read_quorum=1, transport=net, partitions=2)
    g.client.hinted_handoff = False
    written = {}
    for i in range(60):
        net.heal()
        net.partition((i + 1) % 3)  # each write reaches two of three
        key = b"k%02d" % i
        g.put(key, b"v%d" % i)
        written[key] = b"v%d" % i
    net.heal()
    g.down(2)
    for _ in range(30):  # counter increments replica 2 never sees
        g.merge(b"ctr", crdt.PNCounter.increment(1), namespace="cnt")
    g.up(2)
    before = [full_digest(g.replica(0, i).engine) for i in range(3)]
    assert before[0] != before[1]
    st_ = g.anti_entropy()
    assert st_["keys_repaired"] > 0 and st_["bytes"] > 0
    for p in range(2):
        for ns in g.namespaces:
            digests = [full_digest(g.replica(p, i).engine, ns) for i in range(3)]
            assert digests[0] == digests[1] == digests[2]
    for key, v in written.items():
        assert values_everywhere(g, key) == [v] * 3
    assert values_everywhere(g, b"ctr", "cnt") == [30] * 3
    again = g.anti_entropy()
    assert again["keys_repaired"] == 0 and again["leaves"] == 0
    assert again["rounds"] == 3 * len(g.namespaces) * 2  # one root exchange per pair, namespace and partition


def test_anti_entropy_cost_grows_with_differences_not_keys(group):
    g = group(write_quorum=3, read_quorum=1)
    g.put_many([(b"k%05d" % i, b"v") for i in range(3000)])
    assert g.anti_entropy()["leaves"] == 0
    g.down(2)
    g.client.hinted_handoff = False
    for i in range(3):
        g.put(b"k%05d" % i, b"changed", w=2)
    g.up(2)
    st_ = g.anti_entropy()
    # 3 differing keys: at most 3 leaves per pair that differ (2 pairs involve replica 2)
    assert 0 < st_["leaves"] <= 2 * 3 and st_["keys_repaired"] == 3
    assert st_["rounds"] <= 3 * len(g.namespaces) + 2 * (3 + 1)


def test_anti_entropy_repairs_a_crdt_delete(group):
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=1, read_quorum=1, transport=net)
    g.merge(b"n", crdt.PNCounter.increment(5), namespace="cnt", w=3)
    assert values_everywhere(g, b"n", "cnt") == [5, 5, 5]
    g.client.hinted_handoff = False
    order = g.client.origins(b"n")
    for i in order[1:]:
        net.partition(i)
    g.delete(b"n", namespace="cnt")
    g.merge(b"n", crdt.PNCounter.increment(1), namespace="cnt")
    net.heal()
    assert sorted(values_everywhere(g, b"n", "cnt")) == [1, 5, 5]
    g.anti_entropy()
    assert values_everywhere(g, b"n", "cnt") == [1, 1, 1]
    digests = [full_digest(r.engine, "cnt") for r in g.replicas_of(b"n")]
    assert digests[0] == digests[1] == digests[2]


def test_observed_remove_sees_what_its_origin_saw_unless_observe_quorum(group):
    """W=2 of 3: an add acknowledged by two replicas may be missing on the third;
    a remove that runs there removes only what it had seen, so the add survives
    (add-wins). observe_quorum first gives the origin the key's records from R
    replicas: with R + W > N it then sees every acknowledged add."""
    net = SimulatedNetwork(seed=0)
    g = group(write_quorum=2, read_quorum=2, transport=net)
    g.client.hinted_handoff = False
    g.client.suspect_seconds = 0.0
    for key, observe in ((b"tags-1", False), (b"tags-2", True)):
        stale = g.client.origins(key)[0]
        net.partition(stale)
        with pytest.raises(QuorumError):  # the add's origin is cut off: it may have run there
            g.merge(key, crdt.ORSet.add(b"x"), namespace="set")
        others = [i for i in range(3) if i != stale]
        net.heal()
        assert [g.replica(0, i).namespace("set").get(key) for i in range(3)] == [None] * 3
        # the add runs elsewhere (stale is down: certainly undelivered), acknowledged by the two others
        g.down(stale)
        res = g.merge(key, crdt.ORSet.add(b"x"), namespace="set")
        assert sorted(res.acked) == others
        g.up(stale)
        assert g.replica(0, stale).namespace("set").get(key) is None
        res = g.merge(key, crdt.ORSet.remove(b"x"), namespace="set", observe_quorum=observe)
        assert res.origin == stale
        g.anti_entropy()
        values = values_everywhere(g, key, "set")
        assert values[0] == values[1] == values[2]
        if observe:
            assert not values[0]  # the remove saw the acknowledged add
        else:
            assert values[0] == frozenset({b"x"})  # add-wins: the remove had not seen it
            g.merge(key, crdt.ORSet.remove(b"x"), namespace="set")  # now its origin has seen the add
            assert not g.get(key, namespace="set", read_quorum=3)


def test_client_clock_receives_what_it_reads(group):
    g = group(write_quorum=3, read_quorum=3)
    first = g.put(b"k", b"by the group's client")
    behind = g.new_client(clock=lambda: real_ms() - 300)  # 300 ms behind everyone else
    assert behind.get(b"k") == b"by the group's client"
    res = behind.put(b"k", b"by the slow client")
    assert res.timestamp > first.timestamp  # it read the value, so its write is newer
    assert g.get(b"k") == b"by the slow client"
    blind = g.new_client(clock=lambda: real_ms() - 300)  # the same clock, without the read
    assert blind.put(b"k", b"lost").timestamp < res.timestamp
    assert g.get(b"k") == b"by the slow client"
    behind.close()
    blind.close()


def test_clock_skew_fails_the_call_and_names_the_clocks(group):
    g = group()
    ahead = g.new_client(clock=lambda: real_ms() + 60_000)
    with pytest.raises(ae.ClockSkewError) as ei:
        ahead.put(b"k", b"v")
    msg = str(ei.value)
    assert "refused records stamped" in msg and "its own clock reads" in msg and f"node {ahead.node_id}" in msg
    assert g.get(b"k") is None  # nobody took it (no silent restamp)
    behind = g.new_client(clock=lambda: real_ms() - 60_000)
    with pytest.raises(ae.ClockSkewError) as ei:
        behind.get(b"k")
    assert f"client node {behind.node_id}" in str(ei.value)
    ahead.close()
    behind.close()


def test_node_ids_are_never_reused(group, tmp_path):
    g = group(partitions=2)
    ids = {g.replica(p, i).node_id for p in range(2) for i in range(3)} | {g.client.node_id}
    assert len(ids) == 7
    c2 = g.new_client()
    assert c2.node_id not in ids
    old = g.replica(0, 1).node_id
    g.restart(1)  # same directory, data kept: same id
    assert g.replica(0, 1).node_id == old
    g.put(b"k", b"v")
    g.down(1)
    shutil.rmtree(os.path.join(g.replica(0, 1).directory, "engine"))  # the node is rebuilt empty
    g.up(1)
    new = g.replica(0, 1).node_id
    assert new != old and new not in ids | {c2.node_id}
    c2.close()


def test_id_allocator_persists_and_detects_corruption(tmp_path):
    a = IdAllocator(str(tmp_path / "ids"))
    first = a.allocate()
    assert a.allocate(5) == first + 1
    b = IdAllocator(str(tmp_path / "ids"))  # another process would see the same file
    assert b.allocate() == first + 6
    (tmp_path / "ids" / "next_node_id").write_text("abase-node-ids v1 99 00000000\n")
    with pytest.raises(ae.CorruptionError) as ei:
        IdAllocator(str(tmp_path / "ids"))
    assert "next_node_id" in str(ei.value)
    with pytest.raises(ValueError):
        b.allocate(0)


def test_bad_configuration_and_input_raise_clear_errors(group, tmp_path):
    with pytest.raises(ClusterConfigError, match="write_quorum"):
        ReplicaGroup(str(tmp_path / "w"), n_replicas=3, write_quorum=4)
    with pytest.raises(ClusterConfigError, match="read_quorum"):
        ReplicaGroup(str(tmp_path / "r"), n_replicas=3, read_quorum=0)
    with pytest.raises(ClusterConfigError, match="MergeOperator"):
        ReplicaGroup(str(tmp_path / "o"), namespaces={"bad": "PNCounter"})
    with pytest.raises(ClusterConfigError, match="reserved"):
        ReplicaGroup(str(tmp_path / "x"), namespaces={"__cluster.requests": None})
    with pytest.raises(ClusterConfigError, match="partitions"):
        ReplicaGroup(str(tmp_path / "p"), partitions=0)
    g = group()
    with pytest.raises(UnknownNamespaceError, match="nope"):
        g.put(b"k", b"v", namespace="nope")
    with pytest.raises(TypeError):
        g.put("k", b"v")
    with pytest.raises(TypeError):
        g.put(b"k", 5)
    with pytest.raises(ae.KeyTooLargeError):
        g.put(b"k" * 600, b"v")
    with pytest.raises(ClusterConfigError, match="w must be"):
        g.put(b"k", b"v", w=4)
    with pytest.raises(ae.errors.MergeOperandError):
        g.merge(b"k", crdt.ORSet.add(b"x"), namespace="cnt")
    with pytest.raises(ae.errors.MergeOperandError):
        g.put(b"k", b"not a counter state", namespace="cnt")
    with pytest.raises(ValueError, match="partition"):
        list(g.scan(5))
    for i in range(3):
        g.down(i)
    with pytest.raises(QuorumError, match="no replica"):
        g.merge(b"k", crdt.PNCounter.increment(1), namespace="cnt")
    with pytest.raises(QuorumError, match="0 of W=2"):
        g.put(b"k", b"v")
    with pytest.raises(QuorumError, match="0 of R=2"):
        g.get(b"k")


def test_scan_merges_replicas_and_repairs(group):
    net = SimulatedNetwork(seed=3)
    g = group(write_quorum=1, read_quorum=3, transport=net, partitions=2)
    g.client.hinted_handoff = False
    g.client.scan_page = 7
    model = {}
    for i in range(40):
        net.heal()
        net.partition(i % 3)
        key = b"s%03d" % i
        g.put(key, b"v%d" % i)
        model[key] = b"v%d" % i
        if i % 5 == 0:
            g.delete(key)
            del model[key]
    net.heal()
    got = dict(kv for p in range(2) for kv in g.scan(p))
    assert got == model
    assert list(g.scan(0, prefix=b"s00")) == sorted((k, v) for k, v in model.items()
                                                    if k.startswith(b"s00") and partition_of(k, 2) == 0)
    # the scan repaired what it saw: every replica now shows the same
    for p in range(2):
        views = [list(g.replica(p, i).engine.scan()) for i in range(3)]
        assert views[0] == views[1] == views[2]


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
    # an observed-remove delete removes what its writer saw, whatever the order
    rm = op.removal(s1, t(3, 0, 1))
    dn = ae.Change("c", b"k", ae.Op.DELETE, rm, t(3, 0, 1))
    m1 = ae.Change("c", b"k", ae.Op.MERGE, s1, t(1, 0, 1))
    for recs in ([m1, dn], [dn, m1], [dn, m1, dn]):
        r = resolve(op, recs)
        assert r.op == ae.Op.MERGE and op.to_value(r.value) is None and r.timestamp == t(3, 0, 1)
    # an increment the delete had not seen survives it (add-wins), in any order
    s3 = op.make_operand(crdt.PNCounter.increment(4), None, t(4, 0, 3))
    m3 = ae.Change("c", b"k", ae.Op.MERGE, s3, t(4, 0, 3))
    assert op.to_value(resolve(op, [dn, m3, m1]).value) == 4
    assert op.to_value(resolve(op, [m1, m3, dn]).value) == 4
    # a counter delete without its observed totals is refused, never guessed
    with pytest.raises(ae.MergeOperandError):
        resolve(op, [m1, ae.Change("c", b"k", ae.Op.DELETE, None, t(3, 0, 1))])


# ---------------------------------------------------------------------------
# Read-your-writes with W=2, R=2 of 3 under failures (a stateful model)
# ---------------------------------------------------------------------------

class QuorumModel(RuleBasedStateMachine):
    """A dict model of acknowledged writes against a group with W=2, R=2 of N=3
    on a network that loses and delays calls, with nodes going down and up.
    A read must return the newest acknowledged write of the key or a newer
    unacknowledged one (a write that raised may or may not have landed)."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="abase-quorum-")
        self.net = SimulatedNetwork(seed=7, drop=0.1, delay=0.1, duplicate=0.1)
        self.g = ReplicaGroup(self.root, partitions=2, write_quorum=2, read_quorum=2, transport=self.net,
                              segment_size=4096, compact_interval=None)
        self.acked: Dict[bytes, Tuple[ae.Timestamp, bytes]] = {}
        self.maybe: Dict[bytes, List[Tuple[ae.Timestamp, bytes]]] = {}

    @initialize(target=keys, k=st.sampled_from([b"a", b"b", b"c"]))
    def first_key(self, k):
        return k

    @rule(target=keys, k=st.binary(max_size=3))
    def new_key(self, k):
        return k

    def _write(self, key: bytes, value: Optional[bytes], fn) -> None:
        try:
            res = fn()
        except QuorumError as exc:
            self.maybe.setdefault(key, []).append((exc.result.timestamp, value))
            return
        self.acked[key] = (res.timestamp, value)

    @rule(key=keys, value=st.binary(max_size=4))
    def put(self, key, value):
        self._write(key, value, lambda: self.g.put(key, value))

    @rule(key=keys)
    def delete(self, key):
        self._write(key, None, lambda: self.g.delete(key))

    @rule(key=keys)
    def get(self, key):
        try:
            got = self.g.get(key)
        except QuorumError:
            return
        floor = self.acked.get(key)
        allowed = set() if floor is None else {floor[1]}
        if floor is None:
            allowed.add(None)
        allowed |= {v for ts, v in self.maybe.get(key, []) if floor is None or ts > floor[0]}
        assert got in allowed, (key, got, floor, self.maybe.get(key))

    @precondition(lambda self: sum(self.g.is_up(i) for i in range(3)) == 3)
    @rule(node=st.integers(0, 2))
    def down(self, node):
        self.g.down(node)  # one node at a time: W=2 and R=2 stay reachable

    @rule(node=st.integers(0, 2))
    def up(self, node):
        self.g.up(node)

    @rule(node=st.integers(0, 2))
    def restart(self, node):
        if self.g.is_up(node):
            self.g.restart(node)

    @rule()
    def settle(self):
        self.g.settle()

    @invariant()
    def engines_are_healthy(self):
        for p in range(2):
            for i in range(3):
                if self.g.is_up(i):
                    self.g.replica(p, i).engine._check()

    def teardown(self):
        try:
            self.g.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


TestQuorumModel = QuorumModel.TestCase
TestQuorumModel.settings = settings(max_examples=15, stateful_step_count=30, deadline=None)


# ---------------------------------------------------------------------------
# (c) convergence under a hostile network (hypothesis)
# ---------------------------------------------------------------------------

KEYS = st.sampled_from([b"a", b"b", b"c", b"d", b""])
NODE = st.integers(0, 2)
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(max_size=6)),
    st.tuples(st.just("del"), KEYS),
    st.tuples(st.just("inc"), KEYS, st.integers(-5, 5)),
    st.tuples(st.just("add"), KEYS, st.sampled_from([b"x", b"y"])),
    st.tuples(st.just("rem"), KEYS, st.sampled_from([b"x", b"y"])),
    st.tuples(st.sampled_from(["cdel", "sdel"]), KEYS),  # CRDT deletes: observed-remove
    st.tuples(st.just("get"), KEYS, st.sampled_from(["", "cnt", "set"]), st.integers(1, 3)),
    st.tuples(st.sampled_from(["down", "up", "restart", "partition", "heal", "compact"]), NODE),
), max_size=30)


def subset_sums(xs: List[int]) -> set:
    sums = {0}
    for x in xs:
        sums |= {s + x for s in sums}
    return sums


@settings(max_examples=30)
@given(ops=OPS, seed=st.integers(0, 2 ** 16), drop=st.sampled_from([0.0, 0.3, 1.0]))
def test_group_converges_after_healing_and_one_anti_entropy(ops, seed, drop):
    root = tempfile.mkdtemp(prefix="abase-repl-")
    net = SimulatedNetwork(seed=seed, drop=drop, duplicate=0.3, delay=0.4)
    g = ReplicaGroup(root, n_replicas=3, partitions=2, write_quorum=1, read_quorum=1, namespaces=NAMESPACES,
                     transport=net, segment_size=4096, compact_interval=None)
    written: List[ae.Change] = []      # every record the client made or got back (acked or not)
    acked_lww: Dict[bytes, ae.Timestamp] = {}
    acked_sum: Dict[bytes, int] = {}
    failed_incs: Dict[bytes, List[int]] = {}
    cnt_deleted: set = set()  # counter keys an acknowledged delete reset (the sum check no longer applies)
    try:
        for op in ops:
            kind = op[0]
            if kind in ("down", "up", "restart", "partition", "heal", "compact"):
                i = op[1]
                if kind == "down" and sum(g.is_up(j) for j in range(3)) > 1:
                    g.down(i)
                elif kind == "up":
                    g.up(i)
                elif kind == "restart" and g.is_up(i):
                    g.restart(i)
                elif kind == "partition":
                    net.partition(i)
                elif kind == "heal":
                    net.heal(i)
                elif kind == "compact" and g.is_up(i):
                    for p in range(2):
                        g.replica(p, i).engine.compact(wait=True)
                continue
            key = op[1]
            if kind == "get":
                try:
                    g.get(key, namespace=op[2], read_quorum=op[3])
                except QuorumError:
                    pass
                continue
            try:
                if kind == "put":
                    res = g.put(key, op[2])
                elif kind == "del":
                    res = g.delete(key)
                elif kind == "inc":
                    res = g.merge(key, crdt.PNCounter.increment(op[2]), namespace="cnt")
                elif kind == "add":
                    res = g.merge(key, crdt.ORSet.add(op[2]), namespace="set")
                elif kind == "cdel":
                    res = g.delete(key, namespace="cnt")
                elif kind == "sdel":
                    res = g.delete(key, namespace="set")
                else:
                    res = g.merge(key, crdt.ORSet.remove(op[2]), namespace="set")
            except QuorumError as exc:
                res = exc.result
                written += res.changes
                if kind == "inc":
                    failed_incs.setdefault(key, []).append(op[2])
                if kind == "cdel":
                    cnt_deleted.add(key)  # it may have landed
                continue
            assert res.acks >= 1 and res.changes
            written += res.changes
            if kind in ("put", "del"):
                acked_lww[key] = max(acked_lww.get(key, res.timestamp), res.timestamp)
            if kind == "inc":
                acked_sum[key] = acked_sum.get(key, 0) + op[2]
            if kind == "cdel":
                cnt_deleted.add(key)
        # heal everything, bring everyone back, then one anti-entropy sweep
        net.heal()
        net.set_faults()
        for i in range(3):
            g.up(i)
        g.settle()
        g.anti_entropy()
        for p in range(2):
            for name in g.namespaces:
                digests = [full_digest(g.replica(p, i).engine, name) for i in range(3)]
                assert digests[0] == digests[1] == digests[2], (p, name)
        for key in [b"a", b"b", b"c", b"d", b""]:
            reps = g.replicas_of(key)
            # LWW: the surviving record is one the client made, not older than the newest acknowledged
            final = {key_record(r, "", key) for r in reps}
            assert len(final) == 1
            rec = final.pop()
            if rec is None:
                assert key not in acked_lww
            else:
                assert plain(rec) in {plain(c) for c in written if c.namespace == "" and c.key == key}
                assert rec.timestamp >= acked_lww.get(key, rec.timestamp)
            want = None if rec is None or rec.op == ae.Op.DELETE else rec.value
            assert values_everywhere(g, key) == [want] * 3
            assert g.get(key, namespace="", read_quorum=3) == want
            for name in ("cnt", "set"):
                raws = {r.namespace(name).get_raw(key) for r in reps}
                assert len(raws) == 1, name
            # PNCounter: every acknowledged increment once, every failed one at most once
            # (unless a delete reset the key: what it removed depends on what its replica had seen)
            total = reps[0].namespace("cnt").get(key, 0)
            if key not in cnt_deleted:
                assert total - acked_sum.get(key, 0) in subset_sums(failed_incs.get(key, []))
        for p in range(2):
            for i in range(3):
                assert g.replica(p, i).stats["request_hits"] >= 0
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
