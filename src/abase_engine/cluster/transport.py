"""The seam between the replication protocol and a network.

The protocol (:mod:`~abase_engine.cluster.coordinator`,
:mod:`~abase_engine.cluster.repair`) only ever does one thing with the
network: call a protocol method of one replica and get a
:class:`concurrent.futures.Future` for the answer. A :class:`Transport`
does that; there are two:

* :class:`abase_engine.replication.SimulatedNetwork`: in-process replicas,
  a deterministic lossy network (tests, hypothesis chaos);
* :class:`abase_engine.cluster.ray_backend.RayTransport`: Ray actors.

The contract of the future a transport returns:

* its result is the replica method's return value;
* a failure to get an answer (timeout, lost message, dead or restarting
  replica) is a :class:`~abase_engine.cluster.errors.ReplicaUnavailableError`,
  with ``delivered=False`` only when the request certainly did not run;
* any other exception is the replica's own refusal (``ClockSkewError``,
  ``MergeOperandError``, ...), raised again as the same class.

A future may never complete (a hung replica): callers bound every wait.
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from typing import Any, Callable, NamedTuple, Sequence

__all__ = ["ReplicaRef", "Transport", "completed", "failed", "Background", "inline_background"]


class ReplicaRef(NamedTuple):
    """Replica ``index`` of partition ``partition``."""

    partition: int
    index: int

    def __str__(self) -> str:
        return f"p{self.partition}/r{self.index}"


class Transport(abc.ABC):
    """Carries protocol calls to replicas. Thread-safety: implementations are safe."""

    @abc.abstractmethod
    def call(self, ref: ReplicaRef, method: str, args: Sequence[Any]) -> "Future[Any]":
        """Start ``method(*args)`` on replica ``ref``; never blocks for the answer."""

    def close(self) -> None:
        """Release what the transport holds (default: nothing)."""


def completed(value: Any) -> "Future[Any]":
    """A future already holding ``value``."""
    fut: "Future[Any]" = Future()
    fut.set_result(value)
    return fut


def failed(exc: BaseException) -> "Future[Any]":
    """A future already holding the exception ``exc``."""
    fut: "Future[Any]" = Future()
    fut.set_exception(exc)
    return fut


#: Schedules follow-up work (hint stores, read repairs, straggler checks) that
#: a call does not wait for.
Background = Callable[[Callable[[], None]], None]


def inline_background(fn: Callable[[], None]) -> None:
    """Run follow-up work at once, in the calling thread (the simulated network)."""
    fn()
