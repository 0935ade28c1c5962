/*
 * scan.c: ordered scans of one namespace (abase_scan_open, _open_at, _next,
 * _count, _free) and the radix sort of their keys.
 *
 * Opening a scan collects the index's record addresses under the read
 * `lock`, sorts them by address without it, then reads the records in log
 * order under the read lock (sequential reads the CPU can stream; the
 * index's own order is random in the log), letting writers in every
 * LOCK_SPAN records, and keeps each wanted key in a private arena; the
 * keys are then sorted without the lock. A record whose segment went away
 * meanwhile is skipped (its key is in the store by then).
 *
 * abase_scan_open_at also resolves each key as of its (at_hlc, at_node)
 * while it reads the record, and copies the whole abase_scan_next entry
 * (key and value) into the arena when the live log's bytes fit in the
 * caller's copy_limit: abase_scan_next then only copies entries out in key
 * order, without the lock and without reading the log a second time (a
 * cache and TLB miss per key, the cost of a scan). The arena is an
 * anonymous mapping reserved at the live log's size and touched only as
 * far as it is written (faulted in 4 MiB at a time; huge pages were tried
 * and made the first scan of a process slower and erratic, compacting
 * memory): a scan holds about 40 + klen + vlen (each padded to 8) + 24
 * bytes per key it returns until it is freed. Otherwise, and
 * for abase_scan_open, the arena keeps each key and the address of its
 * newest record, and abase_scan_next resolves under the read lock.
 * Never takes sync_mu.
 */
#include "log_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Records read under one hold of the read lock while a scan opens. */
#define LOCK_SPAN 4096
/* Bytes before an entry's key: the abase_scan_next entry header. */
#define ENTRY_HEADER 40
/* Bytes before a lazy arena record's key: the head address. */
#define LAZY_HEADER 8

/* A key of a scan, as sorted: its first 8 bytes big-endian (zero-padded),
 * where it lies in the arena, its length and (resolved scans) the size of
 * its entry. */
typedef struct scan_key {
    uint64_t prefix;
    const uint8_t *key;
    uint32_t len;
    uint32_t size;
} scan_key;

struct abase_scan {
    abase_db *db;
    uint32_t ns;
    int resolved;      /* entries resolved and copied at open */
    uint8_t *arena;    /* resolved: abase_scan_next entries; else [u64 head][key, padded to 8] */
    size_t arena_cap;  /* bytes reserved (mapped when resolved, else malloc'd) */
    scan_key *order;   /* sorted */
    uint64_t count;
    uint64_t pos;
    int reverse;
};

/* ------------------------------------------------------------ collecting */

