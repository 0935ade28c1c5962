"""Data helpers shared by the pytest-benchmark suite (stdlib only).

Kept out of conftest.py so tests can import them by a unique module name.
"""

from __future__ import annotations

import random

KEY_SIZE = 16
VALUE_SIZE = 100


def make_pairs(n: int, seed: int = 1, value_size: int = VALUE_SIZE) -> list:
    """``n`` distinct random 16-byte keys (random order) with random values; seeded."""
    rng = random.Random(seed)
    seen = set()
    keys = []
    while len(keys) < n:
        k = rng.randbytes(KEY_SIZE)
        if k not in seen:
            seen.add(k)
            keys.append(k)
    vraw = rng.randbytes(value_size + 4096)
    return [(k, vraw[i % 4096:i % 4096 + value_size]) for i, k in enumerate(keys)]


def load(db, pairs, batch: int = 1000) -> None:
    """Write ``pairs`` through put_many, ``batch`` pairs per atomic batch."""
    for i in range(0, len(pairs), batch):
        db.put_many(pairs[i:i + batch])


def write_log(db, megabytes: float, seed: int = 7, value_size: int = 1000) -> int:
    """Append about ``megabytes`` MiB of fresh records; returns user bytes written."""
    rng = random.Random(seed)
    rec = KEY_SIZE + value_size
    n = max(1, int(megabytes * (1 << 20) / rec))
    vpool = rng.randbytes(value_size + 4096)
    done = 0
    while done < n:
        m = min(1000, n - done)
        raw = rng.randbytes(KEY_SIZE * m)
        pairs = [(raw[j * KEY_SIZE:(j + 1) * KEY_SIZE], vpool[(done + j) % 4096:(done + j) % 4096 + value_size])
                 for j in range(m)]
        db.put_many(pairs)
        done += m
    return n * rec


#: Options for an uncompacted log: no background compaction thread (the
#: engine then compacts only on ``compact()``).  Options the engine does not
#: accept are dropped by :func:`open_db`.
NO_COMPACT = {"compact_interval": None}


def segment_for(nbytes: float) -> int:
    """A segment size (4 KiB multiple, engine max 2 GiB) holding ``nbytes`` of
    log in one segment with headroom, so no segment is ever sealed."""
    want = max(64 << 20, int(nbytes * 1.3))
    return min(1 << 31, (want + 4095) // 4096 * 4096)


def open_abase(ae, path, opts: dict, report=None):
    """``ae.open(path, node_id=1, **opts)``, dropping keyword options the engine
    refuses by name (TypeError or InvalidOptionError naming them), so the
    benchmarks work while the API grows; ``report(name, value, message)`` is
    told of each. Returns (db, accepted opts)."""
    opts = dict(opts)
    refused = (TypeError, getattr(ae, "InvalidOptionError", TypeError))
    while True:
        try:
            return ae.open(str(path), node_id=1, **opts), opts
        except refused as e:
            msg = str(e)
            bad = [k for k in opts if k != "durability" and (f"'{k}'" in msg or f" {k}" in msg)]
            if not bad:
                raise
            for k in bad:
                if report is not None:
                    report(k, opts[k], msg)
                opts.pop(k)


def open_db(ae, path, **opts):
    """:func:`open_abase` for the pytest suite: the engine only."""
    return open_abase(ae, path, opts)[0]


def try_stats(db) -> dict:
    """``db.stats()``, or ``{}`` if it raises: a benchmark of get or open must
    not fail because an introspection call does (the error is in extra_info)."""
    try:
        return dict(db.stats())
    except Exception as e:
        return {"stats_error": repr(e)}
