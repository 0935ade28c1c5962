"""ORMap: an observed-remove map whose fields are CRDTs of one fixed type."""

from __future__ import annotations

from typing import Any, Dict

from ._base import CrdtType, Operation
from ._causal import DotFunKind, DotMapKind, claim, ctx_of
from ._codec import as_bytes

__all__ = ["ORMap"]


class ORMap(CrdtType):
    """Observed-remove map whose fields are CRDTs of one fixed type ``F``.

    State: ``DotMap {field: F-store}`` plus one causal context shared by all
    fields. With ``F`` causal (MVRegister, ORSet, EWFlag, SortedSet, ORMap)
    the field's store lives in the map directly::

        update(f, op) = ({f: δs}, δc)  where (δs, δc) = F's delta of op on (store[f], ctx)
        remove(f)     = ({}, dots(store[f]))

    and a field exists while its store is not bottom (e.g. an ORSet field that
    becomes empty, or a disabled EWFlag field, disappears). A remove deletes
    what it observed; a concurrent update's new dots survive (for an ORSet
    field: the concurrent adds). Fields follow the field type's rule inside
    the map's shared context, recursively.

    With ``F`` not causal (counters, LWWRegister, GSet) each field is a
    ``DotFun {dot: F-state}`` and the field's value is the join of its
    surviving F-states::

        update(f, op) = ({f: {(n, h): V ⊔ δ}}, dots(store[f]) ∪ [p+1, h])

    where ``V`` is the field's observed value: the delta carries the whole
    field value (small for counters and registers), and an update concurrent
    with a remove keeps the field with the value its writer had observed.

    A key delete removes every field as observed (it carries the map's
    context); an update it did not observe survives it. ``name`` includes
    F's name, so reopening with another field type is a mismatch. Value:
    ``{field: F value}``, ``None`` when the map is empty.

    >>> from abase_engine import Timestamp
    >>> from abase_engine.crdt import PNCounter
    >>> m = ORMap(PNCounter()); st = None
    >>> ops = [ORMap.update(b"x", PNCounter.increment(2)), ORMap.update(b"y", PNCounter.increment(1)),
    ...        ORMap.remove(b"y"), ORMap.update(b"x", PNCounter.decrement(5))]
    >>> for i, op in enumerate(ops):
    ...     st = m.full_merge(st, [m.make_operand(op, st, Timestamp(i, 0, 1))])
    >>> m.to_value(st)
    {b'x': -3}

    Encoding (after the header, whose signature is ``0x07`` then F's):
    ``ctx u(n) { bytes(field) fstore }*n`` where ``fstore`` is F's store (F
    causal, non-empty) or ``u(k>0) { dot F-state-body }*k`` (F not causal).
    """

    TAG = 7
    causal = True
    OPS = {"update": True, "remove": True}

    def __init__(self, field_type: CrdtType):
        if not isinstance(field_type, CrdtType):
            raise TypeError(f"ORMap field_type must be a CRDT of abase_engine.crdt, not {type(field_type).__name__}")
        self.field_type = field_type
        self.name = f"abase.ORMap.v1[{field_type.name}]"
        F = field_type
        if F.causal:
            self.field_kind: Any = F.store_kind
        else:
            self.field_kind = DotFunKind(F.join_state, F.encode_state, F.decode_state, F.copy_state)
        self.store_kind = DotMapKind(self.field_kind)
        super().__init__()

    def signature(self) -> bytes:
        return bytes((self.TAG,)) + self.field_type.signature()

    def __repr__(self) -> str:
        return f"ORMap({self.field_type!r})"

    @staticmethod
    def update(field: bytes, op: Operation) -> Operation:
        """Apply the field type's operation ``op`` to ``field`` (creating it).

        Runtime complexity: O(|state|) to read; delta O(F's delta) for causal
        F, O(|field value|) otherwise.
        """
        if type(op) is not Operation:
            raise TypeError(f"ORMap.update needs an Operation, not {type(op).__name__}")
        return Operation(ORMap, "update", (as_bytes(field, "field"), op))

    @staticmethod
    def remove(field: bytes) -> Operation:
        """Remove ``field`` as observed. Runtime complexity: O(|state|) read, O(|field|) delta."""
        return Operation(ORMap, "remove", (as_bytes(field, "field"),))

    def store_delta(self, op, store, ctx, ts):
        f = op.args[0]
        fs = store.get(f)
        if op.kind == "remove":
            return {}, ctx_of(self.field_kind.dots(fs) if fs else ())
        fop = op.args[1]
        F = self.field_type
        F.check_operation(fop)
        if F.causal:
            ds, dc = F.store_delta(fop, fs if fs is not None else self.field_kind.empty(), ctx, ts)
            return ({f: ds} if ds else {}), dc
        observed = F.new_state()
        if fs:
            for v in fs.values():
                observed = F.join_state(observed, F.copy_state(v))
        d = F.delta_state(fop, observed, ts)
        c = claim(ctx, ts)
        return {f: {(c[0], c[2]): F.join_state(observed, d)}}, ctx_of(fs.keys() if fs else (), c)

    def store_value(self, store) -> Dict[bytes, Any]:
        F = self.field_type
        if F.causal:
            return {f: F.store_value(s) for f, s in store.items()}
        out = {}
        for f, fun in store.items():
            acc = F.new_state()
            for v in fun.values():
                acc = F.join_state(acc, F.copy_state(v))
            out[f] = F.state_value(acc)
        return out
