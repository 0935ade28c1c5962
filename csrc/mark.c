/*
 * mark.c: what the log knows about its own durability, and what it does
 * when that knowledge fails.
 *
 *   - The durable end mark, log/MARK (its format is at the top of abase.h):
 *     how far the log is known to be on disk and the boot id of the machine
 *     that wrote it, so that recovery can tell a torn tail (a power loss, or
 *     the record a killed process was copying) from corruption.
 *     log_mark_open reads it at recovery, log_mark_create makes it in a
 *     new log, log_mark_write writes the next slot (no fsync),
 *     log_mark_reset clears its flags after recovery, log_mark_sync fsyncs.
 *   - The durable end (synced_addr): log_durable moves it after a sync.
 *   - The sticky I/O failure (log_fail, log_refuse, abase_db_fail,
 *     abase_db_failure): after a failed sync the kernel may have dropped the
 *     pages it could not write and will not report it again, so a later
 *     successful sync proves nothing. The engine refuses every write until
 *     it is reopened.
 *   - Write stalls (log_stall, abase_stall*, abase_db_set_stall): a bounded
 *     wait of local writes while the compactor is behind.
 *
 * Locks: log_fail takes sync_mu, then `lock` (unless held), then mark_mu;
 * log_durable takes sync_mu, then mark_mu; the stall functions take only
 * stall_mu. mark_mu and stall_mu are leaves.
 */
#include "log_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const uint8_t MARK_MAGIC[8] = {'A', 'B', 'L', 'O', 'G', 'M', 'R', 'K'};
#define MARK_SLOT 64u
#define MARK_SLOT_STRIDE 512u
#define MARK_FILE_SIZE (2u * MARK_SLOT_STRIDE)

/* --------------------------------------------------------------- boot id */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void log_read_boot_id(uint8_t out[16])
{
    memset(out, 0, 16);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* not Linux: unknown, so recovery treats every tail leniently */
    char text[64];
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return;
    uint8_t id[16];
    int digits = 0;
    for (ssize_t i = 0; i < n && digits < 32; i++) {
        if (text[i] == '-')
            continue;
        int v = hexval(text[i]);
        if (v < 0)
            break;
        if (digits % 2 == 0)
            id[digits / 2] = (uint8_t)(v << 4);
        else
            id[digits / 2] |= (uint8_t)v;
        digits++;
    }
    if (digits == 32)
        memcpy(out, id, 16);
}

/* ------------------------------------------------------------------ mark */

static void mark_encode(uint8_t *p, uint64_t seq, uint64_t end, uint32_t flags, const uint8_t boot[16])
{
    memset(p, 0, MARK_SLOT);
    memcpy(p, MARK_MAGIC, 8);
    st32(p + 8, ABASE_FORMAT_VERSION);
    st32(p + 12, flags);
    st64(p + 16, seq);
    st64(p + 24, end);
    memcpy(p + 32, boot, 16);
    st32(p + 60, abase_crc_mask(abase_crc32c(0, p, 60)));
}

/* 1 if the slot at p is valid (0: ignore it); an unknown version is
 * reported in *version. */
static int mark_decode(const uint8_t *p, mark_state *m, uint32_t *version)
{
    if (memcmp(p, MARK_MAGIC, 8) != 0 || abase_crc_unmask(ld32(p + 60)) != abase_crc32c(0, p, 60))
        return 0;
    *version = ld32(p + 8);
    m->flags = ld32(p + 12);
    m->seq = ld64(p + 16);
    m->end = ld64(p + 24);
    memcpy(m->boot, p + 32, 16);
    return 1;
}

static char *mark_path(abase_db *db)
{
    size_t pl = strlen(db->logdir) + sizeof("/MARK");
    char *path = malloc(pl);
    if (path)
        snprintf(path, pl, "%s/MARK", db->logdir);
    return path;
}

