/*
 * tail.c: the tail keeper, a thread that keeps the pages ahead of the log's
 * last record mapped writable, so that appends do not take page faults.
 *
 * An append is a memcpy into the active segment, a MAP_SHARED mapping of a
 * preallocated file. A store into a page of such a mapping that is not
 * mapped writable faults into the file system: for a page not yet in the
 * page cache (every page of a new segment) the kernel allocates and zeroes
 * it and ext4 prepares its blocks (page_mkwrite), and a page the kernel
 * wrote back since it was last written is write-protected again and faults
 * into page_mkwrite. Each such fault costs 2-20 us against ~0.5 us for a
 * whole put, and while the compactor runs (a new segment after the seal,
 * writeback of the load it folds) about one put in twenty took one: put p99
 * while compacting was 4-5x idle (docs/performance.md, "put p99 while
 * compacting").
 *
 * The keeper takes those faults instead of the writers: it populates
 * (MADV_POPULATE_WRITE) `window` bytes of the active segment from the page
 * of the last record on. It runs a round
 *  - when an append reaches the middle of the populated window or starts
 *    a new segment (the writer kicks it: log_append_rec compares the end
 *    address with tail_wake_at, one load, and calls log_tail_kick);
 *  - every TICK_MS while appends happen, renewing the part of the window
 *    the writers reach next (twice what they appended since the last
 *    round, at least NEAR_MIN): cheap for pages still writable, and it
 *    maps again those written back since;
 *  - every IDLE_MS otherwise.
 * Records are written exactly as before, through the same mapping, so
 * durability is unchanged: the keeper only maps pages (and populating a
 * page of a preallocated file changes no byte of it). Not started under
 * durability "sync": populated pages count as dirty, and each fdatasync
 * would write them.
 *
 * The mapping. The keeper populates only the active segment, whose mapping
 * stays until the segment is sealed, compacted and dropped. It copies the
 * segment's address and sizes under the read `lock` and, in the same hold,
 * pins the segment (tail_pinned, tail_pin_no under tail_mu); it then
 * populates with no `lock` held (writers go on appending meanwhile) and
 * clears the pin. abase_segment_drop waits for the pin to clear before it
 * unmaps (log_tail_unpin). A segment sealed meanwhile is shortened to its
 * data: populating past the new end fails with EFAULT (no SIGBUS), and the
 * keeper moves on. abase_db_close stops the keeper, after the calls in
 * flight drained and before unmapping (log_tail_stop); each round runs
 * inside the teardown gate, so a round cannot begin once close has.
 *
 * Locks: tail_mu is a leaf (lock order: lock, then tail_mu). The keeper
 * never holds tail_mu while it populates nor `lock` while it is pinned.
 */
#include "log_internal.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 10         /* rounds while appends happen */
#define IDLE_MS 1000       /* rounds while none happen */
#define NEAR_MIN (UINT64_C(256) << 10)
/* One madvise call populates at most this much: the kernel holds the
 * process's mmap lock (for reading) through a call, and an mmap or munmap
 * of any thread (an allocator's arena, LMDB's map) waits for it. A fresh
 * MiB takes ~1.2 ms. */
#define CHUNK (UINT64_C(1) << 20)

/* What the keeper knows between rounds (its own thread's). */
typedef struct tail_state {
    int have;           /* the fields below describe segment `no` */
    uint32_t no;
    uint64_t filled;    /* offset populated up to */
    uint64_t last_used; /* the segment's `used` at the previous round */
    uint64_t page;      /* page size */
} tail_state;

void log_tail_init(abase_db *db)
{
    pthread_mutex_init(&db->tail_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&db->tail_cv, &ca);
    pthread_cond_init(&db->tail_done_cv, &ca);
    pthread_condattr_destroy(&ca);
    __atomic_store_n(&db->tail_wake_at, UINT64_MAX, __ATOMIC_RELAXED); /* no keeper: never kick */
}

void log_tail_destroy(abase_db *db)
{
    pthread_mutex_destroy(&db->tail_mu);
    pthread_cond_destroy(&db->tail_cv);
    pthread_cond_destroy(&db->tail_done_cv);
}

