"""Whether an engine is open, and the one way it closes.

:class:`Lifecycle` is shared by the engine and every handle it gives out
(namespaces, batches, snapshots, feeds, slots, scans), so that a call after
``close()`` raises :class:`~abase_engine.errors.EngineClosedError` wherever
it lands.

Teardown (DESIGN.md invariant 8: ``close()`` may race any call from any
thread). The flag alone cannot stop a call that checked it just before
``close()`` began, so each layer that frees something has its own gate
against calls in flight, and :meth:`Lifecycle.begin_close` /
:meth:`Lifecycle.end_close` bracket the teardown that drives them:

* the C core (``log.c``): an atomic count of calls inside each ``abase_db``;
  ``abase_db_close`` waits for it to drain before unmapping, and later calls
  (the C fast path's, an open scan's or fold's included) return
  ``ABASE_ECLOSED``, mapped to EngineClosedError; the handle is freed only
  when the Log is garbage;
* the store: py-lmdb waits for its operations in flight and write
  transactions before closing the environment and invalidates the rest;
  the store turns the LMDB errors that follow into EngineClosedError;
* the compactor thread is stopped and joined before the log closes.

Locks: ``_lock`` guards the open/closed transition only (a leaf lock);
``check`` reads the flag without it, as a plain attribute read.
"""

from __future__ import annotations

import threading

from .errors import EngineClosedError

__all__ = ["Lifecycle"]


class Lifecycle:
    """The open/closed state of one engine.

    Thread-safety: safe. ``check`` is a lock-free read; ``begin_close`` lets
    exactly one caller tear down and makes every other closer wait until
    that teardown has ended.
    """

    __slots__ = ("closed", "_lock", "_done")

    def __init__(self) -> None:
        self.closed = False
        self._lock = threading.Lock()
        self._done = threading.Event()

    def check(self, what: str) -> None:
        """:raises EngineClosedError: the engine is closed (``what`` names the call)."""
        if self.closed:
            raise EngineClosedError(f"{what} on a closed engine")

    def begin_close(self) -> bool:
        """Mark the engine closed. True for the one caller that must now
        tear down (and then call :meth:`end_close`); False for any other,
        after the teardown has ended."""
        with self._lock:
            first = not self.closed
            self.closed = True
        if not first:
            self._done.wait()
        return first

    def end_close(self) -> None:
        """The teardown begun by :meth:`begin_close` has ended."""
        self._done.set()
