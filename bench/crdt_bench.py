"""CRDT workloads of the benchmarks, shared by ``compare.py --crdt`` and
``test_bench_crdt.py`` (stdlib only, besides the stores under test).

The rows (issue 10's figures), each as ops/s of one loop:

* ``increment``: PNCounter ``ns.merge(key, PNCounter.increment(1))`` over
  ``keys`` random 16-byte keys, ``ops`` operations in a seeded random order
  (the Operation value is built once: operations are immutable values).
  Peers: ``rocksdict_rmw`` (``get``, add, ``put`` of an 8-byte counter) and
  ``lmdb_rmw`` (one write transaction per increment: get, add, put).
* ``counter_get``: ``ns.get`` of those counters, ``ops`` reads.
* ``orset_add``: ``ORSet.add`` of members already in a 1,000-member set
  (each add replaces the member's dot: the set stays at 1,000 members).
* ``get_applied``: ``ns.get`` of keys each holding 100 PNCounter operands
  received through ``apply`` (100 remote nodes, applied in batches of
  1,000 records interleaved across keys), ``ops`` reads; ``get_applied_cold``
  reads each key once with the fast path's state cache emptied first.
* ``put`` and ``get``: plain puts (8-byte values) and gets of the same keys
  in the default namespace, in the same process: the reference of the ratios.
"""

from __future__ import annotations

import os
import random
import struct
import time
from typing import Callable, Dict, List, Tuple

_U64 = struct.Struct("<Q")


def make_keys(n: int, seed: int) -> List[bytes]:
    """``n`` distinct random 16-byte keys (seeded)."""
    rng = random.Random(seed)
    seen = set()
    out = []
    while len(out) < n:
        k = rng.randbytes(16)
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def op_order(keys: List[bytes], ops: int, seed: int) -> List[bytes]:
    """``ops`` keys drawn from ``keys`` in a seeded random order."""
    rng = random.Random(seed + 1)
    return [keys[rng.randrange(len(keys))] for _ in range(ops)]


