"""Convergence of CRDT namespaces under deletes, gossip and independent compaction.

DESIGN.md invariant 5 for the replicated use the engine exists for: three
writer engines issue operations of every built-in CRDT type, and key
deletes (each removes what its writer had seen), and gossip some of their
records to each other. Every record is then applied, in shuffled batches
with duplicates, to two receivers that compact and reopen at their own
random moments, and in one batch to a reference receiver. All of them, and
the writers once they have exchanged everything, must hold identical
states, values and ``digest()`` trees, equal to the join of all records.

The late-delete case of issue 10 ("Why": a delete whose timestamp lies
between operands that were folded together before it arrived) is pinned
for each delete rule: observed reset (counters), observed remove
(dot-based types) and watermark (timestamp-ordered types).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import abase_engine as ae
from abase_engine import errors
from abase_engine._abase import lib
from abase_engine.crdt import (EWFlag, GCounter, GSet, LWWRegister, MVRegister, ORMap, ORSet, PNCounter,
                               SortedSet)
from abase_engine.record import Change, Op, Timestamp

KEYS = [b"a", b"b", b""]
MEMBERS = [b"x", b"y", b"z" * 130]


def _operators() -> Dict[str, Any]:
    return {"lww": LWWRegister(), "mv": MVRegister(), "gc": GCounter(), "pn": PNCounter(), "gset": GSet(),
            "orset": ORSet(), "zset": SortedSet(), "flag": EWFlag(), "map": ORMap(PNCounter()),
            "mapset": ORMap(ORSet())}


NAMESPACES = sorted(_operators())


def operation(ns: str, draw) -> Any:
    """A random operation of namespace ``ns``'s type."""
    m = st.sampled_from(MEMBERS)
    amount = st.integers(-5, 9)
    if ns == "lww":
        return LWWRegister.set(draw(st.binary(max_size=3)))
    if ns == "mv":
        return MVRegister.set(draw(st.binary(max_size=3)))
    if ns == "gc":
        return GCounter.increment(draw(st.integers(0, 9)))
    if ns == "pn":
        n = draw(amount)
        return PNCounter.increment(n) if draw(st.booleans()) else PNCounter.decrement(n)
    if ns == "gset":
        return GSet.add(draw(m))
    if ns == "orset":
        return ORSet.add(draw(m)) if draw(st.integers(0, 2)) else ORSet.remove(draw(m))
    if ns == "zset":
        if draw(st.integers(0, 2)):
            return SortedSet.add(draw(m), draw(st.integers(-3, 3)))
        return SortedSet.remove(draw(m))
    if ns == "flag":
        return EWFlag.enable() if draw(st.booleans()) else EWFlag.disable()
    field = draw(st.sampled_from([b"f", b"g"]))
    if ns == "map":
        return ORMap.update(field, PNCounter.increment(draw(amount))) if draw(st.integers(0, 3)) \
            else ORMap.remove(field)
    return ORMap.update(field, ORSet.add(draw(m)) if draw(st.booleans()) else ORSet.remove(draw(m))) \
        if draw(st.integers(0, 3)) else ORMap.remove(field)


