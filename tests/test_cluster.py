"""abase_engine.cluster on Ray: P partitions x N replicas as actors on a local,
three-node Ray cluster (``ray.cluster_utils``, loopback only).

Ray starts once for the module. The default run is the short form (about two
minutes on 2 cores); the long form of the chaos test runs with::

    python -m pytest -m cluster_long tests/test_cluster.py

Every test here needs Ray (the ``cluster`` extra); without it the module is
skipped, saying so.
"""

from __future__ import annotations

import random
import threading
from typing import Dict, List

import pytest

try:
    import ray  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("ray is not installed: pip install -e '.[cluster]' runs the cluster tests",
                allow_module_level=True)

import abase_engine as ae
from abase_engine import crdt
from abase_engine.cluster import (
    Cluster, ClusterConfigError, ClusterUnavailableError, ClusterWarning, QuorumError, UnknownNamespaceError,
    partition_of,
)
from abase_engine.cluster.local import start_local_ray

NAMESPACES = {"cnt": crdt.PNCounter(), "set": crdt.ORSet()}
ENGINE = {"segment_size": 1 << 20}


@pytest.fixture(scope="module")
def local_ray():
    lr = start_local_ray(nodes=3, cpus_per_node=1, object_store_mb=80)
    try:
        yield lr
    finally:
        lr.shutdown()


@pytest.fixture(scope="module")
def cluster(local_ray, tmp_path_factory):
    c = Cluster.start(str(tmp_path_factory.mktemp("cluster")), name="main", partitions=2, replicas=3,
                      namespaces=NAMESPACES, engine_options=ENGINE, anti_entropy_interval=0, hint_interval=0.2)
    try:
        yield c
    finally:
        c.shutdown()


def keys_of(partition: int, partitions: int, n: int, prefix: bytes = b"k") -> List[bytes]:
    out, i = [], 0
    while len(out) < n:
        k = prefix + b"%06d" % i
        if partition_of(k, partitions) == partition:
            out.append(k)
        i += 1
    return out


def assert_converged(c: Cluster) -> None:
    for p in range(c.partitions):
        for ns in c.namespaces:
            d = c.digests(p, ns)
            assert d[0] == d[1] == d[2], (p, ns)


def repair(c: Cluster) -> None:
    c.wait_ready(120)
    c.deliver_hints()
    c.anti_entropy()


# ---------------------------------------------------------------------------

def test_layout_placement_and_basic_operations(cluster):
    infos = cluster.info()
    assert all(i is not None for i in infos)
    for p in range(cluster.partitions):
        nodes = [i["node"] for i in infos if i["partition"] == p]
        assert len(set(nodes)) == 3, "replicas of a partition share a Ray node"
    node_ids = {i["node_id"] for i in infos}
    with cluster.client() as c1, cluster.client(write_quorum=3, read_quorum=1) as c2:
        assert len(node_ids | {c1.node_id, c2.node_id}) == len(infos) + 2  # never reused
        ts = c1.put(b"user:1", b"ada")
        assert ts.acks >= 2 and ts.timestamp.node_id == c1.node_id
        assert c2.get(b"user:1") == b"ada" or c1.get(b"user:1") == b"ada"
        c2.put(b"user:2", b"grace")
        assert c2.get(b"user:2") == b"grace"  # W=3, R=1
        c1.delete(b"user:1")
        assert c1.get(b"user:1", default="gone") == "gone"
        c1.merge(b"hits", crdt.PNCounter.increment(5), namespace="cnt")
        c2.merge(b"hits", crdt.PNCounter.increment(2), namespace="cnt")
        assert c1.get(b"hits", namespace="cnt") == 7
        c1.merge(b"tags", crdt.ORSet.add(b"a"), namespace="set")
        c1.merge(b"tags", crdt.ORSet.add(b"b"), namespace="set")
        c2.merge(b"tags", crdt.ORSet.remove(b"a"), namespace="set", observe_quorum=True)
        assert c1.get(b"tags", namespace="set") == frozenset({b"b"})
        items = [(b"bulk%04d" % i, b"v%d" % i) for i in range(500)]
        assert c1.put_many(items) is not None
        assert c2.get_many([k for k, _ in items]) == [v for _, v in items]
        scanned = dict(kv for p in range(cluster.partitions) for kv in c1.scan(p, prefix=b"bulk"))
        assert scanned == dict(items)


