"""The node ids a directory has been written under: the ``NODE`` file.

Timestamps are unique as ``(hlc, node id)`` pairs (DESIGN.md invariant 4):
an engine never issues the same HLC twice, and no two replicas share a
node id. A copy of a directory (a backup restored somewhere) breaks the
second half if it goes on under its original's node id: its clock starts
at the backup's time while the original has issued later timestamps under
the same id since, so the copy can issue a timestamp equal to one the
original already replicated, with other contents, and last-writer-wins
would then keep either version depending on arrival order (replicas
diverge). So the directory remembers its ids, and a restored copy refuses
the ones its original used.

``<dir>/NODE`` (owned here; one JSON object on one line)::

    {"abase_node_ids": 1, "node_id": 7, "used": [1, 7], "retired": [1]}

* ``node_id``: the id of the latest open;
* ``used``: every id the directory was opened under (a superset of the ids
  its records were written under: opening is when the id is claimed);
* ``retired``: ids the directory may no longer be opened under (those of
  the original a restored copy came from; :func:`abase_engine.restore`
  writes them).

It is written when an open claims an id not in ``used`` (a new directory,
or a new id): to ``NODE.tmp``, fsync'd, renamed over ``NODE``, and the
directory fsync'd (fsync point: the claim is on disk before the engine
issues any timestamp under the id). A directory without the file (made
before it existed), or whose file is empty or all NUL bytes (its name
reached the disk, its contents did not), starts its history at its next
open; anything else that does not parse is a CorruptionError.

Thread-safety: the caller holds the directory's ``LOCK`` (the engine at
open, ``restore`` on a directory no engine has open).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from .errors import CorruptionError, NodeIdRetiredError
from .record import MAX_NODE_ID
from .store import fsync_dir

__all__ = ["NODE_FILE", "NodeIds", "read_node_ids", "write_node_ids", "claim_node_id", "persisted_node_id"]

NODE_FILE = "NODE"
_LAYOUT = 1


@dataclass(frozen=True)
class NodeIds:
    """What ``NODE`` records (see the module docstring)."""

    node_id: Optional[int] = None
    used: Tuple[int, ...] = field(default_factory=tuple)
    retired: Tuple[int, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        """The file's one line."""
        return json.dumps({"abase_node_ids": _LAYOUT, "node_id": self.node_id, "used": sorted(set(self.used)),
                           "retired": sorted(set(self.retired))}, sort_keys=True) + "\n"


def _valid_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_NODE_ID


def read_node_ids(path: str) -> Optional[NodeIds]:
    """The ``NODE`` file of directory ``path``, or None when it has none.

    :raises CorruptionError: the file is not what :func:`write_node_ids` writes.
    :raises OSError: it cannot be read.
    """
    name = os.path.join(path, NODE_FILE)
    try:
        with open(name, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return None
    if not raw.strip(b"\0"):
        # Empty (or NULs only): the file's name reached the disk but its
        # contents did not (a crash right after it was first written, on a
        # file system that does not order the rename after the fsync'd
        # data). Nothing was claimed durably: as if there were no file.
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptionError("NODE file is not JSON", name, 0) from None
    if not isinstance(obj, dict) or obj.get("abase_node_ids") != _LAYOUT:
        raise CorruptionError(f"NODE file of an unknown layout (expected abase_node_ids {_LAYOUT})", name, 0)
    node_id, used, retired = obj.get("node_id"), obj.get("used"), obj.get("retired")
    if node_id is not None and not _valid_id(node_id):
        raise CorruptionError(f"NODE file: node_id {node_id!r} is not a node id", name, 0)
    for what, ids in (("used", used), ("retired", retired)):
        if not isinstance(ids, list) or not all(_valid_id(i) for i in ids):
            raise CorruptionError(f"NODE file: {what} is not a list of node ids", name, 0)
    return NodeIds(node_id, tuple(used), tuple(retired))


def write_node_ids(path: str, ids: NodeIds) -> None:
    """Replace the ``NODE`` file of ``path`` atomically and durably.

    :raises OSError: a write, fsync or rename failed (the old file stays).
    """
    final = os.path.join(path, NODE_FILE)
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, ids.to_json().encode())
        os.fsync(fd)  # fsync point: the new contents before the rename
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(path)  # fsync point: the rename


def claim_node_id(path: str, node_id: int) -> NodeIds:
    """Record that ``path`` is opened under ``node_id`` (at open, lock held).

    Writes the file only when ``node_id`` is new to it (or it changes the
    latest id), so reopening under the same id writes nothing.

    :raises NodeIdRetiredError: ``node_id`` is retired in this directory (a
        restored copy opened under an id of its original).
    :raises CorruptionError: a damaged ``NODE`` file.
    :raises OSError: the file cannot be read or written.
    """
    current = read_node_ids(path) or NodeIds()
    if node_id in current.retired:
        raise NodeIdRetiredError(
            f"node id {node_id} is retired in {path}: this directory was restored from a backup of a "
            f"store written under it (retired ids: {sorted(current.retired)}), and reusing it could issue "
            f"timestamps the original already issued; open it with a node id no other replica uses "
            f"(docs/operations.md, 'Restore')")
    if current.node_id == node_id and node_id in current.used:
        return current
    claimed = NodeIds(node_id, tuple(sorted(set(current.used) | {node_id})), current.retired)
    write_node_ids(path, claimed)
    return claimed


def persisted_node_id(path: str) -> Optional[int]:
    """The node id ``path`` was last opened under, or None (no ``NODE`` file yet).

    :raises CorruptionError: a damaged ``NODE`` file.
    """
    ids = read_node_ids(path)
    return None if ids is None else ids.node_id