class Engine:
    """An engine with every namespace open, in its own directory."""

    def __init__(self, node_id: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="abase-conv-")
        self.node_id = node_id
        self.open()

    def open(self) -> None:
        self.db = ae.open(self.dir, node_id=self.node_id, compact_interval=None, segment_size=4096)
        self.ns = {name: self.db.namespace(name, merge=op) for name, op in _operators().items()}
        for ns in self.ns.values():
            ns.get(b"warm-up")  # see test_api.py::test_check_right_after_namespace_creation

    def reopen(self) -> None:
        self.db.close()
        self.open()

    def states(self) -> Dict[tuple, Optional[bytes]]:
        return {(name, k): self.ns[name].get_raw(k) for name in NAMESPACES for k in KEYS}

    def values(self) -> Dict[tuple, Any]:
        return {(name, k): self.ns[name].get(k) for name in NAMESPACES for k in KEYS}

    def digests(self) -> Dict[str, List[int]]:
        return {name: self.db.digest(name) for name in NAMESPACES}

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Writer(Engine):
    """A writer: its own records are collected from its change feed after
    every write, before anything can be compacted away."""

    def __init__(self, node_id: int) -> None:
        super().__init__(node_id)
        self.records: List[Change] = []
        self._seen: set = set()

    def drain(self) -> None:
        """Collect the writer's new records (the feed from the oldest record
        the log still holds: everything older was collected before the
        compaction that dropped it)."""
        for c in self.db.changes():
            rec = Change(c.namespace, c.key, c.op, c.value, c.timestamp)
            if rec not in self._seen:
                self._seen.add(rec)
                self.records.append(rec)


def _schedule(rnd: random.Random, records: List[Change]) -> List[object]:
    """Every record plus duplicates, shuffled, cut into apply() batches, with
    "compact" and "reopen" steps at random points."""
    items = list(records) + [rnd.choice(records) for _ in range(rnd.randint(0, len(records)))]
    rnd.shuffle(items)
    steps: List[object] = []
    i = 0
    while i < len(items):
        n = rnd.randint(1, 6)
        steps.append(items[i:i + n])
        i += n
        x = rnd.random()
        if x < 0.25:
            steps.append("compact")
        elif x < 0.32:
            steps.append("reopen")
    return steps


def _run(e: Engine, steps: List[object]) -> None:
    for step in steps:
        if step == "compact":
            e.db.compact(wait=True)
        elif step == "reopen":
            e.reopen()
        else:
            e.db.apply(step)


def _expected(records: List[Change]) -> Dict[tuple, Optional[bytes]]:
    ops = _operators()
    out: Dict[tuple, Optional[bytes]] = {}
    for name in NAMESPACES:
        for k in KEYS:
            mine = [c.value for c in records if c.namespace == name and c.key == k]
            out[(name, k)] = ops[name].full_merge(None, mine) if mine else None
    return out


#: Examples of the chaos test (more: ABASE_CHAOS_EXAMPLES=500 pytest tests/test_crdt_convergence.py).
CHAOS_EXAMPLES = int(os.environ.get("ABASE_CHAOS_EXAMPLES", "40"))


@settings(max_examples=CHAOS_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), seed=st.integers(0, 2 ** 32 - 1))
def test_replicas_converge_with_crdt_deletes_and_independent_compaction(data, seed):
    draw = data.draw
    rnd = random.Random(seed)
    writers = [Writer(1), Writer(2), Writer(3)]
    receivers: List[Engine] = []
    try:
        for _ in range(draw(st.integers(5, 45), label="writer steps")):
            w = draw(st.sampled_from(writers), label="writer")
            kind = draw(st.sampled_from(["op"] * 5 + ["delete"] * 2 + ["gossip", "compact", "reopen"]))
            if kind in ("op", "delete"):
                name = draw(st.sampled_from(NAMESPACES), label="namespace")
                key = draw(st.sampled_from(KEYS), label="key")
                if kind == "op":
                    w.ns[name].merge(key, operation(name, draw))
                else:
                    w.ns[name].delete(key)
                w.drain()
            elif kind == "gossip":  # w receives some of another writer's records
                other = draw(st.sampled_from([x for x in writers if x is not w]))
                picked = [c for c in other.records if rnd.random() < 0.5]
                if picked:
                    w.db.apply(picked)
            elif kind == "compact":
                w.db.compact(wait=True)
            else:
                w.reopen()
        records = [c for w in writers for c in w.records]
        if not records:
            return
        expect = _expected(records)
        # two receivers with their own arrival order and compaction moments, and a reference
        receivers = [Engine(10), Engine(11), Engine(12)]
        for r in receivers[:2]:
            _run(r, _schedule(rnd, records))
        receivers[2].db.apply(records)
        # the writers exchange everything too
        for w in writers:
            w.db.apply(records)
        everyone = receivers + writers
        ref_states = receivers[2].states()
        assert ref_states == expect
        ref_values = receivers[2].values()
        ops = _operators()
        assert ref_values == {(n, k): ops[n].to_value(v) for (n, k), v in expect.items()}
        ref_digests = receivers[2].digests()
        for e in everyone:
            assert e.states() == ref_states, e.node_id
            assert e.values() == ref_values, e.node_id
            assert e.digests() == ref_digests, e.node_id
        # and after a final compaction and reopen of each
        for e in everyone:
            e.db.compact(wait=True)
            e.reopen()
            assert e.states() == ref_states, e.node_id
            assert e.digests() == ref_digests, e.node_id
            assert e.db.check() == []
    finally:
        for e in writers + receivers:
            e.close()


