"""The cluster on Ray: replica actors, a registry actor, the Ray transport, Cluster and Client.

Layout. A cluster named ``name`` is P partitions x N replicas. Replica ``i``
of partition ``p`` is the named actor ``abase/<name>/p<p>/r<i>`` (Ray
namespace :data:`RAY_NAMESPACE`); it serves a
:class:`~abase_engine.cluster.replica.ReplicaService` opened on
``<root>/p<pppp>/r<i>`` and is restarted by Ray after a crash
(``max_restarts=-1``), reopening the same directory. The N replicas of a
partition sit in one placement group, ``abase/<name>/p<p>``, with one
bundle per replica: ``STRICT_SPREAD`` (distinct Ray nodes) when the
cluster has at least N alive nodes, else ``SPREAD`` with a
:class:`ClusterWarning`. The registry actor ``abase/<name>/registry``,
pinned to the node that started the cluster, holds the configuration and
allocates node ids (:class:`~abase_engine.cluster.ids.IdAllocator` on
``<root>/ids``) for replicas and clients. ``<root>/CLUSTER.json`` records
P, N and the namespaces' operators; a restart with another layout is
refused (rebalancing is not built).

Each replica actor runs a maintenance thread: every ``hint_interval`` s it
replays the hints it holds (:func:`~abase_engine.cluster.repair.deliver_hints`),
every ``anti_entropy_interval`` s it syncs with the next replica of its
partition (:func:`~abase_engine.cluster.repair.sync_pair`), and hourly it
forgets old CRDT request ids.

Thread-safety: :class:`Cluster` methods and :class:`Client` calls are safe
from several threads; administrative calls (kill, revive, shutdown) should
not race each other.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import warnings
from concurrent.futures import Future
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ray
from ray.exceptions import ActorDiedError, RayError
from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from ..errors import LockedError
from ..merge import MergeOperator
from .coordinator import Coordinator
from .errors import ClusterConfigError, ClusterError, ClusterUnavailableError, ReplicaUnavailableError
from .ids import IdAllocator
from .repair import anti_entropy as _anti_entropy, deliver_hints, new_stats, sync_pair
from .replica import ReplicaService, check_namespaces, replica_dir
from .transport import ReplicaRef, Transport, failed

__all__ = ["Cluster", "Client", "RayTransport", "ClusterWarning", "RAY_NAMESPACE", "CLUSTER_DEFAULTS"]

log = logging.getLogger(__name__)

#: The Ray namespace every cluster's named actors live in.
RAY_NAMESPACE = "abase_engine"

#: Cluster settings of :meth:`Cluster.start` and their defaults (units in the comments).
CLUSTER_DEFAULTS: Dict[str, Any] = {
    "partitions": 4,                 # P
    "replicas": 3,                   # N
    "durability": "process",         # of every replica engine
    "actor_cpus": 0.01,              # CPU each replica actor reserves (fractional: P x N fit on 2 cores)
    "hint_interval": 0.2,            # s between hint replays of a replica
    "anti_entropy_interval": 30.0,   # s between anti-entropy rounds of a replica with its successor; 0: off
    "repair_timeout": 30.0,          # s a repair call (hint replay, anti-entropy) may take
    "request_ttl_ms": 3600 * 1000,   # ms a CRDT request id is remembered for retries
    "placement_timeout": 60.0,       # s to wait for the placement groups
    "detached": False,               # outlive the driver that started the cluster
}


class ClusterWarning(UserWarning):
    """The cluster runs, but weaker than asked (e.g. replicas share Ray nodes)."""


def _actor_name(name: str, p: int, i: int) -> str:
    return f"abase/{name}/p{p}/r{i}"


def _registry_name(name: str) -> str:
    return f"abase/{name}/registry"


def _pg_name(name: str, p: int) -> str:
    return f"abase/{name}/p{p}"


def _require_ray() -> None:
    if not ray.is_initialized():
        raise ClusterUnavailableError(
            "Ray is not initialised: call ray.init() (or ray.init(address=...) to join a running Ray cluster) "
            "before starting or connecting to an abase cluster")


# -- actors --------------------------------------------------------------------------

class _Registry:
    """Holds a cluster's configuration and allocates node ids. One per cluster."""

    def __init__(self, config: Dict[str, Any]) -> None:
        self._config = config
        self._ids = IdAllocator(os.path.join(config["root"], "ids"))

    def config(self) -> Dict[str, Any]:
        return self._config

    def allocate(self, n: int = 1) -> int:
        return self._ids.allocate(n)


