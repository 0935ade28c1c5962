/*
 * crdt_path.c: the merge-namespace fast path (CPython glue over crdt.h).
 *
 * abase_engine._fast.CrdtPath serves `merge`, `get`, `delete`, `merge_many`
 * and `get_many` of one namespace whose operator is a built-in CRDT (not
 * ORMap, not a subclass), each in one call from Python:
 *   - a cache of folded states, per key: valid while the key's newest log
 *     record (its head address) and the store's generation are those it
 *     was folded at; a miss folds the key's log versions (abase_merge_read)
 *     and, when they do not end at a checkpoint, its stored state (through
 *     the Python callable store_get) in C;
 *   - a merge builds its operand in C from the cached state, reading only
 *     what the operation needs (crdt_ops.c), takes timestamps, and appends
 *     with abase_append_if, which fails (and the merge retries) if the key
 *     gained a record since the state was read; then it joins the operand
 *     into the cached state in O(1). Every max_successive_merges records of
 *     a key it also appends the whole state as a checkpoint, so that cold
 *     reads stay short;
 *   - a read builds the Python value from the cached state once.
 * The merge holds the engine's merge lock (a MergeLock, below) like the
 * Python write path, so a local read-modify-write through either path
 * never interleaves with one through the other. The core's calls are made
 * in their nowait mode with the GIL held; only when one would wait is the
 * GIL released around the blocking call.
 * Anything unusual (keywords, a snapshot read, a raw operand, a value the
 * C decoder refuses, a counter overflow, an engine without its fast paths)
 * goes to the general Python path given at creation, which also raises
 * every error.
 * The merge lock, values and operation parsing are in crdt_py.c.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdlib.h>
#include <string.h>

#include "abase.h"
#include "crdt.h"
#include "crdt_py.h"
#include "fast.h"

/* ------------------------------------------------------------ the cache */

/* In-flight marker: a head no record has, set while an append whose
 * effect is already in the cached state has not returned, so that a reader
 * that runs meanwhile (the GIL released) folds the key again. */
#define HEAD_IN_FLIGHT UINT64_MAX

/* One cached key: this header, then the key's bytes (padded to 8), then
 * its decoded state, in one allocation, so that a lookup's compare and the
 * head check touch one cache line for a short key. */
typedef struct {
    uint32_t klen;
    uint32_t walked; /* records a read of the key walks (to the checkpoint) */
    uint64_t head;   /* the key's head address the state is current for */
    uint64_t gen;    /* the store generation it was folded at */
    uint64_t since;  /* bytes of records a read walks (since the checkpoint) */
    uint64_t size;   /* about the size of the encoded state */
    uint64_t apps;   /* the append count at which head was last checked (0: none) */
    PyObject *value; /* the Python value of the state, built by a read (NULL: not yet) */
    uint8_t key[];   /* klen bytes, then the cstate (entry_state) */
} centry;

static size_t pad8(size_t n) { return (n + 7u) & ~(size_t)7u; }

static cstate *entry_state(centry *e) { return (cstate *)(void *)(e->key + pad8(e->klen)); }

static centry *entry_new(size_t klen)
{
    centry *e = calloc(1, sizeof(centry) + pad8(klen) + sizeof(cstate));
    if (e)
        e->klen = (uint32_t)klen;
    return e;
}

typedef struct {
    uint64_t h;
    centry *e; /* NULL: free */
} cslot;

typedef struct {
    cslot *slot;
    uint32_t nslot, n, max, hand;
} ccache;

static uint64_t key_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull ^ n;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ull;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    return h;
}

static void entry_free(centry *e)
{
    Py_XDECREF(e->value); /* ints, bytes, frozensets, lists of tuples: no Python code runs */
    cstate_free(entry_state(e));
    free(e);
}

static uint32_t cache_pos(const ccache *c, const uint8_t *key, size_t klen, uint64_t h, int *found)
{
    uint32_t mask = c->nslot - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        const cslot *sl = &c->slot[i];
        if (!sl->e) {
            *found = 0;
            return i;
        }
        if (sl->h == h && sl->e->klen == klen && (klen == 0 || memcmp(sl->e->key, key, klen) == 0)) {
            *found = 1;
            return i;
        }
    }
}

/* The entry whose slot holds hash h, without touching it (a hash of 64
 * bits collides so rarely that the caller confirms with the key later),
 * and a prefetch of it: its cache line arrives while the caller does
 * something else (the head lookup), instead of after. */
