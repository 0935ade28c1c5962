"""Bytes that come from outside: feed cursors and ``ack`` (issue 11 defect 4),
``slots.json``, ``digests.bin``.

A feed cursor comes from a peer over the network, so it must be proven to be
a record boundary the log really has; a position inside a record, even at
bytes of a user's value that form a whole, checksum-valid record, is refused
with ValueError, and reads never grow a buffer without bound.
"""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine._abase import lib
from abase_engine.errors import CorruptionError, SlotInvalidatedError
from abase_engine.feed import CURSOR


def _forged_record(key: bytes, op: int, hlc: int, node: int) -> bytes:
    """A whole record as the log writes it (valid masked crc32c), padded to 8."""
    body = struct.pack("<QQIIBBHI", 0, hlc, node, 0, op, 1, len(key), 0) + key
    length = 4 + 4 + len(body)
    rest = struct.pack("<I", length) + body
    crc = lib.abase_crc_mask(lib.abase_crc32c(0, rest, len(rest)))
    rec = struct.pack("<I", crc) + rest
    return rec + b"\0" * (-len(rec) % 8)


def _cursors(db):
    return [ch.cursor for ch in db.changes()]


def test_cursor_inside_a_value_holding_a_forged_record_is_refused(open_db):
    db = open_db()
    db.put(b"a", b"x")
    before = _cursors(db)[-1]
    seg, off = CURSOR.unpack(before)
    # The next record starts at `off`; with an 8-byte key its value starts at
    # off + 48, 8-aligned, and holds a whole record with a valid checksum.
    forged = _forged_record(b"victim", int(ae.Op.DELETE), (1 << 40) << 16, 7)
    db.put(b"12345678", forged + b"tail")
    inside = CURSOR.pack(seg, off + 48)
    with pytest.raises(ValueError, match="record boundary"):
        db.changes(since=inside)
    slot = db.replication_slot("peer")
    with pytest.raises(ValueError):
        slot.ack(inside)
    assert slot.position != inside
    # the real boundaries still work, and the feed never shows the forgery
    assert [ch.key for ch in db.changes(since=before)] == [b"12345678"]
    assert all(ch.key != b"victim" for ch in db.changes())


def test_cursor_past_the_end_of_a_sealed_segment_is_refused(open_db):
    db = open_db(segment_size=4096)
    for i in range(100):
        db.put(b"k%d" % i, b"v" * 100)
    by_seg = {}
    for c in _cursors(db):
        seg, off = CURSOR.unpack(c)
        by_seg[seg] = max(by_seg.get(seg, 0), off)
    first = min(by_seg)
    assert len(by_seg) >= 2  # the first segment is sealed
    used = by_seg[first]
    for off in (used - 1, used - 8 + 1, used + 8, 4095, 4096 * 16, 1 << 40, 8, 63):
        with pytest.raises(ValueError):
            list(db.changes(since=CURSOR.pack(first, off)))
    # the end of a sealed segment is a boundary: the feed goes on in the next
    assert len(list(db.changes(since=CURSOR.pack(first, used)))) == 100 - sum(
        1 for c in _cursors(db) if CURSOR.unpack(c)[0] == first)


def test_cursor_at_zeros_past_the_active_end_is_refused_not_read_forever(open_db):
    db = open_db()
    db.put(b"k", b"v")
    seg, off = CURSOR.unpack(_cursors(db)[-1])
    for bad in (off + 8, off + 4096, off + (1 << 20)):
        with pytest.raises(ValueError):
            db.changes(since=CURSOR.pack(seg, bad))


def test_cursor_of_a_segment_the_log_never_had_is_refused(open_db):
    db = open_db()
    db.put(b"k", b"v")
    seg, _off = CURSOR.unpack(_cursors(db)[-1])
    for bad in (CURSOR.pack(seg + 1, 1000), CURSOR.pack(seg + 5, 0), CURSOR.pack(0xFFFFFFFF, 64)):
        with pytest.raises(ValueError):
            db.changes(since=bad)
    # the start of the next segment is the end of the log: nothing to read
    assert list(db.changes(since=CURSOR.pack(seg + 1, 0))) == []


