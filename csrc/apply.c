/*
 * apply.c: records received from another replica into LWW namespaces, as
 * one atomic batch decided under the log lock (abase_apply_batch).
 *
 * A replica spends its time in Engine.apply. abase_write_batch can append
 * received records, but its caller must give every record the store's
 * version of its key (one LMDB lookup each) and builds the arrays in
 * Python. Here the last-writer-wins rule is decided per record in C: a
 * record is skipped when the key already holds a version with the same
 * timestamp or a newer one, and otherwise appended flagged DOMINANT. The
 * store's version matters only for a key whose log versions do not end at a
 * DOMINANT record older than the received one (a key the log does not
 * hold, or one whose versions were all received out of order); for those
 * the call returns ABASE_NEEDBASE, with nothing appended and the clock
 * untouched, and marks them, so the caller looks up just those in the
 * store and calls again. The caller holds the engine's fold lock across
 * both calls, so the store and the log's live segments cannot move in
 * between; local writes may append meanwhile, and a local write (DOMINANT,
 * newer than every version) only makes a key more decided.
 *
 * For each appended record the call also reports the key's newest version
 * before it (kind and timestamp): the digest tree's upkeep XORs the old
 * entry out and the new one in without reading the key again.
 *
 * Locks: the write `lock` for the decisions, the clock update and the
 * appends (one hold); the group commit (durability "sync") after it, with
 * no lock held. Every record counts in records_appended, so the CRDT fast
 * path's cache sees appends made here (abase_merge_appends).
 */
#include "log_internal.h"

#include <stdlib.h>

/* Newest version among a key's live log versions, walking newest first and
 * stopping at a DOMINANT record older than (hlc, node), as
 * log_newest_version does. Write lock held. */
typedef struct newest_version {
    uint64_t hlc;
    uint32_t node;
    uint64_t expire_at; /* the newest version's expiry (ABASE_F_TTL; 0: none) */
    uint8_t kind;    /* op of the newest version; 0: the log holds none */
    uint8_t dup;     /* a version with exactly (hlc, node) exists */
    uint8_t decided; /* the walk ended at a DOMINANT record older than (hlc, node):
                      * nothing older, the store's version included, can matter */
} newest_version;

static void walk_versions(abase_db *db, uint64_t head, uint64_t hlc, uint32_t node, newest_version *v)
{
    v->hlc = 0;
    v->node = 0;
    v->kind = 0;
    v->expire_at = 0;
    v->dup = 0;
    v->decided = 0;
    for (uint64_t a = head; a;) {
        const uint8_t *r = rec_live(db, a);
        if (!r)
            break;
        uint64_t rh = ld64(r + R_HLC);
        uint32_t rn = ld32(r + R_NODE);
        if (rh == hlc && rn == node)
            v->dup = 1;
        if (!v->kind || ts_greater(rh, rn, v->hlc, v->node)) {
            v->hlc = rh;
            v->node = rn;
            v->kind = r[R_OP];
            const uint8_t *val;
            uint32_t vlen;
            v->expire_at = rec_value(r, &val, &vlen);
        }
        if ((r[R_FLAGS] & ABASE_F_DOMINANT) && ts_greater(hlc, node, rh, rn)) {
            v->decided = 1;
            break;
        }
        a = rec_prev(r, a);
    }
}

/* Whether a received record with (hlc, node) changes nothing, given the
 * newest log version v (and the store's version when it is needed). */
static int skip_record(const newest_version *v, const abase_apply_rec *rec)
{
    if (v->dup || (v->kind && !ts_greater(rec->hlc, rec->node, v->hlc, v->node)))
        return 1;
    if (v->decided || !rec->base_known || !rec->base_kind)
        return 0;
    return !ts_greater(rec->hlc, rec->node, rec->base_hlc, rec->base_node);
}

static int check_records(uint32_t n, const abase_apply_rec *recs, uint64_t *need, uint64_t *newest)
{
    *need = 0;
    *newest = 0;
    for (uint32_t i = 0; i < n; i++) {
        const abase_apply_rec *r = &recs[i];
        if (r->klen > ABASE_MAX_KEY)
            return ABASE_EKEYSIZE;
        if (r->vlen > ABASE_MAX_VALUE)
            return ABASE_EVALSIZE;
        if ((r->op != ABASE_OP_PUT && r->op != ABASE_OP_DELETE) || (r->klen && !r->key) ||
            (r->vlen && !r->value) || (r->op == ABASE_OP_DELETE && r->vlen) ||
            r->ns == ABASE_NS_DEFS)
            return ABASE_EINVAL;
        if (!abase_hlc_usable(r->hlc))
            return ABASE_ERANGE; /* would leave the clock no room to advance */
        *need += align8(ABASE_REC_HEADER_SIZE + (uint64_t)r->klen + r->vlen);
        if (*need > ABASE_MAX_BATCH)
            return ABASE_EBATCHSIZE; /* one segment holds the batch */
        if (r->hlc > *newest)
            *newest = r->hlc;
    }
    return ABASE_OK;
}

