"""Backups of an open engine, and restoring one under a new node id.

:func:`take_backup` (``Engine.backup(path)``) copies an engine directory
while writers and the compactor run; :func:`restore`
(``abase_engine.restore``) turns a backup into a directory an engine can
open, under a node id its original never used (``node_ids.py`` says why).

How a consistent copy is cut, without stopping writers for the copy:

1. Under the engine's **fold lock** (the compactor's store commit and
   ``compacted_through`` happen under it, so the store and the list of live
   segments agree while it is held): read the clock, then **seal** the
   active segment (one C call under the log's write lock: the only moment
   writers wait, see below), list the live segments, open every sealed one,
   and begin an LMDB read transaction. Then the lock is released.
2. The cut is: the store as of that transaction, plus every sealed live
   segment. A batch is one C call under the log's write lock, so a seal
   never splits one; a sealed segment never changes again, and one the
   compactor retires meanwhile stays readable through its open descriptor.
3. Copied outside the lock: the store (``Environment.copy(compact=True)``
   from that transaction), the sealed segments byte for byte, ``log/MARK``
   (read before the seal, so its durable end never lies past the copied
   data), and ``NODE`` with every id marked retired.

The returned timestamp ``T`` is the greatest of the clock read before the
seal and the newest record of the copied segments. Every local write
acknowledged before the call is in the copy (the seal covers it); a local
write is stamped above every timestamp the engine holds, so every local
write with a timestamp <= T is in the copy and none above it. Records
received through ``apply`` are in the copy if they were appended before
the seal.

What the writers see: they wait for one seal (shortening the active
segment's file; under durability ``"sync"`` also its fdatasync), as at every
segment change. The compactor's commit (and ``apply``, which takes the fold
lock) waits for step 1 only, not for the copy. The LMDB read transaction
held during the copy keeps the pages it sees, so the store file may grow by
what the compactor rewrites meanwhile.

Files of a backup directory (what an engine directory holds, less what is
rebuilt or does not carry over):

==================  ========================================================
``store/data.mdb``  the LMDB store, compacted copy (namespace definitions,
                    compaction marker, HLC high-water mark, stored versions)
``log/NNNNNNNN.seg``  the live segments of the cut (namespace definitions
                    not yet compacted are records here)
``log/MARK``        the durable end mark
``NODE``            the ids the original used, all retired (``node_ids.py``)
``BACKUP``          this module's manifest (JSON): timestamp, node ids,
                    every file's size and xxh64
==================  ========================================================

Not carried: ``slots.json`` (replication slots hold positions in the
original's log; a restored copy is a new replica whose consumers resync by
anti-entropy), ``digests.bin`` (rebuilt on first use), ``LOCK``.

Thread-safety: :func:`take_backup` is safe alongside every other engine
call, and two backups may run at once. :func:`restore` works on
directories no engine has open.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import lmdb
import xxhash

from ._abase import lib
from .errors import CorruptionError, InvalidOptionError, NodeIdRetiredError
from .node_ids import NODE_FILE, NodeIds, read_node_ids, write_node_ids
from .record import MAX_NODE_ID, Timestamp, from_packed
from .store import FORMAT_VERSION as STORE_FORMAT_VERSION
from .store import fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    import threading

    from .log import Log
    from .store import Store

__all__ = ["take_backup", "restore", "read_manifest", "MANIFEST", "Progress"]

#: The manifest's file name in a backup directory.
MANIFEST = "BACKUP"
_LAYOUT = 1
_CHUNK = 4 << 20
#: Names a manifest may list (it is read from disk: untrusted).
_FILE_NAME = re.compile(r"^(log/[0-9]{8,10}\.seg|log/MARK|store/data\.mdb|NODE)$")

#: ``progress(done_bytes, total_bytes)``, called as files are copied.
Progress = Callable[[int, int], None]


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_fd(src_fd: int, dest: str, size: int, report: Callable[[int], None]) -> str:
    """Copy ``size`` bytes from ``src_fd`` (from offset 0) to a new file
    ``dest``, fsync'd; returns the xxh64 of the bytes.

    :raises CorruptionError: the source ended before ``size`` bytes.
    """
    h = xxhash.xxh64()
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        pos = 0
        while pos < size:
            chunk = os.pread(src_fd, min(_CHUNK, size - pos), pos)
            if not chunk:
                raise CorruptionError(f"file ended at {pos} of its {size} bytes while being copied", dest, pos)
            os.write(out, chunk)
            h.update(chunk)
            pos += len(chunk)
            report(len(chunk))
        os.fsync(out)  # fsync point: the copy's bytes
    finally:
        os.close(out)
    return h.hexdigest()


def _hash_file(path: str) -> Tuple[int, str]:
    h = xxhash.xxh64()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return size, h.hexdigest()
            h.update(chunk)
            size += len(chunk)


def _fresh_target(path: str, what: str) -> str:
    """The absolute ``path``, which must be missing or an empty directory;
    returns the sibling ``<path>.partial`` the work is done in (created
    empty, removing one an interrupted run left)."""
    p = os.path.realpath(os.fspath(path))
    if os.path.exists(p) and (not os.path.isdir(p) or os.listdir(p)):
        raise FileExistsError(f"{what} target {path!r} exists and is not an empty directory")
    partial = p + ".partial"
    if os.path.lexists(partial):
        shutil.rmtree(partial)
    parent = os.path.dirname(p)
    os.makedirs(parent, exist_ok=True)
    os.makedirs(os.path.join(partial, "log"))
    os.makedirs(os.path.join(partial, "store"))
    return partial


def _finish(partial: str, final: str) -> None:
    """Make the finished ``partial`` directory ``final`` (atomically)."""
    for d in (os.path.join(partial, "log"), os.path.join(partial, "store"), partial):
        fsync_dir(d)  # fsync point: the names of the copied files
    if os.path.isdir(final):
        os.rmdir(final)  # empty (checked by _fresh_target)
    os.rename(partial, final)
    fsync_dir(os.path.dirname(final))  # fsync point: the backup's (or restore's) name


def take_backup(dest: str, *, source: str, node_id: int, log: "Log", store: "Store",
                fold_lock: "threading.Lock", progress: Optional[Progress] = None) -> Timestamp:
    """Copy the open engine directory ``source`` to ``dest`` (``Engine.backup``).

    See the module docstring for the cut and what is copied. ``dest`` must
    be missing or an empty directory; the copy is made in
    ``<dest>.partial`` and renamed to ``dest`` when complete, so ``dest``
    never holds half a backup.

    :return: the backup's timestamp T: the copy holds every local write
        stamped <= T and none stamped later.
    :raises FileExistsError: ``dest`` exists and is not an empty directory.
    :raises IOFailedError: the log refuses writes after an I/O failure (the
        seal fails), or the seal failed now.
    :raises EngineClosedError: the engine closed meanwhile.
    :raises OSError: a file could not be read or written (nothing is left
        at ``dest``).
    Runtime complexity: O(store + live log) bytes copied; writers wait
    for one seal only.
    """
    final = os.path.realpath(os.fspath(dest))
    partial = _fresh_target(dest, "backup")
    fds: List[Tuple[str, int]] = []
    txn = None
    try:
        mark_path = os.path.join(source, "log", "MARK")
        t0 = time.perf_counter()
        with fold_lock:  # waits while a compaction pass commits
            t1 = time.perf_counter()
            with open(mark_path, "rb") as f:  # before the seal: its end never lies past the copied data
                mark = f.read()
            before = log.clock()
            t2 = time.perf_counter()
            log.seal()  # the only step writers wait for
            seal_ms = (time.perf_counter() - t2) * 1000
            segs = [s for s in log.segments() if s["sealed"]]
            for s in segs:
                name = f"{s['no']:08d}.seg"
                fds.append((name, os.open(os.path.join(source, "log", name), os.O_RDONLY)))
            txn = store.env.begin()
        held_ms, wait_ms = (time.perf_counter() - t1) * 1000, (t1 - t0) * 1000
        newest = max([(before, node_id)] + [(s["max_hlc"], s["max_node"]) for s in segs if s["records"]])
        ts = from_packed(*newest)

        sizes = [os.fstat(fd).st_size for _name, fd in fds]
        done = [0]
        total = [sum(sizes) + len(mark)]

        def report(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total[0])

        files: Dict[str, Dict[str, Any]] = {}
        store.env.copy(os.path.join(partial, "store"), compact=True, txn=txn)
        txn.abort()
        txn = None
        size, digest = _hash_file(os.path.join(partial, "store", "data.mdb"))
        files["store/data.mdb"] = {"bytes": size, "xxh64": digest}
        total[0] += size
        report(size)
        for (name, fd), size in zip(fds, sizes):
            files["log/" + name] = {"bytes": size, "xxh64": _copy_fd(fd, os.path.join(partial, "log", name),
                                                                     size, report)}
        with open(os.path.join(partial, "log", "MARK"), "wb") as f:
            f.write(mark)
            f.flush()
            os.fsync(f.fileno())  # fsync point: the mark's copy
        files["log/MARK"] = {"bytes": len(mark), "xxh64": xxhash.xxh64(mark).hexdigest()}
        report(len(mark))

        ids = read_node_ids(source) or NodeIds(node_id, (node_id,), ())
        used = tuple(sorted(set(ids.used) | {node_id}))
        write_node_ids(partial, NodeIds(node_id, used, used))  # opening the backup in place: no old id
        size, digest = _hash_file(os.path.join(partial, NODE_FILE))
        files[NODE_FILE] = {"bytes": size, "xxh64": digest}

        manifest = {
            "abase_backup": _LAYOUT, "timestamp": ts.to_bytes().hex(),
            "timestamp_parts": [ts.physical_ms, ts.logical, ts.node_id],
            "source": source, "source_node_id": node_id, "node_ids": list(used),
            "created_ms": int(time.time() * 1000), "lock_held_ms": round(held_ms, 3),
            "lock_wait_ms": round(wait_ms, 3), "seal_ms": round(seal_ms, 3),
            "format": {"log": int(lib.ABASE_FORMAT_VERSION), "store": STORE_FORMAT_VERSION},
            "files": files,
        }
        with open(os.path.join(partial, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())  # fsync point: the manifest, written last
        _finish(partial, final)
        return ts
    except lmdb.Error as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise store.translate(exc) from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if txn is not None:
            txn.abort()
        for _name, fd in fds:
            os.close(fd)


def read_manifest(path: str) -> Dict[str, Any]:
    """The manifest of the backup directory ``path``, checked.

    :raises FileNotFoundError: ``path`` has no manifest (not a backup).
    :raises CorruptionError: the manifest does not parse or lists a file
        name a backup never has.
    """
    name = os.path.join(path, MANIFEST)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{path!r} is not an abase backup: no {MANIFEST} manifest")
    try:
        with open(name, "rb") as f:
            m = json.loads(f.read(64 << 20).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptionError("backup manifest is not JSON", name, 0) from None
    if not isinstance(m, dict) or m.get("abase_backup") != _LAYOUT:
        raise CorruptionError(f"backup manifest of an unknown layout (expected abase_backup {_LAYOUT})", name, 0)
    files, ids = m.get("files"), m.get("node_ids")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and _FILE_NAME.match(k) and isinstance(v, dict)
            and isinstance(v.get("bytes"), int) and v["bytes"] >= 0 and isinstance(v.get("xxh64"), str)
            for k, v in files.items()):
        raise CorruptionError("backup manifest: 'files' lists something a backup does not hold", name, 0)
    if "store/data.mdb" not in files or "log/MARK" not in files:
        raise CorruptionError("backup manifest lists no store/data.mdb or log/MARK", name, 0)
    if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i <= MAX_NODE_ID for i in ids):
        raise CorruptionError("backup manifest: 'node_ids' is not a list of node ids", name, 0)
    try:
        m["timestamp"] = Timestamp.from_bytes(bytes.fromhex(m["timestamp"]))
    except (KeyError, TypeError, ValueError):
        raise CorruptionError("backup manifest: 'timestamp' is not a timestamp", name, 0) from None
    return m


def restore(backup_path: str, dest: str, node_id: int, *, force: bool = False,
            progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Make the backup at ``backup_path`` an engine directory at ``dest``,
    to be opened under ``node_id``.

    Every file is checked against the manifest's size and xxh64 while it is
    copied. ``dest`` must be missing or an empty directory; the work is done
    in ``<dest>.partial`` and renamed when complete. The new directory's
    ``NODE`` file retires every node id the backup was written under, so
    opening it under one of them raises NodeIdRetiredError.

    ``node_id`` must differ from every id the backup was written under:
    the original went on issuing timestamps under its id after the backup,
    and the copy, whose clock starts at the backup's time, would issue some
    of the same ``(hlc, node)`` pairs with other contents; replicas
    resolving by last-writer-wins would then diverge. ``force=True`` allows
    an old id anyway: only for a copy that replaces its original, which
    must then never write again (and whose timestamps since the backup
    nobody else has seen).

    :return: ``{"timestamp", "node_id", "retired", "files", "bytes"}``.
    :raises NodeIdRetiredError: ``node_id`` was used by the backup's original
        (and ``force`` is false).
    :raises InvalidOptionError: ``node_id`` is not an int in 0..2**32-1.
    :raises FileNotFoundError: ``backup_path`` is not a backup.
    :raises FileExistsError: ``dest`` exists and is not an empty directory.
    :raises CorruptionError: a file of the backup does not match its manifest
        (nothing is left at ``dest``).
    Thread-safety: no engine may have ``dest`` open (it is a new directory).
    """
    if not isinstance(node_id, int) or isinstance(node_id, bool) or not 0 <= node_id <= MAX_NODE_ID:
        raise InvalidOptionError(f"node_id must be an int in 0..{MAX_NODE_ID}, got {node_id!r}")
    src = os.path.realpath(os.fspath(backup_path))
    m = read_manifest(src)
    used = sorted(set(m["node_ids"]))
    if node_id in used and not force:
        raise NodeIdRetiredError(
            f"node id {node_id} was used by the store this backup was taken from (ids {used}); restore under a "
            f"node id no replica uses, so that the copy never issues a timestamp its original already issued "
            f"(force=True / --force only for a copy that replaces its original for good)")
    final = os.path.realpath(os.fspath(dest))
    partial = _fresh_target(dest, "restore")
    files: Dict[str, Dict[str, Any]] = m["files"]
    total = sum(v["bytes"] for k, v in files.items() if k != NODE_FILE)
    done = [0]

    def report(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    try:
        for name in sorted(files):
            if name == NODE_FILE:
                continue  # written below, with this copy's ids
            want = files[name]
            src_file = os.path.join(src, name)
            try:
                fd = os.open(src_file, os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptionError("file listed in the backup manifest is missing", src_file) from None
            try:
                have = os.fstat(fd).st_size
                if have != want["bytes"]:
                    raise CorruptionError(f"file is {have} bytes, the backup manifest says {want['bytes']}",
                                          src_file, min(have, want["bytes"]))
                digest = _copy_fd(fd, os.path.join(partial, name), have, report)
            finally:
                os.close(fd)
            if digest != want["xxh64"]:
                raise CorruptionError("file does not match the xxh64 in the backup manifest", src_file)
        retired = sorted(set(used) - {node_id})
        write_node_ids(partial, NodeIds(node_id, tuple(sorted(set(used) | {node_id})), tuple(retired)))
        _finish(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"timestamp": m["timestamp"], "node_id": node_id, "retired": retired,
            "files": len(files), "bytes": total}
