"""Shared fixtures and the hypothesis profile of the test suite.

* ``db_path``: a fresh engine directory under pytest's ``tmp_path``.
* ``open_db``: a factory ``open_db(path=None, **options)`` that opens an
  engine (``compact_interval=None`` unless given, so no background thread
  runs and tests are deterministic) and closes every engine it opened at
  teardown, even when the test failed.
* ``FakeClock`` / ``fake_clock``: an injectable wall clock in ms (a list-backed
  callable) for the engine's ``clock=`` option. Tests move time by assigning
  ``clock.now``; nothing sleeps.

The hypothesis profile ``ci`` (deadline off, a moderate number of examples)
is loaded unless ``HYPOTHESIS_PROFILE`` names another one; ``dev`` runs fewer
examples, ``thorough`` many more.
"""

from __future__ import annotations

import os
import time
from typing import Callable, List

import pytest
from hypothesis import HealthCheck, settings

import abase_engine as ae

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=10)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: A fixed, realistic wall-clock reading (ms) for fake clocks: 2023-11-14.
BASE_MS = 1_700_000_000_000


class FakeClock:
    """A wall clock in ms that only moves when a test moves it.

    ``clock.now`` is the reading; calling the object returns it. Passing it as
    ``ae.open(..., clock=clock)`` makes every local timestamp, the clock-skew
    check and the tombstone grace use it.
    """

    def __init__(self, start_ms: int = BASE_MS) -> None:
        self._t: List[int] = [start_ms]

    @property
    def now(self) -> int:
        return self._t[0]

    @now.setter
    def now(self, value: int) -> None:
        self._t[0] = value

    def advance(self, ms: int) -> int:
        self._t[0] += ms
        return self._t[0]

    def __call__(self) -> int:
        return self._t[0]


def real_ms() -> int:
    """The real wall clock in ms (what an engine without ``clock=`` uses)."""
    return int(time.time() * 1000)


@pytest.fixture
def db_path(tmp_path) -> str:
    """A path for a new engine directory (not created yet)."""
    return str(tmp_path / "db")


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_db(db_path) -> Callable[..., ae.Engine]:
    """Open engines; every engine opened through the factory is closed at teardown."""
    engines: List[ae.Engine] = []

    def _open(path=None, **options) -> ae.Engine:
        options.setdefault("compact_interval", None)
        db = ae.open(db_path if path is None else path, **options)
        engines.append(db)
        return db

    yield _open
    for db in reversed(engines):
        db.close()