def timed(fn: Callable[[], None], n: int) -> float:
    """ops/s of one call of ``fn`` doing ``n`` operations."""
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def abase_rows(ae, path: str, keys: int, ops: int, seed: int, cold_keys: int = 2000) -> Dict[str, float]:
    """The engine's rows (see the module docstring), one fresh directory."""
    crdt = ae.crdt
    db = ae.open(path, node_id=1, compact_interval=None)
    try:
        ks = make_keys(keys, seed)
        order = op_order(ks, ops, seed)
        out: Dict[str, float] = {}
        c = db.namespace("c", merge=crdt.PNCounter())
        inc = crdt.PNCounter.increment(1)
        merge = c.merge

        def increments() -> None:
            for k in order:
                merge(k, inc)

        out["increment"] = timed(increments, ops)
        get = c.get

        def counter_gets() -> None:
            for k in order:
                get(k)

        out["counter_get"] = timed(counter_gets, ops)
        assert sum(v or 0 for v in c.get_many(ks)) == ops
        put, pget, v = db.put, db.get, b"\x01" * 8

        def puts() -> None:
            for k in order:
                put(k, v)

        def gets() -> None:
            for k in order:
                pget(k)

        out["put"] = timed(puts, ops)
        out["get"] = timed(gets, ops)
        # ORSet adds into a 1,000-member set
        s = db.namespace("s", merge=crdt.ORSet())
        members = [b"member-%06d" % i for i in range(1000)]
        for m in members:
            s.merge(b"set", crdt.ORSet.add(m))
        adds = [crdt.ORSet.add(members[i % 1000]) for i in range(ops)]
        smerge = s.merge

        def orset_adds() -> None:
            for a in adds:
                smerge(b"set", a)

        out["orset_add"] = timed(orset_adds, ops)
        assert len(s.get(b"set")) == 1000
        # 100 operands per key received through apply
        a = db.namespace("a", merge=crdt.PNCounter())
        n_applied = max(1, min(keys, ops // 100))
        aks = ks[:n_applied]
        now = db.now().physical_ms
        op = crdt.PNCounter()
        records = []
        for j in range(100):  # node 1000 + j increments every key once, 1 ms apart, in the past
            ts = ae.Timestamp(now - 5000 + j, 0, 1000 + j)
            operand = op.make_operand(crdt.PNCounter.increment(1), None, ts)
            records += [ae.Change("a", k, ae.Op.MERGE, operand, ts) for k in aks]
        for i in range(0, len(records), 1000):
            db.apply(records[i:i + 1000])
        aorder = op_order(aks, ops, seed + 7)
        aget = a.get

        def applied_gets() -> None:
            for k in aorder:
                aget(k)

        path_forget = getattr(a.get, "__self__", None)
        if path_forget is not None and hasattr(path_forget, "forget"):
            path_forget.forget()
        cold = aks[:cold_keys]

        def cold_gets() -> None:
            for k in cold:
                aget(k)

        out["get_applied_cold"] = timed(cold_gets, len(cold))
        out["get_applied"] = timed(applied_gets, ops)
        assert aget(aks[0]) == 100
        return out
    finally:
        db.close()


def rocksdict_rows(path: str, keys: int, ops: int, seed: int) -> Dict[str, float]:
    """rocksdict (WAL, no fsync): a read-modify-write counter, and plain put/get."""
    from rocksdict import Options, Rdict

    db = Rdict(path, options=Options(raw_mode=True))
    try:
        ks = make_keys(keys, seed)
        order = op_order(ks, ops, seed)
        get, pack, unpack = db.get, _U64.pack, _U64.unpack

        def rmw() -> None:
            for k in order:
                v = get(k)
                db[k] = pack((unpack(v)[0] if v is not None else 0) + 1)

        out = {"rocksdict_rmw": timed(rmw, ops)}
        assert sum(unpack(db[k])[0] for k in ks if db.get(k) is not None) == ops

        def gets() -> None:
            for k in order:
                get(k)

        out["rocksdict_get"] = timed(gets, ops)
        return out
    finally:
        db.close()


def lmdb_rows(path: str, keys: int, ops: int, seed: int) -> Dict[str, float]:
    """py-lmdb (sync=False): one write transaction per increment, and plain get."""
    import lmdb

    env = lmdb.open(path, map_size=1 << 34, sync=False, metasync=False)
    try:
        ks = make_keys(keys, seed)
        order = op_order(ks, ops, seed)
        begin, pack, unpack = env.begin, _U64.pack, _U64.unpack

        def rmw() -> None:
            for k in order:
                with begin(write=True) as txn:
                    v = txn.get(k)
                    txn.put(k, pack((unpack(v)[0] if v is not None else 0) + 1))

        out = {"lmdb_rmw": timed(rmw, ops)}
        with env.begin() as txn:
            get = txn.get

            def gets() -> None:
                for k in order:
                    get(k)

            out["lmdb_get"] = timed(gets, ops)
        return out
    finally:
        env.close()


#: (row, goal, how): the issue's figures, from the rows of one run.
TARGETS: List[Tuple[str, float, str]] = [
    ("increment / rocksdict RMW counter", 3.0, "increment/rocksdict_rmw"),
    ("increment (M ops/s)", 1.0, "increment/1e6"),
    ("increment / plain put (stretch)", 0.5, "increment/put"),
    ("counter get / plain get", 0.7, "counter_get/get"),
    ("ORSet add into 1,000 members / plain put", 0.2, "orset_add/put"),
    ("get of 100 applied operands / plain get", 0.5, "get_applied/get"),
]


def target_values(rows: Dict[str, float]) -> List[dict]:
    """Each target with its measured ratio (None when a row is missing)."""
    out = []
    for name, goal, how in TARGETS:
        a, b = how.split("/")
        num = rows.get(a)
        den = 1e6 if b == "1e6" else rows.get(b)
        value = num / den if num and den else None
        out.append({"target": name, "value": value, "goal": goal, "met": None if value is None else value >= goal})
    return out


def child_rows(cfg: dict) -> Dict[str, float]:
    """compare.py child: the rows of one store (cfg: store, keys, ops, seed, tmpdir)."""
    path = os.path.join(cfg["tmpdir"], "crdt-" + cfg["store"])
    keys, ops, seed = cfg["keys"], cfg["ops"], cfg["seed"]
    if cfg["store"] == "abase":
        import abase_engine as ae

        return abase_rows(ae, path, keys, ops, seed)
    if cfg["store"] == "rocksdict":
        return rocksdict_rows(path, keys, ops, seed)
    return lmdb_rows(path, keys, ops, seed)