static void deadline_in(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* MADV_POPULATE_WRITE over [p, p + len), CHUNK bytes a call; adds the
 * bytes populated to *got. 0, or the errno of the call that failed. */
static int populate(uint8_t *p, uint64_t len, uint64_t *got)
{
#ifdef MADV_POPULATE_WRITE
    while (len) {
        uint64_t n = len < CHUNK ? len : CHUNK;
        if (madvise(p, n, MADV_POPULATE_WRITE) != 0)
            return errno;
        p += n;
        len -= n;
        *got += n;
    }
    return 0;
#else
    (void)p;
    (void)len;
    (void)got;
    return EINVAL;
#endif
}

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* One round. 1: the log grew since the last round (or a segment began),
 * 0: it did not, -1: stop (closing, or the kernel cannot populate). */
static int tail_round(abase_db *db, tail_state *st)
{
    if (!gate_enter(db))
        return -1;
    pthread_rwlock_rdlock(&db->lock);
    segment *s = log_failed(db) ? NULL : active_seg(db);
    if (!s) {
        pthread_rwlock_unlock(&db->lock);
        st->have = 0;
        /* the next append starts a segment: it kicks */
        __atomic_store_n(&db->tail_wake_at, 0, __ATOMIC_RELAXED);
        gate_leave(db);
        return 0;
    }
    uint32_t no = s->no;
    uint8_t *base = s->base;
    uint64_t used = s->used, mapped = s->mapped;
    pthread_mutex_lock(&db->tail_mu);
    db->tail_pinned = 1;
    db->tail_pin_no = no;
    uint64_t window = db->tail_window;
    pthread_mutex_unlock(&db->tail_mu);
    pthread_rwlock_unlock(&db->lock);

    int same = st->have && st->no == no && used >= st->last_used;
    int grew = !same || used != st->last_used;
    uint64_t appended = same ? used - st->last_used : used;
    if (!same) {
        st->have = 1;
        st->no = no;
        st->filled = 0;
    }
    st->last_used = used;
    uint64_t page = used & ~(st->page - 1);
    uint64_t target = min64(page + window, mapped);
    if (st->filled < page)
        st->filled = page;
    uint64_t near = appended > UINT64_MAX / 2 ? window : 2 * appended;
    near = min64(near < NEAR_MIN ? NEAR_MIN : near, window);
    uint64_t done = 0;
    int err = 0;
    /* renew what the writers reach next: pages written back since the
     * round that populated them are mapped again */
    uint64_t renew_end = min64(page + near, st->filled);
    if (grew && renew_end > page)
        err = populate(base + page, renew_end - page, &done);
    /* extend the window */
    if (err == 0 && st->filled < target) {
        uint64_t got = 0;
        err = populate(base + st->filled, target - st->filled, &got);
        st->filled += got;
        done += got;
    }
    int unsupported = err == EINVAL || err == ENOSYS;
    if (err != 0 && !unsupported && err != EINTR && err != EAGAIN)
        st->filled = target; /* sealed and shortened (EFAULT), or no memory: leave it */
    uint64_t wake;
    if (st->filled >= mapped) {
        wake = make_addr(no + 1, 0); /* all of it populated: kick at the next segment */
    } else {
        uint64_t at = st->filled > window / 2 ? st->filled - window / 2 : 0;
        wake = make_addr(no, at > used ? at : used + 1);
    }
    __atomic_store_n(&db->tail_wake_at, unsupported ? UINT64_MAX : wake, __ATOMIC_RELAXED);
    pthread_mutex_lock(&db->tail_mu);
    db->tail_pinned = 0;
    db->tail_populated += done;
    db->tail_filled_to = make_addr(no, st->filled);
    if (unsupported)
        db->tail_unsupported = 1;
    pthread_cond_broadcast(&db->tail_done_cv); /* abase_segment_drop may wait for the pin */
    pthread_mutex_unlock(&db->tail_mu);
    gate_leave(db);
    return unsupported ? -1 : grew;
}

static void *tail_main(void *arg)
{
    abase_db *db = arg;
    (void)pthread_setname_np(pthread_self(), "abase-tail");
    tail_state st;
    memset(&st, 0, sizeof(st));
    long pg = sysconf(_SC_PAGESIZE);
    st.page = pg > 0 ? (uint64_t)pg : 4096;
    pthread_mutex_lock(&db->tail_mu);
    while (!db->tail_stop) {
        db->tail_kicked = 0;
        db->tail_in_round = 1;
        pthread_mutex_unlock(&db->tail_mu);
        int grew = tail_round(db, &st);
        pthread_mutex_lock(&db->tail_mu);
        db->tail_in_round = 0;
        db->tail_rounds++;
        pthread_cond_broadcast(&db->tail_done_cv);
        if (grew < 0)
            break;
        if (db->tail_stop || db->tail_kicked)
            continue;
        struct timespec until;
        deadline_in(&until, grew ? TICK_MS : IDLE_MS);
        pthread_cond_timedwait(&db->tail_cv, &db->tail_mu, &until);
    }
    __atomic_store_n(&db->tail_wake_at, UINT64_MAX, __ATOMIC_RELAXED);
    db->tail_exited = 1;
    pthread_cond_broadcast(&db->tail_done_cv);
    pthread_mutex_unlock(&db->tail_mu);
    return NULL;
}

int abase_tail_start(abase_db *db, uint64_t window)
{
    if (window == 0 || window > (UINT64_C(1) << 31) || db->durability == ABASE_DUR_SYNC)
        return ABASE_EINVAL;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    int rc = ABASE_OK;
    pthread_mutex_lock(&db->tail_mu);
    if (db->tail_running) {
        rc = ABASE_EINVAL;
    } else {
        db->tail_window = window;
        db->tail_stop = 0;
        db->tail_exited = 0;
        /* The thread starts with every signal blocked: a signal for the
         * process is then delivered to one of the application's threads. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        if (pthread_create(&db->tail_thread, NULL, tail_main, db) != 0)
            rc = ABASE_ENOMEM;
        else
            db->tail_running = 1;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    pthread_mutex_unlock(&db->tail_mu);
    gate_leave(db);
    return rc;
}

void log_tail_stop(abase_db *db)
{
    pthread_mutex_lock(&db->tail_mu);
    if (!db->tail_running) {
        pthread_mutex_unlock(&db->tail_mu);
        return;
    }
    db->tail_stop = 1;
    pthread_cond_signal(&db->tail_cv);
    pthread_mutex_unlock(&db->tail_mu);
    pthread_join(db->tail_thread, NULL);
    pthread_mutex_lock(&db->tail_mu);
    db->tail_running = 0;
    pthread_mutex_unlock(&db->tail_mu);
}

void log_tail_kick(abase_db *db)
{
    __atomic_store_n(&db->tail_wake_at, UINT64_MAX, __ATOMIC_RELAXED); /* one kick per round */
    pthread_mutex_lock(&db->tail_mu);
    db->tail_kicked = 1;
    pthread_cond_signal(&db->tail_cv);
    pthread_mutex_unlock(&db->tail_mu);
}

void log_tail_unpin(abase_db *db, uint32_t no)
{
    pthread_mutex_lock(&db->tail_mu);
    while (db->tail_pinned && db->tail_pin_no == no)
        pthread_cond_wait(&db->tail_done_cv, &db->tail_mu);
    pthread_mutex_unlock(&db->tail_mu);
}

int abase_tail_info_get(abase_db *db, abase_tail_info *out)
{
    /* Not gated: the fields outlive abase_db_close. */
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&db->tail_mu);
    out->running = (uint32_t)(db->tail_running && !db->tail_exited);
    out->supported = (uint32_t)!db->tail_unsupported;
    out->window = db->tail_window;
    out->rounds = db->tail_rounds;
    out->populated = db->tail_populated;
    out->filled_to = db->tail_filled_to;
    pthread_mutex_unlock(&db->tail_mu);
    return ABASE_OK;
}

int abase_tail_sync(abase_db *db, uint32_t timeout_ms)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    struct timespec until;
    deadline_in(&until, timeout_ms);
    int rc = ABASE_OK;
    pthread_mutex_lock(&db->tail_mu);
    if (!db->tail_running || db->tail_exited) {
        /* a keeper that stopped because close() began is a closed log */
        rc = db->tail_exited && gate_closing(db) ? ABASE_ECLOSED : ABASE_EINVAL;
    } else {
        /* a round in progress may have read the segment before this call */
        uint64_t want = db->tail_rounds + (db->tail_in_round ? 2 : 1);
        db->tail_kicked = 1;
        pthread_cond_signal(&db->tail_cv);
        while (rc == ABASE_OK && db->tail_rounds < want) {
            if (db->tail_exited)
                rc = gate_closing(db) ? ABASE_ECLOSED : ABASE_EINVAL;
            else if (pthread_cond_timedwait(&db->tail_done_cv, &db->tail_mu, &until) == ETIMEDOUT &&
                     db->tail_rounds < want)
                rc = ABASE_EAGAIN;
        }
    }
    pthread_mutex_unlock(&db->tail_mu);
    gate_leave(db);
    return rc;
}
