"""Crash tests.

1. Real processes killed with SIGKILL (tests/crash_worker.py): the worker
   acknowledges each write on stdout; the test kills it at a random ack
   (synchronising on the ack lines, never on sleeps), reopens the directory
   and checks that the state is exactly the acknowledged history, plus at most
   the one write that was in flight. Batches are all-or-nothing, a PNCounter
   incremented once per write counts each surviving write exactly once, also
   when the kill lands mid-compaction.
2. Simulated damage without processes: torn tails, garbage in the zero tail,
   corrupt sealed segments, missing segments, and a crash between the LMDB
   commit of a compaction and the deletion of its segments. The durable end
   mark (``log/MARK``, see ``csrc/abase.h``) decides what a bad record
   means: before the mark it is corruption; past it, after a reboot (a
   power loss) it ends the log, and on the same boot (only the process
   died) it ends the log only when it is the last record of the newest
   segment. The tests move the mark with ``logfmt`` to stand for "the last
   sync covered only this much" and "the machine rebooted since".
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading

import pytest

import abase_engine as ae
import logfmt
from abase_engine import CorruptionError, FormatVersionError
from abase_engine._abase import lib
from logfmt import data_end, mark_before, records, seg_files, seg_no, simulate_reboot

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "crash_worker.py")

_spec = importlib.util.spec_from_file_location("abase_crash_worker", WORKER)
cw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cw)  # type: ignore[union-attr]

REC_HDR = struct.Struct("<IIQQIIBBHI")
F_BATCH, F_BATCH_END = 2, 4
P = ae.crdt.PNCounter


# ----------------------------------------------------------------- helpers

def _open(path, **kw):
    kw.setdefault("compact_interval", None)
    return ae.open(path, node_id=1, **kw)


def _run_worker_and_kill(path, durability, mode, start, kill_after, timeout=60.0):
    """Start the worker at seq ``start``, SIGKILL it after ``kill_after`` acks.

    Returns the last acknowledged seq (start - 1 if none)."""
    err = tempfile.TemporaryFile()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # same abase_engine as the test
    proc = subprocess.Popen([sys.executable, WORKER, str(path), durability, mode, str(start)],
                            stdout=subprocess.PIPE, stderr=err, env=env)
    timed_out = []

    def watchdog():
        timed_out.append(True)
        proc.kill()

    timer = threading.Timer(timeout, watchdog)
    timer.start()
    last = start - 1
    acks = 0
    try:
        ready = proc.stdout.readline()
        if ready.startswith(b"ready"):
            while acks < kill_after:
                line = proc.stdout.readline()
                if not line:
                    break
                assert line.startswith(b"ack "), line
                seq = int(line.split()[1])
                assert seq == last + 1, (seq, last)
                last = seq
                acks += 1
        os.kill(proc.pid, signal.SIGKILL)
        # drain the acks already in the pipe: they were acknowledged too
        for line in proc.stdout:
            if line.startswith(b"ack "):
                seq = int(line.split()[1])
                assert seq == last + 1, (seq, last)
                last = seq
        rc = proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    err.close()
    assert not timed_out, f"worker hung; stderr:\n{stderr}"
    assert rc == -signal.SIGKILL, f"worker exited with {rc} before the kill; stderr:\n{stderr}"
    assert acks >= min(kill_after, 1), f"worker made no progress; stderr:\n{stderr}"
    return last


def _actual_state(path, durability, mode):
    db, ctr = cw.open_engine(str(path), durability, mode, compact_interval=None)
    try:
        default = dict(db.scan())
        counters = {k: v for k, v in ctr.scan()}
        # point reads agree with the scan
        for k, v in default.items():
            assert db.get(k) == v
        for k, v in counters.items():
            assert ctr.get(k) == v
        assert db.check() == []
        recovery = dict(db.recovery)
    finally:
        db.close()
    return default, counters, recovery


def _match_prefix(mode, base, start, last_ack, actual):
    """The prefix end P (exclusive) whose model equals the actual state: last_ack + 1 or + 2."""
    default, counters = actual
    tried = []
    for p in (last_ack + 1, last_ack + 2):
        exp = cw.model_upto(mode, start, p, base)
        if exp == (default, counters):
            return p, exp
        tried.append((p, exp))
    # explain the mismatch
    p, (exp_d, exp_c) = tried[0]
    missing = {k: v for k, v in exp_d.items() if default.get(k) != v}
    extra = {k: v for k, v in default.items() if k not in exp_d}
    raise AssertionError(
        f"state after kill matches neither {last_ack + 1} nor {last_ack + 2} writes: "
        f"counters {counters} vs expected {exp_c} (or {tried[1][1][1]}); "
        f"{len(missing)} keys wrong/missing vs P={p} e.g. {list(missing.items())[:3]} "
        f"(actual {[default.get(k) for k in list(missing)[:3]]}); extra keys {list(extra)[:5]}")


def _check_batches(default, last_ack, prefix_end):
    """Batch mode: every acked batch fully present, none partially (shared keys agree)."""
    by_batch = {}
    for k in default:
        if k.startswith(b"b"):
            seq = int(k[1:9])
            by_batch.setdefault(seq, set()).add(int(k.split(b"-")[1]))
    for seq, idx in by_batch.items():
        n = 1 + seq % 6
        present = set(range(n))
        # batch seq+1 deletes key 0 of batch seq (when seq+1 is a multiple of 4)
        deleted0 = (seq + 1) % 4 == 0 and seq + 1 < prefix_end
        if deleted0:
            present.discard(0)
        assert idx == present, (seq, idx, present)
    shared = {default.get(b"shared%d" % j) for j in range(3)}
    assert len(shared) == 1, shared  # one batch id across the shared keys
    if prefix_end > 0:
        assert shared == {b"%d" % (prefix_end - 1)}
    assert prefix_end - 1 >= last_ack


def _crash_rounds(tmp_path, durability, mode, rounds, kill_lo, kill_hi, seed):
    rnd = random.Random(seed)
    path = tmp_path / f"db-{mode}-{durability}"
    base = ({}, {})
    start = 0
    total_inflight = 0
    for rnd_i in range(rounds):
        kill_after = rnd.randint(kill_lo, kill_hi)
        last_ack = _run_worker_and_kill(path, durability, mode, start, kill_after)
        assert last_ack >= start + kill_after - 1
        default, counters, recovery = _actual_state(path, durability, mode)
        p, exp = _match_prefix(mode, base, start, last_ack, (default, counters))
        total_inflight += p - (last_ack + 1)
        if mode == "batch":
            _check_batches(default, last_ack, p)
        if mode == "compact":
            # one increment per write that survived, never an operand folded twice
            assert counters.get(b"ctr", 0) == p
        base, start = exp, p
    # the recovered directory compacts and reopens to the same state
    db, ctr = cw.open_engine(str(path), durability, mode)
    try:
        db.compact(wait=True)
        assert dict(db.scan()) == base[0]
        assert dict(ctr.scan()) == base[1]
    finally:
        db.close()
    default, counters, _r = _actual_state(path, durability, mode)
    assert (default, counters) == base
    return start, total_inflight


# ------------------------------------------------------------ process kills

def test_sigkill_process_durability_puts(tmp_path):
    n, _ = _crash_rounds(tmp_path, "process", "put", rounds=8, kill_lo=20, kill_hi=3000, seed=1)
    assert n >= 8 * 20


def test_sigkill_batches_all_or_nothing(tmp_path):
    n, _ = _crash_rounds(tmp_path, "process", "batch", rounds=8, kill_lo=5, kill_hi=1500, seed=2)
    assert n >= 8 * 5


def test_sigkill_mid_compaction_counters_exact(tmp_path):
    n, _ = _crash_rounds(tmp_path, "process", "compact", rounds=12, kill_lo=20, kill_hi=1200, seed=3)
    assert n >= 12 * 20


def test_sigkill_sync_durability_puts(tmp_path):
    n, _ = _crash_rounds(tmp_path, "sync", "put", rounds=4, kill_lo=5, kill_hi=120, seed=4)
    assert n >= 4 * 5


def test_worker_runs_to_completion(tmp_path):
    """The harness itself: a worker that is not killed ends cleanly and its writes read back."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, WORKER, str(tmp_path / "db"), "none", "compact", "0", "40"],
                         capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().split()
    assert lines[:2] == ["ready", "0"] and lines[-1] == "done"
    db, ctr = cw.open_engine(str(tmp_path / "db"), "none", "compact")
    try:
        db.compact(wait=True)  # only compacted data: independent of log recovery
        assert ctr.get(b"ctr") == 40
        exp, _c = cw.model_upto("compact", 0, 40)
        assert dict(db.scan()) == exp
    finally:
        db.close()