int log_mark_open(abase_db *db, mark_state *m)
{
    memset(m, 0, sizeof(*m));
    char *path = mark_path(db);
    if (!path)
        return ABASE_ENOMEM;
    int fd = openat(db->logdir_fd, "MARK", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e != ENOENT)
            log_set_io_error(db, e, path, "open", "cannot open the durable end mark");
        free(path);
        return e == ENOENT ? ABASE_OK : ABASE_EIO; /* absent: a new log (log_mark_create) */
    }
    int rc = ABASE_OK;
    m->present = 1;
    uint8_t buf[MARK_FILE_SIZE];
    memset(buf, 0, sizeof(buf));
    ssize_t n = pread(fd, buf, sizeof(buf), 0);
    if (n < 0) {
        log_set_io_error(db, errno, path, "pread", "cannot read the durable end mark");
        rc = ABASE_EIO;
    } else {
        mark_state a, b;
        uint32_t va = 0, vb = 0;
        memset(&a, 0, sizeof(a));
        memset(&b, 0, sizeof(b));
        int oka = n >= (ssize_t)MARK_SLOT && mark_decode(buf, &a, &va);
        int okb = n >= (ssize_t)(MARK_SLOT_STRIDE + MARK_SLOT) && mark_decode(buf + MARK_SLOT_STRIDE, &b, &vb);
        if (oka && okb && b.seq > a.seq)
            oka = 0;
        if (oka || okb) {
            uint32_t v = oka ? va : vb;
            *m = oka ? a : b;
            m->present = 1;
            m->valid = 1;
            if (v != ABASE_FORMAT_VERSION) {
                log_set_error(db, ABASE_EVERSION, 0, path, 8,
                              "durable end mark of format version %u, this build reads %u", v,
                              ABASE_FORMAT_VERSION);
                rc = ABASE_EVERSION;
            }
        }
    }
    free(path);
    if (rc != ABASE_OK) {
        close(fd);
        return rc;
    }
    pthread_mutex_lock(&db->mark_mu);
    db->mark_fd = fd;
    db->mark_seq = m->seq;
    db->mark_end = m->end;
    db->mark_flags = m->flags;
    pthread_mutex_unlock(&db->mark_mu);
    return ABASE_OK;
}

int log_mark_create(abase_db *db, uint64_t end)
{
    char *path = mark_path(db);
    if (!path)
        return ABASE_ENOMEM;
    int rc = ABASE_OK;
    int fd = openat(db->logdir_fd, "MARK", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_set_io_error(db, errno, path, "open", "cannot create the durable end mark");
        free(path);
        return ABASE_EIO;
    }
    /* Both slots get the same content, so one torn sector later still
     * leaves one. */
    uint8_t buf[MARK_FILE_SIZE];
    memset(buf, 0, sizeof(buf));
    mark_encode(buf, 0, end, 0, db->boot_id);
    mark_encode(buf + MARK_SLOT_STRIDE, 1, end, 0, db->boot_id);
    if (pwrite(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf)) {
        log_set_io_error(db, errno, path, "pwrite", "cannot write the durable end mark");
        rc = ABASE_EIO;
    } else if (fsync(fd) != 0) { /* fsync point: the new mark, before any segment */
        log_set_io_error(db, errno, path, "fsync", "cannot sync the durable end mark");
        rc = ABASE_EIO;
    } else if (log_fsync_dir(db->logdir) != 0) { /* fsync point: its name */
        log_set_io_error(db, errno, db->logdir, "fsync", "cannot sync the log directory");
        rc = ABASE_EIO;
    }
    free(path);
    if (rc != ABASE_OK) {
        close(fd);
        return rc;
    }
    pthread_mutex_lock(&db->mark_mu);
    db->mark_fd = fd;
    db->mark_seq = 1;
    db->mark_end = end;
    db->mark_flags = 0;
    pthread_mutex_unlock(&db->mark_mu);
    return ABASE_OK;
}

/* Write the next slot: `end` never moves back, and the failure flags stay
 * once set (only recovery clears them, through log_mark_reset). */
