"""Child process of tests/test_faults.py: runs one fault scenario under the
fault shim (tests/faultfs.c, preloaded) and reports what the engine did.

Usage: python fault_child.py SCENARIO DIR

Each scenario opens an engine in DIR, injects its fault through
:class:`faultfs.Shim`, and returns a JSON-able dict of observations, printed
as the last line of stdout:

* ``acked``: {key hex: value hex} of every write the engine acknowledged
  (the call returned), which the parent checks after reopening DIR without
  the shim; ``refused``: keys whose write raised;
* ``errors``: for each failing call, the exception's class, ``syscall``,
  ``errno``, ``file`` and message;
* anything else the scenario saw (reads after the fault, stats, hits).

The parent asserts; the child only does and looks.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import traceback
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import abase_engine as ae  # noqa: E402
import faultfs  # noqa: E402

SCENARIOS: Dict[str, Callable[[faultfs.Shim, str], Dict[str, Any]]] = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def describe(exc: BaseException) -> Dict[str, Any]:
    return {"type": type(exc).__name__, "syscall": getattr(exc, "syscall", None),
            "errno": getattr(exc, "errno", None), "file": getattr(exc, "file", None), "message": str(exc),
            "is_abase": isinstance(exc, ae.AbaseError)}


class Writes:
    """Acknowledged and refused writes of a scenario."""

    def __init__(self) -> None:
        self.acked: Dict[bytes, bytes] = {}
        self.refused: List[bytes] = []
        self.errors: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    def put(self, db, key: bytes, value: bytes) -> bool:
        try:
            db.put(key, value)
        except ae.AbaseError as exc:
            with self._lock:
                self.refused.append(key)
                self.errors.append(describe(exc))
            return False
        with self._lock:
            self.acked[key] = value
        return True

    def report(self, **more: Any) -> Dict[str, Any]:
        out = {"acked": {k.hex(): v.hex() for k, v in self.acked.items()},
               "refused": [k.hex() for k in self.refused], "errors": self.errors}
        out.update(more)
        return out


def _value(i: int, size: int = 200) -> bytes:
    return (b"%06d" % i) * (size // 6)


def _try(fn) -> Dict[str, Any]:
    try:
        fn()
    except BaseException as exc:  # observed, not propagated
        return describe(exc)
    return {"type": None}


def _after_failure(db, w: Writes, probe: bytes) -> Dict[str, Any]:
    """What the engine does after its failure: the next write, sync,
    compaction; reads of the acknowledged keys and of the probe key."""
    more = w.put(db, probe + b"-next", b"small")
    return {
        "next_put_acked": more,
        "sync": _try(db.sync),
        "compact": _try(lambda: db.compact(wait=True)),
        "batch": _try(lambda: db.put_many([(probe + b"-batch", b"x")])),
        "reads_ok": all(db.get(k) == v for k, v in w.acked.items()),
        "probe_visible": db.get(probe) is not None,
        "feed_keys": [ch.key.hex() for ch in db.changes()],
        "io_error": db.stats()["io_error"],
    }


# ----------------------------------------------------------------- scenarios

@scenario
def seal_fdatasync_eio(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Defect 1: durability "sync", the fdatasync of a segment's seal fails."""
    db = ae.open(path, durability="sync", segment_size=4096, compact_interval=None)
    w = Writes()
    i = 0
    while db.stats()["segments"] <= 1:  # fill segment 0 to the last record that fits
        w.put(db, b"k%04d" % i, _value(i))
        i += 1
    # segment 0 is sealed; fill segment 1 until the next record (248 bytes
    # with its header and padding) does not fit
    seg = os.path.join(path, "log", "%08d.seg" % 1)
    while db._log.segments()[-1]["used"] + 248 <= 4096:
        w.put(db, b"k%04d" % i, _value(i))
        i += 1
    shim.fail("fdatasync", seg, errno.EIO, count=1)
    probe = b"k%04d" % i
    w.put(db, probe, _value(i))  # does not fit: seals the segment, whose sync fails
    after = _after_failure(db, w, probe)
    after["big_put_acked"] = w.put(db, b"big", b"B" * 3000)
    after["hits"] = shim.hits("fdatasync")
    db.close()
    return w.report(probe=probe.hex(), **after)


