"""abase_engine.cluster: P partitions x N replicas of the engine, leaderless, on Ray.

Install with ``pip install -e ".[cluster]"`` (brings ``ray``). The protocol
itself does not need Ray: :mod:`abase_engine.replication` runs it in-process
over a simulated network, and everything below except
:class:`Cluster`/:class:`Client`/:class:`RayTransport` imports without Ray.

Modules (one concern each):

* :mod:`.placement`: key -> partition (xxh64), key -> digest leaf.
* :mod:`.wire`: the record encoding replicas, clients and hints exchange.
* :mod:`.resolve`: the engine's resolution rules over records from several replicas.
* :mod:`.ids`: node ids that are never reused (a persisted counter).
* :mod:`.hints`: the persisted hint store of a replica.
* :mod:`.replica`: :class:`ReplicaService`, the replica side of the protocol.
* :mod:`.transport`: the transport interface (a call returns a future).
* :mod:`.coordinator`: :class:`Coordinator`, the client side: quorums, read repair, hints.
* :mod:`.repair`: hint replay and digest anti-entropy.
* :mod:`.ray_backend`: Ray actors, :class:`Cluster` and :class:`Client`.

On disk, a cluster's ``root_dir``::

    ids/LOCK, ids/next_node_id      node id allocator (owned by the registry actor)
    p0000/r0/IDENTITY               {"node_id", "partition", "replica"}
    p0000/r0/engine/                the replica's Engine (digests=True; namespace
                                    "__cluster.requests" holds CRDT request ids)
    p0000/r0/hints/                 its HintStore (an Engine: target u16 | seq u64 -> records)
    ...

See ``docs/cluster.md`` for the protocol, quorums, repair and what a real
deployment would still need.
"""

from __future__ import annotations

from typing import Any

from .coordinator import DEFAULTS as CLIENT_DEFAULTS, Coordinator, WriteResult
from .errors import (
    ClusterConfigError,
    ClusterError,
    ClusterUnavailableError,
    QuorumError,
    ReplicaDownError,
    ReplicaUnavailableError,
    UnknownNamespaceError,
)
from .ids import IdAllocator
from .placement import leaf_path, partition_of
from .replica import ReplicaService
from .resolve import resolve
from .transport import ReplicaRef, Transport
from .wire import decode_changes, encode_changes

__all__ = [
    "Cluster", "Client", "RayTransport", "Coordinator", "WriteResult", "CLIENT_DEFAULTS", "ClusterError",
    "ClusterConfigError", "ClusterUnavailableError", "QuorumError", "ReplicaDownError", "ReplicaUnavailableError",
    "UnknownNamespaceError", "IdAllocator", "ReplicaService", "ReplicaRef", "Transport", "partition_of",
    "leaf_path", "resolve", "encode_changes", "decode_changes", "ray_available",
]

_RAY_NAMES = ("Cluster", "Client", "RayTransport", "ClusterWarning")


def ray_available() -> bool:
    """Whether ``ray`` can be imported (the ``cluster`` extra is installed)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name: str) -> Any:
    # The Ray parts load on first use, so the protocol imports without Ray.
    if name in _RAY_NAMES:
        try:
            from . import ray_backend
        except ImportError as exc:
            if exc.name != "ray":
                raise
            raise ImportError(
                f"abase_engine.cluster.{name} needs Ray: pip install -e \".[cluster]\" (or pip install ray)") from exc
        return getattr(ray_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
