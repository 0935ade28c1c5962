"""Unit tests of the store layer (LMDB): value encoding, corruption, map growth, format version."""

from __future__ import annotations

import os
import subprocess
import sys

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import CorruptionError, FormatVersionError
from abase_engine import store as S

U64 = st.integers(0, (1 << 64) - 1)
U32 = st.integers(0, (1 << 32) - 1)
KIND = st.sampled_from([S.VALUE, S.TOMBSTONE, S.STATE])


def _open(path, **kw):
    kw.setdefault("compact_interval", None)
    return ae.open(path, node_id=1, **kw)


# ---------------------------------------------------------------- encoding

@settings(max_examples=400, deadline=None)
@given(KIND, U64, U32, st.binary(max_size=300), st.one_of(st.none(), st.tuples(U64, U32)))
def test_property_encode_decode_round_trip(kind, hlc, node, value, anchor):
    raw = S.encode(kind, hlc, node, value, anchor)
    assert isinstance(raw, bytes)
    ah, an = (0, 0) if anchor is None else anchor
    assert S.decode(raw) == (kind, hlc, node, ah, an, value)
    # encoding is canonical: re-encoding the decoded version gives the same bytes
    k, h, n, ah2, an2, v = S.decode(raw)
    assert S.encode(k, h, n, v, (ah2, an2)) == raw


def test_encode_layout_is_little_endian():
    raw = S.encode(S.VALUE, 0x0102030405060708, 0x0A0B0C0D, b"xyz")
    assert raw == bytes([1]) + bytes(range(8, 0, -1)) + bytes([0x0D, 0x0C, 0x0B, 0x0A]) + b"xyz"
    raw = S.encode(S.STATE, 1, 2, b"s", (3, 4))
    assert raw[0] == S.STATE | 0x80 and len(raw) == 25 + 1


def test_decode_accepts_memoryview_like_lmdb_buffers():
    raw = S.encode(S.VALUE, 5, 6, b"abc")
    assert S.decode(memoryview(raw)) == (S.VALUE, 5, 6, 0, 0, b"abc")
    assert isinstance(S.decode(memoryview(raw))[5], bytes)


@pytest.mark.parametrize("raw", [
    b"",
    b"\x01",
    b"\x01" + b"\x00" * 11,                      # 12 bytes: header is 13
    b"\x00" + b"\x00" * 12,                      # kind 0
    b"\x04" + b"\x00" * 12,                      # kind 4
    b"\x7f" + b"\x00" * 12,                      # kind 127
    b"\x81" + b"\x00" * 12,                      # anchor flag, anchor missing
    b"\x83" + b"\x00" * 20,                      # anchor flag, anchor short
    b"\xff" + b"\x00" * 30,                      # anchor flag + unknown kind
    b"\x80" + b"\x00" * 30,                      # anchor flag + kind 0
])
def test_decode_bad_bytes_is_corruption(raw):
    with pytest.raises(CorruptionError) as ei:
        S.decode(raw, "somewhere")
    assert ei.value.file == "somewhere"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_property_decode_never_raises_anything_else(raw):
    try:
        kind, hlc, node, ah, an, body = S.decode(raw)
    except CorruptionError:
        return
    assert kind in (S.VALUE, S.TOMBSTONE, S.STATE)
    assert 0 <= hlc < 1 << 64 and 0 <= node < 1 << 32 and isinstance(body, bytes)


@settings(max_examples=200, deadline=None)
@given(U64, U32, U32, st.binary(max_size=40), U64, U32, U32, st.binary(max_size=40))
def test_property_tombstone_keys_sort_by_timestamp(h1, n1, ns1, k1, h2, n2, ns2, k2):
    a = S.Store.tomb_key(h1, n1, ns1, k1)
    b = S.Store.tomb_key(h2, n2, ns2, k2)
    assert tuple(S.Store.split_tomb_key(a))[:3] == (h1, n1, ns1)
    assert len(a) <= 511  # always a valid LMDB key
    if (h1, n1) != (h2, n2):
        assert (a < b) == ((h1, n1) < (h2, n2))


# ------------------------------------------------------------ Store object

def test_store_meta_and_generation(tmp_path):
    st_ = S.Store(str(tmp_path))
    try:
        assert st_.meta_get(b"format") == b"%d" % S.FORMAT_VERSION
        assert st_.meta_u64(b"nothing", 17) == 17
        g = st_.generation
        st_.write(lambda txn: st_.put_meta_u64(txn, b"x", 1 << 60))
        assert st_.generation == g + 1
        assert st_.meta_u64(b"x", 0) == 1 << 60
        assert st_.get(3, b"k") is None
        st_.db(3)
        st_.write(lambda txn: txn.put(b"k", S.encode(S.VALUE, 9, 1, b"v"), db=st_.db(3)))
        assert st_.get(3, b"k") == (S.VALUE, 9, 1, 0, 0, b"v")
        assert st_.count(3) == 1
    finally:
        st_.close()


