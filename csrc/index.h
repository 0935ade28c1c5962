/*
 * index.h: the in-memory hash index from (namespace, key) to the address of
 * the key's newest record in the log. Private to the C core.
 *
 * An entry is 12 bytes: the 64-bit record address and a 32-bit tag taken
 * from the key's hash. Keys are never copied: a tag match is confirmed by
 * comparing the key where it lies in the log, through `rec`. Open
 * addressing with linear probing; deleted slots become tombstones. Growth
 * is incremental: a new table is allocated and every write moves a few
 * slots of the old one, so no single call pays for a full rehash.
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