static centry *cache_peek(const ccache *c, uint64_t h)
{
    if (!c->nslot)
        return NULL;
    uint32_t mask = c->nslot - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        const cslot *sl = &c->slot[i];
        if (!sl->e)
            return NULL;
        if (sl->h == h) {
            __builtin_prefetch(sl->e);
            __builtin_prefetch((const char *)sl->e + 64);
            return sl->e;
        }
    }
}

static centry *cache_find(const ccache *c, const uint8_t *key, size_t klen)
{
    if (!c->nslot)
        return NULL;
    int found;
    uint32_t i = cache_pos(c, key, klen, key_hash(key, klen), &found);
    return found ? c->slot[i].e : NULL;
}

/* remove the entry in slot i (backward-shift deletion) */
static void cache_remove_at(ccache *c, uint32_t i)
{
    entry_free(c->slot[i].e);
    c->slot[i].e = NULL;
    c->n--;
    uint32_t mask = c->nslot - 1;
    for (uint32_t j = (i + 1) & mask; c->slot[j].e; j = (j + 1) & mask) {
        uint32_t home = (uint32_t)c->slot[j].h & mask;
        /* move j back to i if its home is not in (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            c->slot[i] = c->slot[j];
            c->slot[j].e = NULL;
            i = j;
        }
    }
}

static void cache_drop(ccache *c, const uint8_t *key, size_t klen)
{
    if (!c->nslot)
        return;
    int found;
    uint32_t i = cache_pos(c, key, klen, key_hash(key, klen), &found);
    if (found)
        cache_remove_at(c, i);
}

static void cache_clear(ccache *c)
{
    for (uint32_t i = 0; i < c->nslot; i++)
        if (c->slot[i].e)
            entry_free(c->slot[i].e);
    free(c->slot);
    c->slot = NULL;
    c->nslot = c->n = 0;
}

/* Insert e (its key absent), evicting an entry when full; on failure e is freed. */
static int cache_put(ccache *c, centry *e, uint64_t h)
{
    if (c->n >= c->max && c->n) { /* evict the next entry after a moving hand */
        for (uint32_t k = 0; k < c->nslot; k++) {
            uint32_t i = (c->hand + k) & (c->nslot - 1);
            if (c->slot[i].e) {
                c->hand = i + 1;
                cache_remove_at(c, i);
                break;
            }
        }
    }
    if ((uint64_t)(c->n + 1) * 2 > c->nslot) {
        uint32_t ns = c->nslot ? c->nslot * 2 : 64;
        cslot *slot = calloc(ns, sizeof(cslot));
        if (!slot) {
            entry_free(e);
            return -1;
        }
        for (uint32_t i = 0; i < c->nslot; i++) {
            if (!c->slot[i].e)
                continue;
            uint32_t j = (uint32_t)c->slot[i].h & (ns - 1);
            while (slot[j].e)
                j = (j + 1) & (ns - 1);
            slot[j] = c->slot[i];
        }
        free(c->slot);
        c->slot = slot;
        c->nslot = ns;
    }
    int found;
    uint32_t i = cache_pos(c, e->key, e->klen, h, &found);
    if (found) { /* cannot happen: the caller dropped it; replace anyway */
        entry_free(c->slot[i].e);
        c->n--;
    }
    c->slot[i].h = h;
    c->slot[i].e = e;
    c->n++;
    return 0;
}

/* ------------------------------------------------------------ CrdtPath */

typedef int (*head_fn)(abase_db *, uint32_t, const uint8_t *, size_t, int, uint64_t *);
typedef int64_t (*read_fn)(abase_db *, uint32_t, const uint8_t *, size_t, int, uint8_t *, size_t,
                           abase_getinfo *, uint64_t *);
typedef int (*issue_fn)(abase_db *, uint32_t, int, uint64_t *);
typedef int (*apps_fn)(abase_db *, int, uint64_t *);
typedef int (*append_fn)(abase_db *, uint32_t, const uint8_t *, size_t, uint64_t, uint32_t, const uint8_t *,
                         const uint8_t *, const uint8_t *const *, const uint32_t *, uint64_t *, int,
                         uint64_t *);

typedef struct {
    PyObject_HEAD
    abase_db *db; /* NULL once detached: every call takes the general path */
    head_fn head;
    read_fn read;
    issue_fn issue;
    append_fn append;
    apps_fn appends;
    uint32_t ns;
    uint32_t node;
    int tag;
    uint32_t cap;            /* max_successive_merges */
    char enabled;            /* cleared while writes need the general path */
    char store_empty;        /* the store holds nothing of this namespace */
    unsigned long long gen;  /* the store's generation (set after each commit) */
    ccache cache;
    PyObject *op_type;       /* abase_engine.crdt.Operation */
    PyObject *crdt_cls;      /* the class its operations name */
    PyObject *ts_type;       /* Timestamp */
    PyObject *node_obj;
    MergeLock *lock;
    PyObject *slow_merge, *slow_get, *slow_delete; /* the general paths */
    PyObject *store_get;     /* key -> raw stored version or None */
    PyObject *fail;          /* (status, what) -> exception */
    unsigned long long hits, misses, conflicts;
} CrdtPath;

enum { FALLBACK = 0, DONE = 1, FAILED = -1 };

static int usable(CrdtPath *self) { return self->enabled && self->db != NULL; }

static PyObject *raise_status(CrdtPath *self, int64_t rc, const char *what)
{
    PyObject *exc = PyObject_CallFunction(self->fail, "Ls", (long long)rc, what);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *make_ts(CrdtPath *self, uint64_t hlc)
{
    return fast_ts_new((PyTypeObject *)self->ts_type, hlc, self->node);
}

/* Join the stored version `raw` (store encoding: kind u8 | hlc u64 | node
 * u32 | state) into st. FALLBACK for anything but a plain STATE. */
static int join_stored(CrdtPath *self, PyObject *raw, cstate *st)
{
    if (raw == Py_None)
        return DONE;
    if (!PyBytes_Check(raw))
        return FALLBACK;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (n < 13 || p[0] != 3) /* STATE, without an anchor */
        return FALLBACK;
    (void)self;
    return cstate_join_bytes(st, p + 13, (size_t)(n - 13)) == CR_OK ? DONE : FALLBACK;
}

/* The key's current folded state, through the cache (GIL held). DONE with
 * *out set (valid until the GIL is next released), FALLBACK, or FAILED with
 * an exception set. */
static int current(CrdtPath *self, PyObject *key, centry **out)
{
    const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(key);
    size_t kl = (size_t)PyBytes_GET_SIZE(key);
    abase_db *db = self->db;
    uint32_t ns = self->ns;
    uint64_t head = 0, apps = 0;
    centry *cand = cache_peek(&self->cache, key_hash(k, kl));
    /* While no record was appended since the entry's head was checked, it
     * is still the key's head: no index lookup needed. */
    if (self->appends(db, 1, &apps) != ABASE_OK)
        apps = 0;
    if (cand && apps && cand->apps == apps && cand->gen == self->gen && cand->head != HEAD_IN_FLIGHT &&
        cand->klen == kl && (kl == 0 || memcmp(cand->key, k, kl) == 0)) {
        self->hits++;
        *out = cand;
        return DONE;
    }
    if (cand) { /* cached (a 64-bit hash rarely lies): is it still the key's head? */
        int rc = self->head(db, ns, k, kl, 1, &head);
        if (rc == ABASE_EWOULDBLOCK) {
            head_fn f = self->head;
            Py_BEGIN_ALLOW_THREADS
            rc = f(db, ns, k, kl, 0, &head);
            Py_END_ALLOW_THREADS
            /* other threads ran: the entry may have been replaced or freed */
            cand = cache_peek(&self->cache, key_hash(k, kl));
        }
        if (rc != ABASE_OK) {
            raise_status(self, rc, "get");
            return FAILED;
        }
        centry *e = cand && cand->klen == kl && (kl == 0 || memcmp(cand->key, k, kl) == 0)
                        ? cand : cache_find(&self->cache, k, kl);
        if (e && e->head == head && e->gen == self->gen) {
            self->hits++;
            e->apps = apps; /* read before the head: any later append moves the count */
            *out = e;
            return DONE;
        }
    }
    self->misses++;
    /* fold the log's versions (newest first, to a checkpoint), then the store */
    uint64_t gen = self->gen;
    uint8_t small[4096];
    uint8_t *buf = small;
    size_t cap = sizeof(small);
    abase_getinfo info;
    int64_t n;
    for (;;) {
        n = self->read(db, ns, k, kl, 1, buf, cap, &info, &head);
        if (n == ABASE_EWOULDBLOCK) {
            read_fn f = self->read;
            Py_BEGIN_ALLOW_THREADS
            n = f(db, ns, k, kl, 0, buf, cap, &info, &head);
            Py_END_ALLOW_THREADS
        }
        if (n != ABASE_ETOOSMALL)
            break;
        if (buf != small)
            free(buf);
        cap = (size_t)info.needed;
        if (!(buf = malloc(cap))) {
            PyErr_NoMemory();
            return FAILED;
        }
    }
    if (n < 0) {
        if (buf != small)
            free(buf);
        raise_status(self, n, "get");
        return FAILED;
    }
    centry *ne = entry_new(kl);
    int res = ne ? DONE : FAILED;
    if (ne) {
        cstate_init(entry_state(ne), self->tag);
        /* Join oldest first (the read gives newest first): the checkpoint,
         * then the deltas after it, whose new members or nodes then mostly
         * go at the end of the sorted arrays (joins are order-free). */
        size_t *offs = malloc(sizeof(size_t) * (info.nrecords ? info.nrecords : 1));
        size_t off = 0;
        uint32_t cnt = 0;
        if (!offs) {
            res = FAILED;
            PyErr_NoMemory();
        }
        for (uint32_t i = 0; offs && i < info.nrecords; i++) {
            uint32_t vlen;
            if ((size_t)n - off < 24 || (memcpy(&vlen, buf + off + 4, 4), (size_t)n - off - 24 < vlen)) {
                res = FALLBACK;
                break;
            }
            offs[cnt++] = off;
            off += 24 + (((size_t)vlen + 7u) & ~(size_t)7u);
        }
        while (res == DONE && cnt--) {
            uint32_t vlen;
            memcpy(&vlen, buf + offs[cnt] + 4, 4);
            if (cstate_join_bytes(entry_state(ne), buf + offs[cnt] + 24, vlen) != CR_OK)
                res = FALLBACK;
        }
        free(offs);
        ne->walked = info.nrecords;
        ne->since = info.needed;
        ne->size = info.needed;
    } else {
        PyErr_NoMemory();
    }
    if (buf != small)
        free(buf);
    if (res == DONE && !info.complete && !self->store_empty) {
        PyObject *raw = PyObject_CallOneArg(self->store_get, key);
        if (!raw)
            res = FAILED;
        else
            res = join_stored(self, raw, entry_state(ne));
        if (raw && PyBytes_Check(raw))
            ne->size += (uint64_t)PyBytes_GET_SIZE(raw);
        Py_XDECREF(raw);
    }
    if (res != DONE) {
        if (ne) {
            cstate_free(entry_state(ne));
            free(ne);
        }
        return res;
    }
    if (kl)
        memcpy(ne->key, k, kl);
    ne->head = head;
    ne->gen = gen;
    ne->apps = apps;
    cache_drop(&self->cache, k, kl);
    if (cache_put(&self->cache, ne, key_hash(k, kl)) < 0) {
        PyErr_NoMemory();
        return FAILED;
    }
    *out = ne;
    return DONE;
}

/* Issue n timestamps. */
/* Issue n timestamps; *blocked: the GIL was released meanwhile (so any
 * cache entry the caller holds may be gone). */
static int issue(CrdtPath *self, uint32_t n, uint64_t *out, int *blocked)
{
    abase_db *db = self->db;
    int rc = self->issue(db, n, 1, out);
    *blocked = rc == ABASE_EWOULDBLOCK;
    if (rc == ABASE_EWOULDBLOCK) {
        issue_fn f = self->issue;
        Py_BEGIN_ALLOW_THREADS
        rc = f(db, n, 0, out);
        Py_END_ALLOW_THREADS
    }
    return rc;
}

/* Whether the merge should also append a checkpoint: reads of the key walk
 * max_successive_merges records, and the records since the last checkpoint
 * add up to the state's size at least, so that writing the whole state
 * costs O(1) per byte of operand even for a big state (and a cold read
 * decodes at most about twice the state). */
static int checkpoint_due(const CrdtPath *self, const centry *e)
{
    return e->walked + 1 >= self->cap && e->since >= e->size;
}

/* One local operation (a merge or a key delete) of key, with the merge lock
 * held. DONE with *ts set, FALLBACK, or FAILED. */
static int write_one(CrdtPath *self, PyObject *key, const cop *op, PyObject **ts)
{
    const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(key);
    size_t kl = (size_t)PyBytes_GET_SIZE(key);
    /* counters build their operands without the record's timestamp: it is
     * issued by the append itself, under the one lock it takes */
    int needs_ts = self->tag != CT_GC && self->tag != CT_PN;
    uint8_t small[256];
    for (int attempt = 0; attempt < 8; attempt++) {
        /* A cached state folded at this store generation is used without
         * looking at the head: the compare-and-append below finds out if
         * the key gained a record meanwhile. */
        centry *e = cache_find(&self->cache, k, kl);
        if (!e || e->gen != self->gen || e->head == HEAD_IN_FLIGHT || attempt) {
            int r = current(self, key, &e);
            if (r != DONE)
                return r;
        }
        uint64_t expect = e->head, gen = e->gen;
        uint64_t hlcs[2] = {0, 0};
        if (needs_ts) {
            int blocked;
            int rc = issue(self, 1, hlcs, &blocked);
            if (rc != ABASE_OK) {
                if (rc == ABASE_EAGAIN || rc == ABASE_ERANGE)
                    return FALLBACK;
                raise_status(self, rc, "merge");
                return FAILED;
            }
            if (blocked) /* other threads ran: e may be gone; read the key again */
                continue;
        }
        cts t = {hlcs[0], self->node};
        cbuf operand = {small, 0, sizeof(small), 0, 1}, whole = {0};
        int cr = crdt_operand(entry_state(e), op, t, &operand);
        int checkpoint = checkpoint_due(self, e);
        int in_place = 0; /* the cached state already holds the operation */
        uint8_t ops[2] = {op->kind == OP_DELETE ? ABASE_OP_DELETE : ABASE_OP_MERGE, ABASE_OP_PUT};
        uint8_t flags[2] = {0, ABASE_F_CHECKPOINT};
        if (cr == CR_OK && (checkpoint || op->kind == OP_DELETE)) {
            /* the state after the operation, in place: its bytes are the
             * checkpoint, and tell whether a delete leaves exactly its value */
            Py_CLEAR(e->value);
            cr = crdt_apply_local(entry_state(e), op, t);
            in_place = 1;
            if (cr == CR_OK)
                cr = cstate_encode(entry_state(e), &whole);
            if (cr == CR_OK && op->kind == OP_DELETE && whole.n == operand.n &&
                memcmp(whole.p, operand.p, operand.n) == 0) {
                flags[0] = ABASE_F_CHECKPOINT; /* the delete's value is the whole state after it */
                checkpoint = 0;
                cbuf_free(&whole);
            }
        }
        uint32_t n = checkpoint ? 2 : 1;
        if (cr != CR_OK || operand.n > ABASE_MAX_VALUE || whole.n > ABASE_MAX_VALUE) {
            cbuf_free(&operand);
            cbuf_free(&whole);
            if (in_place)
                cache_drop(&self->cache, k, kl);
            if (cr == CR_ENOMEM) {
                PyErr_NoMemory();
                return FAILED;
            }
            return FALLBACK; /* overflow, a stale clock, a value too large: the general path raises */
        }
        if (in_place)
            e->head = HEAD_IN_FLIGHT;
        const uint8_t *vals[2] = {operand.p, whole.p};
        uint32_t lens[2] = {(uint32_t)operand.n, (uint32_t)whole.n};
        uint64_t addr = 0;
        abase_db *db = self->db;
        int rc = self->append(db, self->ns, k, kl, expect, n, ops, flags, vals, lens, hlcs, 1, &addr);
        if (rc == ABASE_EWOULDBLOCK) {
            append_fn f = self->append;
            uint32_t ns = self->ns;
            Py_BEGIN_ALLOW_THREADS
            rc = f(db, ns, k, kl, expect, n, ops, flags, vals, lens, hlcs, 0, &addr);
            Py_END_ALLOW_THREADS
        }
        uint64_t oplen = operand.n;
        cbuf_free(&operand);
        cbuf_free(&whole);
        if (rc != ABASE_OK) {
            if (in_place || rc == ABASE_ECONFLICT)
                cache_drop(&self->cache, k, kl);
            if (rc == ABASE_ECONFLICT) { /* the key gained a record meanwhile: read it again */
                self->conflicts++;
                continue;
            }
            if (rc == ABASE_EWOULDBLOCK || rc == ABASE_EAGAIN)
                return FALLBACK; /* durability "sync", a used-up clock: the general path waits */
            raise_status(self, rc, op->kind == OP_DELETE ? "delete" : "merge");
            return FAILED;
        }
        /* the GIL may have been released: find the entry again */
        centry *now = cache_find(&self->cache, k, kl);
        if (now && now == e && now->head == (in_place ? HEAD_IN_FLIGHT : expect) && now->gen == gen) {
            t.hlc = hlcs[0];
            Py_CLEAR(e->value);
            if (!in_place && crdt_apply_local(entry_state(e), op, t) != CR_OK) {
                cache_drop(&self->cache, k, kl);
            } else {
                e->head = addr;
                e->apps = 0; /* checked again at the next read */
                if (checkpoint || flags[0]) {
                    e->walked = 1;
                    e->since = 0;
                    e->size = lens[flags[0] ? 0 : 1];
                } else {
                    e->walked++;
                    e->since += oplen + ABASE_REC_HEADER_SIZE + kl;
                    e->size += oplen;
                }
            }
        } else if (now && now->head != addr) {
            cache_drop(&self->cache, k, kl);
        }
        *ts = make_ts(self, hlcs[0]);
        return *ts ? DONE : FAILED;
    }
    return FALLBACK; /* the key keeps changing under us: let the general path serialize */
}

static int key_ok(PyObject *key)
{
    return PyBytes_CheckExact(key) && PyBytes_GET_SIZE(key) <= ABASE_MAX_KEY;
}

/* (op) -> parsed, for this namespace's class only */
static int parse_operation(CrdtPath *self, PyObject *op, cop *out)
{
    if (Py_TYPE(op) != (PyTypeObject *)self->op_type || PyTuple_GET_SIZE(op) != 3 ||
        PyTuple_GET_ITEM(op, 0) != self->crdt_cls)
        return 0;
    return crdt_parse_op(self->tag, PyTuple_GET_ITEM(op, 1), PyTuple_GET_ITEM(op, 2), out);
}

static PyObject *merge_impl(CrdtPath *self, PyObject *key, PyObject *op, int *fell_back)
{
    cop c;
    *fell_back = 0;
    if (!usable(self) || !key_ok(key) || !parse_operation(self, op, &c) || !mlock_try(self->lock)) {
        *fell_back = 1;
        return NULL;
    }
    PyObject *ts = NULL;
    int r = write_one(self, key, &c, &ts);
    mlock_release(self->lock);
    if (r == FALLBACK)
        *fell_back = 1;
    return r == DONE ? ts : NULL;
}

static PyObject *cp_merge(CrdtPath *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || kwnames)
        return PyObject_Vectorcall(self->slow_merge, args, nargsf, kwnames);
    int fell;
    PyObject *r = merge_impl(self, args[0], args[1], &fell);
    if (fell)
        return PyObject_Vectorcall(self->slow_merge, args, 2, NULL);
    return r;
}

static PyObject *cp_delete(CrdtPath *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || kwnames || !usable(self) || !key_ok(args[0]) || !mlock_try(self->lock))
        return PyObject_Vectorcall(self->slow_delete, args, nargsf, kwnames);
    cop c;
    memset(&c, 0, sizeof(c));
    c.kind = OP_DELETE;
    PyObject *ts = NULL;
    int r = write_one(self, args[0], &c, &ts);
    mlock_release(self->lock);
    if (r == FALLBACK)
        return PyObject_Vectorcall(self->slow_delete, args, 1, NULL);
    return r == DONE ? ts : NULL;
}

/* the value of key, or dflt; FALLBACK leaves it to the general path */
static int get_value(CrdtPath *self, PyObject *key, PyObject *dflt, PyObject **out)
{
    if (!usable(self) || !key_ok(key))
        return FALLBACK;
    centry *e;
    int r = current(self, key, &e);
    if (r != DONE)
        return r;
    if (!e->value) {
        /* No Python code may run while the value is built from e's state
         * (a finalizer could merge into it, or evict it): allocations could
         * start the cyclic collector, so it waits until the value is built. */
#if PY_VERSION_HEX >= 0x030A0000
        int gc_was_on = PyGC_Disable();
#endif
        e->value = crdt_state_value(entry_state(e));
#if PY_VERSION_HEX >= 0x030A0000
        if (gc_was_on)
            PyGC_Enable();
#endif
        if (!e->value)
            return FAILED;
    }
    PyObject *v = e->value;
    if (PyList_CheckExact(v)) /* a SortedSet's list: the caller gets its own */
        v = PyList_GetSlice(v, 0, PyList_GET_SIZE(v));
    else
        Py_INCREF(v);
    if (!v)
        return FAILED;
    if (v == Py_None) {
        Py_DECREF(v);
        Py_INCREF(dflt);
        v = dflt;
    }
    *out = v;
    return DONE;
}

static PyObject *cp_get(CrdtPath *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((nargs != 1 && nargs != 2) || kwnames)
        return PyObject_Vectorcall(self->slow_get, args, nargsf, kwnames);
    PyObject *v = NULL;
    int r = get_value(self, args[0], nargs == 2 ? args[1] : Py_None, &v);
    if (r == FALLBACK)
        return PyObject_Vectorcall(self->slow_get, args, nargsf, NULL);
    return r == DONE ? v : NULL;
}

static PyObject *cp_get_many(CrdtPath *self, PyObject *keys)
{
    PyObject *seq = PySequence_List(keys);
    if (!seq)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *k = PyList_GET_ITEM(seq, i), *v = NULL;
        int r = get_value(self, k, Py_None, &v);
        if (r == FALLBACK)
            v = PyObject_CallOneArg(self->slow_get, k);
        if (!v)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, v);
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *cp_merge_many(CrdtPath *self, PyObject *items)
{
    PyObject *seq = PySequence_List(items);
    if (!seq)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(seq);
    PyObject *last = Py_None;
    Py_INCREF(last);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyList_GET_ITEM(seq, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) {
            PyErr_SetString(PyExc_TypeError, "merge_many takes (key, operation) pairs");
            Py_CLEAR(last);
            break;
        }
        PyObject *k = PyTuple_GET_ITEM(it, 0), *op = PyTuple_GET_ITEM(it, 1);
        int fell;
        PyObject *ts = merge_impl(self, k, op, &fell);
        if (fell) {
            PyObject *a[2] = {k, op};
            ts = PyObject_Vectorcall(self->slow_merge, a, 2, NULL);
        }
        Py_DECREF(last);
        last = ts;
        if (!ts)
            break;
    }
    Py_DECREF(seq);
    return last;
}