# ------------------------------------------------------- simulated damage

def _fill(db, n, prefix=b"k", start=0):
    vals = {}
    for i in range(start, start + n):
        k = prefix + b"%05d" % i
        vals[k] = (b"value-%d-" % i) * (1 + i % 5)
        db.put(k, vals[k])
    return vals


@pytest.mark.parametrize("cut", [5, 20, 39, 41, "mid-value"])
def test_torn_last_record_is_dropped(tmp_path, cut):
    with _open(tmp_path, segment_size=1 << 16) as db:
        vals = _fill(db, 50)
        db.put(b"last", b"L" * 100)
    f = seg_files(tmp_path)[-1]
    off, length, _fl, key = records(f)[-1]
    assert key == b"last"
    where = off + (length - 30 if cut == "mid-value" else cut)
    with open(f, "r+b") as fh:
        fh.truncate(where)
    # the clean close marked the record durable: losing it is corruption
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, segment_size=1 << 16)
    assert ei.value.offset == off
    # the last sync came before it (the process died while copying it)
    mark_before(tmp_path, seg_no(f), off)
    with _open(tmp_path, segment_size=1 << 16) as db:
        assert db.recovery["dropped_bytes"] > 0
        assert db.recovery["dropped_offset"] == off
        assert db.recovery["records"] == 50
        assert db.get(b"last") is None
        for k, v in vals.items():
            assert db.get(k) == v
        vals.update(_fill(db, 400, prefix=b"after"))  # past the shortened file: new segment
    with _open(tmp_path, segment_size=1 << 16) as db:
        assert db.recovery["dropped_bytes"] == 0
        assert dict(db.scan()) == vals