def test_a_restarted_replica_keeps_its_node_id(cluster):
    before = {(i["partition"], i["replica"]): (i["node_id"], i["pid"]) for i in cluster.info(0)}
    cluster.kill_replica(0, 1)  # Ray restarts it on its directory
    cluster.wait_ready(60)
    after = {(i["partition"], i["replica"]): (i["node_id"], i["pid"]) for i in cluster.info(0)}
    assert after[(0, 1)][0] == before[(0, 1)][0] and after[(0, 1)][1] != before[(0, 1)][1]


def test_slow_replica_is_masked_by_the_quorum(cluster):
    keys = keys_of(0, cluster.partitions, 20, b"slow")
    before = cluster.info(0)[2]["stats"]
    applied, reads = before["applied"], before["reads"]
    cluster.debug_block(0, 2)  # replica 2 of partition 0 holds every call until released
    try:
        with cluster.client(timeout=1.0) as c:
            results = [c.put(k, b"v") for k in keys]
            assert all(r.acked == (0, 1) and r.missed == (2,) for r in results)
            # reads rotate over the replicas: those that ask replica 2 first also ask
            # another one after hedge_after (0.2 s) and are served by the two that answer
            assert [c.get(k) for k in keys] == [b"v"] * len(keys)
            assert c.get_many(keys) == [b"v"] * len(keys)
            assert c.stats["hedges"] > 0
            # the writes replica 2 never answered are hinted, once their deadline passed
            assert c.flush(30) and c.stats["hints_stored"] == len(keys)
            # every call above returned while replica 2 had served none of them
            assert cluster.info(0)[2]["stats"]["applied"] == applied
            assert cluster.info(0)[2]["stats"]["reads"] == reads
    finally:
        cluster.debug_release(0, 2)
    repair(cluster)
    assert_converged(cluster)


def test_hints_are_replayed_when_a_down_replica_comes_back(cluster):
    keys = keys_of(1, cluster.partitions, 200, b"hint")
    cluster.kill_replica(1, 0, restart=False)
    try:
        with cluster.client(timeout=2.0) as c:
            for k in keys:
                r = c.put(k, b"h")
                assert r.acked == (1, 2)
            c.merge(keys[0], crdt.PNCounter.increment(3), namespace="cnt")
            assert c.flush(60)
            assert c.stats["hints_stored"] >= len(keys) and c.stats["hints_lost"] == 0
        assert cluster.pending_hints() >= len(keys)
    finally:
        cluster.revive_replica(1, 0)
    cluster.wait_ready(60)
    for i in (1, 2):  # the holders' maintenance threads replay the hints on their own
        assert cluster.wait_maintenance(1, i, "no_hints", timeout=60)
    assert cluster.pending_hints() == 0
    # replica 0 caught up from the hints alone: anti-entropy has nothing left to do
    st = cluster.anti_entropy(partitions=[1])
    assert st["keys_repaired"] == 0 and st["leaves"] == 0
    with cluster.client(read_quorum=3) as c:
        assert c.get_many(keys) == [b"h"] * len(keys)
        assert c.get(keys[0], namespace="cnt") == 3


