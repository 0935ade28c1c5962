"""Cost of the C teardown gate on the hot put/get path (issue 11, item 2).

Runs a put loop and a log-resident get loop through the C fast path
(``db.put`` / ``db.get`` with exact bytes) of the abase_engine found first on
``sys.path``, and prints ns per call (median of 7 runs of N calls each).
Compare two builds by running it with each on ``PYTHONPATH``:

    PYTHONPATH=/path/to/old/src python bench/gate_cost.py
    PYTHONPATH=/path/to/new/src python bench/gate_cost.py

Times are this process's CPU time (``time.process_time_ns``), which a
loaded machine disturbs less than wall time. Machine note: 2 shared cores;
run both builds back to back, alternating, and compare ratios, not absolute
numbers.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import abase_engine as ae

N = 200_000


def main() -> None:
    with tempfile.TemporaryDirectory() as d, ae.open(d, durability="none", compact_interval=None,
                                                       segment_size=1 << 30) as db:
        keys = [b"key%07d" % i for i in range(N)]
        val = b"v" * 16
        put, get = db.put, db.get
        for k in keys:
            put(k, val)
        puts, gets = [], []
        for _ in range(7):
            t = time.process_time_ns()
            for k in keys:
                put(k, val)
            puts.append((time.process_time_ns() - t) / N)
            t = time.process_time_ns()
            for k in keys:
                get(k)
            gets.append((time.process_time_ns() - t) / N)
        print(f"{ae.__file__}: put {statistics.median(puts):.1f} ns, get {statistics.median(gets):.1f} ns")


if __name__ == "__main__":
    sys.exit(main())
