"""The commands that change or exercise a store: ``compact`` and ``bench``.

``compact`` folds the whole log into LMDB in the foreground (no compactor
thread is started: the pass runs in the command's own thread). ``bench``
times a short put/get/scan run on a scratch store of its own, to check a
machine or an install; it compares with nothing (``bench/compare.py`` runs
the peers).

Thread-safety: not safe (one command at a time).
"""

from __future__ import annotations

import os
import platform
import random
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from .. import __version__
from ..engine import Engine
from ..engine import open as _open_engine
from ._stores import all_namespaces, open_known_namespaces
from ._ui import CliError, Outcome, Ui, human_bytes, table

__all__ = ["compact", "bench", "COMPACT_KEEP_ALL"]

#: ``compact`` opens the store with these unless told otherwise: a pass then
#: purges no tombstone and invalidates no replication slot, since the
#: application's own ``tombstone_grace_ms`` and ``max_slot_lag_bytes`` are
#: not stored anywhere the command line could read them.
COMPACT_KEEP_ALL = {"tombstone_grace_ms": 1 << 62, "max_slot_lag_bytes": 1 << 62}


def compact(db: Engine, *, ui: Ui) -> Outcome:
    """Fold every segment into the store now (``Engine.compact(wait=True)``).

    The engine does not persist its options, so the pass uses what the store
    was opened with here: see :data:`COMPACT_KEEP_ALL` for the defaults.

    :raises CliError: a namespace's operator is not one the command line can
        build: the compactor needs every merge namespace opened with its operator.
    """
    _opened, skipped = open_known_namespaces(db)
    if skipped:
        ops = all_namespaces(db)
        raise CliError("UnknownOperator", "cannot compact: namespace(s) " + ", ".join(
            f"{n!r} ({ops[n]})" for n in skipped) + " use an operator the command line cannot build; "
            "compact from Python with those namespaces opened")
    before = db.stats()
    t0 = time.perf_counter()
    folded = db.compact(wait=True)
    seconds = time.perf_counter() - t0
    after = db.stats()
    keys = ("log_bytes", "segments", "compaction_lag_bytes", "store_bytes", "index_keys", "store_keys")
    # What is still sealed and unfolded is held by a replication slot (the
    # command line opens no snapshot or feed of its own meanwhile).
    holders = sorted(n for n, s in after["slots"].items() if not s["invalidated"]) \
        if after["compaction_lag_bytes"] else []
    invalidated = sorted(n for n, s in after["slots"].items()
                         if s["invalidated"] and not before["slots"].get(n, {}).get("invalidated"))
    data = {"command": "compact", "segments_folded": folded, "seconds": round(seconds, 3),
            "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys},
            "held_by_slots": holders, "slots_invalidated": invalidated}
    notes = []
    if holders:
        notes.append(f"{human_bytes(after['compaction_lag_bytes'])} of sealed log stays: replication slot(s) "
                     f"{', '.join(map(repr, holders))} still need it (`abase slots` shows their lag; "
                     f"`abase slots --drop NAME` releases a slot whose consumer is gone)")
    if invalidated:
        notes.append(f"invalidated replication slot(s) {', '.join(map(repr, invalidated))}: they lagged more "
                     f"than --max-slot-lag-bytes")
    text = "\n".join([
        f"folded {folded} segment(s) in {seconds:.2f} s",
        table([["", "before", "after"],
               ["log", human_bytes(before["log_bytes"]), human_bytes(after["log_bytes"])],
               ["segments", before["segments"], after["segments"]],
               ["compaction lag", human_bytes(before["compaction_lag_bytes"]),
                human_bytes(after["compaction_lag_bytes"])],
               ["store", human_bytes(before["store_bytes"]), human_bytes(after["store_bytes"])]], indent="  "),
    ] + [f"note: {n}" for n in notes])
    return Outcome(data, text)


def _timed(ops: int, fn: Callable[[], Any]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    fn()
    s = time.perf_counter() - t0
    return {"ops": ops, "seconds": round(s, 4), "ops_per_s": round(ops / s) if s > 0 else None}


def bench(*, keys: int, value_size: int, batch: int, directory: Optional[str], ui: Ui) -> Outcome:
    """Time put, get, put_many and scan of ``keys`` keys on a scratch store.

    Keys are 13 bytes, written and read in a shuffled order (seed 0); the
    scratch store is removed afterwards. One run, no peers: a smoke test of
    speed, not a comparison.

    :raises CliError: ``keys``, ``value_size`` or ``batch`` out of range.
    """
    if keys < 1 or value_size < 0 or batch < 1:
        raise CliError("UsageError", "--keys and --batch must be >= 1, --value-size >= 0")
    rng = random.Random(0)
    names = [b"key:%09d" % i for i in range(keys)]
    rng.shuffle(names)
    more = [b"bat:%09d" % i for i in range(keys)]
    value = bytes(rng.getrandbits(8) for _ in range(value_size))
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="abase-bench-", dir=directory) as scratch:
        db = _open_engine(os.path.join(scratch, "db"), node_id=1, compact_interval=None)
        try:
            put, get = db.put, db.get

            def puts() -> None:
                for k in names:
                    put(k, value)

            def gets() -> None:
                for k in names:
                    get(k)

            def put_many() -> None:
                for i in range(0, keys, batch):
                    db.put_many([(k, value) for k in more[i:i + batch]])

            def scan() -> None:
                for _ in db.scan():
                    pass

            phases: List[tuple] = [
                ("put", keys, puts), ("get (log)", keys, gets), (f"put_many (batches of {batch})", keys, put_many),
                ("scan (log)", 2 * keys, scan), ("compact", 2 * keys, lambda: db.compact(wait=True)),
                ("get (store)", keys, gets), ("scan (store)", 2 * keys, scan),
            ]
            for name, ops, fn in ui.progress(phases, total=len(phases), desc="bench", unit="phase"):
                results[name] = _timed(ops, fn)
        finally:
            db.close()
    data = {"command": "bench", "keys": keys, "value_size": value_size, "abase_engine": __version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "results": results}
    text = (f"{keys} keys of 13 B, values of {value_size} B, scratch store under "
            f"{directory or tempfile.gettempdir()} (one run; noisy on a shared machine)\n"
            + table([["phase", "ops", "seconds", "ops/s"]] + [
                [n, r["ops"], f"{r['seconds']:.3f}", f"{r['ops_per_s']:,}" if r["ops_per_s"] else "-"]
                for n, r in results.items()], indent="  "))
    return Outcome(data, text)
