"""Unit tests of the hybrid logical clock (``ae.HLC``) and of ``ae.Timestamp``.

Every test drives the clock with a fake wall clock, so nothing depends on
real time. Engine-level tests check the persisted high-water mark: a reopened
engine whose wall clock went backwards still issues larger timestamps.
"""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import abase_engine as ae
from abase_engine import ClockSkewError, Timestamp
from abase_engine.record import MAX_PHYSICAL_MS

MASK = 0xFFFF


class FakeClock:
    """A wall clock in ms that only moves when the test says so."""

    def __init__(self, ms: int = 1_000_000) -> None:
        self.ms = ms
        self.sleeps = 0

    def __call__(self) -> int:
        return self.ms

    def sleep(self, seconds: float) -> None:
        # The HLC sleeps while the logical counter is exhausted: move time on.
        self.sleeps += 1
        self.ms += 1


def make(node=7, ms=1_000_000, **kw):
    clk = FakeClock(ms)
    return ae.HLC(node, clock=clk, sleep=clk.sleep, **kw), clk


# --------------------------------------------------------------------- now()

def test_now_within_one_ms_counts_logically():
    h, clk = make()
    got = [h.now() for _ in range(5)]
    assert got == [Timestamp(1_000_000, i, 7) for i in range(5)]
    assert all(a < b for a, b in zip(got, got[1:]))
    assert h.high_water == got[-1].hlc


def test_physical_advance_resets_logical():
    h, clk = make()
    h.now(), h.now(), h.now()
    clk.ms += 1
    assert h.now() == Timestamp(1_000_001, 0, 7)
    clk.ms += 250
    assert h.now() == Timestamp(1_000_251, 0, 7)
    assert h.now() == Timestamp(1_000_251, 1, 7)


def test_clock_going_backwards_still_increases():
    h, clk = make()
    a = h.now()
    b = h.now()
    clk.ms -= 10_000
    c = h.now()
    d = h.now()
    assert a < b < c < d
    assert c == Timestamp(1_000_000, 2, 7)
    clk.ms += 10_000  # back where we were: still after d
    e = h.now()
    assert e > d and e == Timestamp(1_000_000, 4, 7)


def test_node_id_is_the_clock_node():
    h, _ = make(node=123)
    assert h.now().node_id == 123


def test_high_water_floor():
    clk = FakeClock(500)
    h = ae.HLC(1, clock=clk, sleep=clk.sleep, high_water=Timestamp(900, 3, 1))
    assert h.now() == Timestamp(900, 4, 1)
    h2 = ae.HLC(1, clock=clk, sleep=clk.sleep, high_water=Timestamp(900, 3, 1).hlc)
    assert h2.now() == Timestamp(900, 4, 1)
    # a floor below the wall clock changes nothing
    h3 = ae.HLC(1, clock=clk, sleep=clk.sleep, high_water=Timestamp(100, 3, 1))
    assert h3.now() == Timestamp(500, 0, 1)


def test_observe_raises_floor_only():
    h, clk = make()
    h.observe(Timestamp(2_000_000, 5, 3))
    assert h.now() == Timestamp(2_000_000, 6, 7)
    h.observe(Timestamp(10, 0, 3))  # lower: ignored
    assert h.now() == Timestamp(2_000_000, 7, 7)


def test_real_clock_is_monotonic():
    h = ae.HLC(1)
    prev = h.now()
    for _ in range(2000):
        cur = h.now()
        assert cur > prev
        prev = cur


# ------------------------------------------------------------------- update()

def test_update_remote_ahead_within_skew_jumps_to_it():
    h, clk = make(max_clock_skew_ms=500)
    h.now()
    remote = Timestamp(1_000_400, 9, 2)
    got = h.update(remote)
    assert got == Timestamp(1_000_400, 10, 7)
    assert got > remote
    assert h.now() == Timestamp(1_000_400, 11, 7)


def test_update_equal_physical_takes_max_logical_plus_one():
    h, clk = make()
    for _ in range(3):
        h.now()  # local (1_000_000, 2)
    assert h.update(Timestamp(1_000_000, 8, 2)) == Timestamp(1_000_000, 9, 7)
    # remote logical below ours: ours + 1
    assert h.update(Timestamp(1_000_000, 1, 2)) == Timestamp(1_000_000, 10, 7)
    # identical remote to our last
    assert h.update(Timestamp(1_000_000, 10, 2)) == Timestamp(1_000_000, 11, 7)


