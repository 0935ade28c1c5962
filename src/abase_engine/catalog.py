"""The namespace catalog: which namespaces a directory defines, and their handles.

A namespace is a group of keys with its own merge operator. Its definition
is ``name -> (id, operator name)``; the operator's name is persisted so that
reopening a namespace under another operator is refused
(:class:`~abase_engine.errors.MergeOperatorMismatch`), as RocksDB's
``MergeOperator::Name()`` is meant to be used.

Definition record format: a definition is written through the log, as a PUT
in the reserved namespace ``NS_DEFS`` (0xFFFFFFFF), key = the namespace name
(UTF-8), value = ``id u32 little-endian | operator name (UTF-8)``. The
compactor folds these records into the store's ``meta`` database under
``ns:<name>`` with the same value, so the compactor stays the only writer of
the store. At open, definitions are read from ``meta`` and then from the log
(newer). Id 0 is the default namespace ``""``, which is never written.
Keys of ``NS_DEFS`` that start with byte 0xFF (never in a UTF-8 name) are
not definitions: range tombstones (``ranges.py``) use that record path.

Locks: one lock serializes the creation of namespaces (an id is taken and
its definition appended under it). Reads of the tables are plain dict reads.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import AbaseError, KeyTooLargeError, MergeOperatorMismatch
from .log import MAX_KEY, NS_DEFS, Log
from .merge import LWW, MergeOperator
from .record import Op
from .store import Store

__all__ = ["Catalog", "encode_definition", "decode_definition"]

_PUT = int(Op.PUT)
#: ``NS_DEFS`` keys starting with this byte (never in UTF-8) are not
#: definitions: range tombstones (``ranges.py``) use them.
_RESERVED = b"\xff"


def encode_definition(ns_id: int, op_name: str) -> bytes:
    """The value of a namespace-definition record (see the module docstring)."""
    return ns_id.to_bytes(4, "little") + op_name.encode()


def decode_definition(raw: bytes) -> Tuple[int, str]:
    """Inverse of :func:`encode_definition`: ``(id, operator name)``."""
    return int.from_bytes(raw[:4], "little"), raw[4:].decode()


class Catalog:
    """Namespace definitions and the open handles of one engine.

    :param log: where new definitions are appended.
    :param store: where compacted definitions are read from at open.
    :param make_handle: ``make_handle(name, ns_id, operator, fresh)`` builds
        the Namespace handle (``operator`` None for LWW; ``fresh``: the
        namespace was just created, so the store holds nothing of it).

    Thread-safety: safe.
    """

    def __init__(self, log: Log, store: Store, make_handle: Callable[[str, int, Optional[MergeOperator], bool], Any]):
        self._log = log
        self._make_handle = make_handle
        self._lock = threading.Lock()
        #: name -> (id, operator name), for every namespace the directory defines
        self._defs: Dict[str, Tuple[int, str]] = {}
        self._by_name: Dict[str, Any] = {}
        self._by_id: Dict[int, Any] = {}
        for k, v in store.meta_items(b"ns:"):
            if k[3:4] != _RESERVED:
                self._defs[k[3:].decode()] = decode_definition(v)
        if log.recovery.ns_def_records:  # else: skip a walk of the whole index
            for key, status, value, _h, _n, _op in log.scan(NS_DEFS, None, _RESERVED, None, False, 0, 0, False):
                if status >= 0 and value is not None and key[:1] != _RESERVED:
                    self._defs[key.decode()] = decode_definition(value)

    def add_default(self, handle: Any) -> None:
        """Register the default namespace's handle (id 0, LWW)."""
        self._by_name[""] = handle
        self._by_id[0] = handle

    # -- lookups ---------------------------------------------------------
    def handle(self, name: str) -> Optional[Any]:
        """The open handle of ``name``, or None if it was not opened in this process."""
        return self._by_name.get(name)

    def handle_by_id(self, ns_id: int) -> Optional[Any]:
        return self._by_id.get(ns_id)

    def handles(self) -> List[Any]:
        """Every open handle, the default namespace's first."""
        return list(self._by_id.values())

    def definitions(self) -> Dict[str, str]:
        """Every namespace the directory defines: name -> operator name."""
        return {name: op for name, (_i, op) in self._defs.items()}

    def ids(self) -> List[Tuple[str, int, str]]:
        """``(name, id, operator name)`` of every defined namespace, the default included."""
        out = [(name, i, op) for name, (i, op) in list(self._defs.items())]
        if "" not in self._defs:
            out.append(("", 0, LWW.name))
        return out

    def name_of(self, ns_id: int) -> str:
        """The name of namespace ``ns_id`` (``""`` if unknown)."""
        handle = self._by_id.get(ns_id)
        if handle is not None:
            return handle.name
        for name, (i, _op) in list(self._defs.items()):
            if i == ns_id:
                return name
        return ""

    def lww_ids(self) -> List[int]:
        """Ids of the LWW namespaces, open or not, and of ``NS_DEFS``."""
        ids = {i for i, h in list(self._by_id.items()) if h.lww}
        ids.update(i for i, op in list(self._defs.values()) if op == LWW.name)
        ids.add(0)
        return sorted(ids) + [NS_DEFS]

    def all_ids(self) -> List[int]:
        """Ids of every namespace, open or not (not ``NS_DEFS``)."""
        return sorted({0} | set(self._by_id) | {i for i, _op in list(self._defs.values())})

    def operator_of(self, ns_id: int) -> Optional[MergeOperator]:
        """The merge operator of ``ns_id``, None for LWW.

        :raises AbaseError: a merge namespace that was not opened in this
            process (its operator object is needed to fold it).
        """
        handle = self._by_id.get(ns_id)
        if handle is not None:
            return None if handle.lww else handle.merge_operator
        for name, (i, op_name) in list(self._defs.items()):
            if i == ns_id and op_name != LWW.name:
                raise AbaseError(
                    f"namespace {name!r} ({op_name}) must be opened with its merge operator before compaction")
        return None

    # -- opening ---------------------------------------------------------
    def open(self, name: str, merge: Optional[MergeOperator]) -> Any:
        """Open or create namespace ``name``; see ``Engine.namespace``.

        :raises TypeError: ``name`` is not a str or ``merge`` not a MergeOperator.
        :raises MergeOperatorMismatch: the namespace exists with another operator.
        :raises KeyTooLargeError: the name is longer than a key may be.
        """
        if not isinstance(name, str):
            raise TypeError(f"namespace names are str, not {type(name).__name__}")
        if merge is not None and not isinstance(merge, MergeOperator):
            raise TypeError(f"merge must be a MergeOperator, not {type(merge).__name__}")
        handle = self._by_name.get(name)
        if handle is None:
            with self._lock:
                handle = self._by_name.get(name)
                if handle is None:
                    return self._create(name, merge)
        if merge is not None and merge.name != handle.merge_operator.name:
            raise MergeOperatorMismatch(
                f"namespace {name!r} uses {handle.merge_operator.name!r}, not {merge.name!r}")
        return handle

    def _create(self, name: str, merge: Optional[MergeOperator]) -> Any:
        want = merge.name if merge is not None else LWW.name
        known = self._defs.get(name)
        if known is not None:
            ns_id, op_name = known
            if merge is None and op_name != LWW.name:
                raise MergeOperatorMismatch(
                    f"namespace {name!r} was created with {op_name!r}: pass that merge operator")
            if op_name != want:
                raise MergeOperatorMismatch(f"namespace {name!r} uses {op_name!r}, not {want!r}")
        else:
            ns_id = max([i for i, _ in self._defs.values()] + [0]) + 1
            if ns_id >= NS_DEFS:
                raise AbaseError("too many namespaces")
            encoded = name.encode()
            if len(encoded) > MAX_KEY:
                raise KeyTooLargeError("namespace name too long")
            self._log.put(NS_DEFS, _PUT, encoded, encode_definition(ns_id, want))
            self._defs[name] = (ns_id, want)
        operator = None if want == LWW.name else merge
        handle = self._make_handle(name, ns_id, operator, known is None)
        self._by_id[ns_id] = handle
        self._by_name[name] = handle
        return handle

    def for_apply(self, name: str) -> Any:
        """The handle records received for namespace ``name`` go to: an LWW
        namespace is opened (or created) on demand.

        :raises TypeError: ``name`` is not a str.
        :raises AbaseError: a merge namespace not opened with its operator.
        """
        if not isinstance(name, str):
            raise TypeError("Change.namespace must be a str")
        handle = self._by_name.get(name)
        if handle is not None:
            return handle
        known = self._defs.get(name)
        if known is None or known[1] == LWW.name:
            return self.open(name, None)
        raise AbaseError(f"namespace {name!r} ({known[1]}) must be opened with its merge operator before apply")
