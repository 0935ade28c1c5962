"""Fuzz harness: ``digests.bin`` (the saved anti-entropy leaves).

Input: the bytes of ``digests.bin`` of a seeded, cleanly closed engine.
Opening with ``digests=True`` must never fail because of the file, and the
digests it then serves must equal those rebuilt from the data: a damaged
or forged file is ignored, never believed.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import ae, crdt  # noqa: E402

_WORK = _common.scratch_dir("digests")
_common.seed_engine(_WORK)
_FILE = os.path.join(_WORK, "digests.bin")
os.unlink(_FILE)
with ae.open(_WORK, compact_interval=None) as _db:  # rebuilt from the data
    _db.namespace("ctr", merge=crdt.PNCounter())
    _WANT = {ns: (_db.digest(ns), _db.digest(ns, (3,)), _db.digest(ns, (3, 7))) for ns in ("", "ctr")}


def TestOneInput(data: bytes) -> None:
    with open(_FILE, "wb") as f:
        f.write(data)
    with ae.open(_WORK, compact_interval=None, digests=True) as db:
        db.namespace("ctr", merge=crdt.PNCounter())
        got = {ns: (db.digest(ns), db.digest(ns, (3,)), db.digest(ns, (3, 7))) for ns in ("", "ctr")}
    if got != _WANT:
        raise AssertionError(f"digests.bin {data[:64]!r}... changed the digests")


if __name__ == "__main__":
    _common.main(TestOneInput)
