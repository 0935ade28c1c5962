"""A local, multi-node Ray cluster on one machine, on the loopback interface.

For tests, the example and the benchmark: :func:`start_local_ray` starts a
head node plus ``nodes - 1`` simulated nodes (``ray.cluster_utils.Cluster``),
each a raylet of its own, so that placement groups with a strict spread, and
the loss of a whole node, can be exercised on one machine. Every Ray
process is told to use 127.0.0.1 (the environment variable
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray pick the loopback address
instead of the machine's network address), so no traffic leaves the machine.

Not for production: a real deployment joins an existing Ray cluster with
``ray.init(address=...)``.

Thread-safety: not safe; one thread starts and stops a LocalRay.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List

__all__ = ["LocalRay", "start_local_ray"]

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    os.environ[_LOOPBACK_ENV] = "0"  # inherited by every Ray process started from here
    if "ray" in sys.modules:  # ray already imported: its constant was read at import
        from ray._private import ray_constants
        ray_constants.ENABLE_RAY_CLUSTER = False


class LocalRay:
    """A running local Ray cluster; this process is connected to it as the driver.

    :param nodes: Ray nodes to start (the head included).
    :param cpus_per_node: logical CPUs each node offers.
    :param object_store_mb: object store size per node, MiB.
    :param log_to_driver: forward the actors' output to this process.
    """

    def __init__(self, nodes: int = 3, cpus_per_node: int = 1, object_store_mb: int = 80,
                 log_to_driver: bool = False) -> None:
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError("nodes must be an int >= 1")
        _loopback_only()
        import ray
        from ray.cluster_utils import Cluster as _RayTestCluster

        if ray.is_initialized():
            raise RuntimeError("this process is already connected to Ray; call ray.shutdown() first")
        self._node_args = {"num_cpus": cpus_per_node, "object_store_memory": object_store_mb << 20}
        self._cluster = _RayTestCluster(initialize_head=True,
                                        head_node_args=dict(self._node_args, include_dashboard=False))
        self.address: str = self._cluster.address
        try:
            for _ in range(nodes - 1):
                self._cluster.add_node(**self._node_args)
            ray.init(address=self.address, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=log_to_driver, configure_logging=False)
        except BaseException:
            self._cluster.shutdown()
            self._forget_address()
            raise

    def node_ids(self) -> List[str]:
        """Ray node ids of the nodes alive now (the head first)."""
        return [n.node_id for n in self._cluster.list_all_nodes()]

    def add_node(self) -> str:
        """Start one more node; returns its Ray node id."""
        return self._cluster.add_node(**self._node_args).node_id

    def remove_node(self, node_id: str) -> None:
        """Kill the node ``node_id`` and everything on it (not the head).

        :raises ValueError: no such node, or it is the head.
        """
        for node in self._cluster.list_all_nodes():
            if node.node_id == node_id:
                if node is self._cluster.head_node:
                    raise ValueError("the head node cannot be removed")
                self._cluster.remove_node(node)
                return
        raise ValueError(f"no node {node_id!r}")

    def _forget_address(self) -> None:
        # cluster_utils records the address as "the current cluster"; a later
        # plain ray.init() on this machine would try to join the dead one.
        try:
            from ray._private.utils import get_ray_address_file
            path = get_ray_address_file(None)
            with open(path) as f:
                if f.read().strip() == self.address:
                    os.unlink(path)
        except Exception:
            pass

    def shutdown(self) -> None:
        """Disconnect and stop every node. Safe to call twice."""
        import ray

        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            self._cluster.shutdown()
            self._forget_address()

    def __enter__(self) -> "LocalRay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def start_local_ray(nodes: int = 3, cpus_per_node: int = 1, object_store_mb: int = 80,
                    log_to_driver: bool = False) -> LocalRay:
    """Start a :class:`LocalRay` and connect this process to it."""
    return LocalRay(nodes, cpus_per_node, object_store_mb, log_to_driver)
