"""The cluster protocol's pure parts (no Ray): wire format, resolution, ids, doctests."""

from __future__ import annotations

import doctest
import importlib
import random
import threading

import pytest
from hypothesis import given, strategies as st

import abase_engine as ae
from abase_engine import crdt
from abase_engine.cluster import IdAllocator, decode_changes, encode_changes, resolve
from abase_engine.cluster.resolve import diff_records

TS = st.builds(ae.Timestamp, st.integers(0, 2 ** 47 - 1), st.integers(0, 2 ** 16 - 1), st.integers(0, 2 ** 32 - 1))
CHANGE = st.builds(
    lambda ns, key, op, value, ts: ae.Change(ns, key, op, None if op == ae.Op.DELETE else value, ts),
    st.text(max_size=5), st.binary(max_size=20), st.sampled_from(list(ae.Op)), st.binary(max_size=40), TS)


@pytest.mark.parametrize("name", ["placement", "resolve"])
def test_docstring_examples(name):
    module = importlib.import_module(f"abase_engine.cluster.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@given(st.lists(CHANGE, max_size=20))
def test_wire_roundtrip(changes):
    assert decode_changes(encode_changes(changes)) == changes


def test_wire_rejects_bad_input():
    blob = encode_changes([ae.Change("", b"k", ae.Op.PUT, b"v", ae.Timestamp(1, 0, 1))])
    for cut in range(1, len(blob)):
        with pytest.raises(ValueError, match="offset 0"):
            decode_changes(blob[:cut])
    with pytest.raises(ValueError, match="unknown op 9"):
        decode_changes(bytes([9]) + blob[1:])
    with pytest.raises(TypeError):
        decode_changes("text")
    with pytest.raises(ValueError, match="wire format"):
        encode_changes([ae.Change("", b"k" * 70000, ae.Op.PUT, b"v", ae.Timestamp(1, 0, 1))])


@given(st.lists(st.tuples(st.sampled_from(["put", "del"]), st.binary(max_size=3), TS), min_size=1, max_size=8,
                unique_by=lambda item: item[2]),  # (HLC, node id) pairs are unique
       st.randoms(use_true_random=False))
def test_lww_resolution_is_the_greatest_record_whatever_the_order(items, rnd):
    recs = [ae.Change("", b"k", ae.Op.PUT if k == "put" else ae.Op.DELETE, v if k == "put" else None, ts)
            for k, v, ts in items]
    shuffled = recs + recs[: len(recs) // 2]
    rnd.shuffle(shuffled)
    assert resolve(None, shuffled) == max(recs, key=lambda r: r.timestamp)


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 9)), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_crdt_resolution_is_the_join_whatever_the_order(incs, rnd):
    op = crdt.PNCounter()
    recs = []
    state = {}
    for i, (node, n) in enumerate(incs):
        ts = ae.Timestamp(1000 + i, 0, node)
        prev = state.get(node)
        operand = op.make_operand(crdt.PNCounter.increment(n), prev, ts)
        state[node] = operand if prev is None else op.full_merge(prev, [operand])
        recs.append(ae.Change("c", b"k", ae.Op.MERGE, operand, ts))
    shuffled = recs * 2
    rnd.shuffle(shuffled)
    got = resolve(op, shuffled)
    assert op.to_value(got.value) == sum(n for _node, n in incs)
    assert got.timestamp == max(r.timestamp for r in recs)


def test_diff_records_sends_each_side_what_it_lacks():
    t = ae.Timestamp
    old = ae.Change("", b"a", ae.Op.PUT, b"old", t(1, 0, 1))
    new = ae.Change("", b"a", ae.Op.PUT, b"new", t(2, 0, 2))
    only_b = ae.Change("", b"b", ae.Op.DELETE, None, t(3, 0, 2))
    same = ae.Change("", b"c", ae.Op.PUT, b"same", t(4, 0, 1))
    to_a, to_b = diff_records(None, [old, same], [new, only_b, same])
    assert sorted(to_a) == sorted([new, only_b]) and to_b == []
    to_a, to_b = diff_records(None, [new], [old])
    assert to_a == [] and to_b == [new]


def test_id_allocator_hands_out_distinct_ids_to_concurrent_callers(tmp_path):
    allocators = [IdAllocator(str(tmp_path / "ids")) for _ in range(3)]  # as three processes would
    got = []
    lock = threading.Lock()

    def work(a: IdAllocator) -> None:
        for _ in range(30):
            n = random.randint(1, 3)
            first = a.allocate(n)
            with lock:
                got.extend(range(first, first + n))

    threads = [threading.Thread(target=work, args=(a,)) for a in allocators for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == len(set(got))
    assert IdAllocator(str(tmp_path / "ids")).peek() == max(got) + 1