def test_torn_batch_is_dropped_whole(tmp_path):
    with _open(tmp_path) as db:
        vals = _fill(db, 20)
        with db.batch() as b:
            for i in range(5):
                b.put(b"batch%d" % i, b"x" * 30)
    f = seg_files(tmp_path)[-1]
    recs = records(f)
    off, length, flags, _k = recs[-1]
    assert flags & F_BATCH_END
    first_off = recs[-5][0]
    with open(f, "r+b") as fh:
        fh.truncate(off + length - 3)
    with pytest.raises(CorruptionError):
        _open(tmp_path)
    mark_before(tmp_path, seg_no(f), first_off)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_offset"] == first_off
        assert db.recovery["dropped_bytes"] >= off - first_off
        assert all(db.get(b"batch%d" % i) is None for i in range(5))
        assert dict(db.scan()) == vals


def test_batch_without_end_flag_is_dropped_only_after_a_reboot(tmp_path):
    """All records of a batch are on disk but the BATCH_END flag never landed,
    and a later record did: a process kill cannot do that (appends are in
    order), a power loss can (pages reach the disk in any order)."""
    with _open(tmp_path) as db:
        vals = _fill(db, 10)
        with db.batch() as b:
            for i in range(3):
                b.put(b"batch%d" % i, b"y")
        db.put(b"zz", b"zz")  # lost too: after the unfinished batch
    f = seg_files(tmp_path)[-1]
    recs = records(f)
    boff, blen, bflags, bkey = recs[-2]
    assert bkey == b"batch2" and bflags & F_BATCH_END
    raw = bytearray(open(f, "rb").read())
    raw[boff + 33] = bflags & ~F_BATCH_END
    crc = lib.abase_crc_mask(lib.abase_crc32c(0, bytes(raw[boff + 4: boff + blen]), blen - 4))
    struct.pack_into("<I", raw, boff, crc)
    open(f, "wb").write(raw)
    first_off = recs[-4][0]
    with pytest.raises(CorruptionError) as ei:  # before the mark of the clean close
        _open(tmp_path)
    assert ei.value.offset == first_off
    mark_before(tmp_path, seg_no(f), first_off)
    with pytest.raises(CorruptionError) as ei:  # past it, but the same boot
        _open(tmp_path)
    assert ei.value.offset == first_off
    simulate_reboot(tmp_path)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_offset"] == recs[-4][0]
        assert db.recovery["dropped_bytes"] > 0
        assert [db.get(b"batch%d" % i) for i in range(3)] == [None] * 3
        assert dict(db.scan()) == vals


