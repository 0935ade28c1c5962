/*
 * log.c: the engine's lifecycle and its segment files.
 *
 * Owns abase_db_new/free, abase_db_error, abase_db_stats, the clock calls,
 * and the segment files: creating and preallocating one (new_segment),
 * sealing it (seal_locked, abase_seal), finding room for an append and
 * encoding a record there (log_room_for, log_append_rec, log_rewrite_flags,
 * used by write.c); also abase_segments and abase_prefault, and
 * log_set_error, the last-error record every file writes.
 *
 * Locks: the segment functions expect the write `lock` held by the caller.
 * The API calls take `lock` (read to look, write to change) and never
 * sync_mu; abase_prefault populates pages after releasing it.
 */
#include "log_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* ----------------------------------------------------------------- errors */

/* Copy the path dir[/name] into out, keeping its end (the file name) and
 * marking a cut front with "...", so a long directory never hides which
 * file an error is about. */
static void copy_path(char *out, size_t cap, const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = name ? strlen(name) + 1 : 0;
    size_t total = dl + nl;
    if (total < cap) {
        snprintf(out, cap, "%s%s%s", dir, name ? "/" : "", name ? name : "");
        return;
    }
    size_t keep = cap - 4; /* "..." and the terminator */
    size_t skip = total - keep;
    if (skip < dl)
        snprintf(out, cap, "...%s%s%s", dir + skip, name ? "/" : "", name ? name : "");
    else /* a name longer than the record: never for segment names */
        snprintf(out, cap, "...%s", name ? name + (nl - 1 - (keep < nl ? keep : nl - 1)) : "");
}

static void set_error_v(abase_db *db, int status, int sys_errno, const char *dir,
                        const char *name, uint64_t offset, const char *fmt, va_list ap)
{
    db->err.status = status;
    db->err.sys_errno = sys_errno;
    db->err.offset = offset;
    copy_path(db->err.file, sizeof(db->err.file), dir ? dir : "", name);
    vsnprintf(db->err.message, sizeof(db->err.message), fmt, ap);
}

void log_set_error(abase_db *db, int status, int sys_errno, const char *file,
                   uint64_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error_v(db, status, sys_errno, file, NULL, offset, fmt, ap);
    va_end(ap);
}

void log_set_seg_error(abase_db *db, int status, int sys_errno, uint32_t no,
                       uint64_t offset, const char *fmt, ...)
{
    char name[SEG_NAME_CAP];
    seg_name(no, name);
    va_list ap;
    va_start(ap, fmt);
    set_error_v(db, status, sys_errno, db->logdir, name, offset, fmt, ap);
    va_end(ap);
    db->err.syscall[0] = 0;
}

void log_seg_display_path(const abase_db *db, uint32_t no, char *out, size_t cap)
{
    char name[SEG_NAME_CAP];
    seg_name(no, name);
    copy_path(out, cap, db->logdir, name);
}

void log_set_io_error(abase_db *db, int sys_errno, const char *file, const char *syscall,
                      const char *message)
{
    log_set_error(db, ABASE_EIO, sys_errno, file, 0, "%s", message);
    snprintf(db->err.syscall, sizeof(db->err.syscall), "%s", syscall);
}

/* ------------------------------------------------------------- segments */

int log_write_seg_header(uint8_t *p, uint32_t no, uint32_t node, uint64_t hlc)
{
    memset(p, 0, ABASE_SEG_HEADER_SIZE);
    memcpy(p, SEG_MAGIC, 8);
    st32(p + 8, ABASE_FORMAT_VERSION);
    st32(p + 12, ABASE_SEG_HEADER_SIZE);
    st64(p + 16, no);
    st32(p + 24, node);
    st64(p + 32, hlc);
    st32(p + 60, abase_crc_mask(abase_crc32c(0, p, 60)));
    return ABASE_OK;
}

/* fsync a directory, so that the names created or removed in it are on
 * disk. 0 or -1 with errno set. */
