/*
 * crdt.h: the built-in CRDTs in C, for the merge-namespace fast paths.
 *
 * The reference is the Python package abase_engine/crdt: the encodings
 * (documented in crdt/__init__.py) and the join are the same byte for byte
 * (tests/test_crdt_c.py checks it on random states, operands and deletes).
 * Files:
 *   crdt_codec.c  buffers, varints, timestamps, causal contexts, dots
 *   crdt_state.c  decoded states: decode, encode, join, local operations
 *   crdt_path.c   CPython glue: the per-namespace fast path with its cache
 *                 of folded states, the merge lock, test entry points
 * Supported types (by their tag): LWWRegister 1, MVRegister 2, GCounter 3,
 * PNCounter 4, GSet 5, ORSet 6, SortedSet 8, EWFlag 9 (not ORMap: its
 * namespaces take the Python path).
 *
 * Nothing here holds a lock or calls Python, except crdt_path.c. Every
 * decoder checks every length against its buffer: bad bytes give an error
 * (CR_EBAD), never an out-of-bounds read. Allocation failures give CR_ENOMEM.
 */
#ifndef ABASE_CRDT_H
#define ABASE_CRDT_H

#include <stddef.h>
#include <stdint.h>

#define CR_VERSION 2
#define CR_MAX_NODE 0xFFFFFFFFu

enum { CR_OK = 0, CR_EBAD = -1, CR_ENOMEM = -2, CR_EOVERFLOW = -3, CR_ESTALE = -4 };

enum {
    CT_LWW = 1,
    CT_MV = 2,
    CT_GC = 3,
    CT_PN = 4,
    CT_GSET = 5,
    CT_ORSET = 6,
    CT_ZSET = 8,
    CT_FLAG = 9,
};

/* ------------------------------------------------------------ buffers */

/* A growable output buffer; `oom` is sticky (also set on an encoding error).
 * `ext`: p is the caller's storage (never freed; copied out when it grows). */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
    int ext;
} cbuf;

void cbuf_free(cbuf *b);
int cbuf_reserve(cbuf *b, size_t more);
void cbuf_put(cbuf *b, const void *src, size_t n);
void cbuf_u8(cbuf *b, uint8_t v);
void cbuf_uv(cbuf *b, uint64_t v);
void cbuf_bytes(cbuf *b, const uint8_t *src, size_t n);

/* A reader; `err` is sticky: once set, every read returns 0. */
typedef struct {
    const uint8_t *p;
    size_t n, pos;
    int err;
} crd;

uint8_t crd_u8(crd *r);
uint64_t crd_uv_slow(crd *r);

/* A varint (see crdt_codec.c); the one-byte case inline. */
static inline uint64_t crd_uv(crd *r)
{
    if (!r->err && r->pos < r->n && r->p[r->pos] < 0x80)
        return r->p[r->pos++];
    return crd_uv_slow(r);
}
const uint8_t *crd_take(crd *r, size_t n);
/* u(len) bytes; the span stays inside the reader's buffer */
const uint8_t *crd_bytes(crd *r, uint32_t *len);

/* ------------------------------------------------------------ timestamps */

/* A timestamp: ordered by (hlc, node). */
typedef struct {
    uint64_t hlc;
    uint32_t node;
} cts;

static inline int cts_cmp(cts a, cts b)
{
    if (a.hlc != b.hlc)
        return a.hlc < b.hlc ? -1 : 1;
    return a.node < b.node ? -1 : a.node > b.node;
}

/* A dot (node, hlc): ordered by (node, hlc), the canonical order of a store. */
typedef struct {
    uint32_t node;
    uint64_t hlc;
} cdot;

static inline int cdot_cmp(cdot a, cdot b)
{
    if (a.node != b.node)
        return a.node < b.node ? -1 : 1;
    return a.hlc < b.hlc ? -1 : a.hlc > b.hlc;
}

/* Whether dot d is newer than the watermark w (timestamp order). */
static inline int cdot_after(cdot d, cts w)
{
    return d.hlc > w.hlc || (d.hlc == w.hlc && d.node > w.node);
}

cts crd_ts(crd *r);
void cbuf_ts(cbuf *b, cts t);

/* ------------------------------------------------------------ contexts */

/* One node of a causal context: sorted, disjoint, non-adjacent closed
 * intervals [iv[2i], iv[2i+1]]; one interval lives inline. */
typedef struct {
    uint32_t node;
    uint32_t n, cap; /* intervals, capacity (cap <= 1: inline) */
    uint64_t inl[2];
    uint64_t *heap;
} cnode;

typedef struct {
    cnode *v;
    uint32_t n, cap;
} cctx;

static inline uint64_t *cnode_iv(cnode *c) { return c->cap > 1 ? c->heap : c->inl; }
static inline const uint64_t *cnode_civ(const cnode *c) { return c->cap > 1 ? c->heap : c->inl; }

void ctx_free(cctx *c);
int ctx_copy(cctx *dst, const cctx *src);
int ctx_has(const cctx *c, cdot d);
/* greatest hlc of node in the context; 0 and *found = 0 if none */
uint64_t ctx_max(const cctx *c, uint32_t node, int *found);
int ctx_add(cctx *c, uint32_t node, uint64_t lo, uint64_t hi);
int ctx_union(cctx *a, const cctx *b);
int ctx_equal(const cctx *a, const cctx *b);
int ctx_decode(crd *r, cctx *out);
void ctx_encode(cbuf *b, const cctx *c);
/* a dot against the context's table (crdt/_causal.py) */
cdot dot_decode(crd *r, const cctx *c);
void dot_encode(cbuf *b, const cctx *c, cdot d);

