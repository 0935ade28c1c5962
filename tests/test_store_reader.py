"""Tests of the store's per-thread read transactions (``csrc/fast_store.c``)
and of gets of compacted keys, which the C fast path serves through them.

What must hold: a get sees every store commit made before it (transactions
are renewed when the store's generation moves); an idle thread's stale
transaction is aborted before the next write transaction (so LMDB can
reuse the pages the compactor frees); no cached transaction is open while
the map grows, and reads running meanwhile stay correct; closing the store
waits for lookups in flight; the fast path and the general path agree for
every LWW namespace, for ``get`` and ``get_many``, also on bad stored bytes.
"""

from __future__ import annotations

import threading

import lmdb
import pytest

import abase_engine as ae
from abase_engine import errors
from abase_engine.namespace import Namespace
from abase_engine.store import Store, encode, TOMBSTONE, VALUE


def _general_get(ns, key, default=None):
    return Namespace.get(ns, key, default)


def test_compacted_gets_in_every_lww_namespace_agree_with_the_general_path(open_db):
    db = open_db()
    other = db.namespace("other")
    for i in range(300):
        db.put(b"k%03d" % i, b"d%d" % i)
        other.put(b"k%03d" % i, b"o%d" % i)
    for i in range(0, 300, 3):
        db.delete(b"k%03d" % i)
        other.delete(b"k%03d" % i)
    db.compact(wait=True)
    assert db.stats()["index_keys"] == 0
    sentinel = object()
    for ns, tag in ((db.namespace(""), b"d"), (other, b"o")):
        for i in range(300):
            k = b"k%03d" % i
            want = None if i % 3 == 0 else tag + b"%d" % i
            assert ns.get(k) == want == _general_get(ns, k)
            assert ns.get(k, sentinel) is sentinel if want is None else ns.get(k, sentinel) == want
        assert ns.get(b"absent", sentinel) is sentinel
    keys = [b"k%03d" % i for i in range(300)] + [b"absent"]
    assert db.get_many(keys) == [db.get(k) for k in keys]


def test_a_get_sees_every_commit_made_before_it(open_db):
    db = open_db()
    db.put(b"a", b"1")
    db.compact(wait=True)
    assert db.get(b"a") == b"1"  # this thread's transaction now caches a snapshot
    gen = db._store.generation
    db.put(b"b", b"2")
    db.put(b"a", b"3")
    db.compact(wait=True)
    assert db._store.generation > gen
    assert db.get(b"b") == b"2" and db.get(b"a") == b"3"


def test_an_idle_threads_stale_transaction_is_aborted_before_the_next_write(open_db):
    db = open_db()
    db.put(b"a", b"1")
    db.compact(wait=True)
    reader = db._store.reader
    read, finish = threading.Event(), threading.Event()
    got = []

    def idle_reader():
        got.append(db.get(b"a"))
        read.set()
        finish.wait()
        got.append(db.get(b"a"))

    t = threading.Thread(target=idle_reader)
    t.start()
    read.wait()
    try:
        assert reader.open_transactions >= 1
        db.put(b"a", b"2")
        db.compact(wait=True)  # two commits: the second aborts what the first made stale
        assert db.get(b"zzz") is None  # this thread's own transaction, renewed
        assert reader.open_transactions == 1
    finally:
        finish.set()
        t.join()
    assert got == [b"1", b"2"]


