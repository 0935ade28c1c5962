"""Model-based tests: an Engine driven side by side with a plain dict.

A hypothesis ``RuleBasedStateMachine`` puts, deletes, batches, scans, merges
counter increments, reopens, compacts and reads through snapshots, and after
every step compares the engine with a dict model (LWW default namespace) and
a dict of ints (a PNCounter namespace). ``Bundle``s make keys recur, so
overwrites, deletes and prefix scans collide. A small ``segment_size`` makes
segments seal, and compaction move data into LMDB, every few steps, so reads
constantly merge both layers.

The same machine runs with ``durability="process"`` and ``"sync"``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

from hypothesis import settings, strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import abase_engine as ae
from abase_engine.crdt import PNCounter

# Few symbols, so keys share prefixes and 0xff/0x00 edges are common.
_SYMBOLS = [b"", b"\x00", b"a", b"ab", b"b", b"\xff"]
short_keys = st.lists(st.sampled_from(_SYMBOLS), max_size=4).map(b"".join)
#: The empty key is allowed by the contract, but a known bug (see
#: test_api.py::test_empty_key_*) makes LMDB refuse it: the stored keys of the
#: model leave it out until that is fixed. Scan bounds still use it.
EMPTY_KEY_WORKS = True
#: Deleting a key longer than 495 bytes makes compaction fail (known bug,
#: test_api.py::test_delete_of_a_long_key_compacts): long keys stop at 495.
LONGEST_KEY = 511
stored_short_keys = short_keys if EMPTY_KEY_WORKS else short_keys.filter(bool)
any_keys = st.one_of(stored_short_keys, stored_short_keys, st.binary(min_size=0 if EMPTY_KEY_WORKS else 1, max_size=24),
                     st.binary(min_size=LONGEST_KEY - 20, max_size=LONGEST_KEY))
values = st.one_of(
    st.binary(max_size=16),
    st.binary(max_size=400),
    st.integers(min_value=1000, max_value=6000).map(lambda n: b"L" * n),  # may exceed a segment
)
amounts = st.integers(min_value=-1000, max_value=1000)
bound = st.one_of(st.none(), short_keys)


class _Boom(Exception):
    """Raised inside a batch's ``with`` block to abort it."""


def _in_range(k: bytes, start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes]) -> bool:
    return ((start is None or k >= start) and (stop is None or k < stop)
            and (prefix is None or k.startswith(prefix)))