typedef struct collect {
    uint32_t ns;
    const uint8_t *start, *stop, *prefix;
    size_t start_len, stop_len, prefix_len;
    int has_start, has_stop;
    uint64_t *addrs;
    uint64_t n, cap;
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

/* Sort addresses into log order, for reading the records in sequence:
 * LSD radix on 8-bit digits (256 buckets: the scatter stays in cache) of
 * (segment - first) << 25 | offset >> 6. Records are at least 40 bytes and
 * 8-aligned, so dropping the low 6 bits only leaves the order of records
 * within a 64-byte line open; offsets are below 2^31 (segments at most
 * 2 GiB). */
static int sort_addrs(uint64_t *a, uint64_t n)
{
    if (n < 2)
        return ABASE_OK;
    uint64_t lo_seg = UINT64_MAX, hi_seg = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t seg = a[i] >> 32;
        lo_seg = seg < lo_seg ? seg : lo_seg;
        hi_seg = seg > hi_seg ? seg : hi_seg;
    }
    uint64_t span = ((hi_seg - lo_seg) << 25) | ((UINT64_C(1) << 25) - 1);
    unsigned bits = 64 - (unsigned)__builtin_clzll(span);
    uint64_t *tmp = malloc(n * sizeof(uint64_t));
    if (!tmp)
        return ABASE_ENOMEM;
    uint64_t *src = a, *dst = tmp;
    for (unsigned shift = 0; shift < bits; shift += 8) {
        uint64_t count[256] = {0};
#define SORT_DIGIT(x) (((((x) >> 32) - lo_seg) << 25 | ((x) & 0xffffffffu) >> 6) >> shift & 0xff)
        for (uint64_t i = 0; i < n; i++)
            count[SORT_DIGIT(src[i])]++;
        if (count[SORT_DIGIT(src[0])] == n)
            continue; /* one bucket: already in order by this digit */
        uint64_t sum = 0;
        for (int d = 0; d < 256; d++) {
            uint64_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (uint64_t i = 0; i < n; i++)
            dst[count[SORT_DIGIT(src[i])]++] = src[i];
#undef SORT_DIGIT
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, n * sizeof(uint64_t));
    free(tmp);
    return ABASE_OK;
}

static uint64_t key_prefix(const uint8_t *k, size_t kl)
{
    uint64_t p = 0;
    for (size_t i = 0; i < 8; i++)
        p = p << 8 | (i < kl ? k[i] : 0);
    return p;
}

/* Write the abase_scan_next entry of a key whose resolution gave winner w
 * (or none) and status; returns its size. b has room for it. */
static uint64_t put_entry(uint8_t *b, const uint8_t *key, uint32_t klen, int status, const uint8_t *w)
{
    const uint8_t *v = NULL;
    uint32_t vlen = 0;
    uint64_t expire_at = w ? rec_value(w, &v, &vlen) : 0;
    st32(b, klen);
    st32(b + 4, vlen);
    st32(b + 8, (uint32_t)status);
    st32(b + 12, 0);
    st64(b + 16, w ? ld64(w + R_HLC) : 0);
    st32(b + 24, w ? ld32(w + R_NODE) : 0);
    st32(b + 28, w ? w[R_OP] : 0);
    st64(b + 32, expire_at);
    memcpy(b + ENTRY_HEADER, key, klen);
    memset(b + ENTRY_HEADER + klen, 0, align8(klen) - klen);
    if (vlen)
        memcpy(b + ENTRY_HEADER + align8(klen), v, vlen);
    memset(b + ENTRY_HEADER + align8(klen) + vlen, 0, align8(vlen) - vlen);
    return ENTRY_HEADER + align8(klen) + align8(vlen);
}

/* The LWW status of the versions from head (see abase_scan_next). Read
 * lock held. */
static int lww_status(abase_db *db, uint64_t head, uint64_t at_hlc, uint32_t at_node, const uint8_t **w)
{
    int complete;
    log_lww_resolve(db, head, at_hlc, at_node, w, &complete);
    if (!*w)
        return (complete || !head) ? ABASE_NOTFOUND : ABASE_NEEDBASE;
    if (!complete)
        return ABASE_NEEDBASE;
    if ((*w)[R_OP] == ABASE_OP_DELETE)
        return ABASE_DELETED;
    const uint8_t *v;
    uint32_t vlen;
    return rec_value(*w, &v, &vlen) ? ABASE_EXPIRES : 0;
}

/* ------------------------------------------------------------ sorting */

static int byte_at(const scan_key *k, uint64_t depth)
{
    if (k->len <= depth)
        return 0;
    return 1 + (depth < 8 ? (int)((k->prefix >> (56 - 8 * depth)) & 0xff) : k->key[depth]);
}

static int item_cmp(const scan_key *a, const scan_key *b)
{
    if (a->prefix != b->prefix)
        return a->prefix < b->prefix ? -1 : 1;
    return key_cmp(a->key, a->len, b->key, b->len);
}

static void insertion_sort_keys(scan_key *a, uint64_t n)
{
    for (uint64_t i = 1; i < n; i++) {
        scan_key v = a[i];
        uint64_t j = i;
        while (j > 0 && item_cmp(&a[j - 1], &v) > 0) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

/* Most-significant-byte radix sort of keys: one counting pass per byte
 * position over each bucket that still holds several keys, insertion sort
 * for small buckets. The first 8 bytes come from the inline prefix, so the
 * arena is read only for keys sharing 8 bytes. A key that ends at the
 * current position sorts before every longer one. Pending buckets live on
 * a heap stack, so key length does not bound the C stack. */
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
            count[byte_at(&v[i], t.depth)]++;
        uint64_t pos[257], sum = 0;
        for (int b = 0; b < 257; b++) {
            pos[b] = sum;
            sum += count[b];
        }
        for (uint64_t i = 0; i < t.n; i++)
            tmp[pos[byte_at(&v[i], t.depth)]++] = v[i];
        memcpy(v, tmp, t.n * sizeof(*v));
        /* bucket 0 (keys ending here) holds at most one key: keys are
         * distinct (one per index entry) */
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

/* ------------------------------------------------------------ open */

static void arena_free(abase_scan *sc)
{
    if (!sc->arena)
        return;
    if (sc->resolved)
        munmap(sc->arena, sc->arena_cap);
    else
        free(sc->arena);
    sc->arena = NULL;
}

/* Room for `need` more arena bytes at offset o (lazy scans grow by
 * realloc; a resolved scan's reservation always suffices). */
static int arena_room(abase_scan *sc, uint64_t o, uint64_t need)
{
    if (o + need <= sc->arena_cap)
        return ABASE_OK;
    if (sc->resolved)
        return ABASE_ECORRUPT; /* cannot happen: the reservation bounds every record */
    size_t cap = sc->arena_cap * 2 + need;
    uint8_t *na = realloc(sc->arena, cap);
    if (!na)
        return ABASE_ENOMEM;
    sc->arena = na;
    sc->arena_cap = cap;
    return ABASE_OK;
}

/* Fault in the resolved arena ahead of the writes, POPULATE_STEP bytes per
 * system call rather than one page fault per 4 KiB page. */
#define POPULATE_STEP (4u << 20)
static void populate_ahead(abase_scan *sc, uint64_t end, uint64_t *populated)
{
#ifdef MADV_POPULATE_WRITE
    if (end <= *populated)
        return;
    uint64_t len = POPULATE_STEP;
    if (*populated + len > sc->arena_cap)
        len = sc->arena_cap - *populated;
    if (len && madvise(sc->arena + *populated, len, MADV_POPULATE_WRITE) == 0) {
        *populated += len;
        return;
    }
#endif
    *populated = UINT64_MAX; /* not available: plain page faults */
    (void)sc;
}

static int scan_open_impl(abase_db *db, const collect *want, int reverse, int resolve, uint64_t at_hlc,
                          uint32_t at_node, uint64_t copy_limit, abase_scan **out)
{
    collect c = *want;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    abase_scan *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        gate_leave(db);
        return ABASE_ENOMEM;
    }
    sc->db = db;
    sc->ns = c.ns;
    sc->reverse = reverse;
    pthread_rwlock_rdlock(&db->lock);
    ix_foreach(&db->ix, collect_one, &c);
    /* Every wanted record lies in a live segment, and an entry takes at
     * most 8 bytes more than its record (key and value padded apart). */
    uint64_t bound = 8 * c.n + 4096;
    for (uint32_t i = 0; i < db->nsegs; i++)
        bound += db->segs[i].used;
    pthread_rwlock_unlock(&db->lock);
    int rc = c.oom ? ABASE_ENOMEM : sort_addrs(c.addrs, c.n);
    if (rc == ABASE_OK && resolve && bound <= copy_limit && bound <= SIZE_MAX) {
        void *m = mmap(NULL, (size_t)bound, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (m != MAP_FAILED) {
            sc->arena = m;
            sc->arena_cap = (size_t)bound;
            sc->resolved = 1;
        }
    }
    if (rc == ABASE_OK && !sc->resolved) {
        sc->arena_cap = 24 * (c.n ? c.n : 1);
        sc->arena = malloc(sc->arena_cap);
        if (!sc->arena)
            rc = ABASE_ENOMEM;
    }
    if (rc == ABASE_OK) {
        sc->order = malloc((c.n ? c.n : 1) * sizeof(*sc->order));
        if (!sc->order)
            rc = ABASE_ENOMEM;
    }
    /* Read the records in log order; key pointers are arena offsets until
     * the arena stops moving. */
    uint64_t o = 0, kept = 0, populated = 0;
    int locked = 0;
    for (uint64_t i = 0; rc == ABASE_OK && i < c.n; i++) {
        if (i % LOCK_SPAN == 0) {
            if (locked)
                pthread_rwlock_unlock(&db->lock); /* let writers in */
            pthread_rwlock_rdlock(&db->lock);
            locked = 1;
        }
        /* a resolved scan answers from the log only for live records a
         * reader may see (none past a failure's durable end); a compacted
         * one is in the store, which the caller reads after this */
        uint64_t a = sc->resolved ? visible_head(db, c.addrs[i]) : c.addrs[i];
        const uint8_t *r = sc->resolved ? rec_live(db, a) : rec_mapped(db, a);
        if (!r || !scan_wants(&c, r))
            continue;
        uint32_t kl = ld16(r + R_KLEN);
        const uint8_t *key = r + ABASE_REC_HEADER_SIZE;
        scan_key *k = &sc->order[kept];
        k->prefix = key_prefix(key, kl);
        k->len = kl;
        if (sc->resolved) {
            const uint8_t *w;
            int status = lww_status(db, a, at_hlc, at_node, &w);
            uint64_t need = ENTRY_HEADER + align8(kl) + (w ? align8(ld32(w + R_VLEN)) : 0);
            rc = arena_room(sc, o, need);
            if (rc != ABASE_OK)
                break;
            populate_ahead(sc, o + need, &populated);
            k->size = (uint32_t)put_entry(sc->arena + o, key, kl, status, w);
            k->key = (const uint8_t *)(uintptr_t)(o + ENTRY_HEADER);
            o += k->size;
        } else {
            uint64_t need = LAZY_HEADER + align8(kl);
            rc = arena_room(sc, o, need);
            if (rc != ABASE_OK)
                break;
            st64(sc->arena + o, a);
            memcpy(sc->arena + o + LAZY_HEADER, key, kl);
            k->size = (uint32_t)need;
            k->key = (const uint8_t *)(uintptr_t)(o + LAZY_HEADER);
            o += need;
        }
        kept++;
    }
    if (locked)
        pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    free(c.addrs);
    if (rc == ABASE_OK) {
        for (uint64_t i = 0; i < kept; i++)
            sc->order[i].key = sc->arena + (uintptr_t)sc->order[i].key;
        sc->count = kept;
        rc = radix_sort_keys(sc->order, kept);
    }
    if (rc != ABASE_OK) {
        abase_scan_free(sc);
        return rc;
    }
    *out = sc;
    return ABASE_OK;
}

static int fill_collect(collect *c, uint32_t ns, const uint8_t *start, size_t start_len, int has_start,
                        const uint8_t *stop, size_t stop_len, int has_stop, const uint8_t *prefix,
                        size_t prefix_len, abase_scan **out)
{
    if (!out || (has_start && start_len && !start) || (has_stop && stop_len && !stop) || (prefix_len && !prefix))
        return ABASE_EINVAL;
    memset(c, 0, sizeof(*c));
    c->ns = ns;
    c->start = start;
    c->start_len = start_len;
    c->has_start = has_start;
    c->stop = stop;
    c->stop_len = stop_len;
    c->has_stop = has_stop;
    c->prefix = prefix;
    c->prefix_len = prefix_len;
    return ABASE_OK;
}

int abase_scan_open(abase_db *db, uint32_t ns, const uint8_t *start,
                    size_t start_len, int has_start, const uint8_t *stop,
                    size_t stop_len, int has_stop, const uint8_t *prefix,
                    size_t prefix_len, int reverse, abase_scan **out)
{
    collect c;
    int rc = fill_collect(&c, ns, start, start_len, has_start, stop, stop_len, has_stop, prefix, prefix_len, out);
    if (rc != ABASE_OK)
        return rc;
    return scan_open_impl(db, &c, reverse, 0, 0, 0, 0, out);
}

int abase_scan_open_at(abase_db *db, uint32_t ns, const uint8_t *start,
                       size_t start_len, int has_start, const uint8_t *stop,
                       size_t stop_len, int has_stop, const uint8_t *prefix,
                       size_t prefix_len, int reverse, uint64_t at_hlc,
                       uint32_t at_node, uint64_t copy_limit, abase_scan **out)
{
    collect c;
    int rc = fill_collect(&c, ns, start, start_len, has_start, stop, stop_len, has_stop, prefix, prefix_len, out);
    if (rc != ABASE_OK)
        return rc;
    return scan_open_impl(db, &c, reverse, 1, at_hlc, at_node, copy_limit, out);
}

/* ------------------------------------------------------------ next */

/* Copy resolved entries out in key order; no lock (the arena is ours). */
static int64_t next_resolved(abase_scan *sc, uint32_t max_items, uint8_t *buf, size_t cap, uint32_t *count)
{
    uint64_t used = 0;
    while (sc->pos < sc->count && *count < max_items) {
        uint64_t i = sc->reverse ? sc->count - 1 - sc->pos : sc->pos;
        uint64_t ahead = sc->pos + 16;
        if (ahead < sc->count) {
            const scan_key *f = &sc->order[sc->reverse ? sc->count - 1 - ahead : ahead];
            __builtin_prefetch(f->key - ENTRY_HEADER);
            __builtin_prefetch(f->key - ENTRY_HEADER + 64);
            __builtin_prefetch(f->key - ENTRY_HEADER + 128);
        }
        const scan_key *k = &sc->order[i];
        if (used + k->size > cap) {
            if (*count == 0)
                return ABASE_ETOOSMALL;
            break;
        }
        memcpy(buf + used, k->key - ENTRY_HEADER, k->size);
        used += k->size;
        (*count)++;
        sc->pos++;
    }
    return (int64_t)used;
}

/* Ask the CPU for the record at addr ahead of use. Read lock held. */
static void rec_prefetch(abase_db *db, uint64_t addr)
{
    segment *s = seg_by_no(db, (uint32_t)(addr >> 32));
    uint64_t off = addr & 0xffffffffu;
    if (s && off + 64 <= s->mapped) {
        __builtin_prefetch(s->base + off);
        __builtin_prefetch(s->base + off + 63);
    }
}

int64_t abase_scan_next(abase_scan *sc, uint64_t at_hlc, uint32_t at_node,
                        int mode, uint32_t max_items, uint8_t *buf, size_t cap,
                        uint32_t *count)
{
    *count = 0;
    if (!sc || !buf)
        return ABASE_EINVAL;
    if (sc->resolved) {
        if (mode == ABASE_MODE_MERGE)
            return ABASE_EINVAL; /* resolved as LWW at open */
        return next_resolved(sc, max_items, buf, cap, count);
    }
    abase_db *db = sc->db;
    uint64_t used = 0;
    int64_t rc = 0;
    /* A lazy scan keeps key copies and record addresses; the records are
     * read inside the gate, so a scan outliving its engine reads nothing.
     * (A resolved scan above reads only its own arena.) */
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    while (sc->pos < sc->count && *count < max_items) {
        uint64_t i = sc->reverse ? sc->count - 1 - sc->pos : sc->pos;
        uint64_t ahead = sc->pos + 32;
        if (ahead < sc->count)
            rec_prefetch(db, ld64(sc->order[sc->reverse ? sc->count - 1 - ahead : ahead].key - LAZY_HEADER));
        const scan_key *k = &sc->order[i];
        uint64_t head0 = ld64(k->key - LAZY_HEADER);
        /* Versions appended after the open are newer than any snapshot
         * the scan can read at, so the head seen at open is enough; one
         * compacted since reads as "ask the store". */
        uint64_t head = visible_head(db, head0);
        int status = ABASE_NEEDBASE;
        const uint8_t *w = NULL;
        if (mode != ABASE_MODE_MERGE)
            status = lww_status(db, head, at_hlc, at_node, &w);
        uint32_t vlen = w ? ld32(w + R_VLEN) : 0;
        uint64_t sz = ENTRY_HEADER + align8(k->len) + align8(vlen);
        if (used + sz > cap) {
            if (*count == 0)
                rc = ABASE_ETOOSMALL;
            break;
        }
        used += put_entry(buf + used, k->key, k->len, status, w);
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
    arena_free(sc);
    free(sc->order);
    free(sc);
}
