"""The log layer: the only Python module that calls the C core's log and index.

:class:`Log` owns one ``abase_db`` handle: the segment files under
``<dir>/log``, the in-memory hash index over them and the engine's HLC.
Everything here speaks in namespace ids, packed HLCs and raw bytes; the
engine above turns those into names, :class:`~abase_engine.record.Timestamp`
values and merge semantics.

Thread-safety: safe. The C core guards its state with a read-write lock and
cffi releases the GIL during each call; each thread gets its own output
buffers. :meth:`Log.close` may race any other call: the C core waits for the
calls in flight (its teardown gate) and every later call raises
:class:`~abase_engine.errors.EngineClosedError`. The ``abase_db`` handle
itself is freed only when the Log is garbage, so no thread (nor the C fast
path, which holds the Log through its ``fail`` callable) can ever call into
freed memory.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from ._abase import ffi, lib
from ._fast import scan_split
from .errors import AbaseError, IOFailedError, ValueTooLargeError, error_for_status, io_failed
from .log_segments import LogRecord, SegmentAccess, grown_buffer

__all__ = ["Log", "LogRecord", "TAIL_WINDOW", "DURABILITY", "MAX_KEY", "MAX_VALUE", "MAX_BATCH", "NS_DEFS"]

DURABILITY = {"none": lib.ABASE_DUR_NONE, "process": lib.ABASE_DUR_PROCESS, "sync": lib.ABASE_DUR_SYNC}
MAX_KEY = lib.ABASE_MAX_KEY
MAX_VALUE = lib.ABASE_MAX_VALUE
MAX_BATCH = lib.ABASE_MAX_BATCH
_REC_HEADER_SIZE = lib.ABASE_REC_HEADER_SIZE
NS_DEFS = lib.ABASE_NS_DEFS
MODE_LWW = lib.ABASE_MODE_LWW
MODE_MERGE = lib.ABASE_MODE_MERGE
NOTFOUND = lib.ABASE_NOTFOUND
DELETED = lib.ABASE_DELETED
NEEDBASE = lib.ABASE_NEEDBASE
ETOOSMALL = lib.ABASE_ETOOSMALL
F_DOMINANT = lib.ABASE_F_DOMINANT
F_CHECKPOINT = lib.ABASE_F_CHECKPOINT
F_TTL = lib.ABASE_F_TTL
F_TTL_RELATIVE = lib.ABASE_F_TTL_RELATIVE
EXPIRES = lib.ABASE_EXPIRES

#: Bytes of the active segment the tail keeper (csrc/tail.c) keeps mapped
#: writable ahead of the last record, so appends take no page faults.
TAIL_WINDOW = 16 << 20

_ENTRY = struct.Struct("<BBHIQII")  # merge-mode entry: op flags 0 vlen hlc node 0
_INITIAL_BUF = 64 * 1024

def _error_from_status(db, rc: int, what: str) -> Exception:
    """The exception for a failure status, with the C core's details (file,
    offset, errno, message) when it recorded them for this status. ``db``
    may be None (a failure before there is a handle)."""
    if db is None:
        return error_for_status(rc, what)
    info = ffi.new("abase_error *")
    lib.abase_db_error(db, info)
    if info.status != rc:
        return error_for_status(rc, what)
    return error_for_status(
        rc, what, message=ffi.string(info.message).decode("utf-8", "replace"),
        file=ffi.string(info.file).decode("utf-8", "replace") or None, offset=int(info.offset),
        sys_errno=int(info.sys_errno), syscall=ffi.string(info.syscall).decode("ascii", "replace"))


def _error_dict(info) -> dict:
    """An ``abase_error`` as a dict (what ``Engine.stats()["io_error"]`` shows)."""
    return {
        "file": ffi.string(info.file).decode("utf-8", "replace"),
        "syscall": ffi.string(info.syscall).decode("ascii", "replace"),
        "errno": int(info.sys_errno),
        "message": ffi.string(info.message).decode("utf-8", "replace"),
    }


def _encoded_size(parts: List[bytes]) -> int:
    """Bytes a batch takes in the log: per record 40 + key + value, padded to 8."""
    total = 0
    for i in range(0, len(parts), 2):
        total += (_REC_HEADER_SIZE + len(parts[i]) + len(parts[i + 1]) + 7) & ~7
    return total


class _Buffers(threading.local):
    """Per-thread output buffers, so concurrent readers never share one."""

    def __init__(self) -> None:
        self.cap = _INITIAL_BUF
        self.buf = ffi.new("uint8_t[]", self.cap)
        self.info = ffi.new("abase_getinfo *")
        self.addr = ffi.new("uint64_t *")

    def grow(self, need: int) -> None:
        cap = self.cap
        while cap < need:
            cap *= 2
        self.cap = cap
        self.buf = ffi.new("uint8_t[]", cap)


class Log(SegmentAccess):
    """Segments + index + clock of one engine directory.

    :param path: the engine directory (segments live in ``path/log``).
    :param node_id: this replica's node id, written into every local record.
    :param segment_size: bytes per segment before it is sealed.
    :param durability: ``"none"``, ``"process"`` or ``"sync"``.
    :param first_live: the first segment not yet compacted into the store;
        older segment files are deleted (a crash can leave them behind).
    :param clock: a callable returning wall-clock ms (tests inject one);
        None: the C core reads ``CLOCK_REALTIME`` itself.
    :param stall_log_bytes: write stalls: a local write that finds more live
        (uncompacted) log than this waits for compaction, at most
        ``stall_max_ms``; None or 0: never.
    :param tail_window: bytes the tail keeper keeps mapped writable ahead of
        the appends (``csrc/tail.c``); 0: no keeper. Never under ``"sync"``.
    :raises CorruptionError: a bad record before the durable end mark, or
        one a process kill cannot explain (see ``csrc/abase.h``).
    :raises FormatVersionError: a segment of an unknown format version.
    :raises IOFailedError: an OS call failed while recovering.
    """

    def __init__(self, path: str, node_id: int, segment_size: int, durability: str, first_live: int,
                 clock: Optional[Callable[[], int]] = None, stall_log_bytes: Optional[int] = None,
                 stall_max_ms: int = 0, tail_window: int = TAIL_WINDOW) -> None:
        self._clock_fn = clock
        out = ffi.new("abase_db **")
        rc = lib.abase_db_new(path.encode(), node_id, segment_size, DURABILITY[durability], out)
        if rc != 0:
            raise _error_from_status(None, rc, "open log")
        # Freed (abase_db_free) when this Log is garbage, never before: close()
        # only closes it, so a late caller still finds the C teardown gate.
        self._db = ffi.gc(out[0], lib.abase_db_free)
        self.node_id = node_id
        self._tls = _Buffers()
        self.recovery = ffi.new("abase_recovery *")
        rc = lib.abase_db_recover(self._db, first_live, self.recovery)
        if rc != 0:
            err = _error_from_status(self._db, rc, "recover log")
            lib.abase_db_close(self._db)
            raise err
        lib.abase_db_set_stall(self._db, stall_log_bytes or 0, stall_max_ms)
        if tail_window and durability != "sync":
            # Best effort: without the keeper (no thread could start) appends
            # take their own page faults, as they did before it existed.
            lib.abase_tail_start(self._db, tail_window)

    # -- hot paths ---------------------------------------------------------
    def fast_handle(self) -> Tuple[int, Tuple[int, int, int, int, int]]:
        """The database handle and the addresses of ``abase_put``,
        ``abase_put_nowait``, ``abase_get``, ``abase_get_nowait`` and
        ``abase_write_batch``, as integers, for ``_fast.FastPath`` (which
        maps negative statuses through :meth:`error`)."""
        def addr(obj) -> int:
            return int(ffi.cast("uintptr_t", obj))

        names = ("abase_put", "abase_put_nowait", "abase_get", "abase_get_nowait", "abase_write_batch")
        return addr(self._db), tuple(addr(ffi.addressof(lib, n)) for n in names)  # type: ignore[return-value]

    def merge_handle(self) -> Tuple[int, Tuple[int, int, int, int, int]]:
        """The database handle and the addresses of ``abase_merge_head``,
        ``abase_merge_read``, ``abase_issue``, ``abase_append_if`` and
        ``abase_merge_appends``, for
        ``_fast.CrdtPath`` (the merge-namespace fast path)."""
        def addr(obj) -> int:
            return int(ffi.cast("uintptr_t", obj))

        names = ("abase_merge_head", "abase_merge_read", "abase_issue", "abase_append_if", "abase_merge_appends")
        return addr(self._db), tuple(addr(ffi.addressof(lib, n)) for n in names)  # type: ignore[return-value]

    def apply_handle(self) -> Tuple[int, int]:
        """The database handle and the address of ``abase_apply_batch``, for
        ``_fast.ApplyPath`` (``Engine.apply`` into LWW namespaces in C)."""
        return (int(ffi.cast("uintptr_t", self._db)),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "abase_apply_batch"))))

    def error(self, rc: int, what: str) -> AbaseError:
        """The exception for a negative status returned by a fast path."""
        return _error_from_status(self._db, rc, what)

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        """Sync every segment, write the durable end mark (a clean close),
        then unmap and close everything. After an I/O failure nothing is
        synced or marked (the failure is already recorded).

        Safe against concurrent calls from other threads: waits until the C
        calls in flight have returned; later calls raise EngineClosedError.
        Safe to call twice. (The C handle itself is freed only when this Log
        is garbage, so a late caller still finds the teardown gate.)

        :raises IOFailedError: the closing sync failed (the log is closed
            all the same; what was acknowledged under ``"process"`` is in
            the page cache, and recovery treats the tail past the mark as
            possibly torn).
        """
        if self.closed:
            return
        rc = 0 if self.failure() is not None else lib.abase_db_checkpoint(self._db)
        err = _error_from_status(self._db, rc, "close") if rc not in (0, lib.ABASE_ECLOSED) else None
        lib.abase_db_close(self._db)
        if err is not None:
            raise err

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun."""
        return bool(lib.abase_db_closed(self._db))

    # -- the sticky I/O failure and write stalls -----------------------------
    def failure(self) -> Optional[dict]:
        """The first I/O failure (``file``, ``syscall``, ``errno``,
        ``message``) after which writes are refused, or None."""
        info = ffi.new("abase_error *")
        if lib.abase_db_failure(self._db, info):
            return _error_dict(info)
        return None

    def fail(self, exc: IOFailedError) -> None:
        """Refuse every later write: an I/O call outside the log (the
        store's commit) failed with ``exc``."""
        lib.abase_db_fail(self._db, exc.errno or 0, (exc.file or "").encode("utf-8", "replace"),
                          (exc.syscall or "").encode("ascii", "replace")[:31],
                          exc.reason.encode("utf-8", "replace")[:255])

    def check_writable(self, what: str) -> None:
        """:raises IOFailedError: writes are refused after an I/O failure."""
        f = self.failure()
        if f is not None:
            raise io_failed(f"{what}: writes refused after an earlier I/O failure ({f['message']}); "
                            "reopen the engine", f["file"] or None, f["syscall"] or None, f["errno"])

    def stall(self) -> None:
        """Wait, at most the configured bound, while the live log is over
        the stall limit (before writing received records; local writes
        stall in C)."""
        lib.abase_stall(self._db)

    def stalled_writers(self, at_least: int = 0, timeout_ms: int = 0) -> int:
        """How many writes are stalled now; with ``at_least``, first wait
        (at most ``timeout_ms``) until that many are."""
        return lib.abase_stall_waiters(self._db, at_least, timeout_ms)

    def _fail(self, rc: int, what: str) -> AbaseError:
        return _error_from_status(self._db, rc, what)

    # -- clock -----------------------------------------------------------
    @property
    def real_clock(self) -> bool:
        """True unless a wall clock was injected (the C fast paths need the real one)."""
        return self._clock_fn is None

    def wall(self) -> int:
        """The wall-clock reading passed to the C core: -1 (read
        ``CLOCK_REALTIME`` in C) unless a clock was injected.

        :raises ValueError: the injected clock returned a negative value.
        """
        fn = self._clock_fn
        if fn is None:
            return -1
        ms = int(fn())
        if ms < 0:
            raise ValueError(f"clock returned {ms}: wall-clock ms must be >= 0")
        return ms

    def wall_ms(self) -> int:
        """Wall-clock milliseconds now (the injected clock's, if any)."""
        fn = self._clock_fn
        return int(fn()) if fn is not None else int(time.time() * 1000)

    def clock_ms(self) -> int:
        """The HLC's physical clock now, in ms: the wall clock (the injected
        one, if any), or the clock's last timestamp when that is ahead (a
        remote timestamp raised it). Reads of the latest value judge expiry
        by it (see ttl.py). :raises EngineClosedError:"""
        return max(self.wall_ms(), self.clock() >> 16)

    def clock(self) -> int:
        """The packed HLC last issued or observed. :raises EngineClosedError:"""
        out = ffi.new("uint64_t *")
        rc = lib.abase_db_clock(self._db, out)
        if rc != 0:
            raise self._fail(rc, "clock")
        return int(out[0])

    def clock_now(self) -> int:
        """Issue a local timestamp (packed) without writing anything."""
        wall_ms = self.wall()
        out = ffi.new("uint64_t *")
        while True:
            rc = lib.abase_db_clock_now(self._db, wall_ms, out)
            if rc != lib.ABASE_EAGAIN:
                break
            if wall_ms >= 0:
                raise AbaseError("logical clock exhausted for this millisecond and the injected clock did not advance")
        if rc != 0:
            raise self._fail(rc, "clock")
        return int(out[0])

    def clock_observe(self, seen: int) -> None:
        """Raise the clock to at least ``seen`` (a packed HLC of our own past)."""
        rc = lib.abase_db_clock_observe(self._db, seen)
        if rc != 0:
            raise self._fail(rc, "clock observe")

    def clock_update(self, remote: int, max_skew_ms: int) -> int:
        """Receive event for a remote packed HLC. :raises ClockSkewError:"""
        out = ffi.new("uint64_t *")
        rc = lib.abase_db_clock_update(self._db, remote, self.wall(), max_skew_ms, out)
        if rc != 0:
            raise self._fail(rc, "clock update")
        return int(out[0])

    # -- writes ----------------------------------------------------------
    def put(self, ns: int, op: int, key: bytes, value: bytes) -> int:
        """Append a local put (op 1) or delete (op 2); returns the packed HLC."""
        rc = lib.abase_put(self._db, ns, op, key, len(key), value, len(value), self.wall())
        if rc < 0:
            raise self._fail(rc, "put" if op == 1 else "delete")
        return rc

    def write_batch(
        self,
        ops: bytes,
        nss: Sequence[int],
        parts: List[bytes],
        hlcs: Optional[Sequence[int]] = None,
        nodes: Optional[Sequence[int]] = None,
        bases: Optional[Sequence[Tuple[int, int]]] = None,
        modes: Optional[bytes] = None,
        flags: Optional[bytes] = None,
    ) -> Tuple[int, Optional[List[int]]]:
        """Append records atomically. ``parts`` alternates key, value.

        Without ``hlcs`` the records are local writes and get fresh timestamps;
        with them (replication) each record keeps its own and is skipped when
        it changes nothing (see ``abase_write_batch``). Returns the last HLC
        and, with ``hlcs``, a list of 1 (appended) / 0 (skipped).
        """
        n = len(ops)
        encoded = sum(len(p) for p in parts) + n * (_REC_HEADER_SIZE + 7)
        if encoded > MAX_BATCH and _encoded_size(parts) > MAX_BATCH:
            raise ValueTooLargeError(
                f"write batch of {_encoded_size(parts)} encoded bytes; the maximum is {MAX_BATCH} "
                "(each record: 40 bytes + key + value, padded to 8)")
        wall_ms = self.wall()
        blob = b"".join(parts)
        lens = ffi.new("uint32_t[]", [len(p) for p in parts])
        c_nss = ffi.new("uint32_t[]", list(nss))
        status = None
        if hlcs is None:
            rc = lib.abase_write_batch(self._db, n, ops, c_nss, blob, lens, ffi.NULL, ffi.NULL, ffi.NULL,
                                       ffi.NULL, ffi.NULL, ffi.NULL, flags or ffi.NULL, wall_ms)
        else:
            assert nodes is not None and bases is not None and modes is not None
            status = ffi.new("uint8_t[]", n)
            rc = lib.abase_write_batch(
                self._db, n, ops, c_nss, blob, lens,
                ffi.new("uint64_t[]", list(hlcs)), ffi.new("uint32_t[]", list(nodes)),
                ffi.new("uint64_t[]", [b[0] for b in bases]), ffi.new("uint32_t[]", [b[1] for b in bases]),
                modes, status, flags or ffi.NULL, wall_ms,
            )
        if rc < 0:
            raise self._fail(rc, "write batch")
        return rc, (list(status) if status is not None else None)

    def sync(self) -> None:
        """fdatasync every segment that holds unsynced records."""
        rc = lib.abase_sync(self._db)
        if rc != 0:
            raise self._fail(rc, "sync")

    # -- reads -----------------------------------------------------------
    def get_lww(self, ns: int, key: bytes, at_hlc: int, at_node: int):
        """LWW read. Returns ``(status, value, hlc, node, op, expire_at)``
        where status is >= 0 (value decided by the log), EXPIRES (value
        decided by the log, with the expiry ``expire_at``: the caller
        compares it with its time), DELETED, NOTFOUND or NEEDBASE (value is
        the log's best candidate, or None when it has none; ``expire_at`` is
        its expiry). ``expire_at`` is 0 for a version without one."""
        tls = self._tls
        while True:
            n = lib.abase_get(self._db, ns, key, len(key), at_hlc, at_node, MODE_LWW, tls.buf, tls.cap, tls.info)
            if n != ETOOSMALL:
                break
            tls.grow(tls.info.needed)
        info = tls.info
        if n >= 0:
            return n, ffi.buffer(tls.buf, n)[:], info.hlc, info.node, info.op, 0
        if n == NEEDBASE or n == EXPIRES:
            if info.op == 0:
                return n, None, 0, 0, 0, 0
            return n, ffi.buffer(tls.buf, info.needed)[:], info.hlc, info.node, info.op, info.expire_at
        if n == DELETED:
            return n, None, info.hlc, info.node, info.op, 0
        if n == NOTFOUND:
            return n, None, 0, 0, 0, 0
        raise self._fail(n, "get")

    def get_versions(self, ns: int, key: bytes, at_hlc: int, at_node: int):
        """Merge-mode read: ``(complete, [(op, flags, hlc, node, value), ...])`` newest first."""
        tls = self._tls
        while True:
            n = lib.abase_get(self._db, ns, key, len(key), at_hlc, at_node, MODE_MERGE, tls.buf, tls.cap, tls.info)
            if n != ETOOSMALL:
                break
            tls.grow(tls.info.needed)
        if n == NOTFOUND:
            return False, []
        if n < 0:
            raise self._fail(n, "get")
        data = ffi.buffer(tls.buf, n)[:]
        out = []
        off = 0
        unpack = _ENTRY.unpack_from
        for _ in range(tls.info.nrecords):
            op, flags, _z, vlen, hlc, node, _z2 = unpack(data, off)
            off += 24
            out.append((op, flags, hlc, node, data[off:off + vlen]))
            off += (vlen + 7) & ~7
        return bool(tls.info.complete), out

    def merge_walk(self, ns: int, key: bytes, limit: int) -> int:
        """How many log records a merge-mode read of the key walks (at most ``limit``)."""
        rc = lib.abase_merge_walk(self._db, ns, key, len(key), limit)
        if rc < 0:
            raise self._fail(rc, "merge walk")
        return rc

    def head(self, ns: int, key: bytes) -> int:
        """Address of the key's newest live record (0: none); changes on every
        append to the key and when its versions are compacted."""
        out = self._tls.addr
        rc = lib.abase_head(self._db, ns, key, len(key), out)
        if rc != 0:
            raise self._fail(rc, "head")
        return int(out[0])

    def newest(self, ns: int, key: bytes) -> Optional[Tuple[int, int]]:
        """(hlc, node) of the newest version of the key in the log, or None."""
        h = ffi.new("uint64_t *")
        nd = ffi.new("uint32_t *")
        rc = lib.abase_newest(self._db, ns, key, len(key), h, nd)
        if rc < 0:
            raise self._fail(rc, "newest")
        if rc:
            return int(h[0]), int(nd[0])
        return None

    def scan(self, ns: int, start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
             reverse: bool, at_hlc: int, at_node: int, merge_mode: bool, batch: int = 512) -> Iterator[tuple]:
        """Yield ``(key, status, value, hlc, node, op)`` for the log's keys in key order.

        The key list and each key's newest record are fixed when the scan
        starts (take the snapshot first); each key is resolved as of
        ``(at_hlc, at_node)`` when its batch is read.
        """
        for chunk in self.scan_chunks(ns, start, stop, prefix, reverse, at_hlc, at_node, merge_mode, batch):
            yield from chunk

    def scan_handle(self, ns: int, start: Optional[bytes], stop: Optional[bytes], reverse: bool,
                    at_hlc: int, at_node: int, copy_limit: int) -> Tuple[int, int, int]:
        """Open an LWW scan of the log's keys for C code (``_fast.ScanIter``):
        ``(scan, abase_scan_next, abase_scan_free)`` as addresses. The keys
        are fixed and resolved as of ``(at_hlc, at_node)`` now, and copied
        with their values when the live log is at most ``copy_limit`` bytes
        (``abase_scan_open_at``). The caller owns the scan: it must be freed
        with abase_scan_free (or :meth:`scan_free`).

        :raises EngineClosedError: the log is closed.
        """
        if self._db is None:
            raise EngineClosedError("scan on a closed engine")
        out = ffi.new("abase_scan **")
        s = b"" if start is None else start
        e = b"" if stop is None else stop
        rc = lib.abase_scan_open_at(self._db, ns, s, len(s), start is not None, e, len(e), stop is not None,
                                    b"", 0, 1 if reverse else 0, at_hlc, at_node, copy_limit, out)
        if rc != 0:
            raise self._fail(rc, "scan")

        def addr(obj) -> int:
            return int(ffi.cast("uintptr_t", obj))

        return addr(out[0]), addr(ffi.addressof(lib, "abase_scan_next")), addr(ffi.addressof(lib, "abase_scan_free"))

    @staticmethod
    def scan_free(handle: int) -> None:
        """Free a scan from :meth:`scan_handle` that was never handed over."""
        lib.abase_scan_free(ffi.cast("abase_scan *", handle))

    def scan_chunks(self, ns: int, start: Optional[bytes], stop: Optional[bytes], prefix: Optional[bytes],
                    reverse: bool, at_hlc: int, at_node: int, merge_mode: bool,
                    batch: int = 512) -> Iterator[list]:
        """:meth:`scan` a list of entries at a time.

        :raises EngineClosedError: the log is closed."""
        if self._db is None:
            raise EngineClosedError("scan on a closed engine")
        out = ffi.new("abase_scan **")
        s = b"" if start is None else start
        e = b"" if stop is None else stop
        p = b"" if prefix is None else prefix
        rc = lib.abase_scan_open(self._db, ns, s, len(s), start is not None, e, len(e), stop is not None,
                                 p, len(p), 1 if reverse else 0, out)
        if rc != 0:
            raise self._fail(rc, "scan")
        sc = ffi.gc(out[0], lib.abase_scan_free)
        cap = _INITIAL_BUF
        buf = ffi.new("uint8_t[]", cap)
        count = ffi.new("uint32_t *")
        mode = MODE_MERGE if merge_mode else MODE_LWW
        while True:
            n = lib.abase_scan_next(sc, at_hlc, at_node, mode, batch, buf, cap, count)
            if n == ETOOSMALL:
                cap = grown_buffer(cap, "scan")
                buf = ffi.new("uint8_t[]", cap)
                continue
            if n < 0:
                raise self._fail(n, "scan")
            if n == 0:
                return
            yield scan_split(ffi.buffer(buf, n), count[0])

    # -- introspection ---------------------------------------------------
    def stats(self) -> dict:
        """Counters of the C core (see ``abase_stats`` in abase.h)."""
        st = ffi.new("abase_stats *")
        rc = lib.abase_db_stats(self._db, st)
        if rc != 0:
            raise self._fail(rc, "stats")
        return {name: int(getattr(st, name)) for name in (
            "live_keys", "index_bytes", "index_capacity", "log_bytes", "log_bytes_written",
            "records_appended", "segments", "first_segment", "active_segment", "rehashing",
            "syncs", "synced_writes", "durable_end", "stalls", "stall_ns", "stalled_writers", "failed")}

    def check(self) -> List[str]:
        """Check every live record's crc and the index; returns findings."""
        n = lib.abase_check(self._db)
        if n < 0:
            raise self._fail(n, "check")
        if n == 0:
            return []
        info = ffi.new("abase_error *")
        lib.abase_db_error(self._db, info)
        where = ffi.string(info.file).decode("utf-8", "replace")
        return [f"{n} problem(s); first: {ffi.string(info.message).decode()} at {where} offset {info.offset}"]
