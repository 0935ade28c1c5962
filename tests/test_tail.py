"""The tail keeper (csrc/tail.c): a C thread that keeps the pages ahead of the
log's last record mapped writable, so appends do not take page faults.

What is checked: it runs under durability "process" and "none" and never
under "sync" or with ``tail_window=0``; after a round the window ahead of
the last record is populated (up to the segment's end); appends into the
window take (almost) no page faults in the writing thread, where without
the keeper they take about one per page; records written while it works,
across segment switches, seals and compactions, are all there after a
reopen and after a SIGKILL; close stops it.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import abase_engine as ae
from abase_engine.errors import EngineClosedError, InvalidOptionError

PAGE = os.sysconf("SC_PAGESIZE")


def _active(db: ae.Engine) -> dict:
    segs = db._log.segments()
    assert segs and not segs[-1]["sealed"]
    return segs[-1]


def _thread_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


@pytest.mark.parametrize("durability", ["process", "none"])
def test_keeper_runs_and_populates_the_window_ahead_of_the_last_record(tmp_path, durability):
    window = 1 << 20
    with ae.open(str(tmp_path / "db"), durability=durability, compact_interval=None,
                 segment_size=4 << 20, tail_window=window) as db:
        info = db._log.tail_info()
        assert info["running"] and info["window"] == window
        if not info["supported"]:
            pytest.skip("the kernel lacks MADV_POPULATE_WRITE")
        for i in range(3000):
            db.put(b"k%d" % i, b"v" * 500)
            if i % 1000 == 999:
                assert db._log.tail_sync()
                seg = _active(db)
                page = seg["used"] // PAGE * PAGE
                info = db._log.tail_info()
                assert info["filled_to"] >> 32 == seg["no"]
                assert (info["filled_to"] & 0xFFFFFFFF) >= min(page + window, 4 << 20)


def test_window_stops_at_the_end_of_the_segment_and_follows_the_next_one(tmp_path):
    seg_size = 256 << 10
    with ae.open(str(tmp_path / "db"), compact_interval=None, segment_size=seg_size,
                 tail_window=16 << 20) as db:
        if not db._log.tail_info()["supported"]:
            pytest.skip("the kernel lacks MADV_POPULATE_WRITE")
        db.put(b"a", b"x")
        assert db._log.tail_sync()
        first = _active(db)["no"]
        assert db._log.tail_info()["filled_to"] == (first << 32) | seg_size
        for i in range(600):  # ~600 KiB: two more segments
            db.put(b"b%d" % i, b"y" * 1000)
        assert db._log.tail_sync()
        seg = _active(db)
        assert seg["no"] > first
        assert db._log.tail_info()["filled_to"] == (seg["no"] << 32) | seg_size
        assert db.get(b"a") == b"x" and db.get(b"b599") == b"y" * 1000


@pytest.mark.parametrize("opts", [{"durability": "sync"}, {"tail_window": 0}])
def test_no_keeper_under_sync_or_with_a_zero_window(tmp_path, opts):
    with ae.open(str(tmp_path / "db"), compact_interval=None, **opts) as db:
        db.put(b"k", b"v")
        assert not db._log.tail_info()["running"]
        with pytest.raises(ValueError):
            db._log.tail_sync()
        assert db.get(b"k") == b"v"


@pytest.mark.parametrize("bad", [-1, (1 << 31) + 1, 1.5, True, "16M"])
def test_tail_window_option_is_checked(tmp_path, bad):
    with pytest.raises(InvalidOptionError):
        ae.open(str(tmp_path / "db"), tail_window=bad)


def _faults_of_appends(db: ae.Engine, n: int, value: bytes) -> int:
    """Minor faults of this thread while it appends n records."""
    keys = [b"f%06d" % i for i in range(n)]
    put = db.put
    before = _thread_faults()
    for k in keys:
        put(k, value)
    return _thread_faults() - before


def test_appends_into_the_window_take_no_page_faults(tmp_path):
    value = b"z" * 1000
    n = 4000  # ~4.2 MiB of log: ~1000 fresh pages
    pages = n * 1048 // PAGE
    with ae.open(str(tmp_path / "without"), compact_interval=None, segment_size=64 << 20,
                 tail_window=0) as db:
        db.put(b"warm", value)
        without = _faults_of_appends(db, n, value)
    with ae.open(str(tmp_path / "with"), compact_interval=None, segment_size=64 << 20,
                 tail_window=16 << 20) as db:
        if not db._log.tail_info()["supported"]:
            pytest.skip("the kernel lacks MADV_POPULATE_WRITE")
        db.put(b"warm", value)
        assert db._log.tail_sync()
        with_keeper = _faults_of_appends(db, n, value)
        assert db.get(b"f%06d" % (n - 1)) == value
    # Without the keeper nearly every fresh page faults (fault-around may map
    # a few already cached ones); with it, only what the allocator touches
    # (a few in a plain build, ~180 under AddressSanitizer).
    assert without > pages // 2, (without, with_keeper, pages)
    assert with_keeper < without // 4, (without, with_keeper, pages)


def test_records_written_while_it_works_survive_reopen_and_compaction(tmp_path):
    path = str(tmp_path / "db")
    expected = {}
    stop = threading.Event()
    errors = []

    def compact_loop(db):
        try:
            while not stop.is_set():
                db.compact(wait=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with ae.open(path, compact_interval=None, segment_size=64 << 10, tail_window=256 << 10) as db:
        th = threading.Thread(target=compact_loop, args=(db,))
        th.start()
        try:
            for i in range(20000):  # ~3 MiB: dozens of segments, sealed and dropped under the keeper
                k, v = b"r%05d" % (i % 5000), b"%d" % i * 10
                db.put(k, v)
                expected[k] = v
                if i % 4000 == 0:
                    db._log.tail_sync()
        finally:
            stop.set()
            th.join()
        assert not errors
        assert db.check() == []
        assert all(db.get(k) == v for k, v in expected.items())
    with ae.open(path, compact_interval=None) as db:
        assert dict(db.scan()) == expected


def test_acknowledged_puts_survive_sigkill_with_the_keeper_running(tmp_path):
    path = str(tmp_path / "db")
    code = textwrap.dedent(f"""
        import sys, os, signal
        import abase_engine as ae
        db = ae.open({path!r}, compact_interval=None, segment_size=1 << 20, tail_window=4 << 20)
        assert db._log.tail_info()["running"]
        for i in range(20000):
            db.put(b"k%05d" % i, b"v" * 200)
            if i % 5000 == 4999:
                db._log.tail_sync()
        sys.stdout.write("acked\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == "acked\n", proc.stderr
    with ae.open(path, compact_interval=None) as db:
        assert db.check() == []
        assert sum(1 for _ in db.scan()) == 20000
        assert db.get(b"k19999") == b"v" * 200


def test_close_stops_the_keeper(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    db.put(b"k", b"v")
    log = db._log
    assert log.tail_info()["running"]
    db.close()
    assert not log.tail_info()["running"]
    with pytest.raises(EngineClosedError):
        log.tail_sync()
