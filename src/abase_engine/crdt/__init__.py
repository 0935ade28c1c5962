"""Delta-state CRDTs as merge operators.

Each class here is a :class:`~abase_engine.merge.MergeOperator` whose states
form a join-semilattice; an operand is a *delta*: a small state of the same
lattice that describes one update, and a key delete is a *removal delta*.
Hence, with ``join`` = ``partial_merge``::

    join(a, b) == join(b, a)                       (commutative)
    join(join(a, b), c) == join(a, join(b, c))     (associative)
    join(a, a) == a                                (idempotent)
    full_merge(base, ops) == join(base or bottom, *ops)

so replicas that exchange states, deltas and deletes in any order, any
number of times, with compaction folding any subset of them at any moment,
converge to the same value *and the same bytes* (encoding is canonical).

Use one per namespace, e.g. ``db.namespace("hits", merge=crdt.PNCounter())``,
and write with operations: ``db.merge(key, crdt.PNCounter.increment(5))``.
Operation constructors are static methods returning an :class:`Operation`;
:meth:`~CrdtType.make_operand` turns it into operand bytes, reading the key's
current state when :meth:`~CrdtType.needs_state` says so.

==========  ===============================  ===========  =====================
type        operations                       needs_state  value (None: absent)
==========  ===============================  ===========  =====================
LWWRegister set(v)                           no           bytes
MVRegister  set(v)                           yes          frozenset of bytes
GCounter    increment(n)                     yes          int
PNCounter   increment(n), decrement(n)       yes          int
GSet        add(x)                           no           frozenset of bytes
ORSet       add(x), remove(x)                yes          frozenset of bytes
ORMap(F)    update(field, F-op), remove(f)   yes          {field: F value}
SortedSet   add(m, score), remove(m)         yes          [(m, score)] sorted
EWFlag      enable(), disable()              yes          True
==========  ===============================  ===========  =====================

Deletes (``ns.delete(key)``): every delete is a join that stays exact when
it arrives late, after the operands around it were folded together. It is
written as a DELETE record whose value is what it removes:

* **dot-based types** (ORSet, ORMap, MVRegister, EWFlag): an observed-remove.
  The value is the writer's causal context for the key; the delete removes
  those dots and no more, so an add or write it did not observe survives
  (add-wins, as in Riak DT maps). ORMap fields follow their own rule.
* **counters** (GCounter, PNCounter): an observed reset. The value holds the
  totals the writer had seen, as totals and as *removed* totals; the value
  is ``Σ(P − Pr) − Σ(N − Nr)``, so increments concurrent with the delete, or
  after it, survive.
* **timestamp-ordered types** (LWWRegister, GSet, SortedSet): a watermark.
  A delete at ``T`` removes every element (write, member, add) older than
  ``T``; the value is a state holding the watermark ``T`` (SortedSet also
  carries its writer's context). A re-add after the delete, or a
  concurrent one newer than ``T``, survives.

A state in which nothing is visible reads as absent (``to_value`` gives
``None``; ``get`` returns its default; scans skip the key). Such states are
kept in the store (they are what a late operand is joined with), so a
deleted key costs its context, totals or watermark for good.
:meth:`~CrdtType.delete_operand` checks the value of a DELETE received
through ``apply``: one without the context or totals its type needs is
refused with ``MergeOperandError``.

Encoding grammar (``u`` = unsigned LEB128 varint, minimal, at most 64 bits;
``bytes`` = ``u(len) raw``; entries sorted, so equal states give equal
bytes)::

    state      := VERSION=0x02 sig body
    sig        := tag u8 | 0x07 sig               (ORMap: 0x07 then field sig)
    tags       := LWWRegister 1, MVRegister 2, GCounter 3, PNCounter 4, GSet 5,
                  ORSet 6, ORMap 7, SortedSet 8, EWFlag 9
    ts         := u(hlc) u(node)
    wm         := 0x00 | 0x01 ts                  (the newest key delete seen)

    LWWRegister: wm (0x00 | 0x01 ts bytes(value))           ts > wm
    GCounter:    u(n) { u(nodeΔ) u(P>0) u(Pr<=P) }*n
    PNCounter:   u(n) { u(nodeΔ) u(P) u(N) u(Pr<=P) u(Nr<=N) }*n   (P, N not both 0)
    GSet:        wm u(n) { bytes(member) ts }*n                     ts > wm
    MVRegister:  ctx u(n) { dot bytes(value) }*n
    ORSet:       ctx u(n) { bytes(member) u(k>0) dot*k }*n
    EWFlag:      ctx u(k) dot*k
    SortedSet:   wm ctx u(n) { bytes(member) u(k>0) { dot f64be(score) }*k }*n   dots > wm
    ORMap(F):    ctx u(n) { bytes(field) fstore }*n

``nodeΔ`` is the first node id as is, then (node - previous node - 1);
``ctx`` and ``dot`` are defined in ``_causal``; each type's docstring gives
its body. Decoding anything else (including a non-canonical form) raises
:class:`~abase_engine.errors.MergeOperandError`. The C core implements the
same encodings byte for byte for the engine's fast paths.

Modules: ``_codec`` (encoding primitives), ``_causal`` (dots, contexts, dot
stores), ``_base`` (the shared machinery and the type protocol ORMap uses),
``counters``, ``registers``, ``sets``, ``maps``.

Thread-safety: operations are values; an operator's only state is a one-slot
memo of the last decoded state, never mutated and replaced atomically, so an
operator is safe to share between threads.
"""

from __future__ import annotations

from typing import Optional

from ._base import CrdtType, Operation
from ._codec import FORMAT_VERSION
from .counters import GCounter, PNCounter
from .maps import ORMap
from .registers import LWWRegister, MVRegister
from .sets import EWFlag, GSet, ORSet, SortedSet

#: The classes the C core implements too (csrc/crdt_*.c), by their type tag:
#: exactly these classes, not subclasses (a subclass may change behaviour).
C_TYPES = {cls: cls.TAG for cls in (LWWRegister, MVRegister, GCounter, PNCounter, GSet, ORSet, SortedSet, EWFlag)}


def c_tag(operator: object) -> Optional[int]:
    """The C type tag of ``operator`` if the C core implements its exact
    class (the engine's fast paths and C folds use it), else None."""
    return C_TYPES.get(type(operator))


__all__ = [
    "FORMAT_VERSION",
    "C_TYPES",
    "c_tag",
    "Operation",
    "CrdtType",
    "LWWRegister",
    "MVRegister",
    "GCounter",
    "PNCounter",
    "GSet",
    "ORSet",
    "ORMap",
    "SortedSet",
    "EWFlag",
]