static int64_t apply_impl(abase_db *db, uint32_t n, abase_apply_rec *recs, int64_t wall_ms,
                          uint64_t max_skew_ms)
{
    if (n == 0)
        return 0;
    if (!recs)
        return ABASE_EINVAL;
    uint64_t need, newest;
    int rc = check_records(n, recs, &need, &newest);
    if (rc != ABASE_OK)
        return rc;
    uint64_t *hashes = malloc((size_t)n * sizeof(uint64_t));
    if (!hashes)
        return ABASE_ENOMEM;
    int all_known = 1;
    for (uint32_t i = 0; i < n; i++) {
        hashes[i] = abase_hash(recs[i].ns, recs[i].key, recs[i].klen);
        all_known &= recs[i].base_known != 0;
    }
    pthread_rwlock_wrlock(&db->lock);
    if (!all_known) {
        /* Which undecided keys need the store's version: before anything
         * is appended, so that the call can still be repeated. */
        int missing = 0;
        for (uint32_t i = 0; i < n; i++) {
            abase_apply_rec *r = &recs[i];
            r->status = ABASE_APPLY_SKIPPED;
            if (r->base_known)
                continue;
            uint64_t *slot = ix_find(&db->ix, hashes[i], r->ns, r->key, r->klen);
            newest_version v;
            walk_versions(db, slot ? *slot : 0, r->hlc, r->node, &v);
            if (!skip_record(&v, r) && !v.decided) {
                r->status = ABASE_APPLY_NEEDBASE;
                missing = 1;
            }
        }
        if (missing) {
            pthread_rwlock_unlock(&db->lock);
            free(hashes);
            return ABASE_NEEDBASE;
        }
    }
    segment *s;
    rc = log_room_for(db, need, &s); /* the whole batch in one segment, reserved first */
    if (rc == ABASE_OK)
        rc = ix_reserve(&db->ix, n);
    uint64_t clock_out;
    if (rc == ABASE_OK) /* a receive event; refused (nothing applied) when too far ahead */
        rc = abase_hlc_update(&db->clock, newest, wall_ms, max_skew_ms, &clock_out);
    if (rc != ABASE_OK) {
        pthread_rwlock_unlock(&db->lock);
        free(hashes);
        return rc;
    }
    uint8_t batch_flag = n > 1 ? ABASE_F_BATCH : 0;
    uint64_t last_addr = 0;
    uint32_t appended = 0;
    for (uint32_t i = 0; i < n; i++) {
        abase_apply_rec *r = &recs[i];
        uint64_t *slot = ix_find(&db->ix, hashes[i], r->ns, r->key, r->klen);
        uint64_t head = slot ? *slot : 0;
        newest_version v;
        walk_versions(db, head, r->hlc, r->node, &v);
        /* An undecided key without its store version cannot happen here
         * (the pass above saw the same log, and every record appended since
         * is DOMINANT); were it to, the store's version counts as absent. */
        if (skip_record(&v, r)) {
            r->status = ABASE_APPLY_SKIPPED;
            continue;
        }
        r->status = ABASE_APPLY_APPENDED;
        r->prev_kind = v.kind;
        r->prev_hlc = v.hlc;
        r->prev_node = v.node;
        r->prev_expire_at = v.expire_at;
        if (!v.decided && r->base_known && r->base_kind &&
            (!v.kind || ts_greater(r->base_hlc, r->base_node, v.hlc, v.node))) {
            r->prev_kind = r->base_kind;
            r->prev_hlc = r->base_hlc;
            r->prev_node = r->base_node;
            r->prev_expire_at = 0; /* a stored version with an expiry goes to the general path */
        }
        uint64_t addr = log_append_rec(db, s, r->ns, r->op, batch_flag | ABASE_F_DOMINANT, r->key, r->klen,
                                       r->value, r->vlen, r->hlc, r->node, head);
        if (slot)
            *slot = addr;
        else
            ix_set(&db->ix, hashes[i], r->ns, r->key, r->klen, addr); /* room reserved above */
        last_addr = addr;
        appended++;
    }
    free(hashes);
    log_end_batch(s, last_addr, (uint64_t)appended, batch_flag);
    uint64_t end = make_addr(s->no, s->used);
    pthread_rwlock_unlock(&db->lock);
    if (appended > 0 && db->durability == ABASE_DUR_SYNC) {
        rc = log_sync_to(db, end);
        if (rc != ABASE_OK)
            return rc;
    }
    return appended;
}

int64_t abase_apply_batch(abase_db *db, uint32_t n, abase_apply_rec *recs, int64_t wall_ms,
                          uint64_t max_skew_ms)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = apply_impl(db, n, recs, wall_ms, max_skew_ms);
    gate_leave(db);
    return rc;
}