/* ------------------------------------------------------------ states */

/* A dot with a score (SortedSet) or nothing (ORSet, GSet: the member's
 * timestamp as a dot (node, hlc)). */
typedef struct {
    cdot d;
    double s;
} cdv;

/* One member of a set: its bytes and its dots (one inline). */
typedef struct {
    uint8_t *key;
    uint32_t klen;
    uint32_t n, cap;
    uint64_t hash;
    cdv one;
    cdv *more;
} cmember;

static inline cdv *cmember_dots(cmember *m) { return m->cap > 1 ? m->more : &m->one; }

/* member bytes -> cmember, open addressing over a dense entry array */
typedef struct {
    cmember *e;
    uint32_t n, cap;
    uint32_t *slot; /* 0 empty, UINT32_MAX deleted, else entry index + 1 */
    uint32_t nslot, used;
} cmap;

typedef struct {
    uint32_t node;
    uint64_t p, n, pr, nr;
} ccount;

typedef struct {
    cdot d;
    uint8_t *v;
    uint32_t len;
} cmv;

/* A decoded state of one of the supported types. A state is never moved
 * by value (the counters of up to two nodes live inside it). */
typedef struct {
    int tag;
    uint32_t ncnt, capcnt;
    ccount *cnt; /* counters, sorted by node: cnt_inl, or allocated */
    ccount cnt_inl[2];
    int has_wm; /* LWW, GSet, SortedSet */
    cts wm;
    int has_reg; /* LWW */
    cts reg;
    uint8_t *reg_v;
    uint32_t reg_len;
    cctx ctx; /* MV, ORSet, SortedSet, EWFlag */
    cdot *dots; /* EWFlag, sorted */
    uint32_t ndots, capdots;
    cmv *mv; /* MVRegister, sorted by dot */
    uint32_t nmv, capmv;
    cmap map; /* GSet, ORSet, SortedSet */
} cstate;

int crdt_supported(int tag);
void cstate_init(cstate *s, int tag);
void cstate_free(cstate *s);
int cstate_copy(cstate *dst, const cstate *src);
/* Decode a whole encoded state (header included) of type tag. */
int cstate_decode(const uint8_t *p, size_t n, int tag, cstate *out);
/* Join the encoded state `p` into `s` (s ⊔= decode(p)). On an error s may
 * be left joined with part of p: discard it. */
int cstate_join_bytes(cstate *s, const uint8_t *p, size_t n);
int cstate_join(cstate *a, const cstate *b);
/* Encode canonically, header included. */
int cstate_encode(const cstate *s, cbuf *out);
/* Whether anything is visible (else the key reads as absent). */
int cstate_live(const cstate *s);
/* Size of the state, for the cache's budget (approximate bytes). */
size_t cstate_bytes(const cstate *s);

/* Room for n counter entries. */
int cstate_reserve_counters(cstate *s, uint32_t n);
/* Drop what the watermark covers (LWW register, set members' dots). */
void cstate_drop_upto_wm(cstate *s);

/* cmap */
cmember *cmap_find(const cmap *m, const uint8_t *key, uint32_t klen);
/* a new member (absent before), key copied, no dots; NULL: out of memory */
cmember *cmap_insert_member(cmap *m, const uint8_t *key, uint32_t klen);
/* remove a member (a pointer into m->e); the last member moves into its place */
void cmap_remove_member(cmap *m, cmember *e);
void cmap_clear(cmap *m);
/* replace the member's dots by v alone */
void cmember_set(cmember *m, cdv v);
/* the sorted members, for encoding and values (caller frees) */
cmember **cmap_sorted(const cmap *m);

/* ------------------------------------------------------------ operations */

/* An operation of the supported types, parsed by crdt_path.c. */
enum {
    OP_SET = 1,      /* LWW, MV: bytes */
    OP_INC,          /* GC, PN: amount (PN: signed) */
    OP_ADD,          /* GSet, ORSet: member; SortedSet: member, score */
    OP_REMOVE,       /* ORSet, SortedSet: member */
    OP_ENABLE,       /* EWFlag */
    OP_DISABLE,      /* EWFlag */
    OP_DELETE,       /* a key delete (every type) */
};

typedef struct {
    int kind;
    const uint8_t *b; /* bytes argument: value or member */
    uint32_t blen;
    int neg;          /* OP_INC of a PNCounter: subtract amt */
    uint64_t amt;
    double score;
} cop;

/* The operand of `op` issued at ts by ts.node, given the key's state s
 * (what crdt make_operand / removal build in Python). CR_EOVERFLOW: a
 * counter total past 64 bits; CR_ESTALE: ts not newer than the node's last
 * dot in s; both are left to the Python path, which raises. */
int crdt_operand(const cstate *s, const cop *op, cts ts, cbuf *out);
/* s ⊔= the operand of op at ts (the same as joining crdt_operand's bytes,
 * in O(1) for adds, removes and increments). */
int crdt_apply_local(cstate *s, const cop *op, cts ts);

#endif
