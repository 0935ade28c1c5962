"""The segment side of the log: what the compactor and the change feed use.

:class:`SegmentAccess` is part of :class:`~abase_engine.log.Log` (a base
class, so one object owns the C handle): sealing and listing segments,
prefaulting the active one (and the tail keeper that does it), the compaction fold over sealed segments,
``compacted_through`` and retiring a folded segment, and reading records
back in log order from a position (the change feed). Like ``log.py`` it
speaks namespace ids, packed HLCs and raw bytes.

Thread-safety: safe; the C core takes its own locks (see
``csrc/log_internal.h``). The fold and feed buffers are per call.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterator, List, Sequence, Tuple

from ._abase import ffi, lib
from ._fast import fold_split
from .errors import CorruptionError, SlotInvalidatedError

__all__ = ["SegmentAccess", "LogRecord", "grown_buffer", "MAX_RECORD"]

NOTFOUND = lib.ABASE_NOTFOUND
ETOOSMALL = lib.ABASE_ETOOSMALL
EINVAL = lib.ABASE_EINVAL
NS_DEFS = lib.ABASE_NS_DEFS
#: The largest raw record the format allows (header, key, value, padding):
#: a read buffer never needs to grow past it.
MAX_RECORD = (40 + lib.ABASE_MAX_KEY + lib.ABASE_MAX_VALUE + 7) & ~7

_REC_HEADER = struct.Struct("<IIQQIIBBHI")  # crc len prev hlc node ns op flags klen vlen

#: One record as the compactor and the feed see it.
LogRecord = Tuple[int, bytes, int, int, int, int, bytes]  # ns, key, op, flags, hlc, node, value


def grown_buffer(cap: int, what: str) -> int:
    """The next read-buffer size after ``cap`` was too small for one record
    (x4, at most MAX_RECORD, plus room for a fold or scan entry's own header).

    :raises CorruptionError: ``cap`` already held the largest record.
    """
    limit = MAX_RECORD + 64
    if cap >= limit:
        raise CorruptionError(f"{what}: a record larger than the format allows ({cap} bytes did not fit it)")
    return min(cap * 4, limit)


class SegmentAccess:
    """Segment operations of a :class:`~abase_engine.log.Log` (see the module docstring)."""

    _db: Any  # the abase_db handle, owned by Log
    _fail: Callable[[int, str], Exception]  # Log's status -> exception

    def prefault(self, max_bytes: int) -> int:
        """Fault in up to ``max_bytes`` of the active segment ahead of the
        appends (off the write path); returns the bytes populated."""
        return lib.abase_prefault(self._db, max_bytes)

    def tail_info(self) -> dict:
        """The tail keeper's state (``csrc/tail.c``): ``running``,
        ``supported`` (False once the kernel refused MADV_POPULATE_WRITE),
        ``window`` (bytes kept mapped writable ahead of the last record),
        ``rounds``, ``populated`` (bytes populated, renewals included) and
        ``filled_to`` (the address, segment << 32 | offset, populated up to)."""
        info = ffi.new("abase_tail_info *")
        lib.abase_tail_info_get(self._db, info)
        return {"running": bool(info.running), "supported": bool(info.supported), "window": int(info.window),
                "rounds": int(info.rounds), "populated": int(info.populated), "filled_to": int(info.filled_to)}

    def tail_sync(self, timeout_ms: int = 10_000) -> bool:
        """Wake the tail keeper and wait until it finished a round begun
        after this call; False if ``timeout_ms`` passed first.

        :raises ValueError: no tail keeper runs (durability ``"sync"``, or
            the kernel cannot populate).
        :raises EngineClosedError: the log is closed.
        """
        rc = lib.abase_tail_sync(self._db, timeout_ms)
        if rc == lib.ABASE_EAGAIN:
            return False
        if rc == EINVAL:
            raise ValueError("no tail keeper runs on this log")
        if rc != 0:
            raise self._fail(rc, "tail sync")
        return True

    def seal(self) -> None:
        """Seal the active segment if it holds records, so compaction can take it."""
        rc = lib.abase_seal(self._db)
        if rc != 0:
            raise self._fail(rc, "seal")

    def segments(self) -> List[dict]:
        """Live segments, oldest first: no, sealed, used, max_hlc, max_node, records."""
        n = lib.abase_segments(self._db, ffi.NULL, 0)
        if n < 0:
            raise self._fail(n, "segments")
        cap = n + 8
        while True:  # a segment may be created between the two calls
            arr = ffi.new("abase_segstat[]", cap)
            n = lib.abase_segments(self._db, arr, cap)
            if n < 0:
                raise self._fail(n, "segments")
            if n <= cap:
                break
            cap = n + 8
        return [
            {"no": s.no, "sealed": bool(s.sealed), "used": s.used, "max_hlc": s.max_hlc,
             "max_node": s.max_node, "records": s.records}
            for s in (arr[i] for i in range(n))
        ]

    def segment_records(self, seg_no: int, chunk: int = 4 << 20) -> Iterator[LogRecord]:
        """Yield every record of a sealed segment in log order."""
        off = ffi.new("uint64_t *", 0)
        cap = chunk
        buf = ffi.new("uint8_t[]", cap)
        unpack = _REC_HEADER.unpack_from
        while True:
            n = lib.abase_segment_read(self._db, seg_no, off, buf, cap)
            if n == ETOOSMALL:
                cap = grown_buffer(cap, f"segment {seg_no}")
                buf = ffi.new("uint8_t[]", cap)
                continue
            if n < 0:
                raise self._fail(n, f"read segment {seg_no}")
            if n == 0:
                return
            data = ffi.buffer(buf, n)[:]
            pos = 0
            while pos < n:
                _crc, length, _prev, hlc, node, ns, op, flags, klen, vlen = unpack(data, pos)
                k0 = pos + 40
                yield ns, data[k0:k0 + klen], op, flags, hlc, node, data[k0 + klen:k0 + klen + vlen]
                pos += (length + 7) & ~7

    def fold_entries(self, first_no: int, n_segs: int, lww_ns: Sequence[int],
                     chunk: int = 1 << 20) -> Iterator[tuple]:
        """Yield ``(pairs, tombs, rest, nbytes)`` per chunk of the sealed
        segments ``first_no .. first_no + n_segs - 1`` together, in
        (namespace, key, newest first) order; see ``abase_fold_open`` and
        ``_fast.fold_split``.

        ``pairs``: ``{ns: [(key, stored value), ...]}`` for keys of namespaces
        in ``lww_ns`` whose newest record was DOMINANT (nothing in the store
        can be newer), ready for the store; ``tombs``: ``(ns, key, hlc, node)``
        of the deletes among them; ``rest``: ``(ns, key, op, flags, count, hlc,
        node, data)`` for every other entry, where ``data`` is the store
        encoding for ``lww_ns`` namespaces and the raw value otherwise;
        ``nbytes``: key + value bytes of the pairs. Namespace definitions
        (``NS_DEFS``) always come in ``rest``.
        """
        ids = sorted(set(lww_ns))
        id_set = set(ids) - {NS_DEFS}  # definitions go to the store's meta: always in ``rest``
        out = ffi.new("abase_fold **")
        what = f"fold segments {first_no}..{first_no + n_segs - 1}"
        rc = lib.abase_fold_open(self._db, first_no, n_segs, ffi.new("uint32_t[]", ids or [0]), len(ids), out)
        if rc != 0:
            raise self._fail(rc, what)
        fold = ffi.gc(out[0], lib.abase_fold_free)
        cap = chunk
        buf = ffi.new("uint8_t[]", cap)
        items = ffi.new("uint32_t *")
        while True:
            n = lib.abase_fold_next(fold, buf, cap, items)
            if n == ETOOSMALL:
                cap = grown_buffer(cap, what)
                buf = ffi.new("uint8_t[]", cap)
                continue
            if n < 0:
                raise self._fail(n, what)
            if n == 0:
                return
            yield fold_split(ffi.buffer(buf, n), items[0], id_set)

    def check_position(self, seg_no: int, offset: int) -> None:
        """Prove that ``(seg_no, offset)`` is a position the log really has:
        a record boundary of a live segment (offset 0: its first record) or
        the end of the log. The C core walks the segment's records from its
        header (bounded by per-segment marks), so a position inside a
        record, even one whose bytes look like a valid record, is refused.

        :raises ValueError: not a record boundary of this log.
        :raises SlotInvalidatedError: the position was compacted away.
        :raises EngineClosedError: the engine is closed.
        """
        if not 0 <= seg_no <= 0xFFFFFFFF or not 0 <= offset < 1 << 64:
            raise ValueError(f"log position ({seg_no}, {offset}) is out of range")
        rc = lib.abase_log_check(self._db, seg_no, offset)
        if rc == NOTFOUND:
            raise SlotInvalidatedError(
                f"log position ({seg_no}, {offset}) was compacted away; fall back to anti-entropy")
        if rc == EINVAL:
            raise ValueError(f"log position ({seg_no}, {offset}) is not a record boundary of this log")
        if rc != 0:
            raise self._fail(rc, "check log position")

    def read_from(self, seg_no: int, offset: int, chunk: int = 1 << 20) -> Iterator[Tuple[int, int, LogRecord]]:
        """Yield ``(seg_no, next_offset, record)`` for every record from the
        position on, in log order, up to the end of the log as it is now.

        The position is proven first (:meth:`check_position`); the read
        buffer grows only to fit one record, never past the largest record
        the format allows.

        :raises ValueError: the position is not a record boundary of this log.
        :raises SlotInvalidatedError: the position was compacted away.
        :raises EngineClosedError: the engine is closed (also mid-iteration).
        """
        self.check_position(seg_no, offset)
        seg = ffi.new("uint32_t *", seg_no)
        off = ffi.new("uint64_t *", offset)
        cap = chunk
        buf = ffi.new("uint8_t[]", cap)
        unpack = _REC_HEADER.unpack_from
        while True:
            n = lib.abase_log_read(self._db, seg, off, buf, cap)
            if n == ETOOSMALL:
                cap = grown_buffer(cap, "read log")
                buf = ffi.new("uint8_t[]", cap)
                continue
            if n == NOTFOUND:
                raise SlotInvalidatedError(
                    f"log position ({seg[0]}, {off[0]}) was compacted away; fall back to anti-entropy")
            if n < 0:
                raise self._fail(n, "read log")
            if n == 0:
                return
            data = ffi.buffer(buf, n)[:]
            base_seg, base_off = seg[0], off[0]
            pos = 0
            while pos < n:
                _crc, length, _prev, hlc, node, ns, op, flags, klen, vlen = unpack(data, pos)
                k0 = pos + 40
                rec = (ns, data[k0:k0 + klen], op, flags, hlc, node, data[k0 + klen:k0 + klen + vlen])
                pos += (length + 7) & ~7
                yield base_seg, base_off + pos, rec
            off[0] = base_off + n

    def lag(self, seg_no: int, offset: int) -> int:
        """Bytes of records from the position to the end of the log.

        :raises EngineClosedError: the engine is closed.
        """
        n = lib.abase_log_lag(self._db, seg_no, offset)
        if n < 0:
            raise self._fail(n, "lag")
        return n

    def compacted_through(self, seg_no: int) -> None:
        """Reads stop seeing versions in segments <= seg_no (they are in the store now)."""
        rc = lib.abase_compacted_through(self._db, seg_no)
        if rc != 0:
            raise self._fail(rc, "compacted_through")

    def retire(self, seg_no: int, budget: int = 512) -> None:
        """Drop index entries whose newest version was in seg_no, a chunk at a
        time so foreground calls wait at most one chunk; then delete the file."""
        off = ffi.new("uint64_t *", 0)
        while True:
            more = lib.abase_retire_step(self._db, seg_no, off, budget)
            if more < 0:
                raise self._fail(more, f"retire segment {seg_no}")
            if not more:
                break
        rc = lib.abase_segment_drop(self._db, seg_no)
        if rc != 0:
            raise self._fail(rc, f"drop segment {seg_no}")
