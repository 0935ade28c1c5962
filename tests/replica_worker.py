"""Child process of tests/test_replication.py: a replica applying a change stream.

Usage: python replica_worker.py TARGET_DIR STREAM_FILE CHUNK

STREAM_FILE holds Change records (``replication.encode_changes``), in the
source's log order. The worker applies them ``CHUNK`` at a time to the engine
in TARGET_DIR and resumes, after a crash, from the position it persisted.

Flow control, so that the parent can kill it mid-stream without sleeping:
the worker reads ``go <n>`` lines on stdin, each allowing it to apply up to
record n; it never applies past the newest allowance.

Output (one ``os.write`` per line): ``resume <pos>`` at start, ``ack <pos>
<changed>`` after each chunk (pos = records applied so far; changed =
``apply()``'s result for the chunk), ``done <pos>`` at the end of the stream.

The position is persisted *in the same atomic apply* as the chunk: the
chunk goes to ``apply`` together with one more record, ``_replica/position``
= pos, stamped with the chunk's newest timestamp (stream timestamps grow, so
each position record wins over the previous one). After a SIGKILL either
both the chunk and its position are there, or neither: a resumed worker
neither skips nor repeats a chunk.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

import abase_engine as ae
from abase_engine.replication import decode_changes

COUNTER_NS = "counters"
POSITION_NS = "_replica"
POSITION_KEY = b"position"


def open_target(path: str) -> ae.Engine:
    db = ae.open(path, node_id=99, durability="process", compact_interval=None)
    db.namespace(COUNTER_NS, merge=ae.crdt.PNCounter())
    return db


def position(db: ae.Engine) -> int:
    raw = db.namespace(POSITION_NS).get(POSITION_KEY)
    return 0 if raw is None else int(raw)


def apply_chunk(db: ae.Engine, chunk: List[ae.Change], end: int) -> int:
    """Apply ``chunk`` and the new position ``end`` as one atomic apply()."""
    newest = max(c.timestamp for c in chunk)
    pos = ae.Change(POSITION_NS, POSITION_KEY, ae.Op.PUT, b"%d" % end, newest)
    return db.apply(chunk + [pos])


def run(db: ae.Engine, records: List[ae.Change], chunk: int, emit: Callable[[str], None],
        allowance: Optional[Callable[[], int]] = None) -> None:
    """Apply ``records`` from the persisted position on; ``allowance()`` blocks
    until it returns how far the worker may go (None: to the end)."""
    pos = position(db)
    emit(f"resume {pos}")
    limit = len(records) if allowance is None else 0
    while pos < len(records):
        end = min(pos + chunk, len(records))
        while end > limit:
            limit = allowance()
        changed = apply_chunk(db, records[pos:end], end)
        pos = end
        emit(f"ack {pos} {changed}")
    emit(f"done {pos}")


def main() -> None:
    target, stream, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(stream, "rb") as f:
        records = decode_changes(f.read())

    def emit(line: str) -> None:
        os.write(1, (line + "\n").encode())

    def allowance() -> int:
        line = sys.stdin.readline()
        if not line:
            sys.exit(3)  # the parent went away
        return int(line.split()[1])

    with open_target(target) as db:
        run(db, records, chunk, emit, allowance)


if __name__ == "__main__":
    main()
