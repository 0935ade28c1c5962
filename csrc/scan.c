/*
 * scan.c: ordered scans of one namespace (abase_scan_open, _next, _count,
 * _free) and the radix sort of their keys.
 *
 * abase_scan_open copies, under the read `lock`, the wanted keys and each
 * key's newest record address, then sorts them after releasing it, so
 * writers do not wait for the sort. abase_scan_next holds the read `lock`
 * while it resolves a chunk of keys (LWW through log_lww_resolve; in a
 * merge namespace every key reads as NEEDBASE, left to the caller).
 * Never takes sync_mu.
 */
#include "log_internal.h"

#include <stdlib.h>
#include <string.h>

struct abase_scan {
    abase_db *db;
    uint32_t ns;
    uint8_t *keys;     /* arena of key bytes, in order */
    uint64_t *offs;    /* count + 1 offsets into keys */
    uint64_t *heads;   /* each key's newest record at open */
    uint64_t count;
    uint64_t pos;
    int reverse;
};

typedef struct collect {
    abase_db *db;
    uint32_t ns;
    const uint8_t *start, *stop, *prefix;
    size_t start_len, stop_len, prefix_len;
    int has_start, has_stop;
    uint64_t *addrs;
    uint64_t n, cap;
    uint64_t key_bytes;
    int oom;
} collect;

static int collect_one(void *arg, uint64_t addr)
{
    collect *c = arg;
    if (c->n == c->cap) {
        uint64_t cap = c->cap ? c->cap * 2 : 256;
        uint64_t *na = realloc(c->addrs, cap * sizeof(uint64_t));
        if (!na) {
            c->oom = 1;
            return 1;
        }
        c->addrs = na;
        c->cap = cap;
    }
    c->addrs[c->n++] = addr;
    return 0;
}

/* Whether the record's key belongs to the scan. */
static int scan_wants(const collect *c, const uint8_t *r)
{
    if (ld32(r + R_NS) != c->ns)
        return 0;
    const uint8_t *k = r + ABASE_REC_HEADER_SIZE;
    size_t kl = ld16(r + R_KLEN);
    if (c->has_start && key_cmp(k, kl, c->start, c->start_len) < 0)
        return 0;
    if (c->has_stop && key_cmp(k, kl, c->stop, c->stop_len) >= 0)
        return 0;
    if (c->prefix_len && (kl < c->prefix_len || memcmp(k, c->prefix, c->prefix_len) != 0))
        return 0;
    return 1;
}

/* Ask the CPU for the record at addr ahead of use (records of consecutive
 * index entries or sorted keys lie far apart in the log). Read lock held. */
static void rec_prefetch(abase_db *db, uint64_t addr)
{
    segment *s = seg_by_no(db, (uint32_t)(addr >> 32));
    uint64_t off = addr & 0xffffffffu;
    if (s && off + 64 <= s->mapped) {
        __builtin_prefetch(s->base + off);
        __builtin_prefetch(s->base + off + 63);
    }
}

/* A key of a scan being sorted: where it lies in the scan's arena. */
typedef struct scan_key {
    const uint8_t *key;
    uint64_t len;
    uint64_t head; /* the key's newest record when the scan opened */
} scan_key;