static int mark_write_locked(abase_db *db, uint64_t end, uint32_t flags)
{
    if (db->mark_fd < 0)
        return ABASE_OK;
    if (end < db->mark_end)
        end = db->mark_end;
    flags |= db->mark_flags;
    if (end == db->mark_end && flags == db->mark_flags && db->mark_seq > 0 && !db->mark_stale)
        return ABASE_OK; /* nothing new to say */
    uint64_t seq = db->mark_seq + 1;
    uint8_t slot[MARK_SLOT];
    mark_encode(slot, seq, end, flags, db->boot_id);
    /* Not fsync'd: on disk the mark may lag behind, which only makes
     * recovery treat more of the tail as a tail after a power loss. */
    if (pwrite(db->mark_fd, slot, sizeof(slot), (off_t)(seq % 2) * MARK_SLOT_STRIDE) != (ssize_t)sizeof(slot))
        return ABASE_EIO;
    db->mark_seq = seq;
    db->mark_end = end;
    db->mark_flags = flags;
    db->mark_stale = 0;
    db->mark_dirty = 1;
    return ABASE_OK;
}

void log_mark_write(abase_db *db, uint64_t end, uint32_t flags, int lock_held)
{
    pthread_mutex_lock(&db->mark_mu);
    int rc = mark_write_locked(db, end, flags);
    int e = errno;
    pthread_mutex_unlock(&db->mark_mu);
    if (rc != ABASE_OK)
        log_fail(db, lock_held, 1, e, db->logdir, "pwrite", "cannot write the durable end mark");
}

int log_mark_reset(abase_db *db, uint64_t end, int sync)
{
    pthread_mutex_lock(&db->mark_mu);
    db->mark_flags = 0;
    db->mark_end = 0;
    db->mark_stale = 1; /* written whatever it says: this boot's id goes in */
    int rc = mark_write_locked(db, end, 0);
    int e = errno;
    if (rc == ABASE_OK && sync) {
        if (fsync(db->mark_fd) != 0) { /* fsync point: flags cleared */
            rc = ABASE_EIO;
            e = errno;
        } else {
            db->mark_dirty = 0;
        }
    }
    pthread_mutex_unlock(&db->mark_mu);
    if (rc != ABASE_OK)
        log_set_io_error(db, e, db->logdir, sync ? "fsync" : "pwrite", "cannot write the durable end mark");
    return rc;
}

int log_mark_sync(abase_db *db)
{
    pthread_mutex_lock(&db->mark_mu);
    int rc = ABASE_OK;
    if (db->mark_fd >= 0 && db->mark_dirty) {
        if (fsync(db->mark_fd) != 0) /* fsync point: the mark */
            rc = ABASE_EIO;
        else
            db->mark_dirty = 0;
    }
    pthread_mutex_unlock(&db->mark_mu);
    return rc;
}

void log_durable(abase_db *db, uint64_t end, int lock_held)
{
    pthread_mutex_lock(&db->sync_mu);
    if (end > db->synced_addr)
        db->synced_addr = end;
    pthread_cond_broadcast(&db->sync_cv);
    pthread_mutex_unlock(&db->sync_mu);
    log_mark_write(db, end, 0, lock_held);
}

/* --------------------------------------------------------------- failure */

static void fill_error(abase_error *e, int sys_errno, const char *file, const char *syscall,
                       const char *message)
{
    memset(e, 0, sizeof(*e));
    e->status = ABASE_EIO;
    e->sys_errno = sys_errno;
    snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
    snprintf(e->syscall, sizeof(e->syscall), "%s", syscall ? syscall : "");
    snprintf(e->message, sizeof(e->message), "%s", message ? message : "I/O error");
}

int log_fail_record(abase_db *db, int sys_errno, const char *file, const char *syscall,
                    const char *message)
{
    if (db->failed)
        return 0;
    fill_error(&db->failure, sys_errno, file, syscall, message);
    __atomic_store_n(&db->failed, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&db->sync_cv); /* waiters not yet covered give up */
    return 1;
}

void log_fail_finish(abase_db *db, int first, int lock_held, int log_data, uint64_t durable,
                     int sys_errno, const char *file, const char *syscall, const char *message)
{
    int hide = first && log_data && db->durability == ABASE_DUR_SYNC;
    if (!lock_held)
        pthread_rwlock_wrlock(&db->lock);
    /* Under "sync" nothing past the durable end was acknowledged: from now
     * on readers and the feed do not see it, and recovery drops it. */
    if (hide)
        db->read_limit = durable;
    fill_error(&db->err, sys_errno, file, syscall, message);
    if (!lock_held)
        pthread_rwlock_unlock(&db->lock);
    if (first && log_data) {
        pthread_mutex_lock(&db->mark_mu);
        (void)mark_write_locked(db, durable, ABASE_MARK_FAILED | (hide ? ABASE_MARK_CUT : 0));
        pthread_mutex_unlock(&db->mark_mu);
    }
    log_stall_wake(db);
}

