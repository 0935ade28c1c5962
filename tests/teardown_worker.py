"""Child process of tests/test_teardown.py: close() racing 8 threads that use every API.

Usage: python teardown_worker.py DIR ROUNDS SEED

Each round opens an engine (small segments, a compactor thread every few
ms), starts 8 threads that call random operations (get, put, delete, merge,
scan, changes, replication slots, snapshots, batches, apply, compact, stats,
put_many/get_many, sync, a tail keeper round) and keep iterators open across
calls, waits until every thread has done some operations, then calls
``close()`` from the main thread while they run. A thread stops at its first
EngineClosedError; any other exception is a failure. After close every kind
of handle is checked to raise EngineClosedError. The process prints ``ok ROUNDS`` and exits 0, or
prints the failures and exits 1; a crash (SIGSEGV, an ASan report) shows as
the child's exit status.

The threads never sleep; the main thread waits on a countdown (no sleeping
as synchronization).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import threading
import traceback

import abase_engine as ae
from abase_engine import crdt
from abase_engine.errors import EngineClosedError, SnapshotTooOldError

THREADS = 8
OPS_BEFORE_CLOSE = 25  # every thread does at least this many before close()


class _Countdown:
    """Released once every thread has counted down (a latch)."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._cv = threading.Condition()

    def count_down(self) -> None:
        with self._cv:
            self._n -= 1
            if self._n <= 0:
                self._cv.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._n <= 0, timeout)


def _ops(db, ctr, slot, rng: random.Random, held: dict):
    """The operations a thread draws from; each returns nothing."""

    def key() -> bytes:
        return b"k%03d" % rng.randrange(200)

    def get():
        db.get(key())

    def put():
        db.put(key(), os.urandom(rng.choice((8, 100, 3000))))

    def delete():
        db.delete(key())

    def merge():
        ctr.merge(b"c%d" % rng.randrange(8), crdt.PNCounter.increment(1))

    def get_counter():
        ctr.get(b"c%d" % rng.randrange(8))

    def scan():
        it = held.get("scan")
        if it is None or rng.random() < 0.3:
            it = held["scan"] = iter(db.scan(prefix=b"k" if rng.random() < 0.5 else None))
        for _ in range(rng.randrange(1, 20)):
            if next(it, None) is None:
                held.pop("scan", None)
                break

    def changes():
        it = held.get("feed")
        if it is None or rng.random() < 0.3:
            it = held["feed"] = iter(db.changes())
        for _ in range(rng.randrange(1, 20)):
            if next(it, None) is None:
                held.pop("feed", None)
                break

    def slot_ops():
        _ = slot.lag_bytes
        for ch in slot.changes(limit=5):
            slot.ack(ch.cursor)

    def snapshot():
        snap = held.get("snap")
        if snap is None or rng.random() < 0.3:
            if snap is not None:
                snap.close()
            snap = held["snap"] = db.snapshot()
        try:
            snap.get(key())
            for _ in zip(range(5), snap.scan()):
                pass
        except SnapshotTooOldError:
            pass

    def batch():
        with db.batch() as b:
            for _ in range(rng.randrange(1, 6)):
                b.put(key(), b"b" * rng.randrange(50))
            b.delete(key())
            b.merge(b"c1", crdt.PNCounter.increment(2), namespace="ctr")

    def apply():
        now = db.now()
        db.apply([ae.Change("", key(), ae.Op.PUT, b"remote",
                            ae.Timestamp(now.physical_ms, rng.randrange(100), 2))])

    def compact():
        db.compact(wait=rng.random() < 0.2)

    def stats():
        db.stats()

    def many():
        db.put_many([(key(), b"m") for _ in range(rng.randrange(1, 30))])
        db.get_many([key() for _ in range(10)])

    def sync():
        db.sync()

    def tail():  # a round of the tail keeper (csrc/tail.c), which close must stop
        if db.durability != "sync":
            db._log.tail_sync(1000)

    return [get, get, get, put, put, delete, merge, get_counter, scan, changes, slot_ops, snapshot,
            batch, apply, compact, stats, many, sync, tail]


