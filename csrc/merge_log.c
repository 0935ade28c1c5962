/*
 * merge_log.c: the log side of the merge-namespace fast paths.
 *
 * A CRDT merge is a read-modify-write: the operand is built from the key's
 * state (a counter's own total, an ORSet member's dots) and stamped with a
 * fresh timestamp. The fast path (fastcall.c, crdt_path.c) keeps the key's
 * folded state in a cache valid for one head address; these calls let it
 *   - read the key's versions together with the head they start from
 *     (abase_merge_read), or only the head (abase_merge_head);
 *   - issue timestamps (abase_issue);
 *   - append one or two local records (an operand, and a checkpoint) only
 *     if the key's head is still the one its state was read at
 *     (abase_append_if): a compare-and-append, so that a record appended
 *     meanwhile by anyone (a put, an apply) makes it fail and be retried
 *     instead of being missed;
 *   - count the records a read of a key walks (abase_merge_walk), so that
 *     long chains of received records get checkpoints;
 *   - read how many records were appended so far (abase_merge_appends):
 *     while that count has not moved, no key's head has either, so a
 *     cached state checked at that count needs no look at the index
 *     (compaction changes heads too, but only after the store's commit,
 *     which the cache sees first).
 * Each has a nowait mode: ABASE_EWOULDBLOCK, having done nothing, when it
 * would wait for the lock, a new segment, or a sync (durability "sync":
 * the fast paths are not used then, so abase_append_if always refuses).
 *
 * Locks: each call takes the engine's `lock` (read or write) for its whole
 * work, and never any other lock. Every exported call passes the teardown
 * gate (gate_enter/gate_leave), so a close() waits for it and later calls
 * return ABASE_ECLOSED. abase_append_if stalls for backpressure
 * (stall_log_bytes) as abase_put does: the nowait form answers
 * ABASE_EWOULDBLOCK instead, and the blocking form waits before the lock.
 */
#include "log_internal.h"

#include <string.h>

static int lock_read(abase_db *db, int nowait)
{
    if (!nowait)
        return pthread_rwlock_rdlock(&db->lock) == 0 ? ABASE_OK : ABASE_EIO;
    return pthread_rwlock_tryrdlock(&db->lock) == 0 ? ABASE_OK : ABASE_EWOULDBLOCK;
}

static int lock_write(abase_db *db, int nowait)
{
    if (!nowait)
        return pthread_rwlock_wrlock(&db->lock) == 0 ? ABASE_OK : ABASE_EIO;
    return pthread_rwlock_trywrlock(&db->lock) == 0 ? ABASE_OK : ABASE_EWOULDBLOCK;
}

/* The key's newest live record, 0 if none. Lock held. */
static uint64_t head_locked(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen)
{
    uint64_t *slot = ix_find(&db->ix, abase_hash(ns, key, klen), ns, key, klen);
    return slot ? visible_head(db, *slot) : 0; /* nothing past a failure's durable end */
}

/* Whether a merge-mode read stops after record r: a checkpoint, or a
 * dominant delete without a value (a reset). See abase_get. */
static int stops_walk(const uint8_t *r)
{
    return (r[R_FLAGS] & ABASE_F_CHECKPOINT) ||
           ((r[R_FLAGS] & ABASE_F_DOMINANT) && r[R_OP] == ABASE_OP_DELETE && ld32(r + R_VLEN) == 0);
}

static int merge_head_impl(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, int nowait,
                     uint64_t *head)
{
    if (klen > ABASE_MAX_KEY || (klen && !key) || !head)
        return ABASE_EINVAL;
    int rc = lock_read(db, nowait);
    if (rc != ABASE_OK)
        return rc;
    *head = head_locked(db, ns, key, klen);
    pthread_rwlock_unlock(&db->lock);
    return ABASE_OK;
}

