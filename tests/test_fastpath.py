"""Tests of the CPython-API fast path (csrc/fastcall.c, ``abase_engine._fast``).

``Engine.put/get/put_many/get_many`` of the default namespace go straight
into C for exact ``bytes`` arguments and fall back to the general Python
path (``Namespace.put/get``, ``Engine._put_many_general``) for anything
else. These tests pin down that both routes give the same answers: exact
bytes round trips across the 1024-byte stack-buffer boundary, every error,
reads that fall through to the store after compaction, segment roll-over
(``ABASE_EWOULDBLOCK`` from the nowait calls), ``durability="sync"``,
listeners switching the fast path off and on, concurrent writers/readers
with the compactor running, and a model-based property against the
general path.
"""

from __future__ import annotations

import collections
import glob
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import errors
from abase_engine.engine import Namespace
from abase_engine.log import MAX_KEY, MAX_VALUE
from abase_engine.record import Change, Op, Timestamp

_SEG_64K = 64 * 1024


def _general_get(db, key, default=None):
    """The general (pure Python) read path of the default namespace."""
    return Namespace.get(db.namespace(""), key, default)


def _value(size: int, seed: int = 0) -> bytes:
    """A deterministic pseudo-random value of ``size`` bytes."""
    return random.Random(size * 1_000_003 + seed).randbytes(size)


def _segments(path):
    return sorted(glob.glob(os.path.join(path, "log", "*.seg")))


class _BytesSub(bytes):
    """A bytes subclass: not exact bytes, so it takes the general path."""


# --------------------------------------------------------------------------
# the fast path is on by default, off where the general path is required


def test_fast_path_enabled_only_where_allowed(open_db, tmp_path, fake_clock):
    db = open_db()
    assert db._fast is True
    assert open_db(str(tmp_path / "clock"), clock=fake_clock)._fast is False
    assert open_db(str(tmp_path / "dig"), digests=True)._fast is False


# --------------------------------------------------------------------------
# put / get round trip


def test_put_get_round_trip_and_timestamps(open_db):
    db = open_db(node_id=7)
    assert db._fast
    prev = None
    for i in range(50):
        key, value = b"key-%d" % i, b"value-%d" % i
        ts = db.put(key, value)
        # not a tuple since 0.2.0 (CHANGELOG.md): an immutable C value
        assert type(ts) is ae.Timestamp and not isinstance(ts, tuple)
        hlc, node = ts.hlc, ts.node_id
        assert node == db.node_id == 7
        if prev is not None:
            assert hlc > prev.hlc and ts > prev
        prev = ts
        got = db.get(key)
        assert type(got) is bytes and got == value
    # a general-path put and a fast put share one clock
    gts = Namespace.put(db.namespace(""), b"general", b"g")
    fts = db.put(b"fast", b"f")
    assert prev < gts < fts and fts.node_id == 7
    assert db.get(b"general") == b"g" and db.get(b"fast") == b"f"


def test_get_missing_and_deleted_return_default(open_db):
    db = open_db()
    sentinel = object()
    assert db.get(b"missing") is None
    assert db.get(b"missing", b"d") == b"d"
    assert db.get(b"missing", sentinel) is sentinel
    assert db.get(b"missing", default=sentinel) is sentinel
    db.put(b"k", b"v")
    assert db.get(b"k", sentinel) == b"v"
    dts = db.delete(b"k")
    assert db.get(b"k") is None
    assert db.get(b"k", sentinel) is sentinel
    assert db.get_many([b"k", b"missing"]) == [None, None]
    db.put(b"k", b"again")
    assert db.get(b"k", sentinel) == b"again"
    # a snapshot read ("at") still works through Engine.get
    assert db.get(b"k", sentinel, at=dts) is sentinel


def test_empty_value_is_a_value(open_db):
    db = open_db()
    db.put(b"k", b"")
    assert db.get(b"k", b"default") == b""
    assert db.get_many([b"k"]) == [b""]
    db.put_many([(b"k2", b"")])
    assert db.get(b"k2", b"default") == b""


def test_returned_values_are_independent_objects(open_db):
    """Values are copied out of the read buffers: a later read never changes
    a value returned earlier (small and large values)."""
    db = open_db()
    small_a, small_b = b"a" * 100, b"b" * 100
    big_a, big_b = _value(5000, 1), _value(5000, 2)
    db.put_many([(b"sa", small_a), (b"sb", small_b), (b"ba", big_a), (b"bb", big_b)])
    got = [db.get(b"sa"), db.get(b"ba")]
    db.get(b"sb"), db.get(b"bb")
    db.put(b"sa", b"x" * 100)
    db.put(b"ba", b"y" * 5000)
    db.get(b"sa"), db.get(b"ba")
    assert got == [small_a, big_a]


# --------------------------------------------------------------------------
# argument types


_CONVERTERS = {
    "bytearray": bytearray,
    "memoryview": memoryview,
    "bytes-subclass": _BytesSub,
}


