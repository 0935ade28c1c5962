"""Anti-entropy digests: a Merkle tree per namespace over the visible state.

The tree has 3 levels under its root with fan-out 16, by the first three
nibbles of xxh64(key): 4,096 leaves. A leaf's hash is the XOR of its keys'
*entries*, ``xxh64(key | 0x00 | canon)``, where ``canon`` is
``kind u8 | hlc u64 | node u32`` (big-endian) for an LWW key or a
tombstone, ``0x04 | hlc u64 | node u32 | expire_at u64`` for an LWW version
with an expiry (whether it has expired yet, and whether the compactor has
already replaced it by a tombstone that keeps its timestamp and expiry, must
not change the digest: anti-entropy never chases expiry timing; the
timestamp identifies the write, so the value is not needed), and
``0x03 | encoded state`` for a CRDT key; a range tombstone (``ranges.py``)
is an entry too, placed by its record key, ``canon`` being
``0x05 | start length u16 LE | start | has_stop u8 | stop``, and a key
version a range tombstone hides counts as absent; an inner node
hashes its 16 children (``xxh64`` of 16 big-endian u64). Replicas with equal
visible state have equal digests, so comparing top-down finds the differing
leaves in O(differences x depth) calls; :meth:`DigestTree.records` then gives
a leaf's records.

Upkeep: with the engine option ``digests`` the leaves are *maintained*: the
write path hashes each written key before and after the write
(:meth:`DigestTree.track` / :meth:`DigestTree.settle`, merge lock held) and
XORs the difference into its leaf, and so does the compactor's tombstone
purge. ``apply`` into LWW namespaces (the C path, ``csrc/apply.c``) reads
nothing: the core reports each appended record's predecessor (the key's
newest version before it), so :meth:`DigestTree.note_applied` computes both
entries from timestamps alone. Without the option, the leaves are rebuilt in
O(keys) on the first call after writes.

Leaf membership: in maintained mode each namespace also keeps its keys by
leaf (a dict of leaf -> set of keys, built by the first :meth:`records` call
of the namespace in this process, in O(keys), then kept current by the same
upkeep: a key joins its leaf when written and leaves it when its entry
becomes 0, a purged tombstone), so ``records(leaf)`` costs O(keys in the
leaf). Memory: one reference to the key in a set, about 35-70 bytes a key
with the set's spare slots, plus the key's bytes object itself (33 + its
length) where nothing else holds it. Without the option membership comes
from one pass over the namespace, cached until the next write.

File format: ``<dir>/digests.bin``, written at a clean close when the
leaves are maintained: a marker ``last segment u32 | its used bytes u64 |
compacted_through u64 | newest timestamp in the log u64 | the store's HLC
high-water mark u64`` (big-endian; timestamps are unique to one engine's
history, so a file from another history never matches), then per namespace
``id u32 | 4096 x leaf u64`` (big-endian), then ``xxh64`` of everything
before it (u64, big-endian). It is taken at the next open only if the
checksum holds, its length is whole, the marker still matches the log and
the store (nothing happened in between) and recovery dropped nothing, and it
is deleted either way, so a crash can never leave a stale one behind and
damaged bytes are never believed.

Locks: every method that reads or changes leaves runs under the engine's
merge lock (re-entrant), which the write path also holds while it writes.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import xxhash

from .log import Log
from .record import Change, Op, from_packed
from .store import TOMBSTONE, Store

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .namespace import Namespace
    from .ranges import RangeTombstones

__all__ = ["DigestTree", "check_path"]

_ENTRY_TS = struct.Struct(">BQI")
_ENTRY_EXPIRING = struct.Struct(">BQIQ")
_EXPIRING = 4  # the canon's kind byte of a version with an expiry
_MARKER = struct.Struct(">IQQQQ")
_LEAVES = 4096

#: (ns id, key) -> (namespace, the key's entry hash before a write)
Tracked = Dict[Tuple[int, bytes], Tuple["Namespace", int]]


def check_path(path: Any, max_len: int) -> Tuple[int, ...]:
    """A digest-tree path: a tuple of up to ``max_len`` ints in 0..15.

    :raises TypeError: not a tuple.
    :raises ValueError: too long or out of range.
    """
    if not isinstance(path, tuple):
        raise TypeError("a digest path is a tuple of ints")
    if len(path) > max_len or any(not isinstance(p, int) or not 0 <= p < 16 for p in path):
        raise ValueError(f"a digest path is up to {max_len} ints in 0..15, got {path!r}")
    return path


def _hash_children(level: List[int], i: int) -> int:
    return xxhash.xxh64_intdigest(struct.pack(">16Q", *level[i * 16:i * 16 + 16]))


def _leaf_of(key: bytes) -> int:
    return xxhash.xxh64_intdigest(key) >> 52


class DigestTree:
    """The digest trees of one engine's namespaces (see the module docstring).

    :param log, store: what the visible state is read from.
    :param catalog: namespace handles by name.
    :param merge_lock: the engine's merge lock.
    :param path: the engine directory (for ``digests.bin``).
    :param maintained: keep leaves current on every write (option ``digests``).
    """

    def __init__(self, log: Log, store: Store, catalog: "Catalog", merge_lock: threading.RLock, path: str,
                 maintained: bool) -> None:
        self._log = log
        self._store = store
        self._catalog = catalog
        self._lock = merge_lock
        self._file = os.path.join(path, "digests.bin")
        self.maintained = maintained
        #: ns id -> 4096 leaf hashes (maintained mode)
        self._leaves: Dict[int, List[int]] = {}
        self._leaves_gen: Dict[int, int] = {}  # bumped when a namespace's leaves change
        self._tree_cache: Dict[int, tuple] = {}
        self._members_cache: Dict[int, tuple] = {}
        #: ns id -> leaf -> keys (maintained mode; built by the first records() call)
        self._members: Dict[int, Dict[int, Set[bytes]]] = {}
        #: the engine's range tombstones: a key version they hide counts as absent
        self.ranges: Optional["RangeTombstones"] = None

    # -- queries ---------------------------------------------------------------
    def digest(self, ns: "Namespace", path: Tuple[int, ...]) -> List[int]:
        """Hashes of the 16 children of the node at ``path`` (see ``Engine.digest``)."""
        path = check_path(path, 2)
        level = self._tree(ns)[len(path)]
        base = 0
        for nib in path:
            base = base * 16 + nib
        return level[base * 16:base * 16 + 16]

    def records(self, ns: "Namespace", path: Tuple[int, ...]) -> List[Change]:
        """The newest record of every key under the leaf at ``path`` (see ``Engine.records``)."""
        path = check_path(path, 3)
        if len(path) != 3:
            raise ValueError("records() needs a leaf path of 3 nibbles")
        leaf = path[0] * 256 + path[1] * 16 + path[2]
        out = []
        if self.ranges is not None and ns.lww:
            for rkey, _canon, start, stop, stamp in self.ranges.digest_entries(ns.id):
                if _leaf_of(rkey) == leaf:
                    out.append(Change(ns.name, start, Op.DELETE_RANGE, stop, from_packed(*stamp)))
        with self._lock:  # the membership must not change while it is read
            keys = sorted(self._leaf_keys(ns, leaf))
        for key in keys:
            rec = self._visible(ns, key)
            if rec is None:
                continue
            kind, hlc, node, value, anchor, expire_at = rec
            if expire_at:
                # a put with an expiry, also once the compactor dropped its
                # value (then b"": it has expired, nobody reads it)
                out.append(Change(ns.name, key, Op.PUT, value if kind != TOMBSTONE else b"",
                                  from_packed(hlc, node), None, expire_at))
                continue
            if ns.lww or kind == TOMBSTONE:
                out.append(Change(ns.name, key, Op.DELETE if kind == TOMBSTONE else Op.PUT,
                                  None if kind == TOMBSTONE else value, from_packed(hlc, node)))
                continue
            # A merge-namespace key: its state, stamped with the state's own
            # newest timestamp, never "now" (a CRDT state carries what its
            # deletes removed, so it is everything a receiver needs). An
            # operator whose deletes reset the key (anchor set) sends its
            # newest delete first, so the receiver drops what it removed: a
            # fresh stamp would outrank a delete the sender has not seen.
            if anchor != (0, 0):
                out.append(Change(ns.name, key, Op.DELETE, None, from_packed(*anchor)))
            out.append(Change(ns.name, key, Op.MERGE, value, from_packed(hlc, node)))
        return out

    # -- upkeep (maintained mode) ------------------------------------------------
    def track(self, items: List[Tuple["Namespace", bytes]]) -> Tracked:
        """Entry hashes of the keys about to be written (merge lock held)."""
        out: Tracked = {}
        for ns, key in items:
            if (ns.id, key) not in out:
                self._ns_leaves(ns)
                out[(ns.id, key)] = (ns, self.entry_hash(ns, key))
        return out

    def settle(self, tracked: Tracked) -> None:
        """After the write: fold each key's change of entry hash into its leaf."""
        for (ns_id, key), (ns, old) in tracked.items():
            new = self.entry_hash(ns, key)
            if new != old:
                self._ns_leaves(ns)
                self._leaf_changed(ns_id, key, old, new)

    def track_existing(self, keys: List[Tuple[int, bytes]]) -> Tracked:
        """:meth:`track` for keys of namespaces whose leaves are already
        built (the compactor's tombstone purge: it must not build any)."""
        out: Tracked = {}
        for ns_id, key in keys:
            ns = self._catalog.handle_by_id(ns_id)
            if ns is not None and ns_id in self._leaves and (ns_id, key) not in out:
                out[(ns_id, key)] = (ns, self.entry_hash(ns, key))
        return out

    def entry_hash(self, ns: "Namespace", key: bytes) -> int:
        """The key's contribution to its leaf hash (0: the key is absent)."""
        rec = self._visible(ns, key)
        if rec is None:
            return 0
        kind, hlc, node, value, _anchor, expire_at = rec
        if expire_at:
            canon = _ENTRY_EXPIRING.pack(_EXPIRING, hlc, node, expire_at)
        elif ns.lww or kind == TOMBSTONE:
            canon = _ENTRY_TS.pack(kind, hlc, node)
        else:
            canon = b"\x03" + value
        return xxhash.xxh64_intdigest(key + b"\x00" + canon)

    def note_applied(self, changes: Sequence[Any], appended: List[Tuple[int, int, int, int, int, int, int]]) -> None:
        """After the C apply path appended records into LWW namespaces
        (merge lock held since before the append): fold each key's change of
        entry into its leaf, from ``(index in changes, ns id, op, kind, hlc,
        node, expire_at)`` of every appended record and its key's newest
        version before it (kind 0: none; expire_at 0: no expiry; the C path
        takes no record with an expiry itself). A namespace whose leaves are
        not built yet is skipped: they are built later from the state, which
        has the record."""
        touched = set()
        for i, ns_id, op, kind, hlc, node, expire_at in appended:
            leaves = self._leaves.get(ns_id)
            if leaves is None:
                continue
            ch = changes[i]
            key, ts = ch.key, ch.timestamp
            head = key + b"\x00"
            new = xxhash.xxh64_intdigest(head + _ENTRY_TS.pack(op, ts.hlc, ts.node_id))
            if not kind:
                old = 0
            elif expire_at:
                old = xxhash.xxh64_intdigest(head + _ENTRY_EXPIRING.pack(_EXPIRING, hlc, node, expire_at))
            else:
                old = xxhash.xxh64_intdigest(head + _ENTRY_TS.pack(kind, hlc, node))
            leaf = _leaf_of(key)
            leaves[leaf] ^= old ^ new
            members = self._members.get(ns_id)
            if members is not None:
                members.setdefault(leaf, set()).add(key)
            touched.add(ns_id)
        for ns_id in touched:
            self._leaves_gen[ns_id] = self._leaves_gen.get(ns_id, 0) + 1

    def _visible(self, ns: "Namespace", key: bytes) -> Optional[tuple]:
        """The key's visible record (``KeyReader.visible_record``), or None when
        it has none or a range tombstone hides it: a hidden version counts as
        absent whether or not the compactor has dropped it yet, so engines
        that hold the same records have equal digests."""
        rec = ns.reader.visible_record(key)
        ranges = self.ranges
        if rec is not None and ns.lww and ranges is not None and ranges.covers(ns.id, key, rec[1], rec[2]):
            return None
        return rec

    def invalidate(self, ns_id: int) -> None:
        """A range tombstone changed many keys of namespace ``ns_id`` at once:
        its leaves are rebuilt on next use (O(keys) once)."""
        with self._lock:
            self._leaves.pop(ns_id, None)
            self._tree_cache.pop(ns_id, None)
            self._members_cache.pop(ns_id, None)
            self._members.pop(ns_id, None)
            self._leaves_gen[ns_id] = self._leaves_gen.get(ns_id, 0) + 1

    def leaves(self, ns: "Namespace") -> List[int]:
        """The namespace's 4096 leaf hashes as maintained (built on first use)."""
        with self._lock:
            return list(self._ns_leaves(ns))

    def forget(self) -> None:
        """Drop maintained leaves (they are rebuilt on next use): for tests."""
        with self._lock:
            self._leaves.clear()
            self._members.clear()
            self._tree_cache.clear()

    def _ns_leaves(self, ns: "Namespace") -> List[int]:
        leaves = self._leaves.get(ns.id)
        if leaves is None:  # first use in this process: one full build
            leaves = self._leaves[ns.id] = self._scan_leaves(ns)
            self._leaves_gen[ns.id] = self._leaves_gen.get(ns.id, 0) + 1
            # the membership that pass saw, kept current from now on
            self._members[ns.id] = {leaf: set(keys) for leaf, keys in self._members_cache.pop(ns.id)[1].items()}
        return leaves

    def _leaf_changed(self, ns_id: int, key: bytes, old: int, new: int) -> None:
        leaf = _leaf_of(key)
        self._leaves[ns_id][leaf] ^= old ^ new
        self._leaves_gen[ns_id] = self._leaves_gen.get(ns_id, 0) + 1
        members = self._members.get(ns_id)
        if members is not None:
            if new:
                members.setdefault(leaf, set()).add(key)
            else:
                members.get(leaf, set()).discard(key)

    # -- building ------------------------------------------------------------------
    def _write_version(self) -> Tuple[int, int]:
        """Changes whenever a record is appended or the store commits."""
        return self._log.stats()["records_appended"], self._store.generation

    def _leaf_keys(self, ns: "Namespace", leaf: int) -> Any:
        """The keys of one leaf (merge lock held): from the maintained
        membership, built on first use (maintained mode), else from one
        pass over the namespace cached until the next write."""
        if not self.maintained:
            return self._leaf_members(ns).get(leaf, ())
        members = self._members.get(ns.id)
        if members is None:
            self._ns_leaves(ns)  # upkeep must run from now on, for leaves and members alike
            members = {}
            for key in self._all_keys(ns):
                members.setdefault(_leaf_of(key), set()).add(key)
            self._members[ns.id] = members
        return members.get(leaf, ())

    def _leaf_members(self, ns: "Namespace") -> Dict[int, List[bytes]]:
        """Keys by leaf, from one pass over the namespace; reused until the
        next write or compaction (anti-entropy asks for many leaves)."""
        with self._lock:
            hit = self._members_cache.get(ns.id)
            if hit is None or hit[0] != self._write_version():
                self._scan_leaves(ns)
                hit = self._members_cache[ns.id]
            return hit[1]

    def _scan_leaves(self, ns: "Namespace") -> List[int]:
        """Leaf hashes from one pass over the namespace's keys; the leaf
        membership seen on the way is cached for records()."""
        version = self._write_version()
        leaves = [0] * _LEAVES
        members: Dict[int, List[bytes]] = {}
        for key in self._all_keys(ns):
            leaf = _leaf_of(key)
            members.setdefault(leaf, []).append(key)
            leaves[leaf] ^= self.entry_hash(ns, key)
        if self.ranges is not None:  # range tombstones count too, each in the leaf of its record key
            for rkey, canon, *_rest in self.ranges.digest_entries(ns.id):
                leaves[_leaf_of(rkey)] ^= xxhash.xxh64_intdigest(rkey + b"\x00" + canon)
        self._members_cache[ns.id] = (version, members)
        return leaves

    def _all_keys(self, ns: "Namespace") -> Iterator[bytes]:
        """Every key the namespace holds in either layer, tombstones included."""
        seen = set()
        for key, *_rest in self._log.scan(ns.id, None, None, None, False, 0, 0, True):
            seen.add(key)
            yield key
        for key in self._store.keys(ns.id):
            if key not in seen:
                yield key

    def _tree(self, ns: "Namespace"):
        """(level 1, level 2, leaves) hashes of the namespace, cached until it changes."""
        with self._lock:
            if self.maintained:
                leaves: Optional[List[int]] = self._ns_leaves(ns)
                version: tuple = ("maintained", self._leaves_gen.get(ns.id, 0))
            else:
                leaves = None
                version = self._write_version()
            hit = self._tree_cache.get(ns.id)
            if hit is not None and hit[0] == version:
                return hit[1]
            if leaves is None:
                leaves = self._scan_leaves(ns)
            lvl2 = [_hash_children(leaves, i) for i in range(256)]
            lvl1 = [_hash_children(lvl2, i) for i in range(16)]
            tree = (lvl1, lvl2, list(leaves))
            self._tree_cache[ns.id] = (version, tree)
            return tree

    # -- digests.bin -------------------------------------------------------------
    def _marker(self) -> bytes:
        segs = self._log.segments()
        last = (segs[-1]["no"], segs[-1]["used"]) if segs else (self._log.stats()["first_segment"], 0)
        newest = max((s["max_hlc"] for s in segs), default=0)
        return _MARKER.pack(*last, self._store.meta_u64(b"compacted_through", 1 << 63), newest,
                            self._store.meta_u64(b"hlc_high_water", 0))

    def load(self, recovery_dropped: bool) -> None:
        """Take the leaves saved at the last clean close, if the log and
        store are exactly as they were then; the file is removed either way."""
        try:
            with open(self._file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        os.unlink(self._file)
        if len(data) < 8 or xxhash.xxh64_intdigest(data[:-8]) != struct.unpack_from(">Q", data, len(data) - 8)[0]:
            return  # damaged: rebuilt on use
        data = data[:-8]
        marker = self._marker()
        per = 4 + _LEAVES * 8
        if not data.startswith(marker) or recovery_dropped or (len(data) - len(marker)) % per:
            return
        body = data[len(marker):]
        for i in range(0, len(body), per):
            ns_id = struct.unpack_from(">I", body, i)[0]
            self._leaves[ns_id] = list(struct.unpack_from(">4096Q", body, i + 4))

    def save(self) -> None:
        """Write the maintained leaves to ``digests.bin`` (at a clean close;
        under the merge lock, so no write is half-counted in them)."""
        with self._lock:
            parts = [self._marker()]
            for ns_id, leaves in self._leaves.items():
                parts.append(struct.pack(">I", ns_id) + struct.pack(">4096Q", *leaves))
        body = b"".join(parts)
        tmp = self._file + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body + struct.pack(">Q", xxhash.xxh64_intdigest(body)))
        os.replace(tmp, self._file)