class _ReplicaActor:
    """One replica: a ReplicaService served to the transport, plus a maintenance thread."""

    def __init__(self, config: Dict[str, Any], partition: int, index: int) -> None:
        self._config = config
        self._p, self._i = partition, index
        registry = ray.get_actor(_registry_name(config["name"]), namespace=RAY_NAMESPACE)
        directory = replica_dir(config["root"], partition, index)
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._svc = ReplicaService(
                    directory, partition, index, config["namespaces"],
                    lambda: ray.get(registry.allocate.remote()), config["durability"], config["engine_options"],
                    config["request_ttl_ms"])
                break
            except LockedError:
                # the previous incarnation's process may not have exited yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._transport = RayTransport(config["name"])
        self._delay = 0.0
        self._gate = threading.Event()
        self._gate.set()
        self._stop = threading.Event()
        self._maint_stats = {"hints_delivered": 0, "anti_entropy_rounds": 0, "maintenance_errors": 0,
                             "maintenance_rounds": 0}
        self._maint_cond = threading.Condition()
        self._thread = threading.Thread(target=self._maintain, name="abase-replica-maintenance", daemon=True)
        self._thread.start()

    # the protocol entry point
    @ray.method(concurrency_group="io")
    def call(self, method: str, args: Tuple[Any, ...]) -> Tuple[bool, Any]:
        if not self._gate.is_set():
            self._gate.wait(600.0)  # test hook: a blocked replica (released by control("release"))
        if self._delay:
            time.sleep(self._delay)  # test hook: a slow replica
        try:
            return True, self._svc.handle(method, args)
        except Exception as exc:  # the replica's refusal travels as a value, not as a task failure
            return False, exc

    @ray.method(concurrency_group="control")
    def control(self, what: str, *args: Any) -> Any:
        if what == "info":
            info = self._svc.info()
            info["node"] = ray.get_runtime_context().get_node_id()
            info["pid"] = os.getpid()
            info["maintenance"] = dict(self._maint_stats)
            return info
        if what == "delay":
            self._delay = float(args[0])
            return None
        if what == "block":
            self._gate.clear()
            return None
        if what == "release":
            self._gate.set()
            return None
        if what == "deliver_hints":
            return deliver_hints(self._svc, self._transport, self._config["repair_timeout"])
        if what == "wait":
            # wait("anti_entropy_rounds" | "maintenance_rounds", n, timeout): until the counter reaches n;
            # wait("no_hints", 0, timeout): until this replica holds no hint. Returns whether it happened.
            key, n, timeout = args
            with self._maint_cond:
                if key == "no_hints":
                    return self._maint_cond.wait_for(lambda: not self._svc.hint_targets(), timeout)
                return self._maint_cond.wait_for(lambda: self._maint_stats[key] >= n, timeout)
        raise ValueError(f"unknown control {what!r}")

    def _maintain(self) -> None:
        cfg = self._config
        interval = cfg["anti_entropy_interval"]
        next_ae = time.monotonic() + (interval * random.uniform(0.5, 1.0) if interval else float("inf"))
        next_gc = time.monotonic() + 3600.0
        n = cfg["replicas"]
        while not self._stop.wait(cfg["hint_interval"]):
            if not self._gate.is_set():
                continue
            try:
                if self._svc.hint_targets():
                    out = deliver_hints(self._svc, self._transport, cfg["repair_timeout"])
                    self._maint_stats["hints_delivered"] += out["delivered"]
                now = time.monotonic()
                if n > 1 and now >= next_ae:
                    next_ae = now + interval
                    sync_pair(self._transport, self._p, self._i, (self._i + 1) % n, self._svc.namespaces,
                              cfg["repair_timeout"])
                    self._maint_stats["anti_entropy_rounds"] += 1
                if now >= next_gc:
                    next_gc = now + 3600.0
                    self._svc.collect_requests()
            except Exception as exc:  # a peer down, a timeout: try again next round
                self._maint_stats["maintenance_errors"] += 1
                log.info("replica p%d/r%d maintenance: %s", self._p, self._i, exc)
            with self._maint_cond:
                self._maint_stats["maintenance_rounds"] += 1
                self._maint_cond.notify_all()


