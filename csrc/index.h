/*
 * index.h: the in-memory hash index from (namespace, key) to the address of
 * the key's newest record in the log. Private to the C core.
 *
 * An entry is 12 bytes: the 64-bit record address and a 32-bit tag taken
 * from the key's hash. Keys are never copied: a tag match is confirmed by
 * comparing the key where it lies in the log, through `rec`. Open
 * addressing with linear probing from the slot named by the top bits of
 * the hash (so slots are in hash order); deleted slots become tombstones.
 * Growth is incremental: a new table is allocated and every write moves a
 * few slots of the old one, so no single call pays for a full rehash.
 * Recovery fills the index with ix_load, sized once and in slot order.
 *
 * Not thread-safe: the caller holds the engine's lock (read lock for
 * ix_find, write lock for everything that changes the table).
 */
#ifndef ABASE_INDEX_H
#define ABASE_INDEX_H

#include <stddef.h>
#include <stdint.h>

/* Returns the record at addr (at least the 40-byte header and its key are
 * readable), or NULL when addr does not name a mapped record. */
typedef const uint8_t *(*ix_rec_fn)(void *ctx, uint64_t addr);

typedef struct ix_table {
    uint64_t *addr;
    uint32_t *tag; /* 0 empty, 1 tombstone, >= 2 live */
    uint64_t cap;  /* power of two, or 0 */
    unsigned shift; /* 64 - log2(cap): a hash's top bits are its home slot */
    uint64_t live;
    uint64_t tombs;
} ix_table;

typedef struct abase_index {
    ix_table cur;
    ix_table old; /* being moved into cur while old.cap != 0 */
    uint64_t move_pos;
    ix_rec_fn rec;
    void *ctx;
} abase_index;

void ix_init(abase_index *ix, ix_rec_fn rec, void *ctx);
void ix_free(abase_index *ix);
/* Pointer to the address of the entry for the key, or NULL. */
uint64_t *ix_find(abase_index *ix, uint64_t hash, uint32_t ns,
                  const uint8_t *key, size_t klen);
/* Set the entry's address, inserting it if absent. ABASE_OK or ENOMEM. */
int ix_set(abase_index *ix, uint64_t hash, uint32_t ns, const uint8_t *key,
           size_t klen, uint64_t addr);
/* One entry for ix_load: a key's hash and the address of its record (the
 * key is read through `rec` only when a tag matches). */
typedef struct ix_item {
    uint64_t hash;
    uint64_t addr;
} ix_item;

/* Bulk ix_set, for recovery. `distinct`: about how many of the items'
 * keys are distinct (an empty index is sized for them as growth would have
 * sized it; a short estimate costs growth on the way). Items must come in
 * increasing address order, above every address already in the index; the
 * index ends as if ix_set had been called for each in that order (a key's
 * entry is its item of greatest address). Reorders `items`. ABASE_OK;
 * ENOMEM; or EINVAL when a key comparison needs an item's record and `rec`
 * does not answer for it (then or on ENOMEM, some items are set and others
 * not). */
int ix_load(abase_index *ix, ix_item *items, size_t n, uint64_t distinct);
/* Make sure n more entries can be set without allocating. ABASE_OK or ENOMEM. */
int ix_reserve(abase_index *ix, uint64_t n);
/* Remove the entry if its address is below limit. 1 removed, 0 not. */
int ix_remove_below(abase_index *ix, uint64_t hash, uint32_t ns,
                    const uint8_t *key, size_t klen, uint64_t limit);
uint64_t ix_count(const abase_index *ix);
uint64_t ix_bytes(const abase_index *ix);
/* Visit every live entry's address; stop early when fn returns non-zero. */
int ix_foreach(abase_index *ix, int (*fn)(void *arg, uint64_t addr), void *arg);

#endif