def test_update_remote_behind_keeps_local():
    h, clk = make()
    h.now()
    assert h.update(Timestamp(10, 5, 2)) == Timestamp(1_000_000, 1, 7)


def test_update_wall_clock_ahead_of_both_resets_logical():
    h, clk = make()
    h.now()
    clk.ms += 100
    assert h.update(Timestamp(1_000_050, 77, 2)) == Timestamp(1_000_100, 0, 7)


def test_update_exactly_at_max_skew_is_accepted():
    h, clk = make(max_clock_skew_ms=500)
    assert h.update(Timestamp(1_000_500, 0, 2)) == Timestamp(1_000_500, 1, 7)


def test_update_beyond_skew_refused_and_clock_does_not_move():
    h, clk = make(max_clock_skew_ms=500)
    a = h.now()
    before = h.high_water
    with pytest.raises(ClockSkewError):
        h.update(Timestamp(1_000_501, 0, 2))
    with pytest.raises(ClockSkewError):
        h.update(Timestamp(9_999_999_999, 0, 2))
    assert h.high_water == before
    assert h.now() == Timestamp(a.physical_ms, a.logical + 1, 7)


def test_zero_skew_accepts_only_not_ahead():
    h, clk = make(max_clock_skew_ms=0)
    assert h.update(Timestamp(1_000_000, 3, 2)) == Timestamp(1_000_000, 4, 7)
    with pytest.raises(ClockSkewError):
        h.update(Timestamp(1_000_001, 0, 2))


