"""Put latency while compacting, with the page faults of each put.

The gauge behind docs/performance.md, "Put p99 while compacting": the
workload of ``bench/compare.py``'s ``compaction_p99`` figure (N keys written
twice, then foreground ops, 90% gets and 10% puts, every op timed, idle and
while ``compact(wait=True)`` runs in another thread), where every put is
also tagged with the minor page faults and context switches its thread took
(``getrusage(RUSAGE_THREAD)`` around the call, outside the timed part). It
prints, per phase, the put percentiles, how many puts took a fault, and how
the slow puts (over 3 us) split between faults and context switches.

``--steady SECONDS`` runs the other gauge instead: the engine with its
background compactor and small segments, a loop of 30% puts, and the put
percentiles and thread faults per 5 s window (so writeback of the active
segment, which happens after 30 s of dirtiness, shows up).

``--tail-window 0`` turns the tail keeper off (csrc/tail.c) for a control run.

    python bench/tail_p99.py [--n 1000000] [--ops 200000] [--tail-window BYTES]
    python bench/tail_p99.py --steady 40
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import threading
import time
from typing import List, Tuple

import abase_engine as ae

KEY_SIZE, VALUE_SIZE = 16, 100


def _pct(xs: List[int], q: float) -> float:
    """The q-quantile of xs (ns) in us, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000 if s else float("nan")


def compacting(n: int, ops: int, opts: dict, workdir: str) -> None:
    """Idle vs compacting phases; see the module docstring."""
    seg = min(1 << 31, (int(2 * n * (KEY_SIZE + VALUE_SIZE + 64) * 1.3) + 4095) // 4096 * 4096)
    db = ae.open(workdir, durability="process", compact_interval=None, segment_size=max(seg, 64 << 20), **opts)
    rng = random.Random(1)
    keys = [rng.randbytes(KEY_SIZE) for _ in range(n)]
    vpool = rng.randbytes(VALUE_SIZE + 4096)
    for rnd in range(2):
        for i in range(0, n, 1000):
            db.put_many([(k, vpool[(i + j + rnd) % 4096:(i + j + rnd) % 4096 + VALUE_SIZE])
                         for j, k in enumerate(keys[i:i + 1000])])
    seq = [(rng.random() < 0.1, keys[rng.randrange(n)]) for _ in range(ops)]
    val = vpool[:VALUE_SIZE]
    get, put = db.get, db.put
    pc, usage, me = time.perf_counter_ns, resource.getrusage, resource.RUSAGE_THREAD

    def phase(stop=None) -> Tuple[List[int], List[Tuple[int, int, int]]]:
        gets: List[int] = []
        puts: List[Tuple[int, int, int]] = []
        for is_put, k in seq:
            if stop is not None and stop.is_set():
                break
            if is_put:
                u0 = usage(me)
                a = pc()
                put(k, val)
                d = pc() - a
                u1 = usage(me)
                puts.append((d, u1.ru_minflt - u0.ru_minflt,
                             u1.ru_nvcsw - u0.ru_nvcsw + u1.ru_nivcsw - u0.ru_nivcsw))
            else:
                a = pc()
                get(k)
                gets.append(pc() - a)
        return gets, puts

    phase()  # warm-up
    idle = phase()
    done = threading.Event()
    took: List[float] = []

    def compactor() -> None:
        t = time.perf_counter()
        db.compact(wait=True)
        took.append(time.perf_counter() - t)
        done.set()

    th = threading.Thread(target=compactor)
    th.start()
    busy = phase(done)
    th.join()
    db.close()
    for name, (gets, puts) in (("idle", idle), ("compacting", busy)):
        t = [p[0] for p in puts]
        slow = [p for p in puts if p[0] > 3000]
        faulted = [p[0] for p in puts if p[1]]
        print(f"{name:>10}: get p99 {_pct(gets, .99):.2f} us; put p50 {_pct(t, .5):.2f} p99 {_pct(t, .99):.2f} "
              f"p99.9 {_pct(t, .999):.2f} us over {len(puts)} puts; {len(faulted)} puts took a fault "
              f"(median {_pct(faulted, .5):.2f} us, p90 {_pct(faulted, .9):.2f} us); of {len(slow)} puts over 3 us, "
              f"{sum(1 for p in slow if p[1])} took a fault, {sum(1 for p in slow if p[2])} a context switch")
    print(f"compaction took {took[0]:.2f} s; load1 {os.getloadavg()[0]:.2f}")


def steady(seconds: float, opts: dict, workdir: str) -> None:
    """Background compactor, 16 MiB segments, 30% puts; per 5 s window."""
    db = ae.open(workdir, durability="process", segment_size=16 << 20, **opts)
    n = 200_000
    rng = random.Random(2)
    keys = [rng.randbytes(KEY_SIZE) for _ in range(n)]
    val = rng.randbytes(VALUE_SIZE)
    for i in range(0, n, 1000):
        db.put_many([(k, val) for k in keys[i:i + 1000]])
    seq = [(rng.random() < 0.3, keys[rng.randrange(n)]) for _ in range(100_000)]
    get, put = db.get, db.put
    pc = time.perf_counter_ns
    faults = lambda: resource.getrusage(resource.RUSAGE_THREAD).ru_minflt  # noqa: E731
    end = time.time() + seconds
    window_end = time.time() + 5
    lat: List[int] = []
    f0 = faults()
    while time.time() < end:
        for is_put, k in seq:
            if is_put:
                a = pc()
                put(k, val)
                lat.append(pc() - a)
            else:
                get(k)
        if time.time() >= window_end:
            f1 = faults()
            print(f"{len(lat):8d} puts: p50 {_pct(lat, .5):.2f} p99 {_pct(lat, .99):.2f} "
                  f"p99.9 {_pct(lat, .999):.2f} us; thread faults {f1 - f0}; load1 {os.getloadavg()[0]:.2f}")
            lat, f0, window_end = [], f1, time.time() + 5
    db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="keys (written twice)")
    ap.add_argument("--ops", type=int, default=200_000, help="foreground ops per phase")
    ap.add_argument("--tail-window", type=int, default=None, help="bytes; 0: no tail keeper")
    ap.add_argument("--steady", type=float, default=None, metavar="SECONDS")
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args()
    opts = {} if args.tail_window is None else {"tail_window": args.tail_window}
    workdir = tempfile.mkdtemp(prefix="abase-tail-p99-", dir=args.tmpdir)
    try:
        if args.steady:
            steady(args.steady, opts, workdir)
        else:
            compacting(args.n, args.ops, opts, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
