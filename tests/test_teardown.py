"""close() racing every other call (DESIGN.md invariant 8, issue 11 defect 3).

The stress runs in a child process (tests/teardown_worker.py), so that a
crash, a heap corruption or an AddressSanitizer report fails this test
instead of killing the test run: 8 threads call every API while the main
thread closes the engine, many rounds. The short form runs by default; the
long form (1,000 rounds) with ``ABASE_LONG_TESTS=1``:

    ABASE_LONG_TESTS=1 python -m pytest tests/test_teardown.py -k long

The in-process tests check, deterministically, what every kind of handle
does after close.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import abase_engine as ae
from abase_engine import crdt
from abase_engine.errors import EngineClosedError

HERE = os.path.dirname(os.path.abspath(__file__))
LONG = os.environ.get("ABASE_LONG_TESTS") == "1"


def _stress(tmp_path, rounds: int, seed: int) -> None:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(HERE), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "teardown_worker.py"), str(tmp_path), str(rounds),
                           str(seed)], env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip().endswith(f"ok {rounds}")


def test_close_races_every_api_short(tmp_path):
    _stress(tmp_path, rounds=20, seed=1000)


@pytest.mark.skipif(not LONG, reason="long form: set ABASE_LONG_TESTS=1")
def test_close_races_every_api_long(tmp_path):
    _stress(tmp_path, rounds=1000, seed=50_000)


def _everything_open(open_db):
    db = open_db(compact_interval=None)
    ctr = db.namespace("ctr", merge=crdt.PNCounter())
    for i in range(20):
        db.put(b"k%02d" % i, b"v")
    ctr.merge(b"c", crdt.PNCounter.increment(1))
    slot = db.replication_slot("s")
    snap = db.snapshot()
    scan = iter(db.scan())
    next(scan)
    feed = iter(db.changes())
    next(feed)
    return db, ctr, slot, snap, scan, feed


def test_every_handle_raises_engine_closed_after_close(open_db):
    db, ctr, slot, snap, scan, feed = _everything_open(open_db)
    batch = db.batch()
    batch.put(b"x", b"y")
    db.close()
    calls = {
        "slot.lag_bytes": lambda: slot.lag_bytes,  # was a cffi TypeError
        "slot.position": lambda: slot.position,
        "slot.invalidated": lambda: slot.invalidated,
        "slot.changes": lambda: slot.changes(),
        "slot.ack": lambda: slot.ack(b"\0" * 12),
        "snapshot.get": lambda: snap.get(b"k01"),
        "snapshot.scan": lambda: list(snap.scan()),
        "open scan": lambda: list(scan),
        "open feed": lambda: list(feed),
        "get": lambda: db.get(b"k01"),
        "put": lambda: db.put(b"k01", b"v"),
        "get_many": lambda: db.get_many([b"k01"]),
        "put_many": lambda: db.put_many([(b"k01", b"v")]),
        "namespace get": lambda: ctr.get(b"c"),
        "namespace merge": lambda: ctr.merge(b"c", crdt.PNCounter.increment(1)),
        "batch commit": batch.commit,
        "apply": lambda: db.apply([ae.Change("", b"k", ae.Op.PUT, b"v", ae.Timestamp(1, 0, 2))]),
        "changes": lambda: db.changes(),
        "scan": lambda: list(db.scan()),
        "stats": db.stats,
        "compact": db.compact,
        "sync": db.sync,
        "check": db.check,
        "now": db.now,
        "snapshot": db.snapshot,
    }
    for name, call in calls.items():
        with pytest.raises(EngineClosedError):
            call()
            pytest.fail(f"{name} did not raise")


def test_iterators_closed_mid_chunk_raise_engine_closed(open_db):
    """A scan or feed iterator whose next chunk is read after close raises,
    even though its C object outlives the engine's segments."""
    db = open_db(compact_interval=None)
    db.put_many([(b"k%05d" % i, b"v" * 50) for i in range(3000)])  # several scan/feed chunks
    scan = iter(db.scan())
    feed = iter(db.changes())
    next(scan)
    next(feed)
    db.close()
    with pytest.raises(EngineClosedError):
        for _ in scan:
            pass
    with pytest.raises(EngineClosedError):
        for _ in feed:
            pass


def test_concurrent_closes_both_return_after_teardown(open_db):
    db = open_db(compact_interval=0.001)
    db.put(b"k", b"v")
    barrier = threading.Barrier(4)
    errors = []

    def closer():
        barrier.wait()
        try:
            db.close()
            assert db.closed
            with pytest.raises(EngineClosedError):
                db.get(b"k")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=closer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with ae.open(db.path, compact_interval=None) as again:  # lock released, data there
        assert again.get(b"k") == b"v"


def test_close_waits_for_a_write_in_flight_and_keeps_it(open_db, db_path):
    """A put racing close either raises EngineClosedError or is durable in
    the log after reopen: never half there, never a crash."""
    outcomes = []
    for round_no in range(20):
        path = os.path.join(db_path, str(round_no))
        db = open_db(path, compact_interval=None)
        started = threading.Event()
        acked = []

        def writer():
            started.set()
            i = 0
            try:
                while True:
                    db.put(b"k%06d" % i, b"v%d" % i)
                    acked.append(i)
                    i += 1
            except EngineClosedError:
                pass

        t = threading.Thread(target=writer)
        t.start()
        started.wait()
        db.close()
        t.join()
        with ae.open(path, compact_interval=None) as again:
            for i in acked:
                assert again.get(b"k%06d" % i) == b"v%d" % i
        outcomes.append(len(acked))
    assert len(outcomes) == 20
