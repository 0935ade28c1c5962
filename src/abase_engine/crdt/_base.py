"""The machinery every built-in CRDT shares, and the type protocol.

:class:`CrdtType` is a :class:`~abase_engine.merge.MergeOperator` whose
encoded states form a join-semilattice. It handles the state header,
decoding (with a one-slot memo), encoding, the join fold, operations and
deletes; a concrete type supplies the *type protocol* below. The protocol
is also the interface :class:`~abase_engine.crdt.ORMap` uses on its field
type, so a type never reaches into another's internals.

Type protocol (an internal interface: stable within this package, not an
application API):

* ``TAG``, ``signature()``: the type's tag in the header (ORMap appends its
  field type's signature).
* ``causal``: True for dot-based types, whose decoded state is
  ``(store, context, watermark)``; ``store_kind`` is their dot-store kind
  (see ``_causal``), ``store_delta(op, store, ctx, ts) -> (store, ctx)``
  the delta of an operation and ``store_value(store)`` the Python value of
  a non-empty store.
* otherwise a *plain* state, with ``new_state()`` (bottom),
  ``copy_state(x)``, ``join_state(a, b)`` (may mutate and return ``a``),
  ``encode_state(out, x)`` / ``decode_state(buf, pos)``,
  ``delta_state(op, observed, ts)`` (an operation's delta),
  ``state_value(x)`` (the Python value), ``state_live(x)`` (whether
  anything is visible) and ``removal_state(x, ts)`` (what a key delete at
  ``ts`` that observed ``x`` removes).
* ``watermark``: True when a key delete is a timestamp watermark (causal
  SortedSet; LWWRegister and GSet keep their watermark in their plain state).
* ``OPS``: operation kind -> whether it needs the key's state;
  ``check_operation(op)`` refuses an operation of another type or kind.

Thread-safety: an operator's only mutable attribute is the memo, replaced
as a whole and never mutated, so operators are safe to share.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from ..errors import MergeOperandError
from ..merge import MergeOperator
from ..record import Timestamp
from ._causal import ctx_union_into, decode_ctx, encode_ctx
from ._codec import BYTES_LIKE, FORMAT_VERSION, TS, bad, max_ts, read_wm, write_wm

__all__ = ["Operation", "CrdtType"]


class Operation(NamedTuple):
    """A user operation, e.g. ``PNCounter.increment(5)``: a plain immutable value.

    ``crdt`` is the class that takes it, ``kind`` the operation name, ``args``
    its validated arguments. Build them with the classes' static methods;
    an Operation can be reused for any number of merges.
    """

    crdt: type
    kind: str
    args: tuple

    def __repr__(self) -> str:
        return f"{self.crdt.__name__}.{self.kind}({', '.join(map(repr, self.args))})"


def ts_of(ts: Timestamp) -> TS:
    """``(hlc, node)`` of a Timestamp. :raises TypeError: not a Timestamp."""
    if not isinstance(ts, Timestamp):
        raise TypeError(f"timestamp must be a Timestamp, not {type(ts).__name__}")
    return (ts.hlc, ts.node_id)


class CrdtType(MergeOperator):
    """Shared machinery of the built-in CRDTs (see the module docstring)."""

    TAG = 0
    causal = False
    watermark = False
    store_kind: Any = None
    #: operation kind -> needs_state
    OPS: Dict[str, bool] = {}
    #: Deletes are removal deltas that join (see MergeOperator.deletes_join).
    deletes_join = True

    def __init__(self) -> None:
        self._hdr = bytes((FORMAT_VERSION,)) + self.signature()
        # One-slot memo (encoded bytes, decoded state) of the last state decoded
        # for reading or produced by a merge. The decoded state in it is never
        # mutated (mutating callers get a copy) and the slot is replaced as a
        # whole, so sharing an operator between threads stays safe. It makes
        # the engine's make_operand(op, S) + full_merge(S, [operand]) decode S once.
        self._memo: Optional[Tuple[bytes, Any]] = None

    # -- the type protocol (defaults) -----------------------------------------
    def signature(self) -> bytes:
        """The bytes after the version byte that name the type."""
        return bytes((self.TAG,))

    def check_operation(self, op: Any) -> None:
        """:raises MergeOperandError: ``op`` is not an operation of this type."""
        if type(op) is not Operation or not isinstance(self, op.crdt) or op.kind not in self.OPS:
            raise MergeOperandError(f"{self.name} does not take the operation {op!r}")

    def store_delta(self, op: Operation, store: Any, ctx: Dict, ts: Timestamp) -> Tuple[Any, Dict]:
        raise NotImplementedError

    def store_value(self, store: Any) -> Any:
        raise NotImplementedError

    def new_state(self) -> Any:
        raise NotImplementedError

    def copy_state(self, x: Any) -> Any:
        raise NotImplementedError

    def join_state(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def encode_state(self, out: bytearray, x: Any) -> None:
        raise NotImplementedError

    def decode_state(self, buf: bytes, pos: int) -> Tuple[Any, int]:
        raise NotImplementedError

    def delta_state(self, op: Operation, observed: Any, ts: Timestamp) -> Any:
        raise NotImplementedError

    def state_value(self, x: Any) -> Any:
        raise NotImplementedError

    def state_live(self, x: Any) -> bool:
        raise NotImplementedError

    def removal_state(self, x: Any, ts: Timestamp) -> Any:
        raise NotImplementedError

    # -- identity ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.name)

    # -- decoding / encoding of whole states -------------------------------------
    def _copy(self, obj: Any) -> Any:
        if self.causal:
            return (self.store_kind.copy(obj[0]), dict(obj[1]), obj[2])
        return self.copy_state(obj)

    def _load(self, data: Any, mutable: bool = True) -> Any:
        """Decode a state; ``mutable``: the caller owns (and may mutate) the result."""
        if type(data) is not bytes:
            if not isinstance(data, BYTES_LIKE):
                raise MergeOperandError(f"{self.name}: operand must be bytes, not {type(data).__name__}")
            data = bytes(data)
        memo = self._memo
        if memo is not None and (memo[0] is data or memo[0] == data):
            return self._copy(memo[1]) if mutable else memo[1]
        obj = self._decode(data)
        if not mutable:
            self._memo = (data, obj)
        return obj

    def _decode(self, data: bytes) -> Any:
        hdr = self._hdr
        if not data.startswith(hdr):
            if not data:
                raise MergeOperandError(f"{self.name}: empty operand")
            if data[0] != FORMAT_VERSION:
                raise MergeOperandError(f"{self.name}: unknown format version {data[0]}")
            raise MergeOperandError(f"{self.name}: operand is of another CRDT type (signature {data[1:len(hdr)].hex()})")
        try:
            pos = len(hdr)
            if self.causal:
                wm = None
                if self.watermark:
                    wm, pos = read_wm(data, pos)
                ctx, table, pos = decode_ctx(data, pos)
                store, pos = self.store_kind.decode(data, pos, table)
                if wm is not None and self.store_kind.drop_upto(self.store_kind.copy(store), wm) != store:
                    raise bad("a dot not newer than the watermark")
                obj: Any = (store, ctx, wm)
            else:
                obj, pos = self.decode_state(data, pos)
            if pos != len(data):
                raise bad("trailing bytes")
            return obj
        except MergeOperandError as e:
            raise MergeOperandError(f"{self.name}: undecodable operand: {e}") from None
        except (IndexError, ValueError, KeyError, OverflowError, RecursionError, struct.error) as e:
            raise MergeOperandError(f"{self.name}: undecodable operand ({type(e).__name__}: {e})") from None

    def _dump(self, obj: Any) -> bytes:
        out = bytearray(self._hdr)
        if self.causal:
            store, ctx, wm = obj
            if self.watermark:
                write_wm(out, wm)
            tbl = encode_ctx(out, ctx)
            self.store_kind.encode(out, store, tbl)
        else:
            self.encode_state(out, obj)
        return bytes(out)

    def _bottom(self) -> Any:
        if self.causal:
            return (self.store_kind.empty(), {}, None)
        return self.new_state()

    def _join_into(self, a: Any, b: Any) -> Any:
        if not self.causal:
            return self.join_state(a, b)
        s1, c1, w1 = a
        s2, c2, w2 = b
        kind = self.store_kind
        s = kind.join(s1, c1, s2, c2)
        wm = max_ts(w1, w2)
        if wm is not None and w1 != w2:  # else every dot is newer than both already
            s = kind.drop_upto(s, wm)
        return (s, ctx_union_into(c1, c2), wm)

    def _live(self, obj: Any) -> bool:
        return bool(obj[0]) if self.causal else self.state_live(obj)

    # -- MergeOperator -----------------------------------------------------------
    def full_merge(self, base: Optional[bytes], operands: Sequence[bytes]) -> bytes:
        """Join ``base`` (None: bottom) with every operand.

        Runtime complexity: O(|base| + Σ|operand|) decoding and encoding, plus
        O(|base|) per operand whose causal context is not empty.
        """
        acc = self._load(base) if base is not None else self._bottom()
        for o in operands:
            acc = self._join_into(acc, self._load(o))
        out = self._dump(acc)
        self._memo = (out, acc)
        return out

    def partial_merge(self, left: bytes, right: bytes) -> bytes:
        """The join of two operands (deltas are states). Runtime complexity: O(|left| + |right|)."""
        acc = self._join_into(self._load(left), self._load(right))
        out = self._dump(acc)
        self._memo = (out, acc)
        return out

    def check_operand(self, operand: bytes) -> None:
        """:raises MergeOperandError: ``operand`` is not a state of this type."""
        self._load(operand, False)

    def needs_state(self, operation: Any) -> bool:
        return type(operation) is Operation and isinstance(self, operation.crdt) and self.OPS.get(operation.kind, False)

    def make_operand(self, operation: Any, state: Optional[bytes], timestamp: Timestamp) -> bytes:
        """Encode ``operation`` as a delta issued at ``timestamp`` by ``timestamp.node_id``.

        Runtime complexity: O(|state|) when :meth:`needs_state`, else O(|operation|).

        :raises MergeOperandError: not an operation of this type, or a raw
            operand that does not decode.
        """
        if isinstance(operation, BYTES_LIKE):
            data = bytes(operation)
            self.check_operand(data)
            return data
        self.check_operation(operation)
        if state is not None and self.OPS[operation.kind]:
            cur = self._load(state, False)
        else:
            cur = self._bottom()
        if not isinstance(timestamp, Timestamp):
            raise TypeError(f"timestamp must be a Timestamp, not {type(timestamp).__name__}")
        if self.causal:
            store, ctx, _wm = cur
            ds, dc = self.store_delta(operation, store, ctx, timestamp)
            delta: Any = (ds, dc, None)
        else:
            delta = self.delta_state(operation, cur, timestamp)
        return self._dump(delta)

    def to_value(self, state: Optional[bytes]) -> Any:
        """The Python value of an encoded state; None when nothing in it is
        visible (bottom, or everything removed: the key reads as absent).

        Runtime complexity: O(|state|).
        """
        if state is None:
            return None
        obj = self._load(state, False)
        if not self._live(obj):
            return None
        if self.causal:
            return self.store_value(obj[0])
        return self.state_value(obj)

    # -- deletes -------------------------------------------------------------------
    def removal(self, state: Optional[bytes], timestamp: Timestamp) -> bytes:
        """The value of a local key delete issued at ``timestamp`` by a replica
        whose state of the key is ``state`` (None: bottom): what it removes.

        Dot-based types: the state's causal context (an observed-remove).
        Counters: the observed totals, as totals and as removed totals (an
        observed reset). Timestamp-ordered types: the watermark ``timestamp``
        (SortedSet also keeps its context). Runtime complexity: O(|state|).
        """
        ts = ts_of(timestamp)
        obj = self._load(state, False) if state is not None else self._bottom()
        if self.causal:
            rem: Any = (self.store_kind.empty(), dict(obj[1]), ts if self.watermark else None)
        else:
            rem = self.removal_state(obj, timestamp)
        return self._dump(rem)

    def delete_operand(self, value: Optional[bytes], timestamp: Timestamp) -> bytes:
        """Check (and normalize) the value of a received DELETE record.

        A delete's value must be a state of this type in which nothing is
        visible; for a timestamp-ordered type its watermark must be the
        record's own timestamp, and ``None`` or ``b""`` stands for "nothing
        beyond the timestamp". Returns the encoded value to store.

        :raises MergeOperandError: the value is missing where the type needs
            a context or totals, does not decode, or adds something.
        """
        ts = ts_of(timestamp)
        if value is None or len(value) == 0:
            if self.watermark:
                return self.removal(None, timestamp)
            raise MergeOperandError(
                f"{self.name}: a DELETE must carry what it removes (its writer's observed context or "
                "totals, as ns.delete writes it); refusing to guess")
        obj = self._load(bytes(value), False)
        if self._live(obj):
            raise MergeOperandError(f"{self.name}: a DELETE's value must only remove, not add")
        if self.watermark:
            wm = obj[2] if self.causal else self.watermark_of(obj)
            if wm != ts:
                raise MergeOperandError(f"{self.name}: a DELETE's watermark must be its own timestamp")
        return bytes(value)

    def watermark_of(self, x: Any) -> Optional[TS]:
        """The watermark of a plain state of a timestamp-ordered type."""
        raise NotImplementedError
