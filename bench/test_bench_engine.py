"""Micro-benchmarks of abase_engine's public API (pytest-benchmark).

Run ``pytest bench/ --benchmark-only`` to measure, ``pytest bench/
--benchmark-disable`` for the CI smoke run (each body once, small data; see
conftest.py for the sizes and environment variables).

There are no timing assertions: a benchmark fails only if the engine raises
or returns a wrong value.  Derived figures (MB/s) are stored in
``benchmark.extra_info`` and appear in ``--benchmark-json`` output.

Keys are 16 random bytes, values 100 bytes unless stated otherwise.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import NO_COMPACT, load, make_pairs, open_db, segment_for, try_stats, write_log  # noqa: E402

VALUE = b"v" * 100


def _fresh_keys():
    """An endless supply of distinct 16-byte keys (big-endian counter)."""
    return (i.to_bytes(16, "big") for i in itertools.count(1 << 100))


# --------------------------------------------------------------------------- writes


@pytest.mark.parametrize("durability", ["none", "process", "sync"])
def test_put(benchmark, db_factory, durability):
    """One put of a fresh key at each durability level."""
    db = db_factory(durability=durability)
    keys = _fresh_keys()
    benchmark(lambda: db.put(next(keys), VALUE))
    assert db.get((1 << 100).to_bytes(16, "big")) == VALUE


def test_put_batch_1000(benchmark, db_factory):
    """One atomic batch of 1000 puts (``put_many`` when it exists, else ``batch()``)."""
    db = db_factory()
    keys = _fresh_keys()
    benchmark.extra_info["ops_per_call"] = 1000

    def one_batch():
        load(db, [(next(keys), VALUE) for _ in range(1000)])

    benchmark(one_batch)
    assert db.get((1 << 100).to_bytes(16, "big")) == VALUE


# --------------------------------------------------------------------------- reads


@pytest.fixture
def loaded(db_factory, sizes):
    """A store with ``sizes.keys`` keys, still log-resident (no compaction asked)."""
    db = db_factory(**NO_COMPACT)
    pairs = make_pairs(sizes.keys)
    load(db, pairs)
    return db, pairs


def test_get_log_resident(benchmark, loaded):
    """get of a key whose newest version is in the log (before any compaction)."""
    db, pairs = loaded
    benchmark.extra_info["stats"] = {k: v for k, v in try_stats(db).items() if isinstance(v, (int, float, str))}
    keys = itertools.cycle([k for k, _ in pairs])
    benchmark(lambda: db.get(next(keys)))
    k, v = pairs[0]
    assert db.get(k) == v


def test_get_lmdb_only(benchmark, loaded):
    """get of a key that only LMDB holds (after ``compact(wait=True)``)."""
    db, pairs = loaded
    db.compact(wait=True)
    benchmark.extra_info["stats"] = {k: v for k, v in try_stats(db).items() if isinstance(v, (int, float, str))}
    keys = itertools.cycle([k for k, _ in pairs])
    benchmark(lambda: db.get(next(keys)))
    k, v = pairs[-1]
    assert db.get(k) == v


def test_get_missing(benchmark, loaded):
    """get of a key that was never written."""
    db, _ = loaded
    misses = itertools.cycle([k for k, _ in make_pairs(1000, seed=99)])
    benchmark(lambda: db.get(next(misses)))
    assert db.get(b"\xff" * 16) is None


def test_scan_all(benchmark, db_factory, sizes):
    """Full ordered scan of ``sizes.scan_keys`` keys (100k; 2k when quick)."""
    db = db_factory()
    pairs = make_pairs(sizes.scan_keys, seed=3)
    load(db, pairs)
    benchmark.extra_info["keys"] = sizes.scan_keys

    def scan():
        n = 0
        for _ in db.scan():
            n += 1
        return n

    n = benchmark.pedantic(scan, rounds=sizes.rounds, iterations=1, warmup_rounds=0 if sizes.quick else 1)
    assert n == sizes.scan_keys


# --------------------------------------------------------------------------- merge


@pytest.fixture
def counters(ae, db_factory):
    db = db_factory()
    return ae, db.namespace("counters", merge=ae.crdt.PNCounter())


def test_merge_pncounter(benchmark, counters):
    """One ``merge`` of a PNCounter increment (operand encoded once, outside the timing)."""
    ae, ns = counters
    inc = ae.crdt.PNCounter.increment(1)
    keys = itertools.cycle([b"c%05d" % i for i in range(1000)])
    benchmark(lambda: ns.merge(next(keys), inc))


def test_get_with_100_pending_operands(benchmark, counters):
    """get of a key whose value is 100 merge operands not folded yet."""
    ae, ns = counters
    inc = ae.crdt.PNCounter.increment(1)
    for _ in range(100):
        ns.merge(b"hot", inc)
    assert ns.get(b"hot") == 100
    benchmark(ns.get, b"hot")


# --------------------------------------------------------------------------- open and compaction


def test_open_recovery(benchmark, ae, tmp_path, sizes):
    """Open (recovery) of an uncompacted log of ``ABASE_BENCH_OPEN_MB`` MiB.

    The timed call is ``ae.open`` plus one ``get`` (so a lazily built index is
    included); the store is closed outside the timing, before the next round.
    Page cache is warm (the file was just written).
    """
    path = tmp_path / "openlog"
    seg = segment_for(sizes.open_mb * (1 << 20))
    db = open_db(ae, path, durability="none", segment_size=seg, **NO_COMPACT)
    user = write_log(db, sizes.open_mb)
    log_bytes = try_stats(db).get("log_bytes", user)
    db.close()
    benchmark.extra_info.update(log_mb=log_bytes / (1 << 20))
    holder = []

    def setup():
        while holder:
            holder.pop().close()

    def do_open():
        d = open_db(ae, path, durability="none", segment_size=seg, **NO_COMPACT)
        d.get(b"\x00" * 16)
        holder.append(d)

    t = time.perf_counter()
    try:
        benchmark.pedantic(do_open, setup=setup, rounds=sizes.rounds, iterations=1)
    finally:
        setup()
        elapsed = time.perf_counter() - t
        shutil.rmtree(path, ignore_errors=True)
    if benchmark.stats is not None and benchmark.stats.stats.median:
        benchmark.extra_info["gb_per_s"] = log_bytes / benchmark.stats.stats.median / 1e9
    else:  # --benchmark-disable: the one un-benchmarked call, setup included
        benchmark.extra_info["gb_per_s_rough"] = log_bytes / elapsed / 1e9


def test_compaction_throughput(benchmark, ae, tmp_path, sizes):
    """``compact(wait=True)`` of ``ABASE_BENCH_COMPACT_MB`` MiB of fresh log.

    Every round gets a new store written in the untimed setup; MB/s (log bytes
    folded per second, median round) goes to extra_info.
    """
    rounds = iter(range(10**6))
    current = {}
    log_sizes = []

    def setup():
        if "db" in current:
            current.pop("db").close()
        path = tmp_path / f"compact{next(rounds)}"
        db = open_db(ae, path, durability="none", **NO_COMPACT)
        write_log(db, sizes.compact_mb, seed=11, value_size=100)
        log_sizes.append(try_stats(db).get("log_bytes", sizes.compact_mb << 20))
        current["db"] = db
        return (db,), {}

    def compact(db):
        db.compact(wait=True)

    try:
        benchmark.pedantic(compact, setup=setup, rounds=sizes.rounds, iterations=1)
        db = current.pop("db")
        st = try_stats(db)
        db.close()
    finally:
        if "db" in current:
            current.pop("db").close()
        for child in tmp_path.iterdir():
            shutil.rmtree(child, ignore_errors=True)
    assert st.get("compaction_lag_bytes", 0) == 0
    if "stats_error" in st:
        benchmark.extra_info["stats_error"] = st["stats_error"]
    benchmark.extra_info["log_mb"] = log_sizes[-1] / (1 << 20)
    if benchmark.stats is not None and benchmark.stats.stats.median:
        benchmark.extra_info["mb_per_s"] = log_sizes[-1] / (1 << 20) / benchmark.stats.stats.median
