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

/* What a failed sync was doing: for the error report. */
typedef struct sync_failure {
    int sys_errno;
    const char *syscall;
    char file[1100];
} sync_failure;

/* One fdatasync of the active segment (and, with all_segments, first of
 * every sealed segment not yet synced and of the log directory if a
 * segment was created since it was last synced). Returns the address it
 * made durable in *end. Called by the leader, with neither lock held. */
static int sync_once(abase_db *db, int all_segments, uint64_t *end, sync_failure *why)
{
    int rc = ABASE_OK;
    *end = 0;
    pthread_rwlock_rdlock(&db->lock);
    if (all_segments) {
        for (uint32_t i = 0; i < db->nsegs && rc == ABASE_OK; i++) {
            segment *s = &db->segs[i];
            if (s->sealed && !s->synced) {
                if (fdatasync(s->fd) != 0) { /* fsync point: db.sync() */
                    why->sys_errno = errno;
                    why->syscall = "fdatasync";
                    log_seg_display_path(db, s->no, why->file, sizeof(why->file));
                    rc = ABASE_EIO;
                    break;
                }
                s->synced = 1;
            }
        }
        /* fsync point: the names of segments created since (durability
         * "sync" syncs the directory when it creates one) */
        if (rc == ABASE_OK && __atomic_exchange_n(&db->dir_dirty, 0, __ATOMIC_ACQ_REL) &&
            log_fsync_dir(db->logdir) != 0) {
            __atomic_store_n(&db->dir_dirty, 1, __ATOMIC_RELAXED);
            why->sys_errno = errno;
            why->syscall = "fsync";
            snprintf(why->file, sizeof(why->file), "%s", db->logdir);
            rc = ABASE_EIO;
        }
    }
    segment *s = active_seg(db);
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
        if (rc == ABASE_OK)
            log_seg_display_path(db, s->no, why->file, sizeof(why->file));
        if (fd < 0 && rc == ABASE_OK) {
            why->sys_errno = errno;
            why->syscall = "dup";
            rc = ABASE_EIO;
        }
    } else if (all_segments && db->nsegs) {
        segment *last = &db->segs[db->nsegs - 1]; /* every segment synced above */
        *end = make_addr(last->no, last->used);
    } else if (db->sealed_synced > *end) {
        *end = db->sealed_synced;
    }
    pthread_rwlock_unlock(&db->lock);
    if (rc == ABASE_OK && fd >= 0 && fdatasync(fd) != 0) { /* fsync point: group commit */
        why->sys_errno = errno;
        why->syscall = "fdatasync";
        rc = ABASE_EIO;
    }
    return rc;
}

/* Make every address below `target` durable. One writer at a time is the
 * leader and syncs, without holding sync_mu; the others wait on sync_cv
 * and leave as soon as a sync covers their write (group commit). A failed
 * sync is sticky: the waiters it did not cover, and every later call,
 * fail too, whatever a later sync would say (the kernel reports a failed
 * writeback once, and may have dropped the pages). */
static int sync_upto(abase_db *db, uint64_t target, int all_segments)
{
    int rc = ABASE_OK, led = 0, failed_here = 0, first = 0;
    sync_failure why;
    memset(&why, 0, sizeof(why));
    uint64_t end = 0, durable = 0;
    pthread_mutex_lock(&db->sync_mu);
    for (;;) {
        if (!all_segments && db->synced_addr >= target)
            break;
        if (db->failed) {
            rc = ABASE_EIO;
            break;
        }
        if (db->syncing) {
            pthread_cond_wait(&db->sync_cv, &db->sync_mu);
            continue;
        }
        db->syncing = 1;
        led = 1;
        pthread_mutex_unlock(&db->sync_mu);
        rc = sync_once(db, all_segments, &end, &why);
        pthread_mutex_lock(&db->sync_mu);
        db->syncing = 0;
        if (rc == ABASE_OK && end > db->synced_addr)
            db->synced_addr = end;
        if (rc != ABASE_OK) {
            /* in this hold: no waiter may lead another sync first */
            failed_here = 1;
            first = log_fail_record(db, why.sys_errno, why.file, why.syscall, "sync of the log failed");
            durable = db->synced_addr;
        }
        pthread_cond_broadcast(&db->sync_cv);
        break;
    }
    pthread_mutex_unlock(&db->sync_mu);
    if (failed_here) {
        log_fail_finish(db, first, 0, 1, durable, why.sys_errno, why.file, why.syscall,
                        "sync of the log failed");
        return ABASE_EIO;
    }
    if (rc == ABASE_OK && led)
        log_mark_write(db, end, 0, 0); /* the durable end mark follows every sync */
    pthread_rwlock_wrlock(&db->lock);
    if (rc != ABASE_OK) {
        log_refuse(db);
    } else {
        db->syncs += led;
        db->synced_writes++;
    }
    pthread_rwlock_unlock(&db->lock);
    return rc;
}