def test_periodic_anti_entropy_converges_a_replica_without_hints(local_ray, tmp_path):
    c = Cluster.start(str(tmp_path / "ae"), name="ae", partitions=1, replicas=3, anti_entropy_interval=0.5)
    try:
        keys = [b"ae%04d" % i for i in range(300)]
        c.kill_replica(0, 2, restart=False)
        with c.client(hinted_handoff=False, timeout=2.0) as cl:
            cl.put_many([(k, b"x") for k in keys])
        assert c.pending_hints() == 0
        c.revive_replica(0, 2)
        c.wait_ready(60)
        # every replica syncs with its successor each round: two rounds each and the ring has converged
        rounds = {i: info["maintenance"]["anti_entropy_rounds"] for i, info in enumerate(c.info(0))}
        for i in range(3):
            assert c.wait_maintenance(0, i, "anti_entropy_rounds", rounds[i] + 2, timeout=120)
        d = c.digests(0)
        assert d[0] == d[1] == d[2]
        with c.client(read_quorum=1) as cl:  # any single replica now has every key
            assert cl.get_many(keys) == [b"x"] * len(keys)
    finally:
        c.shutdown()


def _chaos(cluster: Cluster, local_ray, writes: int, kills: int, seed: int) -> None:
    """A writer acknowledges ``writes`` puts while replicas are killed (and one
    whole node removed, then replaced) at random points of its progress."""
    rng = random.Random(seed)
    points = sorted(rng.sample(range(writes // 10, writes - writes // 10), kills + 1))
    node_at = points[rng.randrange(len(points))]
    progress = {"n": 0, "done": False}
    cond = threading.Condition()
    acked: Dict[bytes, bytes] = {}
    writer_errors: List[BaseException] = []

    def writer() -> None:
        try:
            with cluster.client(timeout=3.0) as c:
                for i in range(writes):
                    k, v = b"chaos%d:%06d" % (seed, i), b"value-%d" % i
                    try:
                        c.put(k, v)
                        acked[k] = v
                    except QuorumError:
                        pass  # not acknowledged: it may or may not be there
                    with cond:
                        progress["n"] = i + 1
                        cond.notify_all()
                c.flush(120)
        except BaseException as exc:
            writer_errors.append(exc)
        finally:
            with cond:
                progress["done"] = True
                cond.notify_all()

    t = threading.Thread(target=writer)
    t.start()
    try:
        # the failures come from this (the main) thread: Ray adds nodes only from it
        for at in points:
            with cond:
                cond.wait_for(lambda: progress["n"] >= at or progress["done"])
            if at == node_at:
                head = local_ray.node_ids()[0]
                victims = [n for n in local_ray.node_ids() if n != head]
                local_ray.remove_node(rng.choice(victims))  # every replica on it dies
                local_ray.add_node()  # the placement groups move their bundles there
            else:
                cluster.kill_replica(rng.randrange(cluster.partitions), rng.randrange(cluster.replicas))
    finally:
        t.join()
    assert not writer_errors, writer_errors
    assert len(acked) >= writes * 0.9, f"only {len(acked)} of {writes} writes acknowledged"
    cluster.wait_ready(180)
    with cluster.client(timeout=10.0) as c:
        keys = list(acked)
        got = []
        for i in range(0, len(keys), 500):
            got += c.get_many(keys[i:i + 500])
        assert got == [acked[k] for k in keys]  # every acknowledged write, with its value
    repair(cluster)
    assert_converged(cluster)


def test_acknowledged_writes_survive_replica_kills_and_a_node_loss(cluster, local_ray):
    _chaos(cluster, local_ray, writes=1500, kills=4, seed=1)


@pytest.mark.cluster_long
def test_acknowledged_writes_survive_replica_kills_and_node_losses_long(cluster, local_ray):
    _chaos(cluster, local_ray, writes=12000, kills=25, seed=2)


def test_concurrent_crdt_clients_with_a_replica_killed(cluster):
    counters = [b"ctr-a", b"ctr-b"]
    acked: Dict[bytes, int] = {k: 0 for k in counters}
    failed: Dict[bytes, List[int]] = {k: [] for k in counters}
    lock = threading.Lock()
    errors: List[BaseException] = []
    start = threading.Barrier(4)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with cluster.client(timeout=3.0) as c:
                start.wait()
                for j in range(60):
                    k = rng.choice(counters)
                    n = rng.randint(1, 5)
                    try:
                        c.merge(k, crdt.PNCounter.increment(n), namespace="cnt")
                        with lock:
                            acked[k] += n
                    except QuorumError:
                        with lock:
                            failed[k].append(n)
                    member = b"m%d" % rng.randrange(6)
                    try:
                        if rng.random() < 0.6:
                            c.merge(b"set-key", crdt.ORSet.add(member), namespace="set")
                        else:
                            c.merge(b"set-key", crdt.ORSet.remove(member), namespace="set")
                    except QuorumError:
                        pass
                    if seed == 0 and j == 20:
                        p = partition_of(counters[0], cluster.partitions)
                        cluster.kill_replica(p, c.origins(counters[0])[0])  # the origin of ctr-a
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    assert not errors, errors
    repair(cluster)
    assert_converged(cluster)
    with cluster.client(read_quorum=3) as c:
        for k in counters:
            total = c.get(k, 0, namespace="cnt")
            extra = total - acked[k]
            # every acknowledged increment exactly once, every failed one at most once
            assert 0 <= extra <= sum(failed[k]), (k, total, acked[k], failed[k])
            sums = {0}
            for n in failed[k]:
                sums |= {s + n for s in sums}
            assert extra in sums
        # the ORSet converged (assert_converged: equal digests), and a read of all three agrees
        assert isinstance(c.get(b"set-key", frozenset(), namespace="set"), frozenset)


def test_bad_configuration_and_a_dead_cluster_raise_clear_errors(cluster, tmp_path):
    with pytest.raises(ClusterConfigError, match="write_quorum"):
        cluster.client(write_quorum=4)
    with pytest.raises(ClusterConfigError, match="read_quorum"):
        cluster.client(read_quorum=0)
    with pytest.raises(ClusterConfigError, match="MergeOperator"):
        Cluster.start(str(tmp_path / "bad"), name="bad", namespaces={"x": "PNCounter"})
    with pytest.raises(ClusterConfigError, match="already running"):
        Cluster.start(str(tmp_path / "dup"), name="main")
    with pytest.raises(ClusterConfigError, match="unknown cluster setting"):
        Cluster.start(str(tmp_path / "u"), name="u", replcas=3)
    with pytest.raises(ClusterUnavailableError, match="no abase cluster named 'nope'"):
        Cluster.connect("nope")
    with pytest.warns(ClusterWarning, match="fewer than N=4"):
        wide = Cluster.start(str(tmp_path / "wide"), name="wide", partitions=1, replicas=4,
                             anti_entropy_interval=0)
    wide.shutdown()
    with cluster.client() as c:
        with pytest.raises(UnknownNamespaceError):
            c.put(b"k", b"v", namespace="missing")
        with pytest.raises(TypeError):
            c.get(42)
        with pytest.raises(ae.errors.MergeOperandError):
            c.merge(b"k", crdt.ORSet.add(b"x"), namespace="cnt")  # refused by the replica, not masked
    small = Cluster.start(str(tmp_path / "small"), name="small", partitions=1, replicas=3,
                          anti_entropy_interval=0)
    try:
        assert Cluster.connect("small").partitions == 1
        c = small.client(timeout=1.0, attempts=1)
        c.put(b"k", b"v")
    finally:
        small.shutdown()
    with pytest.raises(QuorumError, match="0 of W=2"):
        c.put(b"k", b"v2")
    with pytest.raises(QuorumError, match="0 of R=2"):
        c.get(b"k")
    c.close()
    with pytest.raises(ClusterUnavailableError, match="registry"):
        small.client()
    with pytest.raises(ClusterConfigError, match="rebalancing"):
        Cluster.start(str(tmp_path / "small"), name="small2", partitions=2, replicas=3)
