"""Tests of LWW scans in C (``csrc/fast_scan.c`` over ``csrc/scan.c``).

An LWW scan merges the log's resolved entries and a py-lmdb cursor in one
C loop. It must agree with a dict model and with the Python merge path in
every shape (bounds, prefixes, reverse, snapshots, keys in both layers,
tombstones, records from replicas that the log cannot decide alone, keys
compacted while the scan runs), with the copy of the log's entries at open
and without it (``SCAN_COPY_LIMIT``), and it must release its pin and its
transaction however it ends.
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import _fast, errors, scan as scan_mod
from abase_engine.record import Change, Op, Timestamp
from abase_engine.store import encode, VALUE


def _python_scan(db, ns, **kw):
    """The Python merge path over the same namespace (the reference)."""
    args = dict(start=None, stop=None, reverse=False, at=None)
    args.update(kw)
    return list(db._scanner._python_scan(ns, args["start"], args["stop"], args["reverse"], args["at"]))


def _model_scan(model, start=None, stop=None, prefix=None, reverse=False):
    keys = sorted(k for k in model if (start is None or k >= start) and (stop is None or k < stop)
                  and (prefix is None or k.startswith(prefix)))
    if reverse:
        keys.reverse()
    return [(k, model[k]) for k in keys]


@pytest.fixture(params=["copy", "no-copy"])
def copy_mode(request, monkeypatch):
    if request.param == "no-copy":
        monkeypatch.setattr(scan_mod, "SCAN_COPY_LIMIT", 0)
    return request.param


def test_scan_shapes_over_both_layers(open_db, copy_mode):
    db = open_db()
    model = {}
    for i in range(0, 600, 2):
        db.put(b"k%04d" % i, b"old%d" % i)
        model[b"k%04d" % i] = b"old%d" % i
    db.compact(wait=True)
    for i in range(0, 600, 3):
        db.put(b"k%04d" % i, b"new%d" % i)
        model[b"k%04d" % i] = b"new%d" % i
    for i in range(0, 600, 10):
        db.delete(b"k%04d" % i)
        model.pop(b"k%04d" % i, None)
    db.put(b"k0998", b"tail")
    model[b"k0998"] = b"tail"
    ns = db.namespace("")
    for kw in ({}, {"reverse": True}, {"start": b"k0100"}, {"stop": b"k0333"},
               {"start": b"k0100", "stop": b"k0333", "reverse": True}, {"prefix": b"k02"},
               {"prefix": b"k02", "reverse": True}, {"start": b"zzz"}, {"stop": b""}):
        got = list(db.scan(**kw))
        assert got == _model_scan(model, **kw), kw
        if "prefix" not in kw:
            assert got == _python_scan(db, ns, **kw)


def test_log_only_scan_and_after_full_compaction(open_db, copy_mode):
    db = open_db()
    items = [(b"%05d" % (i * 7919 % 10007), b"v%d" % i) for i in range(2000)]
    db.put_many(items)
    want = sorted(dict(items).items())
    assert list(db.scan()) == want
    db.compact(wait=True)
    assert db.stats()["index_keys"] == 0
    assert list(db.scan()) == want
    assert list(db.scan(reverse=True)) == want[::-1]


def test_large_values_grow_the_chunk_buffer(open_db, copy_mode):
    db = open_db()
    big = {b"a%d" % i: bytes([i]) * (100_000 + i) for i in range(5)}
    for k, v in big.items():
        db.put(k, v)
    assert list(db.scan()) == sorted(big.items())
    db.compact(wait=True)
    db.put(b"a2", b"x" * 300_000)
    big[b"a2"] = b"x" * 300_000
    assert list(db.scan()) == sorted(big.items())


def test_snapshot_scans_and_snapshot_too_old(open_db, copy_mode):
    db = open_db()
    db.put(b"a", b"1")
    db.put(b"b", b"1")
    with db.snapshot() as snap:
        db.put(b"a", b"2")
        db.delete(b"b")
        db.put(b"c", b"2")
        assert list(snap.scan()) == [(b"a", b"1"), (b"b", b"1")]
        assert list(db.scan()) == [(b"a", b"2"), (b"c", b"2")]
    at = db.now()
    db.put(b"a", b"3")
    db.compact(wait=True)  # no pin: the history before `at` is folded away
    with pytest.raises(errors.SnapshotTooOldError):
        list(db.scan(at=at))


def test_records_the_log_cannot_decide_alone(open_db, copy_mode):
    """Replicated records older than the stored version are NEEDBASE in the log."""
    db = open_db(node_id=5)
    now = db.now()
    db.put(b"k", b"local")
    db.compact(wait=True)
    old = Timestamp(now.physical_ms - 10, 0, 9)
    newer = Timestamp(now.physical_ms + 10, 0, 9)
    db.apply([Change("", b"k", Op.PUT, b"stale", old), Change("", b"j", Op.PUT, b"remote", newer)])
    assert list(db.scan()) == [(b"j", b"remote"), (b"k", b"local")]
    assert list(db.scan()) == _python_scan(db, db.namespace(""))


def test_keys_compacted_while_the_scan_runs(open_db, copy_mode):
    db = open_db(segment_size=1 << 16)
    model = {b"k%05d" % i: b"v%d" % i for i in range(3000)}
    db.put_many(sorted(model.items()))
    it = db.scan()
    first = next(it)  # opened: the log's keys are fixed
    db.compact(wait=True)  # folds everything older than the scan's pin
    assert [first] + list(it) == sorted(model.items())


def test_empty_key_in_the_store_takes_the_python_path(open_db):
    db = open_db()
    db.put(b"", b"empty")
    db.put(b"a", b"1")
    db.compact(wait=True)
    db.put(b"b", b"2")
    assert list(db.scan()) == [(b"", b"empty"), (b"a", b"1"), (b"b", b"2")]
    assert list(db.scan(reverse=True)) == [(b"b", b"2"), (b"a", b"1"), (b"", b"empty")]
    assert list(db.scan(start=b"a")) == [(b"a", b"1"), (b"b", b"2")]


def test_corrupt_stored_bytes_raise(open_db):
    db = open_db()
    db.put(b"a", b"1")
    db.compact(wait=True)
    store = db._store
    store.write(lambda txn: txn.put(b"b", b"\x09nonsense-nonsense", db=store.db(0)))
    with pytest.raises(errors.CorruptionError):
        list(db.scan())
    store.write(lambda txn: txn.put(b"b", b"\x01", db=store.db(0)))
    with pytest.raises(errors.CorruptionError):
        list(db.scan())


def test_scan_is_lazy_and_sees_writes_before_its_first_step(open_db):
    db = open_db()
    it = db.scan()
    db.put(b"late", b"1")
    assert list(it) == [(b"late", b"1")]


def test_pins_and_transactions_are_released_however_a_scan_ends(open_db, copy_mode):
    db = open_db()
    db.put_many([(b"k%d" % i, b"v") for i in range(2000)])
    db.compact(wait=True)
    db.put(b"x", b"y")
    pins = db._pins
    it = db.scan()
    next(it)
    assert pins.oldest() is not None
    it.close()
    assert pins.oldest() is None
    assert list(it) == []
    it = db.scan()
    next(it)
    del it
    gc.collect()
    assert pins.oldest() is None
    list(db.scan())
    assert pins.oldest() is None
    with pytest.raises(errors.CorruptionError):
        db._store.write(lambda txn: txn.put(b"zz", b"\x09bad-bad-bad-bad", db=db._store.db(0)))
        list(db.scan())
    assert pins.oldest() is None


def test_engine_closed_under_a_scan(tmp_path, copy_mode):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    db.put_many([(b"k%05d" % i, b"v") for i in range(3000)])
    it = db.scan()
    assert next(it) == (b"k00000", b"v")
    db.close()
    with pytest.raises(errors.EngineClosedError):
        list(it)
    with pytest.raises(errors.EngineClosedError):
        db.scan()


def test_engine_closed_under_a_store_only_scan_and_before_a_lazy_open(tmp_path):
    from abase_engine.crdt import GCounter
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    db.put_many([(b"k%05d" % i, b"v") for i in range(3000)])
    counters = db.namespace("c", merge=GCounter())
    counters.merge(b"x", GCounter.increment(1))
    db.compact(wait=True)  # the log is empty: the scan reads the store's cursor only
    it = db.scan()
    assert next(it) == (b"k00000", b"v")
    lazy_lww, lazy_merge = db.scan(), counters.scan()  # not opened yet
    db.close()
    for scan in (it, lazy_lww, lazy_merge):
        with pytest.raises(errors.EngineClosedError):
            list(scan)


def test_scan_iter_refuses_bad_plans():
    with pytest.raises(TypeError):
        _fast.ScanIter(5)
    closed = []
    bad = _fast.ScanIter(lambda: (1, 2, 3))
    with pytest.raises(TypeError):
        next(bad)
    plan = (0, 0, 0, None, None, None, False, 0, 0, print, print, lambda: closed.append(1))
    with pytest.raises((TypeError, ValueError)):
        next(_fast.ScanIter(lambda: plan))
    assert closed == [1]  # on_close ran although the plan was refused
    assert list(_fast.ScanIter(lambda: iter([(b"a", b"b")]))) == [(b"a", b"b")]


_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(["", "o"]), st.binary(min_size=1, max_size=3), st.binary(max_size=8)),
    st.tuples(st.just("delete"), st.sampled_from(["", "o"]), st.binary(min_size=1, max_size=3), st.just(b"")),
    st.tuples(st.just("compact"), st.just(""), st.just(b""), st.just(b"")),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, start=st.none() | st.binary(max_size=2), stop=st.none() | st.binary(max_size=2),
       reverse=st.booleans(), copy=st.booleans())
def test_property_c_scan_equals_model_and_python_path(tmp_path_factory, ops, start, stop, reverse, copy):
    limit = scan_mod.SCAN_COPY_LIMIT
    scan_mod.SCAN_COPY_LIMIT = limit if copy else 0
    db = ae.open(str(tmp_path_factory.mktemp("scan")), compact_interval=None, segment_size=1 << 14)
    try:
        models = {"": {}, "o": {}}
        for op, name, key, value in ops:
            ns = db.namespace(name)
            if op == "put":
                ns.put(key, value)
                models[name][key] = value
            elif op == "delete":
                ns.delete(key)
                models[name].pop(key, None)
            else:
                db.compact(wait=True)
        for name, model in models.items():
            ns = db.namespace(name)
            got = list(ns.scan(start=start, stop=stop, reverse=reverse))
            assert got == _model_scan(model, start, stop, None, reverse)
            assert got == _python_scan(db, ns, start=start, stop=stop, reverse=reverse)
    finally:
        scan_mod.SCAN_COPY_LIMIT = limit
        db.close()
