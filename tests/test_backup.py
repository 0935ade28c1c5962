"""Backup of an open engine, restore under a new node id, and the NODE file.

The central test takes a backup while writer threads and the compactor run,
restores it, and compares the copy with a reference built from the writes
the threads had acknowledged with a timestamp <= the backup's: equal scans
and equal ``digest()``s (the reference engine got the same records through
``apply``). Batches are checked to be whole or absent; every write
acknowledged before the ``backup()`` call must be in the copy.
"""

from __future__ import annotations

import json
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import crdt
from abase_engine.backup import MANIFEST, read_manifest
from abase_engine.errors import CorruptionError, NodeIdRetiredError
from abase_engine.node_ids import NODE_FILE, persisted_node_id, read_node_ids

P = crdt.PNCounter


def _reference_digest(tmp_path, newest: dict) -> list:
    """digest() of a fresh engine that received exactly ``newest`` (key ->
    (op, value, ts)) through apply."""
    changes = [ae.Change("", k, ae.Op.DELETE if v is None else ae.Op.PUT, v, ts) for k, (v, ts) in newest.items()]
    with ae.open(str(tmp_path / "reference"), node_id=99, compact_interval=None) as ref:
        ref.apply(changes)
        return [ref.digest("", (i,)) for i in range(16)]


def _digest_all(db) -> list:
    return [db.digest("", (i,)) for i in range(16)]


def test_backup_while_writers_and_compactor_run(tmp_path):
    src = str(tmp_path / "src")
    db = ae.open(src, node_id=1, segment_size=1 << 16, compact_interval=0.001)
    ctr = db.namespace("ctr", merge=P())
    pairs = db.namespace("pairs")
    logs = [[] for _ in range(3)]  # per writer: (key, value or None, ts), in acknowledgement order
    increments = []  # timestamps of acknowledged counter increments
    batches = []  # (batch number, timestamp of its last record)
    stop = threading.Event()
    progress = threading.Semaphore(0)

    def writer(t: int) -> None:
        i = 0
        while not stop.is_set():
            key = b"k%04d" % ((i * 7 + t * 13) % 1500)
            if i % 5 == 4:
                logs[t].append((key, None, db.delete(key)))
            else:
                value = b"t%d-%d-" % (t, i) + b"x" * (i % 40)
                logs[t].append((key, value, db.put(key, value)))
            i += 1
            if i % 500 == 0:
                progress.release()

    def pair_writer() -> None:
        n = 0
        while not stop.is_set():
            b = db.batch()
            b.put(b"a%06d" % n, b"%d" % n, namespace=pairs)
            b.put(b"b%06d" % n, b"%d" % n, namespace=pairs)
            batches.append((n, b.commit()))
            increments.append(ctr.merge(b"clicks", P.increment(1)))
            n += 1
            if n % 200 == 0:
                progress.release()

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    threads.append(threading.Thread(target=pair_writer))
    for th in threads:
        th.start()
    try:
        for _ in range(12):  # the writers have made progress (no sleeping)
            progress.acquire()
        acked = [len(log) for log in logs]
        acked_batches, acked_incs = len(batches), len(increments)
        ts = db.backup(str(tmp_path / "bk"))
        for _ in range(6):  # and they keep writing after it
            progress.acquire()
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert db.stats()["compactions"] > 0, "the compactor ran during the test"
    db.close()

    # every write acknowledged before the call is at or below T; later ones exist
    for t, log in enumerate(logs):
        assert all(w[2] <= ts for w in log[:acked[t]])
    assert all(last <= ts for _n, last in batches[:acked_batches])
    assert all(x <= ts for x in increments[:acked_incs])
    assert any(w[2] > ts for log in logs for w in log)

    ae.restore(str(tmp_path / "bk"), str(tmp_path / "restored"), node_id=2)
    newest: dict = {}
    for log in logs:
        for key, value, wts in log:
            if wts <= ts and (key not in newest or newest[key][1] < wts):
                newest[key] = (value, wts)
    with ae.open(str(tmp_path / "restored"), node_id=2, compact_interval=None) as r:
        assert r.check() == []
        assert dict(r.scan()) == {k: v for k, (v, _ts) in newest.items() if v is not None}
        assert _digest_all(r) == _reference_digest(tmp_path, newest)
        assert r.namespace("ctr", merge=P()).get(b"clicks") == sum(1 for x in increments if x <= ts)
        expect = {}
        for n, last in batches:
            if last <= ts:
                expect[b"a%06d" % n] = expect[b"b%06d" % n] = b"%d" % n
        assert dict(r.namespace("pairs").scan()) == expect  # whole batches up to T, none after


