"""Salvage of a damaged engine directory: ``repair(path)`` and ``check(fix=True)``.

What it does, on a directory no engine has open (it takes the ``LOCK``):

* **log segments**: each live segment file is checked the way recovery
  checks it (``abase_segment_verify`` in C: header, every record's bounds
  and checksum, timestamps in the clock's range, batches all or nothing,
  only zeros after the last record). A damaged segment is cut at the end of
  its last good record (or good batch); the bytes from there to the end of
  the data are moved aside to ``log/NNNNNNNN.seg.damaged`` (never deleted),
  and the segment file is truncated. A segment whose header is bad is moved
  aside whole and replaced by an empty one of the same number, as is a
  segment missing from the numbering, so recovery finds consecutive
  segments again. What follows a cut (in that segment) is not re-read:
  bytes after a damaged record cannot be proven to be records.
* **store** (LMDB): stored versions that do not decode are deleted; stored
  tombstones missing from the tombstone index are added back.
* **derived state**: the log's index is rebuilt by recovery at the next
  open; ``digests.bin`` is removed when anything else changed (rebuilt on
  use); a ``slots.json`` that does not parse is moved aside to
  ``slots.json.damaged`` (its slots are lost: their readers fall back to
  anti-entropy).

Every change is reported, one line each: file, offset, bytes, records and
reason. A healthy directory is not changed at all: the checks read the log
and open the store read-only, and nothing is written unless a check failed.

Locks: the directory's ``LOCK`` (exclusive, non-blocking), held throughout.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import struct
from typing import List, Optional, Set, Tuple

import lmdb

from ._abase import ffi, lib
from .errors import CorruptionError, LockedError
from .slots import parse_slots_file
from .store import TOMBSTONE, Store, decode, empty_key_slot

__all__ = ["repair"]

_SEG_NAME = re.compile(r"^(\d{8,10})\.seg$")
_U64 = struct.Struct("<Q")


def repair(path: str, node_id: int = 1) -> List[str]:
    """Salvage the engine directory ``path`` (see the module docstring).

    :param node_id: written into the header of a segment that replaces a
        missing or unreadable one.
    :return: one line per change made; empty when the directory was healthy
        (then nothing was written).
    :raises LockedError: an engine has the directory open.
    :raises FileNotFoundError: ``path`` is not an engine directory.

    Thread-safety: not safe against any other use of the directory.
    """
    path = os.path.realpath(os.fspath(path))
    if not os.path.isdir(os.path.join(path, "store")):
        raise FileNotFoundError(f"{path} is not an engine directory (no store/)")
    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LockedError(f"{path} is open; close it before repairing") from None
        report: List[str] = []
        first_live, store_problems = _inspect_store(path)
        report += _repair_log(path, first_live, node_id)
        if store_problems:
            report += _repair_store(path)
        report += _repair_slots(path)
        digests = os.path.join(path, "digests.bin")
        if report and os.path.exists(digests):
            os.unlink(digests)
            report.append("digests.bin: removed (derived; rebuilt on use)")
        return report
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the log


def _segment_numbers(logdir: str) -> List[int]:
    out = []
    for name in os.listdir(logdir):
        m = _SEG_NAME.match(name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def _seg_name(no: int) -> str:
    return "%08d.seg" % no


def _empty_segment(no: int, node_id: int) -> bytes:
    """A segment header (see csrc/abase.h) and no records."""
    head = b"ABLOGSEG" + struct.pack("<IIQII", lib.ABASE_FORMAT_VERSION, lib.ABASE_SEG_HEADER_SIZE, no,
                                     node_id, 0) + struct.pack("<Q", 0) + bytes(20)
    return head + struct.pack("<I", lib.abase_crc_mask(lib.abase_crc32c(0, head, len(head))))


def _aside(src_dir: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``name.damaged`` (or ``name.damaged.N`` if taken), synced."""
    target = name + ".damaged"
    n = 1
    while os.path.exists(os.path.join(src_dir, target)):
        target = f"{name}.damaged.{n}"
        n += 1
    with open(os.path.join(src_dir, target), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return target


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verify(data, no: int):
    """``abase_segment_verify`` of the bytes ``data`` (bytes or a mapping)."""
    out = ffi.new("abase_verify *")
    if not len(data):
        rc = lib.abase_segment_verify(ffi.NULL, 0, no, out)
    else:
        buf = ffi.from_buffer(data)
        try:
            rc = lib.abase_segment_verify(buf, len(data), no, out)
        finally:
            ffi.release(buf)  # the mapping can be closed again
    if rc != 0:
        raise ValueError(f"abase_segment_verify: status {rc}")
    return out


def _repair_log(path: str, first_live: int, node_id: int) -> List[str]:
    logdir = os.path.join(path, "log")
    if not os.path.isdir(logdir):
        return []
    report: List[str] = []
    live = [no for no in _segment_numbers(logdir) if no >= first_live]
    if not live:
        return []
    present = set(live)
    changed = False
    for no in range(live[0], live[-1] + 1):
        name = _seg_name(no)
        rel = f"log/{name}"
        full = os.path.join(logdir, name)
        if no not in present:
            with open(full, "wb") as f:
                f.write(_empty_segment(no, node_id))
                os.fsync(f.fileno())
            report.append(f"{rel}: missing from the log; replaced by an empty segment")
            changed = True
            continue
        with open(full, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                data = b""
                v = _verify(data, no)
            else:
                with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as data:
                    v = _verify(data, no)
                    if v.status == 0:
                        continue
                    cut = int(v.good_end)
                    tail = bytes(data[cut:]).rstrip(b"\0")
            why = ffi.string(v.why).decode()
            if v.status == 0:
                continue
            if size == 0 or v.good_end == 0:
                whole = b"" if size == 0 else tail
                aside = _aside(logdir, name, whole) if whole else None
                f.seek(0)
                f.truncate(0)
                f.write(_empty_segment(no, node_id))
                f.flush()
                os.fsync(f.fileno())
                report.append(f"{rel}: {why}; all {size} bytes dropped"
                              + (f" (kept in log/{aside})" if aside else "") + "; replaced by an empty segment")
            else:
                aside = _aside(logdir, name, tail) if tail else None
                f.truncate(cut)
                os.fsync(f.fileno())
                batch = f", {v.batch_records} record(s) of an unfinished batch among them" if v.batch_records else ""
                report.append(f"{rel}: {why} at offset {v.bad_offset}; cut at offset {cut} after "
                              f"{v.records} good record(s); {len(tail)} byte(s) dropped{batch}"
                              + (f" (kept in log/{aside})" if aside else ""))
            changed = True
    if changed:
        _fsync_dir(logdir)
    return report


# -------------------------------------------------------------- the store


def _namespace_ids(txn) -> List[int]:
    ids = []
    for name, _ in txn.cursor():
        if name.startswith(b"n:"):
            try:
                ids.append(int(name[2:]))
            except ValueError:
                continue
    return ids


def _inspect_store(path: str) -> Tuple[int, bool]:
    """(first live segment, whether the store needs repair), read-only."""
    env = lmdb.open(os.path.join(path, "store"), readonly=True, lock=False, max_dbs=1 << 16,
                    subdir=True, create=False)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(db=meta) as txn:
            raw = txn.get(b"compacted_through")
        first_live = 0 if raw is None or len(raw) != 8 else _U64.unpack(raw)[0] + 1
        return first_live, bool(_store_problems(env, meta, fix=None))
    finally:
        env.close()


def _store_problems(env, meta, fix: Optional[list]) -> List[str]:
    """Findings in the store; with ``fix`` (a list collecting the report),
    deletes undecodable versions and adds missing tombstone entries."""
    problems: List[str] = []
    try:
        tombs = env.open_db(b"tombstones", create=False)
    except lmdb.NotFoundError:
        tombs = None
    with env.begin() as txn:
        ids = _namespace_ids(txn)
    dbs = {ns: env.open_db(b"n:%d" % ns, create=False) for ns in ids}
    with env.begin(write=fix is not None, buffers=False) as txn:
        indexed: Set[bytes] = set()
        if tombs is not None:
            for tk, _key in txn.cursor(db=tombs):
                indexed.add(bytes(tk))
        for ns, dbi in sorted(dbs.items()):
            entries = [(k, v) for k, v in txn.cursor(db=dbi)]
            slot = txn.get(empty_key_slot(ns), db=meta)
            if slot is not None:
                entries.append((b"", slot))
            for key, raw in entries:
                try:
                    kind, hlc, node = decode(raw)[:3]
                except CorruptionError as exc:
                    problems.append(f"store namespace {ns} key {key!r}: {exc}; deleted")
                    if fix is not None:
                        txn.delete(key if key else empty_key_slot(ns), db=dbi if key else meta)
                    continue
                if kind == TOMBSTONE and tombs is not None:
                    tk = Store.tomb_key(hlc, node, ns, key)
                    if tk not in indexed:
                        problems.append(f"store namespace {ns} key {key!r}: tombstone missing from the "
                                        "tombstone index; added")
                        if fix is not None:
                            txn.put(tk, key, db=tombs)
        if fix is not None:
            fix += problems
    return problems


def _repair_store(path: str) -> List[str]:
    store = Store(path)
    try:
        report: List[str] = []
        _store_problems(store.env, store.meta, fix=report)
        return report
    finally:
        store.close()


# -------------------------------------------------------------- slots.json


def _repair_slots(path: str) -> List[str]:
    slots = os.path.join(path, "slots.json")
    try:
        with open(slots, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    try:
        parse_slots_file(data, slots)
    except CorruptionError as exc:
        aside = _aside(path, "slots.json", data)
        os.unlink(slots)
        _fsync_dir(path)
        return [f"slots.json: {exc}; moved to {aside} (its replication slots are dropped)"]
    return []