int log_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Recompute live_bytes (write lock held). */
void log_recount_live(abase_db *db)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < db->nsegs; i++)
        if (db->segs[i].no >= db->live_first && db->segs[i].used > ABASE_SEG_HEADER_SIZE)
            n += db->segs[i].used - ABASE_SEG_HEADER_SIZE;
    __atomic_store_n(&db->live_bytes, n, __ATOMIC_RELAXED);
}

int log_grow_seg_array(abase_db *db)
{
    if (db->nsegs < db->segs_cap)
        return ABASE_OK;
    uint32_t cap = db->segs_cap ? db->segs_cap * 2 : 8;
    segment *n = realloc(db->segs, cap * sizeof(segment));
    if (!n)
        return ABASE_ENOMEM;
    db->segs = n;
    db->segs_cap = cap;
    return ABASE_OK;
}

/* Seal the active segment: for durability "sync" put it on disk before
 * any later segment exists, then shrink the file to its data. Write lock
 * held. Any failure is sticky (log_fail) and leaves the segment sealed at
 * its full mapped size, so nothing is ever written through a mapping past
 * the end of a shortened file (that was SIGBUS, or a write lost beyond
 * the end of the file). */
static int seal_locked(abase_db *db)
{
    segment *s = active_seg(db);
    if (!s)
        return ABASE_OK;
    char path[sizeof(db->err.file)];
    log_seg_display_path(db, s->no, path, sizeof(path));
    if (db->durability == ABASE_DUR_SYNC) {
        /* fsync point: sealed segment. Before the file is shortened, so
         * a failure leaves the file as long as its mapping. */
        if (fdatasync(s->fd) != 0) {
            s->sealed = 1;
            log_fail(db, 1, 1, errno, path, "fdatasync", "fdatasync at seal failed");
            return ABASE_EIO;
        }
        s->synced = 1;
        db->sealed_synced = make_addr(s->no, s->used);
        log_durable(db, db->sealed_synced, 1);
    }
    /* Pages past `used` are never touched again, so shrinking the file
     * under the mapping is safe once the segment is sealed. */
    s->sealed = 1;
    if (ftruncate(s->fd, (off_t)s->used) != 0) {
        log_fail(db, 1, 1, errno, path, "ftruncate", "ftruncate at seal failed");
        return ABASE_EIO;
    }
    return ABASE_OK;
}

/* Create, preallocate and map a new active segment of at least `need` bytes
 * of records. Write lock held. */
static int new_segment(abase_db *db, uint64_t need)
{
    int rc = log_grow_seg_array(db);
    if (rc != ABASE_OK)
        return rc;
    uint64_t size = db->seg_size;
    if (size < ABASE_SEG_HEADER_SIZE + need)
        size = align8(ABASE_SEG_HEADER_SIZE + need);
    uint32_t no = db->next_no;
    char name[SEG_NAME_CAP], path[sizeof(db->err.file)];
    seg_name(no, name);
    log_seg_display_path(db, no, path, sizeof(path));
    /* Every failure here is sticky (log_fail): the engine runs out of
     * room or of a working disk, and says so on every write after it. */
    int fd = openat(db->logdir_fd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_fail(db, 1, 1, errno, path, "open", "cannot create segment");
        return ABASE_EIO;
    }
    /* Reserve the blocks now: a write through the mapping into a hole that
     * cannot be allocated would kill the process with SIGBUS. (posix_fallocate
     * returns its error; it does not set errno.) */
    int frc = posix_fallocate(fd, 0, (off_t)size);
    if (frc != 0) {
        close(fd);
        unlinkat(db->logdir_fd, name, 0);
        char msg[96];
        snprintf(msg, sizeof(msg), "cannot preallocate a %llu-byte segment", (unsigned long long)size);
        log_fail(db, 1, 1, frc, path, "posix_fallocate", msg);
        return ABASE_EIO;
    }
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        unlinkat(db->logdir_fd, name, 0);
        log_fail(db, 1, 1, e, path, "mmap", "cannot map a new segment");
        return ABASE_EIO;
    }
    log_write_seg_header(base, no, db->node_id, db->clock.last);
    if (db->durability == ABASE_DUR_SYNC) {
        /* fsync point: the new file's header and its name in the directory */
        const char *call = "fdatasync", *what = path;
        int bad = fdatasync(fd) != 0;
        if (!bad && log_fsync_dir(db->logdir) != 0) {
            bad = 1;
            call = "fsync";
            what = db->logdir;
        }
        if (bad) {
            int e = errno;
            munmap(base, size);
            close(fd);
            unlinkat(db->logdir_fd, name, 0);
            log_fail(db, 1, 1, e, what, call, "cannot sync a new segment");
            return ABASE_EIO;
        }
    } else {
        __atomic_store_n(&db->dir_dirty, 1, __ATOMIC_RELAXED); /* abase_sync fsyncs the directory */
    }
    segment *s = &db->segs[db->nsegs++];
    memset(s, 0, sizeof(*s));
    s->no = no;
    s->fd = fd;
    s->base = base;
    s->mapped = size;
    s->used = ABASE_SEG_HEADER_SIZE;
    db->next_no = no + 1;
    return ABASE_OK;
}

