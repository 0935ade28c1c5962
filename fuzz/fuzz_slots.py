"""Fuzz harness: ``slots.json`` (persisted replication slots).

Input: the bytes of ``slots.json``. Opening must either succeed or raise
CorruptionError; once open, every slot's ``changes``, ``lag_bytes`` and
``ack`` of its own position may only raise ValueError or
SlotInvalidatedError (a persisted cursor is as untrusted as a peer's), and
no slot read ever yields the forged record hidden in a value.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import ae  # noqa: E402

from abase_engine.errors import CorruptionError, SlotInvalidatedError  # noqa: E402

_WORK = _common.scratch_dir("slots")
_common.seed_engine(_WORK)
_FILE = os.path.join(_WORK, "slots.json")


def TestOneInput(data: bytes) -> None:
    with open(_FILE, "wb") as f:
        f.write(data)
    try:
        db = ae.open(_WORK, compact_interval=None)
    except CorruptionError:
        return
    try:
        for name in db.stats()["slots"]:
            slot = db.replication_slot(name)
            _ = slot.lag_bytes
            try:
                for ch in slot.changes():
                    if ch.key == b"victim":
                        raise AssertionError(f"slot {name!r} read a forged record")
                slot.ack(slot.position)
            except (ValueError, SlotInvalidatedError):
                pass
    finally:
        db.close()


if __name__ == "__main__":
    _common.main(TestOneInput)
