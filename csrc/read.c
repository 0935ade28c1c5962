/*
 * read.c: point reads of one key: abase_get and abase_get_nowait (LWW or
 * merge), abase_head, abase_newest; and the version walks other files
 * share: log_lww_resolve (scan.c) and log_newest_version (write.c).
 *
 * Locks: each API call holds the read `lock` (abase_get_nowait only tries
 * it); the walks expect it (read or write) held by their caller.
 */
#include "log_internal.h"

#include <string.h>

/* Greatest timestamp among the key's log versions and the store's base,
 * walking newest first and stopping at a DOMINANT record; also reports
 * whether a record with exactly (hlc, node) exists. Read or write lock held. */
void log_newest_version(abase_db *db, uint64_t head, uint64_t base_hlc,
                        uint32_t base_node, uint64_t hlc, uint32_t node,
                        const uint8_t *val, uint32_t vlen, int by_value,
                        uint64_t *max_hlc, uint32_t *max_node, int *dup)
{
    uint64_t mh = base_hlc;
    uint32_t mn = base_node;
    /* by_value (merge namespaces): a duplicate must also hold the same
     * bytes, since a whole state may carry the timestamp of one of its
     * operands; a join makes any repeat harmless anyway. */
    *dup = !by_value && (base_hlc == hlc && base_node == node && hlc != 0);
    for (uint64_t a = head; a;) {
        const uint8_t *r = rec_live(db, a);
        if (!r)
            break;
        uint64_t rh = ld64(r + R_HLC);
        uint32_t rn = ld32(r + R_NODE);
        if (rh == hlc && rn == node &&
            (!by_value || (ld32(r + R_VLEN) == vlen &&
                           (vlen == 0 || memcmp(r + ABASE_REC_HEADER_SIZE + ld16(r + R_KLEN), val, vlen) == 0))))
            *dup = 1;
        if (ts_greater(rh, rn, mh, mn)) {
            mh = rh;
            mn = rn;
        }
        if ((r[R_FLAGS] & ABASE_F_DOMINANT) && ts_greater(hlc, node, rh, rn))
            break; /* everything older is older still */
        a = rec_prev(r, a);
    }
    *max_hlc = mh;
    *max_node = mn;
}

static void put_entry(uint8_t *b, const uint8_t *r)
{
    uint32_t klen = ld16(r + R_KLEN), vlen = ld32(r + R_VLEN);
    b[0] = r[R_OP];
    b[1] = r[R_FLAGS];
    st16(b + 2, 0);
    st32(b + 4, vlen);
    st64(b + 8, ld64(r + R_HLC));
    st32(b + 16, ld32(r + R_NODE));
    st32(b + 20, 0);
    memcpy(b + 24, r + ABASE_REC_HEADER_SIZE + klen, vlen);
    memset(b + 24 + vlen, 0, align8(vlen) - vlen);
}

static int visible_at(uint64_t h, uint32_t n, uint64_t at_hlc, uint32_t at_node)
{
    if (at_hlc == 0 && at_node == 0)
        return 1;
    return !ts_greater(h, n, at_hlc, at_node);
}

/* LWW resolution over the log versions of one key. Read lock held. Sets
 * *winner (or NULL) and *complete. */
void log_lww_resolve(abase_db *db, uint64_t head, uint64_t at_hlc, uint32_t at_node,
                     const uint8_t **winner, int *complete)
{
    const uint8_t *best = NULL;
    *complete = 0;
    for (uint64_t a = head; a;) {
        const uint8_t *r = rec_live(db, a);
        if (!r)
            break;
        uint64_t rh = ld64(r + R_HLC);
        uint32_t rn = ld32(r + R_NODE);
        if (visible_at(rh, rn, at_hlc, at_node)) {
            if (!best || ts_greater(rh, rn, ld64(best + R_HLC), ld32(best + R_NODE)))
                best = r;
            if (r[R_FLAGS] & ABASE_F_DOMINANT) {
                *complete = 1;
                break;
            }
        }
        a = rec_prev(r, a);
    }
    *winner = best;
}

static int64_t lww_get_locked(abase_db *db, uint64_t head, uint64_t at_hlc, uint32_t at_node,
                              uint8_t *buf, size_t cap, abase_getinfo *info)
{
    const uint8_t *w;
    int complete;
    log_lww_resolve(db, head, at_hlc, at_node, &w, &complete);
    info->complete = (uint32_t)complete;
    info->expire_at = 0;
    info->clock = db->clock.last;
    if (!w) {
        info->op = 0;
        info->needed = 0;
        return complete ? ABASE_NOTFOUND : (head ? ABASE_NEEDBASE : ABASE_NOTFOUND);
    }
    const uint8_t *v;
    uint32_t vlen;
    uint64_t expire_at = rec_value(w, &v, &vlen);
    info->hlc = ld64(w + R_HLC);
    info->node = ld32(w + R_NODE);
    info->op = w[R_OP];
    info->needed = vlen;
    info->expire_at = expire_at;
    if (complete && w[R_OP] == ABASE_OP_DELETE)
        return ABASE_DELETED;
    if (vlen > cap)
        return ABASE_ETOOSMALL;
    if (vlen)
        memcpy(buf, v, vlen);
    if (!complete)
        return ABASE_NEEDBASE;
    return expire_at ? ABASE_EXPIRES : (int64_t)vlen;
}

