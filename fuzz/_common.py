"""Shared setup of the fuzz harnesses (see fuzz/README.md).

Each harness is a module with ``TestOneInput(data: bytes)`` that raises
only when it finds a bug (an unexpected exception or a broken invariant);
the C core is meant to be built with ``ABASE_SANITIZE=1`` so that an out
of bounds access aborts with a report. ``main()`` hands the harness to
atheris; ``tests/test_fuzz_regressions.py`` replays every committed corpus
and crash file through the same functions without atheris.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.environ.get("ABASE_SRC", os.path.join(ROOT, "src"))
if SRC not in sys.path:
    sys.path.insert(0, SRC)

import abase_engine as ae  # noqa: E402
from abase_engine import crdt  # noqa: E402


def scratch_dir(name: str) -> str:
    """A directory for one harness, removed at exit."""
    path = tempfile.mkdtemp(prefix=f"abase-fuzz-{name}-")
    import atexit

    atexit.register(shutil.rmtree, path, True)
    return path


def seed_engine(path: str, segment_size: int = 4096) -> dict:
    """Write a small but varied history into a new engine at ``path``: several
    segments, two namespaces (LWW and a PNCounter), batches, deletes, a
    compaction, a replication slot, and a value that holds a whole,
    checksum-valid record (the forgery a cursor must not reach). Returns
    ``{"keys": set of keys written, "cursors": [cursor of each change]}``."""
    keys = set()
    with ae.open(path, segment_size=segment_size, compact_interval=None, digests=True) as db:
        ctr = db.namespace("ctr", merge=crdt.PNCounter())
        for i in range(40):
            k = b"k%03d" % i
            db.put(k, b"v" * (i * 7 % 90))
            keys.add(k)
            if i % 5 == 0:
                db.delete(b"k%03d" % (i // 2))
        ctr.merge(b"c", crdt.PNCounter.increment(2))
        keys.add(b"c")
        db.compact(wait=True)
        with db.batch() as b:
            for i in range(5):
                b.put(b"b%d" % i, b"batch")
                keys.add(b"b%d" % i)
            b.merge(b"c", crdt.PNCounter.increment(1), namespace="ctr")
        db.put(b"12345678", forged_record(b"victim") + b"tail")
        keys.add(b"12345678")
        for i in range(40):  # two more segments after the compaction
            db.put(b"n%03d" % i, b"w" * 120)
            keys.add(b"n%03d" % i)
        db.replication_slot("peer")
        cursors = [ch.cursor for ch in db.changes()]
    return {"keys": keys, "cursors": cursors}


def forged_record(key: bytes) -> bytes:
    """A whole DELETE record of ``key`` with a valid checksum, padded to 8."""
    import struct

    from abase_engine._abase import lib

    body = struct.pack("<QQIIBBHI", 0, (1 << 40) << 16, 7, 0, 2, 1, len(key), 0) + key
    rest = struct.pack("<I", 8 + len(body)) + body
    rec = struct.pack("<I", lib.abase_crc_mask(lib.abase_crc32c(0, rest, len(rest)))) + rest
    return rec + b"\0" * (-len(rec) % 8)


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run the harness under atheris (arguments are libFuzzer's)."""
    import atheris

    atheris.instrument_all()  # coverage of the Python code; the C core is not instrumented
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


class Reader:
    """Consumes a fuzz input as a sequence of choices (no atheris needed,
    so the regression test can replay inputs). Reads past the end give 0."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def int(self, nbytes: int) -> int:
        chunk = self._data[self._pos:self._pos + nbytes]
        self._pos += nbytes
        return int.from_bytes(chunk.ljust(nbytes, b"\0"), "little")

    def below(self, n: int) -> int:
        return self.int(4) % n if n > 1 else 0

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def bytes(self, max_len: int) -> bytes:
        n = self.below(max_len + 1)
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        return out

    def left(self) -> int:
        return max(0, len(self._data) - self._pos)