def _store_with_history(path: str, node_id: int = 1) -> None:
    with ae.open(path, node_id=node_id, segment_size=8192, compact_interval=None) as db:
        for i in range(300):
            db.put(b"k%03d" % i, b"v%d" % i)
        db.compact()
        for i in range(0, 300, 3):
            db.delete(b"k%03d" % i)


def test_restore_refuses_the_old_node_id_and_force_allows_it(tmp_path):
    _store_with_history(str(tmp_path / "src"), node_id=5)
    with ae.open(str(tmp_path / "src"), node_id=5) as db:
        ts = db.backup(str(tmp_path / "bk"))
        expect = dict(db.scan())
    with pytest.raises(NodeIdRetiredError, match="node id 5 was used"):
        ae.restore(str(tmp_path / "bk"), str(tmp_path / "r"), node_id=5)
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(str(tmp_path / "r") + ".partial")

    out = ae.restore(str(tmp_path / "bk"), str(tmp_path / "r"), node_id=6)
    assert out["timestamp"] == ts and out["node_id"] == 6 and out["retired"] == [5]
    assert read_node_ids(str(tmp_path / "r")).retired == (5,)
    with pytest.raises(NodeIdRetiredError, match="node id 5 is retired"):
        ae.open(str(tmp_path / "r"), node_id=5)
    with ae.open(str(tmp_path / "r"), node_id=6) as r:
        assert dict(r.scan()) == expect
        new = r.put(b"new", b"x")
        assert new > ts and new.node_id == 6  # the copy's clock starts past the backup's

    forced = ae.restore(str(tmp_path / "bk"), str(tmp_path / "f"), node_id=5, force=True)
    assert forced["retired"] == []
    with ae.open(str(tmp_path / "f"), node_id=5) as f:
        assert dict(f.scan()) == expect


def test_opening_the_backup_in_place_under_its_old_id_is_refused(tmp_path):
    _store_with_history(str(tmp_path / "src"), node_id=3)
    with ae.open(str(tmp_path / "src"), node_id=3) as db:
        db.backup(str(tmp_path / "bk"))
    with pytest.raises(NodeIdRetiredError):
        ae.open(str(tmp_path / "bk"), node_id=3)


def test_ids_accumulate_across_backup_generations(tmp_path):
    _store_with_history(str(tmp_path / "src"), node_id=1)
    with ae.open(str(tmp_path / "src"), node_id=1) as db:
        db.backup(str(tmp_path / "bk1"))
    ae.restore(str(tmp_path / "bk1"), str(tmp_path / "r1"), node_id=2)
    with ae.open(str(tmp_path / "r1"), node_id=2) as r1:
        r1.put(b"gen", b"2")
        r1.backup(str(tmp_path / "bk2"))
    assert read_manifest(str(tmp_path / "bk2"))["node_ids"] == [1, 2]
    for old in (1, 2):
        with pytest.raises(NodeIdRetiredError):
            ae.restore(str(tmp_path / "bk2"), str(tmp_path / "r2"), node_id=old)
    ae.restore(str(tmp_path / "bk2"), str(tmp_path / "r2"), node_id=3)
    with ae.open(str(tmp_path / "r2"), node_id=3) as r2:
        assert r2.get(b"gen") == b"2" and r2.get(b"k001") == b"v1" and r2.get(b"k000") is None


