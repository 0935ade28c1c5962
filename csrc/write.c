/*
 * write.c: puts, write batches and group commit.
 *
 * abase_put / abase_put_nowait append one local record; abase_write_batch
 * appends several into one segment, either local writes or received ones
 * (each resolved against the key's newest version, log_newest_version).
 * Under durability "sync" a write returns once an fdatasync covers it
 * (sync_upto): one waiting writer at a time leads and syncs, the others
 * wait on sync_cv and leave when a sync covers them (group commit).
 * abase_sync also syncs every sealed segment not yet synced.
 *
 * Locks: an append holds the write `lock` (abase_put_nowait only tries it)
 * and releases it before any sync. sync_upto holds sync_mu to elect the
 * leader and releases it before the leader's sync_once, which holds the
 * read `lock` while it picks the descriptor (and, for abase_sync, while it
 * syncs the sealed segments) and runs the group commit's fdatasync with no
 * lock held; the statistics are then updated under the write `lock`.
 */
#include "log_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ group commit */

/* One fdatasync of the active segment (and, with all_segments, of every
 * sealed segment not yet synced). Returns the address it made durable in
 * *end. Called by the leader, with neither lock held. */
static int sync_once(abase_db *db, int all_segments, uint64_t *end)
{
    int rc = ABASE_OK;
    pthread_rwlock_rdlock(&db->lock);
    if (all_segments) {
        for (uint32_t i = 0; i < db->nsegs; i++) {
            segment *s = &db->segs[i];
            if (s->sealed && !s->synced) {
                if (fdatasync(s->fd) != 0) { /* fsync point: db.sync() */
                    rc = ABASE_EIO;
                    break;
                }
                s->synced = 1;
            }
        }
    }
    segment *s = active_seg(db);
    *end = 0;
    int fd = -1;
    if (s) {
        *end = make_addr(s->no, s->used);
        /* sync_fd belongs to the leader; only one leader at a time */
        if (db->sync_fd_no != s->no || db->sync_fd < 0) {
            if (db->sync_fd >= 0)
                close(db->sync_fd);
            db->sync_fd = dup(s->fd);
            db->sync_fd_no = s->no;
        }
        fd = db->sync_fd;
        if (fd < 0 && rc == ABASE_OK)
            rc = ABASE_EIO;
    } else if (db->sealed_synced > *end) {
        *end = db->sealed_synced;
    }
    pthread_rwlock_unlock(&db->lock);
    if (rc == ABASE_OK && fd >= 0 && fdatasync(fd) != 0) /* fsync point: group commit */
        rc = ABASE_EIO;
    return rc;
}

/* Make every address below `target` durable. One writer at a time is the
 * leader and syncs, without holding sync_mu; the others wait on sync_cv
 * and leave as soon as a sync covers their write (group commit). */
static int sync_upto(abase_db *db, uint64_t target, int all_segments)
{
    int rc = ABASE_OK, led = 0;
    pthread_mutex_lock(&db->sync_mu);
    for (;;) {
        if (!all_segments && db->synced_addr >= target)
            break;
        if (db->syncing) {
            pthread_cond_wait(&db->sync_cv, &db->sync_mu);
            continue;
        }
        db->syncing = 1;
        led = 1;
        pthread_mutex_unlock(&db->sync_mu);
        uint64_t end = 0;
        rc = sync_once(db, all_segments, &end);
        pthread_mutex_lock(&db->sync_mu);
        db->syncing = 0;
        if (rc == ABASE_OK && end > db->synced_addr)
            db->synced_addr = end;
        pthread_cond_broadcast(&db->sync_cv);
        break;
    }
    pthread_mutex_unlock(&db->sync_mu);
    pthread_rwlock_wrlock(&db->lock);
    if (rc != ABASE_OK) {
        log_set_error(db, ABASE_EIO, errno, db->logdir, 0, "fdatasync failed");
    } else {
        db->syncs += led;
        db->synced_writes++;
    }
    pthread_rwlock_unlock(&db->lock);
    return rc;
}

int abase_sync(abase_db *db)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = sync_upto(db, UINT64_MAX, 1);
    gate_leave(db);
    return rc;
}

/* ------------------------------------------------------------------ writes */

static int check_sizes(size_t klen, size_t vlen)
{
    if (klen > ABASE_MAX_KEY)
        return ABASE_EKEYSIZE;
    if (vlen > ABASE_MAX_VALUE)
        return ABASE_EVALSIZE;
    return ABASE_OK;
}

/* abase_put and abase_put_nowait. With nowait, anything that could block
 * (the lock held elsewhere, a new segment to create, a sync to wait for)
 * returns ABASE_EWOULDBLOCK before anything is written. */