def test_update_type_error():
    h, _ = make()
    with pytest.raises(TypeError):
        h.update(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        h.update((1000, 0, 1))  # type: ignore[arg-type]


# ------------------------------------------------------------ logical overflow

def test_logical_overflow_waits_for_next_ms_never_wraps():
    h, clk = make(ms=5_000)
    prev = None
    for i in range(MASK + 1):
        t = h.now()
        assert t.physical_ms == 5_000 and t.logical == i
        prev = t
    assert clk.sleeps == 0
    nxt = h.now()
    assert clk.sleeps >= 1
    assert nxt > prev
    assert nxt.physical_ms == clk.ms == 5_001 and nxt.logical == 0


def test_overflow_from_high_water_floor():
    clk = FakeClock(5_000)
    h = ae.HLC(1, clock=clk, sleep=clk.sleep, high_water=Timestamp(5_000, MASK, 1))
    t = h.now()
    assert clk.sleeps >= 1
    assert t == Timestamp(5_001, 0, 1)


def test_update_with_exhausted_remote_logical_waits():
    h, clk = make(ms=5_000)
    t = h.update(Timestamp(5_000, MASK, 2))
    assert clk.sleeps >= 1
    assert t > Timestamp(5_000, MASK, 2)
    assert t == Timestamp(5_001, 0, 7)


def test_overflow_waits_several_ms_when_floor_far_ahead():
    # floor (5_003, MASK): the clock must pass 5_003 before a new timestamp
    clk = FakeClock(5_000)
    h = ae.HLC(1, clock=clk, sleep=clk.sleep, high_water=Timestamp(5_003, MASK, 1))
    t = h.now()
    assert t == Timestamp(5_004, 0, 1)
    assert clk.sleeps >= 4


# -------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("node", [-1, 1 << 32, "1", 1.0, None])
def test_bad_node_id(node):
    with pytest.raises(ValueError):
        ae.HLC(node)


@pytest.mark.parametrize("skew", [-1, 1.5, "500"])
def test_bad_skew(skew):
    with pytest.raises(ValueError):
        ae.HLC(1, max_clock_skew_ms=skew)


@pytest.mark.parametrize("ms", [1 << 47, 1 << 60])
def test_clock_reading_out_of_range(ms):
    h = ae.HLC(1, clock=lambda: ms)
    with pytest.raises(ValueError):
        h.now()
    with pytest.raises(ValueError):
        h.update(Timestamp(1, 0, 0))
    assert h.high_water == 0


def test_negative_clock_reading_is_refused():
    # regression: a negative reading used to mean "read the real clock" in C
    h = ae.HLC(1, clock=lambda: -5)
    with pytest.raises(ValueError):
        h.now()


def test_max_representable_clock_reading():
    top = (1 << 47) - 1
    h = ae.HLC(1, clock=lambda: top)
    assert h.now() == Timestamp(top, 0, 1)


# -------------------------------------------------- property: strict increase

_action = st.one_of(
    st.tuples(st.just("now")),
    st.tuples(st.just("move"), st.integers(-2_000, 2_000)),
    st.tuples(st.just("update"), st.integers(-3_000, 1_000), st.integers(0, MASK), st.integers(0, 5)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_action, min_size=1, max_size=80), st.integers(0, 600))
def test_property_any_interleaving_strictly_increases(actions, skew):
    clk = FakeClock(1_000_000)
    h = ae.HLC(9, clock=clk, sleep=clk.sleep, max_clock_skew_ms=skew)
    issued = []
    for act in actions:
        if act[0] == "now":
            issued.append(h.now())
        elif act[0] == "move":
            clk.ms = max(0, clk.ms + act[1])
        else:
            _, delta, logical, node = act
            remote = Timestamp(max(0, clk.ms + delta), logical, node)
            before = h.high_water
            if remote.physical_ms - clk.ms > skew:
                with pytest.raises(ClockSkewError):
                    h.update(remote)
                assert h.high_water == before
                continue
            t = h.update(remote)
            assert t.hlc > remote.hlc
            issued.append(t)
    assert all(a < b for a, b in zip(issued, issued[1:])), issued
    assert all(t.node_id == 9 for t in issued)
    # logical part never wraps into the physical part: the packed value is (ms << 16 | logical)
    assert all(t.hlc == (t.physical_ms << 16 | t.logical) for t in issued)


# ------------------------------------------------------------------ Timestamp

def test_timestamp_fields_and_packing():
    t = Timestamp(1234, 56, 78)
    assert (t.physical_ms, t.logical, t.node_id) == (1234, 56, 78)
    assert t.hlc == 1234 << 16 | 56
    assert repr(t) == "Timestamp(1234, 56, 78)"
    assert Timestamp(5) == Timestamp(5, 0, 0)


def test_timestamp_order_physical_logical_node():
    a = Timestamp(1000, 0, 9)
    b = Timestamp(1000, 1, 0)
    c = Timestamp(1000, 1, 1)
    d = Timestamp(1001, 0, 0)
    assert a < b < c < d
    assert d > c > b > a
    assert a <= a and a >= a and not a < a
    assert sorted([d, c, b, a]) == [a, b, c, d]
    assert max([a, d, b]) == d


def test_timestamp_hash_eq():
    a = Timestamp(1000, 3, 4)
    b = Timestamp(1000, 3, 4)
    assert a == b and hash(a) == hash(b)
    assert a != Timestamp(1000, 3, 5)
    assert len({a, b, Timestamp(1000, 3, 5)}) == 2
    assert {a: 1}[b] == 1
    assert (a == (1000 << 16 | 3)) is False
    assert a != "x"


def test_timestamp_compare_with_other_type_is_type_error():
    a = Timestamp(1)
    for other in (1, "x", None, 1.5):
        with pytest.raises(TypeError):
            a < other  # noqa: B015
        with pytest.raises(TypeError):
            a >= other  # noqa: B015


def test_timestamp_immutable_and_picklable():
    a = Timestamp(1000, 3, 4)
    with pytest.raises(AttributeError):
        a._hlc = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.node_id = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(a)) == a


@pytest.mark.parametrize("args,exc", [
    ((-1, 0, 0), ValueError),
    ((0, -1, 0), ValueError),
    ((0, 1 << 16, 0), ValueError),
    ((0, 0, 1 << 32), ValueError),
    ((0, 0, -1), ValueError),
    ((MAX_PHYSICAL_MS + 1, 0, 0), ValueError),
    ((1.5, 0, 0), TypeError),
    (("1", 0, 0), TypeError),
    ((True, 0, 0), TypeError),
    ((0, False, 0), TypeError),
    ((0, 0, None), TypeError),
])
def test_timestamp_bad_inputs(args, exc):
    with pytest.raises(exc):
        Timestamp(*args)


def test_timestamp_bytes_round_trip_basic():
    a = Timestamp(1000, 3, 4)
    raw = a.to_bytes()
    assert isinstance(raw, bytes) and len(raw) == 12
    assert Timestamp.from_bytes(raw) == a
    assert Timestamp.from_bytes(bytearray(raw)) == a
    assert Timestamp.from_bytes(memoryview(raw)) == a


