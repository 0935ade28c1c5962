"""The engine's clock under the write lock (issue 11 defect 5).

* When the 65,536 logical values of a millisecond run out (or the clock was
  raised ahead of the wall clock by a received or recovered timestamp), the
  clock borrows the next millisecond instead of sleeping under the log's
  write lock until the wall clock catches up.
* A timestamp that leaves the clock no room to advance (the last
  representable millisecond, or beyond) is refused at write, and a record
  carrying one is corruption at recovery, judged against the clock's range
  only, never the wall clock.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

import abase_engine as ae
from abase_engine._abase import lib
from abase_engine.errors import CorruptionError
from abase_engine.feed import CURSOR

MAX_MS = lib.ABASE_MAX_PHYSICAL_MS


def _wall_ms() -> int:
    return int(time.time() * 1000)


def test_exhausted_millisecond_is_borrowed_not_waited_for(open_db):
    """The wall clock is, in effect, stepped back 5 s: a received timestamp
    put the clock 5 s ahead. 70,000 local writes need more than one
    millisecond's logical values; they must not wait for the wall clock
    (before the fix the put slept ~5 s holding the write lock, blocking
    every get)."""
    db = open_db(max_clock_skew_ms=60_000)
    ahead = ae.Timestamp(_wall_ms() + 5_000, 0, 2)
    db.apply([ae.Change("", b"remote", ae.Op.PUT, b"v", ahead)])
    last = db.put_many([(b"k%06d" % i, b"v") for i in range(70_000)])
    assert _wall_ms() < ahead.physical_ms, "the batch waited for the wall clock"
    assert last.physical_ms == ahead.physical_ms + 1  # one millisecond borrowed
    t = db.put(b"one more", b"v")  # the fast path, the same rule
    assert t > last and _wall_ms() < ahead.physical_ms
    assert db.get(b"k069999") == b"v"


def test_borrowed_timestamps_survive_reopen(open_db, db_path):
    db = open_db(max_clock_skew_ms=60_000)
    ahead = ae.Timestamp(_wall_ms() + 5_000, 0, 2)
    db.apply([ae.Change("", b"remote", ae.Op.PUT, b"v", ahead)])
    last = db.put_many([(b"k%06d" % i, b"v") for i in range(70_000)])
    db.close()
    with ae.open(db_path, compact_interval=None) as again:
        assert again.put(b"after", b"v") > last  # the log persisted the borrowed mark


def test_apply_of_a_timestamp_at_the_end_of_the_range_is_refused(open_db, fake_clock):
    fake_clock.now = MAX_MS - 1
    db = open_db(clock=fake_clock)
    before = db.now()
    for ts in (ae.Timestamp(MAX_MS, 0, 2), ae.Timestamp(MAX_MS, 0xFFFF, 2)):
        with pytest.raises(ValueError, match="range"):
            db.apply([ae.Change("", b"k", ae.Op.PUT, b"v", ts)])
    assert db.get(b"k") is None
    assert db.now() > before  # the clock did not jump to the end of its range
    assert db.now().physical_ms == MAX_MS - 1


def _append_record(path: str, seg: int, off: int, key: bytes, hlc: int) -> None:
    """Write one whole, checksum-valid record at (seg, off) of a closed log."""
    body = struct.pack("<QQIIBBHI", 0, hlc, 1, 0, 1, 1, len(key), 1) + key + b"x"
    rest = struct.pack("<I", 8 + len(body)) + body
    rec = struct.pack("<I", lib.abase_crc_mask(lib.abase_crc32c(0, rest, len(rest)))) + rest
    with open(os.path.join(path, "log", "%08d.seg" % seg), "r+b") as f:
        f.seek(off)
        f.write(rec + b"\0" * (-len(rec) % 8))


@pytest.mark.parametrize("physical", [MAX_MS, (1 << 48) - 1])
def test_recovered_record_at_the_end_of_the_range_is_corruption(db_path, physical):
    with ae.open(db_path, compact_interval=None) as db:
        db.put(b"k", b"v")
        seg, off = CURSOR.unpack(list(db.changes())[-1].cursor)
    _append_record(db_path, seg, off, b"late", (physical << 16) | 0xFFFF)
    with pytest.raises(CorruptionError, match="range") as info:
        ae.open(db_path, compact_interval=None)
    assert info.value.offset == off


def test_recovered_timestamps_are_not_judged_against_the_wall_clock(db_path):
    """A record from far in the future (but inside the range) recovers; the
    clock continues after it."""
    with ae.open(db_path, compact_interval=None) as db:
        db.put(b"k", b"v")
        seg, off = CURSOR.unpack(list(db.changes())[-1].cursor)
    future_ms = _wall_ms() + 10 * 365 * 24 * 3600 * 1000
    _append_record(db_path, seg, off, b"future", future_ms << 16)
    with ae.open(db_path, compact_interval=None) as db:
        assert db.get(b"future") == b"x"
        assert db.put(b"next", b"v").physical_ms >= future_ms
