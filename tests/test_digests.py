"""Anti-entropy digests kept up to date on every write (option digests=True)
must equal a full rebuild, through compaction, tombstone purge and reopen."""

from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine.crdt import ORSet, PNCounter

OPS = st.lists(
    st.tuples(st.sampled_from(["put", "delete", "add", "remove", "incr", "compact", "reopen"]),
              st.integers(0, 15), st.integers(0, 4)),
    max_size=60)


def _open(path):
    db = ae.open(path, node_id=1, segment_size=4096, compact_interval=None, digests=True, tombstone_grace_ms=0)
    return db, db.namespace("s", merge=ORSet()), db.namespace("n", merge=PNCounter())


def _maintained_equals_rebuild(db):
    names = ("", "s", "n")
    kept = {name: db._digests.leaves(db.namespace(name)) for name in names}
    db._digests.forget()
    return all(db._digests.leaves(db.namespace(name)) == kept[name] for name in names)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_maintained_digests_equal_a_rebuild(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("dig"))
    db, s, n = _open(path)
    try:
        for op, k, v in ops:
            key = b"k%d" % k
            if op == "put":
                db.put(key, b"v%d" % v)
            elif op == "delete":
                db.delete(key)
            elif op == "add":
                s.merge(key, ORSet.add(b"m%d" % v))
            elif op == "remove":
                s.merge(key, ORSet.remove(b"m%d" % v))
            elif op == "incr":
                n.merge(key, PNCounter.increment(v + 1))
            elif op == "compact":
                db.compact(wait=True)
            else:
                db.close()
                db, s, n = _open(path)
        for name in ("", "s", "n"):
            db.digest(name)  # builds the namespace's leaves if nothing did yet
        assert _maintained_equals_rebuild(db)
    finally:
        db.close()


def test_two_replicas_converge_through_the_feed_and_digests(tmp_path):
    a, sa, _ = _open(str(tmp_path / "a"))
    b, sb, _ = _open(str(tmp_path / "b"))
    try:
        for i in range(50):
            a.put(b"k%d" % i, b"a%d" % i)
            sa.merge(b"set", ORSet.add(b"x%d" % i))
        b.apply(a.changes())
        assert a.digest("") == b.digest("") and a.digest("s") == b.digest("s")
        a.put(b"k7", b"changed")
        assert a.digest("") != b.digest("")

        def differing(path=()):
            out = []
            for i, (x, y) in enumerate(zip(a.digest("", path), b.digest("", path))):
                if x != y:
                    p = path + (i,)
                    out += [p] if len(p) == 3 else differing(p)
            return out

        leaves = differing()
        assert len(leaves) == 1
        b.apply(a.records("", leaves[0]))
        assert a.digest("") == b.digest("")
        assert b.get(b"k7") == b"changed"
    finally:
        a.close()
        b.close()
