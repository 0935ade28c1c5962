"""Delta-state CRDTs as merge operators.

Each class here is a :class:`~abase_engine.merge.MergeOperator` whose states
form a join-semilattice; an operand is a *delta*: a small state of the same
lattice that describes one update. Hence, with ``join`` = ``partial_merge``::

    join(a, b) == join(b, a)                       (commutative)
    join(join(a, b), c) == join(a, join(b, c))     (associative)
    join(a, a) == a                                (idempotent)
    full_merge(base, ops) == join(base or bottom, *ops)

so replicas that exchange states or deltas in any order, any number of times,
converge to the same value *and the same bytes* (encoding is canonical).

Use one per namespace, e.g. ``db.namespace("hits", merge=crdt.PNCounter())``,
and write with operations: ``db.merge(key, crdt.PNCounter.increment(5))``.
Operation constructors are static methods returning an :class:`Operation`;
:meth:`make_operand` turns it into operand bytes, reading the key's current
state when :meth:`needs_state` says so.

==========  ===============================  ===========  =====================
type        operations                       needs_state  value
==========  ===============================  ===========  =====================
LWWRegister set(v)                           no           bytes or None
MVRegister  set(v)                           yes          frozenset of bytes
GCounter    increment(n)                     yes          int
PNCounter   increment(n), decrement(n)       yes          int
GSet        add(x)                           no           frozenset of bytes
ORSet       add(x), remove(x)                yes          frozenset of bytes
ORMap(F)    update(field, F-op), remove(f)   yes          {field: F value}
SortedSet   add(m, score), remove(m)         yes          [(m, score)] sorted
EWFlag      enable(), disable()              yes          bool
==========  ===============================  ===========  =====================

Counters: the operand carries the issuing node's new *cumulative* totals
(``{node: P}``, or ``{node: (P, N)}``) and join is the pointwise max, so a
duplicated or replayed operand never double-counts. The totals are read from
the state, hence ``needs_state``.

Causal types (MVRegister, ORSet, ORMap, SortedSet, EWFlag) are built, as in
Almeida et al., *Delta state replicated data types* (2018), from a *dot store*
plus a *causal context*:

* A dot ``(node_id, hlc)`` names one write; the record's timestamp supplies it,
  so dots are unique forever (a DELETE that resets a key cannot make a node
  reissue an old dot).
* The causal context is the set of dots a state has seen, kept per node as
  sorted, disjoint closed intervals of HLC values. An update by node ``n`` at
  ``h`` claims the whole interval ``[p + 1, h]``, where ``p`` is the greatest
  HLC of ``n`` in the state's context: ``n`` issued no dot for this key in
  between, so the claim is true. With every delta of ``n`` seen, ``n``'s entry
  collapses to one interval; a remove therefore leaves no per-element
  tombstone, only the (already present) interval.
* Join: ``(s1, c1) ⊔ (s2, c2) = (s, c1 ∪ c2)`` where a dot survives in ``s``
  iff it is in both stores, or in one store and not seen by the other context.
  Adds that a remove did not observe survive: add-wins.

Invariant kept by every operation: each dot of the store is in the context.
After a key reset (a DELETE anchor: the state read is bottom) a node's next
update claims ``[0, h]``; that discards the node's pre-anchor dots in a
replica that has not yet seen the DELETE, which the DELETE would discard
anyway. Dots stay unique, so no later remove can hit an unrelated element.
``make_operand`` refuses (MergeOperandError) a timestamp not newer than the
node's last dot in the state (a reused node id or a clock reset).

Encoding grammar (``u`` = unsigned LEB128 varint, minimal, at most 64 bits;
``bytes`` = ``u(len) raw``; entries sorted, so equal states give equal bytes)::

    state      := VERSION=0x01 sig body
    sig        := tag u8 | 0x07 sig               (ORMap: 0x07 then field sig)
    tags       := LWWRegister 1, MVRegister 2, GCounter 3, PNCounter 4, GSet 5,
                  ORSet 6, ORMap 7, SortedSet 8, EWFlag 9

    LWWRegister: 0x00 | 0x01 u(hlc) u(node) bytes(value)
    GCounter:    u(n) { u(nodeΔ) u(total>0) }*n
    PNCounter:   u(n) { u(nodeΔ) u(P) u(N) }*n            (not both zero)
    GSet:        u(n) bytes*n                             (strictly increasing)
    causal:      ctx store
      ctx      := u(n) { u(nodeΔ) u(k>0) { u(loΔ) u(hi-lo) }*k }*n
      nodeΔ    := first node id as is, then (node - previous node - 1)
      loΔ      := first lo as is, then (lo - previous hi - 2)  (disjoint, non-adjacent)
      dot      := t:u8 [u(i) nb:u8 if t = 0xFF] raw      (t in 0xFC..0xFE: invalid)
        i, nb  := t div 9, t mod 9 if t < 0xFC   (i: index of the dot's node in ctx,
                  nb <= 8: length of raw; the escape is for i >= 28 only)
        raw    := (greatest hi of that node in ctx - hlc) as nb little-endian
                  bytes, minimal (nb = 0 iff the value is 0, else last byte != 0)
      MVRegister: u(n) { dot bytes(value) }*n
      ORSet:      u(n) { bytes(member) dots }*n            dots := u(k>0) dot*k
      EWFlag:     u(k) dot*k
      SortedSet:  u(n) { bytes(member) u(k>0) { dot f64be(score) }*k }*n
      ORMap(F):   u(n) { bytes(field) fstore }*n
        fstore := F's store (F causal, non-empty)
                | u(k>0) { dot F-body }*k              (F not causal)

Decoding anything else raises :class:`MergeOperandError`.

Thread-safety: operations are values; an operator's only state is a one-slot
memo of the last decoded state, never mutated and replaced atomically, so an
operator is safe to share between threads.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from typing import Any, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .errors import MergeOperandError
from .merge import MergeOperator
from .record import MAX_NODE_ID, Timestamp

__all__ = [
    "FORMAT_VERSION",
    "Operation",
    "LWWRegister",
    "MVRegister",
    "GCounter",
    "PNCounter",
    "GSet",
    "ORSet",
    "ORMap",
    "SortedSet",
    "EWFlag",
]

#: Leading byte of every encoded state and operand.
FORMAT_VERSION = 1

_U64 = (1 << 64) - 1
_F64 = struct.Struct(">d")
_BYTES_LIKE = (bytes, bytearray, memoryview)

Dot = Tuple[int, int]  # (node_id, hlc)
Context = Dict[int, List[int]]  # node -> [lo0, hi0, lo1, hi1, ...]


class Operation(NamedTuple):
    """A user operation, e.g. ``PNCounter.increment(5)``: a plain immutable value.

    ``crdt`` is the class that takes it, ``kind`` the operation name, ``args``
    its validated arguments. Build them with the classes' static methods.
    """

    crdt: type
    kind: str
    args: tuple

    def __repr__(self) -> str:
        return f"{self.crdt.__name__}.{self.kind}({', '.join(map(repr, self.args))})"


# --------------------------------------------------------------------------
# primitive encoding


def _bad(msg: str) -> MergeOperandError:
    return MergeOperandError(msg)


def _uv(buf: bytes, pos: int) -> Tuple[int, int]:
    """Read a varint at ``pos``: (value, next pos). Runtime complexity: O(bytes read)."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    x = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        if b < 0x80:
            if b == 0:
                raise _bad("non-minimal varint")
            x |= b << shift
            if x > _U64:
                raise _bad("varint exceeds 64 bits")
            return x, pos
        x |= (b & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise _bad("varint too long")


def _ev(out: bytearray, x: int) -> None:
    """Append ``x`` (0 <= x < 2**64) as a varint."""
    if x < 0x80:
        out.append(x)
        return
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _eb(out: bytearray, b: bytes) -> None:
    n = len(b)
    if n < 0x80:
        out.append(n)
    else:
        _ev(out, n)
    out += b


def _db(buf: bytes, pos: int) -> Tuple[bytes, int]:
    n = buf[pos]
    if n < 0x80:
        pos += 1
    else:
        n, pos = _uv(buf, pos)
    end = pos + n
    if end > len(buf):
        raise _bad("truncated byte string")
    return buf[pos:end], end


def _ef(out: bytearray, x: float) -> None:
    out += _F64.pack(x)


def _df(buf: bytes, pos: int) -> Tuple[float, int]:
    end = pos + 8
    if end > len(buf):
        raise _bad("truncated score")
    (x,) = _F64.unpack_from(buf, pos)
    if x != x:
        raise _bad("NaN score")
    return x, end


def _as_bytes(value: Any, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, _BYTES_LIKE):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _as_count(n: Any, what: str) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"{what} must be int, not {type(n).__name__}")
    if not 0 <= n <= _U64:
        raise MergeOperandError(f"{what}={n} out of range 0..2**64-1")
    return n


