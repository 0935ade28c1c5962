"""abase_engine.metrics: scraped through prometheus_client, and the fast path back after unregister."""

from __future__ import annotations

import pytest

import abase_engine as ae
from abase_engine import metrics
from abase_engine.timing import LatencyHistogram

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(registry) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_scrape_counts_what_was_done(tmp_path):
    registry = CollectorRegistry()
    with ae.open(str(tmp_path / "db"), node_id=1, compact_interval=None, segment_size=8192) as db:
        metrics.register(db, registry)
        assert metrics.registered(db)
        for i in range(200):
            db.put(b"k%03d" % i, b"v" * 50)
        for i in range(150):
            db.get(b"k%03d" % i)
        db.delete(b"k000")
        db.sync()
        db.compact()
        slot = db.replication_slot("r")
        db.put(b"after", b"x")
        st = db.stats()
        got = scrape(registry)
        label = ("db", db.path)

        def one(name, **labels):
            return got[(name, frozenset([label] + list(labels.items())))]

        assert one("abase_operation_seconds_count", op="put") == 201  # 200 + "after"
        assert one("abase_operation_seconds_count", op="get") == 150
        assert one("abase_operation_seconds_count", op="delete") == 1
        assert one("abase_operation_seconds_count", op="sync") == 1
        assert one("abase_operation_seconds_bucket", op="put", le="+Inf") == 201
        assert one("abase_operation_seconds_bucket", op="put", le="1e-06") <= one("abase_operation_seconds_bucket", op="put", le="1.0") <= 201
        assert one("abase_operation_seconds_sum", op="put") > 0
        assert one("abase_compaction_pass_seconds_count") == 1
        assert one("abase_compacted_segments_total") == st["compactions"] > 0
        assert one("abase_records_appended_total") == st["records_appended"]
        assert one("abase_log_bytes") == st["log_bytes"]
        assert one("abase_store_bytes") == st["store_bytes"]
        assert one("abase_store_keys") == st["store_keys"]
        assert one("abase_io_failed") == 0
        assert one("abase_slot_lag_bytes", slot="r") == st["slots"]["r"]["lag_bytes"] > 0
        assert one("abase_slot_invalidated", slot="r") == 0
        db.drop_replication_slot(slot.name)
        metrics.unregister(db)
        assert not metrics.registered(db)
        assert generate_latest(registry) == b""  # the collector left the registry with its last engine


def test_unregister_binds_the_fast_calls_back(tmp_path):
    registry = CollectorRegistry()
    with ae.open(str(tmp_path / "db"), node_id=1, compact_interval=None) as db:
        fast = {name: getattr(db, name) for name in metrics.TIMED_CALLS}
        own = set(vars(db))
        metrics.register(db, registry)
        assert all(getattr(db, name) is not fast[name] for name in metrics.TIMED_CALLS)
        metrics.register(db, registry)  # twice: no double wrapping
        db.put(b"a", b"1")
        assert scrape(registry)[("abase_operation_seconds_count", frozenset({("db", db.path), ("op", "put")}))] == 1
        metrics.unregister(db)
        metrics.unregister(db)  # twice: nothing
        assert set(vars(db)) == own
        for name in metrics.TIMED_CALLS:
            assert getattr(db, name) == fast[name]
        assert db.put is fast["put"] and db.get is fast["get"]  # the very C fast-path objects
        assert type(db.put).__name__ == "builtin_function_or_method"
        assert db.get(b"a") == b"1"


def test_two_engines_share_a_registry_and_a_closed_one_is_skipped(tmp_path):
    registry = CollectorRegistry()
    a = ae.open(str(tmp_path / "a"), node_id=1, compact_interval=None)
    b = ae.open(str(tmp_path / "b"), node_id=2, compact_interval=None)
    try:
        metrics.register(a, registry)
        metrics.register(b, registry)
        a.put(b"x", b"1")
        b.put(b"x", b"1")
        b.put(b"y", b"2")
        got = scrape(registry)
        assert got[("abase_operation_seconds_count", frozenset({("db", a.path), ("op", "put")}))] == 1
        assert got[("abase_operation_seconds_count", frozenset({("db", b.path), ("op", "put")}))] == 2
        with pytest.raises(ValueError):
            metrics.register(a, CollectorRegistry())
        b.close()
        got = scrape(registry)
        assert ("abase_index_keys", frozenset({("db", a.path)})) in got
        assert not any(("db", b.path) in labels for _n, labels in got)
    finally:
        metrics.unregister(a)
        metrics.unregister(b)
        a.close()
        b.close()


def test_register_a_closed_engine_raises(tmp_path):
    db = ae.open(str(tmp_path / "db"))
    db.close()
    with pytest.raises(ae.EngineClosedError):
        metrics.register(db, CollectorRegistry())
    assert not metrics.registered(db)


def test_histogram_buckets():
    h = LatencyHistogram((1.0, 2.0))
    for x in (0.5, 1.0, 1.5, 3.0):
        h.observe(x)
    assert h.snapshot() == ([(1.0, 2), (2.0, 3), (float("inf"), 4)], 4, 6.0)
    with pytest.raises(ValueError):
        LatencyHistogram((2.0, 1.0))