# --------------------------------------------------------------------------
# the late delete of issue 10, for each delete rule


@pytest.mark.parametrize("rule", ["observed reset", "observed remove", "watermark"])
def test_late_delete_of_the_issue_converges(open_db, tmp_path, rule):
    """A delete whose timestamp lies between two operands, applied after the
    operands were compacted into one stored state, gives the same state (and
    digest) as applied with them, on every replica."""
    base = ae.open(str(tmp_path / "clock"), compact_interval=None)
    t0 = base.now()
    base.close()
    ms = t0.physical_ms - 1000

    def stamp(dt: int, node: int) -> Timestamp:
        return Timestamp(ms + dt, 0, node)

    if rule == "observed reset":
        op: Any = PNCounter()
        older = op.make_operand(PNCounter.increment(5), None, stamp(0, 2))
        delete = op.removal(older, stamp(1, 3))  # node 3 had seen node 2's 5
        newer = op.make_operand(PNCounter.increment(1), None, stamp(2, 1))
        want: Any = 1
    elif rule == "observed remove":
        op = ORSet()
        older = op.make_operand(ORSet.add(b"x"), None, stamp(0, 2))
        delete = op.removal(older, stamp(1, 3))  # node 3 had seen the add of x
        newer = op.make_operand(ORSet.add(b"y"), None, stamp(2, 1))
        want = frozenset({b"y"})
    else:
        op = LWWRegister()
        older = op.make_operand(LWWRegister.set(b"old"), None, stamp(0, 2))
        delete = op.removal(None, stamp(1, 3))  # node 3 had seen nothing: the watermark removes it anyway
        newer = op.make_operand(LWWRegister.set(b"new"), None, stamp(2, 1))
        want = b"new"
    recs = [Change("k", b"c", Op.MERGE, older, stamp(0, 2)), Change("k", b"c", Op.DELETE, delete, stamp(1, 3)),
            Change("k", b"c", Op.MERGE, newer, stamp(2, 1))]
    in_order = open_db(str(tmp_path / "in-order"), node_id=9)
    late = open_db(str(tmp_path / "late"), node_id=10)
    ns_in, ns_late = in_order.namespace("k", merge=op), late.namespace("k", merge=type(op)())
    in_order.apply(recs)
    late.apply([recs[0], recs[2]])
    late.compact(wait=True)  # the two operands are folded into one stored state
    late.apply([recs[1]])  # then the delete arrives
    for db, ns in ((in_order, ns_in), (late, ns_late)):
        assert ns.get(b"c") == want
    assert ns_late.get_raw(b"c") == ns_in.get_raw(b"c") == op.full_merge(None, [older, delete, newer])
    assert late.digest("k") == in_order.digest("k")
    for db in (in_order, late):
        db.compact(wait=True)
    assert ns_late.get_raw(b"c") == ns_in.get_raw(b"c")
    assert ns_late.get(b"c") == want and late.digest("k") == in_order.digest("k")


# --------------------------------------------------------------------------
# deletes through the engine


