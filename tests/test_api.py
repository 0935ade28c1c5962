"""Tests of the public API of abase_engine: semantics and every error.

Model-based coverage lives in test_model.py and LWW/CRDT resolution in
test_resolution.py; this file pins down each call's documented contract.
Known engine bugs are ``xfail(strict=True)`` tests whose reason starts
with ``BUG:``.
"""

from __future__ import annotations

import gc
import glob
import os
import subprocess
import sys
import textwrap
import threading

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import errors
from abase_engine.crdt import GCounter, PNCounter
from abase_engine.record import Change, Op, Timestamp

import logfmt
from conftest import BASE_MS, FakeClock


def _segments(path):
    return sorted(glob.glob(os.path.join(path, "log", "*.seg")))


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for locks across processes and for
    checks that could crash the interpreter)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------
# basic reads and writes


def test_put_get_delete(open_db):
    db = open_db()
    assert db.get(b"k") is None
    assert db.get(b"k", b"dflt") == b"dflt"
    ts = db.put(b"k", b"v")
    assert isinstance(ts, Timestamp) and ts.node_id == 1
    assert db.get(b"k") == b"v"
    assert db.get(b"k", b"dflt") == b"v"
    assert db[b"k"] == b"v"
    assert b"k" in db and b"other" not in db
    db.put(b"k", b"")  # an empty value is a value, not a deletion
    assert db.get(b"k") == b"" and b"k" in db
    dts = db.delete(b"k")
    assert dts > ts
    assert db.get(b"k") is None and b"k" not in db
    db.delete(b"never-existed")  # not an error
    assert len(db) == 0


def test_getitem_setitem_delitem(open_db):
    db = open_db()
    with pytest.raises(KeyError):
        db[b"x"]
    db[b"x"] = b"1"
    assert db[b"x"] == b"1"
    del db[b"x"]
    with pytest.raises(KeyError):
        db[b"x"]
    with pytest.raises(KeyError):
        del db[b"x"]  # deleted: KeyError, as a dict
    with pytest.raises(KeyError):
        del db[b"never"]


def test_len_counts_visible_keys_in_both_layers(open_db):
    db = open_db(segment_size=4096)
    for i in range(50):
        db.put(b"k%03d" % i, b"v" * 50)
    db.compact(wait=True)
    for i in range(40, 60):
        db.put(b"k%03d" % i, b"w")
    for i in range(0, 10):
        db.delete(b"k%03d" % i)
    assert len(db) == 50


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytes_like_keys_and_values(open_db, kind):
    db = open_db()
    db.put(kind(b"key"), kind(b"value"))
    got = db.get(kind(b"key"))
    assert got == b"value" and type(got) is bytes
    assert kind(b"key") in db
    assert db[kind(b"key")] == b"value"
    assert list(db.scan(start=kind(b"k"), prefix=kind(b"ke"))) == [(b"key", b"value")]
    with db.batch() as b:
        b.put(kind(b"k2"), kind(b"v2"))
        b.delete(kind(b"key"))
    assert db.get(b"k2") == b"v2" and db.get(b"key") is None
    del db[kind(b"k2")]
    assert db.get(b"k2") is None


def test_empty_key_in_the_log(open_db):
    db = open_db()
    db.put(b"", b"empty")
    db.put(b"a", b"1")
    assert db.get(b"") == b"empty"
    assert b"" in db
    assert list(db.scan()) == [(b"", b"empty"), (b"a", b"1")]
    assert list(db.scan(reverse=True)) == [(b"a", b"1"), (b"", b"empty")]
    db.delete(b"")
    assert db.get(b"") is None


def test_empty_key_get_when_absent(open_db):
    db = open_db()
    assert db.get(b"") is None
    assert b"" not in db


def test_empty_key_survives_compaction(open_db):
    db = open_db()
    db.put(b"", b"empty")
    db.compact(wait=True)
    assert db.get(b"") == b"empty"
    assert db.stats()["sealed_segments"] == 0


def test_get_many_put_many(open_db):
    db = open_db()
    assert db.put_many([]) is None
    t1 = db.put_many([(b"a", b"1"), (b"b", b"2"), (bytearray(b"c"), memoryview(b"3"))])
    assert isinstance(t1, Timestamp)
    assert db.get_many([b"a", b"x", b"c", b"b"]) == [b"1", None, b"3", b"2"]
    with pytest.raises(TypeError):
        db.put_many([(b"d", b"4"), ("e", b"5")])
    assert db.get(b"d") is None  # validated before anything is written


# --------------------------------------------------------------------------
# scans


def _scan_fixture(db):
    model = {}
    keys = [b"a", b"ab", b"abc", b"abd", b"b", b"ba", b"c", b"\x00", b"\xff", b"\xff\x00", b"\xff\xff", b"z"]
    for i, k in enumerate(keys):
        db.put(k, b"old%d" % i)
        model[k] = b"old%d" % i
    db.delete(b"abd")
    del model[b"abd"]
    db.compact(wait=True)  # these now live in LMDB
    for k in (b"ab", b"b", b"bb", b"\xff\xff\x01"):
        db.put(k, b"new-" + k)
        model[k] = b"new-" + k
    db.delete(b"c")  # a log delete hides a stored value
    del model[b"c"]
    db.delete(b"zz")  # a delete of a key that never existed
    return model


