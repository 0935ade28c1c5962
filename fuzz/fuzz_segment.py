"""Fuzz harness: recovery and repair of mutated segment files.

Input: byte 0 picks one live segment of a seeded engine directory; the rest
replaces that segment file's bytes. Then:

* ``abase_segment_verify`` (the C check, no engine) runs on the bytes;
* ``ae.open`` must either succeed or raise CorruptionError or
  FormatVersionError. If it opens, every read API runs (changes, scan, get
  of every key, check) and a compaction folds what recovery accepted;
* if it does not open, ``ae.repair`` must make it open, after which
  ``check()`` finds nothing.

Anything else (another exception, an ASan report, a hang) is a finding.
Run: see fuzz/README.md.
"""

from __future__ import annotations

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import ae, crdt  # noqa: E402

from abase_engine._abase import ffi, lib  # noqa: E402
from abase_engine.errors import CorruptionError, FormatVersionError  # noqa: E402

_WORK = _common.scratch_dir("segment")
_TEMPLATE = os.path.join(_WORK, "template")
_DB = os.path.join(_WORK, "db")
_SEED = _common.seed_engine(_TEMPLATE)
_SEGMENTS = sorted(n for n in os.listdir(os.path.join(_TEMPLATE, "log")) if n.endswith(".seg"))


def _reset(victim: str, data: bytes) -> None:
    shutil.rmtree(_DB, ignore_errors=True)
    shutil.copytree(_TEMPLATE, _DB)
    with open(os.path.join(_DB, "log", victim), "wb") as f:
        f.write(data)


def _exercise(db) -> None:
    for _ch in db.changes(include_applied=True):
        pass
    for _kv in db.scan():
        pass
    ctr = db.namespace("ctr", merge=crdt.PNCounter())
    for _kv in ctr.scan():
        pass
    for key in _SEED["keys"]:
        db.get(key)
        ctr.get(key)
    db.check()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    victim = _SEGMENTS[data[0] % len(_SEGMENTS)]
    body = data[1:]
    out = ffi.new("abase_verify *")
    no = int(victim.split(".")[0])
    lib.abase_segment_verify(body if body else ffi.NULL, len(body), no, out)
    _reset(victim, body)
    try:
        db = ae.open(_DB, compact_interval=None, segment_size=4096)
    except (CorruptionError, FormatVersionError):
        db = None
    if db is not None:
        try:
            _exercise(db)
            db.compact(wait=True)
            _exercise(db)
        finally:
            db.close()
        return
    ae.repair(_DB)
    with ae.open(_DB, compact_interval=None, segment_size=4096) as db:
        problems = db.check()
        if problems:
            raise AssertionError(f"repaired directory still has problems: {problems}")
        _exercise(db)


if __name__ == "__main__":
    _common.main(TestOneInput)