static int64_t put_impl(abase_db *db, uint32_t ns, int op, const uint8_t *key,
                        size_t klen, const uint8_t *value, size_t vlen,
                        int64_t wall_ms, int nowait)
{
    int rc = check_sizes(klen, vlen);
    if (rc != ABASE_OK)
        return rc;
    if ((op != ABASE_OP_PUT && op != ABASE_OP_DELETE) || (klen && !key) || (vlen && !value))
        return ABASE_EINVAL;
    uint64_t need = align8(ABASE_REC_HEADER_SIZE + klen + vlen);
    segment *s;
    /* A nowait put reads the wall clock once and hands it to the HLC as an
     * injected reading: a used-up millisecond then comes back as EAGAIN
     * (turned into EWOULDBLOCK below) instead of a sleep. */
    int real_clock = wall_ms < 0;
    if (nowait && real_clock)
        wall_ms = abase_wall_ms();
    if (nowait) {
        if (db->durability == ABASE_DUR_SYNC)
            return ABASE_EWOULDBLOCK;
        if (pthread_rwlock_trywrlock(&db->lock) != 0)
            return ABASE_EWOULDBLOCK;
        s = active_seg(db);
        if (!s || s->used + need > s->mapped) {
            pthread_rwlock_unlock(&db->lock);
            return ABASE_EWOULDBLOCK;
        }
    } else {
        pthread_rwlock_wrlock(&db->lock);
    }
    rc = log_room_for(db, need, &s);
    uint64_t hlc = 0, end = 0;
    if (rc == ABASE_OK)
        rc = ix_reserve(&db->ix, 1); /* so that indexing cannot fail after the append */
    if (rc == ABASE_OK) {
        rc = abase_hlc_now(&db->clock, wall_ms, &hlc);
        if (rc == ABASE_EAGAIN && nowait && real_clock)
            rc = ABASE_EWOULDBLOCK; /* nothing written yet */
    }
    if (rc == ABASE_OK) {
        uint64_t h = abase_hash(ns, key, klen);
        uint64_t *slot = ix_find(&db->ix, h, ns, key, klen);
        uint64_t prev = slot ? *slot : 0;
        /* A local timestamp is above every timestamp the engine holds (the
         * clock is raised past each one at recovery and on receive), so a
         * local write dominates. */
        uint64_t addr = log_append_rec(db, s, ns, op, ABASE_F_DOMINANT, key, klen, value, vlen,
                                       hlc, db->node_id, prev);
        if (slot)
            *slot = addr;
        else
            ix_set(&db->ix, h, ns, key, klen, addr); /* room reserved above */
        end = make_addr(s->no, s->used);
    }
    pthread_rwlock_unlock(&db->lock);
    if (rc != ABASE_OK)
        return rc;
    if (db->durability == ABASE_DUR_SYNC) {
        rc = sync_upto(db, end, 0);
        if (rc != ABASE_OK)
            return rc;
    }
    return (int64_t)hlc;
}

int64_t abase_put(abase_db *db, uint32_t ns, int op, const uint8_t *key,
                  size_t klen, const uint8_t *value, size_t vlen, int64_t wall_ms)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = put_impl(db, ns, op, key, klen, value, vlen, wall_ms, 0);
    gate_leave(db);
    return rc;
}

int64_t abase_put_nowait(abase_db *db, uint32_t ns, int op, const uint8_t *key,
                         size_t klen, const uint8_t *value, size_t vlen, int64_t wall_ms)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = put_impl(db, ns, op, key, klen, value, vlen, wall_ms, 1);
    gate_leave(db);
    return rc;
}