@pytest.mark.parametrize("bad,exc", [
    (b"", ValueError), (b"\x00" * 11, ValueError), (b"\x00" * 13, ValueError),
    ("x" * 12, TypeError), (12, TypeError), (None, TypeError),
])
def test_timestamp_from_bytes_bad(bad, exc):
    with pytest.raises(exc):
        Timestamp.from_bytes(bad)


_ts = st.builds(Timestamp, st.integers(0, MAX_PHYSICAL_MS), st.integers(0, MASK), st.integers(0, (1 << 32) - 1))


@settings(max_examples=300, deadline=None)
@given(_ts, _ts)
def test_property_bytes_round_trip_and_order(a, b):
    assert Timestamp.from_bytes(a.to_bytes()) == a
    assert hash(Timestamp.from_bytes(a.to_bytes())) == hash(a)
    assert (a.to_bytes() < b.to_bytes()) == (a < b)
    assert (a.to_bytes() == b.to_bytes()) == (a == b)
    assert (a < b) == ((a.physical_ms, a.logical, a.node_id) < (b.physical_ms, b.logical, b.node_id))


# ------------------------------------------------------ engine: persisted mark

def _open(path, clk, **kw):
    kw.setdefault("compact_interval", None)
    return ae.open(path, node_id=3, clock=clk, **kw)


@pytest.mark.parametrize("compact_before_close", [False, True])
def test_engine_reopen_with_clock_backwards_keeps_increasing(tmp_path, compact_before_close):
    clk = FakeClock(50_000_000)
    db = _open(tmp_path, clk)
    last = None
    for i in range(50):
        last = db.put(b"k%d" % i, b"v")
    last = max(last, db.delete(b"k0"))
    if compact_before_close:
        db.compact(wait=True)  # the log is empty: the mark comes from the store
        assert db.stats()["segments"] == 0
    db.close()

    clk.ms = 40_000_000  # ten thousand seconds back
    db = _open(tmp_path, clk)
    try:
        t = db.put(b"after", b"x")
        assert t > last
        assert db.now() > t
        # within the same (frozen) ms the logical part keeps counting
        u = db.put(b"after2", b"y")
        assert u > t
        assert db.get(b"k1") == b"v"
    finally:
        db.close()


def test_engine_timestamps_strictly_increase_and_use_fake_clock(tmp_path):
    clk = FakeClock(7_000_000)
    with _open(tmp_path, clk) as db:
        ts = [db.put(b"k", b"%d" % i) for i in range(100)]
        assert all(a < b for a, b in zip(ts, ts[1:]))
        assert ts[0].physical_ms == 7_000_000
        assert all(t.node_id == 3 for t in ts)
        clk.ms += 5
        assert db.put(b"k", b"z") == Timestamp(7_000_005, 0, 3)


def test_engine_reopen_with_clock_reset_to_epoch_after_compaction(tmp_path):
    # regression: the store's high-water mark used to be applied with a ~34.8-year skew check
    clk = FakeClock(1_700_000_000_000)
    db = _open(tmp_path, clk)
    last = db.put(b"k", b"v")
    db.compact(wait=True)
    db.close()
    clk.ms = 1_000
    db = _open(tmp_path, clk)
    try:
        assert db.put(b"k2", b"w") > last
    finally:
        db.close()


def test_engine_reopen_with_clock_reset_to_epoch_log_only(tmp_path):
    # Same as above but the mark is in the log (not compacted): works.
    clk = FakeClock(1_700_000_000_000)
    db = _open(tmp_path, clk)
    last = db.put(b"k", b"v")
    db.close()
    clk.ms = 1_000
    with _open(tmp_path, clk) as db:
        assert db.put(b"k2", b"w") > last
        assert db.get(b"k") == b"v"


def test_engine_refuses_negative_clock_reading(tmp_path):
    with _open(tmp_path, FakeClock(1_000)) as db:
        db.put(b"k", b"v")
    with ae.open(tmp_path, node_id=3, clock=lambda: -5, compact_interval=None) as db:
        with pytest.raises(ValueError):
            db.put(b"k", b"w")
        assert db.get(b"k") == b"v"