def _total(x: int) -> int:
    if x > _U64:
        raise MergeOperandError("counter total overflows 64 bits")
    return x


# --------------------------------------------------------------------------
# causal contexts: node -> flat sorted list of disjoint, non-adjacent closed intervals


def _iv_has(iv: List[int], h: int) -> bool:
    """Whether ``h`` lies in one of the intervals. Runtime complexity: O(log k)."""
    if len(iv) == 2:
        return iv[0] <= h <= iv[1]
    i = bisect_right(iv, h)
    return bool(i & 1) or (i > 0 and iv[i - 1] == h)


def _has(ctx: Context, d: Dot) -> bool:
    iv = ctx.get(d[0])
    return iv is not None and _iv_has(iv, d[1])


def _iv_union(a: List[int], b: List[int]) -> List[int]:
    """Union of two interval lists (new list). Runtime complexity: O((k1+k2) log(k1+k2))."""
    if len(a) == 2 and len(b) == 2:
        l1, h1 = a
        l2, h2 = b
        if l2 <= h1 + 1 and l1 <= h2 + 1:
            return [l1 if l1 < l2 else l2, h1 if h1 > h2 else h2]
        return [l1, h1, l2, h2] if l1 < l2 else [l2, h2, l1, h1]
    pairs = sorted(list(zip(a[0::2], a[1::2])) + list(zip(b[0::2], b[1::2])))
    out: List[int] = []
    cl, ch = pairs[0]
    for lo, hi in pairs[1:]:
        if lo <= ch + 1:
            if hi > ch:
                ch = hi
        else:
            out.append(cl)
            out.append(ch)
            cl, ch = lo, hi
    out.append(cl)
    out.append(ch)
    return out


def _ctx_union_into(c1: Context, c2: Context) -> Context:
    """``c1 ∪= c2`` (interval lists are never mutated, only replaced)."""
    for n, iv2 in c2.items():
        iv1 = c1.get(n)
        if iv1 is None:
            c1[n] = iv2
        elif iv1 != iv2:
            c1[n] = _iv_union(iv1, iv2)
    return c1


def _ctx_of(dots: Iterable[Dot], claim: Optional[Tuple[int, int, int]] = None) -> Context:
    """The context holding exactly ``dots`` plus the interval ``claim = (node, lo, hi)``."""
    by: Dict[int, List[int]] = {}
    for n, h in dots:
        lst = by.get(n)
        if lst is None:
            by[n] = [h]
        else:
            lst.append(h)
    ctx: Context = {}
    for n, hs in by.items():
        hs.sort()
        iv: List[int] = []
        for h in hs:
            if iv and h <= iv[-1] + 1:
                if h > iv[-1]:
                    iv[-1] = h
            else:
                iv.append(h)
                iv.append(h)
        ctx[n] = iv
    if claim is not None:
        n, lo, hi = claim
        iv = ctx.get(n)
        ctx[n] = [lo, hi] if iv is None else _iv_union(iv, [lo, hi])
    return ctx


def _claim(ctx: Context, ts: Timestamp) -> Tuple[int, int, int]:
    """``(node, p + 1, hlc)``: the interval a new dot of ``ts`` may claim in ``ctx``."""
    if not isinstance(ts, Timestamp):
        raise TypeError(f"timestamp must be a Timestamp, not {type(ts).__name__}")
    n = ts.node_id
    h = ts.hlc
    iv = ctx.get(n)
    lo = iv[-1] + 1 if iv else 0
    if h < lo:
        raise MergeOperandError(
            f"timestamp {ts!r} is not newer than node {n}'s last dot (hlc {lo - 1}) in this state; "
            "node_id reused or clock reset?")
    return n, lo, h


_Table = List[Tuple[int, int, List[int]]]  # index -> (node, max hi, intervals)
_EncTable = Dict[int, Tuple[int, int]]  # node -> (index, max hi)


def _enc_ctx(out: bytearray, ctx: Context) -> _EncTable:
    nodes = sorted(ctx)
    _ev(out, len(nodes))
    tbl: _EncTable = {}
    prev = -1
    for i, n in enumerate(nodes):
        _ev(out, n - prev - 1 if i else n)
        prev = n
        iv = ctx[n]
        _ev(out, len(iv) >> 1)
        ph = 0
        for k in range(0, len(iv), 2):
            lo = iv[k]
            hi = iv[k + 1]
            _ev(out, lo - ph - 2 if k else lo)
            _ev(out, hi - lo)
            ph = hi
        tbl[n] = (i, iv[-1])
    return tbl


