"""A deterministic multi-writer workload and its model, for the soak
(tests/soak.py) and the power-loss harness (tests/powerloss.py).

Writers are *lanes*: lane ``l`` performs the writes ``ops_for(kinds, l, 0)``,
``ops_for(kinds, l, 1)``, ... one after the other, each one atomic (a single
put or delete, a batch, or an ``apply`` of received records), and
acknowledges seq after the call returned. Lanes touch disjoint keys (all
start with ``L<l>-``) and their own counter, so the state of each lane is a
function of how many of its writes survived: after a crash the state of lane
``l`` must equal ``model(kinds, l, P)`` for one P between its acknowledged
count and the number of writes it had started. A half batch, a lost
acknowledged write or a counter operand applied twice matches no P.

Kinds of write (``kinds`` is a string, one letter per write, cycled):
  p  put of a fresh value to one of 64 keys (overwrites recur)
  d  delete of a key written three writes earlier
  h  put to the lane's hot key
  b  a batch: 2..6 puts, the hot key, and a delete of an earlier batch's key
  m  a batch of a put and a PNCounter increment of the lane's counter
  a  apply() of 1..4 records received from another node (puts and deletes
     with their own timestamps, as replication delivers them)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import abase_engine as ae

COUNTERS = "counters"
KEYS = 64
REMOTE_BASE_MS = 1_600_000_000_000  # received records carry old timestamps: never skewed

Op = Tuple[str, str, bytes, Optional[bytes]]  # (op, namespace, key, value)


def _key(lane: int, j: int) -> bytes:
    return b"L%d-k%02d" % (lane, j % KEYS)


def _val(lane: int, seq: int) -> bytes:
    return (b"v%d.%d-" % (lane, seq)) * (1 + seq % 7)


def ops_for(kinds: str, lane: int, seq: int) -> Tuple[str, List[Op]]:
    """``(kind, ops)`` of write ``seq`` of ``lane``: what it does, in order."""
    kind = kinds[seq % len(kinds)]
    if kind == "p":
        return kind, [("put", "", _key(lane, seq), _val(lane, seq))]
    if kind == "d":
        return kind, [("delete", "", _key(lane, seq - 3), None)]
    if kind == "h":
        return kind, [("put", "", b"L%d-hot" % lane, b"%d" % seq)]
    if kind == "b":
        n = 2 + seq % 5
        ops: List[Op] = [("put", "", b"L%d-b%02d-%d" % (lane, seq % KEYS, i), b"%d:%d" % (seq, i))
                         for i in range(n)]
        ops.append(("put", "", b"L%d-hot" % lane, b"b%d" % seq))
        ops.append(("delete", "", b"L%d-b%02d-0" % (lane, (seq - 7) % KEYS), None))
        return kind, ops
    if kind == "m":
        return kind, [("put", "", _key(lane, seq + 7), _val(lane, seq)), ("merge", COUNTERS, b"L%d-ctr" % lane, b"1")]
    if kind == "a":
        n = 1 + seq % 4
        ops = []
        for i in range(n):
            k = b"L%d-r%02d" % (lane, (seq + i * 5) % KEYS)
            ops.append(("delete", "", k, None) if (seq + i) % 5 == 4 else ("put", "", k, _val(lane, seq * 4 + i)))
        return kind, ops
    raise ValueError(f"unknown kind {kind!r}")


def apply_ops(state: Dict[bytes, bytes], counter: List[int], ops: List[Op]) -> None:
    for op, _ns, key, value in ops:
        if op == "merge":
            counter[0] += 1
        elif op == "put":
            assert value is not None
            state[key] = value
        else:
            state.pop(key, None)


class LaneModel:
    """The model of one lane, advanced one write at a time."""

    def __init__(self, kinds: str, lane: int, seq: int = 0, state: Optional[Dict[bytes, bytes]] = None,
                 counter: int = 0) -> None:
        self.kinds, self.lane, self.seq = kinds, lane, seq
        self.state: Dict[bytes, bytes] = dict(state or {})
        self.counter = [counter]

    def copy(self) -> "LaneModel":
        return LaneModel(self.kinds, self.lane, self.seq, self.state, self.counter[0])

    def step(self) -> None:
        apply_ops(self.state, self.counter, ops_for(self.kinds, self.lane, self.seq)[1])
        self.seq += 1

    def advance_to(self, seq: int) -> None:
        while self.seq < seq:
            self.step()


def lane_state(db: ae.Engine, ctr, lane: int) -> Tuple[Dict[bytes, bytes], int]:
    """What the engine holds of one lane: its keys and its counter."""
    prefix = b"L%d-" % lane
    keys = dict(db.scan(prefix=prefix))
    for k, v in keys.items():
        assert db.get(k) == v, (k, v, db.get(k))  # point reads agree with the scan
    return keys, ctr.get(b"L%d-ctr" % lane) or 0


def match_lane(model: LaneModel, acked: int, upper: int, actual: Tuple[Dict[bytes, bytes], int]) -> LaneModel:
    """The model (advanced from ``model``) at the P in [acked, upper] whose
    state equals ``actual``.

    :raises AssertionError: none does: an acknowledged write was lost, a
        batch survived in part, or a write's effect is not what its prefix
        gives (with a description of the difference to the acked prefix).
    """
    m = model.copy()
    m.advance_to(acked)
    first = m.copy()
    while True:
        if (m.state, m.counter[0]) == actual:
            return m
        if m.seq >= upper:
            break
        m.step()
    state, counter = actual
    missing = {k: v for k, v in first.state.items() if state.get(k) != v}
    extra = sorted(k for k in state if k not in first.state)
    raise AssertionError(
        f"lane {model.lane}: state matches no prefix in [{acked}, {upper}] "
        f"(counter {counter}, acked prefix expects {first.counter[0]}); vs the acked prefix "
        f"{len(missing)} keys wrong or missing, e.g. {list(missing.items())[:3]} "
        f"(actual {[state.get(k) for k in list(missing)[:3]]}); extra keys {extra[:5]}")


def open_counters(db: ae.Engine):
    return db.namespace(COUNTERS, merge=ae.crdt.PNCounter())


def write(db: ae.Engine, ctr, kind: str, lane: int, seq: int, ops: List[Op]) -> None:
    """Perform one write atomically (the engine call that acknowledges it)."""
    if kind == "a":
        changes = []
        for i, (op, _ns, key, value) in enumerate(ops):
            ts = ae.Timestamp(REMOTE_BASE_MS + seq, i, 100 + lane)
            changes.append(ae.Change("", key, ae.Op.DELETE if op == "delete" else ae.Op.PUT, value, ts))
        db.apply(changes)
        return
    if len(ops) == 1 and ops[0][0] == "put":
        db.put(ops[0][2], ops[0][3])
        return
    if len(ops) == 1 and ops[0][0] == "delete":
        db.delete(ops[0][2])
        return
    with db.batch() as b:
        for op, ns, key, value in ops:
            if op == "put":
                b.put(key, value)
            elif op == "delete":
                b.delete(key)
            else:
                b.merge(key, ae.crdt.PNCounter.increment(1), namespace=ctr)