def _after_close_checks(db, ctr, slot, snap, scan_it, feed_it) -> list:
    """Every handle raises EngineClosedError once the engine is closed."""
    problems = []
    checks = [
        ("get", lambda: db.get(b"k001")),
        ("put", lambda: db.put(b"k", b"v")),
        ("get_many", lambda: db.get_many([b"k"])),
        ("put_many", lambda: db.put_many([(b"k", b"v")])),
        ("namespace get", lambda: ctr.get(b"c1")),
        ("merge", lambda: ctr.merge(b"c1", crdt.PNCounter.increment(1))),
        ("scan", lambda: list(db.scan())),
        ("changes", lambda: list(db.changes())),
        ("slot lag_bytes", lambda: slot.lag_bytes),
        ("slot position", lambda: slot.position),
        ("slot changes", lambda: list(slot.changes())),
        ("slot ack", lambda: slot.ack(b"\0" * 12)),
        ("snapshot get", lambda: snap.get(b"k001")),
        ("open scan iterator", lambda: list(scan_it)),
        ("open feed iterator", lambda: list(feed_it)),
        ("batch", lambda: db.batch().commit()),
        ("stats", lambda: db.stats()),
        ("compact", lambda: db.compact()),
        ("sync", lambda: db.sync()),
        ("apply", lambda: db.apply([ae.Change("", b"x", ae.Op.PUT, b"v", ae.Timestamp(1, 0, 2))])),
    ]
    for name, fn in checks:
        try:
            fn()
        except EngineClosedError:
            continue
        except Exception as exc:  # noqa: BLE001 - any other outcome is the finding
            problems.append(f"after close, {name} raised {type(exc).__name__}: {exc}")
        else:
            problems.append(f"after close, {name} did not raise EngineClosedError")
    return problems


def run_round(path: str, seed: int) -> list:
    rng = random.Random(seed)
    shutil.rmtree(path, ignore_errors=True)
    durability = rng.choice(("none", "process", "process", "sync"))
    db = ae.open(path, node_id=1, durability=durability, segment_size=1 << 16, compact_interval=0.002)
    ctr = db.namespace("ctr", merge=crdt.PNCounter())
    slot = db.replication_slot("s")
    for i in range(50):
        db.put(b"k%03d" % i, b"v%d" % i)
    snap = db.snapshot()
    scan_it = iter(db.scan())
    next(scan_it)
    feed_it = iter(db.changes())
    next(feed_it)
    ready = _Countdown(THREADS)
    failures: list = []

    def worker(tid: int) -> None:
        trng = random.Random(seed * 100 + tid)
        held: dict = {}
        ops = _ops(db, ctr, slot, trng, held)
        done = 0
        try:
            while True:
                trng.choice(ops)()
                done += 1
                if done == OPS_BEFORE_CLOSE:
                    ready.count_down()
        except EngineClosedError:
            pass
        except Exception:  # noqa: BLE001 - reported to the parent
            failures.append(f"thread {tid} after {done} ops:\n{traceback.format_exc()}")
        finally:
            if done < OPS_BEFORE_CLOSE:
                ready.count_down()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    if not ready.wait(timeout=120):
        failures.append("threads did not get going within 120 s")
    db.close()
    for t in threads:
        t.join(timeout=120)
        if t.is_alive():
            failures.append(f"{t.name} still running 120 s after close()")
    failures += _after_close_checks(db, ctr, slot, snap, scan_it, feed_it)
    db.close()  # twice is fine
    return failures


def main() -> int:
    path, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        failures = run_round(os.path.join(path, "db"), seed + r)
        if failures:
            print(f"round {r} (seed {seed + r}) failed:")
            for f in failures:
                print(f)
            return 1
        # the directory must reopen cleanly after every round
        with ae.open(os.path.join(path, "db"), compact_interval=None) as db:
            problems = db.check()
            if problems:
                print(f"round {r} (seed {seed + r}): check after reopen: {problems}")
                return 1
    print(f"ok {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