@pytest.mark.parametrize("gap", [0, 24, 1000])
def test_garbage_in_zero_tail_is_torn_tail(tmp_path, gap):
    with _open(tmp_path) as db:
        vals = _fill(db, 30)
    f = seg_files(tmp_path)[-1]
    end = data_end(f)
    garbage = bytes(random.Random(gap).randrange(1, 256) for _ in range(77))
    with open(f, "r+b") as fh:
        fh.seek(end + gap)
        fh.write(garbage)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_offset"] == end
        assert db.recovery["dropped_bytes"] == gap + len(garbage)
        assert dict(db.scan()) == vals
        # the tail is zeroed on disk at once
        raw = open(f, "rb").read()
        assert set(raw[end:]) <= {0}
        more = _fill(db, 20, prefix=b"new")
    vals.update(more)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_bytes"] == 0
        assert db.recovery["records"] == 50
        assert dict(db.scan()) == vals


def _flip_byte(f, pos, mask=0x40):
    with open(f, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ mask]))


def test_corrupt_record_in_newest_segment_is_corruption(tmp_path):
    with _open(tmp_path) as db:
        vals = _fill(db, 30)
    f = seg_files(tmp_path)[-1]
    recs = records(f)
    off = recs[20][0]
    _flip_byte(f, off + 45)
    # before the mark: whatever the boot, corruption with file and offset
    for reboot in (False, True):
        if reboot:
            simulate_reboot(tmp_path)
        with pytest.raises(CorruptionError) as ei:
            _open(tmp_path)
        assert os.path.basename(ei.value.file) == os.path.basename(f) and ei.value.offset == off
    # past the mark on the same boot: good records follow, so not a torn write
    logfmt.write_mark(tmp_path, end=logfmt.addr(seg_no(f), recs[10][0]), boot=logfmt.this_boot())
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path)
    assert ei.value.offset == off
    # past the mark after a reboot: a power loss can leave such a hole; the log ends there
    simulate_reboot(tmp_path)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_offset"] == off
        assert db.recovery["rebooted"] is True
        assert db.recovery["records"] == 20
        assert dict(db.scan()) == {k: v for k, v in vals.items() if int(k[1:]) < 20}