void log_fail(abase_db *db, int lock_held, int log_data, int sys_errno, const char *file,
              const char *syscall, const char *message)
{
    pthread_mutex_lock(&db->sync_mu);
    int first = log_fail_record(db, sys_errno, file, syscall, message);
    uint64_t durable = db->synced_addr;
    pthread_mutex_unlock(&db->sync_mu);
    log_fail_finish(db, first, lock_held, log_data, durable, sys_errno, file, syscall, message);
}

int log_refuse(abase_db *db)
{
    db->err = db->failure; /* read-only once `failed` is set */
    snprintf(db->err.message, sizeof(db->err.message),
             "writes refused after an earlier I/O failure (%.180s); reopen the engine",
             db->failure.message);
    return ABASE_EIO;
}

void abase_db_fail(abase_db *db, int sys_errno, const char *file, const char *syscall,
                   const char *message)
{
    log_fail(db, 0, 0, sys_errno, file, syscall, message);
}

int abase_db_failure(abase_db *db, abase_error *out)
{
    if (!log_failed(db))
        return 0;
    *out = db->failure;
    return 1;
}

/* ------------------------------------------------------------ write stalls */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timespec mono_at(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    return ts;
}

static int over_limit(abase_db *db)
{
    uint64_t limit = __atomic_load_n(&db->stall_limit, __ATOMIC_RELAXED);
    return limit && __atomic_load_n(&db->live_bytes, __ATOMIC_RELAXED) > limit && !log_failed(db);
}

int log_stall_needed(abase_db *db)
{
    return over_limit(db);
}

void log_stall(abase_db *db)
{
    if (!over_limit(db))
        return;
    uint64_t t0 = mono_ns();
    struct timespec deadline = mono_at(t0 + __atomic_load_n(&db->stall_max_ns, __ATOMIC_RELAXED));
    pthread_mutex_lock(&db->stall_mu);
    db->stalled++;
    pthread_cond_broadcast(&db->stall_cv); /* for abase_stall_waiters */
    while (over_limit(db)) {
        if (pthread_cond_timedwait(&db->stall_cv, &db->stall_mu, &deadline) == ETIMEDOUT)
            break;
    }
    db->stalled--;
    db->stalls++;
    db->stall_ns += mono_ns() - t0;
    pthread_mutex_unlock(&db->stall_mu);
}

void log_stall_wake(abase_db *db)
{
    pthread_mutex_lock(&db->stall_mu);
    pthread_cond_broadcast(&db->stall_cv);
    pthread_mutex_unlock(&db->stall_mu);
}

int abase_db_set_stall(abase_db *db, uint64_t limit_bytes, uint64_t max_wait_ms)
{
    if (max_wait_ms > UINT64_C(86400000))
        return ABASE_EINVAL;
    pthread_mutex_lock(&db->stall_mu);
    __atomic_store_n(&db->stall_max_ns, max_wait_ms * 1000000u, __ATOMIC_RELAXED);
    __atomic_store_n(&db->stall_limit, limit_bytes, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&db->stall_cv);
    pthread_mutex_unlock(&db->stall_mu);
    return ABASE_OK;
}

void abase_stall(abase_db *db)
{
    if (!gate_enter(db))
        return; /* closed: the write that follows is refused anyway */
    log_stall(db);
    gate_leave(db);
}

uint32_t abase_stall_waiters(abase_db *db, uint32_t at_least, uint64_t timeout_ms)
{
    struct timespec deadline = mono_at(mono_ns() + timeout_ms * 1000000u);
    pthread_mutex_lock(&db->stall_mu);
    while (db->stalled < at_least) {
        if (pthread_cond_timedwait(&db->stall_cv, &db->stall_mu, &deadline) == ETIMEDOUT)
            break;
    }
    uint32_t n = db->stalled;
    pthread_mutex_unlock(&db->stall_mu);
    return n;
}