static PyObject *cp_detach(CrdtPath *self, PyObject *Py_UNUSED(ignored))
{
    self->db = NULL;
    cache_clear(&self->cache);
    Py_RETURN_NONE;
}

static PyObject *cp_forget(CrdtPath *self, PyObject *Py_UNUSED(ignored))
{
    cache_clear(&self->cache);
    Py_RETURN_NONE;
}

static PyObject *cp_stats(CrdtPath *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{sKsKsKsI}", "hits", self->hits, "misses", self->misses, "conflicts", self->conflicts,
                         "cached", self->cache.n);
}

static int read_addr(PyObject *seq, Py_ssize_t i, void **out)
{
    PyObject *o = PySequence_GetItem(seq, i);
    if (!o)
        return -1;
    void *p = PyLong_AsVoidPtr(o);
    Py_DECREF(o);
    if (!p) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null function address");
        return -1;
    }
    *out = p;
    return 0;
}

static int cp_init(CrdtPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"db", "functions", "ns", "tag", "node", "ts_type", "op_type", "crdt_cls", "lock",
                             "max_successive_merges", "max_entries", "slow_merge", "slow_get", "slow_delete",
                             "store_get", "fail", NULL};
    PyObject *db, *fns, *node, *ts_type, *op_type, *cls, *lock, *sm, *sg, *sd, *stg, *fail;
    unsigned int ns, cap, max_entries;
    int tag;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOIiOOOOOIIOOOOO", kwlist, &db, &fns, &ns, &tag, &node,
                                     &ts_type, &op_type, &cls, &lock, &cap, &max_entries, &sm, &sg, &sd, &stg,
                                     &fail))
        return -1;
    if (!crdt_supported(tag)) {
        PyErr_Format(PyExc_ValueError, "no C fast path for CRDT tag %d", tag);
        return -1;
    }
    fast_state *st = fast_state_of(Py_TYPE(self));
    if (!st)
        return -1;
    if (ts_type != (PyObject *)st->timestamp_type || !PyType_Check(op_type) ||
        !PyType_IsSubtype((PyTypeObject *)op_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "ts_type must be abase_engine.Timestamp and op_type a tuple subclass");
        return -1;
    }
    PyObject *ml_type = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "_lock_type");
    int is_lock = ml_type && PyObject_TypeCheck(lock, (PyTypeObject *)ml_type);
    Py_XDECREF(ml_type);
    if (!is_lock) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "lock must be a MergeLock");
        return -1;
    }
    if (!PyCallable_Check(sm) || !PyCallable_Check(sg) || !PyCallable_Check(sd) || !PyCallable_Check(stg) ||
        !PyCallable_Check(fail)) {
        PyErr_SetString(PyExc_TypeError, "the general paths must be callables");
        return -1;
    }
    if (!PySequence_Check(fns) || PySequence_Size(fns) != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "functions: addresses of merge_head, merge_read, issue, append_if, merge_appends");
        return -1;
    }
    void *p[5];
    for (Py_ssize_t i = 0; i < 5; i++)
        if (read_addr(fns, i, &p[i]) < 0)
            return -1;
    void *dbp = PyLong_AsVoidPtr(db);
    unsigned long nodev = PyLong_AsUnsignedLong(node);
    if (!dbp || (nodev == (unsigned long)-1 && PyErr_Occurred()) || nodev > 0xFFFFFFFFul) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "bad database handle or node id");
        return -1;
    }
    self->db = dbp;
    self->head = (head_fn)p[0];
    self->read = (read_fn)p[1];
    self->issue = (issue_fn)p[2];
    self->append = (append_fn)p[3];
    self->appends = (apps_fn)p[4];
    self->ns = ns;
    self->tag = tag;
    self->node = (uint32_t)nodev;
    self->cap = cap;
    self->cache.max = max_entries ? max_entries : 1;
    self->enabled = 1;
    Py_INCREF(node);
    Py_XSETREF(self->node_obj, node);
    Py_INCREF(ts_type);
    Py_XSETREF(self->ts_type, ts_type);
    Py_INCREF(op_type);
    Py_XSETREF(self->op_type, op_type);
    Py_INCREF(cls);
    Py_XSETREF(self->crdt_cls, cls);
    Py_INCREF(lock);
    Py_XSETREF(self->lock, (MergeLock *)lock);
    Py_INCREF(sm);
    Py_XSETREF(self->slow_merge, sm);
    Py_INCREF(sg);
    Py_XSETREF(self->slow_get, sg);
    Py_INCREF(sd);
    Py_XSETREF(self->slow_delete, sd);
    Py_INCREF(stg);
    Py_XSETREF(self->store_get, stg);
    Py_INCREF(fail);
    Py_XSETREF(self->fail, fail);
    return 0;
}

