"""Figures of the replicated layer: ``python bench/cluster.py [--quick]``.

Four measurements, each compared within the same run as ratios:

1. Engine hooks, no Ray: records/s of ``apply`` (what a replica does with a
   client's writes) and of reading the change feed, against ``put_many`` of
   the same records into a fresh engine (with and without ``digests``, which
   replicas turn on); ``apply`` of newer records for keys the store holds
   against ``put_many`` in the same state; ``records(leaf)`` right after a
   write, maintained (``digests``) against a pass over the namespace.
2. Through the Ray client on a local three-node Ray cluster: throughput of
   batched ``put_many``/``get_many`` for P = 1, 2, 4 partitions (N=3) at
   W=1 and W=2 (R=W), and p50/p90/p99/max latency of single puts and gets.
3. Catch-up of a replica that missed ``--missed`` writes (default 100k):
   by hinted handoff, then by anti-entropy alone.

Needs the ``cluster`` extra (Ray). Figures depend on the machine; on a
shared 2-vCPU machine they are indicative only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", "src"))
sys.path.insert(0, SRC)
# Ray's worker processes inherit the environment: they import this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join([SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import abase_engine as ae  # noqa: E402


def _keys(n: int, prefix: bytes = b"") -> List[bytes]:
    return [prefix + b"%015d" % (i * 2654435761 % (10 ** 15)) for i in range(n)]


def pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def engine_hooks(n: int, root: str) -> Dict[str, float]:
    """records/s of put_many, apply and the change feed (best of 3)."""
    value = b"v" * 100
    items = [(k, value) for k in _keys(n)]
    out: Dict[str, float] = {}
    for digests in (False, True):
        best = {"put_many": 0.0, "apply": 0.0, "feed": 0.0}
        for rep in range(3):
            src_dir = os.path.join(root, f"src-{digests}-{rep}")
            dst_dir = os.path.join(root, f"dst-{digests}-{rep}")
            src = ae.open(src_dir, node_id=1, compact_interval=None, digests=digests)
            t = time.perf_counter()
            for i in range(0, n, 1000):
                src.put_many(items[i:i + 1000])
            best["put_many"] = max(best["put_many"], n / (time.perf_counter() - t))
            t = time.perf_counter()
            changes = list(src.changes())
            best["feed"] = max(best["feed"], len(changes) / (time.perf_counter() - t))
            assert len(changes) == n
            changes = [ae.Change(c.namespace, c.key, c.op, c.value, c.timestamp) for c in changes]
            dst = ae.open(dst_dir, node_id=2, compact_interval=None, digests=digests)
            t = time.perf_counter()
            for i in range(0, n, 1000):
                dst.apply(changes[i:i + 1000])
            best["apply"] = max(best["apply"], n / (time.perf_counter() - t))
            src.close()
            dst.close()
            shutil.rmtree(src_dir)
            shutil.rmtree(dst_dir)
        tag = "digests" if digests else "plain"
        for k, v in best.items():
            out[f"{k} ({tag})"] = v
    return out


def steady_state(n: int, root: str) -> Dict[str, float]:
    """A replica past its first compaction: records/s of ``apply`` of a second
    round of newer records for keys the store holds (each key's stored
    version is read), against ``put_many`` of the same keys into an engine
    in the same state; then the cost of ``records(leaf)`` right after a
    write (anti-entropy during writes), maintained (``digests=True``)
    against a pass over the namespace (``digests=False``). Best of 3."""
    import random

    value = b"w" * 100
    keys = _keys(n)
    out: Dict[str, float] = {"put_many (store)": 0.0, "apply (store)": 0.0}
    for rep in range(3):
        src = ae.open(os.path.join(root, f"ss-src-{rep}"), node_id=1, compact_interval=None)
        dst = ae.open(os.path.join(root, f"ss-dst-{rep}"), node_id=2, compact_interval=None)
        for i in range(0, n, 1000):
            src.put_many([(k, b"v" * 100) for k in keys[i:i + 1000]])
        dst.apply([ae.Change(c.namespace, c.key, c.op, c.value, c.timestamp) for c in src.changes()])
        src.compact(wait=True)
        dst.compact(wait=True)
        cursor = None
        for cursor_change in src.changes():
            cursor = cursor_change.cursor
        t = time.perf_counter()
        for i in range(0, n, 1000):
            src.put_many([(k, value) for k in keys[i:i + 1000]])
        out["put_many (store)"] = max(out["put_many (store)"], n / (time.perf_counter() - t))
        changes = [ae.Change(c.namespace, c.key, c.op, c.value, c.timestamp) for c in src.changes(cursor)]
        assert len(changes) == n
        t = time.perf_counter()
        for i in range(0, n, 1000):
            dst.apply(changes[i:i + 1000])
        out["apply (store)"] = max(out["apply (store)"], n / (time.perf_counter() - t))
        assert dst.get(keys[0]) == value
        src.close()
        dst.close()
        shutil.rmtree(os.path.join(root, f"ss-src-{rep}"))
        shutil.rmtree(os.path.join(root, f"ss-dst-{rep}"))
    rnd = random.Random(1)
    for digests in (True, False):
        path = os.path.join(root, f"leaf-{digests}")
        db = ae.open(path, node_id=2, compact_interval=None, digests=digests)
        for i in range(0, n, 1000):
            db.put_many([(k, b"v") for k in keys[i:i + 1000]])
        db.digest("")
        calls = 50 if digests else 3  # a pass over the namespace per call without
        t = time.perf_counter()
        for i in range(calls):
            db.apply([ae.Change("", keys[i], ae.Op.PUT, b"x", ae.Timestamp(int(time.time() * 1000), 0, 9))])
            db.records("", (rnd.randrange(16), rnd.randrange(16), rnd.randrange(16)))
        out[f"apply + records(leaf) us ({'digests' if digests else 'plain'})"] = \
            (time.perf_counter() - t) / calls * 1e6
        db.close()
        shutil.rmtree(path)
    return out


def client_figures(partitions: int, total: int, singles: int, root: str) -> Dict[str, float]:
    from abase_engine.cluster import Cluster

    c = Cluster.start(os.path.join(root, f"p{partitions}"), name=f"bench-p{partitions}", partitions=partitions,
                      replicas=3, anti_entropy_interval=0)
    out: Dict[str, float] = {}
    try:
        value = b"v" * 100
        for w in (1, 2):
            with c.client(write_quorum=w, read_quorum=w, timeout=30.0) as cl:
                warm = _keys(1000, b"warm%d:" % w)  # connections, imports, first segments
                cl.put_many([(k, value) for k in warm])
                cl.get_many(warm)
                keys = _keys(total, b"w%d:" % w)
                t = time.perf_counter()
                for i in range(0, total, 1000):
                    cl.put_many([(k, value) for k in keys[i:i + 1000]])
                out[f"put_many W={w}"] = total / (time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(0, total, 1000):
                    got = cl.get_many(keys[i:i + 1000])
                    assert got[0] == value
                out[f"get_many R={w}"] = total / (time.perf_counter() - t)
                if partitions == 1:
                    lat_put, lat_get = [], []
                    for k in keys[:singles]:
                        t = time.perf_counter()
                        cl.put(k, b"single")
                        lat_put.append(time.perf_counter() - t)
                    for k in keys[:singles]:
                        t = time.perf_counter()
                        cl.get(k)
                        lat_get.append(time.perf_counter() - t)
                    for name, lat in ((f"put W={w}", lat_put), (f"get R={w}", lat_get)):
                        for q, label in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (1.0, "max")):
                            out[f"{name} {label} ms"] = pct(lat, q) * 1000
                cl.flush(60)
    finally:
        c.shutdown()
    return out


def catch_up(missed: int, root: str) -> Dict[str, float]:
    from abase_engine.cluster import Cluster

    c = Cluster.start(os.path.join(root, "catchup"), name="bench-catchup", partitions=1, replicas=3,
                      anti_entropy_interval=0, hint_interval=3600.0)
    out: Dict[str, float] = {}
    value = b"v" * 100
    try:
        for how in ("hints", "anti-entropy"):
            c.kill_replica(0, 2, restart=False)
            with c.client(write_quorum=2, timeout=30.0, hinted_handoff=(how == "hints")) as cl:
                keys = _keys(missed, how.encode() + b":")
                t = time.perf_counter()
                for i in range(0, missed, 1000):
                    cl.put_many([(k, value) for k in keys[i:i + 1000]])
                out[f"write {missed} with r2 down ({how}) s"] = time.perf_counter() - t
                assert cl.flush(300)
            c.revive_replica(0, 2)
            c.wait_ready(120)
            t = time.perf_counter()
            if how == "hints":
                res = c.deliver_hints(timeout=600)
                elapsed = time.perf_counter() - t
                assert res["failed_targets"] == 0, res
                stats = c.anti_entropy(timeout=600)  # must find nothing left
                assert stats["keys_repaired"] == 0, stats
            else:
                stats = c.anti_entropy(timeout=600)
                elapsed = time.perf_counter() - t
                assert stats["keys_repaired"] >= missed, stats
                out["anti-entropy leaves compared"] = stats["leaves"]
                out["anti-entropy MB on the wire"] = stats["bytes"] / 1e6
            d = c.digests(0)
            assert d[0] == d[1] == d[2]
            out[f"catch-up by {how} s"] = elapsed
            out[f"catch-up by {how} records/s"] = missed / elapsed
    finally:
        c.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--records", type=int, default=200_000, help="records of the engine-hook figures")
    ap.add_argument("--total", type=int, default=50_000, help="keys per batched client run")
    ap.add_argument("--singles", type=int, default=1000, help="single operations for the latency figures")
    ap.add_argument("--missed", type=int, default=100_000, help="writes the lagging replica misses")
    ap.add_argument("--only", choices=["engine", "client", "catchup"], action="append",
                    help="run only these parts (repeatable; default: all)")
    args = ap.parse_args()
    if args.quick:
        args.records, args.total, args.singles, args.missed = 5000, 2000, 100, 2000
    root = tempfile.mkdtemp(prefix="abase-bench-cluster-")
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs, abase_engine {ae.__version__}")
    parts = set(args.only or ["engine", "client", "catchup"])
    try:
        if "engine" in parts:
            _print_hooks(args, root)
            _print_steady(args, root)
        if parts & {"client", "catchup"}:
            _ray_parts(args, root, parts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _print_hooks(args: argparse.Namespace, root: str) -> None:
    print(f"\n## engine hooks ({args.records} records, 16-byte keys, 100-byte values; best of 3)")
    hooks = engine_hooks(args.records, root)
    for tag in ("plain", "digests"):
        pm = hooks[f"put_many ({tag})"]
        for k in ("put_many", "apply", "feed"):
            v = hooks[f"{k} ({tag})"]
            print(f"{k:9s} {tag:8s} {v:12,.0f} records/s   {v / pm:5.2f}x put_many")


def _print_steady(args: argparse.Namespace, root: str) -> None:
    print(f"\n## a replica whose store holds the keys ({args.records} keys; best of 3)")
    ss = steady_state(args.records, root)
    pm = ss["put_many (store)"]
    for k in ("put_many (store)", "apply (store)"):
        print(f"{k:17s} {ss[k]:12,.0f} records/s   {ss[k] / pm:5.2f}x put_many")
    plain = ss["apply + records(leaf) us (plain)"]
    for tag in ("digests", "plain"):
        v = ss[f"apply + records(leaf) us ({tag})"]
        print(f"apply of 1 record + records(leaf), {tag:8s} {v:12,.1f} us   {v / plain:7.4f}x plain")


def _ray_parts(args: argparse.Namespace, root: str, parts: set) -> None:
    import ray
    from abase_engine.cluster.local import start_local_ray

    lr = start_local_ray(nodes=3, cpus_per_node=1, object_store_mb=200)
    try:
        if "client" in parts:
            print(f"\n## client on a local 3-node Ray ({ray.__version__}), N=3, batches of 1000, "
                  f"{args.total} keys per run")
            base: Dict[str, float] = {}
            singles: Dict[str, float] = {}
            for p in (1, 2, 4):
                figs = client_figures(p, args.total, args.singles, root)
                for k in ("put_many W=1", "put_many W=2", "get_many R=1", "get_many R=2"):
                    base.setdefault(k, figs[k])
                    print(f"P={p} {k:13s} {figs[k]:10,.0f} keys/s   {figs[k] / base[k]:4.2f}x P=1")
                if p == 1:
                    singles = {k: v for k, v in figs.items() if k.endswith(" ms")}
            print(f"\n## single operations, P=1, {args.singles} each (ms)")
            for op in ("put W=1", "put W=2", "get R=1", "get R=2"):
                row = "  ".join(f"{q} {singles[f'{op} {q} ms']:7.2f}" for q in ("p50", "p90", "p99", "max"))
                print(f"{op:8s} {row}")
        if "catchup" in parts:
            print(f"\n## catch-up of a replica that missed {args.missed} writes (P=1, N=3)")
            for k, v in catch_up(args.missed, root).items():
                print(f"{k:42s} {v:12,.2f}")
    finally:
        lr.shutdown()


if __name__ == "__main__":
    main()
