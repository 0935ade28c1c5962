"""Child process of tests/test_crash.py: writes forever, acknowledging each write.

Usage: python crash_worker.py PATH DURABILITY MODE START [STOP]

For seq = START, START+1, ... it performs the write ``ops_for(MODE, seq)``
(one put/delete, or one atomic batch) and, once the call has returned, writes
``ack <seq>\\n`` to stdout with one os.write (unbuffered). The parent SIGKILLs
it at a random point and checks that the reopened engine holds exactly the
writes ``START .. P-1`` for P = last ack + 1 (the kill landed after the ack)
or last ack + 2 (the kill landed between a write and its ack).

The write sequence is a pure function of (mode, seq), so the parent rebuilds
the expected state with the same ``ops_for`` and ``apply_model``.

Modes:
  put      single puts, overwrites of a hot key, deletes
  batch    atomic batches of 2..9 records sharing a batch id (plus deletes)
  compact  batches of put + hot-key put + PNCounter merge (+ delete), run with a
           4 KiB segment size and a 10 ms compaction interval, so kills land
           mid-compaction
"""

from __future__ import annotations

import os
import sys

COUNTER_NS = "counters"

# (op, namespace, key, value) ; op in "put", "delete", "merge" (value = increment)


def _val(seq: int) -> bytes:
    return (b"v%d-" % seq) * (1 + seq % 13)


def ops_for(mode: str, seq: int) -> list:
    if mode == "put":
        r = seq % 10
        if r == 9 and seq >= 5:
            return [("delete", "", b"k%08d" % (seq - 5), None)]
        if r == 5:
            return [("put", "", b"hot", b"h%d" % seq)]
        if r == 7 and seq >= 7:
            return [("put", "", b"k%08d" % (seq - 7), b"o%d" % seq)]
        return [("put", "", b"k%08d" % seq, _val(seq))]
    if mode == "batch":
        n = 1 + seq % 6
        ops = [("put", "", b"b%08d-%d" % (seq, i), b"%d:%d" % (seq, i)) for i in range(n)]
        ops += [("put", "", b"shared%d" % j, b"%d" % seq) for j in range(3)]
        if seq % 4 == 0 and seq >= 1:
            ops.append(("delete", "", b"b%08d-0" % (seq - 1), None))
        return ops
    if mode == "compact":
        ops = [("put", "", b"k%08d" % seq, _val(seq)),
               ("put", "", b"hot", b"h%d" % seq),
               ("merge", COUNTER_NS, b"ctr", 1)]
        if seq % 3 == 0 and seq >= 3:
            ops.append(("delete", "", b"k%08d" % (seq - 3), None))
        return ops
    raise ValueError(mode)


def apply_model(model: dict, counters: dict, ops: list) -> None:
    for op, ns, key, value in ops:
        if op == "merge":
            counters[key] = counters.get(key, 0) + value
        elif op == "put":
            model[key] = value
        else:
            model.pop(key, None)


def model_upto(mode: str, start: int, stop: int, base=None):
    """Expected (default-namespace dict, counters dict) after ops start..stop-1 over base."""
    model, counters = ({}, {}) if base is None else (dict(base[0]), dict(base[1]))
    for seq in range(start, stop):
        apply_model(model, counters, ops_for(mode, seq))
    return model, counters


def open_engine(path: str, durability: str, mode: str, compact_interval=None):
    import abase_engine as ae

    opts = dict(compact_interval=compact_interval)
    if mode == "compact":
        opts["segment_size"] = 4096
    db = ae.open(path, node_id=1, durability=durability, **opts)
    ctr = db.namespace(COUNTER_NS, merge=ae.crdt.PNCounter())
    return db, ctr


def write(db, ctr, ops: list) -> None:
    import abase_engine as ae

    if len(ops) == 1 and ops[0][0] != "merge":
        op, _ns, key, value = ops[0]
        if op == "put":
            db.put(key, value)
        else:
            db.delete(key)
        return
    with db.batch() as b:
        for op, ns, key, value in ops:
            target = ctr if ns == COUNTER_NS else None
            if op == "put":
                b.put(key, value, namespace=target)
            elif op == "delete":
                b.delete(key, namespace=target)
            else:
                b.merge(key, ae.crdt.PNCounter.increment(value), namespace=ctr)


def main(argv) -> int:
    path, durability, mode, start = argv[1], argv[2], argv[3], int(argv[4])
    stop = int(argv[5]) if len(argv) > 5 else None
    interval = 0.01 if mode == "compact" else None
    db, ctr = open_engine(path, durability, mode, compact_interval=interval)
    compactor = getattr(db, "_compactor", None)
    # a pass that ran between open() and namespace() could not fold the
    # counters yet (the operator was not known): not a failure of the engine
    seen = len(compactor.errors) if compactor is not None else 0
    os.write(1, b"ready %d\n" % start)
    seq = start
    while stop is None or seq < stop:
        write(db, ctr, ops_for(mode, seq))
        os.write(1, b"ack %d\n" % seq)
        if compactor is not None and len(compactor.errors) > seen:
            raise compactor.errors[seen]
        seq += 1
    db.close()
    os.write(1, b"done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
