"""Tests of ``ae.Timestamp`` as a C type (``csrc/fast_timestamp.c``).

The documented API (fields, order, hashing, equality, bytes, pickling,
repr, the constructor's checks) is also covered by ``tests/test_hlc.py``;
this file pins down what changed when it stopped being a tuple subclass:
it is not a tuple, the garbage collector does not track it, keyword
arguments and copies work, and ``from_packed`` (the engine's internal
constructor) refuses what does not fit instead of wrapping.
"""

from __future__ import annotations

import copy
import gc
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine.record import MAX_LOGICAL, MAX_NODE_ID, MAX_PHYSICAL_MS, Timestamp, from_packed

_ts = st.builds(Timestamp, st.integers(0, MAX_PHYSICAL_MS), st.integers(0, MAX_LOGICAL),
                st.integers(0, MAX_NODE_ID))


def test_not_a_tuple_and_not_tracked_by_the_gc(open_db):
    t = Timestamp(1000, 2, 3)
    assert not isinstance(t, tuple)
    assert not gc.is_tracked(t)
    db = open_db()
    for ts in (db.put(b"k", b"v"), db.delete(b"k"), db.put_many([(b"a", b"b")]), db.now()):
        assert type(ts) is Timestamp and not gc.is_tracked(ts)
    with pytest.raises(TypeError):
        t[0]  # noqa: B018
    with pytest.raises(TypeError):
        len(t)


def test_keyword_arguments_and_defaults():
    assert Timestamp(physical_ms=5, logical=6, node_id=7) == Timestamp(5, 6, 7)
    assert Timestamp(5, node_id=7) == Timestamp(5, 0, 7)
    with pytest.raises(TypeError):
        Timestamp()
    with pytest.raises(TypeError):
        Timestamp(1, 2, 3, 4)
    with pytest.raises(TypeError):
        Timestamp(1, bogus=2)


def test_range_edges_and_error_messages():
    top = Timestamp(MAX_PHYSICAL_MS, MAX_LOGICAL, MAX_NODE_ID)
    assert (top.physical_ms, top.logical, top.node_id) == (MAX_PHYSICAL_MS, MAX_LOGICAL, MAX_NODE_ID)
    assert top.hlc == (1 << 63) - 1
    with pytest.raises(ValueError, match=r"physical_ms=140737488355328 out of range"):
        Timestamp(MAX_PHYSICAL_MS + 1)
    with pytest.raises(ValueError, match="logical"):
        Timestamp(0, 10 ** 30)
    with pytest.raises(TypeError, match="node_id must be int, not float"):
        Timestamp(0, 0, 1.0)


def test_int_subclasses_are_ints_bool_is_not():
    class MyInt(int):
        pass

    assert Timestamp(MyInt(5), MyInt(1), MyInt(2)) == Timestamp(5, 1, 2)
    with pytest.raises(TypeError):
        Timestamp(5, True)


def test_immutable():
    t = Timestamp(1, 2, 3)
    for name in ("physical_ms", "logical", "node_id", "hlc", "anything"):
        with pytest.raises(AttributeError):
            setattr(t, name, 5)


def test_copies_are_the_object_and_pickles_round_trip_every_protocol():
    t = Timestamp(123, 4, 5)
    assert copy.copy(t) is t and copy.deepcopy(t) is t
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        u = pickle.loads(pickle.dumps(t, protocol=proto))
        assert type(u) is Timestamp and u == t and hash(u) == hash(t)
    assert pickle.loads(pickle.dumps([t, {t: 1}]))[1][t] == 1


def test_equality_only_with_timestamps():
    t = Timestamp(1, 2, 3)
    assert t != (t.hlc, t.node_id)
    assert t != t.hlc
    assert (t == None) is False  # noqa: E711
    assert t.__eq__((t.hlc, 3)) is NotImplemented
    with pytest.raises(TypeError):
        t < (t.hlc, 3)  # noqa: B015


def test_from_packed_checks_what_fits():
    t = from_packed(5 << 16 | 7, 9)
    assert t == Timestamp(5, 7, 9)
    assert Timestamp._from_packed(5 << 16 | 7, 9) == t
    for bad in ((-1, 0), (1 << 64, 0), (0, 1 << 32), (0, -1)):
        with pytest.raises(OverflowError):
            from_packed(*bad)
    with pytest.raises(TypeError):
        from_packed("1", 0)
    with pytest.raises(TypeError):
        from_packed(1)


def test_from_bytes_refuses_a_physical_part_out_of_range():
    raw = bytes([0x80] + [0] * 11)  # hlc = 2**63: physical_ms = 2**47
    with pytest.raises(ValueError, match="out of range"):
        Timestamp.from_bytes(raw)
    strided = memoryview(bytes(range(24)))[::2]  # not contiguous: read as its bytes
    assert Timestamp.from_bytes(bytes(range(0, 24, 2))) == Timestamp.from_bytes(strided)


def test_repr_is_valid_python():
    t = Timestamp(1234, 5, 6)
    assert eval(repr(t), {"Timestamp": Timestamp}) == t
    assert ae.Timestamp is Timestamp


@given(_ts, _ts)
def test_property_order_hash_and_fields_agree_with_tuples(a, b):
    ta = (a.physical_ms, a.logical, a.node_id)
    tb = (b.physical_ms, b.logical, b.node_id)
    assert (a < b) == (ta < tb) and (a <= b) == (ta <= tb)
    assert (a > b) == (ta > tb) and (a >= b) == (ta >= tb)
    assert (a == b) == (ta == tb) and (a != b) == (ta != tb)
    if a == b:
        assert hash(a) == hash(b)
    assert a.hlc == a.physical_ms << 16 | a.logical
    assert from_packed(a.hlc, a.node_id) == a


def test_kept_results_give_the_collector_nothing_to_walk(open_db):
    """Results kept in a list add no tracked object (gen-0 count, collections off)."""
    db = open_db()
    put = db.put
    keys = [b"k%d" % i for i in range(20000)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        kept = [put(k, b"v") for k in keys]
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert len(kept) == 20000
    assert grown < 100  # a tracked Timestamp would add 20000
