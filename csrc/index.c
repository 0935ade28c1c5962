/*
 * index.c: the hash index (see index.h for the layout and the rules).
 */
#include "index.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "abase.h"
#include "bytes.h"

#define TAG_EMPTY 0u
#define TAG_TOMB 1u
#define MIN_CAP 1024u
#define MOVE_STEP 256u /* old slots moved per write while growing */
#define PREFETCH_AHEAD 12u /* ix_load: items whose home slots are prefetched */

/* A key's home slot is the top bits of its hash, so that a table is an
 * ordered map of hashes and keys of nearby hashes share cache lines
 * (ix_load relies on it). The tag is the top 32 bits: it contains the home
 * slot of every table up to 2^TAG_HOME_BITS slots, so growth moves an
 * entry without reading its key from the log (a cache miss per entry in a
 * random place), and the 32 - log2(capacity) bits below the home still
 * tell apart keys that share a home (1 in 2048 collide at 2M slots). Tags
 * 0 and 1 mark empty and deleted slots; the hashes that would give them
 * use 2 and 3, which have the same home in any table up to 2^30 slots. */
#define TAG_HOME_BITS 30u

static uint32_t tag_of(uint64_t hash)
{
    uint32_t t = (uint32_t)(hash >> 32);
    return t < 2 ? t + 2 : t;
}

static uint64_t home_of(const ix_table *t, uint64_t hash)
{
    return hash >> t->shift;
}

