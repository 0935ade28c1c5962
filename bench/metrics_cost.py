#!/usr/bin/env python3
"""What ``abase_engine.metrics`` costs the hot calls, as ratios in one run.

Three engines in one process, each in its own directory, opened alike
(durability "process", no compactor thread):

* ``never``: never registered: the fast path as the engine binds it at open;
* ``after``: registered, used, then unregistered: what an application that
  stopped exporting metrics runs (the claim: the same as ``never``);
* ``on``: registered: every put/get goes through a timed wrapper.

Each round runs, per engine, N puts of fresh 16-byte keys (100-byte values)
and N gets of those keys, timing the whole loop; rounds are interleaved
across engines (so drifts of a shared machine hit all three alike) and the
table shows the median ns/op over the rounds and its ratio to ``never``.

    python bench/metrics_cost.py                 # N = 200,000, 5 rounds
    python bench/metrics_cost.py --n 50000 --rounds 3 --json out.json

Needs prometheus_client (the ``metrics`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import abase_engine as ae
from abase_engine import metrics

try:
    from prometheus_client import CollectorRegistry
except ImportError:  # pragma: no cover
    sys.exit("metrics_cost.py needs prometheus_client: pip install -e '.[metrics]'")


def _loop_put(put, keys, value) -> float:
    t0 = time.perf_counter_ns()
    for k in keys:
        put(k, value)
    return (time.perf_counter_ns() - t0) / len(keys)


def _loop_get(get, keys) -> float:
    t0 = time.perf_counter_ns()
    for k in keys:
        get(k)
    return (time.perf_counter_ns() - t0) / len(keys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="puts and gets per engine per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    rng = random.Random(7)
    value = rng.randbytes(100)
    base = tempfile.mkdtemp(prefix="abase-metrics-cost-")
    registry = CollectorRegistry()
    names = ("never", "after", "on")
    dbs = {n: ae.open(os.path.join(base, n), node_id=1, compact_interval=None) for n in names}
    results: Dict[str, Dict[str, List[float]]] = {n: {"put": [], "get": []} for n in names}
    try:
        metrics.register(dbs["after"], registry)
        dbs["after"].put(b"warm", value)
        metrics.unregister(dbs["after"])
        metrics.register(dbs["on"], registry)
        for rnd in range(args.rounds):
            keys = [rng.randbytes(16) for _ in range(args.n)]
            order = list(names) if rnd % 2 == 0 else list(reversed(names))
            for n in order:
                db = dbs[n]
                results[n]["put"].append(_loop_put(db.put, keys, value))
                results[n]["get"].append(_loop_get(db.get, keys))
    finally:
        metrics.unregister(dbs["on"])
        for db in dbs.values():
            db.close()
        shutil.rmtree(base, ignore_errors=True)
    med = {n: {op: statistics.median(v) for op, v in ops.items()} for n, ops in results.items()}
    print(f"N = {args.n:,} per round, {args.rounds} rounds interleaved; median ns/op (ratio to 'never')")
    print(f"{'engine':<8} {'put ns':>8} {'ratio':>6} {'get ns':>8} {'ratio':>6}")
    for n in names:
        print(f"{n:<8} {med[n]['put']:8.1f} {med[n]['put'] / med['never']['put']:6.3f} "
              f"{med[n]['get']:8.1f} {med[n]['get'] / med['never']['get']:6.3f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "ns_per_op": results, "median": med,
                       "python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
