"""Engine.apply of records into LWW namespaces through the C path
(csrc/fast_apply.c, csrc/apply.c) must do exactly what the general Python
path does: the same records applied, skipped and counted, the same values,
digests and leaf records, the same errors. A ``Change`` subclass is refused
by the C path (it takes exact types only), which gives the general path to
compare with."""

import time

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import abase_engine as ae
from abase_engine import Change, Op, Timestamp
from abase_engine.crdt import PNCounter
from abase_engine.errors import EngineClosedError, KeyTooLargeError

NAMESPACES = ("", "a", "b")


class SlowChange(Change):
    """A Change the C path does not take: applied by the general path."""

    __slots__ = ()


def _open(path, **kw):
    opts = dict(node_id=1, compact_interval=None, segment_size=8192, tombstone_grace_ms=0)
    opts.update(kw)
    return ae.open(path, **opts)


def _leaf(key):
    return xxhash.xxh64_intdigest(key) >> 52


def _path_of(leaf):
    return (leaf >> 8, (leaf >> 4) & 15, leaf & 15)


RECORD = st.tuples(
    st.sampled_from(NAMESPACES),
    st.integers(0, 11),                     # key
    st.sampled_from([Op.PUT, Op.DELETE, Op.MERGE]),
    st.integers(0, 3),                      # value
    st.integers(1, 6),                      # physical ms (collisions on purpose)
    st.integers(2, 4),                      # node
    st.booleans(),                          # recent: newer than the store's high-water mark
)


def _change(rec, cls=Change, now=0):
    ns, k, op, v, ms, node, recent = rec
    value = None if op == Op.DELETE else b"v%d" % v
    return cls(ns, b"k%d" % k, op, value, Timestamp(ms + (now if recent else 0), 0, node))


def _state(db):
    """Every namespace's visible (key, value) pairs."""
    return {ns: list(db.namespace(ns).scan()) for ns in NAMESPACES}


def test_duplicates_in_one_batch_and_across_batches_are_applied_once(tmp_path):
    db = _open(str(tmp_path / "d"))
    try:
        ch = Change("", b"k", Op.PUT, b"v", Timestamp(5, 0, 2))
        assert db.apply([ch, ch, ch]) == 1
        assert db.apply([ch]) == 0
        assert db.get(b"k") == b"v"
        # same timestamp, another value: "already held" (a node id is never reused)
        assert db.apply([Change("", b"k", Op.PUT, b"other", Timestamp(5, 0, 2))]) == 0
        assert db.get(b"k") == b"v"
    finally:
        db.close()


def test_records_older_than_the_visible_version_are_skipped(tmp_path):
    db = _open(str(tmp_path / "o"))
    try:
        ts = db.put(b"k", b"local")
        older = Timestamp(ts.physical_ms - 1, 0, 9)
        assert db.apply([Change("", b"k", Op.PUT, b"old", older),
                         Change("", b"k", Op.DELETE, None, older)]) == 0
        assert db.get(b"k") == b"local"
        newer = Timestamp(ts.physical_ms, ts.logical + 1, 0)
        assert db.apply([Change("", b"k", Op.DELETE, None, newer)]) == 1
        assert db.get(b"k") is None
        # in one batch, a newer record after an older one wins; an older after a newer is skipped
        t1, t2 = Timestamp(ts.physical_ms + 1, 0, 3), Timestamp(ts.physical_ms + 2, 0, 3)
        assert db.apply([Change("", b"x", Op.PUT, b"1", t1), Change("", b"x", Op.PUT, b"2", t2),
                         Change("", b"y", Op.PUT, b"2", t2), Change("", b"y", Op.PUT, b"1", t1)]) == 3
        assert (db.get(b"x"), db.get(b"y")) == (b"2", b"2")
    finally:
        db.close()


def test_the_store_version_decides_keys_the_log_no_longer_holds(tmp_path):
    """After compaction the key lives only in the store: the core asks for
    its version (ABASE_NEEDBASE) and an older record is still skipped."""
    db = _open(str(tmp_path / "s"))
    try:
        for i in range(300):
            db.apply([Change("a", b"k%d" % i, Op.PUT, b"new", Timestamp(1000, 0, 2))])
        db.compact(wait=True)
        assert db.stats()["index_keys"] < 300  # most keys now only in the store
        older = [Change("a", b"k%d" % i, Op.PUT, b"old", Timestamp(999, 0, 2)) for i in range(300)]
        same = [Change("a", b"k%d" % i, Op.PUT, b"new", Timestamp(1000, 0, 2)) for i in range(300)]
        assert db.apply(older) == 0
        assert db.apply(same) == 0
        newer = [Change("a", b"k%d" % i, Op.DELETE, None, Timestamp(1001, 0, 2)) for i in range(0, 300, 2)]
        assert db.apply(newer) == 150
        ns = db.namespace("a")
        assert [ns.get(b"k%d" % i) for i in range(4)] == [None, b"new", None, b"new"]
    finally:
        db.close()