_RemoteRegistry = ray.remote(_Registry)
_RemoteReplica = ray.remote(concurrency_groups={"io": 16, "control": 4})(_ReplicaActor)


# -- transport -------------------------------------------------------------------------

class RayTransport(Transport):
    """Calls replica actors of cluster ``name`` by their names.

    Handles are looked up once and dropped when the actor is found dead
    (a revived replica is a new actor under the same name).
    Thread-safety: safe.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._handles: Dict[Tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def _handle(self, ref: ReplicaRef) -> Any:
        key = (ref.partition, ref.index)
        with self._lock:
            h = self._handles.get(key)
        if h is None:
            h = ray.get_actor(_actor_name(self.name, ref.partition, ref.index), namespace=RAY_NAMESPACE)
            with self._lock:
                self._handles[key] = h
        return h

    def _forget(self, ref: ReplicaRef) -> None:
        with self._lock:
            self._handles.pop((ref.partition, ref.index), None)

    def call(self, ref: ReplicaRef, method: str, args: Sequence[Any]) -> "Future[Any]":
        try:
            obj = self._handle(ref).call.remote(method, tuple(args))
        except ValueError as exc:  # no actor of that name: down, never sent
            return failed(ReplicaUnavailableError(f"replica {ref} of cluster {self.name!r} not found: {exc}",
                                                  delivered=False))
        except Exception as exc:
            return failed(ReplicaUnavailableError(f"call {method} to replica {ref} failed: {exc}",
                                                  delivered=False))
        out: "Future[Any]" = Future()

        def done(f: "Future[Any]") -> None:
            try:
                ok, value = f.result()
            except ActorDiedError as exc:
                self._forget(ref)
                out.set_exception(ReplicaUnavailableError(f"replica {ref} died: {_first_line(exc)}"))
            except RayError as exc:
                out.set_exception(ReplicaUnavailableError(f"replica {ref} did not answer: {_first_line(exc)}"))
            except BaseException as exc:
                out.set_exception(ReplicaUnavailableError(f"call {method} to replica {ref} failed: {exc!r}"))
            else:
                if ok:
                    out.set_result(value)
                else:
                    out.set_exception(value)

        obj.future().add_done_callback(done)
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- cluster and client -----------------------------------------------------------------

class Cluster:
    """A handle on a running cluster (use :meth:`start` or :meth:`connect`).

    Keep the object that :meth:`start` returned for as long as the cluster
    should run: unless it was started ``detached``, Ray ends its actors
    when that object (which holds their handles) is gone, or when the
    process that started it exits.

    Thread-safety: safe.
    """

    def __init__(self, config: Dict[str, Any], registry: Any) -> None:
        self.config = config
        self.name: str = config["name"]
        self.root: str = config["root"]
        self.partitions: int = config["partitions"]
        self.replicas: int = config["replicas"]
        self.namespaces: Dict[str, Optional[MergeOperator]] = config["namespaces"]
        self._registry = registry
        self._transport = RayTransport(self.name)
        #: The handles of the actors this process started: Ray ends an actor
        #: (not detached) once no handle of it is left, so they are kept here.
        self._owned: Dict[Tuple[int, int], Any] = {}

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def start(cls, root_dir: str, *, name: str = "default",
              namespaces: Optional[Dict[str, Optional[MergeOperator]]] = None,
              engine_options: Optional[Dict[str, Any]] = None, **settings: Any) -> "Cluster":
        """Start a cluster on the Ray cluster this process is connected to.

        :param root_dir: where every replica's directory lives (a path all Ray
            nodes see: on one machine, any local path).
        :param name: the cluster's name (clients :meth:`connect` by it).
        :param namespaces: ``{name: MergeOperator or None}``.
        :param engine_options: passed to every replica engine's ``open``.
        :param settings: any of :data:`CLUSTER_DEFAULTS`.
        :raises ClusterUnavailableError: Ray is not initialised.
        :raises ClusterConfigError: a bad setting, a cluster of that name is
            running, or ``root_dir`` holds a cluster of another layout.
        :raises ClusterError: the replicas could not be placed or started in time.
        """
        _require_ray()
        unknown = set(settings) - set(CLUSTER_DEFAULTS)
        if unknown:
            raise ClusterConfigError(f"unknown cluster setting(s): {', '.join(sorted(unknown))}")
        cfg = dict(CLUSTER_DEFAULTS, **settings)
        for key in ("partitions", "replicas"):
            if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
                raise ClusterConfigError(f"{key} must be an int >= 1, got {cfg[key]!r}")
        if cfg["replicas"] > 255:
            raise ClusterConfigError("at most 255 replicas per partition")
        if not isinstance(name, str) or not name or "/" in name:
            raise ClusterConfigError(f"cluster names are non-empty str without '/', got {name!r}")
        nss = check_namespaces(namespaces)
        try:
            ray.get_actor(_registry_name(name), namespace=RAY_NAMESPACE)
        except ValueError:
            pass
        else:
            raise ClusterConfigError(f"a cluster named {name!r} is already running: connect to it or shut it down")
        root = os.path.abspath(os.fspath(root_dir))
        os.makedirs(root, exist_ok=True)
        _check_layout(root, cfg["partitions"], cfg["replicas"], nss)
        config = dict(cfg, name=name, root=root, namespaces=nss, engine_options=dict(engine_options or {}))
        lifetime = "detached" if cfg["detached"] else None
        here = ray.get_runtime_context().get_node_id()
        registry = _RemoteRegistry.options(
            name=_registry_name(name), namespace=RAY_NAMESPACE, num_cpus=0, max_restarts=-1, lifetime=lifetime,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote(config)
        ray.get(registry.config.remote())
        cluster = cls(config, registry)
        try:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            strategy = "STRICT_SPREAD"
            if len(alive) < cfg["replicas"]:
                strategy = "SPREAD"
                warnings.warn(
                    f"the Ray cluster has {len(alive)} alive node(s), fewer than N={cfg['replicas']}: replicas of "
                    f"a partition will share nodes (SPREAD instead of STRICT_SPREAD)", ClusterWarning, stacklevel=2)
            pgs = [placement_group([{"CPU": cfg["actor_cpus"]}] * cfg["replicas"], strategy=strategy,
                                   name=_pg_name(name, p), lifetime=lifetime) for p in range(cfg["partitions"])]
            try:
                ray.get([pg.ready() for pg in pgs], timeout=cfg["placement_timeout"])
            except ray.exceptions.GetTimeoutError:
                raise ClusterError(f"could not place {cfg['partitions']} x {cfg['replicas']} replicas "
                                   f"({strategy}) within {cfg['placement_timeout']} s") from None
            handles = [cluster._spawn(p, i, pg) for p, pg in enumerate(pgs) for i in range(cfg["replicas"])]
            try:  # surfaces a replica's start-up error (its __init__ raised)
                ray.get([h.control.remote("info") for h in handles], timeout=cfg["placement_timeout"])
            except RayError as exc:
                raise ClusterError(f"cluster {name!r}: a replica failed to start: {exc}") from None
            cluster.wait_ready(cfg["placement_timeout"])
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    def _spawn(self, p: int, i: int, pg: Any = None) -> Any:
        cfg = self.config
        pg = pg if pg is not None else get_placement_group(_pg_name(self.name, p))
        handle = _RemoteReplica.options(
            name=_actor_name(self.name, p, i), namespace=RAY_NAMESPACE, num_cpus=cfg["actor_cpus"],
            max_restarts=-1, max_task_retries=0, lifetime="detached" if cfg["detached"] else None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                 placement_group_bundle_index=i),
        ).remote(cfg, p, i)
        self._owned[(p, i)] = handle
        return handle

    @classmethod
    def connect(cls, name: str = "default") -> "Cluster":
        """A handle on the running cluster ``name``.

        :raises ClusterUnavailableError: Ray is not initialised or no such cluster runs.
        """
        _require_ray()
        try:
            registry = ray.get_actor(_registry_name(name), namespace=RAY_NAMESPACE)
            config = ray.get(registry.config.remote(), timeout=30)
        except (ValueError, RayError) as exc:
            raise ClusterUnavailableError(
                f"no abase cluster named {name!r} is running in Ray namespace {RAY_NAMESPACE!r} "
                f"(start one with Cluster.start): {_first_line(exc)}") from None
        return cls(config, registry)

    def client(self, **settings: Any) -> "Client":
        """A new :class:`Client` of this cluster (it takes a fresh node id)."""
        return Client(self, **settings)

    def allocate_node_id(self) -> int:
        """A node id never handed out before (from the registry).

        :raises ClusterUnavailableError: the registry does not answer.
        """
        try:
            return int(ray.get(self._registry.allocate.remote(), timeout=30))
        except RayError as exc:
            raise ClusterUnavailableError(f"cluster {self.name!r}: the registry does not answer "
                                          f"({_first_line(exc)}); was the cluster shut down?") from None

    # -- observation and repair --------------------------------------------------------------
    def _handle(self, p: int, i: int) -> Any:
        self._check_index(p, i)
        return ray.get_actor(_actor_name(self.name, p, i), namespace=RAY_NAMESPACE)

    def _check_index(self, p: int, i: int) -> None:
        if not (isinstance(p, int) and 0 <= p < self.partitions and isinstance(i, int) and 0 <= i < self.replicas):
            raise ValueError(f"no replica p{p}/r{i} in a cluster of {self.partitions} x {self.replicas}")

    def _control(self, p: int, i: int, what: str, *args: Any, timeout: float = 60.0) -> Any:
        return ray.get(self._handle(p, i).control.remote(what, *args), timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every replica answers a ping.

        :raises ClusterError: some replica did not answer within ``timeout`` s.
        """
        end = time.monotonic() + timeout
        for p in range(self.partitions):
            for i in range(self.replicas):
                while True:
                    try:
                        self._transport.call(ReplicaRef(p, i), "ping", ()).result(max(0.1, end - time.monotonic()))
                        break
                    except Exception as exc:
                        if time.monotonic() >= end:
                            raise ClusterError(f"replica p{p}/r{i} not ready after {timeout} s: {exc}") from None
                        time.sleep(0.1)

    def info(self, partition: Optional[int] = None) -> List[Dict[str, Any]]:
        """Each replica's identity, Ray node, counters, hints and digest roots
        (None for a replica that does not answer within 10 s)."""
        parts = range(self.partitions) if partition is None else [partition]
        refs = [(p, i) for p in parts for i in range(self.replicas)]
        out = []
        for p, i in refs:
            try:
                out.append(self._control(p, i, "info", timeout=10.0))
            except Exception:
                out.append(None)
        return out

    def node_of(self, partition: int, index: int) -> str:
        """The Ray node id replica ``index`` of ``partition`` runs on."""
        return self._control(partition, index, "info")["node"]

    def digests(self, partition: int, namespace: str = "") -> List[List[List[int]]]:
        """Every replica's level-1 and level-2 digest hashes of ``namespace``
        (equal lists: equal visible state).

        :raises ReplicaUnavailableError: a replica did not answer.
        """
        paths = [()] + [(a,) for a in range(16)]
        futs = [self._transport.call(ReplicaRef(partition, i), "digest", (namespace, paths))
                for i in range(self.replicas)]
        return [f.result(60.0) for f in futs]

    def anti_entropy(self, partitions: Optional[Sequence[int]] = None, timeout: float = 60.0) -> Dict[str, int]:
        """One anti-entropy sweep over every partition (all replica pairs), run
        from this process. Returns the counters of
        :func:`~abase_engine.cluster.repair.new_stats`."""
        stats = new_stats()
        for p in (range(self.partitions) if partitions is None else partitions):
            _anti_entropy(self._transport, p, range(self.replicas), self.namespaces, timeout, stats)
        return stats

    def deliver_hints(self, timeout: float = 120.0) -> Dict[str, int]:
        """Ask every replica to replay the hints it holds now (they also do it on a timer)."""
        total = {"delivered": 0, "records": 0, "failed_targets": 0}
        for p in range(self.partitions):
            for i in range(self.replicas):
                try:
                    out = self._control(p, i, "deliver_hints", timeout=timeout)
                except Exception:
                    continue
                for k, v in out.items():
                    total[k] += v
        return total

    def wait_maintenance(self, partition: int, index: int, what: str, n: int = 0, timeout: float = 60.0) -> bool:
        """Wait until a replica's maintenance thread reached a state: ``what`` is
        ``"anti_entropy_rounds"`` or ``"maintenance_rounds"`` (its counter
        reaches ``n``; see ``info()["maintenance"]``) or ``"no_hints"`` (it
        holds no hint). Returns whether that happened within ``timeout`` s."""
        if what not in ("anti_entropy_rounds", "maintenance_rounds", "no_hints"):
            raise ValueError(f"cannot wait for {what!r}")
        return bool(self._control(partition, index, "wait", what, n, timeout, timeout=timeout + 30.0))

    def pending_hints(self) -> int:
        """Hints held across the cluster (replicas that answer)."""
        n = 0
        for info in self.info():
            if info is not None:
                n += sum(c for c, _b in info["hints"].values())
        return n

    # -- failures (administration and test hooks) -------------------------------------------
    def kill_replica(self, partition: int, index: int, restart: bool = True) -> None:
        """Kill a replica's process (``ray.kill``). With ``restart`` Ray starts
        it again on its directory; without, it stays down until :meth:`revive_replica`."""
        ray.kill(self._handle(partition, index), no_restart=not restart)

    def revive_replica(self, partition: int, index: int) -> None:
        """Start again a replica killed without restart (same directory, same bundle)."""
        self._check_index(partition, index)
        try:
            h = ray.get_actor(_actor_name(self.name, partition, index), namespace=RAY_NAMESPACE)
        except ValueError:
            h = None
        if h is not None:
            try:
                ray.get(h.control.remote("info"), timeout=5.0)
                return  # alive
            except RayError:
                pass
        self._spawn(partition, index)

    def debug_set_delay(self, partition: int, index: int, seconds: float) -> None:
        """Test hook: the replica sleeps ``seconds`` before serving each call."""
        self._control(partition, index, "delay", seconds)

    def debug_block(self, partition: int, index: int) -> None:
        """Test hook: the replica holds every call until :meth:`debug_release`."""
        self._control(partition, index, "block")

    def debug_release(self, partition: int, index: int) -> None:
        """Test hook: end :meth:`debug_block`."""
        self._control(partition, index, "release")

    def shutdown(self) -> None:
        """Kill every replica actor and the registry, remove the placement
        groups. The data stays in ``root``; ``start`` on it again resumes."""
        for p in range(self.partitions):
            for i in range(self.replicas):
                try:
                    ray.kill(ray.get_actor(_actor_name(self.name, p, i), namespace=RAY_NAMESPACE), no_restart=True)
                except Exception:
                    pass
            try:
                remove_placement_group(get_placement_group(_pg_name(self.name, p)))
            except Exception:
                pass
        try:
            ray.kill(self._registry, no_restart=True)
        except Exception:
            pass


