"""Tests of ``db.batch()`` through its C buffer (``csrc/fast_batch.c``).

A batch of plain puts and deletes is appended in C and written with one
call into the core, whatever namespaces it touches; anything unusual (other
bytes-like types, sizes over the limits, merge namespaces, merges, a
listener, digests, an injected clock, a closed engine) takes the checked
Python path. Both must give the same results, the same errors and the same
atomicity; the property test compares them with a dict model.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import _fast, errors
from abase_engine.batch import Batch
from abase_engine.crdt import GCounter
from abase_engine.log import MAX_KEY, MAX_VALUE


def test_plain_batch_is_atomic_and_gets_consecutive_timestamps(open_db):
    db = open_db()
    db.put(b"gone", b"x")
    before = db.now()
    with db.batch() as b:
        for i in range(1000):
            b.put(b"k%04d" % i, b"v%d" % i)
        b.delete(b"gone")
        assert len(b) == 1001
    after = db.now()
    assert db.get(b"gone") is None
    assert all(db.get(b"k%04d" % i) == b"v%d" % i for i in range(1000))
    changes = [c for c in db.changes() if c.timestamp > before]
    assert len(changes) == 1001 and all(c.timestamp < after for c in changes)
    hlcs = [c.timestamp.hlc for c in changes]
    assert hlcs == sorted(hlcs) and len(set(hlcs)) == 1001


def test_commit_returns_the_last_timestamp(open_db):
    db = open_db()
    b = db.batch()
    b.put(b"a", b"1")
    b.put(b"b", b"2")
    ts = b.commit()
    assert type(ts) is ae.Timestamp
    assert ts == max(c.timestamp for c in db.changes())
    assert db.batch().commit() is None


def test_many_namespaces_in_one_batch(open_db):
    db = open_db()
    other = db.namespace("other")
    counters = db.namespace("counters", merge=GCounter())
    with db.batch() as b:
        b.put(b"k", b"default")
        b.put(b"k", b"by-name", namespace="other")
        b.put(b"k2", b"by-handle", namespace=other)
        b.put(b"k3", b"by-name-again", namespace="other")  # remembered argument
        b.put(b"k", b"engine", namespace=db)
        b.put(b"c", GCounter().make_operand(GCounter.increment(3), None, ae.Timestamp(1, 0, 1)),
              namespace=counters)
        b.delete(b"k2", namespace=other)
        b.delete(b"nothing", namespace="other")
    assert db.get(b"k") == b"engine"
    assert other.get(b"k") == b"by-name" and other.get(b"k2") is None and other.get(b"k3") == b"by-name-again"
    assert counters.get(b"c") == 3


def test_merges_take_the_general_path_and_stay_atomic(open_db):
    db = open_db()
    counters = db.namespace("counters", merge=GCounter())
    with db.batch() as b:
        b.put(b"plain", b"v")
        b.merge(b"c", GCounter.increment(2), namespace=counters)
        b.merge(b"c", GCounter.increment(3), namespace=counters)
        b.merge(b"lww", b"as-put")  # a merge on an LWW namespace is a put
    assert db.get(b"plain") == b"v" and db.get(b"lww") == b"as-put"
    assert counters.get(b"c") == 5


@pytest.mark.parametrize("conv", [bytearray, memoryview])
def test_bytes_like_arguments_take_the_checked_path(open_db, conv):
    db = open_db()
    with db.batch() as b:
        b.put(conv(b"key"), conv(b"value"))
        b.delete(conv(b"other"))
    assert db.get(b"key") == b"value"


def test_empty_key_and_empty_value(open_db):
    db = open_db()
    with db.batch() as b:
        b.put(b"", b"")
        b.put(b"e", b"")
    assert db.get(b"", b"dflt") == b"" and db.get(b"e", b"dflt") == b""
    with db.batch() as b:
        b.put(b"", b"")
    assert db.get(b"") == b""


@pytest.mark.parametrize("bad_key,bad_value,exc", [
    ("str", b"v", TypeError),
    (b"k", "str", TypeError),
    (None, b"v", TypeError),
    (b"k", 5, TypeError),
    (b"x" * (MAX_KEY + 1), b"v", errors.KeyTooLargeError),
    (bytearray(b"x" * (MAX_KEY + 1)), b"v", errors.KeyTooLargeError),
])
def test_bad_arguments_raise_and_add_nothing(open_db, bad_key, bad_value, exc):
    db = open_db()
    b = db.batch()
    b.put(b"ok", b"1")
    with pytest.raises(exc):
        b.put(bad_key, bad_value)
    if bad_value == b"v":  # the key is what is wrong: a delete refuses it too
        with pytest.raises(exc):
            b.delete(bad_key)
    assert len(b) == 1
    b.commit()
    assert db.get(b"ok") == b"1" and db.get(b"k") is None


def test_value_too_large(open_db):
    db = open_db()
    b = db.batch()
    big = memoryview(bytearray(MAX_VALUE + 1))
    with pytest.raises(errors.ValueTooLargeError):
        b.put(b"k", big)
    assert len(b) == 0


def test_call_shapes(open_db):
    db = open_db()
    b = db.batch()
    b.put(key=b"a", value=b"1")
    b.put(b"b", value=b"2", namespace=None)
    b.delete(key=b"c", namespace="")
    with pytest.raises(TypeError):
        b.put(b"a")
    with pytest.raises(TypeError):
        b.put(b"a", b"1", None, None)
    with pytest.raises(TypeError):
        b.put(b"a", b"1", bogus=1)
    with pytest.raises(TypeError):
        b.put(b"a", b"1", key=b"again")
    with pytest.raises(TypeError):
        b.delete()
    with pytest.raises(TypeError):
        b.delete(b"k", value=b"v")
    with pytest.raises(TypeError):
        b.put(b"a", b"1", namespace=5)
    b.commit()
    assert db.get(b"a") == b"1" and db.get(b"b") == b"2"


def test_another_engines_namespace_is_refused(open_db, tmp_path):
    db = open_db()
    other_db = open_db(str(tmp_path / "other"))
    ns = other_db.namespace("x")
    b = db.batch()
    with pytest.raises(ValueError):
        b.put(b"k", b"v", namespace=ns)
    with pytest.raises(ValueError):
        b.put(b"k", b"v", namespace=other_db)
    assert len(b) == 0


def test_exception_discards_and_double_commit_refused(open_db):
    db = open_db()
    with pytest.raises(RuntimeError):
        with db.batch() as b:
            b.put(b"k", b"v")
            raise RuntimeError("boom")
    assert db.get(b"k") is None
    b = db.batch()
    b.put(b"k", b"v")
    b.commit()
    with pytest.raises(errors.AbaseError):
        b.commit()


def test_closed_engine_refuses_the_commit(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    b = db.batch()
    b.put(b"k", b"v")
    db.close()
    with pytest.raises(errors.EngineClosedError):
        b.commit()


def test_listener_sees_a_batch_written_on_the_general_path(open_db):
    db = open_db()
    seen = []
    db.on_commit(lambda changes: seen.extend(changes))
    with db.batch() as b:
        b.put(b"a", b"1")
        b.delete(b"b")
    assert [(c.key, c.op) for c in seen] == [(b"a", ae.Op.PUT), (b"b", ae.Op.DELETE)]


@pytest.mark.parametrize("opts", [{"digests": True}, {"clock": "fake"}])
def test_general_path_engines(open_db, fake_clock, opts):
    if opts.get("clock") == "fake":
        opts = {"clock": fake_clock}
    db = open_db(**opts)
    with db.batch() as b:
        b.put(b"a", b"1")
        b.put(b"b", b"2", namespace="ns")
    assert db.get(b"a") == b"1" and db.namespace("ns").get(b"b") == b"2"


def test_large_batch_grows_its_buffers(open_db):
    db = open_db(segment_size=64 << 20)
    values = [bytes([i % 251]) * (i * 37 % 5000) for i in range(3000)]
    with db.batch() as b:
        for i, v in enumerate(values):
            b.put(b"key-%d" % i, v)
    assert all(db.get(b"key-%d" % i) == v for i, v in enumerate(values))


def test_buffer_argument_checks(open_db):
    db = open_db()
    with pytest.raises(TypeError):
        _fast.BatchBuffer(5, lambda *a: None)
    with pytest.raises(TypeError):
        _fast.BatchBuffer(None, 5)
    buf = _fast.BatchBuffer(None, lambda *a: None)
    with pytest.raises(TypeError):
        buf.append(1, 0, "k", b"v")
    with pytest.raises(ValueError):
        buf.append(9, 0, b"k", b"v")
    with pytest.raises(ValueError):
        buf.append(1, 0, b"k" * (MAX_KEY + 1), b"v")
    with pytest.raises(OverflowError):
        buf.remember(None, 1 << 33)
    buf.append(1, 0, b"k", b"v")
    assert buf.commit() is None  # no fast path: the caller takes the general one
    assert buf.export() == (b"\x01", [0], [b"k", b"v"])


_key = st.binary(min_size=0, max_size=6)
_op = st.one_of(
    st.tuples(st.just("put"), _key, st.binary(max_size=20), st.sampled_from([None, "n1", "n2"])),
    st.tuples(st.just("delete"), _key, st.just(b""), st.sampled_from([None, "n1", "n2"])),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_op, max_size=12), max_size=6))
def test_property_fast_and_general_batches_agree_with_a_model(tmp_path_factory, batches):
    fast_db = ae.open(str(tmp_path_factory.mktemp("fast")), compact_interval=None)
    slow_db = ae.open(str(tmp_path_factory.mktemp("slow")), compact_interval=None)
    model = {}
    try:
        for ops in batches:
            fb = fast_db.batch()
            sb = Batch(slow_db._committer, slow_db._namespace_arg)  # no fast path: the general one
            for op, key, value, ns in ops:
                for b in (fb, sb):
                    if op == "put":
                        b.put(key, value, namespace=ns)
                    else:
                        b.delete(key, namespace=ns)
                if op == "put":
                    model[(ns or "", key)] = value
                else:
                    model.pop((ns or "", key), None)
            fb.commit()
            sb.commit()
        for db in (fast_db, slow_db):
            got = {}
            for name in ("", "n1", "n2"):
                for k, v in db.namespace(name).scan():
                    got[(name, k)] = v
            assert got == model
    finally:
        fast_db.close()
        slow_db.close()