static int64_t merge_read_impl(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, int nowait,
                         uint8_t *buf, size_t cap, abase_getinfo *info, uint64_t *head)
{
    if (klen > ABASE_MAX_KEY || (klen && !key) || !info || !head || (cap && !buf))
        return ABASE_EINVAL;
    int rc = lock_read(db, nowait);
    if (rc != ABASE_OK)
        return rc;
    uint64_t h = head_locked(db, ns, key, klen);
    uint64_t used = 0;
    uint32_t nrec = 0;
    int complete = 0, fits = 1;
    for (uint64_t a = h; a;) {
        const uint8_t *r = rec_live(db, a);
        if (!r)
            break;
        uint32_t kl = ld16(r + R_KLEN), vlen = ld32(r + R_VLEN);
        uint64_t sz = 24 + align8(vlen);
        if (fits && used + sz <= cap) {
            uint8_t *b = buf + used;
            b[0] = r[R_OP];
            b[1] = r[R_FLAGS];
            st16(b + 2, 0);
            st32(b + 4, vlen);
            st64(b + 8, ld64(r + R_HLC));
            st32(b + 16, ld32(r + R_NODE));
            st32(b + 20, 0);
            memcpy(b + 24, r + ABASE_REC_HEADER_SIZE + kl, vlen);
            memset(b + 24 + vlen, 0, align8(vlen) - vlen);
        } else {
            fits = 0;
        }
        used += sz;
        nrec++;
        if (stops_walk(r)) {
            complete = 1;
            break;
        }
        a = rec_prev(r, a);
    }
    pthread_rwlock_unlock(&db->lock);
    *head = h;
    info->nrecords = nrec;
    info->complete = (uint32_t)complete;
    info->needed = used;
    return fits ? (int64_t)used : ABASE_ETOOSMALL;
}

static int merge_appends_impl(abase_db *db, int nowait, uint64_t *out)
{
    if (!out)
        return ABASE_EINVAL;
    int rc = lock_read(db, nowait);
    if (rc != ABASE_OK)
        return rc;
    *out = db->records_appended;
    pthread_rwlock_unlock(&db->lock);
    return ABASE_OK;
}

static int64_t merge_walk_impl(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, uint32_t limit)
{
    if (klen > ABASE_MAX_KEY || (klen && !key))
        return ABASE_EINVAL;
    pthread_rwlock_rdlock(&db->lock);
    int64_t n = 0;
    for (uint64_t a = head_locked(db, ns, key, klen); a && n < limit;) {
        const uint8_t *r = rec_live(db, a);
        if (!r)
            break;
        n++;
        if (stops_walk(r))
            break;
        a = rec_prev(r, a);
    }
    pthread_rwlock_unlock(&db->lock);
    return n;
}

static int issue_impl(abase_db *db, uint32_t n, int nowait, uint64_t *out)
{
    if (!out || n == 0)
        return ABASE_EINVAL;
    /* As in a nowait put: the wall clock is read once and given to the HLC
     * as an injected reading, so a used-up millisecond is EAGAIN (then
     * EWOULDBLOCK) instead of a sleep under the lock. */
    int64_t wall = nowait ? abase_wall_ms() : -1;
    int rc = lock_write(db, nowait);
    if (rc != ABASE_OK)
        return rc;
    abase_hlc saved = db->clock;
    for (uint32_t i = 0; i < n && rc == ABASE_OK; i++)
        rc = abase_hlc_now(&db->clock, wall, &out[i]);
    if (rc != ABASE_OK)
        db->clock = saved;
    pthread_rwlock_unlock(&db->lock);
    if (rc == ABASE_EAGAIN && nowait)
        rc = ABASE_EWOULDBLOCK;
    return rc;
}

