"""Write the seed corpus of every harness into fuzz/corpus/<harness>/.

Deterministic apart from timestamps; run it again after a format change:

    python fuzz/make_corpus.py

Each file is small (the largest, a digests.bin, is ~66 KiB).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import ae, crdt  # noqa: E402

OUT = os.path.join(_common.HERE, "corpus")


def _put(harness: str, name: str, data: bytes) -> None:
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def _reader_bytes(data: bytes) -> bytes:
    """Encode bytes the way _common.Reader.bytes(max_len) reads them back
    (a 4-byte choice that is the length when below max_len + 1)."""
    return struct.pack("<I", len(data)) + data


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    work = tempfile.mkdtemp()
    try:
        seed = _common.seed_engine(os.path.join(work, "db"))
        logdir = os.path.join(work, "db", "log")
        segs = sorted(n for n in os.listdir(logdir) if n.endswith(".seg"))
        for i, name in enumerate(segs):
            with open(os.path.join(logdir, name), "rb") as f:
                data = f.read()
            data = data.rstrip(b"\0")  # the preallocated zero tail; keep the last record's padding
            _put("segment", f"seg{i}", bytes([i]) + data + b"\0" * (-len(data) % 8))
        for i, cur in enumerate(seed["cursors"][::3]):
            _put("cursor", f"valid{i}", cur)
        _put("cursor", "zeros", bytes(12))
        _put("cursor", "short", b"\0\0\0\0")
        with open(os.path.join(work, "db", "digests.bin"), "rb") as f:
            _put("digests", "saved", f.read())
        with open(os.path.join(work, "db", "slots.json"), "rb") as f:
            _put("slots", "saved", f.read())
        _put("slots", "two", b'{"a": {"cursor": "%s", "invalidated": false}, "b": {"cursor": "%s", '
             b'"invalidated": true}}' % (seed["cursors"][2].hex().encode(), seed["cursors"][-1].hex().encode()))
        ts = ae.Timestamp(1_700_000_000_000, 0, 1)
        ops = [(crdt.PNCounter(), crdt.PNCounter.increment(5)), (crdt.ORSet(), crdt.ORSet.add(b"m")),
               (crdt.MVRegister(), crdt.MVRegister.set(b"v")), (crdt.GCounter(), crdt.GCounter.increment(2))]
        index = {type(o).__name__: i for i, o in enumerate([crdt.LWWRegister(), crdt.MVRegister(), crdt.GCounter(),
                                                            crdt.PNCounter(), crdt.GSet(), crdt.ORSet()])}
        for op, operation in ops:
            operand = op.make_operand(operation, None, ts)
            body = struct.pack("<I", 1) + _reader_bytes(operand) + _reader_bytes(operand)
            _put("crdt", type(op).__name__, bytes([index[type(op).__name__]]) + body)
        for i in range(4):
            _put("apply", f"random{i}", os.urandom(48))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