/* An active segment with room for `need` more bytes. Write lock held. */
int log_room_for(abase_db *db, uint64_t need, segment **out)
{
    if (log_failed(db))
        return log_refuse(db);
    segment *s = active_seg(db);
    if (s && s->used + need <= s->mapped) {
        *out = s;
        return ABASE_OK;
    }
    int rc = seal_locked(db);
    if (rc != ABASE_OK)
        return rc;
    rc = new_segment(db, need);
    if (rc != ABASE_OK)
        return rc;
    *out = &db->segs[db->nsegs - 1];
    return ABASE_OK;
}

/* Encode one record at the end of s (room already checked). */
/* log_append_rec, and log_append_rec_ttl when expire_at is not NULL. */
static uint64_t append_impl(abase_db *db, segment *s, uint32_t ns, int op,
                            uint8_t flags, const uint8_t *key, size_t klen,
                            const uint8_t *val, size_t vlen, uint64_t hlc,
                            uint32_t node, uint64_t prev, const uint64_t *expire_at)
{
    uint64_t off = s->used;
    uint8_t *p = s->base + off;
    uint32_t len = (uint32_t)(ABASE_REC_HEADER_SIZE + klen + vlen);
    /* Store order matters to recovery: a process killed while copying a
     * record leaves a program-order prefix of these stores in the page
     * cache, so the header (with its length) is whole before any key or
     * value byte lands, and the crc comes last. The compiler fences keep
     * the compiler from reordering them. Recovery relies on it to skip a
     * torn record by its length, so that a user's value holding a whole
     * valid record is never read as one (see recovery.c). */
    st32(p + R_LEN, len);
    st64(p + R_PREV, prev);
    st64(p + R_HLC, hlc);
    st32(p + R_NODE, node);
    st32(p + R_NS, ns);
    p[R_OP] = (uint8_t)op;
    p[R_FLAGS] = flags;
    st16(p + R_KLEN, (uint16_t)klen);
    st32(p + R_VLEN, (uint32_t)vlen);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (klen)
        memcpy(p + ABASE_REC_HEADER_SIZE, key, klen);
    if (expire_at) { /* the caller checked vlen >= ABASE_TTL_PREFIX */
        st64(p + ABASE_REC_HEADER_SIZE + klen, *expire_at);
        if (vlen > ABASE_TTL_PREFIX)
            memcpy(p + ABASE_REC_HEADER_SIZE + klen + ABASE_TTL_PREFIX, val + ABASE_TTL_PREFIX,
                   vlen - ABASE_TTL_PREFIX);
    } else if (vlen) {
        memcpy(p + ABASE_REC_HEADER_SIZE + klen, val, vlen);
    }
    uint64_t padded = align8(len);
    memset(p + len, 0, padded - len);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    st32(p + R_CRC, abase_crc_mask(abase_crc32c(0, p + 4, len - 4)));
    s->used += padded;
    __atomic_store_n(&db->live_bytes, __atomic_load_n(&db->live_bytes, __ATOMIC_RELAXED) + padded,
                     __ATOMIC_RELAXED);
    s->records++;
    if (ts_greater(hlc, node, s->max_hlc, s->max_node)) {
        s->max_hlc = hlc;
        s->max_node = node;
    }
    db->log_bytes_written += padded;
    db->records_appended++;
    if (make_addr(s->no, s->used) >= __atomic_load_n(&db->tail_wake_at, __ATOMIC_RELAXED))
        log_tail_kick(db); /* the tail keeper's window runs short (tail.c) */
    return make_addr(s->no, off);
}

