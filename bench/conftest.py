"""Fixtures for the pytest-benchmark suite in ``bench/``.

Two ways to run it:

* ``pytest bench/ --benchmark-only``    real measurements, full data sizes
* ``pytest bench/ --benchmark-disable`` CI smoke run: every benchmark body runs
  once, on small data (the whole run takes a few seconds)

``ABASE_BENCH_QUICK=1`` forces the small sizes even when measuring.
``ABASE_BENCH_OPEN_MB`` sets the size of the uncompacted log that the open
(recovery) benchmark reads: default 256, or 4 in quick mode.
``ABASE_BENCH_COMPACT_MB`` sets the log size for the compaction benchmark:
default 64, or 2 in quick mode.

If ``abase_engine`` cannot be imported (or has no ``open`` yet) every
benchmark is skipped with the import error as the reason.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import open_db  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Data sizes for one session (small when quick)."""

    quick: bool
    keys: int  # keys preloaded for the get benchmarks
    scan_keys: int  # keys in the scanned store
    open_mb: int  # uncompacted log opened by the recovery benchmark
    compact_mb: int  # log folded by the compaction benchmark
    rounds: int  # rounds for pedantic (expensive-setup) benchmarks


def _is_quick(config) -> bool:
    if os.environ.get("ABASE_BENCH_QUICK", "") not in ("", "0"):
        return True
    try:
        return bool(config.getoption("benchmark_disable"))
    except ValueError:  # pytest-benchmark not installed: nothing is timed anyway
        return True


@pytest.fixture(scope="session")
def sizes(pytestconfig) -> Sizes:
    quick = _is_quick(pytestconfig)
    open_mb = int(os.environ.get("ABASE_BENCH_OPEN_MB", "4" if quick else "256"))
    compact_mb = int(os.environ.get("ABASE_BENCH_COMPACT_MB", "2" if quick else "64"))
    if quick:
        return Sizes(True, keys=2_000, scan_keys=2_000, open_mb=open_mb, compact_mb=compact_mb, rounds=1)
    return Sizes(False, keys=100_000, scan_keys=100_000, open_mb=open_mb, compact_mb=compact_mb, rounds=3)


@pytest.fixture(scope="session")
def ae():
    """The engine module (a broken build fails the benchmarks, never skips them)."""
    import abase_engine

    return abase_engine


@pytest.fixture
def db_factory(ae, tmp_path):
    """``db_factory(name="db", **opts)`` opens a store under tmp_path; all are
    closed and their directories removed at teardown."""
    opened = []

    def factory(name: str = "db", **opts):
        opts.setdefault("durability", "process")
        db = open_db(ae, tmp_path / name, **opts)
        opened.append(db)
        return db

    yield factory
    for db in opened:
        try:
            db.close()
        except Exception:
            pass
    # The logs can be hundreds of MiB: don't leave them to pytest's retention.
    for child in tmp_path.iterdir():
        shutil.rmtree(child, ignore_errors=True)
