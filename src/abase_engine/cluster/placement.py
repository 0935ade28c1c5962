"""Where keys live: key -> partition, key -> digest-tree leaf, replica order.

A cluster is ``P`` partitions x ``N`` replicas. A key belongs to partition
``xxh64(key, seed=PARTITION_SEED) mod P``; every replica of that partition
holds it (one engine per replica, so the engine's per-namespace digests are
per-partition digests). The seed differs from the digest tree's (seed 0), so
the partition and the leaf of a key are independent.

Thread-safety: pure functions.
"""

from __future__ import annotations

from typing import List, Tuple

import xxhash

__all__ = ["PARTITION_SEED", "TREE_DEPTH", "FANOUT", "partition_of", "leaf_path", "leaf_of", "replica_order"]

#: Seed of the key -> partition hash.
PARTITION_SEED = 0x5EED
#: Depth of the engines' digest tree below its root, and its fan-out.
TREE_DEPTH, FANOUT = 3, 16


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key``: xxh64(key, PARTITION_SEED) mod ``partitions``.

    >>> partition_of(b"user:1", 1)
    0

    Runtime complexity: O(len(key)).
    """
    return xxhash.xxh64_intdigest(bytes(key), seed=PARTITION_SEED) % partitions


def leaf_path(key: bytes) -> Tuple[int, int, int]:
    """The digest-tree leaf holding ``key``: the top three nibbles of xxh64(key)
    (the engine's :meth:`~abase_engine.Engine.digest` tree)."""
    h = xxhash.xxh64_intdigest(bytes(key))
    return (h >> 60) & 15, (h >> 56) & 15, (h >> 52) & 15


def leaf_of(key: bytes) -> int:
    """The leaf of ``key`` as one number, 0..4095."""
    return xxhash.xxh64_intdigest(bytes(key)) >> 52


def replica_order(first: int, replicas: int) -> List[int]:
    """Replica indexes ``first, first+1, ...`` round the ring of ``replicas``.

    >>> replica_order(2, 3)
    [2, 0, 1]
    """
    return [(first + j) % replicas for j in range(replicas)]
