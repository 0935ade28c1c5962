"""Merge operators: how a namespace folds the versions of one key into one value.

The engine decides *when* to merge (on read, in the compactor, in a
background partial merge); the operator defines *what* a merge means, like
RocksDB's MergeOperator. Every operator must satisfy, for all states and
operands ``a``, ``b``, ``c`` (``join`` meaning :meth:`MergeOperator.partial_merge`):

* associative: ``join(join(a, b), c) == join(a, join(b, c))``
* commutative: ``join(a, b) == join(b, a)``
* idempotent:  ``join(a, a) == a``
* ``full_merge(base, [x, y]) == full_merge(full_merge(base, [x]), [y])``

so duplicates, reordering and crash replays never change the result. The
equations are checked with hypothesis in ``tests/test_crdt.py``.

How the engine resolves one key (a pure function of its set of records):

* An operator whose deletes are *removal deltas* (``deletes_join``, every
  CRDT of :mod:`abase_engine.crdt`): every record is a state, a delta or a
  removal delta (a DELETE's value), and the value is the join of all of
  them: ``full_merge(None, [every record's value])``. There is no anchor,
  so a delete that arrives after the operands around it were folded gives
  the same result as one that arrived first.
* Any other operator (a delete is a *reset*):

  1. The *anchor* is the newest DELETE (a PUT joins like an operand).
  2. The operands are the PUT and MERGE records newer than the anchor.
  3. The value is ``full_merge(None, operands)`` if there are operands,
     else ``None`` (the key is absent).

  A delete that arrives after operands newer than it were folded together
  cannot separate the older ones: prefer ``deletes_join`` operators where
  replicas delete.

Operands are passed in ascending timestamp order, although a lawful operator
does not care.
"""

from __future__ import annotations

import abc
from typing import Any, Optional, Sequence

from .errors import MergeOperandError
from .record import Timestamp

__all__ = ["MergeOperator", "LWW"]


class MergeOperator(abc.ABC):
    """The contract every namespace's merge operator implements.

    ``name`` is persisted with the namespace; reopening the namespace with an
    operator of another name raises ``MergeOperatorMismatch``.

    Thread-safety: operators must be stateless or immutable; the engine calls
    them from the foreground threads and the compactor thread at once.
    """

    #: Persisted identifier, e.g. ``"abase.PNCounter.v1"``.
    name: str = ""

    @abc.abstractmethod
    def full_merge(self, base: Optional[bytes], operands: Sequence[bytes]) -> bytes:
        """Fold ``operands`` (IN, ascending timestamp order) into ``base`` (IN; None: no base).

        :return: the encoded state.
        :raises MergeOperandError: an operand or the base does not decode
            (the engine turns this into ``CorruptionError`` for stored data).
        """

    @abc.abstractmethod
    def partial_merge(self, left: bytes, right: bytes) -> bytes:
        """Combine two operands into one with the same effect as applying both.

        ``full_merge(b, [partial_merge(x, y)]) == full_merge(b, [x, y])``.
        """

    def needs_state(self, operation: Any) -> bool:
        """Whether :meth:`make_operand` needs the key's current state for ``operation``.

        The engine then reads the state under its write lock, so the
        read-modify-write is atomic with respect to other local writers.
        """
        return False

    def make_operand(self, operation: Any, state: Optional[bytes], timestamp: Timestamp) -> bytes:
        """Turn a user operation (e.g. ``PNCounter.increment(5)``) into an encoded operand.

        ``state`` is the current encoded state when :meth:`needs_state` said
        so, else None. ``timestamp`` is the record's own timestamp (its
        ``node_id`` is this replica's). Raw ``bytes`` operations are checked
        with :meth:`check_operand` and used as they are.

        :raises MergeOperandError: the operation is not one this operator takes.
        """
        if isinstance(operation, (bytes, bytearray, memoryview)):
            data = bytes(operation)
            self.check_operand(data)
            return data
        raise MergeOperandError(f"{type(self).__name__} does not take operations of type {type(operation).__name__}")

    def check_operand(self, operand: bytes) -> None:
        """Raise ``MergeOperandError`` if ``operand`` does not decode for this operator."""

    #: True when a DELETE is a removal delta that joins like an operand (its
    #: value from :meth:`removal`); False: a DELETE resets the key (the
    #: anchor rule above) and carries no value.
    deletes_join: bool = False

    def removal(self, state: Optional[bytes], timestamp: Timestamp) -> bytes:
        """The value of a local DELETE issued at ``timestamp`` when the key's
        state is ``state`` (IN; None: bottom): what the delete removes.
        Only called when :attr:`deletes_join`.

        :raises MergeOperandError: the operator does not support it.
        """
        raise MergeOperandError(f"{type(self).__name__} has no removal deltas")

    def delete_operand(self, value: Optional[bytes], timestamp: Timestamp) -> bytes:
        """Check the value of a DELETE received through ``apply`` (only when
        :attr:`deletes_join`) and return what to store.

        :raises MergeOperandError: the value is missing or not a removal.
        """
        raise MergeOperandError(f"{type(self).__name__} has no removal deltas")

    def to_value(self, state: bytes) -> Any:
        """Decode an encoded state into the Python value a read returns
        (default: the bytes); ``None`` makes the key read as absent."""
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LWW(MergeOperator):
    """Last-write-wins: the value with the greatest (HLC, node id) is the value.

    The default operator. The engine resolves LWW namespaces by timestamp
    directly (no callback on the read path); ``merge()`` on an LWW namespace
    behaves as ``put()``: the newest operand wins.

    >>> LWW().full_merge(b"old", [b"a", b"b"])
    b'b'
    """

    name = "abase.LWW.v1"

    def full_merge(self, base: Optional[bytes], operands: Sequence[bytes]) -> bytes:
        if operands:
            return bytes(operands[-1])
        if base is None:
            raise MergeOperandError("LWW.full_merge needs a base or an operand")
        return base

    def partial_merge(self, left: bytes, right: bytes) -> bytes:
        return right