def test_records_newer_than_everything_stored_are_decided_without_the_store(tmp_path):
    """Above the store's HLC high-water mark no stored version can win: such
    records are applied (once) without a lookup, older ones still skipped."""
    db = _open(str(tmp_path / "hw"))
    try:
        base = int(time.time() * 1000)
        first = [Change("", b"k%d" % i, Op.PUT, b"1", Timestamp(base, 0, 2)) for i in range(200)]
        assert db.apply(first) == 200
        db.compact(wait=True)
        assert db.stats()["index_keys"] < 200
        ahead = [Change("", b"k%d" % i, Op.PUT if i % 3 else Op.DELETE, b"2", Timestamp(base + 300, 0, 2))
                 for i in range(200)]
        assert db.apply(ahead) == 200
        assert db.apply(ahead) == 0
        assert db.apply(first) == 0
        assert [db.get(b"k%d" % i) for i in range(3)] == [None, b"2", b"2"]
    finally:
        db.close()


def test_apply_after_close_raises_engine_closed(tmp_path):
    db = _open(str(tmp_path / "c"))
    db.close()
    try:
        db.apply([Change("", b"k", Op.PUT, b"v", Timestamp(5, 0, 2))])
    except EngineClosedError:
        pass
    else:
        raise AssertionError("apply after close did not raise")


def test_malformed_changes_raise_type_error_and_apply_nothing(tmp_path):
    db = _open(str(tmp_path / "m"))
    good = Change("", b"good", Op.PUT, b"v", Timestamp(5, 0, 2))
    bad = [
        ("", b"k", Op.PUT, b"v", Timestamp(5, 0, 2)),        # a plain tuple, not a Change
        Change("", b"k", Op.PUT, b"v", (5, 0, 2)),           # timestamp not a Timestamp
        Change("", "k", Op.PUT, b"v", Timestamp(5, 0, 2)),   # str key
        Change("", b"k", Op.PUT, 5, Timestamp(5, 0, 2)),     # int value
        Change(7, b"k", Op.PUT, b"v", Timestamp(5, 0, 2)),   # namespace not a str
    ]
    try:
        for item in bad:
            try:
                db.apply([good, item])
            except TypeError:
                pass
            else:
                raise AssertionError(f"{item!r} was accepted")
            assert db.get(b"good") is None  # nothing of the batch applied
        try:
            db.apply([Change("", b"k" * 600, Op.PUT, b"v", Timestamp(5, 0, 2))])
        except KeyTooLargeError:
            pass
        else:
            raise AssertionError("an oversized key was accepted")
        assert db.apply([good]) == 1
    finally:
        db.close()


def test_listeners_and_the_feed_see_applied_records(tmp_path):
    db = _open(str(tmp_path / "l"))
    seen = []
    db.on_commit(seen.extend)
    try:
        batch = [Change("a", b"k", Op.MERGE, b"v", Timestamp(5, 0, 2)),
                 Change("a", b"k", Op.PUT, b"w", Timestamp(4, 0, 2)),  # older: skipped
                 Change("", b"d", Op.DELETE, b"ignored", Timestamp(6, 0, 2))]
        assert db.apply(batch) == 2
        assert [(c.namespace, c.key, c.op, c.value, c.timestamp) for c in seen] == [
            ("a", b"k", Op.PUT, b"v", Timestamp(5, 0, 2)), ("", b"d", Op.DELETE, None, Timestamp(6, 0, 2))]
        fed = [(c.namespace, c.key, c.op, c.value, c.timestamp) for c in db.changes(include_applied=True)]
        assert fed == [(c.namespace, c.key, c.op, c.value, c.timestamp) for c in seen]
    finally:
        db.close()


