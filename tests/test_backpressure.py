"""Write stalls: when the compactor falls behind, writes slow down by a
bounded amount instead of growing the log until the disk is full (RocksDB's
write stalls are the model).

Options: ``stall_log_bytes`` (bytes of live, uncompacted log past which a
write stalls) and ``stall_max_ms`` (how long one write waits at most). A
stalled write waits until compaction brings the log under the limit, or the
bound passes; it then goes ahead (it never fails for being stalled).
``stats()`` counts ``stalls`` and ``stall_ms``.

No test here sleeps or measures time: a stall is observed through the
engine's own count of stalled writers, which the test waits on.
"""

from __future__ import annotations

import threading

import pytest

import abase_engine as ae
from abase_engine.crdt import PNCounter
from abase_engine.record import Change, Op, Timestamp

from conftest import BASE_MS


def test_defaults_and_validation(db_path):
    assert ae.engine.DEFAULT_OPTIONS["stall_log_bytes"] == 4 << 30
    assert ae.engine.DEFAULT_OPTIONS["stall_max_ms"] == 100
    for bad in (dict(stall_log_bytes=-1), dict(stall_log_bytes="1"), dict(stall_max_ms=-1),
                dict(stall_max_ms=1.5), dict(stall_max_ms=86_400_001)):
        with pytest.raises(ae.InvalidOptionError):
            ae.open(db_path, **bad)
    with ae.open(db_path, compact_interval=None, stall_log_bytes=None) as db:
        for i in range(50):
            db.put(b"k%d" % i, b"v" * 100)
        assert db.stats()["stalls"] == 0


def test_every_write_over_the_limit_stalls_once_and_goes_ahead(open_db):
    """No compactor: each write over the limit waits its bound, then is
    written; every path of writing stalls (fast put, general put, put_many,
    batch, delete, merge, apply)."""
    db = open_db(stall_log_bytes=1, stall_max_ms=1)
    ctr = db.namespace("c", merge=PNCounter())  # the log was empty: no stall
    assert db.stats()["stalls"] == 0 and db.stats()["log_bytes"] > 1
    db.put(b"fast", b"x")
    db.put(bytearray(b"general"), b"x")
    db.put_many([(b"m1", b"x"), (b"m2", b"y")])
    with db.batch() as b:
        b.put(b"b1", b"x")
    db.delete(b"m1")
    ctr.merge(b"n", PNCounter.increment(2))
    db.apply([Change("", b"remote", Op.PUT, b"r", Timestamp(BASE_MS, 0, 9))])
    st = db.stats()
    assert st["stalls"] == 7
    assert st["stall_ms"] > 0 and st["stalled_writers"] == 0
    assert [db.get(k) for k in (b"fast", b"general", b"m2", b"b1", b"remote")] == [b"x", b"x", b"y", b"x", b"r"]
    assert db.get(b"m1") is None and ctr.get(b"n") == 2


def test_stalled_write_is_released_by_compaction(open_db):
    """A write over the limit waits (here with a bound far longer than the
    test) until compaction shrinks the log, then completes."""
    db = open_db(segment_size=4096, stall_log_bytes=8000, stall_max_ms=600_000)
    i = 0
    while db.stats()["log_bytes"] <= 8000:  # these writes find the log under the limit
        db.put(b"k%04d" % i, b"v" * 200)
        i += 1
    assert db.stats()["stalls"] == 0
    done = threading.Event()
    errors = []

    def writer():
        try:
            db.put(b"stalled", b"s")
        except BaseException as exc:  # reported below
            errors.append(exc)
        done.set()

    th = threading.Thread(target=writer)
    th.start()
    assert db._log.stalled_writers(at_least=1, timeout_ms=60_000) == 1  # it is waiting
    assert not done.is_set() and db.get(b"stalled") is None
    assert db.compact(wait=True) > 0  # folds the sealed segments: the log shrinks
    th.join(timeout=60)
    assert done.is_set() and not errors
    st = db.stats()
    assert st["stalls"] == 1 and st["stalled_writers"] == 0
    assert db.get(b"stalled") == b"s"
    assert all(db.get(b"k%04d" % j) == b"v" * 200 for j in range(i))


def test_failure_ends_a_stall(open_db):
    """A stalled write does not wait out its bound when the engine fails
    meanwhile: it is refused at once (the failure wakes it)."""
    db = open_db(segment_size=4096, stall_log_bytes=1000, stall_max_ms=600_000)
    while db.stats()["log_bytes"] <= 1000:
        db.put(b"k%d" % db.stats()["records_appended"], b"v" * 200)
    out = []
    th = threading.Thread(target=lambda: out.append(pytest.raises(ae.IOFailedError, db.put, b"late", b"x")))
    th.start()
    assert db._log.stalled_writers(at_least=1, timeout_ms=60_000) == 1
    db._log.fail(ae.IOFailedError("injected", "/nowhere", "fdatasync", 5))
    th.join(timeout=60)
    assert not th.is_alive() and len(out) == 1
    assert db.stats()["io_error"]["syscall"] == "fdatasync"
