"""Micro-benchmarks of CRDT merges and reads against plain puts and gets (pytest-benchmark).

Run ``pytest bench/test_bench_crdt.py --benchmark-only`` to measure,
``--benchmark-disable`` (or ``ABASE_BENCH_QUICK=1``) for the smoke run.

Figures to compare (same run, same durability ``process``):

* ``test_crdt_merge[PNCounter-*]`` and ``test_crdt_merge[ORSet.add-*]`` against
  ``test_crdt_plain_put``: merge throughput as a fraction of a plain put
  (target >= 0.7x). ``hot`` cycles over 1000 keys (100 when quick), so every
  merge reads a key with earlier operands; ``fresh`` writes a new key each time.
* ``test_crdt_get_100_pending[*]`` against ``test_crdt_plain_get``: a read of a
  PNCounter key with 100 operands in the log (target <= 3x). ``local``: written
  by ``ns.merge`` (whatever the engine does to keep such reads short counts);
  ``applied-cold``: 100 operands received through ``apply`` and any per-key
  read cache of the namespace emptied before each timed read, so each read
  folds the operands.

No timing assertions: a benchmark fails only on an engine error or a wrong value.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VALUE = b"v" * 100
MEMBERS = [b"member-%d" % i for i in range(8)]


def _fresh_keys(prefix: bytes = b""):
    return (prefix + i.to_bytes(16, "big") for i in itertools.count(1 << 100))


def _hot_keys(sizes) -> list:
    return [b"c%05d" % i for i in range(100 if sizes.quick else 1000)]


# --------------------------------------------------------------------------- writes


@pytest.mark.parametrize("keys", ["hot", "fresh"])
@pytest.mark.parametrize("kind", ["PNCounter", "ORSet.add"])
def test_crdt_merge(benchmark, ae, db_factory, sizes, kind, keys):
    """One ``ns.merge`` (operation object built outside the timing)."""
    db = db_factory()
    crdt = ae.crdt
    if kind == "PNCounter":
        ns = db.namespace("c", merge=crdt.PNCounter())
        ops = itertools.repeat(crdt.PNCounter.increment(1))
    else:
        ns = db.namespace("s", merge=crdt.ORSet())
        ops = itertools.cycle([crdt.ORSet.add(m) for m in MEMBERS])
    hot = _hot_keys(sizes)
    key_iter = itertools.cycle(hot) if keys == "hot" else _fresh_keys()
    calls = [0]

    def one():
        calls[0] += 1
        ns.merge(next(key_iter), next(ops))

    benchmark(one)
    n = calls[0]
    if kind == "PNCounter" and keys == "hot":
        assert sum(ns.get(k, 0) for k in hot) == n
    elif kind == "ORSet.add" and keys == "hot":
        got = ns.get(hot[0])
        assert got and got <= set(MEMBERS)
    benchmark.extra_info["merges"] = n


def test_crdt_plain_put(benchmark, db_factory):
    """Reference for the merge ratio: one put of a fresh key, 100-byte value, default namespace."""
    db = db_factory()
    keys = _fresh_keys()
    benchmark(lambda: db.put(next(keys), VALUE))
    assert db.get((1 << 100).to_bytes(16, "big")) == VALUE


def test_crdt_plain_put_lww_namespace(benchmark, db_factory):
    """Reference: one put of a fresh key into a (non-default) LWW namespace."""
    db = db_factory()
    ns = db.namespace("plain")
    keys = _fresh_keys()
    benchmark(lambda: ns.put(next(keys), VALUE))
    assert ns.get((1 << 100).to_bytes(16, "big")) == VALUE


# --------------------------------------------------------------------------- reads


def _clear_read_caches(ns) -> None:
    cache = getattr(ns, "_read_cache", None)  # present only in engines that cache decoded reads
    if cache is not None:
        cache.clear()


@pytest.mark.parametrize("how", ["local", "applied-cold"])
def test_crdt_get_100_pending(benchmark, ae, db_factory, sizes, how):
    """get of a PNCounter key holding 100 merge operands in the log (not compacted)."""
    db = db_factory()
    crdt = ae.crdt
    ns = db.namespace("c", merge=crdt.PNCounter())
    if how == "local":
        inc = crdt.PNCounter.increment(1)
        for _ in range(100):
            ns.merge(b"hot", inc)
        assert ns.get(b"hot") == 100
        benchmark(ns.get, b"hot")
    else:
        op = crdt.PNCounter()
        now = db.now()
        changes = []
        for i in range(100):  # 100 remote nodes, one increment each, 1 ms apart, in the past
            ts = ae.Timestamp(now.physical_ms - 1000 + i, 0, 1000 + i)
            changes.append(ae.Change("c", b"hot", ae.Op.MERGE, op.make_operand(crdt.PNCounter.increment(1), None, ts),
                                     ts))
        db.apply(changes)
        assert ns.get(b"hot") == 100
        benchmark.pedantic(ns.get, args=(b"hot",), setup=lambda: _clear_read_caches(ns),
                           rounds=50 if sizes.quick else 5000, iterations=1, warmup_rounds=0 if sizes.quick else 50)
    assert ns.get(b"hot") == 100


def test_crdt_plain_get(benchmark, db_factory):
    """Reference for the read ratio: get of a log-resident key, default namespace."""
    db = db_factory()
    keys = [i.to_bytes(16, "big") for i in range(1000)]
    db.put_many([(k, VALUE) for k in keys])
    cyc = itertools.cycle(keys)
    benchmark(lambda: db.get(next(cyc)))
    assert db.get(keys[0]) == VALUE


def test_crdt_plain_get_pedantic(benchmark, db_factory, sizes):
    """The same plain get timed like ``applied-cold`` (one call per round), for a like-for-like ratio."""
    db = db_factory()
    db.put(b"hot", VALUE)
    benchmark.pedantic(db.get, args=(b"hot",), setup=lambda: None,
                       rounds=50 if sizes.quick else 5000, iterations=1, warmup_rounds=0 if sizes.quick else 50)
    assert db.get(b"hot") == VALUE