@pytest.mark.parametrize("start,stop,prefix", [
    (None, None, None), (b"ab", None, None), (None, b"b", None), (b"ab", b"b", None), (b"b", b"b", None),
    (b"c", b"a", None), (None, None, b"a"), (None, None, b"ab"), (None, None, b"\xff"),
    (None, None, b"\xff\xff"), (b"abc", None, b"ab"), (None, b"abc", b"ab"), (b"a", b"zz", b"b"),
    (None, None, b"nothing"), (b"", None, None), (None, None, b""),
])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_sorted_model(open_db, start, stop, prefix, reverse):
    db = open_db(segment_size=4096)
    model = _scan_fixture(db)
    expect = sorted((k, v) for k, v in model.items()
                    if (start is None or k >= start) and (stop is None or k < stop)
                    and (prefix is None or k.startswith(prefix)))
    if reverse:
        expect.reverse()
    assert list(db.scan(start=start, stop=stop, prefix=prefix, reverse=reverse)) == expect
    assert list(db.keys(start=start, stop=stop, prefix=prefix, reverse=reverse)) == [k for k, _ in expect]


def test_scan_is_a_snapshot_of_its_first_step(open_db):
    db = open_db()
    for i in range(10):
        db.put(b"k%d" % i, b"v")
    it = db.scan()
    first = next(it)
    db.put(b"k5", b"changed")
    db.delete(b"k7")
    db.put(b"k55", b"new")
    rest = list(it)
    assert [first] + rest == [(b"k%d" % i, b"v") for i in range(10)]