static void insertion_sort_keys(scan_key *a, uint64_t n)
{
    for (uint64_t i = 1; i < n; i++) {
        scan_key v = a[i];
        uint64_t j = i;
        while (j > 0 && key_cmp(a[j - 1].key, a[j - 1].len, v.key, v.len) > 0) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

/* Most-significant-byte radix sort of keys: one counting pass per byte
 * position over each bucket that still holds several keys, insertion sort
 * for small buckets. A key that ends at the current position sorts before
 * every longer one. Pending buckets live on a heap stack, so key length
 * does not bound the C stack. Keys are distinct (one per index entry). */
static int radix_sort_keys(scan_key *a, uint64_t n)
{
    typedef struct { uint64_t lo, n, depth; } task;
    if (n < 2)
        return ABASE_OK;
    scan_key *tmp = malloc(n * sizeof(*tmp));
    uint64_t cap = 256, top = 0;
    task *stack = malloc(cap * sizeof(*stack));
    if (!tmp || !stack) {
        free(tmp);
        free(stack);
        return ABASE_ENOMEM;
    }
    stack[top++] = (task){0, n, 0};
    while (top) {
        task t = stack[--top];
        scan_key *v = a + t.lo;
        if (t.n <= 32) {
            insertion_sort_keys(v, t.n);
            continue;
        }
        uint64_t count[257] = {0};
        for (uint64_t i = 0; i < t.n; i++)
            count[v[i].len > t.depth ? (uint32_t)v[i].key[t.depth] + 1 : 0]++;
        uint64_t pos[257], sum = 0;
        for (int b = 0; b < 257; b++) {
            pos[b] = sum;
            sum += count[b];
        }
        for (uint64_t i = 0; i < t.n; i++)
            tmp[pos[v[i].len > t.depth ? (uint32_t)v[i].key[t.depth] + 1 : 0]++] = v[i];
        memcpy(v, tmp, t.n * sizeof(*v));
        /* bucket 0 (keys ending here) holds at most one key */
        uint64_t lo = count[0];
        for (int b = 1; b < 257; b++) {
            if (count[b] > 1) {
                if (top == cap) {
                    task *ns = realloc(stack, cap * 2 * sizeof(*stack));
                    if (!ns) {
                        free(tmp);
                        free(stack);
                        return ABASE_ENOMEM;
                    }
                    stack = ns;
                    cap *= 2;
                }
                stack[top++] = (task){t.lo + lo, count[b], t.depth + 1};
            }
            lo += count[b];
        }
    }
    free(tmp);
    free(stack);
    return ABASE_OK;
}

int abase_scan_open(abase_db *db, uint32_t ns, const uint8_t *start,
                    size_t start_len, int has_start, const uint8_t *stop,
                    size_t stop_len, int has_stop, const uint8_t *prefix,
                    size_t prefix_len, int reverse, abase_scan **out)
{
    if (!out || (has_start && start_len && !start) || (has_stop && stop_len && !stop) ||
        (prefix_len && !prefix))
        return ABASE_EINVAL;
    collect c;
    memset(&c, 0, sizeof(c));
    c.db = db;
    c.ns = ns;
    c.start = start;
    c.start_len = start_len;
    c.has_start = has_start;
    c.stop = stop;
    c.stop_len = stop_len;
    c.has_stop = has_stop;
    c.prefix = prefix;
    c.prefix_len = prefix_len;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    abase_scan *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        gate_leave(db);
        return ABASE_ENOMEM;
    }
    /* Under the lock only the keys are copied out; the sort runs on the
     * copy, so writers do not wait for it. */
    enum { AHEAD = 32 };
    pthread_rwlock_rdlock(&db->lock);
    ix_foreach(&db->ix, collect_one, &c);
    int rc = c.oom ? ABASE_ENOMEM : ABASE_OK;
    uint64_t arena_cap = 16 * (c.n ? c.n : 1), o = 0, kept = 0;
    uint8_t *arena = NULL;
    scan_key *order = NULL;
    if (rc == ABASE_OK) {
        arena = malloc(arena_cap);
        order = malloc((c.n ? c.n : 1) * sizeof(*order));
        if (!arena || !order)
            rc = ABASE_ENOMEM;
    }
    for (uint64_t i = 0; rc == ABASE_OK && i < c.n; i++) {
        if (i + AHEAD < c.n)
            rec_prefetch(db, c.addrs[i + AHEAD]);
        const uint8_t *r = rec_mapped(db, c.addrs[i]);
        if (!r || !scan_wants(&c, r))
            continue;
        uint32_t kl = ld16(r + R_KLEN);
        if (o + kl > arena_cap) {
            uint8_t *na = realloc(arena, arena_cap * 2 + kl);
            if (!na) {
                rc = ABASE_ENOMEM;
                break;
            }
            arena = na;
            arena_cap = arena_cap * 2 + kl;
        }
        memcpy(arena + o, r + ABASE_REC_HEADER_SIZE, kl);
        order[kept++] = (scan_key){NULL, kl, c.addrs[i]};
        o += kl;
    }
    pthread_rwlock_unlock(&db->lock);
    c.n = kept;
    c.key_bytes = o;
    for (uint64_t i = 0, k = 0; rc == ABASE_OK && i < kept; i++) {
        order[i].key = arena + k; /* the arena has stopped moving */
        k += order[i].len;
    }
    if (rc == ABASE_OK)
        rc = radix_sort_keys(order, c.n);
    if (rc == ABASE_OK) {
        sc->keys = malloc(c.key_bytes ? c.key_bytes : 1);
        sc->offs = malloc((c.n + 1) * sizeof(uint64_t));
        sc->heads = malloc((c.n ? c.n : 1) * sizeof(uint64_t));
        if (!sc->keys || !sc->offs || !sc->heads)
            rc = ABASE_ENOMEM;
    }
    if (rc == ABASE_OK) {
        uint64_t k = 0;
        for (uint64_t i = 0; i < c.n; i++) {
            sc->offs[i] = k;
            sc->heads[i] = order[i].head;
            memcpy(sc->keys + k, order[i].key, order[i].len);
            k += order[i].len;
        }
        sc->offs[c.n] = k;
    }
    free(order);
    free(arena);
    free(c.addrs);
    gate_leave(db);
    if (rc != ABASE_OK) {
        abase_scan_free(sc);
        return rc;
    }
    sc->db = db;
    sc->ns = ns;
    sc->count = c.n;
    sc->reverse = reverse;
    *out = sc;
    return ABASE_OK;
}

int64_t abase_scan_next(abase_scan *sc, uint64_t at_hlc, uint32_t at_node,
                        int mode, uint32_t max_items, uint8_t *buf, size_t cap,
                        uint32_t *count)
{
    *count = 0;
    if (!sc || !buf)
        return ABASE_EINVAL;
    abase_db *db = sc->db;
    uint64_t used = 0;
    int64_t rc = 0;
    /* The scan keeps only key copies and record addresses; the records are
     * read inside the gate, so a scan outliving its engine reads nothing. */
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    while (sc->pos < sc->count && *count < max_items) {
        uint64_t i = sc->reverse ? sc->count - 1 - sc->pos : sc->pos;
        uint64_t ahead = sc->pos + 32;
        if (ahead < sc->count)
            rec_prefetch(db, sc->heads[sc->reverse ? sc->count - 1 - ahead : ahead]);
        const uint8_t *key = sc->keys + sc->offs[i];
        uint32_t klen = (uint32_t)(sc->offs[i + 1] - sc->offs[i]);
        /* Versions appended after the open are newer than any snapshot
         * the scan can read at, so the head seen at open is enough; one
         * compacted since reads as "ask the store". */
        uint64_t head = visible_head(db, sc->heads[i]);
        int status = ABASE_NEEDBASE;
        const uint8_t *w = NULL;
        if (mode != ABASE_MODE_MERGE) {
            int complete;
            log_lww_resolve(db, head, at_hlc, at_node, &w, &complete);
            if (!w)
                status = (complete || !head) ? ABASE_NOTFOUND : ABASE_NEEDBASE;
            else if (!complete)
                status = ABASE_NEEDBASE;
            else if (w[R_OP] == ABASE_OP_DELETE)
                status = ABASE_DELETED;
            else
                status = 0;
        }
        uint32_t vlen = w ? ld32(w + R_VLEN) : 0;
        uint64_t sz = 40 + align8(klen) + align8(vlen);
        if (used + sz > cap) {
            if (*count == 0)
                rc = ABASE_ETOOSMALL;
            break;
        }
        uint8_t *b = buf + used;
        st32(b, klen);
        st32(b + 4, vlen);
        st32(b + 8, (uint32_t)status);
        st32(b + 12, 0);
        st64(b + 16, w ? ld64(w + R_HLC) : 0);
        st32(b + 24, w ? ld32(w + R_NODE) : 0);
        st32(b + 28, w ? w[R_OP] : 0);
        st64(b + 32, 0);
        memcpy(b + 40, key, klen);
        memset(b + 40 + klen, 0, align8(klen) - klen);
        if (vlen)
            memcpy(b + 40 + align8(klen), w + ABASE_REC_HEADER_SIZE + ld16(w + R_KLEN), vlen);
        memset(b + 40 + align8(klen) + vlen, 0, align8(vlen) - vlen);
        used += sz;
        (*count)++;
        sc->pos++;
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc < 0 ? rc : (int64_t)used;
}

uint64_t abase_scan_count(abase_scan *sc)
{
    return sc ? sc->count : 0;
}

void abase_scan_free(abase_scan *sc)
{
    if (!sc)
        return;
    free(sc->keys);
    free(sc->offs);
    free(sc->heads);
    free(sc);
}