def test_a_batch_with_a_merge_namespace_record_takes_the_general_path(tmp_path):
    db = _open(str(tmp_path / "g"))
    try:
        n = db.namespace("n", merge=PNCounter())
        src = _open(str(tmp_path / "src"), node_id=2)
        src.namespace("n", merge=PNCounter()).merge(b"c", PNCounter.increment(3))
        src.put(b"k", b"v")
        changes = list(src.changes())
        src.close()
        assert db.apply(changes) == 2
        assert db.apply(changes) == 0
        assert (n.get(b"c"), db.get(b"k")) == (3, b"v")
    finally:
        db.close()


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.tuples(st.lists(RECORD, max_size=12), st.booleans()), max_size=8))
def test_c_path_equals_the_general_path(tmp_path_factory, batches):
    """Same batches, same answers: counts, values, digests, leaf records."""
    root = tmp_path_factory.mktemp("eq")
    # Tombstones are purged 10 minutes after their timestamp: ancient ones
    # at every compaction, recent ones never during the test (so the three
    # engines, compacted one after another, purge the same ones).
    grace = dict(tombstone_grace_ms=600_000)
    fast, slow = _open(str(root / "fast"), digests=True, **grace), _open(str(root / "slow"), digests=True, **grace)
    plain = _open(str(root / "plain"), **grace)  # digests rebuilt from the state
    try:
        # "recent" records lie a little ahead of the clock, so that after a
        # compaction they are newer than anything stored (no store lookup)
        now = int(time.time() * 1000) + 200
        for recs, compact in batches:
            got = fast.apply([_change(r, now=now) for r in recs])
            assert got == slow.apply([_change(r, SlowChange, now) for r in recs])
            assert got == plain.apply([_change(r, now=now) for r in recs])
            if compact:
                for db in (fast, slow, plain):
                    db.compact(wait=True)
        assert _state(fast) == _state(slow) == _state(plain)
        for ns in NAMESPACES:
            assert fast.digest(ns) == slow.digest(ns) == plain.digest(ns)
            for leaf in {_leaf(b"k%d" % k) for k in range(12)}:
                # plain (digests off) finds a leaf's keys by a pass over the namespace
                assert fast.records(ns, _path_of(leaf)) == slow.records(ns, _path_of(leaf)) \
                    == plain.records(ns, _path_of(leaf))
    finally:
        fast.close()
        slow.close()
        plain.close()


class LeafRecords(RuleBasedStateMachine):
    """records(leaf) of a replica (digests=True) equals a brute-force filter
    of every key's visible record, through applies, local writes, deletes,
    compaction and reopen. Model: a plain dict
    (namespace, key) -> (op, value, timestamp) of each key's newest record."""

    KEYS = [b"k%d" % i for i in range(40)]
    # tombstones kept (their purge is checked against the scan in the test above)
    OPTIONS = dict(digests=True, tombstone_grace_ms=10 ** 9)

    @initialize()
    def start(self):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="abase-leaves-")
        self.db = _open(self.dir, **self.OPTIONS)
        self.model = {}
        self.ms = int(time.time() * 1000)  # recent, so that no tombstone is past its grace

    def teardown(self):
        import shutil
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _note(self, ns, key, op, value, ts):
        old = self.model.get((ns, key))
        if old is None or ts > old[2]:
            self.model[(ns, key)] = (op, value, ts)

    @rule(recs=st.lists(st.tuples(st.sampled_from(NAMESPACES), st.integers(0, 39), st.booleans(),
                                  st.integers(-3, 3)), min_size=1, max_size=20))
    def apply(self, recs):
        batch = []
        for ns, k, is_put, dt in recs:
            ts = Timestamp(max(1, self.ms + dt), 0, 7)
            op = Op.PUT if is_put else Op.DELETE
            batch.append(Change(ns, self.KEYS[k], op, b"r%d" % dt if is_put else None, ts))
        self.db.apply(batch)
        for ch in batch:
            self._note(ch.namespace, ch.key, ch.op, ch.value, ch.timestamp)
        self.ms += 2

    @rule(k=st.integers(0, 39), ns=st.sampled_from(NAMESPACES), delete=st.booleans())
    def local_write(self, k, ns, delete):
        handle = self.db.namespace(ns)
        key = self.KEYS[k]
        ts = handle.delete(key) if delete else handle.put(key, b"local")
        self._note(ns, key, Op.DELETE if delete else Op.PUT, None if delete else b"local", ts)

    @rule()
    def compact(self):
        self.db.compact(wait=True)

    @rule()
    def reopen(self):
        self.db.close()
        self.db = _open(self.dir, **self.OPTIONS)

    @precondition(lambda self: self.model)
    @invariant()
    def leaf_records_match_a_brute_force_filter(self):
        for ns in NAMESPACES:
            for leaf in {_leaf(key) for key in self.KEYS}:
                got = {(c.key, c.op, c.value, c.timestamp) for c in self.db.records(ns, _path_of(leaf))}
                want = set()
                for (mns, key), (op, value, ts) in self.model.items():
                    if mns != ns or _leaf(key) != leaf:
                        continue
                    want.add((key, op, value, ts))
                assert got == want


LeafRecords.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_leaf_records_match_a_brute_force_filter = LeafRecords.TestCase
