/*
 * index.c: the hash index (see index.h for the layout and the rules).
 */
#include "index.h"

#include <stdlib.h>
#include <string.h>

#include "abase.h"
#include "bytes.h"

#define TAG_EMPTY 0u
#define TAG_TOMB 1u
#define MIN_CAP 1024u
#define MOVE_STEP 256u /* old slots moved per write while growing */

static uint32_t tag_of(uint64_t hash)
{
    uint32_t t = (uint32_t)(hash >> 32);
    return t < 2 ? t + 2 : t;
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
    t->addr = malloc(cap * sizeof(uint64_t));
    t->tag = calloc(cap, sizeof(uint32_t));
    if (!t->addr || !t->tag) {
        table_free(t);
        return ABASE_ENOMEM;
    }
    t->cap = cap;
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
    for (uint64_t i = hash & mask, n = 0; n < t->cap; i = (i + 1) & mask, n++) {
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
    uint64_t i = hash & mask;
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
            uint64_t h;
            if (entry_hash(ix, o->addr[i], &h))
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
