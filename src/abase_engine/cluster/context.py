"""What every part of one cluster client shares: transport, layout, settings, namespaces, clock, counters.

A :class:`~abase_engine.cluster.coordinator.Coordinator` is made of parts
(:mod:`.calls`, :mod:`.followups`, :mod:`.writes`, :mod:`.handoff`,
:mod:`.reads`); each reads the client's settings from one
:class:`ClientContext`, so a setting changed on the Coordinator (e.g.
``client.hinted_handoff = False``, or another ``client.transport``) takes
effect in every part at once.

Thread-safety: :meth:`ClientContext.count` and the HLC are safe; settings
are plain attributes, read on every call.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional

from ..errors import ClockSkewError
from ..hlc import HLC
from ..merge import MergeOperator
from ..record import Timestamp, from_packed
from .errors import ClusterConfigError, UnknownNamespaceError
from .replica import check_namespaces
from .transport import Transport

__all__ = ["ClientContext", "DEFAULTS"]

#: Client settings and their defaults (units in the comments).
DEFAULTS: Dict[str, Any] = {
    "write_quorum": 2,          # W: replicas that hold a write before it returns
    "read_quorum": 2,           # R: replicas a read consults
    "timeout": 5.0,             # s: deadline of one client call
    "attempts": 3,              # tries per replica within one call
    "backoff": 0.05,            # s: first pause before a retry (doubles each time)
    "max_clock_skew_ms": 500,   # ms: how far ahead a clock reading may be
    "hinted_handoff": True,     # store hints for replicas that missed a write
    "suspect_seconds": 2.0,     # s: a replica that failed or timed out is asked last for this long
    "hedge_after": None,        # s: a read still short of R answers then also asks one more replica
                                #    (None: timeout / 5)
    "scan_page": 1000,          # keys per replica per scan round trip
    "background_threads": 0,    # threads for hints and repairs; 0: inline
}


class ClientContext:
    """The transport, validated layout and settings of one client, its namespaces, HLC and counters.

    :param transport: carries the client's calls to replicas.
    :param partitions: P.
    :param replicas: N, replicas per partition.
    :param namespaces: ``{name: MergeOperator or None}`` as the cluster was made with.
    :param node_id: the client's node id (never used by anyone else).
    :param clock: wall-clock ms for the HLC (tests); default the real clock.
    :param settings: any of :data:`DEFAULTS`.
    :raises ClusterConfigError: an unknown setting, or one out of range (W or R outside 1..N, ...).
    """

    def __init__(self, transport: Transport, *, partitions: int, replicas: int,
                 namespaces: Optional[Dict[str, Optional[MergeOperator]]], node_id: int,
                 clock: Optional[Callable[[], int]] = None, **settings: Any) -> None:
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise ClusterConfigError(f"unknown client setting(s): {', '.join(sorted(unknown))}")
        cfg = dict(DEFAULTS, **settings)
        for name, v in (("partitions", partitions), ("replicas", replicas)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ClusterConfigError(f"{name} must be an int >= 1, got {v!r}")
        self.transport = transport
        self.partitions, self.replicas = partitions, replicas
        self.namespaces = check_namespaces(namespaces)
        self.write_quorum = self.quorum(cfg["write_quorum"], "write_quorum (W)")
        self.read_quorum = self.quorum(cfg["read_quorum"], "read_quorum (R)")
        for name in ("timeout", "backoff", "suspect_seconds"):
            if not isinstance(cfg[name], (int, float)) or cfg[name] < 0 or (name == "timeout" and cfg[name] == 0):
                raise ClusterConfigError(f"{name} must be a positive number of seconds, got {cfg[name]!r}")
        for name in ("attempts", "scan_page"):
            if not isinstance(cfg[name], int) or cfg[name] < 1:
                raise ClusterConfigError(f"{name} must be an int >= 1, got {cfg[name]!r}")
        self.timeout = float(cfg["timeout"])
        self.attempts: int = cfg["attempts"]
        self.backoff = float(cfg["backoff"])
        self.hinted_handoff = bool(cfg["hinted_handoff"])
        self.suspect_seconds = float(cfg["suspect_seconds"])
        hedge = cfg["hedge_after"]
        if hedge is not None and (not isinstance(hedge, (int, float)) or hedge <= 0):
            raise ClusterConfigError(f"hedge_after must be a positive number of seconds or None, got {hedge!r}")
        self.hedge_after = float(hedge) if hedge is not None else self.timeout / 5
        self.scan_page: int = cfg["scan_page"]
        self.max_clock_skew_ms: int = cfg["max_clock_skew_ms"]
        self.background_threads: int = cfg["background_threads"]
        self.node_id = node_id
        self.hlc = HLC(node_id, clock=clock, max_clock_skew_ms=self.max_clock_skew_ms)
        #: Counters: calls (``writes``, ``reads``), ``retries`` and ``hedges`` of
        #: replica calls, ``hints_stored``/``hints_lost``, ``read_repairs``, ``disputed_keys``.
        self.stats: Dict[str, int] = {
            "writes": 0, "reads": 0, "retries": 0, "hedges": 0, "hints_stored": 0, "hints_lost": 0,
            "read_repairs": 0, "disputed_keys": 0,
        }
        self._lock = threading.Lock()

    def quorum(self, value: Any, what: str) -> int:
        """``value`` as a quorum size.

        :raises ClusterConfigError: not an int in 1..N (``what`` names it in the message).
        """
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= self.replicas:
            raise ClusterConfigError(f"{what} must be an int in 1..N={self.replicas}, got {value!r}")
        return value

    def operator(self, namespace: str) -> Optional[MergeOperator]:
        """The merge operator of ``namespace`` (None: LWW).

        :raises TypeError: ``namespace`` is not a str.
        :raises UnknownNamespaceError: not one of the cluster's namespaces.
        """
        if not isinstance(namespace, str):
            raise TypeError(f"namespace names are str, not {type(namespace).__name__}")
        try:
            return self.namespaces[namespace]
        except KeyError:
            raise UnknownNamespaceError(
                f"namespace {namespace!r} is not one of this cluster's: {sorted(self.namespaces)}") from None

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` of :attr:`stats`."""
        with self._lock:
            self.stats[name] += n

    def receive(self, ts: Timestamp, source: str) -> None:
        """HLC receive of a timestamp read back from ``source``; refuse one too far ahead.

        :raises ClockSkewError: ``ts`` is more than ``max_clock_skew_ms`` ahead
            of this client's clock (the message names both).
        """
        try:
            self.hlc.update(ts)
        except ClockSkewError:
            raise ClockSkewError(
                f"{source} returned {ts!r} (node {ts.node_id}), more than {self.max_clock_skew_ms} ms ahead of "
                f"client node {self.node_id}'s clock ({int(time.time() * 1000)} ms wall, last "
                f"{from_packed(self.hlc.high_water, self.node_id)!r})") from None