@pytest.mark.parametrize("conv", list(_CONVERTERS.values()), ids=list(_CONVERTERS))
def test_bytes_like_arguments_behave_like_bytes(open_db, conv):
    db = open_db()
    ts = db.put(conv(b"k1"), conv(b"v1"))
    assert type(ts) is Timestamp and ts.node_id == db.node_id
    assert db.get(b"k1") == b"v1" and type(db.get(b"k1")) is bytes
    assert db.get(conv(b"k1")) == b"v1" and type(db.get(conv(b"k1"))) is bytes
    assert db.get(conv(b"nope"), b"d") == b"d"
    db.put(b"k2", conv(b"v2"))          # only the value converted
    db.put(conv(b"k3"), b"v3")          # only the key converted
    assert db.put_many([(conv(b"k4"), conv(b"v4")), (b"k5", b"v5")]) > ts
    big = _value(3000)
    db.put(conv(b"big"), conv(big))
    keys = [b"k1", b"k2", b"k3", b"k4", b"k5", b"big", b"nope"]
    expected = [b"v1", b"v2", b"v3", b"v4", b"v5", big, None]
    assert db.get_many([conv(k) for k in keys]) == expected
    assert db.get_many(keys) == expected
    assert [_general_get(db, k) for k in keys] == expected
    db.delete(conv(b"k1"))
    assert db.get(conv(b"k1"), b"d") == b"d"


def test_strided_memoryview_is_read_as_its_bytes(open_db):
    db = open_db()
    mv = memoryview(b"0123456789")[::2]
    db.put(mv, mv)
    assert db.get(b"02468") == b"02468"
    assert db.get(mv) == b"02468"


_BAD = ["str", 1, None, 1.5, [b"x"]]


@pytest.mark.parametrize("bad", _BAD, ids=[type(b).__name__ for b in _BAD])
def test_wrong_types_raise_type_error(open_db, bad):
    db = open_db()
    db.put(b"ok", b"v")
    with pytest.raises(TypeError):
        db.put(bad, b"v")
    with pytest.raises(TypeError):
        db.put(b"k", bad)
    with pytest.raises(TypeError):
        db.get(bad)
    with pytest.raises(TypeError):
        db.get(bad, b"default")
    with pytest.raises(TypeError):
        db.get_many([bad])
    with pytest.raises(TypeError):
        db.get_many([b"ok", bad])
    with pytest.raises(TypeError):
        db.get_many((b"ok", bad))
    with pytest.raises(TypeError):
        db.put_many([(bad, b"v")])
    with pytest.raises(TypeError):
        db.put_many([(b"a", b"1"), (b"k", bad)])
    with pytest.raises(TypeError):
        db.put_many(((b"a", b"1"), (bad, b"v")))
    # nothing of the failed calls was written
    assert db.get(b"k") is None and db.get(b"a") is None
    assert list(db.keys()) == [b"ok"]


def test_non_iterable_arguments_raise_type_error(open_db):
    db = open_db()
    for bad in (None, 5, 1.5):
        with pytest.raises(TypeError):
            db.get_many(bad)
        with pytest.raises(TypeError):
            db.put_many(bad)
    with pytest.raises(TypeError):
        db.put_many([5])  # an item that cannot be unpacked
    with pytest.raises(TypeError):
        db.put_many([b"kv"])  # unpacks into two ints: not keys
    assert list(db.keys()) == []


def test_wrong_arity_raises_type_error(open_db):
    db = open_db()
    with pytest.raises(TypeError):
        db.put(b"k")
    with pytest.raises(TypeError):
        db.put(b"k", b"v", b"extra")
    with pytest.raises(TypeError):
        db.get()
    assert db.get(b"k") is None


# --------------------------------------------------------------------------
# value sizes around the 1024-byte stack buffer


_SIZES = [0, 1, 1023, 1024, 1025, 4096, 65536, 1 << 20]