def test_backup_target_must_be_missing_or_empty(tmp_path):
    _store_with_history(str(tmp_path / "src"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    (tmp_path / "empty").mkdir()
    with ae.open(str(tmp_path / "src"), node_id=1) as db:
        with pytest.raises(FileExistsError):
            db.backup(str(tmp_path / "full"))
        assert os.listdir(tmp_path / "full") == ["x"]
        db.backup(str(tmp_path / "empty"))
    assert sorted(os.listdir(tmp_path / "empty")) == [MANIFEST, NODE_FILE, "log", "store"]
    with pytest.raises(FileExistsError):
        ae.restore(str(tmp_path / "empty"), str(tmp_path / "full"), node_id=9)


def test_backup_of_a_closed_engine_raises(tmp_path):
    db = ae.open(str(tmp_path / "src"), node_id=1)
    db.close()
    with pytest.raises(ae.EngineClosedError):
        db.backup(str(tmp_path / "bk"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "manifest"])
def test_restore_checks_every_file_against_the_manifest(tmp_path, damage):
    _store_with_history(str(tmp_path / "src"))
    with ae.open(str(tmp_path / "src"), node_id=1) as db:
        db.backup(str(tmp_path / "bk"))
    bk = tmp_path / "bk"
    seg = sorted(p for p in os.listdir(bk / "log") if p.endswith(".seg"))[-1]
    target = bk / "log" / seg
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[100] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "remove":
        target.unlink()
    else:
        m = json.loads((bk / MANIFEST).read_text())
        m["files"]["../../etc/passwd"] = {"bytes": 1, "xxh64": "0"}
        (bk / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CorruptionError) as info:
        ae.restore(str(bk), str(tmp_path / "r"), node_id=2)
    assert (seg in str(info.value)) or damage == "manifest"
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(str(tmp_path / "r") + ".partial")


def test_restore_of_something_that_is_not_a_backup(tmp_path):
    _store_with_history(str(tmp_path / "src"))
    with pytest.raises(FileNotFoundError, match="not an abase backup"):
        ae.restore(str(tmp_path / "src"), str(tmp_path / "r"), node_id=2)
    with pytest.raises(ae.InvalidOptionError):
        ae.restore(str(tmp_path / "src"), str(tmp_path / "r"), node_id=-1)


def test_node_file_records_every_id_and_refuses_damage(tmp_path):
    path = str(tmp_path / "db")
    with ae.open(path, node_id=4):
        pass
    assert persisted_node_id(path) == 4
    before = os.stat(os.path.join(path, NODE_FILE)).st_mtime_ns
    with ae.open(path, node_id=4):
        pass
    assert os.stat(os.path.join(path, NODE_FILE)).st_mtime_ns == before  # same id: nothing written
    with ae.open(path, node_id=8):
        pass
    ids = read_node_ids(path)
    assert (ids.node_id, ids.used, ids.retired) == (8, (4, 8), ())
    with open(os.path.join(path, NODE_FILE), "w") as f:
        f.write('{"abase_node_ids": 1, "node_id": 8, "used": ["x"], "retired": []}')
    with pytest.raises(CorruptionError, match="NODE"):
        ae.open(path, node_id=8)
    for lost in (b"", b"\0" * 65):  # a crash image whose NODE contents never reached the disk
        with open(os.path.join(path, NODE_FILE), "wb") as f:
            f.write(lost)
        with ae.open(path, node_id=9):
            pass
        assert read_node_ids(path).used == (9,)


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]), st.one_of(st.none(), st.binary(max_size=8)),
                              st.booleans()), max_size=40))
def test_backup_equals_the_state_when_nothing_runs(tmp_path_factory, ops):
    base = tmp_path_factory.mktemp("prop")
    with ae.open(str(base / "src"), node_id=1, segment_size=4096, compact_interval=None) as db:
        stamps = []
        for key, value, compact in ops:
            stamps.append(db.delete(key) if value is None else db.put(key, value))
            if compact:
                db.compact()
        ts = db.backup(str(base / "bk"))
        state, digest = dict(db.scan()), _digest_all(db)
        assert all(s <= ts for s in stamps) and db.put(b"later", b"") > ts
    ae.restore(str(base / "bk"), str(base / "r"), node_id=2)
    with ae.open(str(base / "r"), node_id=2, compact_interval=None) as r:
        assert dict(r.scan()) == state
        assert _digest_all(r) == digest


@pytest.mark.parametrize("durability", ["none", "process", "sync"])
def test_uncompacted_namespace_definitions_and_durability_levels(tmp_path, durability):
    src = str(tmp_path / "src")
    with ae.open(src, node_id=1, durability=durability, compact_interval=None) as db:
        assert db.backup(str(tmp_path / "empty")) == ae.Timestamp(0, 0, 1)  # nothing issued yet
        tags = db.namespace("tags", merge=crdt.ORSet())  # defined in the log only
        tags.merge(b"k", crdt.ORSet.add(b"x"))
        db.namespace("users").put(b"ada", b"l")
        db.backup(str(tmp_path / "bk"))
    ae.restore(str(tmp_path / "bk"), str(tmp_path / "r"), node_id=2)
    with ae.open(str(tmp_path / "r"), node_id=2, compact_interval=None) as r:
        assert r.namespaces() == {"tags": "abase.ORSet.v1", "users": "abase.LWW.v1"}
        assert r.namespace("tags", merge=crdt.ORSet()).get(b"k") == frozenset({b"x"})
        assert r.namespace("users").get(b"ada") == b"l"
        r.compact()
        assert r.check() == []
    ae.restore(str(tmp_path / "empty"), str(tmp_path / "r0"), node_id=2)
    with ae.open(str(tmp_path / "r0"), node_id=2) as r0:
        assert r0.namespaces() == {} and list(r0.scan()) == []