def test_transactions_of_finished_threads_are_released_and_their_slots_reused(open_db):
    db = open_db()
    db.put(b"a", b"1")
    db.compact(wait=True)
    reader = db._store.reader
    results = []
    for round_ in range(3):
        threads = [threading.Thread(target=lambda: results.append(db.get(b"a"))) for _ in range(120)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        db.put(b"x%d" % round_, b"y")
        db.compact(wait=True)
        assert reader.open_transactions <= 1
    assert results == [b"1"] * 360


def test_bad_stored_bytes_raise_corruption_through_the_fast_path(open_db):
    db = open_db()
    ns = db.namespace("lww2")
    db.put(b"k", b"v")
    ns.put(b"k", b"v")
    db.compact(wait=True)
    store = db._store
    store.write(lambda txn: (txn.put(b"k", b"\x07garbage-garbage", db=store.db(0)),
                             txn.put(b"k", b"\x01", db=store.db(ns.id))))
    with pytest.raises(errors.CorruptionError):
        db.get(b"k")
    with pytest.raises(errors.CorruptionError):
        db.get_many([b"k"])
    with pytest.raises(errors.CorruptionError):
        ns.get(b"k")


def test_stored_tombstone_and_value_kinds_decode_in_c(tmp_path):
    with ae.open(str(tmp_path / "db"), compact_interval=None) as db:
        db.put(b"keep", b"v")
        db.compact(wait=True)
        store = db._store
        store.write(lambda txn: (txn.put(b"t", encode(TOMBSTONE, 5 << 16, 1, b""), db=store.db(0)),
                                 txn.put(b"v", encode(VALUE, 6 << 16, 1, b"x" * 3000), db=store.db(0))))
        assert db.get(b"t", b"dflt") == b"dflt"
        assert db.get(b"v") == b"x" * 3000
        assert db.get_many([b"t", b"v", b"keep"]) == [None, b"x" * 3000, b"v"]


def test_map_growth_while_other_threads_read(tmp_path):
    """The map grows (set_mapsize) many times while readers hammer compacted
    keys; no cached transaction is open across a resize, every read is right."""
    db = ae.open(str(tmp_path / "db"), compact_interval=None, map_size=1 << 20, segment_size=1 << 16)
    try:
        value = b"v" * 200
        for i in range(200):
            db.put(b"base%04d" % i, value)
        db.compact(wait=True)
        start_map = db._store.env.info()["map_size"]
        stop = threading.Event()
        bad = []

        def reader():
            n = 0
            while not stop.is_set():
                k = b"base%04d" % (n % 200)
                got = db.get(k) if n % 2 else db.get_many([k])[0]
                if got != value:
                    bad.append((k, got))
                n += 1

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for r in range(30):
                db.put_many([(b"grow%03d-%04d" % (r, i), b"g" * 400) for i in range(100)])
                db.compact(wait=True)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not bad
        assert db._store.env.info()["map_size"] > start_map  # it did grow
        assert db.get(b"grow029-0099") == b"g" * 400
    finally:
        db.close()


def test_block_aborts_every_cached_transaction_and_unblock_renews(open_db):
    db = open_db()
    db.put(b"a", b"1")
    db.compact(wait=True)
    assert db.get(b"a") == b"1"
    reader = db._store.reader
    assert reader.open_transactions == 1
    gen = reader.generation
    reader.block()
    try:
        assert reader.open_transactions == 0
        with pytest.raises(RuntimeError):
            reader.block()
    finally:
        reader.unblock()
    assert reader.generation > gen
    assert db.get(b"a") == b"1"


def test_store_close_waits_for_lookups_and_later_lookups_raise(tmp_path):
    st = Store(str(tmp_path))
    dbi = st.db(0)
    st.write(lambda txn: [txn.put(b"k%d" % i, encode(VALUE, 1 << 16, 1, b"v"), db=dbi) for i in range(100)])
    go, done = threading.Barrier(4), []

    def reader():
        go.wait()
        outcomes = set()
        for i in range(20000):
            try:
                raw = st.lookup(dbi, b"k%d" % (i % 100))
                outcomes.add("value" if raw is not None and raw.endswith(b"v") else repr(raw))
            except errors.EngineClosedError:
                outcomes.add("closed")
                break
        done.append(outcomes)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    go.wait()
    st.close()
    for t in threads:
        t.join()
    assert all(o <= {"value", "closed"} for o in done) and len(done) == 3
    assert st.reader.closed
    with pytest.raises(errors.EngineClosedError):  # the close's doing, not the data's
        st.lookup(dbi, b"k1")


def test_closed_engine_get_of_a_compacted_key_raises_engine_closed(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    db.put(b"a", b"1")
    db.compact(wait=True)
    get, get_many = db.get, db.get_many
    db.close()
    with pytest.raises(errors.EngineClosedError):
        get(b"a")
    with pytest.raises(errors.EngineClosedError):
        get_many([b"a"])


def test_reader_argument_checks(tmp_path):
    from abase_engine import _fast
    st = Store(str(tmp_path))
    try:
        with pytest.raises(TypeError):
            st.reader.get(st.db(0), "not bytes")
        with pytest.raises(TypeError):
            st.reader.get(st.db(0))
        with pytest.raises(TypeError):
            _fast.StoreReader(st.env, 5)
        fresh = _fast.StoreReader.__new__(_fast.StoreReader)
        with pytest.raises(RuntimeError):
            fresh.get(st.db(0), b"k")  # never initialized: refuses, does not crash
    finally:
        st.close()