def test_scan_iterator_after_close_raises_engine_closed(db_path):
    r = _run_child(f"""
        import abase_engine as ae
        db = ae.open({db_path!r}, compact_interval=None)
        for i in range(2000):
            db.put(b"k%05d" % i, b"v")
        it = db.scan()
        next(it)
        db.close()
        try:
            for _ in it:
                pass
        except ae.EngineClosedError:
            print("EngineClosedError")
        except BaseException as exc:
            print("wrong:", type(exc).__name__, exc)
        else:
            print("no error")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "EngineClosedError", r.stdout


# --------------------------------------------------------------------------
# errors: types and sizes


@pytest.mark.parametrize("bad", ["text", 1, None, 1.5, [b"a"], object()])
def test_non_bytes_keys_are_type_errors(open_db, bad):
    db = open_db()
    for call in (lambda: db.put(bad, b"v"), lambda: db.get(bad), lambda: db.delete(bad),
                 lambda: db[bad], lambda: bad in db):
        with pytest.raises(TypeError):
            call()
    if bad is not None:  # None is "no bound" for a scan
        for kw in ("start", "stop", "prefix"):
            with pytest.raises(TypeError):
                list(db.scan(**{kw: bad}))
    with pytest.raises(TypeError):
        db[bad] = b"v"
    with pytest.raises(TypeError):
        with db.batch() as b:
            b.put(bad, b"v")


@pytest.mark.parametrize("bad", ["text", 1, None, 2.0, bytearray])
def test_non_bytes_values_are_type_errors(open_db, bad):
    db = open_db()
    with pytest.raises(TypeError):
        db.put(b"k", bad)
    with pytest.raises(TypeError):
        db[b"k"] = bad
    with pytest.raises(TypeError):
        with db.batch() as b:
            b.put(b"k", bad)
    assert db.get(b"k") is None


def test_key_too_large(open_db):
    db = open_db()
    k511, k512 = b"k" * 511, b"k" * 512
    db.put(k511, b"v")
    assert db.get(k511) == b"v"
    for call in (lambda: db.put(k512, b"v"), lambda: db.get(k512), lambda: db.delete(k512),
                 lambda: k512 in db, lambda: db.put(bytearray(k512), b"v")):
        with pytest.raises(errors.KeyTooLargeError) as ei:
            call()
        assert isinstance(ei.value, ValueError) and isinstance(ei.value, errors.AbaseError)
    with pytest.raises(errors.KeyTooLargeError):
        with db.batch() as b:
            b.put(b"fine", b"v")
            b.put(k512, b"v")
    assert db.get(b"fine") is None
    with pytest.raises(errors.KeyTooLargeError):
        db.apply([Change("", k512, Op.PUT, b"v", db.now())])
    db.compact(wait=True)  # a 511-byte key fits LMDB
    assert db.get(k511) == b"v"


def test_delete_of_a_long_key_compacts(open_db):
    db = open_db()
    k = b"k" * 500
    db.put(k, b"v")
    db.delete(k)
    db.compact(wait=True)
    assert db.get(k) is None
    assert db.stats()["sealed_segments"] == 0


def test_value_too_large(open_db):
    db = open_db()
    huge = bytes(ae.log.MAX_VALUE + 1)  # calloc'd: no page is touched
    assert ae.log.MAX_VALUE == 256 * 1024 * 1024
    with pytest.raises(errors.ValueTooLargeError) as ei:
        db.put(b"k", huge)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(errors.ValueTooLargeError):
        with db.batch() as b:
            b.put(b"k", huge)
    with pytest.raises(errors.ValueTooLargeError):
        db.apply([Change("", b"k", Op.PUT, huge, db.now())])
    del huge
    assert db.get(b"k") is None


def test_engine_closed_error(open_db):
    db = open_db()
    db.put(b"k", b"v")
    ns = db.namespace("other")
    snap = db.snapshot()
    batch = db.batch()
    batch.put(b"b", b"1")
    db.close()
    db.close()  # twice is fine
    for call in (lambda: db.put(b"k", b"v"), lambda: db.get(b"k"), lambda: db.delete(b"k"),
                 lambda: db[b"k"], lambda: b"k" in db, lambda: db.scan(), lambda: len(db),
                 lambda: db.batch(), lambda: db.snapshot(), lambda: db.compact(), lambda: db.sync(),
                 lambda: db.stats(), lambda: db.check(), lambda: db.put_many([(b"a", b"b")]),
                 lambda: db.apply([Change("", b"k", Op.PUT, b"v", Timestamp(BASE_MS))]),
                 lambda: db.namespace("x"), lambda: ns.get(b"k"), lambda: ns.put(b"k", b"v"),
                 lambda: snap.get(b"k"), lambda: batch.commit(), lambda: db.now(),
                 lambda: db.get(b"k", at=Timestamp(BASE_MS))):
        with pytest.raises(errors.EngineClosedError):
            call()
    assert "closed" in repr(db)


def test_closed_snapshot_raises(open_db):
    db = open_db()
    with db.snapshot() as snap:
        pass
    with pytest.raises(errors.EngineClosedError):
        snap.get(b"k")
    with pytest.raises(errors.EngineClosedError):
        snap.scan()


def test_invalid_options(db_path):
    for kw in ({"bogus": 1}, {"segment_size": 100}, {"segment_size": "big"}, {"durability": "maybe"},
               {"node_id": -1}, {"node_id": 2 ** 32}, {"node_id": True}):
        with pytest.raises(errors.InvalidOptionError):
            ae.open(db_path, compact_interval=None, **kw)
    with pytest.raises(TypeError):
        ae.open(123)
    with ae.open(db_path, compact_interval=None) as db:  # the failed opens left no lock behind
        db.put(b"k", b"v")


# --------------------------------------------------------------------------
# errors: locks


def test_locked_in_process(open_db, db_path):
    db = open_db()
    db.put(b"k", b"v")
    with pytest.raises(errors.LockedError):
        ae.open(db_path, compact_interval=None)
    with pytest.raises(errors.LockedError):
        ae.open(db_path + "/../db", compact_interval=None)  # the same directory by another path
    assert db.get(b"k") == b"v"
    db.close()
    with ae.open(db_path, compact_interval=None) as db2:
        assert db2.get(b"k") == b"v"


def test_locked_from_another_process(open_db, db_path):
    db = open_db()
    db.put(b"k", b"v")
    child = f"""
        import abase_engine as ae
        try:
            with ae.open({db_path!r}, compact_interval=None) as db:
                print("opened", db.get(b"k"))
        except ae.LockedError:
            print("LockedError")
    """
    r = _run_child(child)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "LockedError"
    db.close()
    r = _run_child(child)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "opened b'v'"


# --------------------------------------------------------------------------
# errors: damaged or foreign directories


def _fill_sealed_segments(path, n=120):
    with ae.open(path, compact_interval=None, segment_size=4096) as db:
        for i in range(n):
            db.put(b"key%04d" % i, b"v" * 60)
    segs = _segments(path)
    assert len(segs) >= 3, segs
    return segs


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


@pytest.mark.parametrize("where", ["record", "header"])
def test_corruption_in_a_sealed_segment(db_path, where):
    segs = _fill_sealed_segments(db_path)
    victim = segs[0]
    offset = 64 + 40 + 2 if where == "record" else 3  # in the first record's key / in the magic
    _flip(victim, offset)
    with pytest.raises(errors.CorruptionError) as ei:
        ae.open(db_path, compact_interval=None, segment_size=4096)
    err = ei.value
    assert err.file is not None and os.path.basename(err.file) == os.path.basename(victim)
    assert err.offset is not None
    assert err.offset == (64 if where == "record" else 0)
    assert os.path.basename(victim) in str(err)
    # the failed open released the lock; repairing the byte makes the directory whole again
    _flip(victim, offset)
    with ae.open(db_path, compact_interval=None, segment_size=4096) as db:
        assert db.get(b"key0000") == b"v" * 60
        assert db.get(b"key0119") == b"v" * 60
        db._check()


def test_corruption_in_the_middle_of_a_sealed_segment(db_path):
    segs = _fill_sealed_segments(db_path)
    victim = segs[1]
    size = os.path.getsize(victim)
    _flip(victim, size // 2)
    with pytest.raises(errors.CorruptionError) as ei:
        ae.open(db_path, compact_interval=None, segment_size=4096)
    assert ei.value.file is not None and ei.value.file.endswith(os.path.basename(victim))
    assert 64 <= ei.value.offset <= size // 2


def test_torn_tail_of_the_newest_segment_is_not_corruption(db_path):
    with ae.open(db_path, compact_interval=None, segment_size=1 << 20) as db:
        for i in range(10):
            db.put(b"key%d" % i, b"v%d" % i)
    (seg,) = _segments(db_path)
    with open(seg, "rb") as f:
        data = f.read()
    end = len(data.rstrip(b"\0"))
    _flip(seg, end - 1)  # inside the last record (key9's value)
    # a clean close marked all of it durable: a bad byte there is corruption
    with pytest.raises(errors.CorruptionError):
        ae.open(db_path, compact_interval=None, segment_size=1 << 20)
    # as if the process had died before syncing the last record: a torn tail
    last_off = logfmt.records(seg)[-1][0]
    logfmt.mark_before(db_path, 0, last_off)
    with ae.open(db_path, compact_interval=None, segment_size=1 << 20) as db:
        assert db.recovery["dropped_bytes"] > 0
        assert db.stats()["recovery"]["dropped_bytes"] > 0
        assert [db.get(b"key%d" % i) for i in range(9)] == [b"v%d" % i for i in range(9)]
        assert db.get(b"key9") is None
        db.put(b"key9", b"again")
        db._check()
    with ae.open(db_path, compact_interval=None, segment_size=1 << 20) as db:
        assert db.get(b"key9") == b"again"


_STORE_FORMAT = str(ae.store.FORMAT_VERSION).encode()


def _set_store_format(db_path, value: bytes) -> bytes:
    env = lmdb.open(os.path.join(db_path, "store"), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(b"meta")) as txn:
            old = txn.get(b"format")
            txn.put(b"format", value)
    finally:
        env.close()
    return old


def test_format_version_in_lmdb_meta(db_path):
    with ae.open(db_path, compact_interval=None) as db:
        db.put(b"k", b"v")
    assert _set_store_format(db_path, b"99") == _STORE_FORMAT
    with pytest.raises(errors.FormatVersionError) as ei:
        ae.open(db_path, compact_interval=None)
    assert "99" in str(ei.value)
    del ei
    gc.collect()  # see test_format_version_error_closes_the_store
    # the lock was released: restoring the version opens the directory again
    _set_store_format(db_path, _STORE_FORMAT)
    with ae.open(db_path, compact_interval=None) as db:
        assert db.get(b"k") == b"v"


def test_format_version_error_closes_the_store(db_path):
    with ae.open(db_path, compact_interval=None) as db:
        db.put(b"k", b"v")
    _set_store_format(db_path, b"99")
    try:
        ae.open(db_path, compact_interval=None)
    except errors.FormatVersionError as exc:
        kept = exc  # e.g. kept for a log message
    r = _run_child(f"""
        import lmdb, os
        env = lmdb.open(os.path.join({db_path!r}, "store"), max_dbs=8)
        with env.begin(write=True, db=env.open_db(b"meta")) as txn:
            txn.put(b"format", {_STORE_FORMAT!r})
    """)
    assert r.returncode == 0, r.stderr
    with ae.open(db_path, compact_interval=None) as db:
        assert db.get(b"k") == b"v"
    assert kept is not None


def test_format_version_in_a_segment_header(db_path):
    from abase_engine._abase import lib

    segs = _fill_sealed_segments(db_path)
    with open(segs[0], "r+b") as f:
        header = bytearray(f.read(64))
        assert header[:8] == b"ABLOGSEG"
        header[8:12] = (7).to_bytes(4, "little")
        crc = lib.abase_crc_mask(lib.abase_crc32c(0, bytes(header[:60]), 60))
        header[60:64] = crc.to_bytes(4, "little")
        f.seek(0)
        f.write(header)
    with pytest.raises(errors.FormatVersionError) as ei:
        ae.open(db_path, compact_interval=None, segment_size=4096)
    assert os.path.basename(segs[0]) in str(ei.value)


# --------------------------------------------------------------------------
# errors: clock skew, snapshot too old, merge operator mismatch


def test_clock_skew(open_db, fake_clock):
    db = open_db(clock=fake_clock, max_clock_skew_ms=500)
    before = db.now()
    far = Timestamp(fake_clock.now + 10_000, 0, 2)
    with pytest.raises(errors.ClockSkewError):
        db.apply([Change("", b"ok", Op.PUT, b"v", Timestamp(fake_clock.now - 5, 0, 2)),
                  Change("", b"k", Op.PUT, b"v", far)])
    assert db.get(b"k") is None and db.get(b"ok") is None  # nothing of the call applied
    assert db.now() < far  # the clock did not move
    assert db.now().physical_ms == before.physical_ms
    near = Timestamp(fake_clock.now + 400, 3, 2)
    assert db.apply([Change("", b"k", Op.PUT, b"near", near)]) == 1
    assert db.get(b"k") == b"near"
    assert db.put(b"local", b"x") > near  # a receive event advanced the clock
    # the skew check uses the injected clock: once it catches up, far is fine
    fake_clock.now = far.physical_ms
    assert db.apply([Change("", b"k", Op.PUT, b"far", far)]) == 1
    assert db.get(b"k") == b"far"


def test_snapshot_too_old(open_db):
    db = open_db()
    t1 = db.put(b"k", b"v1")
    t2 = db.put(b"k", b"v2")
    assert db.get(b"k", at=t1) == b"v1"
    assert list(db.scan(at=t1)) == [(b"k", b"v1")]
    db.compact(wait=True)
    with pytest.raises(errors.SnapshotTooOldError):
        db.get(b"k", at=t1)
    with pytest.raises(errors.SnapshotTooOldError):
        list(db.scan(at=t1))
    assert db.get(b"k", at=t2) == b"v2"
    assert db.get(b"k") == b"v2"


def test_snapshot_too_old_in_a_merge_namespace(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    t1 = c.merge(b"n", PNCounter.increment(1))
    c.merge(b"n", PNCounter.increment(2))
    assert c.get(b"n", at=t1) == 1
    db.compact(wait=True)
    with pytest.raises(errors.SnapshotTooOldError):
        c.get(b"n", at=t1)
    assert c.get(b"n") == 3


def test_merge_operator_mismatch(open_db, db_path):
    db = open_db()
    c = db.namespace("counters", merge=PNCounter())
    c.merge(b"x", PNCounter.increment(2))
    assert db.namespace("counters", merge=PNCounter()) is c
    assert db.namespace("counters") is c  # already open: its own operator
    with pytest.raises(errors.MergeOperatorMismatch):
        db.namespace("counters", merge=GCounter())
    plain = db.namespace("plain")
    with pytest.raises(errors.MergeOperatorMismatch):
        db.namespace("plain", merge=PNCounter())
    assert db.namespace("plain", merge=ae.LWW()) is plain
    assert db.namespaces() == {"counters": PNCounter.name, "plain": ae.LWW.name}
    db.compact(wait=True)
    db.close()
    db = open_db()
    with pytest.raises(errors.MergeOperatorMismatch):
        db.namespace("counters", merge=GCounter())
    with pytest.raises(errors.MergeOperatorMismatch):
        db.namespace("counters")  # created with PNCounter: must pass it
    with pytest.raises(errors.MergeOperatorMismatch):
        db.namespace("plain", merge=PNCounter())
    assert db.namespace("counters", merge=PNCounter()).get(b"x") == 2
    with pytest.raises(TypeError):
        db.namespace("bad", merge="PNCounter")
    with pytest.raises(TypeError):
        db.namespace(b"bytes-name")


def test_merge_operand_errors(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    with pytest.raises(errors.MergeOperandError):
        c.merge(b"k", GCounter.increment(1))
    with pytest.raises(errors.MergeOperandError):
        c.merge(b"k", b"\xde\xad")  # raw operand bytes that do not decode
    with pytest.raises(errors.MergeOperandError):
        c.put(b"k", b"garbage")
    assert c.get(b"k") is None


# --------------------------------------------------------------------------
# batches


class Boom(Exception):
    pass


def test_batch_is_atomic_on_exception(open_db):
    db = open_db()
    db.put(b"keep", b"1")
    c = db.namespace("c", merge=PNCounter())
    c.merge(b"n", PNCounter.increment(5))
    with pytest.raises(Boom):
        with db.batch() as b:
            b.put(b"new", b"x")
            b.delete(b"keep")
            b.merge(b"n", PNCounter.increment(100), namespace=c)
            b.put(b"other", b"y", namespace="side")
            raise Boom()
    assert db.get(b"new") is None and db.get(b"keep") == b"1"
    assert c.get(b"n") == 5
    assert db.namespace("side").get(b"other") is None
    with pytest.raises(errors.AbaseError):
        b.commit()  # a discarded batch cannot be committed afterwards
    db.close()
    db = ae.open(db.path, compact_interval=None)
    try:
        c = db.namespace("c", merge=PNCounter())
        assert db.get(b"new") is None and db.get(b"keep") == b"1" and c.get(b"n") == 5
    finally:
        db.close()


def test_batch_across_namespaces(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    side = db.namespace("side")
    with db.batch() as b:
        b.put(b"k", b"default")
        b.put(b"k", b"side", namespace=side)
        b.put(b"k2", b"side2", namespace="side")
        b.merge(b"k", PNCounter.increment(3), namespace=c)
        b.merge(b"k", PNCounter.decrement(1), namespace="c")
        b.merge(b"lww", b"as-put")  # merge on an LWW namespace is a put
        assert len(b) == 6
    assert db.get(b"k") == b"default"
    assert side.get(b"k") == b"side" and side.get(b"k2") == b"side2"
    assert c.get(b"k") == 2
    assert db.get(b"lww") == b"as-put"
    assert list(side.scan()) == [(b"k", b"side"), (b"k2", b"side2")]
    db.compact(wait=True)
    assert (db.get(b"k"), side.get(b"k"), c.get(b"k")) == (b"default", b"side", 2)


def test_batch_timestamps(open_db):
    db = open_db()
    t0 = db.put(b"a", b"0")
    b = db.batch()
    assert b.commit() is None  # empty batch
    b = db.batch()
    b.put(b"a", b"1")
    b.put(b"a", b"2")  # later in the batch: later timestamp, wins
    b.put(b"b", b"1")
    last = b.commit()
    assert isinstance(last, Timestamp) and last > t0
    assert db.get(b"a") == b"2"
    assert db.get(b"a", at=last) == b"2"
    with pytest.raises(errors.AbaseError):
        b.commit()  # once only
    with db.batch() as b2:
        b2.put(b"c", b"1")
    with pytest.raises(errors.AbaseError):
        b2.commit()  # the with block committed it
    t1 = db.put(b"c", b"2")
    assert t1 > last


def test_batch_from_another_engine_namespace_is_refused(open_db, tmp_path):
    db = open_db()
    other = open_db(str(tmp_path / "other"))
    ns = other.namespace("x")
    with pytest.raises(ValueError):
        with db.batch() as b:
            b.put(b"k", b"v", namespace=ns)
    with pytest.raises(TypeError):
        with db.batch() as b:
            b.put(b"k", b"v", namespace=42)


def test_batch_delete_then_merge_same_counter(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    c.merge(b"x", PNCounter.increment(3))
    with db.batch() as b:
        b.delete(b"x", namespace=c)
        b.merge(b"x", PNCounter.increment(2), namespace=c)
    assert c.get(b"x") == 2


def test_batch_two_merges_same_counter(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    c.merge(b"x", PNCounter.increment(3))
    with db.batch() as b:
        b.merge(b"x", PNCounter.increment(2), namespace=c)
        b.merge(b"x", PNCounter.decrement(10), namespace=c)
        b.merge(b"x", PNCounter.increment(1), namespace=c)
    assert c.get(b"x") == -4
    db.compact(wait=True)
    assert c.get(b"x") == -4


# --------------------------------------------------------------------------
# snapshots and history


def test_snapshot_isolation(open_db):
    db = open_db(segment_size=4096)
    c = db.namespace("c", merge=PNCounter())
    db.put(b"a", b"1")
    db.put(b"b", b"2")
    c.merge(b"n", PNCounter.increment(1))
    with db.snapshot() as snap:
        db.put(b"a", b"10")
        db.delete(b"b")
        db.put(b"c", b"3")
        c.merge(b"n", PNCounter.increment(10))
        for i in range(100):  # enough to seal segments
            db.put(b"fill%03d" % i, b"x" * 50)
        db.compact(wait=True)  # must keep what the snapshot needs
        for _ in range(2):
            assert snap.get(b"a") == b"1"
            assert snap.get(b"b") == b"2"
            assert snap.get(b"c") is None
            assert snap.get(b"c", b"dflt") == b"dflt"
            assert snap.get(b"n", namespace=c) == 1
            assert snap.get(b"n", namespace="c") == 1
            assert list(snap.scan()) == [(b"a", b"1"), (b"b", b"2")]
            assert list(snap.scan(reverse=True, prefix=b"b")) == [(b"b", b"2")]
            assert db.get(b"a") == b"10" and db.get(b"b") is None and c.get(b"n") == 11
            db.compact(wait=True)
    db.compact(wait=True)
    assert db.stats()["sealed_segments"] == 0  # the snapshot no longer holds compaction back
    assert db.get(b"a") == b"10" and c.get(b"n") == 11


def test_get_at_returns_history_while_held(open_db):
    db = open_db()
    t1 = db.put(b"k", b"v1")
    t2 = db.put(b"k", b"v2")
    t3 = db.delete(b"k")
    t4 = db.put(b"k", b"v4")
    assert db.get(b"k", at=t1) == b"v1"
    assert db.get(b"k", at=t2) == b"v2"
    assert db.get(b"k", at=t3) is None
    assert db.get(b"k", b"gone", at=t3) == b"gone"
    assert db.get(b"k", at=t4) == b"v4"
    assert db.get(b"k", at=Timestamp(t1.physical_ms, t1.logical, 0)) is None  # just before t1
    # between two writes: as of the earlier one
    assert db.get(b"k", at=Timestamp(t2.physical_ms, t2.logical, t2.node_id + 1)) == b"v2"
    assert db.get(b"never", at=t4) is None


def test_timestamps_increase(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    seen = [db.put(b"a", b"1"), db.delete(b"a"), db.put_many([(b"b", b"1")]), c.merge(b"x", PNCounter.increment(1)),
            c.put(b"y", c.get_raw(b"x")), c.delete(b"x"), db.now()]
    b = db.batch()
    b.put(b"z", b"1")
    b.delete(b"z")
    seen.append(b.commit())
    seen.append(db.now())
    assert all(isinstance(t, Timestamp) for t in seen)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


@pytest.mark.parametrize("compact", [False, True])
def test_reopen_keeps_data_and_timestamps_increase_when_clock_goes_back(db_path, compact):
    clock = FakeClock()
    db = ae.open(db_path, clock=clock, compact_interval=None)
    stamps = []
    for i in range(20):
        stamps.append(db.put(b"k%02d" % i, b"v%d" % i))
        if i % 5 == 0:
            clock.advance(-7)  # the wall clock steps back
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0].physical_ms == BASE_MS
    if compact:
        db.compact(wait=True)
    db.close()
    clock.now = BASE_MS - 3_600_000  # an hour back
    db = ae.open(db_path, clock=clock, compact_interval=None)
    try:
        assert [db.get(b"k%02d" % i) for i in range(20)] == [b"v%d" % i for i in range(20)]
        t = db.put(b"after", b"x")
        assert t > stamps[-1]
        assert db.now() > t
    finally:
        db.close()


def test_reopen_after_overwrite_in_one_segment(open_db, db_path):
    db = open_db()
    db.put(b"a", b"1")
    db.put(b"a", b"2")
    db.put(b"b", b"1")
    db.delete(b"b")
    db.close()
    db = open_db()
    assert db.check() == []
    assert db.get(b"a") == b"2"
    assert db.get(b"b") is None
    assert list(db.scan()) == [(b"a", b"2")]
    assert len(db) == 1


def test_reopen_keeps_data(open_db, db_path):
    db = open_db(segment_size=4096)
    c = db.namespace("c", merge=PNCounter())
    for i in range(200):
        db.put(b"k%03d" % i, b"v%03d" % i)
    c.merge(b"n", PNCounter.increment(7))
    db.compact(wait=True)  # some in LMDB ...
    for i in range(200, 260):
        db.put(b"k%03d" % i, b"v%03d" % i)  # ... some in the log
    db.close()
    db = open_db(segment_size=4096)
    c = db.namespace("c", merge=PNCounter())
    assert c.get(b"n") == 7
    assert list(db.scan()) == [(b"k%03d" % i, b"v%03d" % i) for i in range(260)]
    db._check()


def test_check_right_after_namespace_creation(open_db):
    db = open_db()
    db.namespace("fresh")
    assert db.check() == []


def test_check_is_clean(open_db):
    db = open_db(segment_size=4096)
    c = db.namespace("c", merge=PNCounter())
    c.get(b"warm-up")  # see test_check_right_after_namespace_creation
    for i in range(100):
        db.put(b"k%d" % i, b"x" * 40)
        c.merge(b"n%d" % (i % 7), PNCounter.increment(i))
    assert db.check() == []
    db.compact(wait=True)
    assert db.check() == []
    db._check()
    assert db.check(fix=True) == []  # a healthy engine: nothing to fix, stays open
    assert not db.closed


# --------------------------------------------------------------------------
# stats, sync, compaction


def test_stats(open_db):
    db = open_db(segment_size=4096)
    st0 = db.stats()
    expected = {"keys", "index_keys", "store_keys", "log_bytes", "segments", "sealed_segments", "index_bytes",
                "index_capacity", "compaction_lag_bytes", "compactions", "compaction_passes",
                "compaction_errors", "log_bytes_written", "store_bytes_written", "store_bytes",
                "records_appended", "syncs", "recovery"}
    assert expected <= set(st0)
    for name in expected - {"recovery"}:
        assert isinstance(st0[name], int) and st0[name] >= 0, name
    assert st0["keys"] == 0 and st0["records_appended"] == 0
    for i in range(100):
        db.put(b"k%03d" % i, b"v" * 50)
    st1 = db.stats()
    assert st1["records_appended"] == 100
    assert st1["index_keys"] == 100 and st1["keys"] >= 100
    assert st1["segments"] >= 2 and st1["sealed_segments"] == st1["segments"] - 1
    assert st1["log_bytes_written"] >= 100 * (40 + 4 + 50)
    assert st1["compaction_lag_bytes"] > 0
    assert st1["index_capacity"] >= st1["index_keys"]
    folded = db.compact(wait=True)
    assert folded == st1["segments"]
    st2 = db.stats()
    assert st2["compactions"] == folded and st2["compaction_passes"] == 1 and st2["compaction_errors"] == 0
    assert st2["store_keys"] == 100 and st2["index_keys"] == 0 and st2["sealed_segments"] == 0
    assert st2["compaction_lag_bytes"] == 0
    assert st2["store_bytes_written"] > 0 and st2["store_bytes"] > 0
    db.sync()
    assert db.compact(wait=False) == 0


def test_sync_durability_counts_syncs(open_db):
    db = open_db(durability="sync")
    for i in range(5):
        db.put(b"k%d" % i, b"v")
    assert db.stats()["syncs"] >= 1
    db.sync()
    assert [db.get(b"k%d" % i) for i in range(5)] == [b"v"] * 5


# --------------------------------------------------------------------------
# threads


@pytest.mark.parametrize("compact_interval", [None, 0.001])
def test_threads_put_and_get_concurrently(open_db, db_path, compact_interval):
    db = open_db(segment_size=8192, compact_interval=compact_interval)
    c = db.namespace("c", merge=PNCounter())
    n_threads, per_thread = 4, 400
    start = threading.Barrier(n_threads)
    failures = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                k = b"t%d-%04d" % (t, i)
                db.put(k, b"v%d-%d" % (t, i))
                c.merge(b"shared", PNCounter.increment(1))
                if i % 3 == 0:
                    j = i // 2
                    got = db.get(b"t%d-%04d" % (t, j))
                    if got != b"v%d-%d" % (t, j):
                        failures.append((k, got))
                if t == 0 and i % 100 == 99 and compact_interval is None:
                    db.compact(wait=True)
                if i % 50 == 0:
                    list(db.scan(prefix=b"t%d-" % ((t + 1) % n_threads)))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    expect = sorted((b"t%d-%04d" % (t, i), b"v%d-%d" % (t, i)) for t in range(n_threads) for i in range(per_thread))
    assert list(db.scan()) == expect
    assert c.get(b"shared") == n_threads * per_thread
    if compact_interval is None:
        # With the background thread, passes can fail on a known race
        # (test_segments_listing_races_with_appends); they are retried.
        assert db.stats()["compaction_errors"] == 0
    db.compact(wait=True)
    assert list(db.scan()) == expect
    assert c.get(b"shared") == n_threads * per_thread
    db._check()


def test_segments_listing_races_with_appends(open_db):
    import time

    db = open_db(segment_size=4096)
    stop = threading.Event()
    writer_errors = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                db.put(b"k%d" % (i % 50), b"x" * 1500)
                i += 1
                if i % 200 == 0:
                    db.compact(wait=True)
        except BaseException as exc:
            writer_errors.append(exc)

    th = threading.Thread(target=writer)
    th.start()
    deadline = time.monotonic() + 10  # a bound on the attempts, not a synchronisation
    try:
        while time.monotonic() < deadline:
            db.stats()  # lists the segments while the writer seals new ones
    finally:
        stop.set()
        th.join()
    assert writer_errors == []


# -- scan order (the log's keys are radix-sorted in C) ------------------------

_PREFIXY_KEYS = st.sets(
    st.lists(st.sampled_from([0, 1, 0x61, 0x62, 0xFF]), max_size=24).map(bytes),
    max_size=400,
)


@settings(max_examples=40, deadline=None)
@given(keys=_PREFIXY_KEYS, data=st.data())
def test_property_scan_order_of_log_keys(tmp_path_factory, keys, data):
    """Keys sharing long prefixes, of every length, the empty key among them:
    forward, reverse, ranged and prefix scans of log-resident keys come out
    in bytewise order, each exactly once, with their values."""
    db = ae.open(str(tmp_path_factory.mktemp("scan") / "db"), compact_interval=None)
    try:
        model = {k: b"v" + k for k in keys}
        db.put_many(list(model.items()))
        # a second version of some keys: the scan must show the newest
        for k in list(model)[::3]:
            model[k] = b"w" + k
            db.put(k, model[k])
        ordered = sorted(model)
        assert list(db.scan()) == [(k, model[k]) for k in ordered]
        assert list(db.scan(reverse=True)) == [(k, model[k]) for k in reversed(ordered)]
        lo = data.draw(st.sampled_from(ordered)) if ordered else b""
        hi = data.draw(st.sampled_from(ordered)) if ordered else b""
        assert [k for k, _ in db.scan(start=lo, stop=hi)] == [k for k in ordered if lo <= k < hi]
        p = data.draw(st.sampled_from([b"", b"a", b"\x00", b"ab", b"\xff\xff"]))
        assert [k for k, _ in db.scan(prefix=p)] == [k for k in ordered if k.startswith(p)]
    finally:
        db.close()


def test_scan_order_many_keys_with_long_shared_prefixes(open_db):
    """Enough keys per prefix that the radix sort recurses many levels deep
    (small buckets are insertion-sorted, large ones are not)."""
    import random

    rnd = random.Random(5)
    keys = set()
    for _ in range(6000):
        stem = rnd.choice([b"user:0000", b"user:0001", b"u", b"", b"user:00001111"])
        keys.add(stem + bytes(rnd.choice(b"\x00\x01ab\xff") for _ in range(rnd.randrange(0, 6))))
    db = open_db()
    db.put_many([(k, k[::-1]) for k in keys])
    ordered = sorted(keys)
    assert list(db.scan()) == [(k, k[::-1]) for k in ordered]
    assert [k for k, _ in db.scan(reverse=True)] == ordered[::-1]
    assert [k for k, _ in db.scan(prefix=b"user:0001")] == [k for k in ordered if k.startswith(b"user:0001")]


@pytest.mark.parametrize("compact", [False, True])
def test_namespace_definitions_survive_reopen_from_the_log_or_the_store(open_db, db_path, compact):
    """Open skips the log walk for definitions when recovery saw none; one
    that is only in the log (no compaction yet) must still be found."""
    db = open_db()
    c = db.namespace("counters", merge=PNCounter())
    c.merge(b"x", PNCounter.increment(3))
    db.namespace("plain").put(b"k", b"v")
    if compact:
        db.compact(wait=True)
    db.close()
    db = open_db()
    assert db.namespaces() == {"counters": PNCounter.name, "plain": ae.LWW.name}
    assert db._log.recovery.ns_def_records == (0 if compact else 2)
    assert db.namespace("counters", merge=PNCounter()).get(b"x") == 3
    assert db.namespace("plain").get(b"k") == b"v"