uint64_t log_append_rec(abase_db *db, segment *s, uint32_t ns, int op,
                        uint8_t flags, const uint8_t *key, size_t klen,
                        const uint8_t *val, size_t vlen, uint64_t hlc,
                        uint32_t node, uint64_t prev)
{
    return append_impl(db, s, ns, op, flags, key, klen, val, vlen, hlc, node, prev, NULL);
}

uint64_t log_append_rec_ttl(abase_db *db, segment *s, uint32_t ns, int op,
                            uint8_t flags, const uint8_t *key, size_t klen,
                            const uint8_t *val, size_t vlen, uint64_t hlc,
                            uint32_t node, uint64_t prev, uint64_t expire_at)
{
    return append_impl(db, s, ns, op, flags, key, klen, val, vlen, hlc, node, prev, &expire_at);
}

void log_rewrite_flags(uint8_t *p, uint8_t flags)
{
    p[R_FLAGS] = flags;
    st32(p + R_CRC, abase_crc_mask(abase_crc32c(0, p + 4, ld32(p + R_LEN) - 4)));
}

void log_end_batch(segment *s, uint64_t last_addr, uint64_t appended, uint8_t batch_flag)
{
    if (appended == 0 || !batch_flag)
        return;
    uint8_t *last = s->base + (last_addr & 0xffffffffu);
    if (appended == 1) /* a batch of one is a plain record */
        log_rewrite_flags(last, last[R_FLAGS] & (uint8_t)~ABASE_F_BATCH);
    else
        log_rewrite_flags(last, last[R_FLAGS] | ABASE_F_BATCH_END);
}

/* ------------------------------------------------------------- lifecycle */

