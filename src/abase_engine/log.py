"""The log layer: the only Python module that calls the C core's log and index.

:class:`Log` owns one ``abase_db`` handle: the segment files under
``<dir>/log``, the in-memory hash index over them and the engine's HLC.
Everything here speaks in namespace ids, packed HLCs and raw bytes; the
engine above turns those into names, :class:`~abase_engine.record.Timestamp`
values and merge semantics.

Thread-safety: safe. The C core guards its state with a read-write lock and
cffi releases the GIL during each call; each thread gets its own output
buffers. :meth:`Log.close` must not race with other calls.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from ._abase import ffi, lib
from ._fast import scan_split
from .errors import AbaseError, EngineClosedError, error_for_status
from .log_segments import LogRecord, SegmentAccess

__all__ = ["Log", "LogRecord", "DURABILITY", "MAX_KEY", "MAX_VALUE", "NS_DEFS"]

DURABILITY = {"none": lib.ABASE_DUR_NONE, "process": lib.ABASE_DUR_PROCESS, "sync": lib.ABASE_DUR_SYNC}
MAX_KEY = lib.ABASE_MAX_KEY
MAX_VALUE = lib.ABASE_MAX_VALUE
NS_DEFS = lib.ABASE_NS_DEFS
MODE_LWW = lib.ABASE_MODE_LWW
MODE_MERGE = lib.ABASE_MODE_MERGE
NOTFOUND = lib.ABASE_NOTFOUND
DELETED = lib.ABASE_DELETED
NEEDBASE = lib.ABASE_NEEDBASE
ETOOSMALL = lib.ABASE_ETOOSMALL
F_DOMINANT = lib.ABASE_F_DOMINANT
F_CHECKPOINT = lib.ABASE_F_CHECKPOINT

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
        sys_errno=int(info.sys_errno))


class _Buffers(threading.local):
    """Per-thread output buffers, so concurrent readers never share one."""

    def __init__(self) -> None:
        self.cap = _INITIAL_BUF
        self.buf = ffi.new("uint8_t[]", self.cap)
        self.info = ffi.new("abase_getinfo *")

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
    :raises CorruptionError: a bad record outside the newest segment's tail.
    :raises FormatVersionError: a segment of an unknown format version.
    """

    def __init__(self, path: str, node_id: int, segment_size: int, durability: str, first_live: int,
                 clock: Optional[Callable[[], int]] = None) -> None:
        self._clock_fn = clock
        out = ffi.new("abase_db **")
        rc = lib.abase_db_new(path.encode(), node_id, segment_size, DURABILITY[durability], out)
        if rc != 0:
            raise _error_from_status(None, rc, "open log")
        self._db = out[0]
        self.node_id = node_id
        self._tls = _Buffers()
        self.recovery = ffi.new("abase_recovery *")
        rc = lib.abase_db_recover(self._db, first_live, self.recovery)
        if rc != 0:
            err = _error_from_status(self._db, rc, "recover log")
            lib.abase_db_free(self._db)
            self._db = None
            raise err

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

    def error(self, rc: int, what: str) -> AbaseError:
        """The exception for a negative status returned by a fast path."""
        return _error_from_status(self._db, rc, what)

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        """Unmap and close every segment (no sync: call :meth:`sync` first if needed)."""
        if self._db is not None:
            lib.abase_db_free(self._db)
            self._db = None

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

    def clock(self) -> int:
        """The packed HLC last issued or observed. :raises EngineClosedError:"""
        if self._db is None:
            raise EngineClosedError("clock of a closed engine")
        return lib.abase_db_clock(self._db)

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
        lib.abase_db_clock_observe(self._db, seen)

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
        """LWW read. Returns ``(status, value, hlc, node, op)`` where status is
        >= 0 (value decided by the log), DELETED, NOTFOUND or NEEDBASE (value is
        the log's best candidate, or None when it has none)."""
        tls = self._tls
        while True:
            n = lib.abase_get(self._db, ns, key, len(key), at_hlc, at_node, MODE_LWW, tls.buf, tls.cap, tls.info)
            if n != ETOOSMALL:
                break
            tls.grow(tls.info.needed)
        info = tls.info
        if n >= 0:
            return n, ffi.buffer(tls.buf, n)[:], info.hlc, info.node, info.op
        if n == NEEDBASE:
            if info.op == 0:
                return n, None, 0, 0, 0
            return n, ffi.buffer(tls.buf, info.needed)[:], info.hlc, info.node, info.op
        if n == DELETED:
            return n, None, info.hlc, info.node, info.op
        if n == NOTFOUND:
            return n, None, 0, 0, 0
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

    def head(self, ns: int, key: bytes) -> int:
        """Address of the key's newest live record (0: none); changes on every
        append to the key and when its versions are compacted."""
        return lib.abase_head(self._db, ns, key, len(key))

    def newest(self, ns: int, key: bytes) -> Optional[Tuple[int, int]]:
        """(hlc, node) of the newest version of the key in the log, or None."""
        h = ffi.new("uint64_t *")
        nd = ffi.new("uint32_t *")
        if lib.abase_newest(self._db, ns, key, len(key), h, nd):
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
            if self._db is None:
                raise EngineClosedError("scan used after the engine was closed")
            n = lib.abase_scan_next(sc, at_hlc, at_node, mode, batch, buf, cap, count)
            if n == ETOOSMALL:
                cap *= 4
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
        lib.abase_db_stats(self._db, st)
        return {name: int(getattr(st, name)) for name in (
            "live_keys", "index_bytes", "index_capacity", "log_bytes", "log_bytes_written",
            "records_appended", "segments", "first_segment", "active_segment", "rehashing",
            "syncs", "synced_writes")}

    def check(self) -> List[str]:
        """Check every live record's crc and the index; returns findings."""
        n = lib.abase_check(self._db)
        if n == 0:
            return []
        info = ffi.new("abase_error *")
        lib.abase_db_error(self._db, info)
        where = ffi.string(info.file).decode("utf-8", "replace")
        return [f"{n} problem(s); first: {ffi.string(info.message).decode()} at {where} offset {info.offset}"]