int log_sync_to(abase_db *db, uint64_t target)
{
    return sync_upto(db, target, 0);
}

int abase_sync(abase_db *db)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = sync_upto(db, UINT64_MAX, 1);
    gate_leave(db);
    return rc;
}

int abase_db_checkpoint(abase_db *db)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = log_failed(db) ? ABASE_EIO : sync_upto(db, UINT64_MAX, 1);
    if (rc == ABASE_OK && log_mark_sync(db) != ABASE_OK) {
        log_fail(db, 0, 1, errno, db->logdir, "fsync", "cannot sync the durable end mark");
        rc = ABASE_EIO;
    }
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
        if (db->durability == ABASE_DUR_SYNC || log_stall_needed(db))
            return ABASE_EWOULDBLOCK;
        if (pthread_rwlock_trywrlock(&db->lock) != 0)
            return ABASE_EWOULDBLOCK;
        s = active_seg(db);
        if (!log_failed(db) && (!s || s->used + need > s->mapped)) {
            pthread_rwlock_unlock(&db->lock);
            return ABASE_EWOULDBLOCK;
        }
    } else {
        log_stall(db); /* backpressure: before the lock, bounded */
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
        if (flags_in && (flags_in[i] & (ABASE_F_TTL | ABASE_F_TTL_RELATIVE))) {
            /* a TTL needs a put with room for its prefix; relative only for
             * local writes (received records carry their expire_at) */
            if (ops[i] != ABASE_OP_PUT || lens[2 * i + 1] < ABASE_TTL_PREFIX ||
                ((flags_in[i] & ABASE_F_TTL_RELATIVE) && hlcs))
                return ABASE_EINVAL;
        }
        need += align8(ABASE_REC_HEADER_SIZE + (uint64_t)lens[2 * i] + lens[2 * i + 1]);
        /* one segment holds the whole batch: every record offset must fit
         * the 32 bits of an address */
        if (need > ABASE_MAX_BATCH)
            return ABASE_EBATCHSIZE;
    }
    if (!hlcs)
        log_stall(db); /* backpressure for local writes; callers of received
                        * records stall first (abase_stall), outside their locks */
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
        int relative = 0;
        if (flags_in) {
            flags |= flags_in[i] & (ABASE_F_CHECKPOINT | ABASE_F_TTL);
            if (flags_in[i] & ABASE_F_TTL_RELATIVE) {
                flags |= ABASE_F_TTL;
                relative = 1;
            }
        }
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
        uint64_t addr;
        if (relative) {
            /* the ttl becomes an expire_at on the issued timestamp's own
             * clock, written as the record is (no other form is ever on disk) */
            uint64_t ttl = ld64(val), ms = hlc >> ABASE_LOGICAL_BITS;
            addr = log_append_rec_ttl(db, s, nss[i], ops[i], flags, key, klen, val, vlen, hlc, node, prev,
                                      ttl > UINT64_MAX - ms ? UINT64_MAX : ms + ttl);
        } else {
            addr = log_append_rec(db, s, nss[i], ops[i], flags, key, klen, val, vlen, hlc, node, prev);
        }
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
    log_end_batch(s, last_addr, (uint64_t)appended, batch_flag);
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