@scenario
def append_fdatasync_eio_once(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Defect 2: one group-commit fdatasync fails with EIO; the next ones
    would succeed."""
    db = ae.open(path, durability="sync", compact_interval=None)
    w = Writes()
    for i in range(20):
        w.put(db, b"k%04d" % i, _value(i))
    shim.fail("fdatasync", ".seg", errno.EIO, count=1)
    probe = b"k%04d" % 20
    w.put(db, probe, _value(20))
    after = _after_failure(db, w, probe)
    for i in range(21, 40):  # the fault is spent: a new sync would succeed
        w.put(db, b"k%04d" % i, _value(i))
    after["hits"] = shim.hits("fdatasync")
    db.close()
    return w.report(probe=probe.hex(), **after)


@scenario
def append_fdatasync_eio_always(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Every fdatasync of a segment fails."""
    db = ae.open(path, durability="sync", compact_interval=None)
    w = Writes()
    for i in range(10):
        w.put(db, b"k%04d" % i, _value(i))
    shim.fail("fdatasync", ".seg", errno.EIO, count=-1)
    probe = b"k%04d" % 10
    w.put(db, probe, _value(10))
    after = _after_failure(db, w, probe)
    after["hits"] = shim.hits("fdatasync")
    after["close"] = _try(db.close)
    return w.report(probe=probe.hex(), **after)


@scenario
def fsyncgate_threads(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Defect 2 with 4 durable writers: one failed fdatasync, later ones fine.
    No write may be acknowledged by a sync after the failed one."""
    db = ae.open(path, durability="sync", compact_interval=None)
    w = Writes()
    shim.fail("fdatasync", ".seg", errno.EIO, skip=30, count=1)
    outcomes: Dict[int, List[bool]] = {}

    def writer(t: int) -> None:
        res = outcomes.setdefault(t, [])
        for i in range(60):
            res.append(w.put(db, b"t%d-%04d" % (t, i), _value(i, 64)))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out = w.report(outcomes={str(t): r for t, r in outcomes.items()}, hits=shim.hits("fdatasync"),
                   visible_refused=[k.hex() for k in w.refused if db.get(k) is not None],
                   reads_ok=all(db.get(k) == v for k, v in w.acked.items()),
                   feed_refused=sorted(set(ch.key.hex() for ch in db.changes()) & {k.hex() for k in w.refused}),
                   sync=_try(db.sync), io_error=db.stats()["io_error"])
    db.close()
    return out


@scenario
def process_sync_eio(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Durability "process": db.sync() fails. The writes were acknowledged at
    append; they stay visible, later writes are refused."""
    db = ae.open(path, durability="process", compact_interval=None)
    w = Writes()
    for i in range(30):
        w.put(db, b"k%04d" % i, _value(i))
    shim.fail("fdatasync", ".seg", errno.EIO, count=1)
    first = _try(db.sync)
    after = _after_failure(db, w, b"k0000")
    db.close()
    return w.report(first_sync=first, **after)


@scenario
def fallocate_enospc(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """The disk is full when a new segment is preallocated."""
    db = ae.open(path, durability="process", segment_size=4096, compact_interval=None)
    w = Writes()
    for i in range(10):
        w.put(db, b"k%04d" % i, _value(i))
    shim.fail("posix_fallocate", ".seg", errno.ENOSPC, count=-1)
    i = 10
    while w.put(db, b"k%04d" % i, _value(i)):  # until a new segment is needed
        i += 1
    probe = b"k%04d" % i
    after = _after_failure(db, w, probe)
    after["many"] = _try(lambda: db.put_many([(b"m%d" % j, b"v" * 3000) for j in range(4)]))
    after["hits"] = shim.hits("posix_fallocate")
    db.close()
    return w.report(probe=probe.hex(), **after)


@scenario
def recovery_fallocate_enospc(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Defect 9: the preallocation of a new, empty newest segment at
    recovery fails (the parent left a zero-length segment file)."""
    shim.fail("posix_fallocate", ".seg", errno.ENOSPC, count=-1)
    return {"open": _try(lambda: ae.open(path, compact_interval=None).close()),
            "hits": shim.hits("posix_fallocate")}


@scenario
def log_dir_fsync_eio(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Durability "sync": the fsync of log/ after a new segment is created fails."""
    db = ae.open(path, durability="sync", segment_size=4096, compact_interval=None)
    w = Writes()
    shim.fail("fsync", "=" + os.path.join(os.path.realpath(path), "log"), errno.EIO, count=1)
    i = 0
    while w.put(db, b"k%04d" % i, _value(i)):
        i += 1
    probe = b"k%04d" % i
    after = _after_failure(db, w, probe)
    after["hits"] = shim.hits("fsync")
    db.close()
    return w.report(probe=probe.hex(), **after)


@scenario
def store_commit_eio(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """The compactor's LMDB commit fails (its fdatasync of data.mdb)."""
    db = ae.open(path, durability="process", segment_size=4096, compact_interval=None)
    w = Writes()
    for i in range(40):
        w.put(db, b"a%04d" % i, _value(i))
    db.compact(wait=True)  # these now live in the store
    for i in range(40):
        w.put(db, b"b%04d" % i, _value(i))
    shim.fail("fdatasync", "data.mdb", errno.EIO, count=1)
    first = _try(lambda: db.compact(wait=True))
    after = _after_failure(db, w, b"a0000")
    after["hits"] = shim.hits("fdatasync")
    after["stored_reads_ok"] = all(db.get(b"a%04d" % i) == _value(i) for i in range(40))
    db.close()
    return w.report(first_compact=first, **after)


def _slot_setup(path: str, durability: str):
    db = ae.open(path, durability=durability, compact_interval=None)
    w = Writes()
    for i in range(10):
        w.put(db, b"k%04d" % i, _value(i, 32))
    slot = db.replication_slot("peer")
    cursors = [ch.cursor for ch in slot.changes()]
    slot.ack(cursors[3])
    return db, w, slot, cursors


@scenario
def slots_short_write(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """A short write of slots.json, then the disk is full."""
    db, w, slot, cursors = _slot_setup(path, "process")
    shim.short_write("slots.json", count=1)
    shim.fail("write", "slots.json", errno.ENOSPC, count=1)
    ack = _try(lambda: slot.ack(cursors[7]))
    out = w.report(ack=ack, position=slot.position.hex(), expected=cursors[3].hex(),
                   next_put_acked=w.put(db, b"after", b"x"), hits=shim.hits("write"),
                   io_error=db.stats()["io_error"])
    ack2 = _try(lambda: slot.ack(cursors[5]))  # the disk has room again
    out.update(ack2=ack2, position2=slot.position.hex(), expected2=cursors[5].hex())
    db.close()
    return out


@scenario
def slots_short_write_retried(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """A short write of slots.json that is not an error: the rest is written."""
    db, w, slot, cursors = _slot_setup(path, "process")
    shim.short_write("slots.json", count=1)
    ack = _try(lambda: slot.ack(cursors[7]))
    out = w.report(ack=ack, position=slot.position.hex(), expected=cursors[7].hex(), hits=shim.hits("write"))
    db.close()
    return out


@scenario
def slots_fsync_eio(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Durability "sync": the fsync of the new slots.json fails."""
    db, w, slot, cursors = _slot_setup(path, "sync")
    shim.fail("fsync", "slots.json", errno.EIO, count=1)
    ack = _try(lambda: slot.ack(cursors[7]))
    out = w.report(ack=ack, position=slot.position.hex(), expected=cursors[3].hex(), hits=shim.hits("fsync"),
                   next_put_acked=w.put(db, b"after", b"x"))
    db.close()
    return out


@scenario
def clock_steps_back(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """The wall clock steps back 5 s between writes."""
    db = ae.open(path, durability="process", compact_interval=None)
    w = Writes()
    stamps = []
    for i in range(200):
        stamps.append(db.put(b"k%04d" % i, _value(i, 32)))
        w.acked[b"k%04d" % i] = _value(i, 32)
    import time
    before_wall = time.time()
    shim.clock_offset_ms(-5000)
    after_wall = time.time()
    for i in range(200, 400):
        stamps.append(db.put(b"k%04d" % i, _value(i, 32)))
        w.acked[b"k%04d" % i] = _value(i, 32)
    with db.batch() as b:
        for i in range(400, 410):
            b.put(b"k%04d" % i, _value(i, 32))
            w.acked[b"k%04d" % i] = _value(i, 32)
    stamps.append(db.now())
    increasing = all(a < b for a, b in zip(stamps, stamps[1:]))
    out = w.report(increasing=increasing, stepped_back=after_wall < before_wall - 4,
                   last_hlc=stamps[-1].hlc, reads_ok=all(db.get(k) == v for k, v in w.acked.items()),
                   io_error=db.stats()["io_error"])
    db.close()
    return out


@scenario
def process_sync_fsyncs_log_dir(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Defect 9: db.sync() under "process" must fsync log/ after segments
    were created there (their names), not only the segments' data."""
    db = ae.open(path, durability="process", segment_size=4096, compact_interval=None)
    w = Writes()
    for i in range(60):  # several segments
        w.put(db, b"k%04d" % i, _value(i))
    shim.fail("fsync", "=" + os.path.join(os.path.realpath(path), "log"), errno.EIO, count=1)
    out = w.report(sync=_try(db.sync), hits=shim.hits("fsync"), segments=db.stats()["segments"])
    db.close()
    return out


@scenario
def new_directory_names_are_synced(shim: faultfs.Shim, path: str) -> Dict[str, Any]:
    """Defect 9: the log directory (and the store's) must be fsync'd into
    the engine directory when created: trace which names a directory fsync
    made durable."""
    snap = path + "-snap"
    os.makedirs(path)
    shim.trace(path, snap)
    with ae.open(path, durability="process", compact_interval=None) as db:
        db.put(b"k", b"v")
        db.sync()
    listing = {}
    for name in os.listdir(os.path.join(snap, "d")):
        with open(os.path.join(snap, "d", name)) as f:
            listing[name] = sorted(line.strip() for line in f if line.strip())
    return {"listings": listing}


def main(argv: List[str]) -> int:
    name, path = argv[1], argv[2]
    shim = faultfs.Shim()
    result = SCENARIOS[name](shim, path)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    try:
        rc = main(sys.argv)
    except Exception:
        traceback.print_exc()
        rc = 1
    sys.exit(rc)
