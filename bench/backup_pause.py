#!/usr/bin/env python3
"""How long ``Engine.backup`` makes writers wait, against the same writer idle.

A store is loaded with N keys (put_many, engine defaults: compactor thread
on, 64 MiB segments), so that the backup has a store and live segments to
copy. One writer thread then puts random keys and times every put; the main
thread lets it run for ``--ops`` puts (idle phase), then calls
``db.backup()`` while the writer goes on (backup phase: the puts that
overlap the call). Printed: the backup's duration, from its manifest
``seal_ms`` (the seal: what writers wait for), ``lock_held_ms`` (the fold
lock: seal + segment list + LMDB transaction) and ``lock_wait_ms`` (waiting
for a compaction commit to release it), the bytes copied, and the writer's put p50/p99/max in both phases and their
ratio.

    python bench/backup_pause.py --n 1000000
    python bench/backup_pause.py --n 200000 --durability sync
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time

import abase_engine as ae
from abase_engine.backup import read_manifest


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1000 if s else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--ops", type=int, default=100_000, help="puts in the idle phase")
    ap.add_argument("--durability", default="process")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    base = tempfile.mkdtemp(prefix="abase-backup-pause-")
    rng = random.Random(3)
    value = rng.randbytes(args.value_size)
    try:
        db = ae.open(os.path.join(base, "db"), node_id=1, durability=args.durability)
        keys = [rng.randbytes(16) for _ in range(args.n)]
        for i in range(0, args.n, 1000):
            db.put_many([(k, value) for k in keys[i:i + 1000]])
        idle, busy = [], []
        phase = [idle]
        stop = threading.Event()

        def writer() -> None:
            r = random.Random(5)
            put, pc = db.put, time.perf_counter_ns
            while not stop.is_set():
                k = keys[r.randrange(args.n)]
                a = pc()
                put(k, value)
                phase[0].append(pc() - a)

        th = threading.Thread(target=writer)
        th.start()
        while len(idle) < args.ops:
            time.sleep(0.01)  # a benchmark, not a test: polling is fine here
        phase[0] = busy
        t0 = time.perf_counter()
        ts = db.backup(os.path.join(base, "bk"))
        took = time.perf_counter() - t0
        phase[0] = []
        stop.set()
        th.join()
        stats = db.stats()
        db.close()
        m = read_manifest(os.path.join(base, "bk"))
        size = sum(f["bytes"] for f in m["files"].values())
        out = {"n": args.n, "durability": args.durability, "backup_s": took, "lock_held_ms": m["lock_held_ms"],
               "lock_wait_ms": m["lock_wait_ms"], "seal_ms": m["seal_ms"],
               "bytes": size, "timestamp": repr(ts), "log_bytes": stats["log_bytes"],
               "store_bytes": stats["store_bytes"], "loadavg": os.getloadavg(),
               "idle": {"ops": len(idle), "p50_us": pct(idle, 50), "p99_us": pct(idle, 99), "max_us": pct(idle, 100)},
               "backup": {"ops": len(busy), "p50_us": pct(busy, 50), "p99_us": pct(busy, 99),
                          "max_us": pct(busy, 100)}}
        print(f"N = {args.n:,} keys of 16 B, {args.value_size} B values, durability {args.durability!r}; "
              f"log {stats['log_bytes'] / 2**20:.1f} MiB, store {stats['store_bytes'] / 2**20:.1f} MiB")
        print(f"backup: {took:.2f} s, {size / 2**20:.1f} MiB copied; seal {m['seal_ms']:.2f} ms; fold lock held "
              f"(seal + list + txn) {m['lock_held_ms']:.2f} ms, after waiting {m['lock_wait_ms']:.1f} ms for it "
              f"(a compaction commit)")
        for name in ("idle", "backup"):
            r = out[name]
            print(f"writer puts {name:<7} {r['ops']:>9,} ops  p50 {r['p50_us']:.2f} us  p99 {r['p99_us']:.2f} us  "
                  f"max {r['max_us']:.1f} us")
        if out["idle"]["p99_us"] and out["backup"]["p99_us"]:
            print(f"p99 during backup / idle: {out['backup']['p99_us'] / out['idle']['p99_us']:.2f}")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
