"""Repair: ``abase_engine.repair(path)`` and ``Engine.check(fix=True)`` (issue 11 item 8).

A damaged segment is cut at its last good record and the rest moved aside;
derived state is rebuilt; every change is reported; a healthy directory is
not touched, byte for byte.
"""

from __future__ import annotations

import hashlib
import os

import lmdb
import pytest

import abase_engine as ae
from abase_engine import crdt
from abase_engine.errors import CorruptionError, LockedError
from abase_engine.feed import CURSOR


def _tree_hashes(path: str) -> dict:
    """sha256 of every file under path except the lock files (LOCK is the
    directory lock; LMDB's lock.mdb is its reader table)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name in ("LOCK", "lock.mdb"):
                continue
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _populate(path: str, n: int = 300, compact: bool = True) -> dict:
    """Writes through every layer; returns {key: (segment, end offset)} of
    the records still in the log."""
    where = {}
    with ae.open(path, segment_size=4096, compact_interval=None, digests=True) as db:
        ctr = db.namespace("ctr", merge=crdt.PNCounter())
        for i in range(n // 2):
            db.put(b"old%04d" % i, b"v" * 60)
            if i % 7 == 0:
                db.delete(b"old%04d" % (i // 2))
        ctr.merge(b"c", crdt.PNCounter.increment(3))
        if compact:
            db.compact(wait=True)
        db.replication_slot("peer")
        for i in range(n // 2):
            db.put(b"new%04d" % i, b"w" * 60)
        for ch in db.changes():
            where[ch.key] = CURSOR.unpack(ch.cursor)
    return where


def test_repair_of_a_healthy_directory_changes_nothing(db_path):
    _populate(db_path)
    before = _tree_hashes(db_path)
    assert ae.repair(db_path) == []
    assert _tree_hashes(db_path) == before


def test_check_fix_on_a_healthy_engine_is_a_no_op(db_path):
    _populate(db_path)
    with ae.open(db_path, compact_interval=None, digests=True) as db:
        assert db.check(fix=True) == []
        assert not db.closed
        assert db.get(b"new0001") == b"w" * 60


def _flip(path: str, seg: int, offset: int) -> None:
    with open(os.path.join(path, "log", "%08d.seg" % seg), "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_damaged_sealed_segment_is_cut_and_the_rest_moved_aside(db_path):
    where = _populate(db_path, compact=False)
    segs = sorted({s for s, _ in where.values()})
    victim = segs[1]  # sealed, with segments after it
    ends = sorted(off for s, off in where.values() if s == victim)
    bad = ends[2] + 45  # inside the fourth record of the segment
    _flip(db_path, victim, bad)
    with pytest.raises(CorruptionError):
        ae.open(db_path, compact_interval=None)
    report = ae.repair(db_path)
    name = "log/%08d.seg" % victim
    assert any(line.startswith(f"{name}: record checksum mismatch at offset {ends[2]}; cut at offset {ends[2]}")
               for line in report), report
    assert os.path.exists(os.path.join(db_path, name + ".damaged"))
    assert "digests.bin: removed (derived; rebuilt on use)" in report
    with ae.open(db_path, compact_interval=None) as db:
        assert db.check() == []
        for key, (seg, end) in where.items():
            if seg != victim or end <= ends[2]:
                # everything outside the cut survives (deleted keys stay deleted)
                assert key.startswith(b"new") is False or db.get(key) == b"w" * 60
        lost = [k for k, (s, e) in where.items() if s == victim and e > ends[2]]
        assert lost and all(db.get(k) is None for k in lost if k.startswith(b"new"))
    assert ae.repair(db_path) == []  # repaired is healthy


def test_damaged_segment_header_is_replaced_by_an_empty_segment(db_path):
    where = _populate(db_path, compact=False)
    victim = sorted({s for s, _ in where.values()})[0]
    _flip(db_path, victim, 3)
    with pytest.raises(CorruptionError):
        ae.open(db_path, compact_interval=None)
    report = ae.repair(db_path)
    assert any("bad segment header" in line and "replaced by an empty segment" in line for line in report)
    with ae.open(db_path, compact_interval=None) as db:
        assert db.check() == []
        assert db.get(b"new0149") == b"w" * 60


def test_missing_segment_is_replaced(db_path):
    where = _populate(db_path, compact=False)
    segs = sorted({s for s, _ in where.values()})
    os.unlink(os.path.join(db_path, "log", "%08d.seg" % segs[1]))
    with pytest.raises(CorruptionError):
        ae.open(db_path, compact_interval=None)
    report = ae.repair(db_path)
    assert report[0] == "log/%08d.seg: missing from the log; replaced by an empty segment" % segs[1]
    with ae.open(db_path, compact_interval=None) as db:
        assert db.check() == []


def test_store_damage_is_found_then_fixed_by_check_fix(db_path):
    _populate(db_path)
    env = lmdb.open(os.path.join(db_path, "store"), max_dbs=16)
    dbi = env.open_db(b"n:0")
    with env.begin(write=True) as txn:
        txn.put(b"old0003", b"\x09garbage", db=dbi)  # unknown kind
    env.close()
    db = ae.open(db_path, compact_interval=None)
    findings = db.check(fix=True)
    assert any("old0003" in f for f in findings)
    assert db.closed
    assert any(f.startswith("store namespace 0 key b'old0003'") and f.endswith("deleted") for f in findings)
    with ae.open(db_path, compact_interval=None) as db:
        assert db.check() == []
        assert db.get(b"old0003") is None


def test_missing_tombstone_entries_are_rebuilt(db_path):
    _populate(db_path)
    env = lmdb.open(os.path.join(db_path, "store"), max_dbs=16)
    tombs = env.open_db(b"tombstones")
    with env.begin(write=True) as txn:
        n = txn.stat(tombs)["entries"]
        txn.drop(tombs, delete=False)
    env.close()
    assert n > 0
    report = ae.repair(db_path)
    assert sum("tombstone missing from the tombstone index; added" in line for line in report) == n
    assert ae.repair(db_path) == []


def test_damaged_slots_file_is_moved_aside(db_path):
    _populate(db_path)
    with open(os.path.join(db_path, "slots.json"), "wb") as f:
        f.write(b"{broken")
    report = ae.repair(db_path)
    assert report and report[0].startswith("slots.json:") and "slots.json.damaged" in report[0]
    with ae.open(db_path, compact_interval=None) as db:
        assert db.stats()["slots"] == {}


def test_check_fix_on_an_open_engine_with_a_damaged_segment(db_path):
    where = _populate(db_path, compact=False)
    victim = sorted({s for s, _ in where.values()})[0]
    db = ae.open(db_path, compact_interval=None)
    _flip(db_path, victim, 200)  # the mapping is shared: the engine sees it
    findings = db.check(fix=True)
    assert "checksum" in findings[0]
    assert any(line.startswith("log/%08d.seg" % victim) for line in findings[1:])
    with ae.open(db_path, compact_interval=None) as again:
        assert again.check() == []


def test_repair_refuses_an_open_directory(open_db, db_path):
    open_db()
    with pytest.raises(LockedError):
        ae.repair(db_path)