def test_cursor_in_compacted_history_raises_slot_invalidated(open_db):
    db = open_db(segment_size=4096)
    for i in range(200):
        db.put(b"k%d" % i, b"v" * 64)
    first = _cursors(db)[0]
    db.compact(wait=True)
    with pytest.raises(SlotInvalidatedError):
        db.changes(since=first)


@settings(max_examples=40)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=30),
       probes=st.lists(st.integers(0, 12_000), max_size=40))
def test_exactly_the_record_boundaries_are_accepted(tmp_path_factory, sizes, probes):
    """Property: a cursor is accepted iff its offset is 0, a record boundary
    (the cursor of some Change), or the segment's first record."""
    path = str(tmp_path_factory.mktemp("b"))
    with ae.open(path, compact_interval=None) as db:
        for i, n in enumerate(sizes):
            db.put(b"k%d" % i, os.urandom(n))
        cursors = _cursors(db)
        seg = CURSOR.unpack(cursors[0])[0]
        good = {CURSOR.unpack(c)[1] for c in cursors} | {0, 64}
        for off in probes + sorted(good):
            cur = CURSOR.pack(seg, off)
            if off in good:
                rest = list(db.changes(since=cur))
                assert len(rest) == sum(1 for c in cursors if CURSOR.unpack(c)[1] > off)
            else:
                with pytest.raises(ValueError):
                    db.changes(since=cur)


def test_resuming_from_every_cursor_neither_skips_nor_repeats(open_db):
    db = open_db(segment_size=4096)
    for i in range(120):
        db.put(b"k%d" % i, b"v" * (i % 90))
    changes = list(db.changes())
    for i, ch in enumerate(changes):
        assert [c.key for c in db.changes(since=ch.cursor)] == [c.key for c in changes[i + 1:]]


# -------------------------------------------------------------- slots.json


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"s": 1}', b'{"s": {"cursor": "zz", "invalidated": false}}',
    b'{"s": {"cursor": "00", "invalidated": false}}', b'{"s": {"cursor": "' + b"00" * 12 + b'"}}',
    b"\xff\xfe", b'{"s": {"cursor": 5, "invalidated": false}}',
])
def test_damaged_slots_file_is_a_corruption_error(db_path, content):
    ae.open(db_path, compact_interval=None).close()
    with open(os.path.join(db_path, "slots.json"), "wb") as f:
        f.write(content)
    with pytest.raises(CorruptionError, match="slots"):
        ae.open(db_path, compact_interval=None)
    # the failed open released the directory
    os.unlink(os.path.join(db_path, "slots.json"))
    ae.open(db_path, compact_interval=None).close()


def test_slot_with_a_forged_persisted_cursor_refuses_to_read(db_path):
    with ae.open(db_path, compact_interval=None) as db:
        db.put(b"k", b"v" * 100)
        seg, off = CURSOR.unpack(_cursors(db)[-1])
        db.replication_slot("s")
    with open(os.path.join(db_path, "slots.json"), "w") as f:
        json.dump({"s": {"cursor": CURSOR.pack(seg, off - 8).hex(), "invalidated": False}}, f)
    with ae.open(db_path, compact_interval=None) as db:
        with pytest.raises(ValueError):
            db.replication_slot("s").changes()


# ------------------------------------------------------------- digests.bin


@pytest.mark.parametrize("content", [b"", b"\0" * 5, b"\xff" * 20, b"\0" * 20 + b"\1" * 100])
def test_garbage_digests_file_is_ignored(db_path, content):
    with ae.open(db_path, compact_interval=None, digests=True) as db:
        db.put(b"k", b"v")
        want = db.digest()
    with open(os.path.join(db_path, "digests.bin"), "wb") as f:
        f.write(content)
    with ae.open(db_path, compact_interval=None, digests=True) as db:
        assert db.digest() == want
