"""The ``backup`` and ``restore`` commands (``abase_engine.backup``).

``backup`` opens a closed store (under the node id its ``NODE`` file
names) and calls ``Engine.backup``; ``restore`` copies a backup to a new
directory with :func:`abase_engine.restore`, under a node id the original
never used. Both show a bar of bytes copied on stderr (a terminal, not
``--quiet``).

Thread-safety: not safe (one command at a time).
"""

from __future__ import annotations

import os

from ..backup import read_manifest
from ..backup import restore as _restore
from ._formats import format_ts
from ._stores import open_store
from ._ui import Outcome, Ui, human_bytes

__all__ = ["backup", "restore"]


def backup(path: str, dest: str, *, ui: Ui) -> Outcome:
    """Back the closed store ``path`` up into ``dest`` (missing or empty).

    :raises CliError: not a store, or locked (``open_store``).
    :raises FileExistsError: ``dest`` holds files.
    :raises AbaseError: the engine refused to open the store or to back it up.
    """
    with open_store(path) as db:
        with ui.byte_progress("backup") as progress:
            ts = db.backup(dest, progress=progress)
        node_id = db.node_id
    m = read_manifest(dest)
    size = sum(f["bytes"] for f in m["files"].values())
    data = {"command": "backup", "store": os.path.abspath(path), "backup": os.path.abspath(dest),
            "timestamp": format_ts(ts), "timestamp_hex": ts.to_bytes().hex(), "node_id": node_id,
            "node_ids": m["node_ids"], "files": len(m["files"]), "bytes": size, "lock_held_ms": m["lock_held_ms"]}
    text = (f"backed up {path} to {dest}: {len(m['files'])} file(s), {human_bytes(size)}, "
            f"as of timestamp {format_ts(ts)}\n"
            f"restore it under a node id other than {', '.join(map(str, m['node_ids']))}: "
            f"abase restore {dest} NEW_DIR --node-id N")
    return Outcome(data, text)


def restore(backup_dir: str, dest: str, *, node_id: int, force: bool, ui: Ui) -> Outcome:
    """Restore the backup ``backup_dir`` into ``dest`` for ``node_id``.

    :raises NodeIdRetiredError: ``node_id`` was used by the backup's original.
    :raises FileNotFoundError: ``backup_dir`` is not a backup.
    :raises FileExistsError: ``dest`` holds files.
    :raises CorruptionError: a backup file does not match its manifest.
    """
    with ui.byte_progress("restore") as progress:
        out = _restore(backup_dir, dest, node_id, force=force, progress=progress)
    ts = out["timestamp"]
    data = {"command": "restore", "backup": os.path.abspath(backup_dir), "store": os.path.abspath(dest),
            "timestamp": format_ts(ts), "timestamp_hex": ts.to_bytes().hex(), "node_id": node_id,
            "retired": out["retired"], "files": out["files"], "bytes": out["bytes"], "forced": force}
    text = (f"restored {backup_dir} into {dest}: {out['files']} file(s), {human_bytes(out['bytes'])}, "
            f"state as of {format_ts(ts)}; open it with node_id={node_id}"
            + (f" (retired: {', '.join(map(str, out['retired']))})" if out["retired"] else ""))
    return Outcome(data, text)