def test_a_received_delete_without_its_context_is_refused(open_db):
    db = open_db()
    for name, op in _operators().items():
        db.namespace(name, merge=op).get(b"warm-up")
    t = Timestamp(db.now().physical_ms - 10, 0, 5)
    for name in ("mv", "gc", "pn", "orset", "flag", "map", "mapset"):
        with pytest.raises(errors.MergeOperandError):
            db.apply([Change(name, b"k", Op.DELETE, None, t)])
        assert db.namespace(name).get_raw(b"k") is None
    # timestamp-ordered types need nothing beyond the delete's timestamp
    for name in ("lww", "gset", "zset"):
        assert db.apply([Change(name, b"k", Op.DELETE, None, t)]) == 1
        assert db.namespace(name).get(b"k") is None
        assert db.namespace(name).get_raw(b"k") == _operators()[name].removal(None, t)


def test_local_delete_carries_what_it_removes_and_replicates(open_db, tmp_path):
    a = open_db(str(tmp_path / "a"), node_id=1)
    b = open_db(str(tmp_path / "b"), node_id=2)
    sa, sb = a.namespace("s", merge=ORSet()), b.namespace("s", merge=ORSet())
    sa.merge(b"k", ORSet.add(b"x"))
    b.apply(list(a.changes()))
    sb.merge(b"k", ORSet.add(b"y"))  # b's add is concurrent with a's delete
    ts = sa.delete(b"k")
    assert sa.get(b"k") is None and b"k" not in sa and list(sa.scan()) == []
    (rec,) = [c for c in a.changes() if c.op == Op.DELETE]
    assert rec.timestamp == ts and rec.value == ORSet().removal(ORSet().full_merge(
        None, [c.value for c in a.changes() if c.op == Op.MERGE]), ts)
    b.apply([rec])
    a.apply([c for c in b.changes() if c.op != Op.DELETE])
    assert sa.get(b"k") == sb.get(b"k") == frozenset({b"y"})
    assert sa.get_raw(b"k") == sb.get_raw(b"k")


def test_counter_keeps_counting_after_a_delete(open_db):
    db = open_db()
    c = db.namespace("c", merge=PNCounter())
    c.merge(b"k", PNCounter.increment(5))
    c.delete(b"k")
    assert c.get(b"k") is None
    c.merge(b"k", PNCounter.increment(2))
    assert c.get(b"k") == 2
    db.compact(wait=True)
    c.delete(b"k")
    c.merge(b"k", PNCounter.decrement(1))
    assert c.get(b"k") == -1
    db.compact(wait=True)
    assert c.get(b"k") == -1
    with db.batch() as b:  # in a batch, a delete observes the batch's earlier writes
        b.merge(b"k", PNCounter.increment(10), namespace=c)
        b.delete(b"k", namespace=c)
        b.merge(b"k", PNCounter.increment(3), namespace=c)
    assert c.get(b"k") == 3


# --------------------------------------------------------------------------
# the format version


def _rewrite_segment_version(path: str, version: int) -> None:
    with open(path, "r+b") as f:
        hdr = bytearray(f.read(64))
        struct.pack_into("<I", hdr, 8, version)
        crc = lib.abase_crc_mask(lib.abase_crc32c(0, bytes(hdr[:60]), 60))
        struct.pack_into("<I", hdr, 60, crc)
        f.seek(0)
        f.write(hdr)


def test_a_directory_of_format_1_is_refused(tmp_path):
    import glob
    import os

    path = str(tmp_path / "old")
    with ae.open(path, compact_interval=None) as db:
        db.put(b"k", b"v")
    (seg,) = glob.glob(os.path.join(path, "log", "*.seg"))
    _rewrite_segment_version(seg, 1)
    with pytest.raises(errors.FormatVersionError):
        ae.open(path, compact_interval=None)
    _rewrite_segment_version(seg, lib.ABASE_FORMAT_VERSION)
    with ae.open(path, compact_interval=None) as db:
        assert db.get(b"k") == b"v"
