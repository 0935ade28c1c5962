"""Micro-benchmarks of CRDT merges and reads, with their peers (pytest-benchmark).

Run ``pytest bench/test_bench_crdt.py --benchmark-only`` to measure,
``--benchmark-disable`` (or ``ABASE_BENCH_QUICK=1``) for the smoke run.
``python bench/compare.py --crdt`` runs the same workloads (bench/crdt_bench.py)
as whole loops in separate processes; this suite times one call at a time.

Rows and the figures to read off them (issue 10; same run, durability
``process``, 16-byte random keys, 100,000 of them or 2,000 when quick):

* ``test_crdt_increment`` (one ``ns.merge(key, PNCounter.increment(1))``,
  the Operation built once) against ``test_peer_rmw_counter[rocksdict]``
  (``get``, add, ``put``) and ``[lmdb]`` (one write transaction per
  increment): >= 3x the rocksdict counter, >= 1M increments/s; stretch:
  >= 0.5x ``test_crdt_plain_put``.
* ``test_crdt_counter_get`` against ``test_crdt_plain_get``: >= 0.7x.
* ``test_crdt_orset_add_1000`` (an add of a member of a 1,000-member set)
  against ``test_crdt_plain_put``: >= 0.2x.
* ``test_crdt_get_applied_100`` (keys holding 100 operands received
  through ``apply``) against ``test_crdt_plain_get``: at most 2x its time;
  ``test_crdt_get_applied_100_cold`` reads each such key with the fast
  path's state cache emptied (a fold of the key's log records).

No timing assertions: a benchmark fails only on an engine error or a wrong value.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crdt_bench  # noqa: E402

_U64 = struct.Struct("<Q")


def _keys(sizes) -> list:
    return crdt_bench.make_keys(sizes.keys, 11)


def _cycle(keys: list):
    return itertools.cycle(crdt_bench.op_order(keys, len(keys) * 3, 11))


# --------------------------------------------------------------------------- writes


def test_crdt_increment(benchmark, ae, db_factory, sizes):
    """One PNCounter increment of a random key (the Operation value reused)."""
    db = db_factory()
    ns = db.namespace("c", merge=ae.crdt.PNCounter())
    inc = ae.crdt.PNCounter.increment(1)
    it = _cycle(_keys(sizes))
    calls = [0]

    def one():
        calls[0] += 1
        ns.merge(next(it), inc)

    benchmark(one)
    assert sum(v or 0 for v in ns.get_many(_keys(sizes))) == calls[0]


@pytest.mark.parametrize("peer", ["rocksdict", "lmdb"])
def test_peer_rmw_counter(benchmark, tmp_path, sizes, peer):
    """A peer's read-modify-write counter: rocksdict get/add/put (WAL, no
    fsync), or one py-lmdb write transaction (sync=False) per increment."""
    it = _cycle(_keys(sizes))
    pack, unpack = _U64.pack, _U64.unpack
    if peer == "rocksdict":
        rocksdict = pytest.importorskip("rocksdict")
        db = rocksdict.Rdict(str(tmp_path / "rdict"), options=rocksdict.Options(raw_mode=True))
        get = db.get

        def one():
            k = next(it)
            v = get(k)
            db[k] = pack((unpack(v)[0] if v is not None else 0) + 1)

        try:
            benchmark(one)
        finally:
            db.close()
        return
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "lmdb"), map_size=1 << 32, sync=False, metasync=False)
    begin = env.begin

    def one_txn():
        k = next(it)
        with begin(write=True) as txn:
            v = txn.get(k)
            txn.put(k, pack((unpack(v)[0] if v is not None else 0) + 1))

    try:
        benchmark(one_txn)
    finally:
        env.close()


def test_crdt_orset_add_1000(benchmark, ae, db_factory):
    """One ORSet add of a member of a 1,000-member set (the set stays at 1,000)."""
    db = db_factory()
    ns = db.namespace("s", merge=ae.crdt.ORSet())
    members = [b"member-%06d" % i for i in range(1000)]
    for m in members:
        ns.merge(b"set", ae.crdt.ORSet.add(m))
    adds = itertools.cycle([ae.crdt.ORSet.add(m) for m in members])
    benchmark(lambda: ns.merge(b"set", next(adds)))
    assert len(ns.get(b"set")) == 1000


def test_crdt_plain_put(benchmark, db_factory, sizes):
    """Reference: one put of a random key (8-byte value), default namespace."""
    db = db_factory()
    it = _cycle(_keys(sizes))
    v = b"\x01" * 8
    benchmark(lambda: db.put(next(it), v))


# --------------------------------------------------------------------------- reads


def test_crdt_counter_get(benchmark, ae, db_factory, sizes):
    """One get of a PNCounter key (every key incremented once)."""
    db = db_factory()
    ns = db.namespace("c", merge=ae.crdt.PNCounter())
    keys = _keys(sizes)
    inc = ae.crdt.PNCounter.increment(1)
    ns.merge_many([(k, inc) for k in keys])
    it = _cycle(keys)
    benchmark(lambda: ns.get(next(it)))
    assert ns.get(keys[0]) == 1


def test_crdt_plain_get(benchmark, db_factory, sizes):
    """Reference: one get of a log-resident key, default namespace."""
    db = db_factory()
    keys = _keys(sizes)
    db.put_many([(k, b"\x01" * 8) for k in keys])
    it = _cycle(keys)
    benchmark(lambda: db.get(next(it)))
    assert db.get(keys[0]) == b"\x01" * 8


def _applied_keys(ae, db, ns_name: str, sizes) -> list:
    """Keys each holding 100 PNCounter operands received through apply (100
    remote nodes; batches of 1,000 records, interleaved across keys)."""
    keys = _keys(sizes)[:max(10, sizes.keys // 50)]
    op = ae.crdt.PNCounter()
    now = db.now().physical_ms
    records = []
    for j in range(100):
        ts = ae.Timestamp(now - 5000 + j, 0, 1000 + j)
        operand = op.make_operand(ae.crdt.PNCounter.increment(1), None, ts)
        records += [ae.Change(ns_name, k, ae.Op.MERGE, operand, ts) for k in keys]
    for i in range(0, len(records), 1000):
        db.apply(records[i:i + 1000])
    return keys


def test_crdt_get_applied_100(benchmark, ae, db_factory, sizes):
    """One get of a key holding 100 operands received through apply."""
    db = db_factory()
    ns = db.namespace("a", merge=ae.crdt.PNCounter())
    keys = _applied_keys(ae, db, "a", sizes)
    it = _cycle(keys)
    benchmark(lambda: ns.get(next(it)))
    assert ns.get(keys[0]) == 100


def test_crdt_get_applied_100_cold(benchmark, ae, db_factory, sizes):
    """The same read with the fast path's state cache emptied before each:
    the key's log records are folded (in C; checkpoints keep them short)."""
    db = db_factory()
    ns = db.namespace("a", merge=ae.crdt.PNCounter())
    keys = _applied_keys(ae, db, "a", sizes)
    it = _cycle(keys)
    path = getattr(ns.get, "__self__", None)
    forget = path.forget if path is not None and hasattr(path, "forget") else (lambda: None)

    def setup():
        forget()
        return (next(it),), {}

    benchmark.pedantic(ns.get, setup=setup, rounds=20 if sizes.quick else 2000, iterations=1)
    assert ns.get(keys[0]) == 100
