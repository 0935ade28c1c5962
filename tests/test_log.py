"""Unit tests of the log layer: CRC32C, the on-disk segment/record format,
segment sealing, the hash index (growth and removal) and recovery."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine._abase import ffi, lib

SEG_HDR = struct.Struct("<8sIIQIIQ20sI")  # magic ver hlen no node res hlc res(20) crc@60
REC_HDR = struct.Struct("<IIQQIIBBHI")
F_DOMINANT, F_BATCH, F_BATCH_END = 1, 2, 4


def crc(data: bytes, start: int = 0) -> int:
    return lib.abase_crc32c(start, data, len(data))


def crc_portable(data: bytes, start: int = 0) -> int:
    return lib.abase_crc32c_portable(start, data, len(data))


def mask(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def segment_files(path) -> list:
    d = os.path.join(path, "log")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".seg"))


def parse_segment(file: str) -> tuple:
    """(header dict, [record dict]) of one segment file, read independently of the C code."""
    raw = open(file, "rb").read()
    magic, ver, hlen, no, node, _r, chlc, _r2, hcrc = SEG_HDR.unpack_from(raw, 0)
    header = dict(magic=magic, version=ver, header_len=hlen, no=no, node=node,
                  created_hlc=chlc, crc=hcrc, crc_ok=mask(crc(raw[:60])) == hcrc)
    recs = []
    off = 64
    while off + 40 <= len(raw):
        c, length, prev, hlc, rnode, ns, op, flags, klen, vlen = REC_HDR.unpack_from(raw, off)
        if length == 0:
            break
        body = raw[off + 4: off + length]
        recs.append(dict(off=off, crc=c, crc_ok=mask(crc(body)) == c, length=length, prev=prev, hlc=hlc,
                         node=rnode, ns=ns, op=op, flags=flags, key=raw[off + 40: off + 40 + klen],
                         value=raw[off + 40 + klen: off + 40 + klen + vlen], klen=klen, vlen=vlen,
                         padding=raw[off + length: off + ((length + 7) & ~7)]))
        off += (length + 7) & ~7
    return header, recs, off, raw


def _open(path, **kw):
    kw.setdefault("compact_interval", None)
    return ae.open(path, node_id=kw.pop("node_id", 1), **kw)


# ------------------------------------------------------------------ CRC32C

VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


@pytest.mark.parametrize("data,expected", VECTORS)
def test_crc32c_known_answers(data, expected):
    assert crc(data) == expected
    assert crc_portable(data) == expected


def test_crc32c_rfc3720_iscsi_read_command():
    # RFC 3720 B.4: an iSCSI SCSI Read (10) command PDU
    pdu = bytes.fromhex(
        "01c00000000000000000000000000000"
        "14000000000004000000001400000018"
        "28000000000000000200000000000000")
    assert crc(pdu) == 0xD9963A56
    assert crc_portable(pdu) == 0xD9963A56


def test_crc32c_hardware_flag_is_boolean():
    assert lib.abase_crc32c_hardware() in (0, 1)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096 + 3])
def test_crc32c_hardware_equals_portable_all_alignments(n):
    rnd = random.Random(n)
    buf = bytes(rnd.getrandbits(8) for _ in range(n + 16))
    cbuf = ffi.new("uint8_t[]", buf)
    for start in range(8):  # unaligned starting addresses
        ptr = cbuf + start
        assert lib.abase_crc32c(0, ptr, n) == lib.abase_crc32c_portable(0, ptr, n)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.binary(max_size=300), st.integers(0, 0xFFFFFFFF))
def test_property_crc_hardware_portable_incremental(a, b, seed):
    assert crc(a) == crc_portable(a)
    assert crc(a + b) == crc(b, crc(a))
    assert crc(a + b) == crc_portable(b, crc_portable(a))
    assert crc(a, seed) == crc_portable(a, seed)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_property_mask_unmask(x):
    m = lib.abase_crc_mask(x)
    assert m == mask(x)
    assert lib.abase_crc_unmask(m) == x


def test_hash_depends_on_namespace_and_key():
    h = lambda ns, k: lib.abase_hash(ns, k, len(k))  # noqa: E731
    assert h(0, b"abc") == h(0, b"abc")
    assert len({h(0, b"abc"), h(1, b"abc"), h(0, b"abd"), h(0, b"")}) == 4


# ------------------------------------------------------------- on-disk format

def test_segment_and_record_format(tmp_path):
    with _open(tmp_path, node_id=42) as db:
        t1 = db.put(b"key", b"value")
        t2 = db.put(b"key", b"v2!")
        t3 = db.delete(b"other")
        with db.batch() as b:
            b.put(b"b1", b"x")
            b.put(b"b2", b"yy")
            b.delete(b"b3")
    files = segment_files(tmp_path)
    assert [os.path.basename(f) for f in files] == ["00000000.seg"]
    hdr, recs, end, raw = parse_segment(files[0])
    assert hdr["magic"] == b"ABLOGSEG" and hdr["version"] == lib.ABASE_FORMAT_VERSION == 4 and hdr["header_len"] == 64
    assert hdr["no"] == 0 and hdr["node"] == 42 and hdr["crc_ok"]
    assert SEG_HDR.size == 64
    assert set(raw[40:60]) <= {0}  # reserved
    assert len(recs) == 6
    for r in recs:
        assert r["crc_ok"], r
        assert r["off"] % 8 == 0
        assert r["length"] == 40 + r["klen"] + r["vlen"]
        assert set(r["padding"]) <= {0}
        assert r["node"] == 42 and r["ns"] == 0
        assert r["flags"] & F_DOMINANT
    r1, r2, r3, b1, b2, b3 = recs
    assert (r1["op"], r1["key"], r1["value"], r1["hlc"], r1["prev"]) == (1, b"key", b"value", t1.hlc, 0)
    # prev = address of the previous version of the same key: segment_no << 32 | offset
    assert (r2["value"], r2["hlc"], r2["prev"]) == (b"v2!", t2.hlc, r1["off"])
    assert (r3["op"], r3["vlen"], r3["hlc"]) == (2, 0, t3.hlc)
    assert [x["flags"] & (F_BATCH | F_BATCH_END) for x in (b1, b2, b3)] == [F_BATCH, F_BATCH, F_BATCH | F_BATCH_END]
    assert b1["hlc"] < b2["hlc"] < b3["hlc"]
    assert set(raw[end:]) <= {0}  # zero tail of the preallocated file


def test_segment_sealing_at_segment_size(tmp_path):
    size = 4096
    vals = {}
    with _open(tmp_path, segment_size=size) as db:
        for i in range(300):
            k = b"key%05d" % i
            vals[k] = os.urandom(random.Random(i).randrange(1, 200))
            db.put(k, vals[k])
        st_ = db.stats()
        files = segment_files(tmp_path)
        assert len(files) >= 10
        assert st_["segments"] == len(files)
        assert st_["sealed_segments"] == len(files) - 1
        nos = [int(os.path.basename(f)[:8]) for f in files]
        assert nos == list(range(nos[0], nos[0] + len(nos)))  # consecutive
        for f in files[:-1]:
            hdr, recs, end, raw = parse_segment(f)
            assert len(raw) <= size
            assert len(raw) == end  # sealed: shrunk to its data
            assert len(raw) + 40 + 8 + 200 > size  # ... and it was full
            assert all(r["crc_ok"] for r in recs)
        assert os.path.getsize(files[-1]) == size  # active: preallocated
        for k, v in vals.items():
            assert db.get(k) == v


def test_record_larger_than_segment(tmp_path):
    big = os.urandom(10_000)
    with _open(tmp_path, segment_size=4096) as db:
        db.put(b"small", b"s")
        db.put(b"big", big)
        db.put(b"after", b"a")
        assert db.get(b"big") == big
        files = segment_files(tmp_path)
        assert any(os.path.getsize(f) >= 10_000 + 40 + 64 for f in files)
    with _open(tmp_path, segment_size=4096) as db:
        assert db.get(b"big") == big
        assert db.get(b"small") == b"s" and db.get(b"after") == b"a"


def test_batch_never_spans_segments(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        for j in range(30):
            with db.batch() as b:
                for i in range(10):
                    b.put(b"b%d-%d" % (j, i), b"x" * 50)
    for f in segment_files(tmp_path):
        _h, recs, _e, _r = parse_segment(f)
        open_batch = False
        for r in recs:
            if r["flags"] & F_BATCH:
                open_batch = not (r["flags"] & F_BATCH_END)
        assert not open_batch, f


# --------------------------------------------------------------------- index

def test_stats_on_fresh_engine(tmp_path):
    with _open(tmp_path) as db:
        s = db.stats()
        assert s["index_keys"] == 0 and s["keys"] == 0


def test_index_growth_200k_keys_and_removal_by_compaction(tmp_path):
    n = 200_000
    key = lambda i: b"key-%07d" % i  # noqa: E731
    val = lambda i: b"val-%d" % (i * 7)  # noqa: E731
    with _open(tmp_path) as db:
        for lo in range(0, n, 10_000):
            db.put_many((key(i), val(i)) for i in range(lo, lo + 10_000))
        for i in range(0, n, 997):  # a few single puts (overwrites)
            db.put(key(i), val(i))
        s = db.stats()
        assert s["index_keys"] == n
        assert s["index_bytes"] / s["index_keys"] < 40, s
        assert all(db.get(key(i)) == val(i) for i in range(n))
        assert db.get(b"key-absent") is None

        assert db.compact(wait=True) >= 1
        s = db.stats()
        assert s["index_keys"] == 0, s
        assert s["store_keys"] == n
        assert s["segments"] == 0 and s["log_bytes"] == 0
        assert all(db.get(key(i)) == val(i) for i in range(0, n, 7))
        assert sum(1 for _ in db.scan(prefix=b"key-000")) == 10_000
        # new writes after the index emptied
        db.put(key(5), b"new")
        assert db.stats()["index_keys"] == 1
        assert db.get(key(5)) == b"new" and db.get(key(6)) == val(6)


def test_index_overwrites_and_deletes_do_not_grow_keys(tmp_path):
    with _open(tmp_path) as db:
        for r in range(20):
            for i in range(500):
                db.put(b"k%d" % i, b"%d" % r)
        db.delete(b"k0")
        assert db.stats()["index_keys"] == 500  # a tombstone is still an entry
        assert db.get(b"k0") is None and db.get(b"k1") == b"19"


# ------------------------------------------------------------------ recovery

def _mixed_history(db, rnd, n=2000):
    """Random puts/deletes/batches; returns the expected dict and the record count."""
    model = {}
    records = 0
    for i in range(n):
        k = b"k%d" % rnd.randrange(300)
        r = rnd.random()
        if r < 0.6:
            v = os.urandom(rnd.randrange(0, 64))
            db.put(k, v)
            model[k] = v
            records += 1
        elif r < 0.8:
            db.delete(k)
            model.pop(k, None)
            records += 1
        else:
            with db.batch() as b:
                for _ in range(rnd.randrange(2, 6)):
                    k = b"k%d" % rnd.randrange(300)
                    v = os.urandom(8)
                    b.put(k, v)
                    model[k] = v
                    records += 1
    return model, records


def test_recovery_minimal_overwrite(tmp_path):
    with _open(tmp_path) as db:
        db.put(b"a", b"1")
        db.put(b"a", b"2")
        db.put(b"d", b"x")
        db.delete(b"d")
    with _open(tmp_path) as db:
        assert db.get(b"a") == b"2"
        assert db.get(b"d") is None


def test_recovery_many_keys_survive_reopen(tmp_path):
    with _open(tmp_path) as db:
        for i in range(5000):
            db.put(b"k%d" % i, b"%d" % i)
    with _open(tmp_path) as db:
        assert db.recovery["records"] == 5000
        missing = [i for i in range(5000) if db.get(b"k%d" % i) != b"%d" % i]
        assert missing == []
        assert db.stats()["index_keys"] == 5000


@pytest.mark.parametrize("segment_size", [4096, 1 << 20])
def test_recovery_rebuilds_same_values(tmp_path, segment_size):
    rnd = random.Random(segment_size)
    with _open(tmp_path, segment_size=segment_size) as db:
        model, records = _mixed_history(db, rnd)
        before = dict(db.scan())
        nsegs = db.stats()["segments"]
    assert before == model
    with _open(tmp_path, segment_size=segment_size) as db:
        rec = db.recovery
        assert rec["records"] == records
        assert rec["segments"] == nsegs
        assert rec["dropped_bytes"] == 0
        assert rec["bytes"] > 0
        assert dict(db.scan()) == model
        for k in (b"k%d" % i for i in range(300)):
            assert db.get(k) == model.get(k)
        assert db.check() == []
        # idempotent: a second recovery sees the same
    with _open(tmp_path, segment_size=segment_size) as db:
        assert db.recovery["records"] == records
        assert dict(db.scan()) == model


def test_recovery_merge_namespace(tmp_path):
    P = ae.crdt.PNCounter
    with _open(tmp_path, segment_size=4096) as db:
        c = db.namespace("c", merge=P())
        for i in range(300):
            c.merge(b"x%d" % (i % 3), P.increment(i % 5 + 1))
        c.merge(b"x0", P.decrement(2))
        expect = {k: c.get(k) for k in (b"x0", b"x1", b"x2")}
    assert expect[b"x1"] == sum(i % 5 + 1 for i in range(300) if i % 3 == 1)
    with _open(tmp_path, segment_size=4096) as db:
        c = db.namespace("c", merge=P())
        assert {k: c.get(k) for k in expect} == expect
        # 301 operands + the namespace definition + one checkpoint per key each
        # time a key's chain reached max_successive_merges (64): 101 operands
        # per key give one checkpoint each
        assert db.recovery["records"] == 301 + 1 + 3


def test_recovery_after_full_compaction_is_empty_log(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        for i in range(500):
            db.put(b"k%d" % i, b"v%d" % i)
        db.compact(wait=True)
    with _open(tmp_path, segment_size=4096) as db:
        assert db.recovery["records"] == 0 and db.recovery["dropped_bytes"] == 0
        assert all(db.get(b"k%d" % i) == b"v%d" % i for i in range(500))
        db.put(b"k1", b"new")
    with _open(tmp_path, segment_size=4096) as db:
        assert db.recovery["records"] == 1
        assert db.get(b"k1") == b"new" and db.get(b"k2") == b"v2"


# -- the _nowait calls (used with the GIL held by csrc/fastcall.c) ------------

def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def test_put_nowait_waits_for_the_clock_only_when_a_future_millisecond_is_used_up(tmp_path):
    """EWOULDBLOCK exactly when abase_put would sleep for the wall clock."""
    def put_after(last: int) -> int:
        db = ae.open(str(tmp_path / f"db{last}"), compact_interval=None)
        try:
            db.put(b"first", b"x")  # an active segment with room: only the clock can block
            lib.abase_db_clock_observe(db._log._db, last)
            return lib.abase_put_nowait(db._log._db, 0, lib.ABASE_OP_PUT, b"k", 1, b"v", 1, -1)
        finally:
            db.close()

    future = _now_ms() + 60_000
    assert put_after((future << 16) | 0xFFFF) == lib.ABASE_EWOULDBLOCK
    assert put_after((future << 16) | 0xFFFE) > 0  # one logical tick left
    assert put_after(((_now_ms() - 60_000) << 16) | 0xFFFF) > 0  # the wall clock is past it


def test_put_nowait_with_an_injected_clock_reports_eagain_not_ewouldblock(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        db.put(b"first", b"x")
        ms = _now_ms() + 60_000
        lib.abase_db_clock_observe(db._log._db, (ms << 16) | 0xFFFF)
        rc = lib.abase_put_nowait(db._log._db, 0, lib.ABASE_OP_PUT, b"k", 1, b"v", 1, ms)
        assert rc == lib.ABASE_EAGAIN  # the caller advances an injected clock
    finally:
        db.close()


def test_put_nowait_refuses_to_wait_for_the_clock_and_writes_nothing(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        db.put(b"k", b"old")
        c_db = db._log._db
        lib.abase_db_clock_observe(c_db, ((_now_ms() + 60_000) << 16) | 0xFFFF)
        before = db.stats()["log_bytes"]
        rc = lib.abase_put_nowait(c_db, 0, lib.ABASE_OP_PUT, b"k", 1, b"new", 3, -1)
        assert rc == lib.ABASE_EWOULDBLOCK
        assert db.get(b"k") == b"old"
        assert db.stats()["log_bytes"] == before
    finally:
        db.close()


def test_put_nowait_refuses_on_sync_durability_and_get_nowait_reads(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None, durability="sync")
    try:
        c_db = db._log._db
        rc = lib.abase_put_nowait(c_db, 0, lib.ABASE_OP_PUT, b"k", 1, b"v", 1, -1)
        assert rc == lib.ABASE_EWOULDBLOCK  # a sync put must wait for its fdatasync
        assert db.get(b"k") is None
        db.put(b"k", b"v")
        info = ffi.new("abase_getinfo *")
        buf = ffi.new("uint8_t[]", 16)
        n = lib.abase_get_nowait(c_db, 0, b"k", 1, 0, 0, lib.ABASE_MODE_LWW, buf, 16, info)
        assert n == 1 and ffi.buffer(buf, 1)[:] == b"v"
    finally:
        db.close()


def test_prefault_populates_ahead_of_the_appends_without_changing_data(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None, segment_size=1 << 20)
    try:
        db.put(b"k", b"v" * 100)
        got = db._log.prefault(256 << 10)
        assert got in (0, 256 << 10)  # 0 only where the kernel lacks MADV_POPULATE_WRITE
        assert db._log.prefault(64 << 20) <= 1 << 20  # never past the segment
        for i in range(2000):  # appends into the populated range, then past the segment
            db.put(b"k%d" % i, b"x" * 600)
        assert db.get(b"k") == b"v" * 100
        assert db.get(b"k1999") == b"x" * 600
        db._log.seal()
        assert db._log.prefault(1 << 20) == 0  # no active segment
        assert db.check() == []
    finally:
        db.close()
    db = ae.open(str(tmp_path / "db"), compact_interval=None, segment_size=1 << 20)
    try:
        assert db.get(b"k1999") == b"x" * 600 and db.stats()["recovery"]["dropped_bytes"] == 0
    finally:
        db.close()


# ------------------------------------------------ issue 11: defects 7 and 9

def _set_compacted_through(path, value: int) -> None:
    """Make a new directory's log start at segment value + 1 (as if that many
    segments had been compacted)."""
    import lmdb

    os.makedirs(os.path.join(path, "store"), exist_ok=True)
    env = lmdb.open(os.path.join(path, "store"), max_dbs=8)
    try:
        with env.begin(write=True, db=env.open_db(b"meta")) as txn:
            txn.put(b"compacted_through", struct.pack("<Q", value))
    finally:
        env.close()


def test_segment_numbers_past_99999999_are_listed(tmp_path):
    """Defect 9: segment 100000000 is named with 9 digits; recovery ignored
    such names, so its records vanished and the next segment truncated it."""
    path = str(tmp_path / "db")
    _set_compacted_through(path, 99_999_997)
    vals = {}
    with ae.open(path, compact_interval=None, segment_size=4096) as db:
        for i in range(80):
            vals[b"k%03d" % i] = b"v" * 150
            db.put(b"k%03d" % i, vals[b"k%03d" % i])
    names = sorted(os.listdir(os.path.join(path, "log")))
    assert "99999998.seg" in names and "100000000.seg" in names
    with ae.open(path, compact_interval=None, segment_size=4096) as db:
        assert db.recovery["records"] == 80
        assert dict(db.scan()) == vals
        db.put(b"more", b"x")
    with ae.open(path, compact_interval=None, segment_size=4096) as db:
        assert dict(db.scan()) == {**vals, b"more": b"x"}


def test_non_canonical_segment_names_are_not_segments(tmp_path):
    """Only names seg_path writes are segments: 8 digits, or 9-10 without a
    leading zero. Others are left alone."""
    path = str(tmp_path / "db")
    with ae.open(path, compact_interval=None) as db:
        db.put(b"k", b"v")
    for junk in ("000000001.seg", "1.seg", "0000000x.seg", "99999999999.seg", "00000000.seg.bak"):
        with open(os.path.join(path, "log", junk), "wb") as f:
            f.write(b"junk")
    with ae.open(path, compact_interval=None) as db:
        assert db.get(b"k") == b"v" and db.recovery["segments"] == 1


def test_batch_larger_than_an_address_can_hold_is_refused(open_db):
    """Defect 7: nothing bounded a batch; a segment sized to fit 4 GiB pushed
    record offsets into the segment bits of addresses and the directory
    could not be opened again. Now every path refuses a batch over
    MAX_BATCH encoded bytes, before copying it."""
    db = open_db()
    db.put(b"before", b"x")
    big = bytes(lib.ABASE_MAX_VALUE)  # one object, referenced many times
    n = lib.ABASE_MAX_BATCH // len(big) + 1
    with pytest.raises(ae.ValueTooLargeError, match="batch"):
        db.put_many([(b"k%d" % i, big) for i in range(n)])
    with pytest.raises(ae.ValueTooLargeError, match="batch"):
        with db.batch() as b:
            for i in range(n):
                b.put(b"b%d" % i, big)
    changes = [ae.Change("", b"r%d" % i, ae.Op.PUT, big, ae.Timestamp(1_600_000_000_000 + i, 0, 9))
               for i in range(n)]
    with pytest.raises(ae.ValueTooLargeError, match="batch"):
        db.apply(changes)
    assert db.stats()["records_appended"] == 1 and db.stats()["log_bytes_written"] < 100
    db.put_many([(b"k0", big)])  # one large value is fine
    assert len(db.get(b"k0")) == len(big)


def test_c_core_refuses_an_oversized_batch_before_reading_it(open_db):
    db = open_db()
    n = lib.ABASE_MAX_BATCH // lib.ABASE_MAX_VALUE + 1
    lens = ffi.new("uint32_t[]", [1, lib.ABASE_MAX_VALUE] * n)
    ops = bytes([lib.ABASE_OP_PUT]) * n
    nss = ffi.new("uint32_t[]", [0] * n)
    tiny = ffi.new("uint8_t[]", 8)  # the lengths lie: the core must not read past it
    rc = lib.abase_write_batch(db._log._db, n, ops, nss, tiny, lens, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL,
                               ffi.NULL, ffi.NULL, ffi.NULL, -1)
    assert rc == lib.ABASE_EBATCHSIZE
    assert db.stats()["records_appended"] == 0