uint64_t abase_hash(uint32_t ns, const uint8_t *key, size_t klen)
{
    /* Multiply-xorshift over 8-byte words, then a final avalanche. */
    const uint64_t k1 = UINT64_C(0x9fb21c651e98df25);
    const uint64_t k2 = UINT64_C(0xc2b2ae3d27d4eb4f);
    uint64_t h = UINT64_C(0x243f6a8885a308d3) ^ ((uint64_t)ns * k2) ^ ((uint64_t)klen << 48);
    size_t i = 0;
    for (; i + 8 <= klen; i += 8) {
        uint64_t w = ld64(key + i) * k1;
        w ^= w >> 29;
        h = (h ^ w) * k2;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    for (size_t j = 0; i + j < klen; j++)
        tail |= (uint64_t)key[i + j] << (8 * j);
    h = (h ^ (tail * k1)) * k2;
    h ^= h >> 31;
    h *= k1;
    h ^= h >> 29;
    h *= k2;
    h ^= h >> 32;
    return h;
}

void ix_init(abase_index *ix, ix_rec_fn rec, void *ctx)
{
    memset(ix, 0, sizeof(*ix));
    ix->rec = rec;
    ix->ctx = ctx;
}

static void table_free(ix_table *t)
{
    free(t->addr);
    free(t->tag);
    memset(t, 0, sizeof(*t));
}

void ix_free(abase_index *ix)
{
    table_free(&ix->cur);
    table_free(&ix->old);
}

static int table_alloc(ix_table *t, uint64_t cap)
{
    memset(t, 0, sizeof(*t));
    if (cap > SIZE_MAX / sizeof(uint64_t))
        return ABASE_ENOMEM;
    t->addr = malloc(cap * sizeof(uint64_t));
    t->tag = calloc(cap, sizeof(uint32_t));
    t->cap = cap;
    t->shift = 64 - (unsigned)__builtin_ctzll(cap);
    if (!t->addr || !t->tag) {
        table_free(t);
        return ABASE_ENOMEM;
    }
    return ABASE_OK;
}

static int key_matches(abase_index *ix, uint64_t addr, uint32_t ns,
                       const uint8_t *key, size_t klen)
{
    const uint8_t *r = ix->rec(ix->ctx, addr);
    if (!r)
        return 0;
    return ld32(r + R_NS) == ns && ld16(r + R_KLEN) == klen &&
           memcmp(r + ABASE_REC_HEADER_SIZE, key, klen) == 0;
}

/* Slot of the key in t, or -1. */
static int64_t table_find(abase_index *ix, ix_table *t, uint64_t hash,
                          uint32_t ns, const uint8_t *key, size_t klen)
{
    if (t->cap == 0)
        return -1;
    uint64_t mask = t->cap - 1;
    uint32_t tag = tag_of(hash);
    for (uint64_t i = home_of(t, hash), n = 0; n < t->cap; i = (i + 1) & mask, n++) {
        uint32_t s = t->tag[i];
        if (s == TAG_EMPTY)
            return -1;
        if (s == tag && key_matches(ix, t->addr[i], ns, key, klen))
            return (int64_t)i;
    }
    return -1;
}

/* Place an entry known to be absent from t. t must have a free slot. */
static void table_place(ix_table *t, uint64_t hash, uint64_t addr)
{
    uint64_t mask = t->cap - 1;
    uint64_t i = home_of(t, hash);
    while (t->tag[i] >= 2)
        i = (i + 1) & mask;
    if (t->tag[i] == TAG_TOMB)
        t->tombs--;
    t->tag[i] = tag_of(hash);
    t->addr[i] = addr;
    t->live++;
}

/* Recompute an entry's hash from its record, to move it to a new table. */
static int entry_hash(abase_index *ix, uint64_t addr, uint64_t *hash)
{
    const uint8_t *r = ix->rec(ix->ctx, addr);
    if (!r)
        return 0;
    *hash = abase_hash(ld32(r + R_NS), r + ABASE_REC_HEADER_SIZE, ld16(r + R_KLEN));
    return 1;
}

/* Move up to `budget` old slots into cur; frees old when done. */
static void move_some(abase_index *ix, uint64_t budget)
{
    ix_table *o = &ix->old;
    while (o->cap != 0 && budget-- > 0) {
        uint64_t i = ix->move_pos++;
        if (o->tag[i] >= 2) {
            uint64_t h = (uint64_t)o->tag[i] << 32; /* what placement uses */
            if (64 - ix->cur.shift <= TAG_HOME_BITS || entry_hash(ix, o->addr[i], &h))
                table_place(&ix->cur, h, o->addr[i]);
            o->live--;
            /* a tombstone, not empty: probes in old must run past it */
            o->tag[i] = TAG_TOMB;
            o->tombs++;
        }
        if (ix->move_pos == o->cap) {
            table_free(o);
            ix->move_pos = 0;
        }
    }
}

/* Make room for n more entries in cur, starting a move when it is full. */
static int ensure_room_n(abase_index *ix, uint64_t n)
{
    ix_table *c = &ix->cur;
    if (c->cap != 0 && (c->live + c->tombs + ix->old.live + n) * 4 <= c->cap * 3)
        return ABASE_OK;
    if (ix->old.cap != 0) {
        move_some(ix, ix->old.cap); /* finish the previous move first */
        if ((c->live + c->tombs + n) * 4 <= c->cap * 3)
            return ABASE_OK;
    }
    uint64_t want = MIN_CAP;
    while (want < (c->live + n) * 2)
        want <<= 1;
    ix_table fresh;
    int rc = table_alloc(&fresh, want);
    if (rc != ABASE_OK)
        return rc;
    if (c->cap == 0) {
        *c = fresh;
        return ABASE_OK;
    }
    ix->old = *c;
    *c = fresh;
    ix->move_pos = 0;
    return ABASE_OK;
}

static int ensure_room(abase_index *ix)
{
    return ensure_room_n(ix, 1);
}

int ix_reserve(abase_index *ix, uint64_t n)
{
    return ensure_room_n(ix, n);
}

uint64_t *ix_find(abase_index *ix, uint64_t hash, uint32_t ns,
                  const uint8_t *key, size_t klen)
{
    int64_t i = table_find(ix, &ix->cur, hash, ns, key, klen);
    if (i >= 0)
        return &ix->cur.addr[i];
    i = table_find(ix, &ix->old, hash, ns, key, klen);
    if (i >= 0)
        return &ix->old.addr[i];
    return NULL;
}

int ix_set(abase_index *ix, uint64_t hash, uint32_t ns, const uint8_t *key,
           size_t klen, uint64_t addr)
{
    uint64_t *slot = ix_find(ix, hash, ns, key, klen);
    if (slot) {
        *slot = addr;
    } else {
        int rc = ensure_room(ix);
        if (rc != ABASE_OK)
            return rc;
        table_place(&ix->cur, hash, addr);
    }
    if (ix->old.cap != 0)
        move_some(ix, MOVE_STEP);
    return ABASE_OK;
}

/* Bulk loading (ix_load). */

/* Slot of the item's key in t, or -1; its key is read from its record (into
 * *r, once) only when a tag matches, and -2 means that record cannot be read. */
static int64_t table_find_item(abase_index *ix, ix_table *t, const ix_item *it,
                               const uint8_t **r)
{
    if (t->cap == 0)
        return -1;
    uint64_t mask = t->cap - 1;
    uint32_t tag = tag_of(it->hash);
    for (uint64_t i = home_of(t, it->hash), n = 0; n < t->cap; i = (i + 1) & mask, n++) {
        uint32_t s = t->tag[i];
        if (s == TAG_EMPTY)
            return -1;
        if (s != tag)
            continue;
        if (!*r && !(*r = ix->rec(ix->ctx, it->addr)))
            return -2;
        const uint8_t *k = *r;
        if (key_matches(ix, t->addr[i], ld32(k + R_NS), k + ABASE_REC_HEADER_SIZE, ld16(k + R_KLEN)))
            return (int64_t)i;
    }
    return -1;
}

static void prefetch_home(const ix_table *t, uint64_t hash)
{
    if (t->cap == 0)
        return;
    uint64_t i = home_of(t, hash);
    __builtin_prefetch(&t->tag[i], 1);
    __builtin_prefetch(&t->addr[i], 1);
}

#define REGION_SLOTS_LOG2 14 /* 16K slots: 192 KiB of table, held by L2 */
#define MAX_REGIONS_LOG2 12

/* Reorder items by the region of cur their home slot lies in (the top
 * `bits` bits of their hash): an in-place, unstable American flag sort. */
static int sort_by_region(ix_item *items, size_t n, unsigned bits)
{
    size_t nreg = (size_t)1 << bits;
    size_t *next = calloc(2 * nreg + 1, sizeof(size_t));
    if (!next)
        return ABASE_ENOMEM;
    size_t *end = next + nreg; /* end[b]: one past region b's part */
    unsigned sh = 64 - bits;
    for (size_t i = 0; i < n; i++)
        end[items[i].hash >> sh]++;
    size_t at = 0;
    for (size_t b = 0; b < nreg; b++) {
        next[b] = at;
        at += end[b];
        end[b] = at;
    }
    for (size_t b = 0; b < nreg; b++) {
        while (next[b] < end[b]) {
            ix_item v = items[next[b]];
            size_t vb = v.hash >> sh;
            while (vb != b) { /* carry v to its region, pick up what it displaces */
                ix_item w = items[next[vb]];
                items[next[vb]++] = v;
                v = w;
                vb = v.hash >> sh;
            }
            items[next[b]++] = v;
        }
    }
    free(next);
    return ABASE_OK;
}

/* Size an empty index for `distinct` keys as growth one key at a time
 * would have (at most 3/4 full), with room for an estimate 1/32 short. */
static int presize(abase_index *ix, uint64_t distinct)
{
    if (distinct > (UINT64_C(1) << 56))
        return ABASE_ENOMEM;
    uint64_t want = MIN_CAP;
    while ((distinct + distinct / 32) * 4 > want * 3)
        want <<= 1;
    return table_alloc(&ix->cur, want);
}

/* One item into cur, which has room and no move under way: one probe finds
 * the key or the slot to put it in. 1 done, 0 not (take the general path),
 * -2 the item's record cannot be read. */
static int load_one(abase_index *ix, const ix_item *it)
{
    ix_table *c = &ix->cur;
    uint64_t mask = c->cap - 1;
    uint32_t tag = tag_of(it->hash);
    const uint8_t *r = NULL;
    uint64_t i = home_of(c, it->hash), free_at = UINT64_MAX;
    for (uint64_t n = 0; n < c->cap; i = (i + 1) & mask, n++) {
        uint32_t s = c->tag[i];
        if (s == TAG_EMPTY) {
            if (free_at == UINT64_MAX)
                free_at = i;
            break;
        }
        if (s == TAG_TOMB) {
            if (free_at == UINT64_MAX)
                free_at = i;
            continue;
        }
        if (s != tag)
            continue;
        if (!r && !(r = ix->rec(ix->ctx, it->addr)))
            return -2;
        if (key_matches(ix, c->addr[i], ld32(r + R_NS), r + ABASE_REC_HEADER_SIZE, ld16(r + R_KLEN))) {
            /* the items of a key may come in any order: the newest wins */
            if (it->addr > c->addr[i])
                c->addr[i] = it->addr;
            return 1;
        }
    }
    if (free_at == UINT64_MAX)
        return 0;
    if (c->tag[free_at] == TAG_TOMB)
        c->tombs--;
    c->tag[free_at] = tag;
    c->addr[free_at] = it->addr;
    c->live++;
    return 1;
}

int ix_load(abase_index *ix, ix_item *items, size_t n, uint64_t distinct)
{
    if (n == 0)
        return ABASE_OK;
    if (ix->old.cap != 0)
        move_some(ix, ix->old.cap);
    int rc = ix->cur.cap == 0 ? presize(ix, distinct) : ensure_room_n(ix, distinct);
    if (rc != ABASE_OK)
        return rc;
    /* Insert region by region, so that the part of the table being written
     * stays in cache: in log order every insert would be a cache and TLB
     * miss somewhere in the table. */
    unsigned log2cap = 64 - ix->cur.shift;
    if (log2cap > REGION_SLOTS_LOG2 && n >= ((size_t)1 << REGION_SLOTS_LOG2)) {
        unsigned bits = log2cap - REGION_SLOTS_LOG2;
        if (bits > MAX_REGIONS_LOG2)
            bits = MAX_REGIONS_LOG2;
        rc = sort_by_region(items, n, bits);
        if (rc != ABASE_OK)
            return rc;
    }
    for (size_t k = 0; k < n && k < PREFETCH_AHEAD; k++)
        prefetch_home(&ix->cur, items[k].hash);
    for (size_t k = 0; k < n; k++) {
        if (k + PREFETCH_AHEAD < n)
            prefetch_home(&ix->cur, items[k + PREFETCH_AHEAD].hash);
        const ix_item *it = &items[k];
        ix_table *c = &ix->cur;
        if (ix->old.cap == 0 && (c->live + c->tombs + 1) * 4 <= c->cap * 3) {
            int done = load_one(ix, it);
            if (done == -2)
                return ABASE_EINVAL;
            if (done)
                continue;
        }
        /* the estimate fell short: grow as ix_set does */
        const uint8_t *r = NULL;
        uint64_t *slot = NULL;
        int64_t i = table_find_item(ix, &ix->cur, it, &r);
        if (i >= 0) {
            slot = &ix->cur.addr[i];
        } else if (i == -1) {
            i = table_find_item(ix, &ix->old, it, &r);
            if (i >= 0)
                slot = &ix->old.addr[i];
        }
        if (i == -2)
            return ABASE_EINVAL;
        if (slot) {
            if (it->addr > *slot)
                *slot = it->addr;
        } else {
            rc = ensure_room(ix);
            if (rc != ABASE_OK)
                return rc;
            table_place(&ix->cur, it->hash, it->addr);
        }
        if (ix->old.cap != 0)
            move_some(ix, MOVE_STEP);
    }
    return ABASE_OK;
}

static int remove_in(abase_index *ix, ix_table *t, uint64_t hash, uint32_t ns,
                     const uint8_t *key, size_t klen, uint64_t limit)
{
    int64_t i = table_find(ix, t, hash, ns, key, klen);
    if (i < 0)
        return -1;
    if (t->addr[i] >= limit)
        return 0;
    t->tag[i] = TAG_TOMB;
    t->live--;
    t->tombs++;
    return 1;
}

int ix_remove_below(abase_index *ix, uint64_t hash, uint32_t ns,
                    const uint8_t *key, size_t klen, uint64_t limit)
{
    int r = remove_in(ix, &ix->cur, hash, ns, key, klen, limit);
    if (r < 0)
        r = remove_in(ix, &ix->old, hash, ns, key, klen, limit);
    /* Tombstones are cleared by the next rebuild (ensure_room counts them). */
    return r < 0 ? 0 : r;
}

uint64_t ix_count(const abase_index *ix)
{
    return ix->cur.live + ix->old.live;
}

uint64_t ix_bytes(const abase_index *ix)
{
    uint64_t per = sizeof(uint64_t) + sizeof(uint32_t);
    return (ix->cur.cap + ix->old.cap) * per;
}

int ix_foreach(abase_index *ix, int (*fn)(void *arg, uint64_t addr), void *arg)
{
    ix_table *tables[2] = {&ix->cur, &ix->old};
    for (int t = 0; t < 2; t++) {
        ix_table *tb = tables[t];
        for (uint64_t i = 0; i < tb->cap; i++) {
            if (tb->tag[i] >= 2) {
                int rc = fn(arg, tb->addr[i]);
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}
