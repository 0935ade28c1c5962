#!/usr/bin/env python3
"""Issue 13's rows in ONE process: a second gauge beside ``compare.py``.

``compare.py`` runs each store in its own process, so on a shared machine a
change of load between two children moves their ratio. This script runs
abase_engine, py-lmdb and plyvel in one process, the stores interleaved
round by round, and times each loop both in wall time and in this thread's
CPU time (``time.thread_time``), which leaves out the time the scheduler
gave other processes. It is a gauge of the ratios, not a replacement: it
shares one heap and one cache between the stores.

    python bench/inprocess.py [N [ROUNDS]]      # default 1,000,000 keys, 3 rounds

N random 16-byte keys, 100-byte values, engine defaults unless said:
put_many load with the compactor on then gets right away; a ``db.batch()``
load; ``[db.put(k, v) ...]`` kept; a log-resident scan (compactor off), then
``compact(wait=True)`` and gets, misses and a scan of the compacted store;
py-lmdb's get, miss and cursor scan in one long read transaction; plyvel's
puts kept. Only the standard library beyond the stores.
"""
import gc
import random
import shutil
import statistics
import sys
import tempfile
import time

import abase_engine as ae
import lmdb
import plyvel

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
rng = random.Random(20240601)
keys = [rng.randbytes(16) for _ in range(N)]
vals = [rng.randbytes(100) for _ in range(N)]
perm = keys[:]; rng.shuffle(perm)
miss = [rng.randbytes(16) for _ in range(N)]
batches = [list(zip(keys[i:i+1000], vals[i:i+1000])) for i in range(0, N, 1000)]
base = tempfile.mkdtemp(prefix="abase-inprocess-")
res = {}
def timed(fn):
    gc.collect()
    w, c = time.perf_counter(), time.thread_time()
    n = fn()
    return n / (time.perf_counter() - w), n / (time.thread_time() - c)
def rec(name, v):
    res.setdefault(name, []).append(v)
def gets(get, ks):
    def f():
        for k in ks: get(k)
        return len(ks)
    return f
def scan(mk):
    def f():
        n = 0
        for _ in mk(): n += 1
        assert n == N
        return n
    return f
try:
    env = lmdb.open(base + "/lmdb", map_size=1 << 37, sync=False, metasync=False)
    with env.begin(write=True) as t:
        t.cursor().putmulti([kv for b in batches for kv in b])
    for r in range(ROUNDS):
        # abase: put_many load with the compactor on, then gets right away
        p = f"{base}/a{r}"
        db = ae.open(p)
        pm = db.put_many
        rec("put_many (compactor on)", timed(lambda: sum(pm(b) is not None for b in batches) * 1000))
        rec("get right after the load", timed(gets(db.get, perm)))
        db.close(); shutil.rmtree(p)
        # abase: batch() load
        db = ae.open(p)
        def bl():
            for b in batches:
                with db.batch() as bt:
                    for k, v in b:
                        bt.put(k, v)
            return N
        rec("db.batch() of 1000", timed(bl))
        db.close(); shutil.rmtree(p)
        # abase: put kept
        db = ae.open(p)
        put = db.put
        def kept():
            out = [put(k, v) for k, v in zip(keys, vals)]
            return len(out)
        rec("put, results kept", timed(kept))
        db.close(); shutil.rmtree(p)
        # abase: log-resident scan (compactor off), then compact and read
        db = ae.open(p, compact_interval=None)
        for b in batches: db.put_many(b)
        rec("scan, log-resident", timed(scan(db.scan)))
        db.compact(wait=True)
        rec("get after compaction", timed(gets(db.get, perm)))
        rec("get_miss after compaction", timed(gets(db.get, miss)))
        rec("scan after compaction", timed(scan(db.scan)))
        db.close(); shutil.rmtree(p)
        # peers
        t = env.begin()
        rec("lmdb get", timed(gets(t.get, perm)))
        rec("lmdb get_miss", timed(gets(t.get, miss)))
        rec("lmdb scan", timed(scan(lambda: t.cursor().iternext())))
        t.abort()
        pv = plyvel.DB(f"{base}/p{r}", create_if_missing=True)
        pput = pv.put
        def pkept():
            out = [pput(k, v) for k, v in zip(keys, vals)]
            return len(out)
        rec("plyvel put, results kept", timed(pkept))
        pv.close(); shutil.rmtree(f"{base}/p{r}")
        print(f"round {r} done", file=sys.stderr, flush=True)
    env.close()
finally:
    shutil.rmtree(base, ignore_errors=True)
med = lambda xs, i: statistics.median(x[i] for x in xs)
print("%-28s %12s %12s   (per round, wall)" % ("row", "wall ops/s", "cpu ops/s"))
for k, v in res.items():
    print("%-28s %12.0f %12.0f   %s" % (k, med(v, 0), med(v, 1), [round(x[0] / 1e3) for x in v]))
def ratio(a, b, i):
    return [round(x[i] / y[i], 2) for x, y in zip(res[a], res[b])]
pairs = [("get after compaction", "lmdb get", ">= 1.0 (0.9)"), ("get right after the load", "lmdb get", ">= 1.0"),
         ("get_miss after compaction", "lmdb get_miss", ">= 1.0"), ("scan, log-resident", "lmdb scan", ">= 0.8"),
         ("scan after compaction", "lmdb scan", ">= 0.8"), ("put, results kept", "plyvel put, results kept", ">= 2"),
         ("db.batch() of 1000", "put_many (compactor on)", ">= 0.8")]
print("\n%-55s %-8s %-24s %-24s" % ("ratio", "goal", "wall, per round", "cpu, per round"))
for a, b, goal in pairs:
    print("%-55s %-8s %-24s %-24s" % (f"{a} / {b}", goal, ratio(a, b, 0), ratio(a, b, 1)))
