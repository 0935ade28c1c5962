"""Fuzz harness: change-feed cursors and ``ack`` (untrusted: peers send them).

Input: a cursor (any bytes; 12 are the format) for ``db.changes(since=)``
and for a replication slot's ``ack``, against a seeded engine whose log
holds, inside a user's value, a whole record with a valid checksum. Allowed
outcomes: the feed reads, or TypeError, ValueError, SlotInvalidatedError.
Invariants: a feed started at an accepted cursor yields only records that
were written (never the forged DELETE of b"victim"), and resuming from each
yielded cursor gives exactly the rest of the same feed.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from _common import ae  # noqa: E402

from abase_engine.errors import SlotInvalidatedError  # noqa: E402

_WORK = _common.scratch_dir("cursor")
_SEED = _common.seed_engine(_WORK)
_DB = ae.open(_WORK, compact_interval=None)
_SLOT = _DB.replication_slot("peer")


def TestOneInput(data: bytes) -> None:
    try:
        feed = list(_DB.changes(since=data, include_applied=True))
    except (TypeError, ValueError, SlotInvalidatedError):
        feed = None
    if feed is not None:
        for i, ch in enumerate(feed):
            if ch.key == b"victim":
                raise AssertionError(f"cursor {data!r} reached a forged record")
            if i < 3:
                rest = [c.cursor for c in _DB.changes(since=ch.cursor, include_applied=True)]
                if rest != [c.cursor for c in feed[i + 1:]]:
                    raise AssertionError(f"resuming at {ch.cursor!r} skipped or repeated records")
    before = _SLOT.position
    try:
        _SLOT.ack(data)
    except (TypeError, ValueError, SlotInvalidatedError):
        if _SLOT.position != before:
            raise AssertionError("a refused ack moved the slot")
        return
    for ch in _SLOT.changes():
        if ch.key == b"victim":
            raise AssertionError(f"ack {data!r} put the slot inside a record")


if __name__ == "__main__":
    _common.main(TestOneInput)