static int cp_traverse(CrdtPath *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->op_type);
    Py_VISIT(self->crdt_cls);
    Py_VISIT(self->ts_type);
    Py_VISIT(self->node_obj);
    Py_VISIT((PyObject *)self->lock);
    Py_VISIT(self->slow_merge);
    Py_VISIT(self->slow_get);
    Py_VISIT(self->slow_delete);
    Py_VISIT(self->store_get);
    Py_VISIT(self->fail);
    return 0;
}

static int cp_clear(CrdtPath *self)
{
    self->db = NULL;
    Py_CLEAR(self->op_type);
    Py_CLEAR(self->crdt_cls);
    Py_CLEAR(self->ts_type);
    Py_CLEAR(self->node_obj);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->slow_merge);
    Py_CLEAR(self->slow_get);
    Py_CLEAR(self->slow_delete);
    Py_CLEAR(self->store_get);
    Py_CLEAR(self->fail);
    return 0;
}

static void cp_dealloc(CrdtPath *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    cp_clear(self);
    cache_clear(&self->cache);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef cp_methods[] = {
    {"merge", (PyCFunction)(void (*)(void))cp_merge, METH_FASTCALL | METH_KEYWORDS,
     "merge(key, operation) -> Timestamp"},
    {"get", (PyCFunction)(void (*)(void))cp_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None, *, at=None) -> value"},
    {"delete", (PyCFunction)(void (*)(void))cp_delete, METH_FASTCALL | METH_KEYWORDS, "delete(key) -> Timestamp"},
    {"get_many", (PyCFunction)cp_get_many, METH_O, "get_many(keys) -> list"},
    {"merge_many", (PyCFunction)cp_merge_many, METH_O, "merge_many([(key, operation), ...]) -> Timestamp | None"},
    {"detach", (PyCFunction)cp_detach, METH_NOARGS, "Forget the database: later calls take the general path."},
    {"forget", (PyCFunction)cp_forget, METH_NOARGS, "Drop every cached state."},
    {"stats", (PyCFunction)cp_stats, METH_NOARGS, "Cache hits, misses, append conflicts, cached keys."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef cp_members[] = {
    {"enabled", T_BOOL, offsetof(CrdtPath, enabled), 0, "False: every call takes the general path."},
    {"store_empty", T_BOOL, offsetof(CrdtPath, store_empty), 0,
     "True while the store holds nothing of this namespace."},
    {"store_gen", T_ULONGLONG, offsetof(CrdtPath, gen), 0,
     "The store's generation: cached states folded at another one are folded again."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot cp_slots[] = {
    {Py_tp_doc, "Hot calls of one CRDT namespace, folded and built in C; see crdt_path.c."},
    {Py_tp_init, cp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, cp_dealloc},
    {Py_tp_traverse, cp_traverse},
    {Py_tp_clear, cp_clear},
    {Py_tp_methods, cp_methods},
    {Py_tp_members, cp_members},
    {0, NULL},
};

static PyType_Spec cp_spec = {
    .name = "abase_engine._fast.CrdtPath",
    .basicsize = sizeof(CrdtPath),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = cp_slots,
};

int crdt_path_add_type(PyObject *m, PyObject *lock_type)
{
    PyObject *tp = PyType_FromModuleAndSpec(m, &cp_spec, NULL); /* its module finds Timestamp */
    if (!tp)
        return -1;
    if (PyObject_SetAttrString(tp, "_lock_type", lock_type) < 0 || PyModule_AddObject(m, "CrdtPath", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}
