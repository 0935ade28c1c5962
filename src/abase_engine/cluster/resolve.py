"""The engine's resolution rules, applied to records collected from several replicas.

A read asks R replicas, an anti-entropy round compares two; both then need
what a single engine would show if it held every record they saw. The rules
are the engine's own (:mod:`abase_engine.merge`, ``compactor.fold_merge``):

* LWW namespaces: the record with the greatest ``(HLC, node id)`` wins, a
  DELETE included.
* CRDT namespaces whose deletes are removal deltas (``deletes_join``, every
  built-in type): every record is joined, DELETEs included (their value is
  what they removed), stamped with the newest timestamp: the same join the
  engine computes, whatever order and grouping the records came in.
* other merge operators: the newest DELETE is the *anchor*; every PUT or
  MERGE newer than it is joined with the operator's ``full_merge`` (a state
  is its own delta), stamped with the newest of their timestamps.

Thread-safety: pure functions (operators are stateless or immutable).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..merge import MergeOperator
from ..record import Change, Op

__all__ = ["resolve", "diff_records", "same_record", "plain"]


def plain(c: Change) -> Change:
    """``c`` without its feed cursor (a local position that never travels)."""
    return c if c.cursor is None else c._replace(cursor=None)


def resolve(operator: Optional[MergeOperator], records: Iterable[Optional[Change]]) -> Optional[Change]:
    """The visible record of one key among records collected from replicas (None: absent).

    :param operator: the namespace's operator; None for LWW.
    :param records: records of *one* key, any order, duplicates and None allowed.
    :return: LWW: the greatest record. CRDT: one MERGE record holding the
        joined state, or the anchor DELETE when nothing newer survives it.

    >>> from abase_engine import Timestamp
    >>> a = Change("", b"k", Op.PUT, b"a", Timestamp(5, 0, 1))
    >>> d = Change("", b"k", Op.DELETE, None, Timestamp(6, 0, 2))
    >>> resolve(None, [a, None, d]).op
    <Op.DELETE: 2>

    Runtime complexity: O(k log k) for k records plus the joins.
    """
    recs = [r for r in records if r is not None]
    if not recs:
        return None
    values: List[bytes]
    if operator is None:
        return max(recs, key=lambda r: r.timestamp)
    if operator.deletes_join:
        recs.sort(key=lambda r: r.timestamp)
        values: List[bytes] = []
        for r in recs:
            v = operator.delete_operand(r.value, r.timestamp) if r.op == Op.DELETE else r.value
            if v not in values:  # joins are idempotent: skip repeats, keep the result the same
                values.append(v)
        state = values[0] if len(values) == 1 else operator.full_merge(None, values)
        return Change(recs[-1].namespace, recs[-1].key, Op.MERGE, state, recs[-1].timestamp)
    anchor = max((r for r in recs if r.op == Op.DELETE), key=lambda r: r.timestamp, default=None)
    live = sorted((r for r in recs if r.op != Op.DELETE and (anchor is None or r.timestamp > anchor.timestamp)),
                  key=lambda r: r.timestamp)
    if not live:
        return anchor
    values = []
    for r in live:
        if not values or r.value != values[-1]:
            values.append(r.value)
    state = values[0] if len(values) == 1 else operator.full_merge(None, values)
    return Change(live[-1].namespace, live[-1].key, Op.MERGE, state, live[-1].timestamp)


def same_record(operator: Optional[MergeOperator], x: Optional[Change], y: Optional[Change]) -> bool:
    """Whether two replicas' newest records of a key agree.

    A CRDT state record is stamped with its newest operand's timestamp, and a
    checkpoint may stamp equal states differently, so for CRDT states only the
    value counts; LWW records and deletes must be identical.
    """
    if x is None or y is None:
        return x is y
    if operator is not None and (x.op != Op.DELETE or operator.deletes_join):
        return x.op == y.op and x.value == y.value
    return x.op == y.op and x.timestamp == y.timestamp and x.value == y.value


def diff_records(operator: Optional[MergeOperator], ra: Sequence[Change], rb: Sequence[Change]
                 ) -> Tuple[List[Change], List[Change]]:
    """(records side a lacks, records side b lacks) between two replicas' records of the same keys.

    The inputs are what :meth:`~abase_engine.Engine.records` returns: per key
    its winning LWW record, or for a CRDT key its newest DELETE (if any) and
    then its state. LWW: the side with the older (or no) record gets the
    newer. CRDT: when the two differ, each side gets all of the other's
    records for the key (a join is idempotent, so extra records are harmless).

    Runtime complexity: O(len(ra) + len(rb)).
    """
    ma: Dict[Tuple[str, bytes], List[Change]] = {}
    mb: Dict[Tuple[str, bytes], List[Change]] = {}
    for m, recs in ((ma, ra), (mb, rb)):
        for r in recs:
            m.setdefault((r.namespace, r.key), []).append(r)
    to_a: List[Change] = []
    to_b: List[Change] = []
    for k in ma.keys() | mb.keys():
        xs, ys = ma.get(k, []), mb.get(k, [])
        x, y = (xs[-1] if xs else None), (ys[-1] if ys else None)
        if len(xs) == len(ys) and all(same_record(operator, p, q) for p, q in zip(xs, ys)):
            continue
        if operator is None:
            if y is None or (x is not None and x.timestamp > y.timestamp):
                to_b.append(plain(x))
            elif x is None or y.timestamp > x.timestamp:
                to_a.append(plain(y))
            # equal timestamps, different records: impossible for unique (HLC, node id)
        else:
            to_b.extend(plain(r) for r in xs)
            to_a.extend(plain(r) for r in ys)
    return to_a, to_b