@pytest.mark.parametrize("durability", ["process", "sync"])
def test_flipped_byte_in_newest_segment_after_clean_close_is_corruption(tmp_path, durability):
    """Issue 11, defect 8: one byte flipped 4 KiB into the newest segment used
    to drop every later record as a 'torn tail' (2,974 of 3,000 puts), and
    check() said nothing."""
    n = 3000 if durability == "process" else 1000
    with _open(tmp_path, durability=durability, segment_size=8 << 20) as db:
        vals = _fill(db, n)
    (f,) = seg_files(tmp_path)
    victim = next(r for r in records(f) if r[0] >= 4096)
    _flip_byte(f, victim[0] + 41, 0x01)
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, durability=durability, segment_size=8 << 20)
    assert os.path.basename(ei.value.file) == os.path.basename(f)
    assert ei.value.offset == victim[0]
    _flip_byte(f, victim[0] + 41, 0x01)  # repaired: every acknowledged record is back
    with _open(tmp_path, durability=durability, segment_size=8 << 20) as db:
        assert db.recovery["dropped_bytes"] == 0
        assert dict(db.scan()) == vals


def test_torn_record_holding_a_valid_record_in_its_value_is_a_torn_tail(tmp_path):
    """A process killed while copying a record whose value holds the bytes of
    a whole valid record: the record's header (and length) lands before its
    value, so recovery skips the torn record whole and does not take the
    forged one inside it for a good record after a bad one."""
    with _open(tmp_path) as db:
        vals = _fill(db, 10)
        f = seg_files(tmp_path)[-1]
        off0, len0, _fl, _k = records(f)[3]
        raw = open(f, "rb").read()
        forged = raw[off0: off0 + ((len0 + 7) & ~7)]
        db.put(b"lastkey1", b"\x00" * 16 + forged + b"\x00" * 16)  # 8-byte key: the value is 8-aligned
    off, length, _fl, key = records(f)[-1]
    assert key == b"lastkey1"
    _flip_byte(f, off + 1)  # its crc never landed
    mark_before(tmp_path, seg_no(f), off)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_offset"] == off
        assert db.get(b"lastkey1") is None
        assert dict(db.scan()) == vals


def test_valid_record_after_garbage_past_the_mark(tmp_path):
    """Garbage past the last record is a torn tail on the same boot only if no
    valid record follows it."""
    with _open(tmp_path) as db:
        vals = _fill(db, 30)
    f = seg_files(tmp_path)[-1]
    end = data_end(f)
    off0, len0, _fl, _k = records(f)[5]
    raw = open(f, "rb").read()
    with open(f, "r+b") as fh:
        fh.seek(end + 64)
        fh.write(raw[off0: off0 + ((len0 + 7) & ~7)])  # a valid record after a zero gap
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path)
    assert ei.value.offset == end
    simulate_reboot(tmp_path)
    with _open(tmp_path) as db:
        assert db.recovery["dropped_offset"] == end
        assert dict(db.scan()) == vals


def test_bad_record_in_older_segment_past_the_mark(tmp_path):
    """Durability "process": sealed segments past the last sync are not on
    disk either, so after a reboot the log ends at the first bad record in
    any segment past the mark and later segments go; on the same boot it is
    corruption (a kill cannot tear a sealed segment)."""
    with _open(tmp_path, segment_size=4096) as db:
        vals = _fill(db, 300)
    files = seg_files(tmp_path)
    assert len(files) >= 5
    f = files[2]
    recs = records(f)
    mark_before(tmp_path, seg_no(files[1]), records(files[1])[2][0])
    _flip_byte(f, recs[3][0] + 42)
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, segment_size=4096)
    assert os.path.basename(ei.value.file) == os.path.basename(f) and ei.value.offset == recs[3][0]
    simulate_reboot(tmp_path)
    with _open(tmp_path, segment_size=4096) as db:
        assert db.recovery["dropped_segments"] == len(files) - 3
        assert [os.path.basename(x) for x in seg_files(tmp_path)] == [os.path.basename(x) for x in files[:3]]
        kept = dict(db.scan())
        assert kept == {k: vals[k] for k in kept}
        assert len(kept) == sum(len(records(x)) for x in files[:2]) + 3
        db.put(b"after", b"reboot")  # the log goes on from there
    with _open(tmp_path, segment_size=4096) as db:
        assert db.get(b"after") == b"reboot"
        assert db.recovery["dropped_bytes"] == 0


