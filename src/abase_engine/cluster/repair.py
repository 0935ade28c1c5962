"""Background repair: hint replay and digest-based anti-entropy, over any transport.

* :func:`deliver_hints` runs on a replica that holds hints: it sends each
  target the records it missed, in chunks, and forgets a chunk once the
  target applied it. A target that does not answer keeps its hints for the
  next round.
* :func:`sync_pair` makes two replicas of a partition equal: per namespace,
  one exchange per digest-tree level sends the child hashes of the nodes
  still differing (:meth:`~abase_engine.Engine.digest`), then the records of
  the differing leaves (:meth:`~abase_engine.Engine.records`) are swapped
  and each side applies what it lacks. Its cost grows with the number of
  differing leaves, not with the number of keys: equal replicas cost one
  exchange per namespace.
* :func:`anti_entropy` runs :func:`sync_pair` over every pair of a
  partition's replicas in lexicographic order, which converges all the
  replicas that answer in one sweep: replica 0 holds everything after its
  last pair, replica N-1 after its first, replica k after its pair with N-1.

Who runs them: the Ray replica actors, each on a timer (hints every
``hint_interval``, anti-entropy with the next replica of the ring every
``anti_entropy_interval``); the simulated group, when a test calls
``up``/``settle``/``anti_entropy``; a Ray ``Cluster.anti_entropy()`` sweep.

Thread-safety: the functions hold no state; concurrent runs on the same
pair are harmless (``apply`` is idempotent) but wasteful.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import TimeoutError as _FutureTimeout
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..merge import MergeOperator
from .errors import ReplicaUnavailableError
from .placement import FANOUT, TREE_DEPTH
from .resolve import diff_records
from .transport import ReplicaRef, Transport
from .wire import decode_changes, encode_changes, wire_size

__all__ = ["deliver_hints", "sync_pair", "anti_entropy", "new_stats"]

log = logging.getLogger(__name__)

_HASH_BYTES = 8
#: Leaves whose records one exchange carries.
LEAVES_PER_CALL = 256
#: Bytes of records one apply call carries.
APPLY_CHUNK = 4 << 20


def new_stats() -> Dict[str, int]:
    """Counters of an anti-entropy run: ``rounds`` (exchanges), ``bytes`` (on
    the wire, approximate), ``keys_repaired`` (records that changed something
    when applied), ``leaves`` (differing leaves compared), ``pairs_skipped``
    (a replica did not answer)."""
    return {"rounds": 0, "bytes": 0, "keys_repaired": 0, "leaves": 0, "pairs_skipped": 0}


def deliver_hints(service: Any, transport: Transport, timeout: float, max_bytes: int = 1 << 20) -> Dict[str, int]:
    """Replay the hints ``service`` (a :class:`~abase_engine.cluster.replica.ReplicaService`)
    holds to their targets, through ``transport``.

    :return: ``{"delivered": hints, "records": records applied, "failed_targets": n}``.
    Never raises for an unreachable target (it stays hinted); another delivery
    already running on ``service`` makes this one return at once.
    """
    out = {"delivered": 0, "records": 0, "failed_targets": 0}
    lock = service.hints.delivery_lock
    if not lock.acquire(blocking=False):
        return out
    try:
        for target in sorted(service.hints.pending()):
            while True:
                keys, blob = service.hints.take(target, max_bytes)
                if not keys:
                    break
                ref = ReplicaRef(service.partition, target)
                try:
                    out["records"] += transport.call(ref, "apply", (blob,)).result(timeout)
                except ReplicaUnavailableError:
                    out["failed_targets"] += 1
                    break
                except Exception as exc:  # e.g. ClockSkewError: keep the hint, try later
                    log.warning("hint delivery from p%d/r%d to %s refused: %s", service.partition,
                                service.index, ref, exc)
                    out["failed_targets"] += 1
                    break
                service.hints.drop(target, keys)
                out["delivered"] += len(keys)
    finally:
        lock.release()
    return out


def _call(transport: Transport, ref: ReplicaRef, method: str, args: Sequence[Any], timeout: float) -> Any:
    return transport.call(ref, method, args).result(timeout)


def _both(transport: Transport, a: ReplicaRef, b: ReplicaRef, method: str, args: Sequence[Any],
          timeout: float) -> Tuple[Any, Any]:
    fa = transport.call(a, method, args)
    fb = transport.call(b, method, args)
    return fa.result(timeout), fb.result(timeout)


def _apply_chunked(transport: Transport, ref: ReplicaRef, recs: List[Any], timeout: float) -> int:
    n = 0
    chunk: List[Any] = []
    size = 0
    for r in recs + [None]:
        if r is not None:
            chunk.append(r)
            size += wire_size([r])
        if chunk and (r is None or size >= APPLY_CHUNK):
            n += _call(transport, ref, "apply", (encode_changes(chunk),), timeout)
            chunk, size = [], 0
    return n


def sync_pair(transport: Transport, partition: int, a: int, b: int,
              namespaces: Dict[str, Optional[MergeOperator]], timeout: float,
              stats: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """Make replicas ``a`` and ``b`` of ``partition`` hold the same records.

    :return: ``stats`` (or new counters, see :func:`new_stats`), updated.
    :raises ReplicaUnavailableError: one side stopped answering (the pair is
        left partly synced; the next run finishes it).
    :raises concurrent.futures.TimeoutError: a call took longer than ``timeout``.
    """
    stats = new_stats() if stats is None else stats
    ra_ref, rb_ref = ReplicaRef(partition, a), ReplicaRef(partition, b)
    for name, operator in namespaces.items():
        frontier: List[Tuple[int, ...]] = [()]
        for _depth in range(TREE_DEPTH):
            ha, hb = _both(transport, ra_ref, rb_ref, "digest", (name, frontier), timeout)
            stats["rounds"] += 1
            # a -> b: the paths and their child hashes; b -> a: a 16-bit mask per path
            stats["bytes"] += sum(len(p) + 1 + FANOUT * _HASH_BYTES + 2 for p in frontier)
            frontier = [p + (c,) for p, da, db in zip(frontier, ha, hb) for c in range(FANOUT) if da[c] != db[c]]
            if not frontier:
                break
        if not frontier:
            continue
        stats["leaves"] += len(frontier)
        # Fetch every differing leaf from both sides before applying anything:
        # a write invalidates the replica's leaf membership cache, and the
        # next records() call would pay a pass over the whole namespace.
        to_a: List[Any] = []
        to_b: List[Any] = []
        for start in range(0, len(frontier), LEAVES_PER_CALL):
            leaves = frontier[start:start + LEAVES_PER_CALL]
            blob_a, blob_b = _both(transport, ra_ref, rb_ref, "records", (name, leaves), timeout)
            stats["rounds"] += 1
            more_a, more_b = diff_records(operator, decode_changes(blob_a), decode_changes(blob_b))
            # a sends its leaf records; b answers with the ones a lacks
            stats["bytes"] += len(blob_a) + wire_size(more_a) + len(leaves) * (TREE_DEPTH + 1)
            to_a += more_a
            to_b += more_b
        if to_a:
            stats["keys_repaired"] += _apply_chunked(transport, ra_ref, to_a, timeout)
        if to_b:
            stats["keys_repaired"] += _apply_chunked(transport, rb_ref, to_b, timeout)
    return stats


def anti_entropy(transport: Transport, partition: int, replicas: Sequence[int],
                 namespaces: Dict[str, Optional[MergeOperator]], timeout: float,
                 stats: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """:func:`sync_pair` over every pair of ``replicas`` (indexes) of ``partition``.

    A pair with a replica that does not answer is skipped and counted in
    ``pairs_skipped``; the others still converge.
    """
    stats = new_stats() if stats is None else stats
    for a, b in itertools.combinations(sorted(replicas), 2):
        try:
            sync_pair(transport, partition, a, b, namespaces, timeout, stats)
        except (ReplicaUnavailableError, TimeoutError, _FutureTimeout) as exc:
            log.info("anti-entropy p%d r%d<->r%d skipped: %s", partition, a, b, exc)
            stats["pairs_skipped"] += 1
    return stats