@pytest.mark.parametrize("size", _SIZES)
def test_value_sizes_round_trip(open_db, size):
    db = open_db()
    v = _value(size)
    db.put(b"k", v)
    assert db.get(b"k") == v and len(db.get(b"k")) == size
    assert db.get_many([b"k", b"k"]) == [v, v]
    # overwrite with a larger, then a smaller value
    larger = _value(2 * size + 1, 1)
    db.put(b"k", larger)
    assert db.get(b"k") == larger
    smaller = _value(size // 2, 2)
    db.put(b"k", smaller)
    assert db.get(b"k") == smaller
    db.put_many([(b"k", v), (b"k2", larger)])
    assert db.get_many([b"k", b"k2"]) == [v, larger]
    # the same values read from the store
    db.compact(wait=True)
    assert db.get(b"k") == v and db.get(b"k2") == larger
    assert db.get_many([b"k2", b"k"]) == [larger, v]
    assert _general_get(db, b"k") == v


def test_value_size_transitions_on_one_key(open_db):
    db = open_db(segment_size=_SEG_64K)
    seq = _SIZES + _SIZES[::-1] + [1024, 1025, 1023, 1025, 0, 1 << 20, 1]
    for i, size in enumerate(seq):
        v = _value(size, i)
        db.put(b"k", v)
        assert db.get(b"k") == v, size
        assert db.get_many([b"k"]) == [v], size
        if i % 5 == 4:
            db.compact(wait=True)
            assert db.get(b"k") == v, size


def test_max_value_size_boundary(open_db):
    db = open_db()
    over = bytes(MAX_VALUE + 1)  # calloc'ed: cheap, never touched by the checks
    with pytest.raises(errors.ValueTooLargeError) as ei:
        db.put(b"k", over)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(errors.ValueTooLargeError):
        db.put_many([(b"a", b"1"), (b"k", over)])
    with pytest.raises(errors.ValueTooLargeError):
        db.put_many((p for p in [(b"a", b"1"), (b"k", over)]))
    assert db.get(b"k") is None and db.get(b"a") is None
    assert list(db.keys()) == []


# --------------------------------------------------------------------------
# the empty key


def test_empty_key(open_db):
    db = open_db()
    assert db.get(b"") is None and db.get(b"", b"d") == b"d"
    ts = db.put(b"", b"empty")
    assert type(ts) is Timestamp
    assert db.get(b"") == b"empty" == _general_get(db, b"")
    assert db.get_many([b"", b"x", b""]) == [b"empty", None, b"empty"]
    assert db.put_many([(b"", b"batched"), (b"x", b"1")]) > ts
    assert db.get(b"") == b"batched" == _general_get(db, b"")
    assert db.get_many([b"", b"x"]) == [b"batched", b"1"]
    db.compact(wait=True)
    assert db.get(b"") == b"batched" == _general_get(db, b"")
    db.delete(b"")
    assert db.get(b"", b"d") == b"d" == _general_get(db, b"", b"d")
    assert db.get_many([b""]) == [None]
    db.compact(wait=True)
    assert db.get(b"", b"d") == b"d" == _general_get(db, b"", b"d")
    db.put_many([(bytearray(b""), b"again")])
    assert db.get(b"") == b"again" and db.get_many([memoryview(b"")]) == [b"again"]


# --------------------------------------------------------------------------
# size limits


def test_key_too_large_from_put(open_db):
    db = open_db()
    big = b"k" * (MAX_KEY + 1)
    assert MAX_KEY == 511
    with pytest.raises(errors.KeyTooLargeError) as ei:
        db.put(big, b"v")
    assert isinstance(ei.value, ValueError)
    with pytest.raises(errors.KeyTooLargeError):
        db.put(bytearray(big), b"v")
    with pytest.raises(errors.KeyTooLargeError):
        db.get(big)
    with pytest.raises(errors.KeyTooLargeError):
        db.get_many([b"a", big])
    assert list(db.keys()) == []
    assert db.get(big[:MAX_KEY]) is None
    # exactly MAX_KEY is fine, through every call
    top = b"m" * MAX_KEY
    db.put(top, b"v")
    assert db.get(top) == b"v" and db.get_many([top]) == [b"v"]
    db.put_many([(top, b"w")])
    assert db.get(top) == b"w"
    assert list(db.keys()) == [top]


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("container", ["list", "tuple", "generator"])
def test_put_many_key_too_large_writes_nothing(open_db, position, container):
    db = open_db()
    db.put(b"a", b"old")
    big = b"k" * (MAX_KEY + 1)
    pairs = [(b"a", b"new"), (b"b", b"1"), (b"c", b"2")]
    at = {"first": 0, "middle": 2, "last": 3}[position]
    pairs.insert(at, (big, b"v"))
    arg = {"list": list, "tuple": tuple, "generator": lambda p: (x for x in p)}[container](pairs)
    with pytest.raises(errors.KeyTooLargeError) as ei:
        db.put_many(arg)
    assert isinstance(ei.value, ValueError)
    assert db.get_many([b"a", b"b", b"c"]) == [b"old", None, None]
    assert list(db.keys()) == [b"a"]


# --------------------------------------------------------------------------
# reads that fall through to the store


def test_reads_after_compaction(open_db):
    db = open_db()
    big = _value(5000)
    db.put(b"plain", b"p")
    db.put(b"over", b"first")
    db.put(b"over", b"second")
    db.put(b"gone", b"x")
    db.delete(b"gone")
    db.put(b"big", big)
    db.put_many([(b"batch1", b"b1"), (b"batch2", b"b2")])
    assert db.compact(wait=True) >= 1
    assert db.get(b"plain") == b"p"
    assert db.get(b"over") == b"second"
    assert db.get(b"gone") is None and db.get(b"gone", b"d") == b"d"
    assert db.get(b"big") == big
    assert db.get(b"missing", b"d") == b"d"
    keys = [b"plain", b"over", b"gone", b"big", b"batch1", b"batch2", b"missing"]
    expected = [b"p", b"second", None, big, b"b1", b"b2", None]
    assert db.get_many(keys) == expected
    assert [_general_get(db, k) for k in keys] == expected
    # new log records over compacted keys win, then are compacted in turn
    db.put(b"plain", b"p2")
    db.delete(b"over")
    db.put(b"gone", b"back")
    expected2 = [b"p2", None, b"back", big, b"b1", b"b2", None]
    assert db.get_many(keys) == expected2
    assert [db.get(k) for k in keys] == expected2
    db.compact(wait=True)
    assert db.get_many(keys) == expected2
    assert [db.get(k) for k in keys] == expected2
    assert db.get(b"over", b"d") == b"d"


# --------------------------------------------------------------------------
# get_many


def _mixed_db(db):
    """Keys in every state; returns (keys, expected values)."""
    big = _value(3000)
    db.put(b"compacted", b"c")
    db.put(b"compacted-deleted", b"x")
    db.delete(b"compacted-deleted")
    db.put(b"compacted-over", b"old")
    db.put(b"compacted-big", big)
    db.compact(wait=True)
    db.put(b"compacted-over", b"new")
    db.put(b"log", b"l")
    db.put(b"log-deleted", b"y")
    db.delete(b"log-deleted")
    db.delete(b"compacted")  # deleted in the log, value in the store
    db.put(b"", b"empty")
    db.put(b"ba", b"bytearray-key")
    keys = [b"log", b"compacted-over", b"compacted-deleted", b"log-deleted", b"missing", b"",
            bytearray(b"ba"), b"compacted", b"compacted-big", memoryview(b"log"), _BytesSub(b"ba"), b"log"]
    expected = [b"l", b"new", None, None, None, b"empty", b"bytearray-key", None, big, b"l",
                b"bytearray-key", b"l"]
    return keys, expected


def test_get_many_mixed_states(open_db):
    db = open_db()
    keys, expected = _mixed_db(db)
    got = db.get_many(keys)
    assert type(got) is list
    assert got == expected
    assert got == [db.get(k) for k in keys]
    assert got == [_general_get(db, k) for k in keys]
    assert db.get_many([]) == []


@pytest.mark.parametrize("form", ["tuple", "generator", "iterator", "dict-keys", "deque"])
def test_get_many_accepts_any_iterable(open_db, form):
    db = open_db()
    keys, expected = _mixed_db(db)
    hashable = [bytes(k) for k in keys]
    make = {
        "tuple": lambda: tuple(keys),
        "generator": lambda: (k for k in keys),
        "iterator": lambda: iter(keys),
        "dict-keys": lambda: dict.fromkeys(hashable).keys(),
        "deque": lambda: collections.deque(keys),
    }[form]
    if form == "dict-keys":
        unique = list(dict.fromkeys(hashable))
        assert db.get_many(make()) == [db.get(k) for k in unique]
    else:
        assert db.get_many(make()) == expected
    assert db.get_many(x for x in ()) == []


# --------------------------------------------------------------------------
# put_many


def test_put_many_list_returns_last_timestamp(open_db):
    db = open_db(node_id=5)
    before = db.put(b"k", b"0")
    ts = db.put_many([(b"k", b"a"), (b"j", b"x"), (b"k", b"b")])
    assert type(ts) is Timestamp and ts.node_id == 5 and ts > before
    assert db.get(b"k") == b"b" and db.get(b"j") == b"x"  # later pairs win
    # ts is the last record's timestamp: the batch's records are consecutive
    assert db.get(b"k", at=ts) == b"b"
    assert db.get(b"k", at=Timestamp._from_packed(ts.hlc - 2, 5)) == b"a"
    assert db.get(b"k", at=before) == b"0"
    after = db.put(b"k", b"c")
    assert after > ts


@pytest.mark.parametrize("form", ["list", "tuple", "generator", "bytearray-item", "list-item",
                                  "bytes-subclass-item", "dict-items"])
def test_put_many_forms(open_db, form):
    db = open_db()
    pairs = [(b"a", b"1"), (b"b", b"2"), (b"c", _value(2000))]
    if form == "list":
        arg = list(pairs)
    elif form == "tuple":
        arg = tuple(pairs)
    elif form == "generator":
        arg = (p for p in pairs)
    elif form == "bytearray-item":
        arg = [pairs[0], (bytearray(b"b"), bytearray(b"2")), pairs[2]]
    elif form == "list-item":
        arg = [pairs[0], [b"b", b"2"], pairs[2]]
    elif form == "bytes-subclass-item":
        arg = [pairs[0], (_BytesSub(b"b"), _BytesSub(b"2")), pairs[2]]
    else:
        arg = dict(pairs).items()
    prev = db.put(b"z", b"z")
    ts = db.put_many(arg)
    assert type(ts) is Timestamp and ts > prev and ts.node_id == db.node_id
    assert db.get_many([b"a", b"b", b"c", b"z"]) == [b"1", b"2", pairs[2][1], b"z"]
    assert db.put(b"z", b"y") > ts


@pytest.mark.parametrize("bad_item,exc", [
    ((b"k", b"v", b"x"), ValueError),
    ((b"k",), ValueError),
    (5, TypeError),
    (None, TypeError),
])
def test_put_many_malformed_item_writes_nothing(open_db, bad_item, exc):
    db = open_db()
    with pytest.raises(exc):
        db.put_many([(b"a", b"1"), bad_item, (b"b", b"2")])
    with pytest.raises(exc):
        db.put_many(((b"a", b"1"), bad_item))
    assert db.get_many([b"a", b"b", b"k"]) == [None, None, None]
    assert list(db.keys()) == []


@pytest.mark.parametrize("empty", [[], (), iter([]), (x for x in [])], ids=["list", "tuple", "iter", "gen"])
def test_put_many_empty_returns_none(open_db, empty):
    db = open_db()
    assert db.put_many(empty) is None
    assert list(db.keys()) == []


def test_put_many_is_atomic_across_log_and_store(open_db):
    db = open_db()
    db.put_many([(b"k%d" % i, b"old") for i in range(20)])
    db.compact(wait=True)
    bad = [(b"k%d" % i, b"new") for i in range(20)] + [(b"x" * (MAX_KEY + 1), b"v")]
    with pytest.raises(errors.KeyTooLargeError):
        db.put_many(bad)
    assert db.get_many([b"k%d" % i for i in range(20)]) == [b"old"] * 20
    good = [(b"k%d" % i, b"new") for i in range(20)]
    db.put_many(good)
    assert db.get_many([b"k%d" % i for i in range(20)]) == [b"new"] * 20


# --------------------------------------------------------------------------
# closed engine


def test_closed_engine_raises(open_db):
    db = open_db()
    db.put(b"k", b"v")
    db.put(b"big", _value(5000))
    db.close()
    assert db._fast is False
    calls = [
        lambda: db.put(b"k", b"v"),
        lambda: db.put(bytearray(b"k"), b"v"),
        lambda: db.get(b"k"),
        lambda: db.get(b"big"),
        lambda: db.get(b"k", b"d"),
        lambda: db.get(b""),
        lambda: db.get(bytearray(b"k")),
        lambda: db.get_many([b"k"]),
        lambda: db.get_many([b"missing", b"k"]),
        lambda: db.get_many((k for k in [b"k"])),
        lambda: db.put_many([(b"k", b"v")]),
        lambda: db.put_many(((b"k", b"v"),)),
        lambda: db.put_many([]),
        lambda: db.put_many((p for p in [(b"k", b"v")])),
    ]
    for call in calls:
        with pytest.raises(errors.EngineClosedError):
            call()
    db.close()  # twice is fine
    with pytest.raises(errors.EngineClosedError):
        db.get(b"k")


def test_values_survive_close_and_reopen(open_db, db_path):
    db = open_db()
    db.put(b"k", b"v")
    db.put_many([(b"a", b"1"), (b"big", _value(5000))])
    db.close()
    db = open_db()
    assert db._fast is True
    assert db.get_many([b"k", b"a", b"big"]) == [b"v", b"1", _value(5000)]
    assert db.put(b"k", b"w") and db.get(b"k") == b"w"


# --------------------------------------------------------------------------
# segment roll-over (the nowait put reports EWOULDBLOCK; the blocking one creates the segment)


def test_small_segments_roll_over(open_db, db_path):
    db = open_db(segment_size=_SEG_64K)
    expected = {}
    for i in range(1500):
        key = b"key-%05d" % i
        value = _value(100 + (i * 37) % 400, i)
        if i % 3:
            db.put(key, value)
        else:
            assert db.put_many([(key, value), (key + b"-b", value[::-1])]) is not None
            expected[key + b"-b"] = value[::-1]
        expected[key] = value
    # values larger than a segment
    for i in range(3):
        key, value = b"huge-%d" % i, _value(200 * 1024, i)
        db.put(key, value) if i != 1 else db.put_many([(key, value)])
        expected[key] = value
    assert len(_segments(db_path)) > 10
    keys = list(expected)
    assert db.get_many(keys) == [expected[k] for k in keys]
    assert all(db.get(k) == expected[k] for k in keys)
    db.close()
    db = open_db(segment_size=_SEG_64K)
    assert db.get_many(keys) == [expected[k] for k in keys]
    assert all(db.get(k) == expected[k] for k in keys)
    db.compact(wait=True)
    assert db.get_many(keys) == [expected[k] for k in keys]


def test_put_many_larger_than_a_segment(open_db, db_path):
    db = open_db(segment_size=_SEG_64K)
    db.put(b"before", b"x")
    pairs = [(b"bulk-%03d" % i, _value(2000, i)) for i in range(150)]  # ~300 KiB in one batch
    ts = db.put_many(pairs)
    assert type(ts) is Timestamp
    assert db.get_many([k for k, _ in pairs]) == [v for _, v in pairs]
    db.close()
    db = open_db(segment_size=_SEG_64K)
    assert db.get_many([k for k, _ in pairs] + [b"before"]) == [v for _, v in pairs] + [b"x"]


def test_large_value_read_while_the_value_changes(open_db):
    """A value past the stack buffer is read twice (size, then bytes) with the
    GIL released for the second read; overwrites in between (bigger, smaller,
    small, deleted) must still give one of the values, whole."""
    db = open_db(segment_size=_SEG_64K, compact_interval=0.005)
    versions = [_value(2000, 1), _value(5000, 2), _value(100, 3), _value(1025, 4), None]
    allowed = {None} | {v for v in versions if v is not None}
    db.put(b"k", versions[0])
    barrier = threading.Barrier(3)
    done = threading.Event()
    failures = []

    def writer() -> None:
        try:
            barrier.wait()
            for i in range(4000):
                v = versions[i % len(versions)]
                db.delete(b"k") if v is None else db.put(b"k", v)
                db.put(b"other-%d" % (i % 50), b"o")  # move the log on
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(repr(e))
        finally:
            done.set()

    def reader(use_many: bool) -> None:
        reads = 0
        try:
            barrier.wait()
            while not done.is_set() or reads < 100:
                reads += 1
                got = db.get_many([b"k", b"k"]) if use_many else [db.get(b"k")]
                for v in got:
                    if v not in allowed:
                        failures.append(("torn value", len(v)))
                        return
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=writer), threading.Thread(target=reader, args=(False,)),
               threading.Thread(target=reader, args=(True,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert failures == []
    last = versions[(4000 - 1) % len(versions)]
    assert db.get(b"k") == last == _general_get(db, b"k")


# --------------------------------------------------------------------------
# durability="sync" (the nowait put always defers to the blocking one)


def test_sync_durability(open_db):
    db = open_db(durability="sync", segment_size=_SEG_64K)
    expected = {}
    prev = None
    for i in range(200):
        key, value = b"s%d" % i, _value(i * 13, i)
        ts = db.put(key, value)
        assert type(ts) is Timestamp and (prev is None or ts > prev)
        prev = ts
        expected[key] = value
    ts = db.put_many([(b"m%d" % i, _value(i * 50, i)) for i in range(100)])
    assert ts > prev
    expected.update({b"m%d" % i: _value(i * 50, i) for i in range(100)})
    keys = list(expected)
    assert db.get_many(keys) == [expected[k] for k in keys]
    db.close()
    db = open_db(durability="sync", segment_size=_SEG_64K)
    assert db.get_many(keys) == [expected[k] for k in keys]
    assert all(db.get(k) == expected[k] for k in keys)


# --------------------------------------------------------------------------
# listeners switch the fast path off


def test_on_commit_disables_fast_path_while_registered(open_db):
    db = open_db()
    seen = []
    unsubscribe = db.on_commit(seen.append)
    assert db._fast is False
    ts1 = db.put(b"a", b"1")
    ts2 = db.put_many([(b"b", b"2"), (b"c", b"3")])
    ts3 = db.put_many((p for p in [(b"d", b"4")]))
    ts4 = db.put(bytearray(b"e"), memoryview(b"5"))
    # The first record of the 2-pair batch has its own timestamp between ts1
    # and ts2 (not always ts2 - 1 packed: the batch may cross a millisecond).
    ts_b = seen[1][0].timestamp if len(seen) > 1 and seen[1] else None
    assert ts_b is not None and ts1 < ts_b < ts2 and ts_b.node_id == db.node_id
    assert seen == [
        [Change("", b"a", Op.PUT, b"1", ts1)],
        [Change("", b"b", Op.PUT, b"2", ts_b),
         Change("", b"c", Op.PUT, b"3", ts2)],
        [Change("", b"d", Op.PUT, b"4", ts3)],
        [Change("", b"e", Op.PUT, b"5", ts4)],
    ]
    assert db.get_many([b"a", b"b", b"c", b"d", b"e"]) == [b"1", b"2", b"3", b"4", b"5"]
    unsubscribe()
    assert db._fast is True
    n = len(seen)
    db.put(b"f", b"6")
    db.put_many([(b"g", b"7")])
    assert len(seen) == n
    assert db.get_many([b"f", b"g"]) == [b"6", b"7"]
    unsubscribe()  # twice is harmless
    assert db._fast is True


def test_on_commit_two_listeners_and_clock(open_db, tmp_path, fake_clock):
    db = open_db()
    got1, got2 = [], []
    u1 = db.on_commit(got1.append)
    u2 = db.on_commit(got2.append)
    u1()
    assert db._fast is False  # one listener is still registered
    db.put(b"k", b"v")
    assert len(got1) == 0 and len(got2) == 1
    u2()
    assert db._fast is True
    # an engine with a fake clock never turns the fast path on
    cdb = open_db(str(tmp_path / "clock"), clock=fake_clock)
    u = cdb.on_commit(lambda changes: None)
    u()
    assert cdb._fast is False
    ts = cdb.put(b"k", b"v")
    assert ts.physical_ms == fake_clock.now and cdb.get(b"k") == b"v"
    # unsubscribing after close does not re-enable it
    u3 = db.on_commit(lambda changes: None)
    db.close()
    u3()
    assert db._fast is False
    with pytest.raises(errors.EngineClosedError):
        db.put(b"k", b"v")


# --------------------------------------------------------------------------
# threads: writers, readers and the background compactor


_WRITERS, _PER_WRITER, _READERS = 4, 5000, 2


def _tkey(w: int, j: int) -> bytes:
    return b"w%d-%05d" % (w, j)


def _tval(key: bytes, gen: int) -> bytes:
    if int(key[-2:]) % 41 == 0:  # some values past the 1024-byte stack buffer
        return (b"%d:" % gen + key) * 120
    return b"%d:" % gen + key


def test_threads_writers_readers_compactor(open_db, db_path):
    db = open_db(segment_size=_SEG_64K, compact_interval=0.005)
    barrier = threading.Barrier(_WRITERS + _READERS + 1)
    writers_done = threading.Event()
    failures = []

    def writer(w: int) -> None:
        try:
            barrier.wait()
            chunk = 50
            for start in range(0, _PER_WRITER, chunk):
                keys = [_tkey(w, j) for j in range(start, start + chunk)]
                # first generation, then the final one: half through put, half through put_many
                for gen in (1, 2):
                    if (start // chunk + gen) % 2:
                        for k in keys:
                            db.put(k, _tval(k, gen))
                    else:
                        db.put_many([(k, _tval(k, gen)) for k in keys])
                if start % 500 == 0:
                    db.compact(wait=False)  # wake the background compactor
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(("writer", w, repr(e)))

    def reader(r: int) -> None:
        rng = random.Random(r)
        state = {}  # key -> generation last seen: reads must never go back
        reads = 0
        try:
            barrier.wait()
            while not writers_done.is_set() or reads < 200:
                reads += 1
                keys = [_tkey(rng.randrange(_WRITERS), rng.randrange(_PER_WRITER)) for _ in range(20)]
                values = db.get_many(keys) if reads % 2 else [db.get(k) for k in keys]
                for k, v in zip(keys, values):
                    gen = 0 if v is None else 1 if v == _tval(k, 1) else 2 if v == _tval(k, 2) else -1
                    if gen < 0:
                        failures.append(("reader", r, "bad value", k, v[:40]))
                        return
                    if gen < state.get(k, 0):
                        failures.append(("reader", r, "went back", k, state[k], gen))
                        return
                    state[k] = gen
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(("reader", r, repr(e)))

    passes = []

    def compactor() -> None:
        # folds (and seals) alongside the background thread while the writers run
        try:
            barrier.wait()
            while not writers_done.is_set():
                passes.append(db.compact(wait=True))
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(("compactor", repr(e)))

    ws = [threading.Thread(target=writer, args=(w,)) for w in range(_WRITERS)]
    rs = [threading.Thread(target=reader, args=(r,)) for r in range(_READERS)]
    rs.append(threading.Thread(target=compactor))
    for t in ws + rs:
        t.start()
    for t in ws:
        t.join(120)
    writers_done.set()
    for t in rs:
        t.join(120)
    assert not any(t.is_alive() for t in ws + rs), "a thread hung"
    assert failures == []
    assert passes  # the compacting thread ran at least once

    all_keys = [_tkey(w, j) for w in range(_WRITERS) for j in range(_PER_WRITER)]
    final = [_tval(k, 2) for k in all_keys]
    assert db.get_many(all_keys) == final
    assert [db.get(k) for k in all_keys] == final
    db.close()
    db = open_db(segment_size=_SEG_64K)
    assert db.get_many(all_keys) == final
    db.compact(wait=True)
    assert [db.get(k) for k in all_keys] == final


# --------------------------------------------------------------------------
# property: fast path == general path == a dict model


_KEYS = [b"", b"a", b"b", b"ab", b"k" * MAX_KEY]
_keys = st.sampled_from(_KEYS)
_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([1023, 1024, 1025, 3000]).map(lambda n: _value(n)),
)
_ops = st.one_of(
    st.tuples(st.just("put"), _keys, _values, st.booleans()),
    st.tuples(st.just("delete"), _keys),
    st.tuples(st.just("put_many"), st.lists(st.tuples(_keys, _values), max_size=6), st.booleans()),
    st.tuples(st.just("compact")),
)


def _check_against_model(db, model):
    sentinel = object()
    for k in _KEYS:
        want = model.get(k)
        assert db.get(k) == want
        assert _general_get(db, k) == want
        got = db.get(k, sentinel)
        assert (got is sentinel) if want is None else (got == want)
    assert db.get_many(_KEYS) == [model.get(k) for k in _KEYS]
    assert db.get_many(reversed(_KEYS)) == [model.get(k) for k in reversed(_KEYS)]


@given(ops=st.lists(_ops, max_size=25))
def test_property_fast_equals_general_equals_model(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("prop"))
    db = ae.open(path, compact_interval=None, segment_size=4096)
    try:
        model = {}
        for op in ops:
            if op[0] == "put":
                _, k, v, as_bytearray = op
                ts = db.put(bytearray(k), bytearray(v)) if as_bytearray else db.put(k, v)
                assert type(ts) is Timestamp
                model[k] = v
            elif op[0] == "delete":
                db.delete(op[1])
                model.pop(op[1], None)
            elif op[0] == "put_many":
                _, pairs, as_generator = op
                ts = db.put_many((p for p in pairs) if as_generator else pairs)
                assert (ts is None) == (not pairs)
                model.update(pairs)  # later pairs win, as in the batch
            else:
                db.compact(wait=True)
            _check_against_model(db, model)
        db.close()
        db = ae.open(path, compact_interval=None, segment_size=4096)
        _check_against_model(db, model)
    finally:
        db.close()


# --------------------------------------------------------------------------
# regressions


def test_get_many_list_mutated_during_call_does_not_crash(tmp_path):
    code = textwrap.dedent(f"""
        import abase_engine as ae
        db = ae.open({str(tmp_path / "db")!r}, compact_interval=None)
        db.put(b"a", b"1")
        keys = [b"k%d" % i for i in range(200000)]
        class K(bytes):
            def __bytes__(self):
                keys.clear()  # frees the list's item array and every key in it
                return b"a"
        keys.insert(0, K(b"a"))
        try:
            r = db.get_many(keys)
            print("result", len(r), r[:2])
        except Exception as e:  # an exception is an acceptable answer; a crash is not
            print("raised", type(e).__name__)
        db.close()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])


def test_store_empty_flag_follows_the_store(tmp_path):
    """While the store holds nothing of the default namespace, a key the log
    lacks is answered without LMDB; the flag must turn off with the commit
    that first stores something, before the log stops showing it."""
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        assert db._fastpath.store_empty is True
        db.put(b"k", b"v")
        assert db.get(b"missing") is None and db.get_many([b"missing", b"k"]) == [None, b"v"]
        db.compact(wait=True)
        assert db._fastpath.store_empty is False
        assert db.get(b"k") == b"v" and db.get_many([b"k"]) == [b"v"]
        db.namespace("other").put(b"x", b"y")  # another namespace's data does not count
        db.compact(wait=True)
        assert db.namespace("other").get(b"x") == b"y"
    finally:
        db.close()
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        assert db._fastpath.store_empty is False  # decided again at open
        assert db.get(b"k") == b"v"
    finally:
        db.close()
    db = ae.open(str(tmp_path / "db2"), compact_interval=None)
    try:
        db.namespace("other").put(b"x", b"y")
        db.compact(wait=True)
        assert db._fastpath.store_empty is True  # only the default namespace's table counts
        assert db.get(b"x") is None
    finally:
        db.close()


def test_empty_key_in_the_store_keeps_the_store_from_counting_as_empty(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        db.put(b"", b"empty")
        db.compact(wait=True)
        assert db._fastpath.store_empty is False
        assert db.get(b"") == b"empty"
    finally:
        db.close()


# --------------------------------------------------------------------------
# LWW namespaces other than the default one


def test_namespace_put_get_take_the_fast_path_and_agree_with_the_general_one(tmp_path):
    from abase_engine.crdt import PNCounter

    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        ns = db.namespace("users")
        assert "put" in vars(ns) and "get" in vars(ns)  # bound to C at creation
        ts = ns.put(b"k", b"v")
        assert type(ts) is Timestamp and ts.node_id == db.node_id
        assert ns.get(b"k") == b"v" and ns.get(b"missing", 7) == 7
        assert db.get(b"k") is None  # other namespace
        assert ns.get(b"k", at=ts) == b"v"  # keyword: general path
        assert ns.get(bytearray(b"k")) == b"v"
        with pytest.raises(TypeError):
            ns.put("k", b"v")
        with pytest.raises(errors.KeyTooLargeError):
            ns.put(b"x" * (MAX_KEY + 1), b"v")
        ns.delete(b"k")
        assert ns.get(b"k") is None
        ns.put(b"k2", b"v2")
        db.compact(wait=True)  # now in the store: the flag must have turned off
        assert ns.get(b"k2") == b"v2" and ns.get(b"k") is None
        assert Namespace.get(ns, b"k2") == b"v2"
        c = db.namespace("counters", merge=PNCounter())  # merge namespaces keep the general path
        c.merge(b"x", PNCounter.increment(2))
        assert c.get(b"x") == 2
    finally:
        db.close()
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        ns = db.namespace("users")  # existing: the flag starts off until a commit says otherwise
        assert ns.get(b"k2") == b"v2" and ns.get(b"k") is None
    finally:
        db.close()
    with pytest.raises(errors.EngineClosedError):
        ns.put(b"a", b"b")
    with pytest.raises(errors.EngineClosedError):
        ns.get(b"a")


def test_namespace_fast_path_is_off_while_a_listener_is_registered(tmp_path):
    db = ae.open(str(tmp_path / "db"), compact_interval=None)
    try:
        ns = db.namespace("n")
        seen = []
        unsubscribe = db.on_commit(seen.extend)
        ns.put(b"k", b"v")
        assert [(c.namespace, c.key, c.value) for c in seen] == [("n", b"k", b"v")]
        unsubscribe()
        ns.put(b"k", b"w")
        assert len(seen) == 1 and ns.get(b"k") == b"w"
        db.on_commit(seen.extend)
        db.namespace("later").put(b"a", b"b")  # a namespace opened while a listener is registered
        assert [(c.namespace, c.key) for c in seen[1:]] == [("later", b"a")]
    finally:
        db.close()


@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "compact"]),
                          st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=8)), max_size=30))
def test_property_namespace_fast_get_equals_general_get_and_model(tmp_path_factory, ops):
    db = ae.open(str(tmp_path_factory.mktemp("nsfp") / "db"), compact_interval=None, segment_size=4096)
    try:
        ns = db.namespace("m")
        model = {}
        for op, key, value in ops:
            if op == "put":
                ns.put(key, value)
                model[key] = value
            elif op == "delete":
                ns.delete(key)
                model.pop(key, None)
            else:
                db.compact(wait=True)
            for k in (b"a", b"b", b"c"):
                assert ns.get(k) == model.get(k) == Namespace.get(ns, k)
    finally:
        db.close()
