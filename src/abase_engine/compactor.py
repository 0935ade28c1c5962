"""The compactor: folds sealed log segments into the store, then frees them.

One step takes the oldest sealed segment, folds every key's versions in it
over the key's stored version with the namespace's merge operator, and
writes the results together with the marker "compacted through segment N"
and the HLC high-water mark in ONE LMDB write transaction. Only after that
commit is on disk does it tell the log that the segment is compacted (reads
then go to the store), drop the index entries whose newest version was in
it, and delete the file. A crash anywhere in between leaves either the
segment live and the store unchanged, or the store committed and the
segment ignored (and deleted) at the next open: merge operands are never
folded twice.

A segment that holds versions newer than an open snapshot waits until the
snapshot closes, so ``get(at=...)`` keeps seeing the history it needs.

Collaborators (given explicitly, never the whole engine): the log and the
store; the catalog (which namespaces are LWW, and the operators of the
others); ``oldest_pin`` and ``retention_floor`` (what open snapshots, scans,
feeds and replication slots still need); the engine's ``fold_lock`` (held
across the store commit and ``compacted_through``, so ``apply`` never reads
the store and the log disagreeing) and ``merge_lock`` (held while purging
tombstones, with the digest tree's upkeep); and the digest tree, told about
purged tombstones.

Locks: one compaction pass runs at a time (the pass lock); the thread and
``Engine.compact(wait=True)`` share it. Lock order: merge lock, fold lock.

I/O failures: a store commit that fails (``IOFailedError``) makes the log
refuse every later write (``Log.fail``), compaction included: the store may
hold less than the commit meant to write, and the segments it folded stay
live, so reopening replays them. After any I/O failure a pass refuses to
start and the thread stops.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import lmdb

from .errors import AbaseError, EngineClosedError, IOFailedError
from .log import NS_DEFS, Log
from .record import Op
from .resolve import Version, fold_lww, fold_merge
from .store import EXPIRY_BIT, TOMBSTONE, VALUE, Store, decode, encode, expiry_of
from .timing import PASS_BOUNDS, LatencyHistogram

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .digest import DigestTree
    from .ranges import Folding, RangeTombstones

__all__ = ["Compactor", "fold_lww", "fold_merge"]  # the folds live in resolve.py

_logger = logging.getLogger("abase_engine.compactor")

_PUT, _DELETE, _MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)
_DOMINANT = 0x01  # record flag, see csrc/abase.h
_STORED_TS = struct.Struct("<QI")  # hlc, node after a stored version's kind byte (store.py)


class Compactor:
    """Background folding of sealed segments into the store.

    :param log, store: the two layers.
    :param catalog: which namespaces are LWW; the operators of the others.
    :param oldest_pin: ``() -> (hlc, node) | None``, the oldest open snapshot or scan.
    :param retention_floor: ``() -> segment | None``, the oldest segment a
        feed or replication slot still reads.
    :param fold_lock, merge_lock: the engine's locks (see the module docstring).
    :param digests: the digest tree to tell about purged tombstones, or None.
    :param tombstone_grace_ms: how long a stored tombstone is kept.
    :param interval: seconds between checks for sealed segments; None: only
        explicit :meth:`run_pass` calls compact (no thread).
    """

    def __init__(self, log: Log, store: Store, catalog: "Catalog", *,
                 oldest_pin: Callable[[], Optional[Tuple[int, int]]],
                 retention_floor: Callable[[], Optional[int]],
                 fold_lock: threading.Lock, merge_lock: threading.RLock, digests: Optional["DigestTree"],
                 tombstone_grace_ms: int, interval: Optional[float],
                 ranges: Optional["RangeTombstones"] = None) -> None:
        self._log = log
        #: range tombstones (``ranges.py``): covered versions are not stored, and swept
        self._ranges = ranges
        self._store = store
        self._catalog = catalog
        self._oldest_pin = oldest_pin
        self._retention_floor = retention_floor
        self._fold_lock = fold_lock
        self._merge_lock = merge_lock
        self._digests = digests
        self._grace_ms = tombstone_grace_ms
        self._interval = interval
        self._pass_lock = threading.Lock()
        self._wake = threading.Condition()
        self._stopping = False
        self.passes = 0
        #: Bound on one pass (and so on one LMDB transaction's size).
        self.max_segments_per_pass = 64
        self.segments_compacted = 0
        #: Durations of the passes that folded segments (``metrics.py`` exports them).
        self.pass_seconds = LatencyHistogram(PASS_BOUNDS)
        self.errors: List[BaseException] = []
        self._thread: Optional[threading.Thread] = None
        if interval is not None:
            self._thread = threading.Thread(target=self._run, name="abase-compactor", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Ask the thread to look for work now."""
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        """Stop the thread after its current step and wait for it."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                self._wake.wait(self._interval)
                if self._stopping:
                    return
            try:
                self.run_pass(seal=False)
            except IOFailedError as exc:  # sticky: writes (and passes) are refused until reopened
                self.errors.append(exc)
                _logger.error("compaction stopped after an I/O failure: %s", exc)
                return
            except BaseException as exc:  # reported, never kills the engine
                self.errors.append(exc)
                _logger.exception("compaction pass failed")

    def run_pass(self, seal: bool) -> int:
        """Fold every eligible sealed segment, oldest first; returns how many.

        ``seal=True`` first seals the active segment so the pass covers every
        write acknowledged so far (``Engine.compact(wait=True)``).

        :raises IOFailedError: writes are refused after an I/O failure, or
            this pass's store commit failed (which makes them refused).
        :raises EngineClosedError: the engine was closed during the pass
            (what was committed stays; recovery finishes the rest).
        """
        try:
            return self._run_pass(seal)
        except lmdb.Error as exc:
            raise self._store.translate(exc) from exc

    def _run_pass(self, seal: bool) -> int:
        with self._pass_lock:
            self._log.check_writable("compaction")
            try:
                t0 = time.perf_counter()
                done = self._pass(seal)
                if done:  # passes that found nothing to fold are not timed
                    self.pass_seconds.observe(time.perf_counter() - t0)
                return done
            except IOFailedError as exc:
                if self._log.failure() is None:
                    self._log.fail(exc)  # the store's commit failed: refuse writes from now on
                raise

    def _pass(self, seal: bool) -> int:
        """One pass (pass lock held); see :meth:`run_pass`."""
        if seal:
            self._log.seal()
        segs = []
        pin = self._oldest_pin()
        floor = self._retention_floor()
        for seg in self._log.segments():
            if not seg["sealed"] or len(segs) >= self.max_segments_per_pass:
                break
            if pin is not None and (seg["max_hlc"], seg["max_node"]) > pin:
                break  # an open snapshot still needs these versions
            if floor is not None and seg["no"] >= floor:
                break  # a change feed or replication slot still reads it
            segs.append(seg)
        # Expiries are judged at a timestamp issued now, capped by the oldest
        # pin: no open snapshot or scan, nor any later one, can still see a
        # version whose expiry is at or before it.
        try:
            horizon = self._log.clock_now() >> 16
        except EngineClosedError:
            raise
        except AbaseError:  # an injected clock that used up its millisecond: the last timestamp's
            horizon = self._log.clock() >> 16
        if pin is not None:
            horizon = min(horizon, pin[0] >> 16)
        folding = self._ranges.folding(pin) if self._ranges is not None else None
        if segs:
            self._fold_segments(segs, horizon, folding)
        if folding is not None:
            self._sweep(folding)
        done = len(segs)
        self._expire_stored(horizon)
        self._purge_tombstones()
        self.passes += 1
        self.segments_compacted += done
        return done

    def _sweep(self, folding: "Folding") -> None:
        """Delete the stored versions that effective range tombstones cover
        (``ranges.py``; each tombstone once per process, and again after a
        pass stored a version it covers); under the fold lock, like a fold."""
        todo = folding.unswept()
        if not todo:
            return
        store = self._store
        for ns_id in folding.namespaces():
            store.db(ns_id)  # open handles before the write txn (LMDB has one writer)
        with self._fold_lock:
            store.write(lambda txn: folding.sweep(store, txn, todo))
        folding.swept(todo)

    def _fold_segments(self, segs: List[dict], horizon: int, folding: Optional["Folding"] = None) -> None:
        """Fold the segments, oldest first, in ONE store transaction.

        An LWW winner with an expiry at or before ``horizon`` (ms) is stored
        as a tombstone that keeps its timestamp and expiry (so no older
        version can come back, and digests do not change); one expiring
        later is listed in the store's ``expiring`` index.

        One transaction per pass rather than per segment: with random keys
        every segment touches nearly every leaf page, and LMDB copies each
        touched page once per transaction, so per-segment transactions left
        the file at about 3x the live data.
        """
        log, store, catalog = self._log, self._store, self._catalog
        # LWW namespaces (and the namespace definitions) are folded in C to
        # one winner per key, already in the store's encoding and key order.
        lww = catalog.lww_ids()
        for ns_id in set(lww) | set(catalog.all_ids()):
            store.db(ns_id)  # open handles before the write txn (LMDB has one writer)
        lww_set = set(lww)
        written = [0]

        first = segs[0]["no"]
        assert [seg["no"] for seg in segs] == list(range(first, first + len(segs))), "live segments are consecutive"

        def work(txn) -> None:
            written[0] = 0
            fold_all(txn)
            last = segs[-1]["no"]
            store.put_meta_u64(txn, b"compacted_through", last)
            hw = store.meta_u64(b"hlc_high_water", 0)
            store.put_meta_u64(txn, b"hlc_high_water", max([hw, log.clock()] + [s["max_hlc"] for s in segs]))

        def fold_all(txn) -> None:
            # The fold comes in key order, so a namespace whose table is
            # empty can be appended to (MDB_APPEND fills pages instead of
            # splitting them in half: the store ends ~30% smaller).
            append = {ns: txn.stat(store.db(ns))["entries"] == 0 for ns in lww_set if ns != NS_DEFS}
            group: List[Version] = []
            group_key: Optional[Tuple[int, bytes]] = None

            def flush_merge() -> None:
                ns, key = group_key
                raw = store.get_in(txn, ns, key)
                base = None if raw is None else decode(raw, store.path)
                new = fold_merge(catalog.operator_of(ns), base, group)
                if new is not None and new is not base:
                    kind, hlc, node, ah, an, val = new
                    enc = encode(kind, hlc, node, val, (ah, an))
                    store.put_in(txn, ns, key, enc)
                    written[0] += len(key) + len(enc)
                    if kind == TOMBSTONE:
                        txn.put(store.tomb_key(hlc, node, ns, key), key, db=store.tombs)

            for pairs, tombs, rest, nbytes in log.fold_entries(first, len(segs), lww):
                # pairs need no look at the store: the newest record of an
                # LWW key that was DOMINANT beats whatever the store holds
                for ns, items in pairs.items():
                    if folding is not None and folding.active(ns):
                        items = _unhidden(folding, ns, items)  # range tombstones: not stored
                    cur = txn.cursor(db=store.db(ns))
                    if append.get(ns):
                        _consumed, added = cur.putmulti(items, append=True)
                        if added == len(items):
                            continue
                        append[ns] = False  # not after the last key after all: plain puts
                    cur.putmulti(items)
                written[0] += nbytes
                for ns, key, hlc, node in tombs:
                    if folding is not None and folding.covers(ns, key, hlc, node):
                        continue
                    txn.put(store.tomb_key(hlc, node, ns, key), key, db=store.tombs)
                for ns, key, op, flags, _count, hlc, node, data in rest:
                    if ns == NS_DEFS:
                        txn.put(b"ns:" + key, data[13:], db=store.meta)
                        continue
                    if ns in lww_set:
                        if folding is not None and folding.active(ns):
                            if folding.covers(ns, key, hlc, node):
                                continue  # hidden by a range tombstone: never stored
                            folding.written(ns, key, hlc, node)
                        if not flags & _DOMINANT:
                            raw = store.get_in(txn, ns, key)
                            if raw is not None:
                                base = decode(raw, store.path)
                                if (base[1], base[2]) >= (hlc, node):
                                    continue  # the stored version is newer
                        if data[0] & EXPIRY_BIT:
                            data = self._stored_expiring(txn, ns, key, hlc, node, data, horizon)
                        store.put_in(txn, ns, key, data)
                        written[0] += len(key) + len(data)
                        if op == _DELETE:
                            txn.put(store.tomb_key(hlc, node, ns, key), key, db=store.tombs)
                        continue
                    if group_key != (ns, key):
                        if group:
                            flush_merge()
                        group, group_key = [], (ns, key)
                    group.append((op, hlc, node, data))
                time.sleep(0)  # let foreground threads take the GIL between chunks
            if group:
                flush_merge()

        # Apply() reads stored versions to decide what a remote record
        # changes; it must not see the store and the log disagree.
        with self._fold_lock:
            store.write(work)
            for seg in segs:
                log.compacted_through(seg["no"])
        store.bytes_written += written[0]
        # A small second commit lets the next pass reuse the pages this one
        # freed (LMDB reuses a page two write transactions after freeing it).
        store.write(lambda txn: store.put_meta_u64(txn, b"passes", self.passes + 1))
        for seg in segs:
            log.retire(seg["no"])

    def _stored_expiring(self, txn, ns: int, key: bytes, hlc: int, node: int, data: bytes, horizon: int) -> bytes:
        """The stored version to write for an LWW winner with an expiry
        (``data``, in the store's encoding): a tombstone keeping its
        timestamp and expiry once expired as of ``horizon``, indexed in
        ``tombstones``; else ``data``, indexed in ``expiring``."""
        store = self._store
        expire_at = expiry_of(decode(data, store.path))
        if expire_at <= horizon:
            txn.put(store.tomb_key(hlc, node, ns, key), key, db=store.tombs)
            return encode(TOMBSTONE, hlc, node, b"", expire_at=expire_at)
        txn.put(store.expiry_key(expire_at, ns, key), key, db=store.expiring)
        return data

    def _expire_stored(self, horizon: int) -> None:
        """Turn stored values whose expiry is at or before ``horizon`` (ms)
        into tombstones that keep their timestamp and expiry (purged after
        ``tombstone_grace`` like any tombstone). Reads already saw them as
        absent; this frees their bytes. A bounded number per pass, soonest
        first; an index entry whose key was overwritten since is dropped."""
        store = self._store
        due = []
        with store.env.begin(db=store.expiring, buffers=False) as txn:
            for ek, key in txn.cursor():
                expire_at, ns = store.split_expiry_key(ek)
                if expire_at > horizon or len(due) >= 10000:
                    break
                due.append((ek, expire_at, ns, key))
        if not due:
            return
        for ns in {d[2] for d in due}:
            store.db(ns)  # open handles before the write txn (LMDB has one writer)

        def work(txn) -> None:
            for ek, expire_at, ns, key in due:
                raw = store.get_in(txn, ns, key)
                if raw is not None:
                    st = decode(raw, store.path)
                    if st[0] == VALUE and expiry_of(st) == expire_at:
                        store.put_in(txn, ns, key, encode(TOMBSTONE, st[1], st[2], b"", expire_at=expire_at))
                        txn.put(store.tomb_key(st[1], st[2], ns, key), key, db=store.tombs)
                txn.delete(ek, db=store.expiring)

        # The digest of an expiring version does not depend on which form
        # the store holds (digest.py), so no upkeep is needed here.
        with self._fold_lock:
            store.write(work)

    def _purge_tombstones(self) -> None:
        """Delete stored tombstones older than ``tombstone_grace``.

        Replication slots need no check here: a stored tombstone comes from a
        compacted segment, and the compactor keeps every segment an active
        slot still needs."""
        store = self._store
        grace_ms = self._grace_ms
        now_ms = self._log.wall_ms()
        cutoff = ((now_ms - grace_ms) << 16) if now_ms > grace_ms else 0
        if cutoff <= 0:
            return

        # One read pass finds the expired entries (oldest first, a bounded
        # number per pass); the write transaction then removes them.
        expired = []
        with store.env.begin(db=store.tombs, buffers=False) as txn:
            for tk, key in txn.cursor():
                hlc, node, ns = store.split_tomb_key(tk)
                if hlc >= cutoff or len(expired) >= 10000:
                    break
                expired.append((tk, hlc, node, ns, key))
        if not expired:
            return
        for ns in {e[3] for e in expired}:
            store.db(ns)  # open handles before the write txn (LMDB has one writer)

        def work(txn) -> None:
            for tk, hlc, node, ns, key in expired:
                raw = store.get_in(txn, ns, key)
                if raw is not None:
                    cur_v = decode(raw, store.path)
                    if cur_v[0] == TOMBSTONE and (cur_v[1], cur_v[2]) == (hlc, node):
                        store.delete_in(txn, ns, key)
                txn.delete(tk, db=store.tombs)

        with self._merge_lock:  # digest upkeep reads the keys before and after
            digests = self._digests
            tracked = digests.track_existing([(ns, key) for _tk, _h, _n, ns, key in expired]) \
                if digests is not None else None
            with self._fold_lock:
                store.write(work)
            if tracked:
                digests.settle(tracked)


def _unhidden(folding: "Folding", ns: int, items: List[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
    """The ``(key, stored)`` winners of a pass that no effective range
    tombstone hides; those a later one covers are noted for its sweep."""
    out = []
    for key, data in items:
        hlc, node = _STORED_TS.unpack_from(data, 1)
        if folding.covers(ns, key, hlc, node):
            continue
        folding.written(ns, key, hlc, node)
        out.append((key, data))
    return out
