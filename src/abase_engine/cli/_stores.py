"""Finding and opening a store for a command, without creating one by accident.

``Engine.__init__`` creates the directory and an empty store wherever it is
pointed, so every command first checks, with :func:`require_store`, that
the path already is a store (a directory holding ``log/`` and
``store/data.mdb``); only ``load --create`` may make a new one, and only in
a missing or empty directory.

Stores are opened with ``compact_interval=None``: no compactor thread runs,
so a command that only reads writes nothing beyond what ``open`` itself
does (recovery may zero the torn tail of the newest segment). Namespaces
are opened through their persisted operator name: the built-in CRDTs of
:mod:`abase_engine.crdt` can be rebuilt from it, an operator defined
elsewhere cannot, and a command that needs such a namespace says so.

Thread-safety: not safe (used by one command at a time).
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from .. import crdt as _crdt
from ..engine import Engine, Namespace
from ..engine import open as _open_engine
from ..errors import LockedError
from ..merge import LWW, MergeOperator
from ..node_ids import persisted_node_id
from ._ui import CliError

__all__ = ["require_store", "open_store", "operator_for", "all_namespaces", "open_namespace",
           "open_known_namespaces", "DEFAULT_READ_NODE_ID"]

#: The node id a command that writes no records opens a store with when the
#: store has no ``NODE`` file (one made before it existed); reading does not
#: depend on it.
DEFAULT_READ_NODE_ID = 0

_ORMAP = re.compile(r"^abase\.ORMap\.v1\[(.+)\]$")


def _builtin_operators() -> Dict[str, type]:
    out: Dict[str, type] = {}
    for name in getattr(_crdt, "__all__", ()):
        cls = getattr(_crdt, name)
        op_name = getattr(cls, "name", None)
        if isinstance(cls, type) and issubclass(cls, MergeOperator) and isinstance(op_name, str) and op_name:
            out[op_name] = cls
    return out


def operator_for(name: str) -> Optional[MergeOperator]:
    """The merge operator persisted as ``name``: None for LWW, a built-in CRDT instance otherwise.

    :raises CliError: ``name`` is not LWW nor a CRDT of :mod:`abase_engine.crdt`
        (a user-defined operator: open that namespace from Python).
    """
    if name == LWW.name:
        return None
    m = _ORMAP.match(name)
    if m is not None:
        field = operator_for(m.group(1))
        if field is None:
            raise CliError("UnknownOperator", f"merge operator {name!r}: ORMap of LWW is not a CRDT")
        return _crdt.ORMap(field)  # type: ignore[arg-type]
    cls = _builtin_operators().get(name)
    if cls is None:
        raise CliError("UnknownOperator",
                       f"merge operator {name!r} is not one of abase_engine.crdt; the command line cannot "
                       f"open this namespace (open it from Python with its operator)")
    return cls()


def require_store(path: str, create: bool = False) -> str:
    """Check that ``path`` is a store (or, with ``create``, a place a new one may go).

    :return: the path, absolute.
    :raises CliError: ``NotAStore`` otherwise. Nothing is created here.
    """
    p = os.path.abspath(path)
    if not os.path.exists(p):
        if create:
            return p
        raise CliError("NotAStore", f"{path}: no such directory")
    if not os.path.isdir(p):
        raise CliError("NotAStore", f"{path}: is a file, not a store directory")
    has_log = os.path.isdir(os.path.join(p, "log"))
    has_store = os.path.isfile(os.path.join(p, "store", "data.mdb"))
    if has_log and has_store:
        return p
    if create and not os.listdir(p):
        return p
    missing = [n for n, ok in (("log/", has_log), ("store/data.mdb", has_store)) if not ok]
    hint = "" if create else " (refusing to create a store here; `abase load --create` makes a new one)"
    if create:
        hint = " and is not empty (refusing to create a store among other files)"
    raise CliError("NotAStore", f"{path}: not an abase store: no {' or '.join(missing)}{hint}")


def open_store(path: str, node_id: Optional[int] = None, create: bool = False,
               durability: str = "process", **options) -> Engine:
    """Open the store at ``path`` for one command, with no compactor thread.

    ``node_id`` None: the id the store's ``NODE`` file names (so opening
    claims no new id), else :data:`DEFAULT_READ_NODE_ID`.

    :raises CliError: not a store (see :func:`require_store`), or locked
        (kind ``LockedError``: another process or this one holds it).
    :raises AbaseError: the engine refused to open it (corruption, format version).
    """
    p = require_store(path, create=create)
    options.setdefault("compact_interval", None)
    if node_id is None:
        node_id = (persisted_node_id(p) if os.path.isdir(p) else None)
        node_id = DEFAULT_READ_NODE_ID if node_id is None else node_id
    try:
        return _open_engine(p, node_id=node_id, durability=durability, **options)
    except LockedError as exc:
        raise CliError("LockedError", f"{exc}; the command line works on a store no program has open") from None


def all_namespaces(db: Engine) -> Dict[str, str]:
    """Every namespace of the store, the default one (``""``) included: name -> operator name."""
    out = {"": LWW.name}
    out.update(db.namespaces())
    return out


def open_namespace(db: Engine, name: str, create_with: Optional[str] = None,
                   require: Optional[str] = None) -> Namespace:
    """The namespace ``name`` with its persisted operator.

    A namespace that does not exist is refused (opening it would create it)
    unless ``create_with`` names the operator to create it with. ``require``:
    the operator an existing namespace must have.

    :raises CliError: ``NoSuchNamespace``, ``UnknownOperator``, or
        ``MergeOperatorMismatch`` (the namespace has an operator other than ``require``).
    """
    known = all_namespaces(db)
    op_name = known.get(name)
    if op_name is None:
        if create_with is None:
            names = ", ".join(repr(n) for n in sorted(known))
            raise CliError("NoSuchNamespace", f"namespace {name!r} does not exist (the store has {names})")
        op_name = create_with
    if require is not None and op_name != require:
        raise CliError("MergeOperatorMismatch", f"namespace {name!r} uses {op_name!r}, not {require!r}")
    if name == "":
        return db
    return db.namespace(name, merge=operator_for(op_name))


def open_known_namespaces(db: Engine) -> Tuple[Dict[str, Namespace], List[str]]:
    """Open every namespace whose operator the command line can build.

    The engine counts and compacts only namespaces opened in this process,
    with their operator. :return: (name -> Namespace, names left closed).
    """
    opened: Dict[str, Namespace] = {}
    skipped: List[str] = []
    for name in sorted(all_namespaces(db)):
        try:
            opened[name] = open_namespace(db, name)
        except CliError as exc:
            if exc.kind != "UnknownOperator":
                raise
            skipped.append(name)
    return opened, skipped

