"""Errors of the replicated layer (:mod:`abase_engine.cluster`, :mod:`abase_engine.replication`).

All of them are :class:`~abase_engine.errors.AbaseError` subclasses, so code
that catches the engine's base class catches these too. The engine's own
errors (``ClockSkewError``, ``MergeOperandError``, ``KeyTooLargeError`` ...)
pass through the cluster unchanged when a replica raises them: a refusal by a
replica is never masked as a slow or dead replica.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import AbaseError

__all__ = [
    "ClusterError", "ClusterConfigError", "UnknownNamespaceError", "QuorumError", "ReplicaUnavailableError",
    "ReplicaDownError", "ClusterUnavailableError",
]


class ClusterError(AbaseError):
    """Base class of the errors of the replicated layer."""


class ClusterConfigError(ClusterError, ValueError):
    """A bad cluster or call configuration: W or R outside 1..N, no partitions,
    a namespace operator that is not a MergeOperator, a reserved namespace name."""


class UnknownNamespaceError(ClusterError, ValueError):
    """A call names a namespace the cluster was not configured with."""


class QuorumError(ClusterError):
    """Fewer than the required replicas answered in time.

    ``result`` holds what is known: for a write, a
    :class:`~abase_engine.cluster.coordinator.WriteResult` (or a list of them
    for ``put_many``) whose records can be sent again with ``retry``. A write
    that missed its quorum is *not* rolled back: the replicas that took it
    keep it and it spreads (hints, read repair, anti-entropy), as in Dynamo.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class ReplicaUnavailableError(ClusterError):
    """One call to one replica failed without an answer (timeout, lost message,
    dead or restarting actor).

    ``delivered`` says what the caller knows: False when the request certainly
    never ran (the replica was known down before it was sent), None when it
    may have run (a timeout or a lost reply). Only ``delivered is False`` lets
    a CRDT operation move to another replica without risking a double count.
    """

    def __init__(self, message: str, delivered: Optional[bool] = None) -> None:
        super().__init__(message)
        self.delivered = delivered

    def __reduce__(self):  # keep ``delivered`` across pickling (Ray)
        return (type(self), (str(self), self.delivered))


class ReplicaDownError(ReplicaUnavailableError):
    """The replica is down (closed, killed without restart): the request was not delivered."""

    def __init__(self, message: str, delivered: Optional[bool] = False) -> None:
        super().__init__(message, delivered)


class ClusterUnavailableError(ClusterError):
    """The cluster cannot be reached at all: Ray is not initialised, no cluster of
    that name exists, or it was shut down."""
