#!/usr/bin/env python3
"""Head-to-head benchmark of abase_engine against embedded key-value peers.

One command, one run::

    python bench/compare.py                       # 1M keys, 100 B values, every store
    python bench/compare.py --quick               # 20k keys: a smoke run in well under a minute
    python bench/compare.py --value-size 4096     # N defaults to 400 MiB / value size
    python bench/compare.py --stores lmdb,abase-process --workloads put_single,get_hit
    python bench/compare.py --engine-figures --no-compare   # engine-only figures
    python bench/compare.py --json out.json       # everything, plus machine info
    python bench/compare.py --n 200000 --repeat 3 # medians of 3 interleaved runs + spread
    python bench/compare.py --crdt --no-compare   # the CRDT rows only (engine, rocksdict, py-lmdb)

Why it is built this way
------------------------
* Every store runs in its OWN child process (``sys.executable bench/compare.py
  --child ...``), one after the other, so that one store's heap, page cache
  warmth inside the process, background threads or a crash cannot leak into
  another's numbers, and so that ``ru_maxrss`` is the peak of that store alone.
* Every child regenerates the same data from the same seed: N distinct
  16-byte random keys (inserted in generation order, i.e. random key order),
  values of ``--value-size`` random bytes, N further random "miss" keys, one
  seeded permutation for reads.  Regenerating is cheaper than piping 100+ MB.
* Throughput is total operations / wall time of the whole loop.  Latency is
  *sampled*: the loop runs in blocks of ``--stride`` operations (default 32);
  the first operation of every block is timed alone with a pair of
  ``time.perf_counter_ns()`` calls, the other ``stride - 1`` run untimed.  So
  the timer overhead (~2 x 40 ns) is paid on 1/stride of the operations and the
  throughput number is barely perturbed, and the percentiles come from N/stride
  samples (31k samples at 1M: p99.9 rests on ~31 observations).  Batched
  workloads time every batch (the latency is per batch of 1000); durable-put
  workloads time every put (fsync dominates, timer cost is irrelevant).
* The harness loop itself (Python call + loop overhead, ~50-100 ns/op) is in
  every number; the ``dict`` store shows how big it is.
* ``--repeat R`` runs every store R times, rounds interleaved across stores
  (so slow drifts in machine load hit every store alike); the tables then
  show, per workload, the run with the median ops/s and the spread
  (max - min) / median.  Without it every figure is a single run.
* abase: put_single gets its own store with the engine defaults (background
  compactor on).  The store that put_batch loads and every read runs on is
  opened with ``compact_interval=None`` so that get_hit / get_miss / scan are
  log-resident by construction and compaction happens only at the
  ``compact`` step (``compact(wait=True)``).  The durable store keeps the
  defaults.  ``--abase-opts '{"...": ...}'`` adds or overrides open options.

Stores (``--stores``; a peer whose module is missing is skipped with a message)
-------------------------------------------------------------------------------
abase-process, abase-sync (abase-none on request), lmdb (sync=False),
lmdb-sync, rocksdict (WAL, no fsync), rocksdict-sync (WriteOptions.sync),
plyvel (sync=False), plyvel-sync, sqlite (WAL, synchronous=NORMAL),
sqlite-full (WAL, synchronous=FULL), dict (in-memory upper bound).

Non-durable stores run: put_single, put_batch, get_hit, get_miss, scan,
overwrite, compact, get_hit_compacted, get_miss_compacted, scan_compacted.
Durable stores run: put_batch (one fsync per batch), durable_put_1t,
durable_put_8t.

Issue 13's rows (steady state, engine defaults: compactor on):

* put_kept (abase, plyvel, rocksdict, dict): N puts on a fresh store with
  the results kept in a list, as ``[db.put(k, v) for ...]`` does;
* put_batch_on, batch_ctx, get_hit_loaded (abase): a fresh store with the
  engine defaults loaded batch by batch, alternately with put_many
  (put_batch_on) and with ``db.batch()`` and 1000 ``b.put`` calls
  (batch_ctx), so both meet the same compactor activity; then gets of every
  key right away, while the compactor folds the load (compared with
  py-lmdb's get_hit);
* get_miss_compacted (every store): misses after the compact step;
* the foreground get/put p99 while compact() runs vs idle (the engine
  figure compaction_p99), run by default (``--no-p99`` skips it).

The ratio table divides abase-process by each peer for the non-durable
workloads and abase-sync by each durable peer for the durable ones.

Engine-only figures (``--engine-figures``) are described in
:func:`run_engine_figures`.

Only the standard library is used beyond the stores under test.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Dict, List
from itertools import islice

from benchutil import open_abase  # bench/ is on sys.path: compare.py runs as a script

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

KEY_SIZE = 16
BATCH = 1000
DEFAULT_STRIDE = 32
THREADS = 8

#: Workloads of the non-durable stores, in the order they run.
FAST_WORKLOADS = [
    "put_single", "put_kept", "put_batch_on", "get_hit_loaded", "batch_ctx",
    "put_batch", "get_hit", "get_miss", "scan", "overwrite",
    "compact", "get_hit_compacted", "get_miss_compacted", "scan_compacted",
]
#: Workloads of the durable stores, in the order they run.
DURABLE_WORKLOADS = ["put_batch", "durable_put_1t", "durable_put_8t"]
ALL_WORKLOADS = FAST_WORKLOADS + ["durable_put_1t", "durable_put_8t"]
#: Workloads left out of the ratio table (not comparable across stores).
NO_RATIO = {"compact"}
#: Workloads only some adapter kinds run (issue 13's rows): the engine-only
#: ones compare with its own rows or with a peer's get_hit (see targets()),
#: and put_kept runs where a million single puts take seconds, not minutes.
KIND_ONLY = {
    "put_kept": {"abase", "plyvel", "rocksdict", "dict"},
    "put_batch_on": {"abase"},
    "get_hit_loaded": {"abase"},
    "batch_ctx": {"abase"},
}

#: store name -> (adapter kind, durable?, options)
STORES = {
    "abase-process": ("abase", False, {"durability": "process"}),
    "abase-sync": ("abase", True, {"durability": "sync"}),
    "abase-none": ("abase", False, {"durability": "none"}),
    "lmdb": ("lmdb", False, {"sync": False}),
    "lmdb-sync": ("lmdb", True, {"sync": True}),
    "rocksdict": ("rocksdict", False, {"sync": False}),
    "rocksdict-sync": ("rocksdict", True, {"sync": True}),
    "plyvel": ("plyvel", False, {"sync": False}),
    "plyvel-sync": ("plyvel", True, {"sync": True}),
    "sqlite": ("sqlite", False, {"synchronous": "NORMAL"}),
    "sqlite-full": ("sqlite", True, {"synchronous": "FULL"}),
    "dict": ("dict", False, {}),
}
DEFAULT_STORES = [s for s in STORES if s != "abase-none"]
#: module to import for each adapter kind (for "is it installed?")
KIND_MODULE = {"abase": "abase_engine", "lmdb": "lmdb", "rocksdict": "rocksdict",
               "plyvel": "plyvel", "sqlite": "sqlite3", "dict": None}
#: distribution name for version lookup
KIND_DIST = {"abase": "abase_engine", "lmdb": "lmdb", "rocksdict": "rocksdict",
             "plyvel": "plyvel"}

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def dir_bytes(path: str) -> dict:
    """Bytes under ``path``: ``allocated`` (st_blocks, what the disk holds;
    sparse files count only their written pages) and ``apparent`` (st_size)."""
    alloc = apparent = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return {"allocated": alloc, "apparent": apparent}


def maxrss_kb() -> int:
    """Peak resident set size of this process so far, in KiB (Linux units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def proc_status_kb() -> dict:
    """Current RssAnon / RssFile / VmRSS of this process from /proc, in KiB."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


def percentiles_us(samples_ns: list) -> dict:
    """p50/p90/p99/p99.9/max of ``samples_ns`` in microseconds (nearest rank)."""
    if not samples_ns:
        return {}
    s = sorted(samples_ns)
    n = len(s)

    def rank(p: float) -> float:
        i = min(n - 1, max(0, int(p * n + 0.999999) - 1))
        return s[i] / 1000.0

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99),
            "p99.9": rank(0.999), "max": s[-1] / 1000.0, "samples": n}


def human(x: float) -> str:
    """1234567 -> '1.23M' (for ops/s columns)."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def fmt_us(x) -> str:
    """Latency cell: microseconds with 3 significant digits."""
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def dist_version(name: str) -> str | None:
    """Installed version of distribution ``name`` without importing it."""
    from importlib import metadata
    for cand in (name, name.replace("_", "-")):
        try:
            return metadata.version(cand)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    """CPU, cores, memory, OS, Python and the versions of every store."""
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for kind, dist in KIND_DIST.items():
        versions[kind] = dist_version(dist)
    import sqlite3
    versions["sqlite3"] = sqlite3.sqlite_version
    versions["sqlite3_module"] = "stdlib"
    info["versions"] = versions
    return info


# --------------------------------------------------------------------------
# Data generation (identical in every child: same seed, same bytes)
# --------------------------------------------------------------------------


class Data:
    """The seeded data set every child works on.

    keys      N distinct random 16-byte keys, in insertion (= random) order
    vals      N random values of ``value_size`` bytes
    miss      N random 16-byte keys that are not in ``keys``
    perm_keys ``keys`` in a seeded random order (for reads and overwrites)
    ov_vals   the overwrite values, aligned with ``perm_keys``
    batches   (key, value) lists of 1000 for put_batch

    Everything a workload iterates over is built here, before the baseline
    RSS is taken, so "store delta" is not inflated by harness lists.
    """

    def __init__(self, n: int, value_size: int, seed: int):
        rng = random.Random(seed)
        raw = rng.randbytes(KEY_SIZE * n)
        self.keys = [raw[i:i + KEY_SIZE] for i in range(0, KEY_SIZE * n, KEY_SIZE)]
        del raw
        keyset = set(self.keys)
        if len(keyset) != n:  # 2^-100-ish; deduplicate deterministically anyway
            seen = set()
            self.keys = [k for k in self.keys if not (k in seen or seen.add(k))]
            while len(self.keys) < n:
                k = rng.randbytes(KEY_SIZE)
                if k not in seen:
                    seen.add(k)
                    self.keys.append(k)
            keyset = seen
        # randbytes() takes at most 2^31 bits at once: draw values in chunks.
        per = max(1, (32 << 20) // value_size)
        self.vals = []
        for start in range(0, n, per):
            m = min(per, n - start)
            vraw = rng.randbytes(value_size * m)
            self.vals.extend(vraw[i * value_size:(i + 1) * value_size] for i in range(m))
        del vraw
        mrng = random.Random(seed + 1)
        mraw = mrng.randbytes(KEY_SIZE * n)
        self.miss = [k for k in (mraw[i:i + KEY_SIZE] for i in range(0, KEY_SIZE * n, KEY_SIZE))
                     if k not in keyset]
        del mraw, keyset
        perm = list(range(n))
        rng.shuffle(perm)
        self.perm = perm
        self.perm_keys = [self.keys[i] for i in perm]
        # overwrite: key perm[j] gets the old value of key perm[j]+1
        self.ov_vals = [self.vals[(i + 1) % n] for i in perm]
        pairs = list(zip(self.keys, self.vals))
        self.batches = [pairs[i:i + BATCH] for i in range(0, n, BATCH)]
        del pairs
        self.n = n
        self.value_size = value_size
        self.seed = seed

    def durable_keys(self, count: int) -> list:
        """``count`` fresh keys for the durable-put workloads (not in ``keys``;
        a 0xFF prefix byte keeps them disjoint from the random set in practice
        and the chance of a clash is 2^-120 anyway)."""
        rng = random.Random(self.seed + 2)
        raw = rng.randbytes(KEY_SIZE * count)
        return [raw[i:i + KEY_SIZE] for i in range(0, KEY_SIZE * count, KEY_SIZE)]


# --------------------------------------------------------------------------
# Store adapters
# --------------------------------------------------------------------------


class Store:
    """What the harness needs from a store.

    ``put``/``get`` are plain callables (bound methods where the store allows)
    so that the timed loops add nothing but the call itself.
    """

    name = "?"

    def __init__(self, path: str, **opts):
        self.path = path
        self.opts = opts

    put = None  # (key, value) -> None
    get = None  # key -> bytes | None

    def put_batch(self, pairs: list) -> None:
        raise NotImplementedError

    def scan(self):
        """Iterator over (key, value) in key order."""
        raise NotImplementedError

    def compact(self) -> None:
        """Fold everything into the store's steady-state layout (may be a no-op)."""

    def begin_reads(self) -> None:
        """Called before a read workload (py-lmdb: open one read txn)."""

    def end_reads(self) -> None:
        """Called after a read workload."""

    def thread_put(self):
        """A put callable usable from a new thread (sqlite: own connection)."""
        return self.put

    def stats(self) -> dict:
        return {}

    def version(self) -> str:
        return ""

    def close(self) -> None:
        pass


def _report_dropped(name, value, msg) -> None:
    print(f"  [abase] option {name}={value!r} refused ({msg}): dropped", file=sys.stderr)


def _open_abase(ae, path: str, opts: dict):
    """:func:`benchutil.open_abase`, reporting dropped options on stderr;
    returns (db, accepted opts)."""
    return open_abase(ae, path, opts, report=_report_dropped)


class AbaseStore(Store):
    """abase_engine through its public API (put_many for batches)."""

    def __init__(self, path, durability="process", extra=None):
        super().__init__(path)
        import abase_engine as ae
        self.ae = ae
        self.db, self.accepted_opts = _open_abase(ae, path, {"durability": durability, **(extra or {})})
        self.put = self.db.put
        self.get = self.db.get
        self.put_batch = self.db.put_many
        self.batch_api = "put_many"

    def scan(self):
        return self.db.scan()

    def compact(self):
        self.db.compact(wait=True)

    def stats(self):
        return safe_stats(self.db)

    def version(self):
        return getattr(self.ae, "__version__", "") or (dist_version("abase_engine") or "")

    def close(self):
        self.db.close()


class LmdbStore(Store):
    """py-lmdb: one write txn per put, one txn (cursor.putmulti) per batch,
    one read txn for a whole read workload, cursor iteration for scans."""

    def __init__(self, path, sync=False, map_size=1 << 37):
        super().__init__(path)
        import lmdb
        self.lmdb = lmdb
        self.env = lmdb.open(path, map_size=map_size, sync=sync, metasync=sync,
                             max_dbs=0, lock=True)
        env = self.env
        self._rtxn = None

        def put(k, v, begin=env.begin):
            txn = begin(write=True)
            txn.put(k, v)
            txn.commit()

        self.put = put
        self.get = self._get_own_txn

    def _get_own_txn(self, k):
        with self.env.begin() as txn:
            return txn.get(k)

    def put_batch(self, pairs):
        with self.env.begin(write=True) as txn:
            txn.cursor().putmulti(pairs)

    def begin_reads(self):
        self._rtxn = self.env.begin()
        self.get = self._rtxn.get

    def end_reads(self):
        if self._rtxn is not None:
            self._rtxn.abort()
            self._rtxn = None
        self.get = self._get_own_txn

    def scan(self):
        with self.env.begin() as txn:
            yield from txn.cursor().iternext(keys=True, values=True)

    def compact(self):
        self.env.sync(True)

    def stats(self):
        return {k: v for k, v in self.env.stat().items()}

    def version(self):
        return f"py-lmdb {self.lmdb.__version__}, LMDB {'.'.join(map(str, self.lmdb.version()))}"

    def close(self):
        self.end_reads()
        self.env.close()


class RocksdictStore(Store):
    """rocksdict in raw (bytes) mode with default RocksDB options; the sync
    variant sets ``WriteOptions.sync = True`` for every write."""

    def __init__(self, path, sync=False):
        super().__init__(path)
        import rocksdict
        self.rd = rocksdict
        self.db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
        if sync:
            wo = rocksdict.WriteOptions()
            wo.sync = True
            self.db.set_write_options(wo)
        self.put = self.db.put
        self.get = self.db.get

    def put_batch(self, pairs):
        wb = self.rd.WriteBatch(raw_mode=True)
        wput = wb.put
        for k, v in pairs:
            wput(k, v)
        self.db.write(wb)

    def scan(self):
        return self.db.items()

    def compact(self):
        self.db.compact_range(None, None)

    def stats(self):
        out = {}
        for prop in ("rocksdb.estimate-num-keys", "rocksdb.total-sst-files-size",
                     "rocksdb.num-files-at-level0"):
            try:
                out[prop] = self.db.property_int_value(prop)
            except Exception:
                pass
        return out

    def version(self):
        return f"rocksdict {dist_version('rocksdict')}"

    def close(self):
        self.db.close()


class PlyvelStore(Store):
    """plyvel (LevelDB) with default options; ``sync`` on every write when durable."""

    def __init__(self, path, sync=False):
        super().__init__(path)
        import functools
        import plyvel
        self.plyvel = plyvel
        self.sync = sync
        self.db = plyvel.DB(path, create_if_missing=True)
        self.put = functools.partial(self.db.put, sync=True) if sync else self.db.put
        self.get = self.db.get

    def put_batch(self, pairs):
        with self.db.write_batch(sync=self.sync) as wb:
            wput = wb.put
            for k, v in pairs:
                wput(k, v)

    def scan(self):
        return self.db.iterator()

    def compact(self):
        self.db.compact_range()

    def version(self):
        return f"plyvel {self.plyvel.__version__}, LevelDB {getattr(self.plyvel, '__leveldb_version__', '?')}"

    def close(self):
        self.db.close()


class SqliteStore(Store):
    """sqlite3: ``kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID`` in WAL mode;
    autocommit per put, one transaction + executemany per batch."""

    SQL_PUT = "INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)"
    SQL_GET = "SELECT v FROM kv WHERE k = ?"

    def __init__(self, path, synchronous="NORMAL"):
        super().__init__(path)
        import sqlite3
        self.sqlite3 = sqlite3
        self.file = os.path.join(path, "kv.sqlite")
        self.synchronous = synchronous
        self.conn = self._connect()
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        self.put = self._make_put(self.conn)
        ex = self.conn.execute
        sql = self.SQL_GET

        def get(k):
            row = ex(sql, (k,)).fetchone()
            return row[0] if row else None

        self.get = get
        self._thread_conns = []

    def _connect(self):
        c = self.sqlite3.connect(self.file, isolation_level=None, check_same_thread=False, timeout=120)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={self.synchronous}")
        return c

    def _make_put(self, conn):
        ex = conn.execute
        sql = self.SQL_PUT

        def put(k, v):
            ex(sql, (k, v))

        return put

    def put_batch(self, pairs):
        c = self.conn
        c.execute("BEGIN")
        c.executemany(self.SQL_PUT, pairs)
        c.execute("COMMIT")

    def scan(self):
        return self.conn.execute("SELECT k, v FROM kv ORDER BY k")

    def compact(self):
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def thread_put(self):
        c = self._connect()
        self._thread_conns.append(c)
        return self._make_put(c)

    def version(self):
        return f"SQLite {self.sqlite3.sqlite_version}"

    def close(self):
        for c in self._thread_conns:
            c.close()
        self.conn.close()


class DictStore(Store):
    """A Python dict: the in-memory upper bound, i.e. the harness overhead.
    Its scan iterates in insertion order (a dict has no key order)."""

    def __init__(self, path):
        super().__init__(path)
        self.d = {}
        self.put = self.d.__setitem__
        self.get = self.d.get

    def put_batch(self, pairs):
        self.d.update(pairs)

    def scan(self):
        return iter(self.d.items())

    def version(self):
        return f"CPython {sys.version.split()[0]} dict"


ADAPTERS = {"abase": AbaseStore, "lmdb": LmdbStore, "rocksdict": RocksdictStore,
            "plyvel": PlyvelStore, "sqlite": SqliteStore, "dict": DictStore}


# --------------------------------------------------------------------------
# Timed loops
# --------------------------------------------------------------------------


def timed_put_loop(put, keys, vals, stride):
    """Call ``put(k, v)`` for all pairs; time the first op of every block of
    ``stride`` individually. Returns (total_ns, samples_ns)."""
    pc = time.perf_counter_ns
    lat = []
    app = lat.append
    n = len(keys)
    t0 = pc()
    for s in range(0, n, stride):
        a = pc()
        put(keys[s], vals[s])
        app(pc() - a)
        e = s + stride
        for k, v in zip(keys[s + 1:e], vals[s + 1:e]):
            put(k, v)
    return pc() - t0, lat


def timed_get_loop(get, keys, stride):
    """Call ``get(k)`` for every key, sampling like :func:`timed_put_loop`.
    Returns (total_ns, samples_ns, number of non-None results)."""
    pc = time.perf_counter_ns
    lat = []
    app = lat.append
    n = len(keys)
    found = 0
    t0 = pc()
    for s in range(0, n, stride):
        a = pc()
        r = get(keys[s])
        app(pc() - a)
        if r is not None:
            found += 1
        for k in keys[s + 1:s + stride]:
            if get(k) is not None:
                found += 1
    return pc() - t0, lat, found


def timed_put_kept_loop(put, keys, vals, stride):
    """:func:`timed_put_loop` keeping every result in a list, as
    ``[db.put(k, v) for ...]`` does (a returned object per put stays alive).
    Returns (total_ns, samples_ns, kept results)."""
    pc = time.perf_counter_ns
    lat = []
    app = lat.append
    kept = []
    n = len(keys)
    t0 = pc()
    for s in range(0, n, stride):
        a = pc()
        r = put(keys[s], vals[s])
        app(pc() - a)
        kept.append(r)
        e = s + stride
        kept += [put(k, v) for k, v in zip(keys[s + 1:e], vals[s + 1:e])]
    return pc() - t0, lat, kept


def timed_alternating_batches(put_batch, batch, batches):
    """Load ``batches`` alternating between ``put_batch(pairs)`` (even
    batches) and ``with batch() as b: b.put(k, v) ...`` (odd batches), each
    timed: both ways of writing a batch then meet the same store, the same
    compactor activity and the same machine load. Returns
    ((ns, samples, records) of put_batch, (ns, samples, records) of batch())."""
    pc = time.perf_counter_ns
    many, ctx = [0, [], 0], [0, [], 0]
    for i, pairs in enumerate(batches):
        if i % 2 == 0:
            a = pc()
            put_batch(pairs)
            d = pc() - a
            side = many
        else:
            a = pc()
            with batch() as b:
                for k, v in pairs:
                    b.put(k, v)
            d = pc() - a
            side = ctx
        side[0] += d
        side[1].append(d)
        side[2] += len(pairs)
    return tuple(many), tuple(ctx)


def timed_batch_loop(put_batch, batches):
    """Call ``put_batch`` once per batch, timing every call."""
    pc = time.perf_counter_ns
    lat = []
    t0 = pc()
    for b in batches:
        a = pc()
        put_batch(b)
        lat.append(pc() - a)
    return pc() - t0, lat


def timed_scan(scan, stride):
    """Iterate ``scan()`` to the end; time every stride-th ``next()``.
    The first sample includes creating the iterator (seek / sort cost).
    Returns (total_ns, samples_ns, items)."""
    pc = time.perf_counter_ns
    lat = []
    n = 0
    t0 = pc()
    a = pc()
    it = iter(scan())
    while True:
        try:
            next(it)
        except StopIteration:
            break
        lat.append(pc() - a)
        n += 1
        for _ in islice(it, stride - 1):
            n += 1
        a = pc()
    return pc() - t0, lat, n


def threaded_durable_puts(store, keys, vals, threads, per_thread, time_cap_s):
    """``threads`` threads each put ``per_thread`` fresh keys (stopping early
    after ``time_cap_s``); every put is timed. Returns (wall_ns, samples, ops)."""
    barrier = threading.Barrier(threads + 1)
    results = [None] * threads
    puts = [store.thread_put() for _ in range(threads)]
    errors = []

    def worker(t):
        put = puts[t]
        ks = keys[t * per_thread:(t + 1) * per_thread]
        vs = vals[t * per_thread:(t + 1) * per_thread]
        pc = time.perf_counter_ns
        lat = []
        barrier.wait()
        deadline = pc() + int(time_cap_s * 1e9)
        try:
            for k, v in zip(ks, vs):
                a = pc()
                put(k, v)
                b = pc()
                lat.append(b - a)
                if b > deadline:
                    break
        except Exception as e:  # keep the other threads' numbers
            errors.append(repr(e))
        results[t] = lat

    ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    barrier.wait()
    t0 = time.perf_counter_ns()
    for th in ths:
        th.join()
    wall = time.perf_counter_ns() - t0
    samples = [x for r in results if r for x in r]
    if errors:
        raise RuntimeError(f"{len(errors)} thread(s) failed: {errors[0]}")
    return wall, samples, len(samples)


# --------------------------------------------------------------------------
# Child: one store, all its workloads
# --------------------------------------------------------------------------


def _record(results, workload, ops, total_ns, samples, unit, **extra):
    secs = total_ns / 1e9
    row = {"workload": workload, "ops": ops, "seconds": secs,
           "ops_per_s": ops / secs if secs > 0 else None,
           "latency_us": percentiles_us(samples), "latency_unit": unit}
    row.update(extra)
    results.append(row)
    lat = row["latency_us"]
    print(f"  {workload:<18} {human(row['ops_per_s'] or 0):>8} ops/s  p50 {fmt_us(lat.get('p50'))} us"
          f"  p99 {fmt_us(lat.get('p99'))} us  ({secs:.2f} s)", file=sys.stderr, flush=True)


def _verify(store, data, sample=2000) -> list:
    """Untimed correctness spot check: hits return their value, misses None."""
    problems = []
    store.begin_reads()
    try:
        for i in range(0, data.n, max(1, data.n // sample)):
            got = store.get(data.keys[i])
            if got != data.vals[i]:
                problems.append(f"get(keys[{i}]) returned {got[:16] if got else got!r}... expected the stored value")
                break
        for k in data.miss[:sample]:
            if store.get(k) is not None:
                problems.append("get(miss key) returned a value")
                break
    finally:
        store.end_reads()
    return problems


def run_child(cfg: dict) -> dict:
    """Run every workload of ``cfg['store']`` and return the result dict."""
    name = cfg["store"]
    kind, durable, opts = STORES[name]
    opts = dict(opts)
    opts_main = dict(opts)
    if kind == "abase":
        user = cfg.get("abase_opts") or {}
        opts["extra"] = dict(user)
        # The store the reads run on gets no background compactor, so that
        # get_hit/get_miss/scan are log-resident by construction and compaction
        # happens exactly at the "compact" step; put_single (own store) and the
        # durable stores keep the engine defaults.  --abase-opts overrides.
        opts_main["extra"] = dict(user) if durable else {"compact_interval": None, **user}
    out = {"store": name, "kind": kind, "durable": durable, "results": [],
           "errors": [], "notes": []}
    workdir = tempfile.mkdtemp(prefix=f"abase-bench-{name}-", dir=cfg.get("tmpdir"))
    try:
        t = time.perf_counter()
        data = Data(cfg["n"], cfg["value_size"], cfg["seed"])
        gc.collect()
        out["data_gen_s"] = time.perf_counter() - t
        out["rss_baseline_kb"] = maxrss_kb()
        stride = cfg["stride"]
        wanted = cfg["workloads"]
        plan = DURABLE_WORKLOADS if durable else FAST_WORKLOADS
        plan = [w for w in plan if w in wanted and kind in KIND_ONLY.get(w, {kind})]
        if kind == "dict":  # nothing to compact in a dict
            plan = [w for w in plan if w != "compact"]
        print(f"[{name}] N={data.n} value={data.value_size}B plan={plan}", file=sys.stderr, flush=True)
        adapter = ADAPTERS[kind]
        res = out["results"]

        def guarded(workload, fn):
            try:
                fn()
            except Exception as e:
                out["errors"].append({"workload": workload, "error": repr(e),
                                      "traceback": traceback.format_exc(limit=6)})
                print(f"  {workload}: ERROR {e!r}", file=sys.stderr, flush=True)

        # put_single: its own store, thrown away afterwards.
        if "put_single" in plan:
            p = os.path.join(workdir, "single")
            os.mkdir(p)
            s = adapter(p, **opts)
            out["version"] = s.version()

            def w():
                total, lat = timed_put_loop(s.put, data.keys, data.vals, stride)
                _record(res, "put_single", data.n, total, lat, f"op (1 in {stride} sampled)")

            guarded("put_single", w)
            s.close()
            out["disk_after_put_single"] = dir_bytes(p)
            shutil.rmtree(p, ignore_errors=True)
            del s
            gc.collect()

        # put_kept: its own store (engine defaults), the results kept alive.
        if "put_kept" in plan:
            p = os.path.join(workdir, "kept")
            os.mkdir(p)
            s = adapter(p, **opts)

            def w():
                total, lat, kept = timed_put_kept_loop(s.put, data.keys, data.vals, stride)
                _record(res, "put_kept", data.n, total, lat, f"op (1 in {stride} sampled), results kept")
                del kept[:]

            guarded("put_kept", w)
            s.close()
            shutil.rmtree(p, ignore_errors=True)
            del s
            gc.collect()

        # abase with the engine defaults (compactor on): a load that alternates
        # put_many and db.batch() batch by batch, then gets right away while
        # the compactor folds it.
        if any(x in plan for x in ("put_batch_on", "batch_ctx", "get_hit_loaded")):
            p = os.path.join(workdir, "loaded")
            os.mkdir(p)
            s = adapter(p, **opts)

            def w():
                many, ctx = timed_alternating_batches(s.put_batch, s.db.batch, data.batches)
                _record(res, "put_batch_on", many[2], many[0], many[1],
                        f"batch of {BATCH} (put_many; alternating with batch_ctx, compactor on)")
                _record(res, "batch_ctx", ctx[2], ctx[0], ctx[1],
                        f"db.batch() of {BATCH} b.put calls (alternating with put_batch_on)")

            guarded("put_batch_on", w)
            if "get_hit_loaded" in plan:
                def w():
                    total, lat, found = timed_get_loop(s.get, data.perm_keys, stride)
                    st = s.stats()
                    _record(res, "get_hit_loaded", data.n, total, lat, f"op (1 in {stride} sampled), compactor on",
                            found=found, index_keys_after=st.get("index_keys"),
                            compactions_after=st.get("compactions"))
                    if found != data.n:
                        out["errors"].append({"workload": "get_hit_loaded",
                                              "error": f"found {found} of {data.n}"})
                guarded("get_hit_loaded", w)
            s.close()
            shutil.rmtree(p, ignore_errors=True)
            del s
            gc.collect()

        p = os.path.join(workdir, "main")
        os.mkdir(p)
        s = adapter(p, **opts_main)
        out["version"] = s.version()
        if kind == "abase":
            out["abase_batch_api"] = s.batch_api
            out["abase_open_opts_main"] = dict(s.accepted_opts)
            out["abase_open_opts_single"] = {"durability": opts["durability"], **opts["extra"]}

        batches = data.batches
        if "put_batch" in plan:
            def w():
                total, lat = timed_batch_loop(s.put_batch, batches)
                _record(res, "put_batch", data.n, total, lat, f"batch of {BATCH}")
            guarded("put_batch", w)
        elif any(x in plan for x in ("get_hit", "get_miss", "scan", "overwrite", "compact",
                                     "get_hit_compacted", "get_miss_compacted", "scan_compacted")):
            guarded("load", lambda: timed_batch_loop(s.put_batch, batches))

        if not durable and any(x in plan for x in ("get_hit", "get_miss", "scan")):
            out["verify_after_load"] = _verify(s, data)
            out["stats_before_reads"] = s.stats()

        def get_workload(wname, keys, expect_found):
            def w():
                s.begin_reads()
                try:
                    total, lat, found = timed_get_loop(s.get, keys, stride)
                finally:
                    s.end_reads()
                _record(res, wname, len(keys), total, lat, f"op (1 in {stride} sampled)", found=found)
                if found != expect_found:
                    out["errors"].append({"workload": wname,
                                          "error": f"found {found} of {len(keys)}, expected {expect_found}"})
            guarded(wname, w)

        def scan_workload(wname):
            def w():
                s.begin_reads()
                try:
                    total, lat, items = timed_scan(s.scan, stride)
                finally:
                    s.end_reads()
                _record(res, wname, items, total, lat, f"next() (1 in {stride} sampled; first includes iterator creation)")
                if items != data.n:
                    out["errors"].append({"workload": wname, "error": f"scan yielded {items} items, expected {data.n}"})
                if kind != "dict":
                    head = [kv[0] for kv in islice(s.scan(), 5000)]
                    if head != sorted(head):
                        out["errors"].append({"workload": wname, "error": "scan not in key order"})
            guarded(wname, w)

        if "get_hit" in plan:
            get_workload("get_hit", data.perm_keys, data.n)
        if "get_miss" in plan:
            get_workload("get_miss", data.miss, 0)
        if "scan" in plan:
            scan_workload("scan")
        if "overwrite" in plan:
            def w():
                total, lat = timed_put_loop(s.put, data.perm_keys, data.ov_vals, stride)
                _record(res, "overwrite", data.n, total, lat, f"op (1 in {stride} sampled)")
            guarded("overwrite", w)
        if "compact" in plan:
            out["disk_before_compact"] = dir_bytes(p)
            out["stats_before_compact"] = s.stats()

            def w():
                t0 = time.perf_counter_ns()
                s.compact()
                total = time.perf_counter_ns() - t0
                _record(res, "compact", data.n, total, [total], "whole call (ops = live keys)")
            guarded("compact", w)
            out["stats_after_compact"] = s.stats()
        if "get_hit_compacted" in plan:
            get_workload("get_hit_compacted", data.perm_keys, data.n)
        if "get_miss_compacted" in plan:
            get_workload("get_miss_compacted", data.miss, 0)
        if "scan_compacted" in plan:
            scan_workload("scan_compacted")

        if durable and any(w_ in plan for w_ in ("durable_put_1t", "durable_put_8t")):
            per = cfg["durable_per_thread"]
            dkeys = data.durable_keys(per * (THREADS + 1))
            dvals = [data.vals[i % data.n] for i in range(len(dkeys))]
            cap = cfg["durable_seconds"]
            if "durable_put_1t" in plan:
                def w():
                    wall, lat, ops = threaded_durable_puts(s, dkeys, dvals, 1, per, cap)
                    _record(res, "durable_put_1t", ops, wall, lat, "op (all timed)", threads=1)
                guarded("durable_put_1t", w)
            if "durable_put_8t" in plan:
                def w():
                    wall, lat, ops = threaded_durable_puts(s, dkeys[per:], dvals[per:], THREADS, per, cap)
                    _record(res, "durable_put_8t", ops, wall, lat, "op (all timed)", threads=THREADS)
                guarded("durable_put_8t", w)

        out["stats_final"] = s.stats()
        out["rss_end_kb"] = proc_status_kb()  # anon vs file-backed (mmap) split, before close
        s.close()
        out["disk_final"] = dir_bytes(p)
        out["rss_peak_kb"] = maxrss_kb()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------
# Engine-only figures (each in its own child process)
# --------------------------------------------------------------------------

#: Options asked of abase for the "uncompacted log" figures: no background
#: compaction thread (the figures add a segment_size that holds the whole log).
#: Options the engine does not know are dropped by _open_abase (and reported).
NO_COMPACT_OPTS = {"compact_interval": None}


def safe_stats(db) -> dict:
    """``db.stats()`` as a dict, or ``{"error": ...}`` if the call raises
    (so one failing introspection call does not lose a whole figure)."""
    try:
        return dict(db.stats())
    except Exception as e:
        print(f"  [abase] stats() raised {e!r}", file=sys.stderr)
        tb = traceback.format_exc().splitlines()
        return {"error": repr(e), "traceback": "\n".join(tb[-10:])}


def _per_key(st: dict, field: str = "index_bytes"):
    """``st[field] / st['keys']`` or None when either is missing."""
    if field in st and st.get("keys"):
        return st[field] / st["keys"]
    return None


def _stream_put(db, n, value_size, seed, batch=BATCH):
    """Put ``n`` random keys with ``value_size`` random values, generated per
    batch so the harness holds no data set in memory. Returns user bytes."""
    rng = random.Random(seed)
    done = 0
    user = 0
    vpool = rng.randbytes(value_size + 4096)
    while done < n:
        m = min(batch, n - done)
        raw = rng.randbytes(KEY_SIZE * m)
        pairs = []
        for i in range(m):
            off = (done + i) * 7 % 4096
            pairs.append((raw[i * KEY_SIZE:(i + 1) * KEY_SIZE], vpool[off:off + value_size]))
        db.put_many(pairs)
        done += m
        user += m * (KEY_SIZE + value_size)
    return user


def fig_memory(cfg: dict) -> dict:
    """Bytes of memory per live key after loading ``n`` keys: the engine's own
    ``stats()['index_bytes'] / keys`` and the anonymous-RSS delta of the process
    (values are generated per batch, so the harness keeps nothing alive)."""
    import abase_engine as ae
    n = cfg["n"]
    workdir = tempfile.mkdtemp(prefix="abase-fig-mem-", dir=cfg.get("tmpdir"))
    try:
        gc.collect()
        before = proc_status_kb()
        # No background compaction: every key is log-resident, the index's worst case.
        db, accepted = _open_abase(ae, workdir, {"durability": "none", **NO_COMPACT_OPTS,
                                                 **cfg.get("abase_opts", {})})
        t = time.perf_counter()
        _stream_put(db, n, cfg["value_size"], cfg["seed"])
        load_s = time.perf_counter() - t
        gc.collect()
        after = proc_status_kb()
        st = safe_stats(db)
        out = {"n": n, "load_s": load_s, "open_opts": accepted, "stats_loaded": st,
               "rss_before_kb": before, "rss_after_kb": after,
               "index_bytes_per_key": _per_key(st),
               "rss_anon_delta_per_key": (after.get("RssAnon", 0) - before.get("RssAnon", 0)) * 1024 / n,
               "rss_delta_per_key": (after.get("VmRSS", 0) - before.get("VmRSS", 0)) * 1024 / n}
        if n <= cfg.get("mem_compact_max", 2_000_000):
            t = time.perf_counter()
            db.compact(wait=True)
            out["compact_s"] = time.perf_counter() - t
            gc.collect()
            st2 = safe_stats(db)
            out["stats_compacted"] = st2
            out["index_bytes_per_key_compacted"] = _per_key(st2)
            out["rss_after_compact_kb"] = proc_status_kb()
        else:
            out["compact_s"] = None
            out["note"] = "compaction skipped at this size (time budget)"
        db.close()
        out["disk"] = dir_bytes(workdir)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _evict_page_cache(path: str) -> bool:
    """fdatasync + POSIX_FADV_DONTNEED every file under ``path`` so the next
    read comes from the device (no root needed; clean pages only)."""
    ok = hasattr(os, "posix_fadvise")
    for root, _d, files in os.walk(path):
        for f in files:
            try:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                if ok:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return ok


def _segment_for(nbytes: float) -> int:
    """A segment size (4 KiB multiple, engine max 2 GiB) that holds ``nbytes``
    of log in one segment with headroom, so nothing is ever sealed."""
    want = max(64 << 20, int(nbytes * 1.3))
    return min(1 << 31, (want + 4095) // 4096 * 4096)


def fig_open_write(cfg: dict) -> dict:
    """Write ``gib`` GiB of uncompacted log (by ``stats()['log_bytes']``, i.e.
    record headers included) into ``cfg['path']`` and close."""
    import abase_engine as ae
    target = cfg["gib"] * (1 << 30)
    db, accepted = _open_abase(ae, cfg["path"], {"durability": "none", **NO_COMPACT_OPTS,
                                                 "segment_size": _segment_for(target),
                                                 **cfg.get("abase_opts", {})})
    chunk = max(1000, int(target / (KEY_SIZE + cfg["value_size"]) / 50))
    n = user = 0
    t = time.perf_counter()
    while True:
        st = safe_stats(db)
        done = st.get("log_bytes", user) if "error" not in st else user
        if done >= target:
            break
        m = min(chunk, max(1000, int((target - done) / (KEY_SIZE + cfg["value_size"]))))
        user += _stream_put(db, m, cfg["value_size"], cfg["seed"] + n)
        n += m
    write_s = time.perf_counter() - t
    st = safe_stats(db)
    db.close()
    return {"n": n, "user_bytes": user, "write_s": write_s, "open_opts": accepted,
            "stats": st, "disk": dir_bytes(cfg["path"])}


def fig_open_read(cfg: dict) -> dict:
    """Time ``ae.open`` (+ one get, so a lazily built index is included) of
    the log in ``cfg['path']``; ``cold`` evicts its pages from the page cache first."""
    import abase_engine as ae
    evicted = _evict_page_cache(cfg["path"]) if cfg.get("cold") else False
    rss0 = proc_status_kb()
    t = time.perf_counter_ns()
    db, accepted = _open_abase(ae, cfg["path"], {"durability": "none", **NO_COMPACT_OPTS,
                                                 "segment_size": _segment_for(cfg["gib"] * (1 << 30)),
                                                 **cfg.get("abase_opts", {})})
    open_ns = time.perf_counter_ns() - t
    db.get(b"\x00" * KEY_SIZE)
    ready_ns = time.perf_counter_ns() - t
    st = safe_stats(db)
    db.close()
    return {"open_s": open_ns / 1e9, "open_plus_get_s": ready_ns / 1e9, "stats": st,
            "cold": bool(cfg.get("cold")), "evicted": evicted,
            "rss_before_kb": rss0, "maxrss_kb": maxrss_kb()}


def fig_write_amp(cfg: dict) -> dict:
    """Overwrite-heavy run: ``keys`` keys, each written ``rounds`` times in
    random order with the engine's default compaction, then compact(wait=True).
    WA = (log_bytes_written + store_bytes_written) / user bytes."""
    import abase_engine as ae
    workdir = tempfile.mkdtemp(prefix="abase-fig-wa-", dir=cfg.get("tmpdir"))
    try:
        db, accepted = _open_abase(ae, workdir, {"durability": "process", **cfg.get("abase_opts", {})})
        rng = random.Random(cfg["seed"])
        nk, rounds, vs = cfg["keys"], cfg["rounds"], cfg["value_size"]
        keys = [rng.randbytes(KEY_SIZE) for _ in range(nk)]
        vpool = rng.randbytes(vs + 4096)
        user = 0
        t = time.perf_counter()
        for r in range(rounds):
            order = keys[:]
            rng.shuffle(order)
            for i in range(0, nk, BATCH):
                pairs = [(k, vpool[(r * 131 + j) % 4096:(r * 131 + j) % 4096 + vs])
                         for j, k in enumerate(order[i:i + BATCH])]
                db.put_many(pairs)
                user += sum(len(k) + len(v) for k, v in pairs)
        write_s = time.perf_counter() - t
        st_before = safe_stats(db)
        t = time.perf_counter()
        db.compact(wait=True)
        compact_s = time.perf_counter() - t
        st = safe_stats(db)
        db.close()
        ok = user and "log_bytes_written" in st and "store_bytes_written" in st
        written = st.get("log_bytes_written", 0) + st.get("store_bytes_written", 0)
        return {"keys": nk, "rounds": rounds, "value_size": vs, "user_bytes": user,
                "write_s": write_s, "compact_s": compact_s, "stats_before_compact": st_before,
                "stats": st, "open_opts": accepted,
                "write_amplification": written / user if ok else None,
                "log_wa": st["log_bytes_written"] / user if ok else None,
                "store_wa": st["store_bytes_written"] / user if ok else None,
                "disk": dir_bytes(workdir)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fig_compaction_p99(cfg: dict) -> dict:
    """Foreground get/put latency while ``compact(wait=True)`` runs in another
    thread vs. with the compactor idle.  Every op is timed.  The idle phase
    runs ``ops`` operations (90% get of a random live key, 10% overwrite); the
    busy phase runs the same sequence until compaction finishes (or ``ops``)."""
    import abase_engine as ae
    workdir = tempfile.mkdtemp(prefix="abase-fig-p99-", dir=cfg.get("tmpdir"))
    try:
        n, vs = cfg["n"], cfg["value_size"]
        db, accepted = _open_abase(ae, workdir, {"durability": "process", **NO_COMPACT_OPTS,
                                                 "segment_size": _segment_for(2 * n * (KEY_SIZE + vs + 64)),
                                                 **cfg.get("abase_opts", {})})
        rng = random.Random(cfg["seed"])
        keys = [rng.randbytes(KEY_SIZE) for _ in range(n)]
        vpool = rng.randbytes(vs + 4096)
        for rnd in range(2):  # two versions of every key: compaction has real work
            for i in range(0, n, BATCH):
                pairs = [(k, vpool[(i + j + rnd) % 4096:(i + j + rnd) % 4096 + vs])
                         for j, k in enumerate(keys[i:i + BATCH])]
                db.put_many(pairs)
        ops = cfg["ops"]
        seq = [(rng.random() < 0.1, keys[rng.randrange(n)]) for _ in range(ops)]
        val = vpool[:vs]
        get, put = db.get, db.put
        pc = time.perf_counter_ns

        def phase(stop_event=None):
            g, p = [], []
            t0 = pc()
            for is_put, k in seq:
                if stop_event is not None and stop_event.is_set():
                    break
                a = pc()
                if is_put:
                    put(k, val)
                    p.append(pc() - a)
                else:
                    get(k)
                    g.append(pc() - a)
            return g, p, pc() - t0

        phase()  # warm-up
        g_idle, p_idle, idle_ns = phase()
        done = threading.Event()
        comp = {}

        def compactor():
            t = pc()
            try:
                db.compact(wait=True)
            except Exception as e:
                comp["error"] = repr(e)
            comp["ns"] = pc() - t
            done.set()

        stats_before = safe_stats(db)
        th = threading.Thread(target=compactor)
        th.start()
        g_busy, p_busy, busy_ns = phase(done)
        overlapped = not done.is_set()
        th.join()
        st = safe_stats(db)
        db.close()
        gi, pi, gb, pb = (percentiles_us(x) for x in (g_idle, p_idle, g_busy, p_busy))

        def ratio(b, i):
            return b["p99"] / i["p99"] if b and i and i.get("p99") else None

        return {"n": n, "value_size": vs, "ops": ops, "open_opts": accepted,
                "get_idle": gi, "put_idle": pi, "get_busy": gb, "put_busy": pb,
                "idle_ops_per_s": (len(g_idle) + len(p_idle)) / (idle_ns / 1e9),
                "busy_ops_per_s": (len(g_busy) + len(p_busy)) / (busy_ns / 1e9) if busy_ns else None,
                "busy_ops": len(g_busy) + len(p_busy),
                "compaction_s": comp.get("ns", 0) / 1e9, "compaction_error": comp.get("error"),
                "compactor_outlived_foreground": overlapped,
                "stats_before": stats_before, "stats_after": st,
                "get_p99_ratio": ratio(gb, gi), "put_p99_ratio": ratio(pb, pi)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fig_compaction_timeline(cfg: dict) -> dict:
    """Compaction over time: log bytes, store bytes and foreground p99 while
    the engine's own compactor thread (engine defaults but a small segment,
    ``timeline_segment`` bytes, so that it has many segments to fold) keeps
    up with a steady write load.  The foreground overwrites ``n`` random keys
    ``rounds`` times (90% put, 10% get of a written key, in key order of the
    generator); every op is timed, and every ``window_ms`` of wall time a
    sample records the seconds since the start, ``stats()`` (log_bytes,
    store_bytes, compaction_lag_bytes, compactions) and the p99 of the puts
    and gets of that window."""
    import abase_engine as ae
    workdir = tempfile.mkdtemp(prefix="abase-fig-timeline-", dir=cfg.get("tmpdir"))
    try:
        n, vs, rounds = cfg["n"], cfg["value_size"], cfg.get("rounds", 3)
        window_ns = int(cfg.get("window_ms", 100) * 1e6)
        db, accepted = _open_abase(ae, workdir, {"durability": "process",
                                                 "segment_size": cfg.get("timeline_segment", 4 << 20),
                                                 **cfg.get("abase_opts", {})})
        rng = random.Random(cfg["seed"])
        keys = [rng.randbytes(KEY_SIZE) for _ in range(n)]
        vpool = rng.randbytes(vs + 4096)
        seq = [(rng.random() < 0.9, i % n) for i in range(n * rounds)]
        get, put = db.get, db.put
        pc = time.perf_counter_ns
        samples, g, p = [], [], []
        t0 = w0 = pc()

        def sample(now: int) -> None:
            st = safe_stats(db)
            samples.append({"t_s": (now - t0) / 1e9, "log_bytes": st.get("log_bytes"),
                            "store_bytes": st.get("store_bytes"), "lag_bytes": st.get("compaction_lag_bytes"),
                            "compactions": st.get("compactions"), "puts": len(p), "gets": len(g),
                            "put_p99_us": percentiles_us(p).get("p99") if p else None,
                            "get_p99_us": percentiles_us(g).get("p99") if g else None})

        sample(t0)
        for i, (is_put, k) in enumerate(seq):
            key = keys[k]
            a = pc()
            if is_put or i < n:
                off = (i * 7) % 4096
                put(key, vpool[off:off + vs])
                p.append(pc() - a)
            else:
                get(key)
                g.append(pc() - a)
            if i & 255 == 0 and a - w0 >= window_ns:
                sample(a)
                g, p, w0 = [], [], pc()
        end = pc()
        sample(end)
        write_s = (end - t0) / 1e9
        # then idle: the compactor catches up with nothing in the foreground
        while True:
            st = safe_stats(db)
            if not st.get("sealed_segments") or pc() - end > 30e9:
                break
            g, p = [], []
            time.sleep(cfg.get("window_ms", 100) / 1000)
            sample(pc())
        final = safe_stats(db)
        db.close()
        return {"n": n, "value_size": vs, "rounds": rounds, "ops": len(seq), "open_opts": accepted,
                "window_ms": cfg.get("window_ms", 100), "write_s": write_s,
                "ops_per_s": len(seq) / write_s if write_s else None, "samples": samples, "stats_after": final}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def crdt_child(cfg: dict) -> dict:
    """The CRDT rows of one store (bench/crdt_bench.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import crdt_bench

    return {"store": cfg["store"], "rows": crdt_bench.child_rows(cfg)}


CHILD_MODES = {"store": run_child, "fig_memory": fig_memory, "fig_open_write": fig_open_write,
               "fig_open_read": fig_open_read, "fig_write_amp": fig_write_amp,
               "fig_compaction_p99": fig_compaction_p99, "fig_compaction_timeline": fig_compaction_timeline,
               "crdt": crdt_child}


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------


def spawn(mode: str, cfg: dict, timeout: float) -> dict:
    """Run ``mode`` in a fresh interpreter; return its JSON result (or an error dict).
    A temp dir is handed to the child and removed afterwards whatever happened."""
    base = tempfile.mkdtemp(prefix="abase-bench-")
    cfg = dict(cfg, tmpdir=base)
    load_before = os.getloadavg()
    res_file = os.path.join(base, "result.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, json.dumps(cfg), res_file]
    proc = subprocess.Popen(cmd)
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the child's SIGTERM handler cleans up its dirs
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return {"error": f"child timed out after {timeout:.0f} s"}
        if os.path.exists(res_file):
            with open(res_file) as f:
                out = json.load(f)
            out["loadavg_before"] = load_before
            out["loadavg_after"] = os.getloadavg()
            return out
        return {"error": f"child exited with status {proc.returncode} and no result"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _terminate(signum, _frame):
    """SIGTERM (the parent's timeout) -> SystemExit, so ``finally`` blocks
    still remove the child's temp dirs."""
    raise SystemExit(128 + signum)


def child_main(mode: str, cfg_json: str, res_file: str) -> int:
    import signal
    signal.signal(signal.SIGTERM, _terminate)
    cfg = json.loads(cfg_json)
    try:
        out = CHILD_MODES[mode](cfg)
    except Exception as e:
        out = {"error": repr(e), "traceback": traceback.format_exc()}
    out.setdefault("rss_peak_kb", maxrss_kb())
    with open(res_file, "w") as f:
        json.dump(out, f)
    return 0


def store_available(name: str) -> str | None:
    """None if the store can run here, else the reason it is skipped."""
    mod = KIND_MODULE[STORES[name][0]]
    if mod is None:
        return None
    try:
        m = importlib.import_module(mod)
        if mod == "abase_engine":
            m.open  # noqa: B018 - the package may exist before its API does
    except Exception as e:
        return f"{mod} not importable: {e!r}"
    return None


def _row_map(store_out: dict) -> dict:
    return {r["workload"]: r for r in store_out.get("results", [])}


def merge_repeats(outs: list) -> dict:
    """Fold repeated runs of one store: per workload, keep the row of the run
    with the median ops/s and add every run's ops/s and the spread
    ((max - min) / median).  Other fields come from the first run; every
    run's full output stays under ``repeats``."""
    if len(outs) == 1:
        return outs[0]
    merged = dict(outs[0])
    merged["repeats"] = outs
    rows = []
    for r0 in outs[0].get("results", []):
        w = r0["workload"]
        cands = [r for o in outs for r in o.get("results", []) if r["workload"] == w and r.get("ops_per_s")]
        if not cands:
            continue
        cands.sort(key=lambda r: r["ops_per_s"])
        med = dict(cands[(len(cands) - 1) // 2])
        vals = [r["ops_per_s"] for r in cands]
        med["ops_per_s_all"] = vals
        med["spread"] = (vals[-1] - vals[0]) / med["ops_per_s"]
        rows.append(med)
    merged["results"] = rows
    merged["errors"] = [e for o in outs for e in o.get("errors", [])]
    for key in ("rss_peak_kb", "rss_baseline_kb"):
        vals = [o[key] for o in outs if key in o]
        if vals:
            merged[key] = statistics.median(vals)
    return merged


def print_tables(runs: dict, stream=sys.stdout) -> None:
    """Main table, per-store summary, and abase ratio table."""
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    hdr = (f"{'store':<15} {'workload':<18} {'ops':>9} {'ops/s':>8} {'spread':>6} {'p50':>8} {'p90':>8} {'p99':>8} "
           f"{'p99.9':>8} {'max':>9}  latency unit")
    p("\n== Throughput and latency (latency in microseconds) ==")
    p("spread = (max - min) / median ops/s over --repeat runs; with repeats, the row is the median run's")
    p(hdr)
    p("-" * len(hdr))
    for name, out in runs.items():
        if "error" in out and not out.get("results"):
            p(f"{name:<15} ERROR: {out['error']}")
            continue
        for r in out.get("results", []):
            lat = r["latency_us"]
            spread = f"{100 * r['spread']:.0f}%" if "spread" in r else "-"
            p(f"{name:<15} {r['workload']:<18} {r['ops']:>9} {human(r['ops_per_s'] or 0):>8} {spread:>6} "
              f"{fmt_us(lat.get('p50')):>8} {fmt_us(lat.get('p90')):>8} {fmt_us(lat.get('p99')):>8} "
              f"{fmt_us(lat.get('p99.9')):>8} {fmt_us(lat.get('max')):>9}  {r['latency_unit']}")
        for e in out.get("errors", []):
            p(f"{name:<15} {e['workload']:<18} ERROR: {e['error']}")
    p("\n== Per store: memory and disk ==")
    p("peak RSS = ru_maxrss of the child (includes mmapped file pages); harness = peak after data generation;")
    p("store delta = peak - harness; anon/file end = RssAnon/RssFile just before close; disk = allocated bytes after close;")
    p("load1 = 1-minute load average before/after the child (2 cores: > 1 means other work was competing)")
    hdr2 = (f"{'store':<15} {'peak RSS MiB':>12} {'harness MiB':>11} {'store delta':>11} {'anon end':>9} "
            f"{'file end':>9} {'disk MiB':>9} {'pre-compact':>11} {'load1 before/after':>18}  version")
    p(hdr2)
    p("-" * len(hdr2))
    for name, out in runs.items():
        if "rss_peak_kb" not in out:
            continue
        peak = out["rss_peak_kb"] / 1024
        base = out.get("rss_baseline_kb", 0) / 1024
        disk = out.get("disk_final", {}).get("allocated", 0) / (1 << 20)
        pre = out.get("disk_before_compact", {}).get("allocated")
        pre_s = f"{pre / (1 << 20):.1f}" if pre is not None else "-"
        end = out.get("rss_end_kb", {})
        anon = f"{end['RssAnon'] / 1024:.1f}" if "RssAnon" in end else "-"
        filed = f"{end['RssFile'] / 1024:.1f}" if "RssFile" in end else "-"
        la = f"{out.get('loadavg_before', [0])[0]:.1f}/{out.get('loadavg_after', [0])[0]:.1f}"
        p(f"{name:<15} {peak:>12.1f} {base:>11.1f} {peak - base:>11.1f} {anon:>9} {filed:>9} {disk:>9.1f} "
          f"{pre_s:>11} {la:>18}  {out.get('version', '')}")
    for name, out in runs.items():
        if out.get("kind") != "abase":
            continue
        p(f"\n{name}: open options put_single store {out.get('abase_open_opts_single')}, "
          f"main store {out.get('abase_open_opts_main')}; batch API {out.get('abase_batch_api')}")
        keys = ("keys", "log_bytes", "segments", "index_bytes", "compaction_lag_bytes", "compactions",
                "log_bytes_written", "store_bytes_written")
        for label in ("stats_before_reads", "stats_before_compact", "stats_after_compact", "stats_final"):
            st = out.get(label)
            if st:
                p(f"  {label:<21} " + ", ".join(f"{k}={st[k]}" for k in keys if k in st))
    ratios = ratio_table(runs)
    if ratios["columns"]:
        p("\n== Ratios: abase ops/s / peer ops/s (abase-process for non-durable rows, abase-sync for durable rows; >1 = abase faster) ==")
        cols = ratios["columns"]
        p(f"{'workload':<20}" + "".join(f"{c:>16}" for c in cols))
        for w, row in ratios["rows"].items():
            p(f"{w:<20}" + "".join(f"{(f'{row[c]:.2f}x' if row.get(c) else '-'):>16}" for c in cols))


def ratio_table(runs: dict) -> dict:
    """{columns: [peer], rows: {workload: {peer: ratio}}}."""
    ap = _row_map(runs.get("abase-process", {}))
    asy = _row_map(runs.get("abase-sync", {}))
    peers = [n for n in runs if not n.startswith("abase") and runs[n].get("results")]
    rows = {}
    for w in ALL_WORKLOADS:
        if w in NO_RATIO:
            continue
        row = {}
        for peer in peers:
            pr = _row_map(runs[peer]).get(w)
            durable_peer = STORES[peer][1]
            mine = (asy if durable_peer else ap).get(w)
            if pr and mine and pr.get("ops_per_s") and mine.get("ops_per_s"):
                row[peer] = mine["ops_per_s"] / pr["ops_per_s"]
        if row:
            rows[w] = row
    return {"columns": peers, "rows": rows}


def targets(runs: dict, figs: dict | None) -> list:
    """The project's targets, each with the measured figure and met/missed."""
    ap = _row_map(runs.get("abase-process", {}))
    asy = _row_map(runs.get("abase-sync", {}))

    def ops(store, w):
        r = _row_map(runs.get(store, {})).get(w)
        return r["ops_per_s"] if r else None

    def rt(a, b):
        return a / b if a and b else None

    out = []

    def add(name, value, goal, cmp=">="):
        met = None if value is None else (value >= goal if cmp == ">=" else value <= goal)
        out.append({"target": name, "value": value, "goal": f"{cmp} {goal}", "met": met})

    a = lambda w: ap.get(w, {}).get("ops_per_s")  # noqa: E731
    add("put_single process / plyvel", rt(a("put_single"), ops("plyvel", "put_single")), 3)
    add("put_single process / rocksdict", rt(a("put_single"), ops("rocksdict", "put_single")), 3)
    add("put_batch process / rocksdict", rt(a("put_batch"), ops("rocksdict", "put_batch")), 3)
    add("get_hit (log-resident) / lmdb", rt(a("get_hit"), ops("lmdb", "get_hit")), 1.2)
    add("get_hit after compaction / lmdb", rt(a("get_hit_compacted"), ops("lmdb", "get_hit_compacted")), 0.9)
    add("get_miss / lmdb", rt(a("get_miss"), ops("lmdb", "get_miss")), 0.9)
    add("full scan / lmdb cursor", rt(a("scan"), ops("lmdb", "scan")), 0.5)
    add("full scan after compaction / lmdb cursor", rt(a("scan_compacted"), ops("lmdb", "scan_compacted")), 0.5)
    add("durable puts 8 threads (abase-sync) / rocksdict-sync 1 thread",
        rt(asy.get("durable_put_8t", {}).get("ops_per_s"), ops("rocksdict-sync", "durable_put_1t")), 4)
    ad = runs.get("abase-process", {}).get("disk_final", {}).get("allocated")
    ld = runs.get("lmdb", {}).get("disk_final", {}).get("allocated")
    add("disk after full compaction / lmdb", rt(ad, ld), 1.0, "<=")
    if figs:
        mem = (figs.get("memory") or [{}])[0]
        add("memory per live key, index_bytes/keys (B)", mem.get("index_bytes_per_key"), 32, "<=")
        add("memory per live key, RssAnon delta (B)", mem.get("rss_anon_delta_per_key"), 32, "<=")
        op = figs.get("open") or {}
        add("open of uncompacted log, warm cache (GB/s)", op.get("warm_gb_per_s"), 1.0)
        add("open of uncompacted log, cold cache (GB/s)", op.get("cold_gb_per_s"), 1.0)
    # issue 13: steady state (engine defaults), peers in the same run
    add("13: get after compaction / lmdb get (one read txn)",
        rt(a("get_hit_compacted"), ops("lmdb", "get_hit_compacted")), 1.0)
    add("13: get, compactor running after a load / lmdb get", rt(a("get_hit_loaded"), ops("lmdb", "get_hit")), 1.0)
    add("13: get_miss after compaction / lmdb", rt(a("get_miss_compacted"), ops("lmdb", "get_miss_compacted")), 1.0)
    add("13: full scan, log-resident / lmdb cursor", rt(a("scan"), ops("lmdb", "scan")), 0.8)
    add("13: full scan after compaction / lmdb cursor", rt(a("scan_compacted"), ops("lmdb", "scan_compacted")), 0.8)
    add("13: put, results kept / plyvel, results kept", rt(a("put_kept"), ops("plyvel", "put_kept")), 2.0)
    add("13: db.batch() of 1000 puts / put_many (both compactor on)", rt(a("batch_ctx"), a("put_batch_on")), 0.8)
    cp = (figs or {}).get("compaction_p99") or {}
    add("13: get p99 while compacting / idle", cp.get("get_p99_ratio"), 2.0, "<=")
    add("13: put p99 while compacting / idle", cp.get("put_p99_ratio"), 2.0, "<=")
    return out


def print_targets(tg: list, stream=sys.stdout) -> None:
    print("\n== Targets ==", file=stream)
    for t in tg:
        v = t["value"]
        vs = "n/a" if v is None else f"{v:.3g}"
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"{t['target']:<62} {vs:>10}  goal {t['goal']:<6} {met}", file=stream)


def run_engine_figures(args, base_cfg: dict) -> dict:
    """Engine-only figures, each in a fresh child:

    memory          bytes per live key at each --mem-n (index_bytes/keys and RSS delta),
                    after load (log-resident) and after compact(wait=True)
    open            write ~--open-gib GiB of uncompacted log (one huge segment,
                    compaction off if the engine allows), then time ae.open in a new
                    process: warm (pages cached) and cold (pages evicted with
                    posix_fadvise DONTNEED); GB/s = log_bytes / open time
    write_amp       overwrite-heavy run, (log_bytes_written + store_bytes_written) / user bytes
    compaction_p99  foreground get/put p99 while compact() runs vs idle
    """
    figs = {}
    if store_available("abase-process"):
        figs["skipped"] = store_available("abase-process")
        print(f"engine figures skipped: {figs['skipped']}", file=sys.stderr)
        return figs
    q = args.quick
    figs["memory"] = []
    for n in args.mem_n:
        print(f"[figures] memory at {n} keys", file=sys.stderr, flush=True)
        figs["memory"].append(spawn("fig_memory", dict(base_cfg, n=n, mem_compact_max=args.mem_compact_max),
                                    args.figure_timeout))
    print(f"[figures] open of {args.open_gib} GiB log", file=sys.stderr, flush=True)
    opendir = tempfile.mkdtemp(prefix="abase-fig-open-")
    try:
        w = spawn("fig_open_write", dict(base_cfg, path=opendir, gib=args.open_gib), args.figure_timeout)
        reads = {"warm": [], "cold": []}
        if "error" not in w:
            for _ in range(args.open_repeat):
                for mode in ("cold", "warm"):
                    reads[mode].append(spawn("fig_open_read", dict(base_cfg, path=opendir, cold=mode == "cold",
                                                               gib=args.open_gib),
                                             args.figure_timeout))
        log_bytes = (w.get("stats") or {}).get("log_bytes")
        o = {"write": w, "reads": reads, "log_bytes": log_bytes, "log_bytes_source": "stats()['log_bytes']"}
        if not log_bytes:  # stats() failed: count the user bytes (key + value) instead
            log_bytes = o["log_bytes"] = w.get("user_bytes", 0)
            o["log_bytes_source"] = "user bytes (stats() unavailable; log records are larger)"
        for mode in ("warm", "cold"):
            ts = [r["open_plus_get_s"] for r in reads[mode] if "open_plus_get_s" in r]
            if ts:
                med = statistics.median(ts)
                o[f"{mode}_open_s_median"] = med
                o[f"{mode}_open_s_all"] = ts
                o[f"{mode}_gb_per_s"] = log_bytes / med / 1e9
        figs["open"] = o
    finally:
        shutil.rmtree(opendir, ignore_errors=True)
    print("[figures] write amplification", file=sys.stderr, flush=True)
    figs["write_amp"] = spawn("fig_write_amp", dict(base_cfg, keys=20_000 if q else args.wa_keys,
                                                     rounds=args.wa_rounds), args.figure_timeout)
    figs["compaction_p99"] = run_p99_figure(args, base_cfg)
    figs["compaction_timeline"] = run_timeline_figure(args, base_cfg)
    return figs


def run_crdt(args, base_cfg: dict) -> dict:
    """The CRDT rows (bench/crdt_bench.py): the engine, a rocksdict
    read-modify-write counter and a py-lmdb read-modify-write transaction,
    each in its own child, rounds interleaved (``--repeat``); per row the
    median over the rounds."""
    stores = ["abase"] + [s for s, mod in (("rocksdict", "rocksdict"), ("lmdb", "lmdb"))
                          if importlib.util.find_spec(mod) is not None]
    cfg = dict(base_cfg, keys=args.crdt_keys, ops=args.crdt_ops)
    per: Dict[str, List[dict]] = {}
    for _ in range(args.repeat):
        for st in stores:
            print(f"[crdt] {st}", file=sys.stderr, flush=True)
            out = spawn("crdt", dict(cfg, store=st), args.timeout)
            if "error" in out:
                print(f"[crdt {st}] ERROR: {out['error']}\n{out.get('traceback', '')}", file=sys.stderr)
            per.setdefault(st, []).append(out)
    rows: Dict[str, float] = {}
    spread: Dict[str, float] = {}
    for outs in per.values():
        names = {k for o in outs for k in o.get("rows", {})}
        for k in names:
            vals = [o["rows"][k] for o in outs if k in o.get("rows", {})]
            rows[k] = statistics.median(vals)
            spread[k] = (max(vals) - min(vals)) / rows[k] if len(vals) > 1 else 0.0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import crdt_bench

    return {"keys": args.crdt_keys, "ops": args.crdt_ops, "rows": rows, "spread": spread, "runs": per,
            "targets": crdt_bench.target_values(rows)}


def print_crdt(res: dict, stream=sys.stdout) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    p(f"\n== CRDT rows ({res['keys']:,} keys, {res['ops']:,} operations; ops/s, median of the rounds) ==")
    for k in sorted(res["rows"]):
        p(f"{k:<20} {human(res['rows'][k]):>10}/s   spread {res['spread'].get(k, 0) * 100:4.0f}%")
    for t in res["targets"]:
        v = t["value"]
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        p(f"{t['target']:<48} {'n/a' if v is None else format(v, '.3g'):>8}  goal >= {t['goal']:<5} {met}")


def run_p99_figure(args, base_cfg: dict) -> dict:
    """compaction_p99: foreground get/put p99 while compact() runs vs idle."""
    print("[figures] foreground p99 while compacting", file=sys.stderr, flush=True)
    q = args.quick
    return spawn("fig_compaction_p99", dict(base_cfg, n=20_000 if q else args.p99_n,
                                            ops=20_000 if q else args.p99_ops), args.figure_timeout)


def run_timeline_figure(args, base_cfg: dict) -> dict:
    """compaction_timeline: log/store bytes and foreground p99 over time (fig_compaction_timeline)."""
    print("[figures] compaction over time", file=sys.stderr, flush=True)
    n = 20_000 if args.quick else (args.timeline_n or args.n)
    return spawn("fig_compaction_timeline", dict(base_cfg, n=n, rounds=args.timeline_rounds,
                                                 window_ms=args.timeline_window_ms), args.figure_timeout)


def _f(x, spec: str = ".1f") -> str:
    """Format a number, or 'n/a' for None."""
    return "n/a" if x is None else format(x, spec)


def print_figures(figs: dict, stream=sys.stdout) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    p("\n== Engine figures ==")
    if "skipped" in figs:
        p(f"skipped: {figs['skipped']}")
        return
    for m in figs.get("memory", []):
        if "error" in m:
            p(f"memory: ERROR {m['error']}")
            continue
        p(f"memory @ {m['n']:,} keys: index_bytes/keys = {_f(m['index_bytes_per_key'])} B "
          f"(after compaction {_f(m.get('index_bytes_per_key_compacted'))} B); "
          f"RssAnon delta/key = {_f(m['rss_anon_delta_per_key'])} B, VmRSS delta/key = {_f(m['rss_delta_per_key'])} B; "
          f"load {m['load_s']:.1f} s, compact {_f(m.get('compact_s'))} s")
        for label in ("stats_loaded", "stats_compacted"):
            if "error" in m.get(label, {}):
                p(f"  {label}: stats() failed: {m[label]['error']}")
    o = figs.get("open") or {}
    if o:
        w = o.get("write", {})
        if "error" in w:
            p(f"open: ERROR {w['error']}")
        else:
            p(f"open: log {o['log_bytes'] / (1 << 30):.3f} GiB [{o['log_bytes_source']}] ({w.get('n', 0):,} records, "
              f"segments={w.get('stats', {}).get('segments')}, compactions={w.get('stats', {}).get('compactions')}); "
              f"warm median {_f(o.get('warm_open_s_median'), '.3f')} s = {_f(o.get('warm_gb_per_s'), '.2f')} GB/s; "
              f"cold median {_f(o.get('cold_open_s_median'), '.3f')} s = {_f(o.get('cold_gb_per_s'), '.2f')} GB/s")
            for mode in ("warm", "cold"):
                for r in o["reads"][mode]:
                    if "error" in r:
                        p(f"  open ({mode}): ERROR {r['error']}")
    wa = figs.get("write_amp") or {}
    if wa:
        if "error" in wa:
            p(f"write amplification: ERROR {wa['error']}")
        else:
            p(f"write amplification: {_f(wa['write_amplification'], '.2f')} (log {_f(wa['log_wa'], '.2f')} "
              f"+ store {_f(wa['store_wa'], '.2f')}); "
              f"{wa['keys']:,} keys x {wa['rounds']} rounds x {wa['value_size']} B")
    cp = figs.get("compaction_p99") or {}
    if cp:
        if "error" in cp:
            p(f"compaction p99: ERROR {cp['error']}")
        else:
            r = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
            p(f"foreground p99 while compacting / idle: get {r(cp['get_p99_ratio'])} "
              f"(idle {fmt_us(cp['get_idle'].get('p99'))} us, busy {fmt_us((cp['get_busy'] or {}).get('p99'))} us), "
              f"put {r(cp['put_p99_ratio'])} (idle {fmt_us(cp['put_idle'].get('p99'))} us, "
              f"busy {fmt_us((cp['put_busy'] or {}).get('p99'))} us); compaction took {cp['compaction_s']:.2f} s, "
              f"{cp['busy_ops']:,} foreground ops overlapped it")
    tl = figs.get("compaction_timeline") or {}
    if tl:
        if "error" in tl:
            p(f"compaction timeline: ERROR {tl['error']}")
        else:
            peak = max((x["log_bytes"] or 0 for x in tl["samples"]), default=0)
            p99s = [x["put_p99_us"] for x in tl["samples"] if x["put_p99_us"]]
            p(f"compaction timeline: {tl['ops']:,} ops in {tl['write_s']:.2f} s ({human(tl['ops_per_s'] or 0)}/s), "
              f"{len(tl['samples'])} samples every {tl['window_ms']:.0f} ms; peak log {peak / (1 << 20):.1f} MiB, "
              f"worst window put p99 {fmt_us(max(p99s) if p99s else None)} us")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None,
                    help="number of keys (default 1,000,000 for values <= 1 KiB, else 400 MiB / value size; --quick: 20,000)")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--stores", default=",".join(DEFAULT_STORES),
                    help=f"comma-separated, from: {', '.join(STORES)}")
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help=f"comma-separated, from: {', '.join(ALL_WORKLOADS)}")
    ap.add_argument("--json", dest="json_out", default=None, help="write all results + machine info here")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every store this many times (rounds interleaved across stores); "
                         "tables show the median run per workload and the min-max spread")
    ap.add_argument("--stride", type=int, default=DEFAULT_STRIDE, help="latency sampling: 1 op timed per STRIDE ops")
    ap.add_argument("--durable-per-thread", type=int, default=None, help="durable puts per thread (default 2000; quick 200)")
    ap.add_argument("--durable-seconds", type=float, default=60.0, help="time cap per durable workload thread")
    ap.add_argument("--abase-opts", default="{}", help="JSON dict of extra keyword options for ae.open")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per store child process, seconds")
    ap.add_argument("--figure-timeout", type=float, default=600.0, help="per engine-figure child process, seconds")
    ap.add_argument("--engine-figures", action="store_true", help="also compute the engine-only figures")
    ap.add_argument("--no-compare", action="store_true", help="skip the store comparison")
    ap.add_argument("--mem-n", default=None, help="key counts for the memory figure (default 1000000; quick 20000)")
    ap.add_argument("--mem-compact-max", type=int, default=2_000_000,
                    help="memory figure: compact(wait=True) after the load only up to this many keys")
    ap.add_argument("--open-gib", type=float, default=None, help="size of the uncompacted log to open (default 1; quick 0.02)")
    ap.add_argument("--open-repeat", type=int, default=3)
    ap.add_argument("--wa-keys", type=int, default=200_000)
    ap.add_argument("--wa-rounds", type=int, default=10)
    ap.add_argument("--no-p99", action="store_true",
                    help="skip the foreground p99 while compacting (run by default with the comparison)")
    ap.add_argument("--p99-n", type=int, default=1_000_000)
    ap.add_argument("--no-timeline", action="store_true",
                    help="skip the compaction-over-time series (run by default with the comparison)")
    ap.add_argument("--timeline-n", type=int, default=None, help="compaction timeline: keys (default: --n)")
    ap.add_argument("--timeline-rounds", type=int, default=3, help="compaction timeline: writes per key")
    ap.add_argument("--timeline-window-ms", type=float, default=100.0, help="compaction timeline: sample period")
    ap.add_argument("--p99-ops", type=int, default=200_000)
    ap.add_argument("--crdt", action="store_true",
                    help="also run the CRDT rows (bench/crdt_bench.py): engine, rocksdict and py-lmdb counters")
    ap.add_argument("--crdt-keys", type=int, default=None, help="CRDT rows: keys (default 100,000; quick 10,000)")
    ap.add_argument("--crdt-ops", type=int, default=None, help="CRDT rows: operations (default 300,000; quick 30,000)")
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 20_000 if args.quick else (1_000_000 if args.value_size <= 1024
                                            else max(1000, (400 << 20) // args.value_size))
    if args.durable_per_thread is None:
        args.durable_per_thread = 200 if args.quick else 2000
    args.mem_n = [int(x) for x in (args.mem_n or ("20000" if args.quick else "1000000")).split(",")]
    if args.open_gib is None:
        args.open_gib = 0.02 if args.quick else 1.0
    if args.crdt_keys is None:
        args.crdt_keys = 10_000 if args.quick else 100_000
    if args.crdt_ops is None:
        args.crdt_ops = 30_000 if args.quick else 300_000
    if args.quick:
        args.open_repeat = min(args.open_repeat, 1)
        args.wa_rounds = min(args.wa_rounds, 5)
    args.stores = [s for s in args.stores.split(",") if s]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for s in args.stores:
        if s not in STORES:
            ap.error(f"unknown store {s!r}")
    for w in args.workloads:
        if w not in ALL_WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    args.abase_opts = json.loads(args.abase_opts)
    return args


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        return child_main(argv[1], argv[2], argv[3])
    args = parse_args(argv)
    started = time.time()
    base_cfg = {"n": args.n, "value_size": args.value_size, "seed": args.seed, "stride": args.stride,
                "workloads": args.workloads, "durable_per_thread": args.durable_per_thread,
                "durable_seconds": args.durable_seconds, "abase_opts": args.abase_opts}
    report = {"machine": machine_info(), "config": dict(base_cfg, stores=args.stores, quick=args.quick,
                                                        repeat=args.repeat,
                                                        command=" ".join([os.path.basename(sys.executable)] + sys.argv)),
              "runs": {}, "skipped": {}, "method": {
                  "throughput": "ops / wall time of the whole loop (harness loop overhead included)",
                  "latency": f"1 op timed with perf_counter_ns per block of {args.stride} ops; batches: every batch; "
                             "durable puts: every op; compact: the single call",
                  "rss": "ru_maxrss of the child (peak); harness = peak after data generation, before opening the store",
                  "disk": "sum of st_blocks*512 under the store dir after close"}}
    if not args.no_compare:
        per_store = {}
        for rep in range(args.repeat):
            for name in args.stores:
                why = store_available(name)
                if why:
                    if rep == 0:
                        print(f"skipping {name}: {why}", file=sys.stderr, flush=True)
                    report["skipped"][name] = why
                    continue
                t = time.perf_counter()
                out = spawn("store", dict(base_cfg, store=name), args.timeout)
                out["child_wall_s"] = time.perf_counter() - t
                per_store.setdefault(name, []).append(out)
                if "error" in out:
                    print(f"[{name}] ERROR: {out['error']}\n{out.get('traceback', '')}", file=sys.stderr)
        for name, outs in per_store.items():
            report["runs"][name] = merge_repeats(outs)
        print(f"\nN = {args.n:,} keys, {args.value_size} B values, {KEY_SIZE} B keys, seed {args.seed}")
        for name, why in report["skipped"].items():
            print(f"skipped {name}: {why}")
        print_tables(report["runs"])
        report["ratios"] = ratio_table(report["runs"])
    figs = None
    if args.engine_figures:
        figs = run_engine_figures(args, base_cfg)
        report["engine_figures"] = figs
        print_figures(figs)
    elif not store_available("abase-process") and not (args.no_p99 and args.no_timeline):
        figs = {}
        if not args.no_p99:
            figs["compaction_p99"] = run_p99_figure(args, base_cfg)
        if not args.no_timeline:
            figs["compaction_timeline"] = run_timeline_figure(args, base_cfg)
        report["engine_figures"] = figs
        print_figures(figs)
    report["targets"] = targets(report["runs"], figs)
    print_targets(report["targets"])
    if args.crdt:
        report["crdt"] = run_crdt(args, base_cfg)
        print_crdt(report["crdt"])
    report["total_wall_s"] = time.time() - started
    print(f"\ntotal wall time {report['total_wall_s']:.0f} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