class Client(Coordinator):
    """A leaderless client of a Ray cluster: a :class:`~abase_engine.cluster.coordinator.Coordinator`
    over :class:`RayTransport`, with a node id of its own from the registry.

    :param cluster: a :class:`Cluster` handle.
    :param settings: any of :data:`~abase_engine.cluster.coordinator.DEFAULTS`
        (``background_threads`` defaults to 2 here).
    :raises ClusterUnavailableError: the registry does not answer.
    :raises ClusterConfigError: a bad setting.
    """

    def __init__(self, cluster: Cluster, **settings: Any) -> None:
        settings.setdefault("background_threads", 2)
        self.cluster = cluster
        super().__init__(RayTransport(cluster.name), partitions=cluster.partitions, replicas=cluster.replicas,
                         namespaces=cluster.namespaces, node_id=cluster.allocate_node_id(), **settings)


def _check_layout(root: str, partitions: int, replicas: int, namespaces: Dict[str, Optional[MergeOperator]]) -> None:
    """Record the layout in ``root/CLUSTER.json`` the first time; refuse another one later."""
    path = os.path.join(root, "CLUSTER.json")
    want = {"partitions": partitions, "replicas": replicas,
            "namespaces": {k: (v.name if v is not None else "abase.LWW.v1") for k, v in sorted(namespaces.items())}}
    try:
        with open(path, "r", encoding="utf-8") as f:
            have = json.load(f)
    except FileNotFoundError:
        _write_json(path, want)
        return
    if have["partitions"] != partitions or have["replicas"] != replicas:
        raise ClusterConfigError(
            f"{root} holds a cluster of {have['partitions']} x {have['replicas']}, not {partitions} x {replicas}: "
            f"changing the layout needs rebalancing, which is not built")
    for k, op in want["namespaces"].items():
        if k in have["namespaces"] and have["namespaces"][k] != op:
            raise ClusterConfigError(f"namespace {k!r} in {root} uses {have['namespaces'][k]}, not {op}")
    if set(want["namespaces"]) - set(have["namespaces"]):  # namespaces added: record them
        have["namespaces"].update(want["namespaces"])
        _write_json(path, have)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())  # durability point: the layout's bytes
    os.replace(tmp, path)
