"""abase_engine.cluster in two minutes: a replicated store on a local Ray cluster.

    pip install -e ".[cluster]" && python examples/cluster_demo.py

It starts a three-node Ray cluster on this machine (loopback only), puts a
cluster of 2 partitions x 3 replicas on it (one engine per replica actor,
the replicas of a partition on distinct nodes), writes and reads through a
leaderless client (N=3, W=2, R=2), kills one replica, keeps serving, brings
the replica back and shows it catching up from the hints its peers kept.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", "src"))
if os.path.isdir(os.path.join(SRC, "abase_engine")):  # run from a checkout: Ray's workers import it too
    sys.path.insert(0, SRC)
    os.environ["PYTHONPATH"] = os.pathsep.join([SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                        if p])

from abase_engine.crdt import PNCounter  # noqa: E402
from abase_engine.cluster import Cluster, partition_of  # noqa: E402
from abase_engine.cluster.local import start_local_ray  # noqa: E402


def show(cluster: Cluster, partition: int) -> None:
    for info in cluster.info(partition):
        if info is None:
            print("    (a replica does not answer)")
            continue
        hints = {f"r{t}": n for t, (n, _b) in info["hints"].items()}
        print(f"    p{info['partition']}/r{info['replica']}  node id {info['node_id']:3d}  "
              f"ray node {info['node'][:8]}  root hash {info['roots'][''][0] & 0xFFFF:04x}  hints held {hints}")


def main() -> None:
    root = tempfile.mkdtemp(prefix="abase-cluster-demo-")
    print("starting a local Ray cluster of 3 nodes (about 15 s) ...")
    ray_cluster = start_local_ray(nodes=3)
    try:
        cluster = Cluster.start(root, name="demo", partitions=2, replicas=3, namespaces={"clicks": PNCounter()},
                                anti_entropy_interval=5.0)
        print(f"cluster 'demo': {cluster.partitions} partitions x {cluster.replicas} replicas under {root}")
        client = cluster.client(write_quorum=2, read_quorum=2, timeout=2.0)
        print(f"client node id {client.node_id}; W=2, R=2 of N=3 (read-your-writes: R + W > N)")

        users = {b"user:%d" % i: b"name-%d" % i for i in range(200)}
        client.put_many(users.items())
        for _ in range(10):
            client.merge(b"home", PNCounter.increment(1), namespace="clicks")
        print("read back:", client.get(b"user:7"), "| clicks on home:", client.get(b"home", namespace="clicks"))

        p = partition_of(b"user:7", cluster.partitions)
        print(f"\npartition {p} before the failure:")
        show(cluster, p)

        print(f"\nkilling replica p{p}/r1 (it stays down) ...")
        cluster.kill_replica(p, 1, restart=False)
        t = time.perf_counter()
        acks = []
        for i in range(200, 400):
            res = client.put(b"user:%d" % i, b"name-%d" % i)
            acks.append(res.acks)
            users[b"user:%d" % i] = b"name-%d" % i
        client.merge(b"home", PNCounter.increment(5), namespace="clicks")
        client.flush(30)
        print(f"200 more puts while it is down: {time.perf_counter() - t:.2f} s, acknowledged by "
              f"{min(acks)}..{max(acks)} replicas each; reads still answer: {client.get(b'user:300')}, "
              f"clicks {client.get(b'home', namespace='clicks')}")
        print(f"hints stored by the client on live replicas: {client.stats['hints_stored']}")
        show(cluster, p)

        print(f"\nbringing p{p}/r1 back (same directory, same node id) ...")
        cluster.revive_replica(p, 1)
        cluster.wait_ready(60)
        for i in range(cluster.replicas):  # its peers replay their hints on their own, within hint_interval
            if i != 1:
                cluster.wait_maintenance(p, i, "no_hints", timeout=60)
        print(f"hints held across the cluster now: {cluster.pending_hints()}")
        show(cluster, p)
        digests = cluster.digests(p)
        print("all replicas of the partition hold the same data:", digests[0] == digests[1] == digests[2])

        with cluster.client(read_quorum=3) as reader:
            keys = sorted(users)
            assert reader.get_many(keys) == [users[k] for k in keys]
            print(f"a read of all 3 replicas returns all {len(keys)} users; clicks:",
                  reader.get(b"home", namespace="clicks"))
        print("anti-entropy sweep (nothing should be left):", cluster.anti_entropy())
        client.close()
        cluster.shutdown()
    finally:
        ray_cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