static int64_t write_batch_impl(abase_db *db, uint32_t n, const uint8_t *ops,
                          const uint32_t *nss, const uint8_t *blob,
                          const uint32_t *lens, const uint64_t *hlcs,
                          const uint32_t *nodes, const uint64_t *base_hlcs,
                          const uint32_t *base_nodes, const uint8_t *modes,
                          uint8_t *out_status, const uint8_t *flags_in,
                          int64_t wall_ms)
{
    if (n == 0)
        return 0;
    if (!ops || !nss || !lens || (!blob && n) ||
        (hlcs && (!nodes || !base_hlcs || !base_nodes || !modes || !out_status)))
        return ABASE_EINVAL;
    uint64_t need = 0;
    for (uint32_t i = 0; i < n; i++) {
        int rc = check_sizes(lens[2 * i], lens[2 * i + 1]);
        if (rc != ABASE_OK)
            return rc;
        if (ops[i] < ABASE_OP_PUT || ops[i] > ABASE_OP_MERGE)
            return ABASE_EINVAL;
        if (hlcs && !abase_hlc_usable(hlcs[i]))
            return ABASE_ERANGE; /* would leave the clock no room to advance */
        need += align8(ABASE_REC_HEADER_SIZE + (uint64_t)lens[2 * i] + lens[2 * i + 1]);
    }
    pthread_rwlock_wrlock(&db->lock);
    segment *s;
    /* The whole batch goes into one segment, reserved before anything is
     * written, so it cannot fail half-way. */
    int rc = log_room_for(db, need, &s);
    if (rc == ABASE_OK)
        rc = ix_reserve(&db->ix, n);
    if (rc != ABASE_OK) {
        pthread_rwlock_unlock(&db->lock);
        return rc;
    }
    uint64_t *issued = NULL;
    if (!hlcs) {
        issued = malloc(n * sizeof(uint64_t));
        if (!issued) {
            pthread_rwlock_unlock(&db->lock);
            return ABASE_ENOMEM;
        }
        abase_hlc saved = db->clock;
        for (uint32_t i = 0; i < n && rc == ABASE_OK; i++)
            rc = abase_hlc_now(&db->clock, wall_ms, &issued[i]);
        if (rc != ABASE_OK) {
            db->clock = saved;
            free(issued);
            pthread_rwlock_unlock(&db->lock);
            return rc;
        }
    }
    uint8_t batch_flag = n > 1 ? ABASE_F_BATCH : 0;
    uint64_t last_addr = 0, last_hlc = 0;
    uint32_t appended = 0;
    const uint8_t *p = blob;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t klen = lens[2 * i], vlen = lens[2 * i + 1];
        const uint8_t *key = p, *val = p + klen;
        p += (uint64_t)klen + vlen;
        uint64_t h = abase_hash(nss[i], key, klen);
        uint64_t *slot = ix_find(&db->ix, h, nss[i], key, klen);
        uint64_t prev = slot ? *slot : 0;
        uint64_t hlc;
        uint32_t node;
        uint8_t flags = batch_flag;
        if (flags_in)
            flags |= flags_in[i] & ABASE_F_CHECKPOINT;
        if (hlcs) {
            hlc = hlcs[i];
            node = nodes[i];
            uint64_t mh;
            uint32_t mn;
            int dup;
            log_newest_version(db, prev, base_hlcs[i], base_nodes[i], hlc, node, val, vlen,
                               modes[i] == ABASE_MODE_MERGE, &mh, &mn, &dup);
            int newer = ts_greater(hlc, node, mh, mn);
            if (dup || (modes[i] == ABASE_MODE_LWW && !newer)) {
                out_status[i] = 0; /* changes nothing: idempotent receive */
                continue;
            }
            if (newer)
                flags |= ABASE_F_DOMINANT;
            out_status[i] = 1;
        } else {
            hlc = issued[i];
            node = db->node_id;
            flags |= ABASE_F_DOMINANT;
        }
        uint64_t addr = log_append_rec(db, s, nss[i], ops[i], flags, key, klen, val, vlen, hlc,
                                       node, prev);
        if (slot)
            *slot = addr;
        else
            ix_set(&db->ix, h, nss[i], key, klen, addr); /* room reserved above */
        last_addr = addr;
        if (ts_greater(hlc, 0, last_hlc, 0))
            last_hlc = hlc;
        appended++;
    }
    free(issued);
    if (appended > 0 && batch_flag) {
        uint8_t *last = s->base + (last_addr & 0xffffffffu);
        if (appended == 1)
            log_rewrite_flags(last, last[R_FLAGS] & (uint8_t)~ABASE_F_BATCH);
        else
            log_rewrite_flags(last, last[R_FLAGS] | ABASE_F_BATCH_END);
    }
    uint64_t end = make_addr(s->no, s->used);
    pthread_rwlock_unlock(&db->lock);
    if (appended > 0 && db->durability == ABASE_DUR_SYNC) {
        rc = sync_upto(db, end, 0);
        if (rc != ABASE_OK)
            return rc;
    }
    return (int64_t)last_hlc;
}

int64_t abase_write_batch(abase_db *db, uint32_t n, const uint8_t *ops,
                          const uint32_t *nss, const uint8_t *blob,
                          const uint32_t *lens, const uint64_t *hlcs,
                          const uint32_t *nodes, const uint64_t *base_hlcs,
                          const uint32_t *base_nodes, const uint8_t *modes,
                          uint8_t *out_status, const uint8_t *flags_in,
                          int64_t wall_ms)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int64_t rc = write_batch_impl(db, n, ops, nss, blob, lens, hlcs, nodes, base_hlcs, base_nodes,
                                  modes, out_status, flags_in, wall_ms);
    gate_leave(db);
    return rc;
}