static int64_t merge_get_locked(abase_db *db, uint64_t head, uint64_t at_hlc, uint32_t at_node,
                                uint8_t *buf, size_t cap, abase_getinfo *info)
{
    uint64_t used = 0;
    uint32_t nrec = 0;
    int complete = 0, fits = 1;
    for (uint64_t a = head; a;) {
        const uint8_t *r = rec_live(db, a);
        if (!r)
            break;
        uint64_t rh = ld64(r + R_HLC);
        uint32_t rn = ld32(r + R_NODE);
        if (visible_at(rh, rn, at_hlc, at_node)) {
            uint64_t sz = 24 + align8(ld32(r + R_VLEN));
            if (fits && used + sz <= cap)
                put_entry(buf + used, r);
            else
                fits = 0;
            used += sz;
            nrec++;
            /* In a merge namespace a put joins like an operand; only a
             * checkpoint (the whole state) or a dominant delete without a
             * value (a reset: operators whose deletes do not join) hides
             * everything older. A delete with a value is a removal delta
             * that joins like any operand. */
            if (((r[R_FLAGS] & ABASE_F_DOMINANT) && r[R_OP] == ABASE_OP_DELETE &&
                 ld32(r + R_VLEN) == 0) ||
                (r[R_FLAGS] & ABASE_F_CHECKPOINT)) {
                complete = 1;
                break;
            }
        }
        a = rec_prev(r, a);
    }
    info->nrecords = nrec;
    info->complete = (uint32_t)complete;
    info->needed = used;
    if (!fits)
        return ABASE_ETOOSMALL;
    if (nrec == 0 && !head)
        return ABASE_NOTFOUND;
    return (int64_t)used;
}

/* abase_get and abase_get_nowait (ABASE_EWOULDBLOCK while a writer holds
 * the lock). */
static int64_t get_impl(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                        uint64_t at_hlc, uint32_t at_node, int mode, uint8_t *buf,
                        size_t cap, abase_getinfo *info, int nowait)
{
    if (klen > ABASE_MAX_KEY)
        return ABASE_EKEYSIZE;
    if ((klen && !key) || !info || (cap && !buf))
        return ABASE_EINVAL;
    uint64_t h = abase_hash(ns, key, klen);
    if (!nowait)
        pthread_rwlock_rdlock(&db->lock);
    else if (pthread_rwlock_tryrdlock(&db->lock) != 0)
        return ABASE_EWOULDBLOCK;
    /* An empty index (everything compacted) answers without a probe: a
     * probe of a large table is a cache miss, as much as half the cost of
     * the store lookup that follows. */
    uint64_t *slot = ix_count(&db->ix) ? ix_find(&db->ix, h, ns, key, klen) : NULL;
    uint64_t head = slot ? visible_head(db, *slot) : 0;
    int64_t rc;
    if (mode == ABASE_MODE_MERGE)
        rc = merge_get_locked(db, head, at_hlc, at_node, buf, cap, info);
    else
        rc = lww_get_locked(db, head, at_hlc, at_node, buf, cap, info);
    pthread_rwlock_unlock(&db->lock);
    return rc;
}

int64_t abase_get(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                  uint64_t at_hlc, uint32_t at_node, int mode, uint8_t *buf,
                  size_t cap, abase_getinfo *info)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = get_impl(db, ns, key, klen, at_hlc, at_node, mode, buf, cap, info, 0);
    gate_leave(db);
    return rc;
}

int64_t abase_get_nowait(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                         uint64_t at_hlc, uint32_t at_node, int mode, uint8_t *buf,
                         size_t cap, abase_getinfo *info)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = get_impl(db, ns, key, klen, at_hlc, at_node, mode, buf, cap, info, 1);
    gate_leave(db);
    return rc;
}

int abase_head(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, uint64_t *addr)
{
    *addr = 0;
    if (klen > ABASE_MAX_KEY)
        return ABASE_EKEYSIZE;
    if (klen && !key)
        return ABASE_EINVAL;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    uint64_t h = abase_hash(ns, key, klen);
    pthread_rwlock_rdlock(&db->lock);
    uint64_t *slot = ix_find(&db->ix, h, ns, key, klen);
    *addr = slot ? visible_head(db, *slot) : 0;
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return ABASE_OK;
}

int abase_newest(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                 uint64_t *hlc, uint32_t *node)
{
    if (klen > ABASE_MAX_KEY || (klen && !key))
        return 0;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    uint64_t h = abase_hash(ns, key, klen);
    pthread_rwlock_rdlock(&db->lock);
    uint64_t *slot = ix_find(&db->ix, h, ns, key, klen);
    int found = 0;
    if (slot) {
        uint64_t mh = 0;
        uint32_t mn = 0;
        int dup;
        log_newest_version(db, visible_head(db, *slot), 0, 0, 0, 0, NULL, 0, 0, &mh, &mn, &dup);
        if (mh || mn) {
            *hlc = mh;
            *node = mn;
            found = 1;
        }
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return found;
}