def _dec_ctx(buf: bytes, pos: int) -> Tuple[Context, _Table, int]:
    cnt, pos = _uv(buf, pos)
    ctx: Context = {}
    table: _Table = []
    n = -1
    for i in range(cnt):
        d, pos = _uv(buf, pos)
        n = n + d + 1 if i else d
        if n > MAX_NODE_ID:
            raise _bad("node id out of range")
        k, pos = _uv(buf, pos)
        if k == 0:
            raise _bad("context node without intervals")
        iv: List[int] = []
        hi = 0
        for j in range(k):
            a, pos = _uv(buf, pos)
            s, pos = _uv(buf, pos)
            lo = hi + 2 + a if j else a
            hi = lo + s
            iv.append(lo)
            iv.append(hi)
        if hi > _U64:
            raise _bad("context HLC exceeds 64 bits")
        ctx[n] = iv
        table.append((n, hi, iv))
    return ctx, table, pos


_T9 = tuple((t // 9, t % 9) for t in range(252))  # dot lead byte -> (node index, raw length)


def _ed(out: bytearray, d: Dot, tbl: _EncTable) -> None:
    i, x = tbl[d[0]]
    x -= d[1]
    nb = (x.bit_length() + 7) >> 3
    if i < 28:
        out.append(i * 9 + nb)
    else:
        out.append(0xFF)
        _ev(out, i)
        out.append(nb)
    if nb:
        out += x.to_bytes(nb, "little")


def _dd(buf: bytes, pos: int, table: _Table) -> Tuple[Dot, int]:
    t = buf[pos]
    pos += 1
    if t < 252:
        i, nb = _T9[t]
    elif t == 0xFF:
        i, pos = _uv(buf, pos)
        nb = buf[pos]
        pos += 1
        if i < 28 or nb > 8:
            raise _bad("bad dot escape")
    else:
        raise _bad("bad dot lead byte")
    n, mx, iv = table[i]
    if nb:
        end = pos + nb
        if end > len(buf) or buf[end - 1] == 0:
            raise _bad("truncated or non-minimal dot")
        h = mx - int.from_bytes(buf[pos:end], "little")
        pos = end
    else:
        h = mx
    if (h < iv[0]) if len(iv) == 2 else not _iv_has(iv, h):
        raise _bad("dot outside the causal context")
    return (n, h), pos


# --------------------------------------------------------------------------
# dot stores: DotSet (set of dots), DotFun (dot -> value), DotMap (key -> store)
#
# join(a, c1, b, c2) may mutate and return ``a``; ``b`` may be aliased into the
# result (so both must be owned by the caller); filter(a, c) may mutate ``a``.
# A DotSet is never mutated in place once built. copy(s) returns a store that
# can be mutated without touching ``s``. Empty containers are bottom.


class _DotSetKind:
    __slots__ = ()

    @staticmethod
    def empty() -> set:
        return set()

    @staticmethod
    def dots(s: set) -> Iterable[Dot]:
        return s

    @staticmethod
    def copy(s: set) -> set:
        return s  # never mutated in place

    @staticmethod
    def join(a: set, c1: Context, b: set, c2: Context) -> set:
        if a == b:
            return a
        r = a & b
        for d in a:
            if d not in b:
                iv = c2.get(d[0])
                if iv is None or not _iv_has(iv, d[1]):
                    r.add(d)
        for d in b:
            if d not in a:
                iv = c1.get(d[0])
                if iv is None or not _iv_has(iv, d[1]):
                    r.add(d)
        return r

    @staticmethod
    def filter(a: set, c: Context) -> set:
        for d in a:
            iv = c.get(d[0])
            if iv is not None and _iv_has(iv, d[1]):
                return {x for x in a if not _has(c, x)}
        return a

    @staticmethod
    def enc(out: bytearray, s: set, tbl: _EncTable) -> None:
        n = len(s)
        out.append(n) if n < 0x80 else _ev(out, n)
        if n == 1:
            for d in s:
                _ed(out, d, tbl)
        else:
            for d in sorted(s):
                _ed(out, d, tbl)

    @staticmethod
    def dec(buf: bytes, pos: int, table: _Table) -> Tuple[set, int]:
        k = buf[pos]
        if k < 0x80:
            pos += 1
        else:
            k, pos = _uv(buf, pos)
        if k == 1:
            d, pos = _dd(buf, pos, table)
            return {d}, pos
        s = set()
        for _ in range(k):
            d, pos = _dd(buf, pos, table)
            s.add(d)
        if len(s) != k:
            raise _bad("duplicate dot")
        return s, pos


class _DotFunKind:
    __slots__ = ("vjoin", "venc", "vdec", "vcopy")

    def __init__(self, vjoin, venc, vdec, vcopy=None):
        self.vjoin = vjoin  # may mutate its first argument
        self.venc = venc
        self.vdec = vdec
        self.vcopy = vcopy  # None: values are immutable

    def copy(self, f: dict) -> dict:
        vcopy = self.vcopy
        return dict(f) if vcopy is None else {d: vcopy(v) for d, v in f.items()}

    @staticmethod
    def empty() -> dict:
        return {}

    @staticmethod
    def dots(f: dict) -> Iterable[Dot]:
        return f.keys()

    def join(self, a: dict, c1: Context, b: dict, c2: Context) -> dict:
        dead = [d for d in a if d not in b and _has(c2, d)]
        for d in dead:
            del a[d]
        vjoin = self.vjoin
        for d, v in b.items():
            if d in a:
                a[d] = vjoin(a[d], v)
            elif not _has(c1, d):
                a[d] = v
        return a

    @staticmethod
    def filter(a: dict, c: Context) -> dict:
        dead = [d for d in a if _has(c, d)]
        for d in dead:
            del a[d]
        return a

    def enc(self, out: bytearray, f: dict, tbl: _EncTable) -> None:
        _ev(out, len(f))
        venc = self.venc
        for d in sorted(f):
            _ed(out, d, tbl)
            venc(out, f[d])

    def dec(self, buf: bytes, pos: int, table: _Table) -> Tuple[dict, int]:
        k, pos = _uv(buf, pos)
        vdec = self.vdec
        f = {}
        for _ in range(k):
            d, pos = _dd(buf, pos, table)
            v, pos = vdec(buf, pos)
            f[d] = v
        if len(f) != k:
            raise _bad("duplicate dot")
        return f, pos


class _DotMapKind:
    __slots__ = ("sub",)

    def __init__(self, sub):
        self.sub = sub

    @staticmethod
    def empty() -> dict:
        return {}

    def dots(self, m: dict) -> Iterable[Dot]:
        sub = self.sub
        for v in m.values():
            yield from sub.dots(v)

    def copy(self, m: dict) -> dict:
        sub_copy = self.sub.copy
        return {k: sub_copy(v) for k, v in m.items()}

    def join(self, a: dict, c1: Context, b: dict, c2: Context) -> dict:
        sub = self.sub
        if c2:
            dead = []
            for k, v in a.items():
                if k in b:
                    continue
                nv = sub.filter(v, c2)
                if not nv:
                    dead.append(k)
                elif nv is not v:
                    a[k] = nv
            for k in dead:
                del a[k]
        for k, vb in b.items():
            va = a.get(k)
            if va is None:
                nv = sub.filter(vb, c1) if c1 else vb
                if nv:
                    a[k] = nv
            else:
                nv = sub.join(va, c1, vb, c2)
                if nv:
                    a[k] = nv
                else:
                    del a[k]
        return a

    def filter(self, a: dict, c: Context) -> dict:
        sub = self.sub
        dead = []
        for k, v in a.items():
            nv = sub.filter(v, c)
            if not nv:
                dead.append(k)
            elif nv is not v:
                a[k] = nv
        for k in dead:
            del a[k]
        return a

    def enc(self, out: bytearray, m: dict, tbl: _EncTable) -> None:
        _ev(out, len(m))
        sub_enc = self.sub.enc
        for k in sorted(m):
            _eb(out, k)
            sub_enc(out, m[k], tbl)

    def dec(self, buf: bytes, pos: int, table: _Table) -> Tuple[dict, int]:
        cnt, pos = _uv(buf, pos)
        sub_dec = self.sub.dec
        m = {}
        prev = None
        for _ in range(cnt):
            k, pos = _db(buf, pos)
            if prev is not None and k <= prev:
                raise _bad("keys not strictly increasing")
            prev = k
            v, pos = sub_dec(buf, pos, table)
            if not v:
                raise _bad("empty entry")
            m[k] = v
        return m, pos


class _DotSetMapKind(_DotMapKind):
    """``DotMap {key: DotSet}`` (ORSet), with the hot loops inlined: same
    semantics and bytes as ``_DotMapKind(_DotSetKind())``, ~3x faster."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(_DotSetKind())

    def copy(self, m: dict) -> dict:
        return dict(m)  # DotSets are never mutated in place

    def join(self, a: dict, c1: Context, b: dict, c2: Context) -> dict:
        if c2:
            get2 = c2.get
            dead = []
            for k, v in a.items():
                covered = False
                for d in v:
                    iv = get2(d[0])
                    if iv is not None and (iv[0] <= d[1] <= iv[1] if len(iv) == 2 else _iv_has(iv, d[1])):
                        covered = True
                        break
                if not covered or k in b:
                    continue
                nv = {x for x in v if not _has(c2, x)}
                if nv:
                    a[k] = nv
                else:
                    dead.append(k)
            for k in dead:
                del a[k]
        sub_join = _DotSetKind.join
        sub_filter = _DotSetKind.filter
        for k, vb in b.items():
            va = a.get(k)
            if va is None:
                nv = sub_filter(vb, c1) if c1 else vb
                if nv:
                    a[k] = nv
            else:
                nv = sub_join(va, c1, vb, c2)
                if nv:
                    a[k] = nv
                else:
                    del a[k]
        return a

    def enc(self, out: bytearray, m: dict, tbl: _EncTable) -> None:
        _ev(out, len(m))
        append = out.append
        for k in sorted(m):
            n = len(k)
            append(n) if n < 0x80 else _ev(out, n)
            out += k
            v = m[k]
            if len(v) != 1:
                _DotSetKind.enc(out, v, tbl)
                continue
            for d in v:
                i, x = tbl[d[0]]
            if i >= 28:
                _DotSetKind.enc(out, v, tbl)
                continue
            x -= d[1]
            nb = (x.bit_length() + 7) >> 3
            append(1)
            append(i * 9 + nb)
            if nb:
                out += x.to_bytes(nb, "little")

    def dec(self, buf: bytes, pos: int, table: _Table) -> Tuple[dict, int]:
        cnt, pos = _uv(buf, pos)
        size = len(buf)
        t9 = _T9
        from_bytes = int.from_bytes
        m = {}
        prev = None
        for _ in range(cnt):
            n = buf[pos]
            if n < 0x80:
                pos += 1
            else:
                n, pos = _uv(buf, pos)
            end = pos + n
            if end > size:
                raise _bad("truncated byte string")
            k = buf[pos:end]
            pos = end
            if prev is not None and k <= prev:
                raise _bad("keys not strictly increasing")
            prev = k
            t = buf[pos + 1]
            if buf[pos] != 1 or t >= 252:  # not the common single dot of a small node index
                v, pos = _DotSetKind.dec(buf, pos, table)
                if not v:
                    raise _bad("empty entry")
                m[k] = v
                continue
            i, nb = t9[t]
            node, mx, iv = table[i]
            pos += 2
            if nb:
                end = pos + nb
                if end > size or buf[end - 1] == 0:
                    raise _bad("truncated or non-minimal dot")
                h = mx - from_bytes(buf[pos:end], "little")
                pos = end
            else:
                h = mx
            if (h < iv[0]) if len(iv) == 2 else not _iv_has(iv, h):
                raise _bad("dot outside the causal context")
            m[k] = {(node, h)}
        return m, pos


_DOTSET = _DotSetKind()


# --------------------------------------------------------------------------
# the common operator machinery


class _Crdt(MergeOperator):
    """Shared machinery: header, decode/encode wrappers, join fold, operations.

    A non-causal subclass defines ``_empty _join _copy _enc _dec _make_delta
    _value``; a causal one sets ``_kind`` (its dot store) and defines
    ``_store_delta`` and ``_store_value``.
    """

    _TAG = 0
    _causal = False
    _kind: Any = None
    #: operation kind -> needs_state
    _OPS: Dict[str, bool] = {}

    def __init__(self) -> None:
        self._hdr = bytes((FORMAT_VERSION,)) + self._sig()
        # One-slot memo (encoded bytes, decoded state) of the last state decoded
        # for reading or produced by a merge. The decoded state in it is never
        # mutated (mutating callers get a copy) and the slot is replaced as a
        # whole, so sharing an operator between threads stays safe. It makes
        # the engine's make_operand(op, S) + full_merge(S, [operand]) decode S once.
        self._memo: Optional[Tuple[bytes, Any]] = None

    def _sig(self) -> bytes:
        return bytes((self._TAG,))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.name)

    # ---- decoding / encoding of whole states

    def _copy_state(self, obj: Any) -> Any:
        if self._causal:
            return (self._kind.copy(obj[0]), dict(obj[1]))
        return self._copy(obj)

    def _load(self, data: Any, mutable: bool = True) -> Any:
        """Decode a state; ``mutable``: the caller owns (and may mutate) the result."""
        if type(data) is not bytes:
            if not isinstance(data, _BYTES_LIKE):
                raise MergeOperandError(f"{self.name}: operand must be bytes, not {type(data).__name__}")
            data = bytes(data)
        memo = self._memo
        if memo is not None and (memo[0] is data or memo[0] == data):
            return self._copy_state(memo[1]) if mutable else memo[1]
        obj = self._decode(data)
        if not mutable:
            self._memo = (data, obj)
        return obj

    def _decode(self, data: bytes) -> Any:
        hdr = self._hdr
        if not data.startswith(hdr):
            if not data:
                raise MergeOperandError(f"{self.name}: empty operand")
            if data[0] != FORMAT_VERSION:
                raise MergeOperandError(f"{self.name}: unknown format version {data[0]}")
            raise MergeOperandError(f"{self.name}: operand is of another CRDT type (signature {data[1:len(hdr)].hex()})")
        try:
            pos = len(hdr)
            if self._causal:
                ctx, table, pos = _dec_ctx(data, pos)
                store, pos = self._kind.dec(data, pos, table)
                obj: Any = (store, ctx)
            else:
                obj, pos = self._dec(data, pos)
            if pos != len(data):
                raise _bad("trailing bytes")
            return obj
        except MergeOperandError as e:
            raise MergeOperandError(f"{self.name}: undecodable operand: {e}") from None
        except (IndexError, ValueError, KeyError, OverflowError, RecursionError, struct.error) as e:
            raise MergeOperandError(f"{self.name}: undecodable operand ({type(e).__name__}: {e})") from None

    def _dump(self, obj: Any) -> bytes:
        out = bytearray(self._hdr)
        if self._causal:
            store, ctx = obj
            tbl = _enc_ctx(out, ctx)
            self._kind.enc(out, store, tbl)
        else:
            self._enc(out, obj)
        return bytes(out)

    def _bottom(self) -> Any:
        if self._causal:
            return (self._kind.empty(), {})
        return self._empty()

    def _join_into(self, a: Any, b: Any) -> Any:
        if self._causal:
            s1, c1 = a
            s2, c2 = b
            s = self._kind.join(s1, c1, s2, c2)
            return (s, _ctx_union_into(c1, c2))
        return self._join(a, b)

    # ---- MergeOperator

    def full_merge(self, base: Optional[bytes], operands: Sequence[bytes]) -> bytes:
        """Join ``base`` (None: bottom) with every operand.

        Runtime complexity: O(|base| + Σ|operand|) decoding and encoding, plus
        O(|base|) per operand whose causal context is not empty.
        """
        acc = self._load(base) if base is not None else self._bottom()
        for o in operands:
            acc = self._join_into(acc, self._load(o))
        out = self._dump(acc)
        self._memo = (out, acc)
        return out

    def partial_merge(self, left: bytes, right: bytes) -> bytes:
        """The join of two operands (deltas are states). Runtime complexity: O(|left| + |right|)."""
        acc = self._join_into(self._load(left), self._load(right))
        out = self._dump(acc)
        self._memo = (out, acc)
        return out

    def check_operand(self, operand: bytes) -> None:
        self._load(operand, False)

    def needs_state(self, operation: Any) -> bool:
        return type(operation) is Operation and isinstance(self, operation.crdt) and self._OPS.get(operation.kind, False)

    def _check_op(self, op: Any) -> None:
        if type(op) is not Operation or not isinstance(self, op.crdt) or op.kind not in self._OPS:
            raise MergeOperandError(f"{self.name} does not take the operation {op!r}")

    def make_operand(self, operation: Any, state: Optional[bytes], timestamp: Timestamp) -> bytes:
        """Encode ``operation`` as a delta issued at ``timestamp`` by ``timestamp.node_id``.

        Runtime complexity: O(|state|) when :meth:`needs_state`, else O(|operation|).
        """
        if isinstance(operation, _BYTES_LIKE):
            data = bytes(operation)
            self.check_operand(data)
            return data
        self._check_op(operation)
        if state is not None and self._OPS[operation.kind]:
            cur = self._load(state, False)
        else:
            cur = self._bottom()
        if not isinstance(timestamp, Timestamp):
            raise TypeError(f"timestamp must be a Timestamp, not {type(timestamp).__name__}")
        if self._causal:
            store, ctx = cur
            delta: Any = self._store_delta(operation, store, ctx, timestamp)
        else:
            delta = self._make_delta(operation, cur, timestamp)
        return self._dump(delta)

    def to_value(self, state: Optional[bytes]) -> Any:
        """The Python value of an encoded state (None: bottom). Runtime complexity: O(|state|)."""
        obj = self._load(state, False) if state is not None else self._bottom()
        if self._causal:
            return self._store_value(obj[0])
        return self._value(obj)

    # hooks (documented in the class docstring)
    def _store_delta(self, op: Operation, store: Any, ctx: Context, ts: Timestamp) -> Tuple[Any, Context]:
        raise NotImplementedError

    def _store_value(self, store: Any) -> Any:
        raise NotImplementedError


# --------------------------------------------------------------------------
# registers


class LWWRegister(_Crdt):
    """Last-writer-wins register: the write with the greatest ``(hlc, node_id)`` wins.

    State: bottom, or ``(hlc, node, value)``; join is the max of the triples
    (the value only breaks ties that unique timestamps never produce), so
    ``join(a, b) == max(a, b)``. The operand is a full (tiny) state stamped
    with the record's timestamp: no state needed.

    >>> r = LWWRegister()
    >>> a = r.make_operand(LWWRegister.set(b"x"), None, Timestamp(10, 0, 1))
    >>> b = r.make_operand(LWWRegister.set(b"y"), None, Timestamp(9, 0, 2))
    >>> r.to_value(r.full_merge(None, [a, b])), r.to_value(r.full_merge(None, [b, a]))
    (b'x', b'x')
    """

    name = "abase.LWWRegister.v1"
    _TAG = 1
    _OPS = {"set": False}

    @staticmethod
    def set(value: bytes) -> Operation:
        """Set the register to ``value``. Runtime complexity: O(1)."""
        return Operation(LWWRegister, "set", (_as_bytes(value, "value"),))

    @staticmethod
    def _empty() -> Any:
        return None

    @staticmethod
    def _copy(o: Any) -> Any:
        return o

    @staticmethod
    def _join(a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return a if a >= b else b

    @staticmethod
    def _enc(out: bytearray, o: Any) -> None:
        if o is None:
            out.append(0)
            return
        out.append(1)
        _ev(out, o[0])
        _ev(out, o[1])
        _eb(out, o[2])

    @staticmethod
    def _dec(buf: bytes, pos: int) -> Tuple[Any, int]:
        flag = buf[pos]
        pos += 1
        if flag == 0:
            return None, pos
        if flag != 1:
            raise _bad("bad register flag")
        h, pos = _uv(buf, pos)
        n, pos = _uv(buf, pos)
        if n > MAX_NODE_ID:
            raise _bad("node id out of range")
        v, pos = _db(buf, pos)
        return (h, n, v), pos

    @staticmethod
    def _make_delta(op: Operation, cur: Any, ts: Timestamp) -> Any:
        return (ts.hlc, ts.node_id, op.args[0])

    @staticmethod
    def _value(o: Any) -> Optional[bytes]:
        return None if o is None else o[2]


def _max(a: Any, b: Any) -> Any:
    return a if a >= b else b


class MVRegister(_Crdt):
    """Multi-value register: keeps every concurrent write (like Riak siblings).

    State: ``DotFun`` ``{dot: value}`` plus causal context. ``set(v)`` by node
    ``n`` at ``h`` yields the delta ``({(n, h): v}, dots(state) ∪ [p+1, h])``:
    it supersedes every value it has seen, while writes it has not seen stay
    as siblings. Value: ``frozenset`` of the surviving values (empty: unset).

    >>> r = MVRegister()
    >>> a = r.make_operand(MVRegister.set(b"a"), None, Timestamp(1, 0, 1))
    >>> b = r.make_operand(MVRegister.set(b"b"), None, Timestamp(1, 0, 2))
    >>> s = r.full_merge(None, [a, b]); sorted(r.to_value(s))
    [b'a', b'b']
    >>> c = r.make_operand(MVRegister.set(b"c"), s, Timestamp(2, 0, 1))
    >>> r.to_value(r.full_merge(s, [c]))
    frozenset({b'c'})
    """

    name = "abase.MVRegister.v1"
    _TAG = 2
    _causal = True
    _kind = _DotFunKind(_max, _eb, _db)
    _OPS = {"set": True}

    @staticmethod
    def set(value: bytes) -> Operation:
        """Replace every observed value by ``value``. Runtime complexity: O(siblings)."""
        return Operation(MVRegister, "set", (_as_bytes(value, "value"),))

    def _store_delta(self, op, store, ctx, ts):
        n, lo, h = _claim(ctx, ts)
        return {(n, h): op.args[0]}, _ctx_of(store.keys(), (n, lo, h))

    def _store_value(self, store) -> FrozenSet[bytes]:
        return frozenset(store.values())


# --------------------------------------------------------------------------
# counters


class GCounter(_Crdt):
    """Grow-only counter: ``{node: total}``, join = pointwise max, value = Σ totals.

    ``increment(k)`` by node ``n`` yields ``{n: state[n] + k}``: the issuing
    node's new cumulative total (read from the state, so ``needs_state``).
    A duplicated operand joins to itself: ``max(t, t) == t``, no double count.

    >>> c = GCounter()
    >>> op = c.make_operand(GCounter.increment(5), None, Timestamp(1, 0, 7))
    >>> c.to_value(c.full_merge(None, [op, op]))
    5
    """

    name = "abase.GCounter.v1"
    _TAG = 3
    _OPS = {"increment": True}

    @staticmethod
    def increment(n: int = 1) -> Operation:
        """Add ``n >= 0``. Runtime complexity: O(nodes)."""
        return Operation(GCounter, "increment", (_as_count(n, "increment"),))

    @staticmethod
    def _empty() -> dict:
        return {}

    @staticmethod
    def _copy(o: dict) -> dict:
        return dict(o)

    @staticmethod
    def _join(a: dict, b: dict) -> dict:
        for n, v in b.items():
            if v > a.get(n, 0):
                a[n] = v
        return a

    @staticmethod
    def _enc(out: bytearray, o: dict) -> None:
        _ev(out, len(o))
        prev = -1
        for n in sorted(o):
            _ev(out, n - prev - 1)
            prev = n
            _ev(out, o[n])

    @staticmethod
    def _dec(buf: bytes, pos: int) -> Tuple[dict, int]:
        cnt, pos = _uv(buf, pos)
        o = {}
        n = -1
        for _ in range(cnt):
            d, pos = _uv(buf, pos)
            n += d + 1
            if n > MAX_NODE_ID:
                raise _bad("node id out of range")
            v, pos = _uv(buf, pos)
            if v == 0:
                raise _bad("zero counter entry")
            o[n] = v
        return o, pos

    @staticmethod
    def _make_delta(op: Operation, cur: dict, ts: Timestamp) -> dict:
        n = ts.node_id
        t = _total(cur.get(n, 0) + op.args[0])
        return {n: t} if t else {}

    @staticmethod
    def _value(o: dict) -> int:
        return sum(o.values())


class PNCounter(_Crdt):
    """Counter with increments and decrements: ``{node: (P, N)}``, value = ΣP − ΣN.

    Join is the pointwise max of each component. ``increment(k)`` by node ``n``
    yields ``{n: (P_n + k, 0)}`` and ``decrement(k)`` yields ``{n: (0, N_n + k)}``
    (only the changed cumulative total; 0 is bottom for a component), so
    duplicates never double count. A negative ``k`` does the opposite.

    >>> c = PNCounter(); s = None
    >>> for i, op in enumerate([PNCounter.increment(5), PNCounter.decrement(2)]):
    ...     s = c.full_merge(s, [c.make_operand(op, s, Timestamp(i, 0, 1))])
    >>> c.to_value(s)
    3
    """

    name = "abase.PNCounter.v1"
    _TAG = 4
    _OPS = {"increment": True, "decrement": True}

    @staticmethod
    def _amount(n: Any) -> int:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"amount must be int, not {type(n).__name__}")
        if not -_U64 <= n <= _U64:
            raise MergeOperandError(f"amount={n} out of range")
        return n

    @staticmethod
    def increment(n: int = 1) -> Operation:
        """Add ``n``. Runtime complexity: O(nodes)."""
        return Operation(PNCounter, "increment", (PNCounter._amount(n),))

    @staticmethod
    def decrement(n: int = 1) -> Operation:
        """Subtract ``n``. Runtime complexity: O(nodes)."""
        return Operation(PNCounter, "decrement", (PNCounter._amount(n),))

    @staticmethod
    def _empty() -> dict:
        return {}

    @staticmethod
    def _copy(o: dict) -> dict:
        return dict(o)

    @staticmethod
    def _join(a: dict, b: dict) -> dict:
        for n, pn in b.items():
            cur = a.get(n)
            if cur is None:
                a[n] = pn
            elif cur != pn:
                a[n] = (_max(cur[0], pn[0]), _max(cur[1], pn[1]))
        return a

    @staticmethod
    def _enc(out: bytearray, o: dict) -> None:
        _ev(out, len(o))
        prev = -1
        for n in sorted(o):
            _ev(out, n - prev - 1)
            prev = n
            p, m = o[n]
            _ev(out, p)
            _ev(out, m)

    @staticmethod
    def _dec(buf: bytes, pos: int) -> Tuple[dict, int]:
        cnt, pos = _uv(buf, pos)
        o = {}
        n = -1
        for _ in range(cnt):
            d, pos = _uv(buf, pos)
            n += d + 1
            if n > MAX_NODE_ID:
                raise _bad("node id out of range")
            p, pos = _uv(buf, pos)
            m, pos = _uv(buf, pos)
            if p == 0 and m == 0:
                raise _bad("zero counter entry")
            o[n] = (p, m)
        return o, pos

    @staticmethod
    def _make_delta(op: Operation, cur: dict, ts: Timestamp) -> dict:
        n = ts.node_id
        k = op.args[0] if op.kind == "increment" else -op.args[0]
        p, m = cur.get(n, (0, 0))
        if k > 0:
            return {n: (_total(p + k), 0)}
        if k < 0:
            return {n: (0, _total(m - k))}
        return {}

    @staticmethod
    def _value(o: dict) -> int:
        return sum(p for p, _ in o.values()) - sum(m for _, m in o.values())


# --------------------------------------------------------------------------
# sets


class GSet(_Crdt):
    """Grow-only set of byte strings: join = union.

    >>> g = GSet()
    >>> ops = [g.make_operand(GSet.add(x), None, Timestamp(1, 0, 1)) for x in (b"b", b"a", b"b")]
    >>> sorted(g.to_value(g.full_merge(None, ops)))
    [b'a', b'b']
    """

    name = "abase.GSet.v1"
    _TAG = 5
    _OPS = {"add": False}

    @staticmethod
    def add(member: bytes) -> Operation:
        """Add ``member``. Runtime complexity: O(1) (the delta is ``{member}``)."""
        return Operation(GSet, "add", (_as_bytes(member, "member"),))

    @staticmethod
    def _empty() -> set:
        return set()

    @staticmethod
    def _copy(o: set) -> set:
        return set(o)

    @staticmethod
    def _join(a: set, b: set) -> set:
        a |= b
        return a

    @staticmethod
    def _enc(out: bytearray, o: set) -> None:
        _ev(out, len(o))
        for m in sorted(o):
            _eb(out, m)

    @staticmethod
    def _dec(buf: bytes, pos: int) -> Tuple[set, int]:
        cnt, pos = _uv(buf, pos)
        o = set()
        prev = None
        for _ in range(cnt):
            m, pos = _db(buf, pos)
            if prev is not None and m <= prev:
                raise _bad("members not strictly increasing")
            prev = m
            o.add(m)
        return o, pos

    @staticmethod
    def _make_delta(op: Operation, cur: set, ts: Timestamp) -> set:
        return {op.args[0]}

    @staticmethod
    def _value(o: set) -> FrozenSet[bytes]:
        return frozenset(o)


class ORSet(_Crdt):
    """Add-wins observed-remove set (ORSWOT style: no per-element tombstones).

    State: ``DotMap {member: {dots}}`` plus causal context. For node ``n`` at
    ``h`` with ``D = dots(member)``::

        add(x)    = ({x: {(n, h)}}, D ∪ [p+1, h])
        remove(x) = ({},            D)

    A remove deletes exactly the adds it observed; a concurrent add survives.
    On one replica it behaves like a Python ``set``.

    >>> s = ORSet(); st = None
    >>> for i, op in enumerate([ORSet.add(b"a"), ORSet.add(b"b"), ORSet.remove(b"a")]):
    ...     st = s.full_merge(st, [s.make_operand(op, st, Timestamp(i, 0, 1))])
    >>> s.to_value(st)
    frozenset({b'b'})
    """

    name = "abase.ORSet.v1"
    _TAG = 6
    _causal = True
    _kind = _DotSetMapKind()
    _OPS = {"add": True, "remove": True}

    @staticmethod
    def add(member: bytes) -> Operation:
        """Add ``member``. Runtime complexity: O(|state|) to read the state, O(1) delta."""
        return Operation(ORSet, "add", (_as_bytes(member, "member"),))

    @staticmethod
    def remove(member: bytes) -> Operation:
        """Remove ``member`` as observed. Runtime complexity: O(|state|) to read, O(1) delta."""
        return Operation(ORSet, "remove", (_as_bytes(member, "member"),))

    def _store_delta(self, op, store, ctx, ts):
        x = op.args[0]
        dots = store.get(x, ())
        if op.kind == "add":
            claim = _claim(ctx, ts)
            return {x: {(claim[0], claim[2])}}, _ctx_of(dots, claim)
        return {}, _ctx_of(dots)

    def _store_value(self, store) -> FrozenSet[bytes]:
        return frozenset(store)


class EWFlag(_Crdt):
    """Enable-wins flag: ``True`` iff an enable survives.

    State: a set of dots plus causal context. ``enable() = ({(n, h)}, D ∪ [p+1, h])``
    and ``disable() = ({}, D)`` with ``D`` the observed dots: a disable only
    cancels the enables it saw, so a concurrent enable wins.

    >>> f = EWFlag(); st = None
    >>> on = f.make_operand(EWFlag.enable(), st, Timestamp(1, 0, 1))
    >>> off = f.make_operand(EWFlag.disable(), f.full_merge(None, [on]), Timestamp(2, 0, 2))
    >>> again = f.make_operand(EWFlag.enable(), f.full_merge(None, [on]), Timestamp(2, 0, 1))
    >>> f.to_value(f.full_merge(None, [on, off])), f.to_value(f.full_merge(None, [on, off, again]))
    (False, True)
    """

    name = "abase.EWFlag.v1"
    _TAG = 9
    _causal = True
    _kind = _DOTSET
    _OPS = {"enable": True, "disable": True}

    @staticmethod
    def enable() -> Operation:
        """Set the flag. Runtime complexity: O(concurrent enables)."""
        return Operation(EWFlag, "enable", ())

    @staticmethod
    def disable() -> Operation:
        """Clear the flag as observed. Runtime complexity: O(concurrent enables)."""
        return Operation(EWFlag, "disable", ())

    def _store_delta(self, op, store, ctx, ts):
        if op.kind == "enable":
            claim = _claim(ctx, ts)
            return {(claim[0], claim[2])}, _ctx_of(store, claim)
        return set(), _ctx_of(store)

    def _store_value(self, store) -> bool:
        return bool(store)


def _score(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"score must be int or float, not {type(x).__name__}")
    x = float(x)
    if x != x:
        raise MergeOperandError("score must not be NaN")
    return x + 0.0  # -0.0 -> 0.0


class SortedSet(_Crdt):
    """Members with scores (like a Redis sorted set), add-wins membership.

    State: ``DotMap {member: DotFun {dot: score}}`` plus causal context::

        add(m, s)  = ({m: {(n, h): s}}, dots(m) ∪ [p+1, h])
        remove(m)  = ({},               dots(m))

    Score rule: last-writer-wins by timestamp: a member's score is that of its
    surviving add with the greatest ``(hlc, node)`` (an add supersedes the adds
    it observed, so normally only one survives). Scores are floats, no NaN.
    Value: ``[(member, score)]`` sorted by ``(score, member)``.

    >>> z = SortedSet(); st = None
    >>> for i, op in enumerate([SortedSet.add(b"a", 3), SortedSet.add(b"b", 1), SortedSet.add(b"a", 0.5)]):
    ...     st = z.full_merge(st, [z.make_operand(op, st, Timestamp(i, 0, 1))])
    >>> z.to_value(st)
    [(b'a', 0.5), (b'b', 1.0)]
    >>> SortedSet.range_by_score(st, 1, 10)
    [(b'b', 1.0)]
    """

    name = "abase.SortedSet.v1"
    _TAG = 8
    _causal = True
    _kind = _DotMapKind(_DotFunKind(_max, _ef, _df))
    _OPS = {"add": True, "remove": True}

    @staticmethod
    def add(member: bytes, score: float) -> Operation:
        """Add ``member`` or set its score. Runtime complexity: O(|state|) read, O(1) delta."""
        return Operation(SortedSet, "add", (_as_bytes(member, "member"), _score(score)))

    @staticmethod
    def remove(member: bytes) -> Operation:
        """Remove ``member`` as observed. Runtime complexity: O(|state|) read, O(1) delta."""
        return Operation(SortedSet, "remove", (_as_bytes(member, "member"),))

    def _store_delta(self, op, store, ctx, ts):
        m = op.args[0]
        fun = store.get(m)
        dots = fun.keys() if fun else ()
        if op.kind == "add":
            claim = _claim(ctx, ts)
            return {m: {(claim[0], claim[2]): op.args[1]}}, _ctx_of(dots, claim)
        return {}, _ctx_of(dots)

    def _store_value(self, store) -> List[Tuple[bytes, float]]:
        out = []
        for m, fun in store.items():
            if len(fun) == 1:
                for s in fun.values():
                    out.append((s, m))
            else:
                d = max(fun, key=lambda d: (d[1], d[0]))
                out.append((fun[d], m))
        out.sort()
        return [(m, s) for s, m in out]

    @staticmethod
    def range_by_score(state: Optional[bytes], lo: float, hi: float) -> List[Tuple[bytes, float]]:
        """Members with ``lo <= score <= hi``, sorted by ``(score, member)``.

        Runtime complexity: O(|state|) to decode, then O(log n + answer).
        """
        items = _SORTED_SET.to_value(state)
        scores = [s for _, s in items]
        return items[bisect_left(scores, lo):bisect_right(scores, hi)]


_SORTED_SET = SortedSet()


# --------------------------------------------------------------------------
# maps


class ORMap(_Crdt):
    """Observed-remove map whose fields are CRDTs of one fixed type ``F``.

    State: ``DotMap {field: F-store}`` plus one causal context shared by all
    fields. With ``F`` causal (MVRegister, ORSet, EWFlag, SortedSet, ORMap)
    the field's store lives in the map directly::

        update(f, op) = ({f: δs}, δc)  where (δs, δc) = F's delta of op on (store[f], ctx)
        remove(f)     = ({}, dots(store[f]))

    and a field exists while its store is not bottom (e.g. an ORSet field that
    becomes empty, or a disabled EWFlag field, disappears). A remove deletes
    what it observed; a concurrent update's new dots survive (for an ORSet
    field: the concurrent adds).

    With ``F`` not causal (counters, LWWRegister, GSet) each field is a
    ``DotFun {dot: F-state}`` and the field's value is the join of its
    surviving F-states::

        update(f, op) = ({f: {(n, h): V ⊔ δ}}, dots(store[f]) ∪ [p+1, h])

    where ``V`` is the field's observed value: the delta carries the whole
    field value (small for counters and registers), and an update concurrent
    with a remove keeps the field with the value its writer had observed.

    ``name`` includes F's name, so reopening with another field type is a
    mismatch. Value: ``{field: F value}``.

    >>> m = ORMap(PNCounter()); st = None
    >>> ops = [ORMap.update(b"x", PNCounter.increment(2)), ORMap.update(b"y", PNCounter.increment(1)),
    ...        ORMap.remove(b"y"), ORMap.update(b"x", PNCounter.decrement(5))]
    >>> for i, op in enumerate(ops):
    ...     st = m.full_merge(st, [m.make_operand(op, st, Timestamp(i, 0, 1))])
    >>> m.to_value(st)
    {b'x': -3}
    """

    _TAG = 7
    _causal = True
    _OPS = {"update": True, "remove": True}

    def __init__(self, field_type: _Crdt):
        if not isinstance(field_type, _Crdt):
            raise TypeError(f"ORMap field_type must be a CRDT of abase_engine.crdt, not {type(field_type).__name__}")
        self.field_type = field_type
        self.name = f"abase.ORMap.v1[{field_type.name}]"
        if field_type._causal:
            self._fkind: Any = field_type._kind
        else:
            self._fkind = _DotFunKind(field_type._join, field_type._enc, field_type._dec, field_type._copy)
        self._kind = _DotMapKind(self._fkind)
        super().__init__()

    def _sig(self) -> bytes:
        return bytes((self._TAG,)) + self.field_type._sig()

    def __repr__(self) -> str:
        return f"ORMap({self.field_type!r})"

    @staticmethod
    def update(field: bytes, op: Operation) -> Operation:
        """Apply the field type's operation ``op`` to ``field`` (creating it).

        Runtime complexity: O(|state|) to read; delta O(F's delta) for causal
        F, O(|field value|) otherwise.
        """
        if type(op) is not Operation:
            raise TypeError(f"ORMap.update needs an Operation, not {type(op).__name__}")
        return Operation(ORMap, "update", (_as_bytes(field, "field"), op))

    @staticmethod
    def remove(field: bytes) -> Operation:
        """Remove ``field`` as observed. Runtime complexity: O(|state|) read, O(|field|) delta."""
        return Operation(ORMap, "remove", (_as_bytes(field, "field"),))

    def _store_delta(self, op, store, ctx, ts):
        f = op.args[0]
        fs = store.get(f)
        if op.kind == "remove":
            return {}, _ctx_of(self._fkind.dots(fs) if fs else ())
        fop = op.args[1]
        F = self.field_type
        F._check_op(fop)
        if F._causal:
            ds, dc = F._store_delta(fop, fs if fs is not None else self._fkind.empty(), ctx, ts)
            return ({f: ds} if ds else {}), dc
        observed = F._empty()
        if fs:
            for v in fs.values():
                observed = F._join(observed, F._copy(v))
        d = F._make_delta(fop, observed, ts)
        claim = _claim(ctx, ts)
        return {f: {(claim[0], claim[2]): F._join(observed, d)}}, _ctx_of(fs.keys() if fs else (), claim)

    def _store_value(self, store) -> Dict[bytes, Any]:
        F = self.field_type
        if F._causal:
            return {f: F._store_value(s) for f, s in store.items()}
        out = {}
        for f, fun in store.items():
            acc = F._empty()
            for v in fun.values():
                acc = F._join(acc, F._copy(v))
            out[f] = F._value(acc)
        return out
