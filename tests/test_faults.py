"""I/O faults, injected with the LD_PRELOAD shim tests/faultfs.c.

Each test runs one scenario of tests/fault_child.py in a child process with
the shim preloaded, then checks what the engine did (the child's report) and
reopens the directory here, without the shim, to check that every write the
engine acknowledged is there (and, under durability "sync", that a write
whose sync failed is not). The rules under test (DESIGN.md invariant 7,
docs/reliability.md): a failed fdatasync/fsync/msync of the log or a
directory, a failed seal or segment allocation, or a failed store commit
is sticky: that write and every later one raise IOFailedError naming the
file and the call, until the engine is reopened; reads keep working;
``stats()["io_error"]`` describes the failure.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import abase_engine as ae
import faultfs
import logfmt

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "fault_child.py")

_why = faultfs.available()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


def run(scenario: str, path) -> dict:
    """Run a scenario under the shim; its report."""
    res = subprocess.run([sys.executable, CHILD, scenario, str(path)], capture_output=True, text=True,
                         env=faultfs.child_env(), timeout=300)
    assert res.returncode == 0, f"{scenario} failed (rc {res.returncode}):\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def acked(report) -> dict:
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in report["acked"].items()}


def reopen_and_check(path, report, **opts) -> ae.Engine:
    """Reopen without the shim: every acknowledged write is there."""
    opts.setdefault("compact_interval", None)
    db = ae.open(path, **opts)
    for k, v in acked(report).items():
        assert db.get(k) == v, k
    assert db.check() == []
    return db


def assert_io_error(err: dict, syscall: str, file_part: str, code: int = errno.EIO) -> None:
    assert err["type"] == "IOFailedError", err
    assert err["syscall"] == syscall and err["errno"] == code, err
    assert file_part in (err["file"] or ""), err
    assert syscall in err["message"] and (err["file"] or "") in err["message"], err


def assert_sticky(rep: dict, syscall: str, file_part: str, code: int = errno.EIO) -> None:
    """The write after the failure, a sync, a compaction and a batch are all
    refused with the first failure's details; reads of acknowledged keys
    work; stats() shows the failure."""
    assert rep["next_put_acked"] is False
    for what in ("sync", "compact", "batch"):
        assert_io_error(rep[what], syscall, file_part, code)
        assert "refused" in rep[what]["message"], rep[what]
    assert rep["reads_ok"] is True
    io = rep["io_error"]
    assert io is not None and io["syscall"] == syscall and io["errno"] == code and file_part in io["file"]


# ------------------------------------------------------------------ the log

def test_fdatasync_fails_at_seal(tmp_path):
    """Defect 1: the seal's fdatasync fails. Before the fix the segment was
    already shortened and stayed active: the next small put was written past
    the end of the file and acknowledged (then lost), a larger one raised
    SIGBUS. Now the segment is sealed whole and every write is refused."""
    path = tmp_path / "db"
    rep = run("seal_fdatasync_eio", path)
    assert rep["hits"] == 1
    first = rep["errors"][0]
    assert_io_error(first, "fdatasync", "00000001.seg")
    assert bytes.fromhex(rep["probe"]) in [bytes.fromhex(k) for k in rep["refused"]]
    assert_sticky(rep, "fdatasync", "00000001.seg")
    assert rep["big_put_acked"] is False
    assert rep["probe_visible"] is False
    with reopen_and_check(path, rep, durability="sync") as db:
        assert db.get(bytes.fromhex(rep["probe"])) is None
        assert len(dict(db.scan())) == len(rep["acked"])
        assert db.recovery["after_failure"] is True
        db.put(b"after", b"reopen")  # a reopened engine writes again
    with reopen_and_check(path, rep, durability="sync") as db:
        assert db.get(b"after") == b"reopen"


@pytest.mark.parametrize("times", ["once", "always"])
def test_fdatasync_fails_at_append(tmp_path, times):
    """Defect 2 ("fsyncgate"): the failed write raises, and so does every
    later one, even when a new fdatasync would succeed (the kernel reports a
    failed writeback once). The failed write is neither readable nor in the
    change feed, and is gone after reopening."""
    path = tmp_path / "db"
    rep = run(f"append_fdatasync_eio_{times}", path)
    assert rep["hits"] == 1  # nothing tried to sync again after the failure
    probe = bytes.fromhex(rep["probe"])
    assert_io_error(rep["errors"][0], "fdatasync", ".seg")
    assert_sticky(rep, "fdatasync", ".seg")
    assert rep["probe_visible"] is False
    assert rep["probe"] not in rep["feed_keys"]
    assert sorted(rep["feed_keys"]) == sorted(rep["acked"])
    assert len(rep["acked"]) == 20 if times == "once" else 10
    if times == "always":
        assert rep["close"]["type"] is None  # close after a failure syncs nothing and works
    with reopen_and_check(path, rep, durability="sync") as db:
        assert db.get(probe) is None
        assert dict(db.scan()) == acked(rep)
        assert db.recovery["after_failure"] is True and db.recovery["dropped_bytes"] > 0


def test_fsyncgate_with_concurrent_durable_writers(tmp_path):
    """Four durable writers, one failed fdatasync: no write is acknowledged
    by a later sync. Each writer's puts succeed up to its first failure and
    fail from there on; a refused write is never visible; after reopening
    exactly the acknowledged writes are there."""
    path = tmp_path / "db"
    rep = run("fsyncgate_threads", path)
    assert rep["hits"] == 1
    for t, outcomes in rep["outcomes"].items():
        first_fail = outcomes.index(False) if False in outcomes else len(outcomes)
        assert all(outcomes[:first_fail]) and not any(outcomes[first_fail:]), (t, outcomes)
    assert rep["refused"], "the fault did not hit"
    assert rep["visible_refused"] == [] and rep["feed_refused"] == []
    assert rep["reads_ok"] is True
    assert_io_error(rep["sync"], "fdatasync", ".seg")
    with reopen_and_check(path, rep, durability="sync") as db:
        assert dict(db.scan()) == acked(rep)


def test_failed_sync_under_process_durability(tmp_path):
    """Durability "process": the writes were acknowledged before db.sync()
    failed; they stay readable and survive reopening; later writes are
    refused."""
    path = tmp_path / "db"
    rep = run("process_sync_eio", path)
    assert_io_error(rep["first_sync"], "fdatasync", ".seg")
    assert_sticky(rep, "fdatasync", ".seg")
    assert rep["probe_visible"] is True  # k0000: acknowledged, still visible
    with reopen_and_check(path, rep) as db:
        assert dict(db.scan()) == acked(rep)
        assert db.recovery["after_failure"] is True


def test_fallocate_enospc_on_a_new_segment(tmp_path):
    """The disk is full when a segment is preallocated: an IOFailedError
    naming posix_fallocate and ENOSPC, never a SIGBUS; writes stay refused
    (the child would have died of SIGBUS writing into an unallocated page)."""
    path = tmp_path / "db"
    rep = run("fallocate_enospc", path)
    assert rep["hits"] >= 1
    assert_io_error(rep["errors"][0], "posix_fallocate", ".seg", errno.ENOSPC)
    assert_sticky(rep, "posix_fallocate", ".seg", errno.ENOSPC)
    assert_io_error(rep["many"], "posix_fallocate", ".seg", errno.ENOSPC)
    with reopen_and_check(path, rep) as db:
        assert dict(db.scan()) == acked(rep)


def test_fallocate_enospc_at_recovery_reports_its_errno(tmp_path):
    """Defect 9: posix_fallocate returns its error, it does not set errno;
    recovery reported a stale errno."""
    path = tmp_path / "db"
    with ae.open(path, compact_interval=None) as db:
        db.put(b"k", b"v")
    last = logfmt.seg_files(path)[-1]
    open(os.path.join(path, "log", "%08d.seg" % (logfmt.seg_no(last) + 1)), "wb").close()  # W3, empty
    rep = run("recovery_fallocate_enospc", path)
    assert rep["hits"] == 1
    assert_io_error(rep["open"], "posix_fallocate", ".seg", errno.ENOSPC)
    with ae.open(path, compact_interval=None) as db:  # room again: the empty segment is taken up
        assert db.get(b"k") == b"v"


def test_log_directory_fsync_fails(tmp_path):
    """Durability "sync": the fsync of log/ that puts a new segment's name on
    disk fails: the write that needed the segment is refused, and so is
    every later one."""
    path = tmp_path / "db"
    rep = run("log_dir_fsync_eio", path)
    assert rep["hits"] == 1
    assert_io_error(rep["errors"][0], "fsync", "log")
    assert_sticky(rep, "fsync", "log")
    with reopen_and_check(path, rep, durability="sync") as db:
        assert dict(db.scan()) == acked(rep)


# ---------------------------------------------------------------- the store

def test_store_commit_fails_in_the_compactor(tmp_path):
    """The compactor's LMDB commit fails: compaction raises IOFailedError
    (mdb_txn_commit, EIO) and every later write is refused; both the
    log-resident and the already compacted keys stay readable; reopening
    replays the segments the failed commit did not fold."""
    path = tmp_path / "db"
    rep = run("store_commit_eio", path)
    assert rep["hits"] == 1
    assert_io_error(rep["first_compact"], "mdb_txn_commit", "data.mdb")
    assert_sticky(rep, "mdb_txn_commit", "data.mdb")
    assert rep["stored_reads_ok"] is True
    with reopen_and_check(path, rep) as db:
        assert dict(db.scan()) == acked(rep)
        db.compact(wait=True)  # the store works again after reopening
        assert dict(db.scan()) == acked(rep)


# ------------------------------------------------------------------- slots

def _slot_position(path) -> bytes:
    with ae.open(path, compact_interval=None) as db:
        return db.replication_slot("peer").position


def test_short_write_of_slots_file(tmp_path):
    """A short write of slots.json (then ENOSPC): the ack raises
    IOFailedError naming the file and write(), the slot keeps its position
    in memory and on disk, and writes to the engine go on (the log does not
    depend on slots.json). A later ack with room succeeds."""
    path = tmp_path / "db"
    rep = run("slots_short_write", path)
    assert rep["hits"] == 2
    assert_io_error(rep["ack"], "write", "slots.json", errno.ENOSPC)
    assert rep["position"] == rep["expected"]
    assert rep["next_put_acked"] is True and rep["io_error"] is None
    assert rep["ack2"]["type"] is None and rep["position2"] == rep["expected2"]
    assert _slot_position(path).hex() == rep["expected2"]
    assert not os.path.exists(os.path.join(path, "slots.json.tmp"))
    with reopen_and_check(path, rep):
        pass


def test_short_write_of_slots_file_is_completed(tmp_path):
    path = tmp_path / "db"
    rep = run("slots_short_write_retried", path)
    assert rep["hits"] == 1
    assert rep["ack"]["type"] is None and rep["position"] == rep["expected"]
    assert _slot_position(path).hex() == rep["expected"]
    with reopen_and_check(path, rep):
        pass


def test_failed_fsync_of_slots_file(tmp_path):
    path = tmp_path / "db"
    rep = run("slots_fsync_eio", path)
    assert rep["hits"] == 1
    assert_io_error(rep["ack"], "fsync", "slots.json")
    assert rep["position"] == rep["expected"]
    assert rep["next_put_acked"] is True
    assert _slot_position(path).hex() == rep["expected"]
    with reopen_and_check(path, rep):
        pass


# ------------------------------------------------------------------- clock

def test_wall_clock_steps_back(tmp_path):
    """The wall clock steps back 5 s: timestamps keep increasing (the HLC
    holds its physical part and counts logical ticks), nothing fails, and
    after reopening the clock is still past every record."""
    path = tmp_path / "db"
    rep = run("clock_steps_back", path)
    assert rep["stepped_back"] is True
    assert rep["increasing"] is True
    assert rep["reads_ok"] is True and rep["io_error"] is None
    with reopen_and_check(path, rep) as db:
        assert dict(db.scan()) == acked(rep)
        assert db.put(b"later", b"x").hlc > rep["last_hlc"]


# --------------------------------------------------------- directory syncs

def test_sync_under_process_durability_fsyncs_the_log_directory(tmp_path):
    """Defect 9: db.sync() used to fdatasync the segments but never the log
    directory that names them; a failure of that fsync now surfaces."""
    path = tmp_path / "db"
    rep = run("process_sync_fsyncs_log_dir", path)
    assert rep["segments"] > 1 and rep["hits"] == 1
    assert_io_error(rep["sync"], "fsync", "log")
    with reopen_and_check(path, rep) as db:
        assert dict(db.scan()) == acked(rep)


def test_new_directories_are_synced_into_their_parent(tmp_path):
    """Defect 9: log/ (and store/) are fsync'd into the engine directory
    when created, and the segment and the mark into log/."""
    rep = run("new_directory_names_are_synced", tmp_path / "db")
    listings = rep["listings"]
    assert {"log", "store", "LOCK"} <= set(listings["@"])
    assert {"MARK", "00000000.seg"} <= set(listings["log"])
    assert "data.mdb" in listings["store"]