int abase_db_new(const char *dir, uint32_t node_id, uint64_t segment_size,
                 int durability, abase_db **out)
{
    if (!dir || !out || durability < ABASE_DUR_NONE || durability > ABASE_DUR_SYNC ||
        segment_size < 4096 || segment_size > (UINT64_C(1) << 31))
        return ABASE_EINVAL;
    abase_db *db = calloc(1, sizeof(*db));
    if (!db)
        return ABASE_ENOMEM;
    size_t dl = strlen(dir);
    db->dir = malloc(dl + 1);
    db->logdir = malloc(dl + 5);
    if (!db->dir || !db->logdir) {
        free(db->dir);
        free(db->logdir);
        free(db);
        return ABASE_ENOMEM;
    }
    memcpy(db->dir, dir, dl + 1);
    snprintf(db->logdir, dl + 5, "%s/log", dir);
    db->node_id = node_id;
    db->seg_size = segment_size;
    db->durability = durability;
    db->sync_fd = -1;
    db->mark_fd = -1;
    db->read_limit = UINT64_MAX;
    db->logdir_fd = -1;
    atomic_init(&db->calls, 0);
    atomic_init(&db->closing, 0);
    pthread_rwlock_init(&db->lock, NULL);
    pthread_mutex_init(&db->sync_mu, NULL);
    pthread_mutex_init(&db->feed_mu, NULL);
    pthread_cond_init(&db->sync_cv, NULL);
    pthread_mutex_init(&db->mark_mu, NULL);
    pthread_mutex_init(&db->stall_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* stall deadlines: not moved by the wall clock */
    pthread_cond_init(&db->stall_cv, &ca);
    pthread_condattr_destroy(&ca);
    log_tail_init(db);
    ix_init(&db->ix, rec_mapped, db);
    *out = db;
    return ABASE_OK;
}

int abase_db_close(abase_db *db)
{
    if (!db)
        return ABASE_OK;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&db->closing, &expected, 1)) {
        /* Another thread closes (or closed): wait until it is done, so a
         * return from here means the same as from the first call. */
        struct timespec pause = {0, 50000};
        while (atomic_load(&db->closing) != 2)
            nanosleep(&pause, NULL);
        return ABASE_OK;
    }
    /* No call enters from now on; wait for those inside to leave. Each
     * finishes by itself: lock holds are short, a group-commit waiter is
     * woken by the sync it waits for, and nothing waits for the wall clock
     * (see hlc.c). */
    struct timespec pause = {0, 50000}; /* 50 us */
    while (atomic_load(&db->calls) != 0)
        nanosleep(&pause, NULL);
    log_tail_stop(db); /* no round begins once closing is set; join before unmapping */
    pthread_rwlock_wrlock(&db->lock);
    for (uint32_t i = 0; i < db->nsegs; i++) {
        /* the active segment keeps its preallocated tail: reopening
         * continues in it */
        munmap(db->segs[i].base, db->segs[i].mapped);
        close(db->segs[i].fd);
        free(db->segs[i].marks);
    }
    db->nsegs = 0;
    free(db->segs);
    db->segs = NULL;
    db->segs_cap = 0;
    if (db->sync_fd >= 0)
        close(db->sync_fd);
    db->sync_fd = -1;
    if (db->logdir_fd >= 0)
        close(db->logdir_fd);
    db->logdir_fd = -1;
    if (db->mark_fd >= 0)
        close(db->mark_fd);
    db->mark_fd = -1;
    ix_free(&db->ix);
    pthread_rwlock_unlock(&db->lock);
    atomic_store(&db->closing, 2);
    return ABASE_OK;
}

void abase_db_free(abase_db *db)
{
    if (!db)
        return;
    abase_db_close(db);
    free(db->dir);
    free(db->logdir);
    pthread_rwlock_destroy(&db->lock);
    pthread_mutex_destroy(&db->sync_mu);
    pthread_mutex_destroy(&db->feed_mu);
    pthread_cond_destroy(&db->sync_cv);
    pthread_mutex_destroy(&db->mark_mu);
    pthread_mutex_destroy(&db->stall_mu);
    pthread_cond_destroy(&db->stall_cv);
    log_tail_destroy(db);
    free(db);
}

int abase_db_closed(abase_db *db)
{
    return gate_closing(db);
}

void abase_db_error(abase_db *db, abase_error *out)
{
    /* Not gated: the error record outlives abase_db_close. */
    pthread_rwlock_rdlock(&db->lock);
    *out = db->err;
    pthread_rwlock_unlock(&db->lock);
}