static int append_if_impl(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                    uint64_t expect_head, uint32_t n, const uint8_t *ops, const uint8_t *flags,
                    const uint8_t *const *vals, const uint32_t *vlens, uint64_t *hlcs,
                    int nowait, uint64_t *out_addr)
{
    if (klen > ABASE_MAX_KEY || (klen && !key) || n == 0 || n > 2 || !ops || !flags || !vals ||
        !vlens || !hlcs || !out_addr)
        return ABASE_EINVAL;
    uint64_t need = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (ops[i] < ABASE_OP_PUT || ops[i] > ABASE_OP_MERGE || vlens[i] > ABASE_MAX_VALUE ||
            (vlens[i] && !vals[i]))
            return ABASE_EINVAL;
        if (hlcs[i] != 0 && !abase_hlc_usable(hlcs[i]))
            return ABASE_ERANGE;
        need += align8(ABASE_REC_HEADER_SIZE + (uint64_t)klen + vlens[i]);
    }
    if (db->durability == ABASE_DUR_SYNC)
        return ABASE_EWOULDBLOCK; /* the fast paths leave durability "sync" to the general path */
    if (nowait && log_stall_needed(db))
        return ABASE_EWOULDBLOCK; /* the blocking call stalls, outside the GIL */
    if (!nowait)
        log_stall(db); /* backpressure: before the lock, bounded, as for a put */
    int issue = 0;
    for (uint32_t i = 0; i < n; i++)
        issue |= hlcs[i] == 0;
    int64_t wall = issue && nowait ? abase_wall_ms() : -1; /* as in abase_issue */
    int rc = lock_write(db, nowait);
    if (rc != ABASE_OK)
        return rc;
    segment *s = active_seg(db);
    if (nowait && (!s || s->used + need > s->mapped)) {
        pthread_rwlock_unlock(&db->lock);
        return ABASE_EWOULDBLOCK;
    }
    uint64_t h = abase_hash(ns, key, klen);
    uint64_t *slot = ix_find(&db->ix, h, ns, key, klen);
    uint64_t head = slot ? visible_head(db, *slot) : 0;
    if (head != expect_head) {
        pthread_rwlock_unlock(&db->lock);
        return ABASE_ECONFLICT;
    }
    rc = log_room_for(db, need, &s);
    if (rc == ABASE_OK)
        rc = ix_reserve(&db->ix, 1); /* so that indexing cannot fail after the append */
    if (rc == ABASE_OK && issue) { /* timestamps issued here, for records that do not depend on them */
        abase_hlc saved = db->clock;
        uint32_t issued = 0;
        for (uint32_t i = 0; i < n && rc == ABASE_OK; i++)
            if (hlcs[i] == 0) {
                rc = abase_hlc_now(&db->clock, wall, &hlcs[i]);
                issued |= 1u << i;
            }
        if (rc != ABASE_OK) { /* nothing written: the clock and the caller's array as they were */
            db->clock = saved;
            for (uint32_t i = 0; i < n; i++)
                if (issued & (1u << i))
                    hlcs[i] = 0;
            if (rc == ABASE_EAGAIN && nowait)
                rc = ABASE_EWOULDBLOCK;
        }
    }
    if (rc != ABASE_OK) {
        pthread_rwlock_unlock(&db->lock);
        return rc;
    }
    /* the slot may have moved if the room or the reservation changed the table */
    slot = ix_find(&db->ix, h, ns, key, klen);
    uint64_t prev = slot ? *slot : 0, addr = 0;
    for (uint32_t i = 0; i < n; i++) {
        /* Local timestamps are above every timestamp the engine holds, and
         * the key gained no version since its state was read: dominant. */
        uint8_t f = ABASE_F_DOMINANT | (flags[i] & ABASE_F_CHECKPOINT);
        if (n > 1)
            f |= i + 1 == n ? ABASE_F_BATCH | ABASE_F_BATCH_END : ABASE_F_BATCH;
        addr = log_append_rec(db, s, ns, ops[i], f, key, klen, vals[i], vlens[i], hlcs[i], db->node_id,
                              prev);
        prev = addr;
    }
    if (slot)
        *slot = addr;
    else
        ix_set(&db->ix, h, ns, key, klen, addr); /* room reserved above */
    pthread_rwlock_unlock(&db->lock);
    *out_addr = addr;
    return ABASE_OK;
}

int abase_merge_head(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, int nowait,
                     uint64_t *head)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = merge_head_impl(db, ns, key, klen, nowait, head);
    gate_leave(db);
    return rc;
}

int64_t abase_merge_read(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, int nowait,
                         uint8_t *buf, size_t cap, abase_getinfo *info, uint64_t *head)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = merge_read_impl(db, ns, key, klen, nowait, buf, cap, info, head);
    gate_leave(db);
    return rc;
}

int abase_merge_appends(abase_db *db, int nowait, uint64_t *out)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = merge_appends_impl(db, nowait, out);
    gate_leave(db);
    return rc;
}

int64_t abase_merge_walk(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, uint32_t limit)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = merge_walk_impl(db, ns, key, klen, limit);
    gate_leave(db);
    return rc;
}

int abase_issue(abase_db *db, uint32_t n, int nowait, uint64_t *out)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = issue_impl(db, n, nowait, out);
    gate_leave(db);
    return rc;
}

int abase_append_if(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                    uint64_t expect_head, uint32_t n, const uint8_t *ops, const uint8_t *flags,
                    const uint8_t *const *vals, const uint32_t *vlens, uint64_t *hlcs,
                    int nowait, uint64_t *out_addr)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = append_if_impl(db, ns, key, klen, expect_head, n, ops, flags, vals, vlens, hlcs, nowait, out_addr);
    gate_leave(db);
    return rc;
}