class EngineMachine(RuleBasedStateMachine):
    """Engine vs. dict model. Subclasses change ``DURABILITY``."""

    DURABILITY = "process"
    SEGMENT_SIZE = 4096

    keys = Bundle("keys")
    ckeys = Bundle("ckeys")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="abase-model-")
        self.model: Dict[bytes, bytes] = {}
        # counter key -> its count since its last delete; a key is visible once
        # a non-zero amount was counted (a delete removes what was counted)
        self.cvalue: Dict[bytes, int] = {}
        self.clive: set = set()
        self.last_ts: Optional[ae.Timestamp] = None
        self.writes_since_reopen = 0
        self.writes_since_compact = 0
        self.steps = 0
        self.db: Optional[ae.Engine] = None
        self._open()

    def _open(self) -> None:
        self.db = ae.open(self.dir, node_id=7, durability=self.DURABILITY,
                          segment_size=self.SEGMENT_SIZE, compact_interval=None)
        # A merge namespace must be opened with its operator before compaction.
        self.cns = self.db.namespace("counters", merge=PNCounter())
        # Work around a known bug (test_api.py::test_check_right_after_namespace_creation):
        # check() fails until the namespace's LMDB database was opened by a read.
        self.cns.get(b"warm-up")

    def teardown(self) -> None:
        if self.db is not None:
            self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------
    @property
    def counters(self) -> Dict[bytes, int]:
        """The visible counters of the model."""
        return {k: v for k, v in self.cvalue.items() if k in self.clive}

    def _count(self, k: bytes, n: int) -> None:
        self.cvalue[k] = self.cvalue.get(k, 0) + n
        if n:
            self.clive.add(k)

    def _stamp(self, ts: Optional[ae.Timestamp]) -> None:
        """Every timestamp the engine issues is greater than all before it."""
        assert isinstance(ts, ae.Timestamp)
        assert ts.node_id == 7
        if self.last_ts is not None:
            assert ts > self.last_ts, (ts, self.last_ts)
        self.last_ts = ts
        self.writes_since_reopen += 1
        self.writes_since_compact += 1

    def _expect_scan(self, start, stop, prefix, reverse) -> List[Tuple[bytes, bytes]]:
        items = sorted((k, v) for k, v in self.model.items() if _in_range(k, start, stop, prefix))
        return items[::-1] if reverse else items

    # -- keys ------------------------------------------------------------------
    @initialize(target=keys)
    def first_key(self) -> bytes:
        return b"" if EMPTY_KEY_WORKS else b"a"

    @initialize(target=ckeys)
    def first_counter(self) -> bytes:
        return b"c"

    @rule(target=keys, k=any_keys)
    def new_key(self, k: bytes) -> bytes:
        return k

    @rule(target=ckeys, k=stored_short_keys)
    def new_counter(self, k: bytes) -> bytes:
        return k

    # -- single writes -------------------------------------------------------
    @rule(k=keys, v=values, kind=st.sampled_from(["put", "setitem", "bytearray", "memoryview"]))
    def put(self, k: bytes, v: bytes, kind: str) -> None:
        if kind == "put":
            self._stamp(self.db.put(k, v))
        elif kind == "setitem":
            self.db[k] = v
            self.writes_since_reopen += 1
            self.writes_since_compact += 1
        elif kind == "bytearray":
            self._stamp(self.db.put(bytearray(k), bytearray(v)))
        else:
            self._stamp(self.db.put(memoryview(k), memoryview(v)))
        self.model[k] = v

    @rule(k=keys)
    def delete(self, k: bytes) -> None:
        self._stamp(self.db.delete(k))
        self.model.pop(k, None)

    @rule(k=keys)
    def delitem(self, k: bytes) -> None:
        if k in self.model:
            del self.db[k]
            del self.model[k]
            self.writes_since_reopen += 1
            self.writes_since_compact += 1
        else:
            try:
                del self.db[k]
            except KeyError:
                pass
            else:
                raise AssertionError(f"del db[{k!r}] of a missing key did not raise KeyError")

    @rule(items=st.lists(st.tuples(keys, values), max_size=6))
    def put_many(self, items) -> None:
        ts = self.db.put_many(items)
        if items:
            self._stamp(ts)
        else:
            assert ts is None
        for k, v in items:
            self.model[k] = v

    # -- batches ------------------------------------------------------------
    # Counter ops in a batch are merges only: a delete followed by a merge of
    # the same counter key in one batch is a known bug (see test_api.py).
    batch_ops = st.lists(
        st.one_of(
            st.tuples(st.just("put"), keys, values),
            st.tuples(st.just("delete"), keys, st.none()),
            st.tuples(st.just("merge"), ckeys, amounts),
        ),
        min_size=1, max_size=8,
    )

    def _fill(self, b: ae.Batch, ops) -> None:
        for kind, k, arg in ops:
            if kind == "put":
                b.put(k, arg)
            elif kind == "delete":
                b.delete(k)
            elif arg >= 0:
                b.merge(k, PNCounter.increment(arg), namespace=self.cns)
            else:
                b.merge(k, PNCounter.decrement(-arg), namespace="counters")

    @rule(ops=batch_ops)
    def batch(self, ops) -> None:
        with self.db.batch() as b:
            self._fill(b, ops)
            assert len(b) == len(ops)
        for kind, k, arg in ops:
            if kind == "put":
                self.model[k] = arg
            elif kind == "delete":
                self.model.pop(k, None)
            else:
                self._count(k, arg)
        self.writes_since_reopen += 1
        self.writes_since_compact += 1

    @rule(ops=batch_ops)
    def batch_that_raises(self, ops) -> None:
        touched = {k for kind, k, _ in ops if kind != "merge"}
        ctouched = {k for kind, k, _ in ops if kind == "merge"}
        try:
            with self.db.batch() as b:
                self._fill(b, ops)
                raise _Boom()
        except _Boom:
            pass
        for k in touched:
            assert self.db.get(k) == self.model.get(k), k
        for k in ctouched:
            assert self.cns.get(k) == self.counters.get(k), k

    # -- counters -------------------------------------------------------------
    @rule(k=ckeys, n=amounts, how=st.sampled_from(["ns", "increment", "decrement"]))
    def merge(self, k: bytes, n: int, how: str) -> None:
        if how == "ns" or (how == "increment" and n >= 0):
            ts = self.cns.merge(k, PNCounter.increment(n))
        elif how == "decrement":
            ts = self.cns.merge(k, PNCounter.decrement(-n))
        else:  # increment by a negative amount subtracts
            ts = self.cns.merge(k, PNCounter.increment(n))
        self._stamp(ts)
        self._count(k, n)

    @rule(k=ckeys)
    def counter_delete(self, k: bytes) -> None:
        self._stamp(self.cns.delete(k))
        self.cvalue.pop(k, None)
        self.clive.discard(k)

    @rule(k=ckeys)
    def counter_get(self, k: bytes) -> None:
        assert self.cns.get(k) == self.counters.get(k)
        raw = self.cns.get_raw(k)
        assert PNCounter().to_value(raw) == self.counters.get(k)
        if k in self.cvalue:  # counted or deleted at least once: the key has a state
            assert raw is not None

    @rule(reverse=st.booleans())
    def counter_scan(self, reverse: bool) -> None:
        expect = sorted(self.counters.items(), reverse=reverse)
        assert list(self.cns.scan(reverse=reverse)) == expect

    # -- reads ------------------------------------------------------------------
    @rule(k=keys)
    def get(self, k: bytes) -> None:
        expect = self.model.get(k)
        assert self.db.get(k) == expect
        assert self.db.get(bytearray(k), b"<missing>") == (b"<missing>" if expect is None else expect)
        assert (k in self.db) == (expect is not None)
        if expect is None:
            try:
                self.db[k]
            except KeyError:
                pass
            else:
                raise AssertionError(f"db[{k!r}] of a missing key did not raise KeyError")
        else:
            assert self.db[k] == expect

    @rule(ks=st.lists(keys, max_size=5))
    def get_many(self, ks) -> None:
        assert self.db.get_many(ks) == [self.model.get(k) for k in ks]

    @rule(start=st.one_of(bound, keys), stop=st.one_of(bound, keys), prefix=bound, reverse=st.booleans())
    def scan(self, start, stop, prefix, reverse) -> None:
        got = list(self.db.scan(start=start, stop=stop, prefix=prefix, reverse=reverse))
        assert got == self._expect_scan(start, stop, prefix, reverse), (start, stop, prefix, reverse)

    # -- maintenance --------------------------------------------------------------
    @precondition(lambda self: self.writes_since_reopen > 0)
    @rule()
    def reopen(self) -> None:
        self.db.close()
        self._open()
        self.writes_since_reopen = 0

    @precondition(lambda self: self.writes_since_compact > 0)
    @rule()
    def compact(self) -> None:
        self.db.compact(wait=True)
        st_ = self.db.stats()
        assert st_["sealed_segments"] == 0, st_
        assert st_["compaction_errors"] == 0
        self.writes_since_compact = 0

    @rule()
    def tail_round(self) -> None:
        """The tail keeper (csrc/tail.c) finishes a round: the active segment
        is then populated from the last record's page to the window's end
        (the whole tiny segment here); under "sync" no keeper runs."""
        log = self.db._log
        if self.DURABILITY == "sync":
            assert not log.tail_info()["running"]
            return
        assert log.tail_sync()
        info = log.tail_info()
        segs = log.segments()
        if info["supported"] and segs and not segs[-1]["sealed"]:
            assert info["filled_to"] >> 32 == segs[-1]["no"]
            # the segment's file may be shorter than SEGMENT_SIZE: one sealed
            # (truncated to its records) before a reopen is the active one after
            logdir = os.path.join(self.dir, "log")
            size = next(os.path.getsize(os.path.join(logdir, f)) for f in os.listdir(logdir)
                        if f.endswith(".seg") and int(f.split(".")[0]) == segs[-1]["no"])
            assert info["filled_to"] & 0xFFFFFFFF >= min(self.SEGMENT_SIZE, size, segs[-1]["used"] + info["window"] - 4096)

    @precondition(lambda self: self.model or self.counters)
    @rule(ops=batch_ops, compact=st.booleans(), data=st.data())
    def snapshot_read(self, ops, compact: bool, data) -> None:
        old = dict(self.model)
        old_counters = dict(self.counters)
        with self.db.snapshot() as snap:
            # writes after the snapshot, some of them in a batch
            self.batch(ops)
            for _ in range(data.draw(st.integers(0, 3), label="extra writes")):
                k = data.draw(st.sampled_from(sorted(old) or [b"a"]), label="key")
                if data.draw(st.booleans(), label="delete?"):
                    self.delete(k)
                else:
                    self.put(k, data.draw(values, label="value"), "put")
            if compact:
                self.db.compact(wait=True)
            for k in set(old) | set(self.model):
                assert snap.get(k) == old.get(k), k
            for k in set(old_counters) | set(self.counters):
                assert snap.get(k, namespace=self.cns) == old_counters.get(k), k
            assert list(snap.scan()) == sorted(old.items())
            assert list(snap.scan(reverse=True, namespace="counters")) == sorted(old_counters.items(), reverse=True)
        # and the live view has moved on
        assert list(self.db.scan()) == sorted(self.model.items())

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def internal_checks(self) -> None:
        self.steps += 1
        self.db._check()

    @invariant()
    def sizes(self) -> None:
        if self.steps % 7 == 0:  # len() is a full scan: not every step
            assert len(self.db) == len(self.model)
            assert len(self.cns) == len(self.counters)


class SyncEngineMachine(EngineMachine):
    """The same model with ``durability="sync"`` (fdatasync before each ack)."""

    DURABILITY = "sync"
    SEGMENT_SIZE = 8192


class NoneEngineMachine(EngineMachine):
    """The same model with ``durability="none"`` and larger segments."""

    DURABILITY = "none"
    SEGMENT_SIZE = 16384


TestEngineModel = EngineMachine.TestCase
TestEngineModel.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)

TestSyncEngineModel = SyncEngineMachine.TestCase
TestSyncEngineModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)

TestNoneEngineModel = NoneEngineMachine.TestCase
TestNoneEngineModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