int abase_db_stats(abase_db *db, abase_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    out->live_keys = ix_count(&db->ix);
    out->index_bytes = ix_bytes(&db->ix);
    out->index_capacity = db->ix.cur.cap + db->ix.old.cap;
    for (uint32_t i = 0; i < db->nsegs; i++)
        if (db->segs[i].no >= db->live_first)
            out->log_bytes += db->segs[i].used - ABASE_SEG_HEADER_SIZE;
    out->log_bytes_written = db->log_bytes_written;
    out->records_appended = db->records_appended;
    out->segments = db->nsegs;
    out->first_segment = db->nsegs ? db->segs[0].no : db->next_no;
    out->active_segment = active_seg(db) ? active_seg(db)->no : 0;
    out->rehashing = db->ix.old.cap != 0;
    out->syncs = db->syncs;
    out->synced_writes = db->synced_writes;
    pthread_rwlock_unlock(&db->lock);
    pthread_mutex_lock(&db->sync_mu);
    out->durable_end = db->synced_addr;
    out->failed = (uint32_t)db->failed;
    pthread_mutex_unlock(&db->sync_mu);
    pthread_mutex_lock(&db->stall_mu);
    out->stalls = db->stalls;
    out->stall_ns = db->stall_ns;
    out->stalled_writers = db->stalled;
    pthread_mutex_unlock(&db->stall_mu);
    gate_leave(db);
    return ABASE_OK;
}

int abase_db_clock(abase_db *db, uint64_t *out)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    *out = db->clock.last;
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return ABASE_OK;
}

int abase_db_clock_now(abase_db *db, int64_t wall_ms, uint64_t *out)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    int rc = abase_hlc_now(&db->clock, wall_ms, out);
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}

int abase_db_clock_observe(abase_db *db, uint64_t seen)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    abase_hlc_observe(&db->clock, seen);
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return ABASE_OK;
}

int abase_db_clock_update(abase_db *db, uint64_t remote, int64_t wall_ms,
                          uint64_t max_skew_ms, uint64_t *out)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    int rc = abase_hlc_update(&db->clock, remote, wall_ms, max_skew_ms, out);
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}

/* ------------------------------------------------ for the compactor */

uint64_t abase_prefault(abase_db *db, uint64_t max_bytes)
{
    /* Not under durability "sync": populating a shared file mapping for
     * writing marks its pages dirty, and the next fdatasync would write
     * all of them. */
    if (db->durability == ABASE_DUR_SYNC || !gate_enter(db))
        return 0;
    pthread_rwlock_rdlock(&db->lock);
    segment *s = active_seg(db);
    uint8_t *from = NULL;
    uint64_t len = 0;
    if (s) {
        uint64_t start = (s->used + 4095u) & ~(uint64_t)4095u;
        if (start < s->mapped) {
            from = s->base + start;
            len = s->mapped - start < max_bytes ? s->mapped - start : max_bytes;
        }
    }
    pthread_rwlock_unlock(&db->lock);
    /* Outside the lock: populating only maps pages (the kernel does not
     * write to them), so appends may run into the range meanwhile; if the
     * segment is sealed and shortened first, the call fails with EFAULT
     * instead of raising SIGBUS. The mapping itself stays until close or
     * the segment's compaction, neither of which runs concurrently with
     * the compactor that calls this; abase_db_close waits for this call
     * to leave the gate before it unmaps. */
#ifdef MADV_POPULATE_WRITE
    if (len && madvise(from, len, MADV_POPULATE_WRITE) != 0)
        len = 0;
#else
    (void)from;
    len = 0;
#endif
    gate_leave(db);
    return len;
}

int abase_seal(abase_db *db)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    segment *s = active_seg(db);
    int rc = ABASE_OK;
    if (log_failed(db))
        rc = log_refuse(db);
    else if (s && s->used > ABASE_SEG_HEADER_SIZE)
        rc = seal_locked(db);
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}

int64_t abase_segments(abase_db *db, abase_segstat *out, uint32_t cap)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    uint32_t n = 0;
    for (uint32_t i = 0; i < db->nsegs; i++) {
        segment *s = &db->segs[i];
        if (s->no < db->live_first)
            continue;
        if (n < cap && out) {
            out[n].no = s->no;
            out[n].sealed = (uint32_t)s->sealed;
            out[n].used = s->used;
            out[n].max_hlc = s->max_hlc;
            out[n].max_node = s->max_node;
            out[n].records = s->records;
        }
        n++;
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return n;
}