def test_mark_missing_or_unreadable_is_corruption(tmp_path):
    with _open(tmp_path) as db:
        _fill(db, 10)
    mark = os.path.join(tmp_path, "log", "MARK")
    orig = open(mark, "rb").read()
    open(mark, "wb").write(b"\x00" * len(orig))
    with pytest.raises(CorruptionError, match="no valid slot"):
        _open(tmp_path)
    os.unlink(mark)
    with pytest.raises(CorruptionError, match="missing"):
        _open(tmp_path)
    open(mark, "wb").write(orig)
    # one torn slot is not a problem: the other one holds the mark
    cur = logfmt.read_mark(tmp_path)
    damaged = bytearray(orig)
    damaged[cur["slot"] * logfmt.MARK_STRIDE + 30] ^= 0xFF
    open(mark, "wb").write(bytes(damaged))
    with _open(tmp_path) as db:
        assert len(dict(db.scan())) == 10


def test_older_format_version_is_refused(tmp_path):
    with _open(tmp_path) as db:
        _fill(db, 10)
    logfmt.write_mark(tmp_path, version=1)
    with pytest.raises(FormatVersionError):
        _open(tmp_path)
    # a 0.1.0 directory: version-1 segments and no mark
    os.unlink(os.path.join(tmp_path, "log", "MARK"))
    f = seg_files(tmp_path)[0]
    raw = bytearray(open(f, "rb").read())
    struct.pack_into("<I", raw, 8, 1)
    struct.pack_into("<I", raw, 60, lib.abase_crc_mask(lib.abase_crc32c(0, bytes(raw[:60]), 60)))
    open(f, "wb").write(bytes(raw))
    with pytest.raises(FormatVersionError):
        _open(tmp_path)


def _sealed_setup(tmp_path):
    with _open(tmp_path, segment_size=4096) as db:
        vals = _fill(db, 200)
    files = seg_files(tmp_path)
    assert len(files) >= 4
    return vals, files


@pytest.mark.parametrize("where", ["value", "key", "hlc", "length", "crc"])
def test_corrupt_sealed_segment_raises_with_file_and_offset(tmp_path, where):
    vals, files = _sealed_setup(tmp_path)
    f = files[1]
    off, length, _fl, key = records(f)[3]
    pos = {"value": off + length - 2, "key": off + 41, "hlc": off + 17, "length": off + 5, "crc": off}[where]
    orig = open(f, "rb").read()
    damaged = bytearray(orig)
    damaged[pos] ^= 0x10
    open(f, "wb").write(damaged)
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, segment_size=4096)
    err = ei.value
    assert err.file is not None and os.path.basename(err.file) == os.path.basename(f)
    assert err.offset == off
    # the failed open released the directory: repair and open again
    open(f, "wb").write(orig)
    with _open(tmp_path, segment_size=4096) as db:
        assert db.get(key) == vals[key]


def test_corrupt_sealed_segment_header(tmp_path):
    _vals, files = _sealed_setup(tmp_path)
    f = files[0]
    with open(f, "r+b") as fh:
        fh.seek(20)
        fh.write(b"\x07")
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, segment_size=4096)
    assert os.path.basename(ei.value.file) == os.path.basename(f)
    assert ei.value.offset == 0


def test_garbage_after_data_of_sealed_segment_is_corruption(tmp_path):
    _vals, files = _sealed_setup(tmp_path)
    f = files[0]
    size = os.path.getsize(f)
    with open(f, "ab") as fh:
        fh.write(b"\x01" * 16)
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, segment_size=4096)
    assert os.path.basename(ei.value.file) == os.path.basename(f)
    assert ei.value.offset == size


@pytest.mark.parametrize("which", [1, 0])
def test_missing_segment_is_corruption(tmp_path, which):
    _vals, files = _sealed_setup(tmp_path)
    os.unlink(files[which])
    with pytest.raises(CorruptionError) as ei:
        _open(tmp_path, segment_size=4096)
    assert ei.value.file is not None
    assert os.path.basename(ei.value.file) == os.path.basename(files[which])


