"""A two-minute tour of abase_engine's main job.

Two replicas accept writes independently; their records are exchanged with
apply() in different orders, and both converge on the same values: last
write wins for plain keys, a CRDT counter merges every increment exactly
once. Then one replica is closed and reopened, and everything is still there.
"""

import tempfile

import abase_engine as ae
from abase_engine.crdt import PNCounter


def main() -> None:
    root = tempfile.mkdtemp(prefix="abase-demo-")
    a = ae.open(f"{root}/a", node_id=1, durability="process")
    b = ae.open(f"{root}/b", node_id=2, durability="process")
    ca = a.namespace("clicks", merge=PNCounter())
    cb = b.namespace("clicks", merge=PNCounter())

    sent_a, sent_b = [], []
    # Concurrent writes of the same key on both replicas.
    sent_a.append(ae.Change("", b"color", ae.Op.PUT, b"red", a.put(b"color", b"red")))
    sent_b.append(ae.Change("", b"color", ae.Op.PUT, b"blue", b.put(b"color", b"blue")))
    # Increments of one counter on both replicas.
    for _ in range(3):
        ts = ca.merge(b"page", PNCounter.increment(1))
        sent_a.append(ae.Change("clicks", b"page", ae.Op.MERGE, ca.get_raw(b"page"), ts))
    ts = cb.merge(b"page", PNCounter.increment(10))
    sent_b.append(ae.Change("clicks", b"page", ae.Op.MERGE, cb.get_raw(b"page"), ts))

    # Exchange: a receives b's records, b receives a's in reverse order, twice.
    a.apply(sent_b)
    b.apply(list(reversed(sent_a)) * 2)

    print("color on a:", a.get(b"color"), " on b:", b.get(b"color"))
    print("clicks on a:", ca.get(b"page"), " on b:", cb.get(b"page"))
    assert a.get(b"color") == b.get(b"color")
    assert ca.get(b"page") == cb.get(b"page") == 13

    a.compact(wait=True)  # fold the log into LMDB
    a.close()
    a = ae.open(f"{root}/a", node_id=1)
    ca = a.namespace("clicks", merge=PNCounter())
    print("after compaction and reopen, a has:", a.get(b"color"), ca.get(b"page"))
    print("scan:", list(a.scan()))
    print("stats:", {k: v for k, v in a.stats().items() if k in ("keys", "segments", "compactions")})
    a.close()
    b.close()


if __name__ == "__main__":
    main()