def test_store_write_failure_aborts(tmp_path):
    st_ = S.Store(str(tmp_path))
    try:
        def fn(txn):
            txn.put(b"a", b"1", db=st_.meta)
            raise RuntimeError("boom")
        with pytest.raises(RuntimeError):
            st_.write(fn)
        assert st_.meta_get(b"a") is None
    finally:
        st_.close()


def test_store_map_grows_in_one_transaction(tmp_path):
    st_ = S.Store(str(tmp_path), map_size=1 << 20)
    try:
        dbi = st_.db(1)
        blob = os.urandom(1000)

        def fn(txn):
            for i in range(3000):  # ~3 MiB in one transaction
                txn.put(b"k%05d" % i, blob, db=dbi)
            return "ok"
        assert st_.write(fn) == "ok"
        assert st_.env.info()["map_size"] > 1 << 20
        assert st_.count(1) == 3000
        assert st_.get_raw(1, b"k02999") == blob
    finally:
        st_.close()


def test_reader_sees_commits_of_other_threads(tmp_path):
    import threading

    st_ = S.Store(str(tmp_path))
    try:
        dbi = st_.db(1)
        assert st_.get_raw(1, b"k") is None  # this thread now holds a read txn
        t = threading.Thread(target=lambda: st_.write(lambda txn: txn.put(b"k", b"v", db=dbi)))
        t.start()
        t.join()
        assert st_.get_raw(1, b"k") == b"v"
    finally:
        st_.close()


# ------------------------------------------------------- through the engine

def test_engine_map_size_growth_on_compaction(tmp_path):
    vals = {}
    with _open(tmp_path, map_size=1 << 20, segment_size=1 << 20) as db:
        for i in range(3000):
            k = b"key%05d" % i
            vals[k] = os.urandom(1000)
            db.put(k, vals[k])
        db.compact(wait=True)  # > 1 MiB into a 1 MiB map
        assert db.stats()["store_bytes"] > 1 << 20
        assert db.stats()["index_keys"] == 0
        assert all(db.get(k) == v for k, v in vals.items())
        for i in range(0, 3000, 2):  # grow again with overwrites and deletes
            k = b"key%05d" % i
            vals[k] = os.urandom(1500)
            db.put(k, vals[k])
        for i in range(1, 3000, 10):
            db.delete(b"key%05d" % i)
            vals.pop(b"key%05d" % i)
        db.compact(wait=True)
        assert dict(db.scan()) == vals
    # reopening with the small initial map keeps the data
    with _open(tmp_path, map_size=1 << 20) as db:
        assert dict(db.scan()) == vals


def test_corrupt_stored_value_raises_not_returned(tmp_path):
    with _open(tmp_path) as db:
        db.put(b"good", b"v")
        db.put(b"bad", b"v")
        db.compact(wait=True)
    env = lmdb.open(str(tmp_path / "store"), max_dbs=10)
    dbi = env.open_db(b"n:0")
    with env.begin(write=True) as txn:
        txn.put(b"bad", b"\x09garbage", db=dbi)
    env.close()
    with _open(tmp_path) as db:
        assert db.get(b"good") == b"v"
        with pytest.raises(CorruptionError):
            db.get(b"bad")
        with pytest.raises(CorruptionError):
            dict(db.scan())
        assert any("bad" in f for f in db.check())


def _set_format(path, value: bytes) -> None:
    # in a child process: LMDB must not be opened twice in one process, and a
    # failed open may leave its environment behind until garbage collection
    code = ("import lmdb, sys; env = lmdb.open(sys.argv[1], max_dbs=10); m = env.open_db(b'meta'); "
            "t = env.begin(write=True); t.put(b'format', sys.argv[2].encode(), db=m); t.commit(); env.close()")
    subprocess.run([sys.executable, "-c", code, str(path / "store"), value.decode()], check=True, timeout=60)


def test_unknown_store_format_version(tmp_path):
    with _open(tmp_path) as db:
        db.put(b"k", b"v")
    _set_format(tmp_path, b"99")
    with pytest.raises(FormatVersionError):
        _open(tmp_path)
    # the directory is not left locked
    _set_format(tmp_path, b"%d" % S.FORMAT_VERSION)
    with _open(tmp_path) as db:
        assert db.get(b"k") == b"v"


def test_compaction_marker_and_high_water_persisted(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        last = None
        for i in range(300):
            last = db.put(b"k%d" % i, b"x" * 20)
        db.compact(wait=True)
    env = lmdb.open(str(tmp_path / "store"), max_dbs=10, readonly=True)
    meta = env.open_db(b"meta")
    with env.begin() as txn:
        marker = int.from_bytes(txn.get(b"compacted_through", db=meta), "little")
        hw = int.from_bytes(txn.get(b"hlc_high_water", db=meta), "little")
    env.close()
    assert marker >= 1
    assert hw >= last.hlc


def test_stats_right_after_creating_a_namespace(tmp_path):
    with _open(tmp_path) as db:
        db.stats()
        ns = db.namespace("fresh")
        ns.put(b"a", b"1")
        s = db.stats()
        assert s["index_keys"] == 2  # the key and the namespace definition
