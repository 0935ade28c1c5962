"""Prometheus metrics of open engines (``pip install abase_engine[metrics]``).

>>> import tempfile, abase_engine as ae
>>> from abase_engine import metrics
>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> db = ae.open(tempfile.mkdtemp())
>>> metrics.register(db, registry)
>>> _ = db.put(b"k", b"v")
>>> b'abase_operation_seconds_count{db="' in generate_latest(registry)
True
>>> metrics.unregister(db); db.close()

:func:`register` adds an engine to the collector of a ``prometheus_client``
registry (the default one unless given); every scrape then reads
``Engine.stats()`` and the engine's latency histograms. The names are in
docs/operations.md ("Metrics"); each carries the label ``db`` (the engine's
directory), so several engines share one registry.

Latency histograms cost nothing while no collector is registered: the
engine's hot calls (``put``, ``get``, ``delete``, ``sync``: the default
namespace's, which the engine binds straight to its C fast path at open)
are replaced by timed wrappers only by :func:`register`, and
:func:`unregister` binds the fast ones back (the same objects). A timed
call costs two ``perf_counter`` readings and one histogram update
(bench/metrics_cost.py measures it). Compaction passes are always timed
(``Engine.compaction_timings``; a pass is long).

Thread-safety: safe. Register and unregister while other threads call the
engine: a call in flight finishes on whichever binding it found.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .engine import Engine
from .errors import AbaseError
from .timing import OP_BOUNDS, LatencyHistogram

__all__ = ["register", "unregister", "registered", "EngineCollector", "TIMED_CALLS"]

#: The engine methods that get a latency histogram (label ``op``).
TIMED_CALLS = ("put", "get", "delete", "sync")

_lock = threading.Lock()
#: Every registered engine: its collector and what its methods were bound to.
_registrations: "weakref.WeakKeyDictionary[Engine, _Registration]" = weakref.WeakKeyDictionary()
#: One collector per registry (keyed by id; the registry is kept in the value).
_collectors: Dict[int, Tuple[Any, "EngineCollector"]] = {}


def _prometheus():
    try:
        from prometheus_client import core
    except ImportError:
        raise ImportError("abase_engine.metrics needs prometheus_client: pip install 'abase_engine[metrics]'") from None
    return core


class _Registration:
    """One engine's histograms and its methods' previous bindings."""

    def __init__(self, db: Engine, registry: Any) -> None:
        self.path = db.path
        self.registry = registry
        self.ops: Dict[str, LatencyHistogram] = {name: LatencyHistogram(OP_BOUNDS) for name in TIMED_CALLS}
        #: name -> the instance attribute it had (None: it resolved to the class's method)
        self.previous: Dict[str, Optional[Callable[..., Any]]] = {}


def _timed(fn: Callable[..., Any], hist: LatencyHistogram) -> Callable[..., Any]:
    clock = time.perf_counter
    observe = hist.observe

    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            observe(clock() - t0)

    call.__name__ = getattr(fn, "__name__", "call")
    call.__doc__ = getattr(fn, "__doc__", None)
    return call


class EngineCollector:
    """A ``prometheus_client`` collector of every engine registered to one registry.

    ``collect`` reads ``stats()`` of each open engine (a closed one is
    skipped) and its histograms. Runtime complexity: one ``stats()`` per
    engine per scrape (``stats()`` counts each namespace's stored entries).
    """

    def __init__(self) -> None:
        self._engines: "weakref.WeakKeyDictionary[Engine, _Registration]" = weakref.WeakKeyDictionary()

    def add(self, db: Engine, reg: _Registration) -> None:
        self._engines[db] = reg

    def remove(self, db: Engine) -> bool:
        """Forget ``db``; True when no engine is left."""
        self._engines.pop(db, None)
        return not self._engines

    def describe(self) -> List[Any]:
        """No fixed description: the registry then does not call ``collect`` at registration."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families (docs/operations.md, "Metrics")."""
        core = _prometheus()
        gauges = {name: core.GaugeMetricFamily(f"abase_{name}", doc, labels=["db"]) for name, doc in _GAUGES}
        counters = {name: core.CounterMetricFamily(f"abase_{metric}", doc, labels=["db"])
                    for name, metric, doc in _COUNTERS}
        io_failed = core.GaugeMetricFamily("abase_io_failed", "1 after an I/O failure: writes are refused "
                                                              "until the engine is reopened", labels=["db"])
        slot_lag = core.GaugeMetricFamily("abase_slot_lag_bytes", "bytes of log a replication slot is behind",
                                          labels=["db", "slot"])
        slot_bad = core.GaugeMetricFamily("abase_slot_invalidated", "1 if the replication slot was invalidated",
                                          labels=["db", "slot"])
        ops = core.HistogramMetricFamily("abase_operation_seconds", "latency of the engine's calls while "
                                         "metrics are registered (default namespace)", labels=["db", "op"])
        passes = core.HistogramMetricFamily("abase_compaction_pass_seconds",
                                            "duration of compaction passes that folded segments", labels=["db"])
        for db, reg in list(self._engines.items()):
            try:
                st = db.stats()
            except AbaseError:  # closed meanwhile
                continue
            label = [reg.path]
            for name, _doc in _GAUGES:
                gauges[name].add_metric(label, float(st[name]))
            for name, _metric, _doc in _COUNTERS:
                counters[name].add_metric(label, float(st[name]))
            io_failed.add_metric(label, 0.0 if st["io_error"] is None else 1.0)
            for slot, s in sorted(st["slots"].items()):
                slot_lag.add_metric(label + [slot], float(s["lag_bytes"]))
                slot_bad.add_metric(label + [slot], 1.0 if s["invalidated"] else 0.0)
            for op, hist in reg.ops.items():
                buckets, count, total = hist.snapshot()
                ops.add_metric(label + [op], [(_le(b), c) for b, c in buckets], total)
            buckets, count, total = db.compaction_timings.snapshot()
            passes.add_metric(label, [(_le(b), c) for b, c in buckets], total)
        yield from gauges.values()
        yield from counters.values()
        yield from (io_failed, slot_lag, slot_bad, ops, passes)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


#: stats() key -> help text, exported as gauge ``abase_<key>``.
_GAUGES = (
    ("keys", "approximate key count (log index + store entries; a key in both counts twice)"),
    ("index_keys", "keys in the log's hash index"),
    ("store_keys", "entries in the LMDB store (tombstones included)"),
    ("log_bytes", "bytes of live (uncompacted) log"),
    ("segments", "live log segments"),
    ("sealed_segments", "sealed segments not yet compacted"),
    ("compaction_lag_bytes", "bytes of sealed log not yet folded into the store"),
    ("index_bytes", "bytes of the log's hash index"),
    ("store_bytes", "bytes of the LMDB store file"),
    ("stalled_writers", "writers waiting in a write stall now"),
)
#: stats() key, metric name (without ``abase_``; the client adds ``_total``), help text.
_COUNTERS = (
    ("compactions", "compacted_segments", "segments folded into the store"),
    ("compaction_passes", "compaction_passes", "compaction passes run"),
    ("compaction_errors", "compaction_errors", "compaction passes that failed"),
    ("log_bytes_written", "log_written_bytes", "bytes appended to the log"),
    ("store_bytes_written", "store_written_bytes", "bytes written to the store by compaction"),
    ("records_appended", "records_appended", "records appended to the log"),
    ("syncs", "syncs", "fdatasync calls of the log"),
    ("listener_errors", "listener_errors", "exceptions raised by on_commit listeners"),
    ("stalls", "write_stalls", "writes that waited in a write stall"),
    ("stall_ms", "write_stall_milliseconds", "milliseconds writers spent in write stalls"),
)


def register(db: Engine, registry: Any = None) -> None:
    """Export ``db``'s metrics through ``registry`` (default:
    ``prometheus_client.REGISTRY``) and start timing its calls.

    Registering an engine twice changes nothing. A subclass's override of a
    timed method is wrapped the same way.

    :raises ImportError: prometheus_client is not installed (the ``metrics`` extra).
    :raises EngineClosedError: ``db`` is closed.
    :raises ValueError: ``db`` is registered with another registry.
    """
    core = _prometheus()
    if registry is None:
        registry = core.REGISTRY
    db.stats()  # raises EngineClosedError on a closed engine
    with _lock:
        reg = _registrations.get(db)
        if reg is not None:
            if reg.registry is not registry:
                raise ValueError(f"{db!r} is already registered with another registry")
            return
        reg = _Registration(db, registry)
        entry = _collectors.get(id(registry))
        if entry is None:
            entry = (registry, EngineCollector())
            registry.register(entry[1])
            _collectors[id(registry)] = entry
        entry[1].add(db, reg)
        own = vars(db)
        for name in TIMED_CALLS:
            reg.previous[name] = own.get(name)
            setattr(db, name, _timed(getattr(db, name), reg.ops[name]))
        _registrations[db] = reg


def unregister(db: Engine) -> None:
    """Stop exporting ``db``'s metrics and bind its fast calls back.

    Unregistering an engine that is not registered changes nothing.
    """
    with _lock:
        reg = _registrations.pop(db, None)
        if reg is None:
            return
        for name, previous in reg.previous.items():
            if previous is None:
                vars(db).pop(name, None)  # back to the class's method
            else:
                setattr(db, name, previous)
        registry, collector = _collectors[id(reg.registry)]
        if collector.remove(db):
            registry.unregister(collector)
            del _collectors[id(reg.registry)]


def registered(db: Engine) -> bool:
    """Whether ``db`` is registered."""
    return db in _registrations