def _counter_history(db, ctr, rounds=40):
    lww = {}
    for i in range(rounds):
        ctr.merge(b"c%d" % (i % 4), P.increment(1 + i % 3))
        if i % 7 == 3:
            ctr.merge(b"c1", P.decrement(1))
        k = b"k%d" % (i % 9)
        lww[k] = b"v%d" % i
        db.put(k, lww[k])
    return lww


def test_crash_between_store_commit_and_segment_deletion(tmp_path):
    path = tmp_path / "db"
    aside = tmp_path / "aside"
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        lww = _counter_history(db, ctr)
        expect_ctr = {k: ctr.get(k) for k in (b"c0", b"c1", b"c2", b"c3")}
        assert len(seg_files(path)) >= 2
        shutil.copytree(path / "log", aside)  # the segments as the compaction finds them
        assert db.compact(wait=True) >= 2
        assert seg_files(path) == []
        assert {k: ctr.get(k) for k in expect_ctr} == expect_ctr
    # the "crash": the store committed, but the segment files are still there
    for f in os.listdir(aside):
        shutil.copy2(aside / f, path / "log" / f)
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        assert db.recovery["records"] == 0  # the stale segments were not replayed
        assert seg_files(path) == []  # ... and were deleted
        assert {k: ctr.get(k) for k in expect_ctr} == expect_ctr
        assert {k: db.get(k) for k in lww} == lww
        ctr.merge(b"c0", P.increment(10))
        db.compact(wait=True)
        assert ctr.get(b"c0") == expect_ctr[b"c0"] + 10
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        assert ctr.get(b"c0") == expect_ctr[b"c0"] + 10
        assert ctr.get(b"c2") == expect_ctr[b"c2"]


def test_crash_after_commit_with_newer_segments_live(tmp_path):
    """Stale compacted segments come back next to newer, uncompacted ones."""
    path = tmp_path / "db"
    aside = tmp_path / "aside"
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        lww = _counter_history(db, ctr)
        shutil.copytree(path / "log", aside)
        db.compact(wait=True)
        # newer records in new segments, distinct keys (one version each)
        for i in range(100):
            db.put(b"new%03d" % i, b"n%d" % i)
        ctr.merge(b"c3", P.increment(100))
        lww.update({b"new%03d" % i: b"n%d" % i for i in range(100)})
        expect_ctr = {k: ctr.get(k) for k in (b"c0", b"c1", b"c2", b"c3")}
        live = [os.path.basename(f) for f in seg_files(path)]
    stale = [f for f in os.listdir(aside) if f not in live]
    assert stale
    for f in stale:
        shutil.copy2(aside / f, path / "log" / f)
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        assert [os.path.basename(f) for f in seg_files(path)] == live
        assert db.recovery["records"] == 101
        assert {k: ctr.get(k) for k in expect_ctr} == expect_ctr
        assert {k: db.get(k) for k in lww} == lww


def test_crash_before_store_commit_replays_the_log(tmp_path):
    """A crash before the compaction's LMDB commit: store unchanged, all segments live."""
    path = tmp_path / "db"
    aside = tmp_path / "aside"
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        lww = _counter_history(db, ctr)
        expect_ctr = {k: ctr.get(k) for k in (b"c0", b"c1", b"c2", b"c3")}
    shutil.copytree(path, aside)
    with _open(path, segment_size=4096) as db:
        db.namespace("c", merge=P())
        db.compact(wait=True)
    shutil.rmtree(path)
    shutil.copytree(aside, path)
    with _open(path, segment_size=4096) as db:
        ctr = db.namespace("c", merge=P())
        assert {k: ctr.get(k) for k in expect_ctr} == expect_ctr
        assert {k: db.get(k) for k in lww} == lww
        db.compact(wait=True)
        assert {k: ctr.get(k) for k in expect_ctr} == expect_ctr
