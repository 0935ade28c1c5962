"""The ``abase`` command line, on real stores.

Each command runs both in-process (``main(argv)``, output captured) and, for
the paths that matter to a shell, as ``python -m abase_engine`` in a
subprocess. Covered: every command's text and ``--json`` output (parsed and
compared with what the engine itself says), the refusals (not a store,
locked by another process or by this one, corrupt segment, malformed load
input), that read-only commands leave the store's files untouched, and that
``dump | load`` into a fresh store gives equal ``digest()``s.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import crdt
from abase_engine.cli import _ui, main
from abase_engine.cli._formats import FormatError, decode_bytes, encode_bytes, format_ts, parse_cursor, parse_ts

SRC = os.path.dirname(os.path.dirname(os.path.abspath(ae.__file__)))
P = crdt.PNCounter


# ----------------------------------------------------------------- helpers

def run(capsys, *argv):
    """main(argv) in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_sub(*argv, stdin=None):
    """``python -m abase_engine ARGV`` in a subprocess (this checkout's package)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "abase_engine", *map(str, argv)], input=stdin,
                          capture_output=True, env=env, timeout=120)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _fill(path: str) -> None:
    """A store with data in both layers, tombstones, two CRDT namespaces, an
    LWW namespace and a replication slot."""
    with ae.open(path, node_id=7, compact_interval=None, segment_size=8192) as db:
        ctr = db.namespace("ctr", merge=P())
        tags = db.namespace("tags", merge=crdt.ORSet())
        users = db.namespace("users")
        for i in range(300):
            db.put(b"k%03d" % i, b"value-%d" % i)
            ctr.merge(b"c%d" % (i % 5), P.increment(i))
            tags.merge(b"t%d" % (i % 3), crdt.ORSet.add(b"m%d" % i))
            if i % 7 == 0:
                db.delete(b"k%03d" % (i // 2))
                tags.merge(b"t1", crdt.ORSet.remove(b"m%d" % i))
        ctr.delete(b"c1")
        ctr.merge(b"c1", P.increment(2))
        users.put(b"ada", b"lovelace")
        users.put(b"\xff\x00bin", b"\x00\x01")
        db.compact(wait=True)  # no slot yet: the first part moves to LMDB
        db.replication_slot("to-b")
        for i in range(400):  # several segments, held by the slot
            db.put(b"late%03d" % i, b"z" * (i % 50))
        db.delete(b"k001")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tpl") / "db")
    _fill(path)
    return path


@pytest.fixture
def store(template, tmp_path):
    """A private copy of the populated store."""
    dst = str(tmp_path / "db")
    shutil.copytree(template, dst)
    return dst


def file_hashes(path: str) -> dict:
    """Content hash of every file of a store, except the lock files that
    opening touches by design (LOCK, LMDB's reader table)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, path)
            if rel in ("LOCK", os.path.join("store", "lock.mdb")):
                continue
            with open(p, "rb") as fh:
                out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def engine_view(path: str) -> dict:
    """What the engine says about a store: digests and visible values per namespace."""
    ops = {"ctr": P(), "tags": crdt.ORSet()}
    with ae.open(path, node_id=99, compact_interval=None) as db:
        out = {}
        for name, op in sorted(db.namespaces().items()) + [("", None)]:
            ns = db if name == "" else db.namespace(name, merge=ops.get(name))
            out[name] = (db.digest(name), dict(ns.scan()))
        return out


def one_line_error(err: str, kind: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"abase: error: {kind}: "), err


# ----------------------------------------------------------------- stats

def test_stats_text_and_json(store, capsys):
    code, out, err = run(capsys, "stats", store)
    assert code == 0, err
    for word in ("keys", "segment", "compaction", "ctr", "abase.PNCounter.v1", "to-b"):
        assert word in out
    code, out, _ = run(capsys, "stats", store, "--json", "--exact")
    assert code == 0
    data = json.loads(out)
    view = engine_view(store)
    assert data["namespaces"] == {
        "": {"operator": "abase.LWW.v1", "opened": True, "keys": len(view[""][1])},
        "ctr": {"operator": "abase.PNCounter.v1", "opened": True, "keys": len(view["ctr"][1])},
        "tags": {"operator": "abase.ORSet.v1", "opened": True, "keys": len(view["tags"][1])},
        "users": {"operator": "abase.LWW.v1", "opened": True, "keys": 2},
    }
    s = data["stats"]
    assert s["sealed_segments"] >= 1 and s["compaction_lag_bytes"] > 0 and s["store_keys"] > 0
    assert set(s["slots"]) == {"to-b"} and s["slots"]["to-b"]["invalidated"] is False


def test_global_options_before_the_command(store, capsys):
    code, out, _ = run(capsys, "--json", "stats", store)
    assert code == 0 and json.loads(out)["command"] == "stats"


# ----------------------------------------------------------------- verify

def test_verify_healthy_subprocess(store):
    r = run_sub("verify", store, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["healthy"] is True and data["findings"] == []
    view = engine_view(store)
    assert data["keys_read"] == {name: len(v[1]) for name, v in view.items()}


def _flip_in_sealed_segment(path: str):
    """Flip one bit inside the first record of a sealed segment; returns the file."""
    segs = sorted(os.listdir(os.path.join(path, "log")))
    assert len(segs) >= 3
    f = os.path.join(path, "log", segs[1])  # not the newest: a sealed one
    raw = bytearray(open(f, "rb").read())
    raw[64 + 45] ^= 0x10  # the first record starts after the 64-byte header; 40-byte record header + key
    open(f, "wb").write(raw)
    return f


def test_verify_reports_corruption_with_file_and_offset(store, capsys):
    f = _flip_in_sealed_segment(store)
    with pytest.raises(ae.CorruptionError) as ei:
        ae.open(store, compact_interval=None)
    code, out, _ = run(capsys, "verify", store, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["healthy"] is False
    [finding] = data["findings"]
    assert finding["kind"] == "corruption"
    assert os.path.basename(finding["file"]) == os.path.basename(f) == os.path.basename(ei.value.file)
    assert finding["offset"] == ei.value.offset == 64
    code, out, _ = run(capsys, "verify", store)
    assert code == 1 and os.path.basename(f) in out and "offset 64" in out
    # other commands refuse the store with the engine's own error line
    r = run_sub("stats", store)
    assert r.returncode == 2
    one_line_error(r.stderr.decode(), "CorruptionError")
    assert "offset 64" in r.stderr.decode()


# ----------------------------------------------------------------- refusals

NEEDS_STORE = [["stats"], ["verify"], ["dump"], ["compact"], ["digest"], ["changes"], ["slots"],
               ["load", "--node-id", "1", "--input", os.devnull]]


@pytest.mark.parametrize("argv", NEEDS_STORE, ids=lambda a: a[0])
@pytest.mark.parametrize("what", ["missing", "file", "empty dir", "other dir"])
def test_not_a_store_is_refused_and_nothing_created(tmp_path, capsys, argv, what):
    target = tmp_path / "target"
    if what == "file":
        target.write_bytes(b"not a store")
    elif what == "empty dir":
        target.mkdir()
    elif what == "other dir":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    before = sorted(os.listdir(tmp_path)), (sorted(os.listdir(target)) if target.is_dir() else None)
    code, out, err = run(capsys, argv[0], target, *argv[1:])
    assert code == 2 and out == ""
    one_line_error(err, "NotAStore")
    after = sorted(os.listdir(tmp_path)), (sorted(os.listdir(target)) if target.is_dir() else None)
    assert after == before


def test_load_create_refuses_a_directory_with_other_files(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    code, _out, err = run(capsys, "load", tmp_path / "x", "--create", "--node-id", "1", "--input", os.devnull)
    assert code == 2
    one_line_error(err, "NotAStore")
    assert os.listdir(tmp_path / "x") == ["keep.txt"]


def test_store_held_by_this_process(store, capsys):
    db = ae.open(store, compact_interval=None)
    try:
        for argv in (["stats", store], ["verify", store], ["dump", store],
                     ["load", store, "--node-id", "1", "--input", os.devnull]):
            code, out, err = run(capsys, *argv)
            assert code == 2 and out == ""
            one_line_error(err, "LockedError")
        assert db.get(b"k002") == b"value-2"  # the holder is unharmed
    finally:
        db.close()
    assert run(capsys, "stats", store)[0] == 0  # and the tool released nothing it did not take


def test_store_held_by_another_process(store, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, abase_engine as ae\n"
         "db = ae.open(sys.argv[1], compact_interval=None)\n"
         "print('ready', flush=True)\n"
         "sys.stdin.read()\n"
         "db.close()\n", store],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", "")))
    try:
        assert holder.stdout.readline().strip() == b"ready"
        code, out, err = run(capsys, "compact", store)
        assert code == 2 and out == ""
        one_line_error(err, "LockedError")
        assert "another process" in err
        code, out, err = run(capsys, "--json", "stats", store)
        assert code == 2 and json.loads(err)["error"] == "LockedError"
    finally:
        holder.communicate(b"", timeout=60)
    assert holder.returncode == 0
    assert run(capsys, "stats", store)[0] == 0


def test_read_only_commands_leave_the_files_untouched(store, capsys, tmp_path):
    before = file_hashes(store)
    for argv, expect in ((["stats", "--exact"], 0), (["verify"], 0), (["dump", "-n", "ctr"], 0),
                         (["dump", "--values"], 0), (["dump", "-n", "tags", "--format", "csv"], 0),
                         (["digest", "-n", "users"], 0), (["changes"], 0), (["changes", "--slot", "to-b"], 0),
                         (["slots"], 0), (["changes", "--slot", "new"], 2),
                         (["dump", "-n", "missing"], 2), (["digest", "-n", "missing"], 2)):
        code, _out, err = run(capsys, argv[0], store, *argv[1:])
        assert code == expect, (argv, err)
        assert file_hashes(store) == before, argv
    with ae.open(store, compact_interval=None) as db:
        assert set(db.namespaces()) == {"ctr", "tags", "users"} and set(db.stats()["slots"]) == {"to-b"}


def test_debug_adds_a_traceback(tmp_path, capsys):
    code, _out, err = run(capsys, "stats", tmp_path / "nope")
    assert code == 2 and "Traceback" not in err
    code, _out, err = run(capsys, "stats", tmp_path / "nope", "--debug")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("abase: error: NotAStore")


def test_usage_errors_help_and_version(capsys):
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    one_line_error(err, "UsageError")
    code, _out, err = run(capsys, "frobnicate")
    assert code == 2
    one_line_error(err, "UsageError")
    assert run(capsys, "--help")[0] == 0
    code, out, _ = run(capsys, "--version")
    assert code == 0 and ae.__version__ in out


def test_unknown_operator_namespace(store, capsys):
    class Concat(ae.MergeOperator):
        name = "test.Concat.v1"

        def full_merge(self, base, operands):
            return (base or b"") + b"".join(operands)

        def partial_merge(self, left, right):
            return left + right

    with ae.open(store, compact_interval=None) as db:
        db.namespace("custom", merge=Concat()).merge(b"k", b"x")
    code, out, _ = run(capsys, "stats", store, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["namespaces"]["custom"] == {"operator": "test.Concat.v1", "opened": False}
    assert data["not_opened"] == ["custom"]
    for argv in (["dump", "-n", "custom"], ["compact"]):
        code, _out, err = run(capsys, argv[0], store, *argv[1:])
        assert code == 2
        one_line_error(err, "UnknownOperator")
    code, out, _ = run(capsys, "verify", store, "--json")
    assert code == 0 and any("custom" in n for n in json.loads(out)["notes"])


# ----------------------------------------------------------------- dump / load

@pytest.mark.parametrize("namespace", ["", "ctr", "tags", "users"])
def test_dump_pipe_load_round_trip_equal_digests(store, tmp_path, namespace):
    """The shell pipeline ``abase dump A | abase load B --create``."""
    dumped = run_sub("dump", store, "-n", namespace)
    assert dumped.returncode == 0, dumped.stderr
    copy = str(tmp_path / "copy")
    loaded = run_sub("load", copy, "--create", "--node-id", "5", stdin=dumped.stdout)
    assert loaded.returncode == 0, loaded.stderr
    src, dst = engine_view(store)[namespace], engine_view(copy)[namespace]
    assert dst == src  # equal digest() and equal visible values
    assert json.loads(dumped.stdout.splitlines()[0])["abase_dump"] == 1


def test_dump_load_in_process_all_namespaces_csv_and_jsonl(store, tmp_path, capsys):
    copy = str(tmp_path / "copy")
    for i, (ns, fmt) in enumerate([("", "csv"), ("ctr", "jsonl"), ("tags", "csv"), ("users", "jsonl")]):
        out = tmp_path / f"d{i}.{fmt}"
        code, stdout, err = run(capsys, "dump", store, "-n", ns, "--format", fmt, "-o", out)
        assert code == 0 and stdout == "" and "dumped" in err
        extra = [] if fmt == "jsonl" else ["-n", ns] + (["--merge", {"ctr": "abase.PNCounter.v1",
                                                                       "tags": "abase.ORSet.v1"}[ns]]
                                                         if ns in ("ctr", "tags") else [])
        code, stdout, err = run(capsys, "load", copy, "--create", "--node-id", "5", "--format", fmt, "-i", out,
                                "--batch-size", "7", *extra)
        assert code == 0, err
    assert engine_view(copy) == engine_view(store)
    # loading the same records again changes nothing (apply is idempotent)
    code, stdout, _ = run(capsys, "load", copy, "--node-id", "5", "-i", tmp_path / "d1.jsonl", "--json")
    assert code == 0 and json.loads(stdout)["changed"] == 0
    assert engine_view(copy) == engine_view(store)


def test_dump_records_carry_timestamps_and_tombstones(store, capsys):
    code, out, _ = run(capsys, "dump", store, "--encoding", "utf-8", "--prefix", "k00")
    assert code == 0
    header, *lines = [json.loads(x) for x in out.splitlines()]
    assert header == {"abase_dump": 1, "kind": "records", "namespace": "", "operator": "abase.LWW.v1",
                      "encoding": "utf-8", "prefix": "k00", "at": None}
    recs = {r["key"]: r for r in lines}
    assert sorted(recs) == ["k%03d" % i for i in range(10)]
    assert recs["k000"]["op"] == recs["k001"]["op"] == "delete" and "value" not in recs["k001"]
    assert recs["k002"]["op"] == "put" and recs["k002"]["value"] == "value-2"
    assert parse_ts(recs["k002"]["ts"]).node_id == 7


def test_dump_values_at_a_timestamp(tmp_path, capsys):
    path = str(tmp_path / "db")
    with ae.open(path, node_id=3, compact_interval=None) as db:
        t1 = db.put(b"a", b"one")
        db.put(b"b", b"bee")
        db.put(b"a", b"two")
        db.delete(b"b")
    for form in (format_ts(t1), repr(t1), t1.to_bytes().hex()):
        code, out, err = run(capsys, "dump", path, "--at", form, "--encoding", "utf-8")
        assert code == 0, err
        header, *lines = [json.loads(x) for x in out.splitlines()]
        assert header["kind"] == "values" and header["at"] == format_ts(t1)
        assert lines == [{"key": "a", "value": "one"}]
    code, out, _ = run(capsys, "dump", path, "--values", "--encoding", "utf-8", "--format", "csv")
    assert code == 0 and list(csv.reader(io.StringIO(out))) == [["key", "value"], ["a", "two"]]


def test_values_load_writes_under_the_given_node_id(store, tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    assert run(capsys, "dump", store, "-n", "users", "--values", "-o", out)[0] == 0
    copy = str(tmp_path / "copy")
    code, stdout, err = run(capsys, "load", copy, "--create", "--node-id", "42", "-i", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["kind"] == "values"
    with ae.open(copy, node_id=42, compact_interval=None) as db:
        feed = [c for c in db.changes(include_applied=True) if c.namespace == "users"]
        assert {c.key: c.value for c in feed} == {b"ada": b"lovelace", b"\xff\x00bin": b"\x00\x01"}
        assert {c.timestamp.node_id for c in feed} == {42}
    code, _out, err = run(capsys, "load", copy, "-i", out)
    assert code == 2
    one_line_error(err, "UsageError")
    assert "--node-id" in err


def test_dump_utf8_refuses_binary_and_leaves_no_file(store, tmp_path, capsys):
    out = tmp_path / "users.jsonl"
    code, _stdout, err = run(capsys, "dump", store, "-n", "users", "--encoding", "utf-8", "-o", out)
    assert code == 2
    one_line_error(err, "FormatError")
    assert "base64" in err
    assert os.listdir(tmp_path) == ["db"]


def _lines(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


GOOD = [{"key": b64(b"g%d" % i), "value": b64(b"v%d" % i)} for i in range(3)]
BAD = {
    "not json": '{"key": "YQ==", ',
    "not an object": "[1, 2]",
    "unknown field": {"key": "YQ==", "value": "YQ==", "colour": "red"},
    "bad base64": {"key": "YQ==", "value": "!!!"},
    "no value": {"key": "YQ=="},
    "no key": {"value": "YQ=="},
    "bad op": {"key": "YQ==", "value": "YQ==", "op": "upsert"},
    "delete with value": {"key": "YQ==", "value": "YQ==", "op": "delete"},
    "ts on one line only": {"key": "YQ==", "value": "YQ==", "ts": "1700000000000,0,1"},
    "key too large": {"key": b64(b"x" * 600), "value": "YQ=="},
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_malformed_load_names_the_line_and_writes_nothing_of_its_batch(tmp_path, capsys, bad):
    path = str(tmp_path / "db")
    src = tmp_path / "in.jsonl"
    # batch size 2: lines 1-2 form a batch that commits; line 3 is good, line 4 is bad
    src.write_text(_lines(*GOOD, BAD[bad]))
    code, out, err = run(capsys, "load", path, "--create", "--node-id", "1", "--batch-size", "2", "-i", src)
    assert code == 2 and out == ""
    one_line_error(err, "MalformedInput")
    assert "line 4:" in err
    with ae.open(path, compact_interval=None) as db:
        assert dict(db.scan()) == {b"g0": b"v0", b"g1": b"v1"}


def test_malformed_csv_and_header(tmp_path, capsys):
    path = str(tmp_path / "db")
    src = tmp_path / "in.csv"
    src.write_text("key,value\na,b\nc\n")
    code, _out, err = run(capsys, "load", path, "--create", "--node-id", "1", "--format", "csv",
                          "--encoding", "utf-8", "-i", src)
    assert code == 2 and "line 3:" in err
    one_line_error(err, "MalformedInput")
    src.write_text(_lines({"abase_dump": 9, "kind": "records"}))
    code, _out, err = run(capsys, "load", path, "--node-id", "1", "-i", src)
    assert code == 2 and "line 1:" in err
    with ae.open(path, compact_interval=None) as db:
        assert dict(db.scan()) == {}


def test_load_refuses_a_crdt_state_that_does_not_decode(store, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(_lines({"abase_dump": 1, "kind": "records", "namespace": "ctr", "operator": "abase.PNCounter.v1",
                           "encoding": "base64"},
                          {"key": "eA==", "op": "merge", "value": b64(b"\x01garbage"), "ts": "1700000000000,0,1"}))
    before = engine_view(store)
    code, _out, err = run(capsys, "load", store, "--node-id", "1", "-i", src)
    assert code == 2 and "line 2:" in err and "MergeOperandError" in err
    assert engine_view(store) == before


def test_csv_load_into_an_existing_crdt_namespace_uses_its_operator(store, tmp_path, capsys):
    out = tmp_path / "ctr.csv"
    assert run(capsys, "dump", store, "-n", "ctr", "--values", "--format", "csv", "-o", out)[0] == 0
    before = engine_view(store)["ctr"]
    code, _out, err = run(capsys, "load", store, "--node-id", "9", "--format", "csv", "-n", "ctr", "-i", out)
    assert code == 0, err
    assert engine_view(store)["ctr"] == before  # a CRDT state joined with itself is itself
    code, _out, err = run(capsys, "load", store, "--node-id", "9", "--format", "csv", "-n", "ctr", "-i", out,
                          "--merge", "abase.GCounter.v1")
    assert code == 2
    one_line_error(err, "MergeOperatorMismatch")


def test_load_into_a_namespace_with_another_operator_is_refused(store, tmp_path, capsys):
    out = tmp_path / "ctr.jsonl"
    assert run(capsys, "dump", store, "-n", "ctr", "-o", out)[0] == 0
    code, _out, err = run(capsys, "load", store, "--node-id", "1", "-i", out, "-n", "tags")
    assert code == 2
    one_line_error(err, "MergeOperatorMismatch")


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(st.tuples(st.binary(max_size=12), st.one_of(st.none(), st.binary(max_size=40))),
                    max_size=40),
       fmt=st.sampled_from(["jsonl", "csv"]), batch=st.integers(1, 9))
def test_round_trip_property(tmp_path_factory, ops, fmt, batch):
    """Any history of puts and deletes survives dump | load with equal digests."""
    base = tmp_path_factory.mktemp("rt")
    src, dst, out = str(base / "src"), str(base / "dst"), str(base / f"d.{fmt}")
    with ae.open(src, node_id=2, compact_interval=None) as db:
        for key, value in ops:
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
    assert main(["-q", "dump", src, "--format", fmt, "-o", out]) == 0
    assert main(["-q", "load", dst, "--create", "--node-id", "3", "--format", fmt, "-i", out,
                 "--batch-size", str(batch)]) == 0
    assert engine_view(dst) == engine_view(src)


# ----------------------------------------------------------------- changes, slots, digest, compact

def _feed(capsys, store, *argv):
    code, out, err = run(capsys, "changes", store, *argv)
    assert code == 0, err
    return [json.loads(x) for x in out.splitlines()], err


def test_changes_resume_from_cursor(store, capsys):
    everything, _ = _feed(capsys, store)
    assert len(everything) > 10
    first, err = _feed(capsys, store, "--limit", "4", "--json")
    assert first == everything[:4]
    summary = json.loads(err)
    assert summary["next_cursor"] == first[-1]["cursor"] and summary["changes"] == 4
    rest, _ = _feed(capsys, store, "--since", summary["next_cursor"])
    assert first + rest == everything
    with ae.open(store, compact_interval=None) as db:
        expect = list(db.changes(include_applied=True))
    assert [(c["namespace"], base64.b64decode(c["key"]), c["op"], c["ts"], c["cursor"]) for c in everything] == [
        (c.namespace, c.key, c.op.name.lower(), format_ts(c.timestamp), c.cursor.hex()) for c in expect]
    assert _feed(capsys, store, "--origin", "8")[0] == []
    assert _feed(capsys, store, "--slot", "to-b")[0] == everything
    code, _out, err = run(capsys, "changes", store, "--since", "xyz")
    assert code == 2
    one_line_error(err, "UsageError")


def test_slots_list_and_drop(store, capsys):
    code, out, _ = run(capsys, "slots", store, "--json")
    assert code == 0
    slot = json.loads(out)["slots"]["to-b"]
    with ae.open(store, compact_interval=None) as db:
        assert slot["position"] == db.replication_slot("to-b").position.hex()
        assert slot["lag_bytes"] == db.stats()["slots"]["to-b"]["lag_bytes"] > 0
    code, _out, err = run(capsys, "slots", store, "--drop", "nope")
    assert code == 2
    one_line_error(err, "NoSuchSlot")
    code, out, _ = run(capsys, "slots", store, "--drop", "to-b")
    assert code == 0 and "dropped" in out
    with ae.open(store, compact_interval=None) as db:
        assert db.stats()["slots"] == {}


def test_digest_matches_the_engine(store, capsys):
    view = engine_view(store)
    for ns in ("", "ctr", "tags", "users"):
        code, out, _ = run(capsys, "digest", store, "-n", ns, "--json")
        assert code == 0
        assert json.loads(out)["hashes"] == [f"{h:016x}" for h in view[ns][0]]
    with ae.open(store, compact_interval=None) as db:
        deeper = db.digest("", (3, 10))
    code, out, _ = run(capsys, "digest", store, "--path", "3,a", "--json")
    assert code == 0 and json.loads(out)["hashes"] == [f"{h:016x}" for h in deeper]
    code, out, _ = run(capsys, "digest", store)
    assert code == 0 and f"{view[''][0][15]:016x}" in out
    assert run(capsys, "digest", store, "--path", "1,2,3")[0] == 2


def test_compact_folds_the_log_and_keeps_the_data(store, capsys):
    run(capsys, "slots", store, "--drop", "to-b")  # the slot holds the log back
    before = engine_view(store)
    code, out, err = run(capsys, "compact", store, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["segments_folded"] >= 1 and data["before"]["compaction_lag_bytes"] > 0
    assert data["after"]["compaction_lag_bytes"] == 0 and data["after"]["index_keys"] == 0
    assert engine_view(store) == before


def _deletes(capsys, store):
    code, out, _ = run(capsys, "dump", store)
    assert code == 0
    return sum(1 for line in out.splitlines()[1:] if json.loads(line)["op"] == "delete")


def test_compact_purges_and_invalidates_only_when_told(store, capsys):
    """The application's tombstone_grace_ms and max_slot_lag_bytes are not
    stored, so by default a compaction by the tool purges no tombstone and
    invalidates no slot."""
    tombstones = _deletes(capsys, store)
    assert tombstones > 0
    code, out, _ = run(capsys, "compact", store, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["held_by_slots"] == ["to-b"] and data["slots_invalidated"] == []
    assert data["after"]["compaction_lag_bytes"] > 0
    assert _deletes(capsys, store) == tombstones
    code, out, _ = run(capsys, "compact", store)
    assert code == 0 and "replication slot(s) 'to-b' still need it" in out
    values = engine_view(store)[""][1]
    code, out, _ = run(capsys, "compact", store, "--json", "--max-slot-lag-bytes", "0", "--tombstone-grace-ms", "0")
    assert code == 0
    data = json.loads(out)
    assert data["slots_invalidated"] == ["to-b"] and data["held_by_slots"] == []
    assert data["after"]["compaction_lag_bytes"] == 0
    assert _deletes(capsys, store) == 0
    assert engine_view(store)[""][1] == values
    code, out, _ = run(capsys, "slots", store, "--json")
    assert json.loads(out)["slots"]["to-b"]["invalidated"] is True
    code, _out, err = run(capsys, "changes", store, "--slot", "to-b")
    assert code == 2
    one_line_error(err, "SlotInvalidatedError")


def test_bench_runs_on_a_scratch_store(tmp_path, capsys):
    code, out, err = run(capsys, "bench", "--keys", "300", "--value-size", "10", "--dir", tmp_path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["keys"] == 300
    assert {"put", "get (log)", "scan (log)", "compact", "get (store)", "scan (store)"} <= set(data["results"])
    assert all(r["ops"] >= 300 for r in data["results"].values())
    assert os.listdir(tmp_path) == []  # the scratch store is gone
    r = run_sub("bench", "--keys", "200")
    assert r.returncode == 0 and "ops/s" in r.stdout.decode()


# ----------------------------------------------------------------- output machinery and formats

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal_and_not_quiet(monkeypatch):
    assert not _ui.Ui(False, False, stderr=io.StringIO()).bars_enabled()
    assert not _ui.Ui(False, True, stderr=_Tty()).bars_enabled()
    if _ui._tqdm is not None:
        tty = _Tty()
        ui = _ui.Ui(False, False, stderr=tty)
        assert ui.bars_enabled()
        assert list(ui.progress(range(5), total=5, desc="x")) == list(range(5))
        assert "x" in tty.getvalue()
        with ui.byte_progress("copying") as report:
            report(10, 100)
            report(100, 100)
        assert "copying" in tty.getvalue()
    quiet = _Tty()
    with _ui.Ui(False, True, stderr=quiet).byte_progress("copying") as report:
        report(1, 2)
    assert quiet.getvalue() == ""
    monkeypatch.setattr(_ui, "_tqdm", None)  # the `cli` extra not installed
    ui = _ui.Ui(False, False, stderr=_Tty())
    assert not ui.bars_enabled() and list(ui.progress(range(3))) == [0, 1, 2]


@given(st.binary(max_size=64))
def test_base64_round_trip(data):
    assert decode_bytes(encode_bytes(data, "base64"), "base64") == data


@given(st.text(max_size=40).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
def test_utf8_round_trip(text):
    data = text.encode()
    assert decode_bytes(encode_bytes(data, "utf-8"), "utf-8") == data


@given(st.integers(0, (1 << 47) - 1), st.integers(0, (1 << 16) - 1), st.integers(0, (1 << 32) - 1))
def test_timestamp_forms_round_trip(ms, logical, node):
    ts = ae.Timestamp(ms, logical, node)
    assert parse_ts(format_ts(ts)) == parse_ts(repr(ts)) == parse_ts(ts.to_bytes().hex()) == ts


@pytest.mark.parametrize("text", ["", "1,2", "1,2,3,4", "a,b,c", "1,70000,1", "00ff", "x" * 24])
def test_bad_timestamps_are_refused(text):
    with pytest.raises(FormatError):
        parse_ts(text)


def test_cursor_and_encoding_errors():
    assert parse_cursor("00" * 12) == bytes(12)
    for bad in ("", "00" * 11, "zz" * 12):
        with pytest.raises(FormatError):
            parse_cursor(bad)
    with pytest.raises(FormatError):
        encode_bytes(b"\xff", "utf-8")
    with pytest.raises(FormatError):
        decode_bytes(5, "base64")


# ----------------------------------------------------------------- backup / restore

def test_backup_and_restore_round_trip(store, tmp_path, capsys):
    code, out, err = run(capsys, "backup", store, tmp_path / "bk", "--json")
    assert code == 0, err
    view = engine_view(store)  # (opens it as node 99)
    b = json.loads(out)
    assert b["command"] == "backup" and b["node_id"] == 7 and 7 in b["node_ids"] and b["files"] >= 4
    assert parse_ts(b["timestamp"]).node_id == 7
    code, out, err = run(capsys, "restore", tmp_path / "bk", tmp_path / "r", "--node-id", 8, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["retired"] == sorted(b["node_ids"]) and r["node_id"] == 8 and r["timestamp"] == b["timestamp"]
    assert engine_view(str(tmp_path / "r")) == view
    code, out, err = run(capsys, "stats", tmp_path / "r", "--json")  # opens under the persisted id 8
    assert code == 0, err


def test_restore_refuses_the_old_node_id_unless_forced(store, tmp_path, capsys):
    assert run(capsys, "backup", store, tmp_path / "bk", "-q")[0] == 0
    code, out, err = run(capsys, "restore", tmp_path / "bk", tmp_path / "r", "--node-id", 7)
    assert code == 2 and out == ""
    one_line_error(err, "NodeIdRetiredError")
    assert not (tmp_path / "r").exists()
    code, out, err = run(capsys, "restore", tmp_path / "bk", tmp_path / "r", "--node-id", 7, "--force")
    assert code == 0, err
    assert out.startswith("restored ")


def test_backup_and_restore_errors(store, tmp_path, capsys):
    code, _out, err = run(capsys, "backup", tmp_path / "nothing", tmp_path / "bk")
    assert code == 2
    one_line_error(err, "NotAStore")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    code, _out, err = run(capsys, "backup", store, tmp_path / "full")
    assert code == 2
    one_line_error(err, "FileExistsError")
    code, _out, err = run(capsys, "restore", store, tmp_path / "r", "--node-id", 3)
    assert code == 2
    one_line_error(err, "FileNotFoundError")
    code, _out, err = run(capsys, "restore", store, tmp_path / "r")
    assert code == 2
    one_line_error(err, "UsageError")
    with ae.open(store, node_id=7):
        code, _out, err = run(capsys, "backup", store, tmp_path / "bk")
    assert code == 2
    one_line_error(err, "LockedError")


def test_backup_restore_subprocess(store, tmp_path):
    r = run_sub("backup", store, tmp_path / "bk")
    assert r.returncode == 0, r.stderr
    assert b"backed up" in r.stdout and r.stderr == b""  # not a terminal: no bar
    r = run_sub("restore", tmp_path / "bk", tmp_path / "r", "--node-id", "12")
    assert r.returncode == 0, r.stderr
    r = run_sub("verify", tmp_path / "r")
    assert r.returncode == 0, r.stderr
