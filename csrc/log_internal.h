/*
 * log_internal.h: the C core's private shared state (a segment, the engine
 * itself: struct abase_db) and the small helpers every part of the log
 * uses. Not part of the API (abase.h is); built with -fvisibility=hidden,
 * so nothing declared here is exported from the extension.
 *
 * The log is a sequence of segment files, each preallocated and mapped
 * MAP_SHARED: an append is a memcpy into the page cache, so a write
 * survives the death of the process as soon as the call returns
 * (durability "process") without a system call; durability "sync" adds an
 * fdatasync shared by every writer waiting at the same time (group
 * commit). The on-disk format is documented at the top of abase.h.
 *
 * The files of the log (each opens with what it owns and the locks it takes):
 *   log.c       lifecycle, errors, stats, clock; segment files: create,
 *               seal, find room, encode a record; abase_seal,
 *               abase_segments, abase_prefault
 *   write.c     abase_put, abase_write_batch, group commit (abase_sync)
 *   read.c      point reads: abase_get, abase_head, abase_newest
 *   scan.c      ordered scans of a namespace
 *   recovery.c  recovery at open (the crash windows) and abase_check
 *   mark.c      the durable end mark (log/MARK), the boot id, the sticky
 *               I/O failure, write stalls
 *   fold.c      compaction: fold, compacted_through, retire, segment drop
 *   feed.c      change feed: abase_log_read, abase_segment_read, abase_log_lag
 *   merge_log.c the log side of the merge fast paths: compare-and-append,
 *               heads, walks, timestamps
 *   tail.c      the tail keeper: a thread keeping the pages ahead of the
 *               last record mapped writable
 *   apply.c     records received from replicas into LWW namespaces
 *               (abase_apply_batch)
 * and, below them, index.c (index.h), hlc.c, crc32c.c, bytes.h.
 *
 * Locking. Order: lock, then sync_mu, then mark_mu / stall_mu / tail_mu
 * (leaves: nothing is taken while holding them). A writer releases `lock` before it
 * waits for a sync; the sync leader releases sync_mu before it syncs; only
 * a seal (holding `lock`) and a failure take sync_mu inside `lock`.
 *   lock     rwlock; GUARDED_BY(lock) below. The read lock to look, the
 *            write lock to change anything it guards.
 *   sync_mu  mutex of group commit and of the durable end; GUARDED_BY(sync_mu).
 *   mark_mu  the MARK file's descriptor and slot sequence.
 *   stall_mu stalled writers and their statistics.
 *   tail_mu  the tail keeper's state (tail.c); a writer takes it (with
 *            `lock`) only to kick the keeper, abase_segment_drop (with
 *            `lock`) to wait until the keeper no longer populates it.
 * `failed` is written once, under sync_mu, after the failure details it
 * publishes (release store); read it with log_failed() (acquire load) from
 * anywhere, then read `failure` without a lock.
 * Fields marked "fixed" are set by abase_db_new and read without a lock.
 * `segs` moves when it grows (log_grow_seg_array) and shifts when the
 * oldest segment is dropped, so a `segment *` is valid only while `lock`
 * is held. A segment's mapping (`base`) stays until abase_segment_drop or
 * abase_db_free, and a sealed segment's bytes never change: the fold and
 * retire steps copy `base` and `used` under the lock and then read sealed
 * bytes without it (see fold.c).
 *
 * Teardown. Every exported call that touches the log (directly, or through
 * an abase_scan or abase_fold, which keep the abase_db and addresses or
 * mappings into it) is bracketed by gate_enter/gate_leave: an atomic count
 * of calls in flight, with no lock. abase_db_close sets `closing`, then
 * waits until the count drains to 0 and only then unmaps the segments and
 * frees the index; a call that enters after `closing` is set returns
 * ABASE_ECLOSED without touching anything. The struct itself (its locks,
 * the error record, the gate) stays allocated until abase_db_free, so a
 * late caller holding the pointer, such as a scan iterator or the C fast
 * path, still finds the gate. Waits inside a call (group commit, the clock
 * waiting for the wall clock) end by themselves or watch `closing`.
 */
#ifndef ABASE_LOG_INTERNAL_H
#define ABASE_LOG_INTERNAL_H

#define _GNU_SOURCE
#include "abase.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "bytes.h"
#include "index.h"

static const uint8_t SEG_MAGIC[8] = {'A', 'B', 'L', 'O', 'G', 'S', 'E', 'G'};

/* One segment file. GUARDED_BY(lock), every field. */
typedef struct segment {
    uint32_t no;
    int fd;
    int sealed;
    int synced;       /* 1 once fdatasync covered every byte of a sealed segment */
    uint8_t *base;    /* mapping of `mapped` bytes */
    uint64_t mapped;
    uint64_t used;    /* end of the last record (header included) */
    uint64_t max_hlc; /* greatest timestamp in the segment */
    uint32_t max_node;
    uint32_t records;
    /* Record boundaries found by walking the segment from its header, for
     * checking feed positions (feed.c). GUARDED_BY(feed_mu) with `lock`
     * held for reading (or `lock` held for writing, to free them):
     * marks[i] = the first record boundary at or after offset
     * ABASE_SEG_HEADER_SIZE + i * MARK_SPAN, for every window that starts
     * below `walked`, the boundary the walk has reached. */
    uint64_t *marks;
    uint32_t nmarks, marks_cap;
    uint64_t walked;
} segment;

#define MARK_SPAN (UINT64_C(64) * 1024)

struct abase_db {
    /* The teardown gate (see "Teardown" above): API calls in flight, and
     * whether abase_db_close has begun (1) or finished (2). */
    _Atomic uint64_t calls;
    _Atomic int closing;
    pthread_rwlock_t lock;  /* see "Locking" above */
    pthread_mutex_t sync_mu;/* see "Locking" above */
    pthread_mutex_t feed_mu;/* the segments' boundary marks (feed.c); taken with `lock` held */
    char *dir;              /* fixed */
    char *logdir;           /* fixed: dir/log */
    int logdir_fd;          /* log/, opened by abase_db_recover; closed by abase_db_close */
    uint32_t node_id;       /* fixed */
    uint64_t seg_size;      /* fixed */
    int durability;         /* fixed */
    segment *segs;          /* GUARDED_BY(lock); consecutive numbers, oldest first */
    uint32_t nsegs;         /* GUARDED_BY(lock) */
    uint32_t segs_cap;      /* GUARDED_BY(lock) */
    uint32_t live_first;    /* GUARDED_BY(lock); segments numbered below are compacted */
    uint32_t next_no;       /* GUARDED_BY(lock); number of the next segment to create */
    abase_index ix;         /* GUARDED_BY(lock) */
    abase_hlc clock;        /* GUARDED_BY(lock) */
    abase_error err;        /* GUARDED_BY(lock), written under the write lock */
    /* group commit: GUARDED_BY(sync_mu) */
    pthread_cond_t sync_cv; /* a sync finished */
    int syncing;            /* a leader is syncing */
    uint64_t synced_addr;   /* every address below is on disk */
    /* the group-commit leader's (the one thread that set `syncing`), used
     * under the read lock in sync_once; closed by abase_db_free */
    int sync_fd;            /* dup of the active segment's fd */
    uint32_t sync_fd_no;
    uint64_t sealed_synced; /* under lock: end address of the last segment synced at seal */
    /* stats: GUARDED_BY(lock), written under the write lock */
    uint64_t log_bytes_written;
    uint64_t records_appended;
    uint64_t syncs;
    uint64_t synced_writes;
    /* the durable end and the sticky failure: GUARDED_BY(sync_mu) */
    int failed;             /* 1 once writes are refused (see log_failed) */
    abase_error failure;    /* the first failure; read-only once `failed` is set */
    uint64_t read_limit;    /* GUARDED_BY(lock): records at or past it are hidden (UINT64_MAX: none) */
    int dir_dirty;          /* atomic: a segment was created since log/ was fsync'd */
    /* the durable end mark: GUARDED_BY(mark_mu) */
    pthread_mutex_t mark_mu;
    int mark_fd;            /* log/MARK, -1 until recovery opened it */
    uint64_t mark_seq;
    uint64_t mark_end;      /* end of the slot written last */
    uint32_t mark_flags;
    int mark_stale;         /* the next write must happen even if end and flags are unchanged */
    int mark_dirty;         /* written since it was last fsync'd */
    uint8_t boot_id[16];    /* fixed after recovery: this boot's id (zero: unknown) */
    /* write stalls: GUARDED_BY(stall_mu); the limit and bound are set before use */
    pthread_mutex_t stall_mu;
    pthread_cond_t stall_cv; /* the log shrank, or a writer started waiting */
    uint64_t stall_limit;   /* bytes of live log; 0: never stall */
    uint64_t stall_max_ns;
    uint64_t live_bytes;    /* atomic; written under `lock`: bytes of records in live segments */
    uint64_t stalls, stall_ns;
    uint32_t stalled;
    /* the tail keeper (tail.c): GUARDED_BY(tail_mu) unless marked */
    pthread_mutex_t tail_mu;
    pthread_cond_t tail_cv;      /* the keeper waits here: kicked, or stopping */
    pthread_cond_t tail_done_cv; /* a round ended (the pin is cleared), or the keeper stopped */
    pthread_t tail_thread;       /* valid while tail_running */
    int tail_running;
    int tail_stop;
    int tail_kicked;
    int tail_in_round;
    int tail_unsupported;
    int tail_exited;             /* the keeper's loop ended (stop, close or unsupported) */
    int tail_pinned;             /* set with `lock` held too: the keeper populates segment tail_pin_no */
    uint32_t tail_pin_no;
    uint64_t tail_window;        /* fixed once the keeper started */
    uint64_t tail_rounds;
    uint64_t tail_populated;
    uint64_t tail_filled_to;
    uint64_t tail_wake_at;       /* atomic: an append ending at or past this address kicks the keeper */
};

/* ---------------------------------------------------------------- helpers */

static inline uint64_t align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

static inline uint64_t make_addr(uint32_t no, uint64_t off) { return ((uint64_t)no << 32) | off; }

/* A segment's file name inside log/ (no directory): segment files are
 * opened, created and unlinked relative to logdir_fd, so the length of the
 * engine's directory path never matters past opening log/ itself. */
#define SEG_NAME_CAP 32
static inline void seg_name(uint32_t no, char out[SEG_NAME_CAP])
{
    snprintf(out, SEG_NAME_CAP, "%08u.seg", no);
}

static inline segment *seg_by_no(abase_db *db, uint32_t no)
{
    if (db->nsegs == 0 || no < db->segs[0].no)
        return NULL;
    uint32_t i = no - db->segs[0].no;
    return i < db->nsegs ? &db->segs[i] : NULL;
}

static inline segment *active_seg(abase_db *db)
{
    if (db->nsegs == 0)
        return NULL;
    segment *s = &db->segs[db->nsegs - 1];
    return s->sealed ? NULL : s;
}

/* The record at addr if it lies wholly inside a mapped segment, else NULL.
 * Used by the index for key comparison, so it also answers for segments
 * that are compacted but not yet unmapped. */
static inline const uint8_t *rec_mapped(void *ctx, uint64_t addr)
{
    abase_db *db = ctx;
    segment *s = seg_by_no(db, (uint32_t)(addr >> 32));
    uint64_t off = addr & 0xffffffffu;
    if (!s || off < ABASE_SEG_HEADER_SIZE || off + ABASE_REC_HEADER_SIZE > s->used)
        return NULL;
    const uint8_t *r = s->base + off;
    uint32_t len = ld32(r + R_LEN);
    if (len < ABASE_REC_HEADER_SIZE || off + len > s->used)
        return NULL;
    if ((uint64_t)ABASE_REC_HEADER_SIZE + ld16(r + R_KLEN) + ld32(r + R_VLEN) != len)
        return NULL;
    return r;
}

/* The record at addr if it is still live (not compacted), else NULL. */
static inline const uint8_t *rec_live(abase_db *db, uint64_t addr)
{
    if (addr == 0 || addr < make_addr(db->live_first, 0))
        return NULL;
    return rec_mapped(db, addr);
}

/* The value of record r as readers see it: *v and *vlen skip the expire_at
 * prefix of a put flagged ABASE_F_TTL (recovery and the write path refuse
 * one shorter than the prefix; such a record is read as having none).
 * Returns its expire_at (an expire_at of 0 reads as 1, so that 0 always
 * means "no expiry"), or 0. */
static inline uint64_t rec_value(const uint8_t *r, const uint8_t **v, uint32_t *vlen)
{
    uint32_t n = ld32(r + R_VLEN);
    const uint8_t *p = r + ABASE_REC_HEADER_SIZE + ld16(r + R_KLEN);
    if ((r[R_FLAGS] & ABASE_F_TTL) && r[R_OP] == ABASE_OP_PUT && n >= ABASE_TTL_PREFIX) {
        uint64_t at = ld64(p);
        *v = p + ABASE_TTL_PREFIX;
        *vlen = n - ABASE_TTL_PREFIX;
        return at ? at : 1;
    }
    *v = p;
    *vlen = n;
    return 0;
}

static inline int ts_greater(uint64_t h1, uint32_t n1, uint64_t h2, uint32_t n2)
{
    return h1 > h2 || (h1 == h2 && n1 > n2);
}

/* Next older version of the key, or 0; addresses must strictly decrease so
 * a walk always ends, whatever the bytes say. */
static inline uint64_t rec_prev(const uint8_t *r, uint64_t addr)
{
    uint64_t prev = ld64(r + R_PREV);
    return prev < addr ? prev : 0;
}

/* The newest version a reader may see, from a key's head: the head itself
 * unless a failure hides records past the durable end (read_limit), then
 * the newest older one. 0 if none is live. Read or write lock held. */
static inline uint64_t visible_head(abase_db *db, uint64_t addr)
{
    while (addr >= db->read_limit) {
        const uint8_t *r = rec_mapped(db, addr);
        if (!r)
            return 0;
        addr = rec_prev(r, addr);
    }
    return rec_live(db, addr) ? addr : 0;
}

/* Bytes of segment s a reader may see: its records, up to the durable end
 * when a failure hides what lies past it. Read or write lock held. */
static inline uint64_t seg_visible_used(const abase_db *db, const segment *s)
{
    uint64_t lim = db->read_limit;
    if (lim == UINT64_MAX || make_addr(s->no, s->used) <= lim)
        return s->used;
    if ((uint64_t)s->no > (lim >> 32))
        return ABASE_SEG_HEADER_SIZE;
    uint64_t off = lim & 0xffffffffu;
    return off < ABASE_SEG_HEADER_SIZE ? ABASE_SEG_HEADER_SIZE : (off < s->used ? off : s->used);
}

/* 1 once an I/O failure made the engine refuse writes (any thread, no lock). */
static inline int log_failed(abase_db *db)
{
    return __atomic_load_n(&db->failed, __ATOMIC_ACQUIRE);
}

/* memcmp order of two keys, a key sorting before every longer key it begins. */
static inline int key_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl;
}

/* Enter the teardown gate: 1 if the call may go on (then call
 * gate_leave), 0 if the engine is closing or closed (return ABASE_ECLOSED).
 * Sequentially consistent increment and load against close's store and
 * load, so either close sees this call or this call sees close. */
static inline int gate_enter(abase_db *db)
{
    /* A fast path detached by close() hands over NULL: closed, not a crash
     * (a CRDT merge that waited with the GIL released can get here). */
    if (!db)
        return 0;
    atomic_fetch_add_explicit(&db->calls, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&db->closing, memory_order_seq_cst) == 0)
        return 1;
    atomic_fetch_sub_explicit(&db->calls, 1, memory_order_release);
    return 0;
}

static inline void gate_leave(abase_db *db)
{
    atomic_fetch_sub_explicit(&db->calls, 1, memory_order_release);
}

/* Whether abase_db_close has begun (for calls that wait inside the gate). */
static inline int gate_closing(abase_db *db)
{
    return atomic_load_explicit(&db->closing, memory_order_acquire) != 0;
}

/* ------------------------------------------------- internal functions */

/* log.c */
/* Record the engine's last error (abase_db_error). Write lock held, or the
 * engine not yet shared (recovery holds the write lock throughout). */
void log_set_error(abase_db *db, int status, int sys_errno, const char *file,
                   uint64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The path of segment `no` for messages: logdir/name, its front cut with
 * "..." when it does not fit `cap` (the file name always shows). */
void log_seg_display_path(const abase_db *db, uint32_t no, char *out, size_t cap);
/* log_set_error for a failed OS call: ABASE_EIO naming the call. */
void log_set_io_error(abase_db *db, int sys_errno, const char *file, const char *syscall,
                      const char *message);
int log_fsync_dir(const char *path);
void log_recount_live(abase_db *db);
/* log_set_error naming segment `no` (its path, shortened at the front if it
 * does not fit the error record). */
void log_set_seg_error(abase_db *db, int status, int sys_errno, uint32_t no,
                       uint64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
int log_write_seg_header(uint8_t *p, uint32_t no, uint32_t node, uint64_t hlc);
int log_grow_seg_array(abase_db *db);
int log_room_for(abase_db *db, uint64_t need, segment **out);
uint64_t log_append_rec(abase_db *db, segment *s, uint32_t ns, int op,
                        uint8_t flags, const uint8_t *key, size_t klen,
                        const uint8_t *val, size_t vlen, uint64_t hlc,
                        uint32_t node, uint64_t prev);
/* log_append_rec of a put flagged ABASE_F_TTL whose value's first
 * ABASE_TTL_PREFIX bytes (vlen >= 8, checked by the caller) are replaced
 * by expire_at: the record is whole, crc included, in one pass. */
uint64_t log_append_rec_ttl(abase_db *db, segment *s, uint32_t ns, int op,
                            uint8_t flags, const uint8_t *key, size_t klen,
                            const uint8_t *val, size_t vlen, uint64_t hlc,
                            uint32_t node, uint64_t prev, uint64_t expire_at);
void log_rewrite_flags(uint8_t *p, uint8_t flags);
/* Close a batch whose records (appended of them, the last at last_addr in
 * s, all flagged batch_flag) were just written: the last one gets
 * ABASE_F_BATCH_END, or a batch of one loses its batch flag. Write lock held. */
void log_end_batch(segment *s, uint64_t last_addr, uint64_t appended, uint8_t batch_flag);

/* write.c */
/* Group commit: wait until every address below `target` is durable (no
 * lock held; the sticky failure as for a write). */
int log_sync_to(abase_db *db, uint64_t target);

/* mark.c */
/* The mark as recovery found it. */
typedef struct mark_state {
    int present;      /* the file existed */
    int valid;        /* a valid slot was found (else the fields are 0) */
    uint64_t seq, end;
    uint32_t flags;
    uint8_t boot[16];
} mark_state;
/* Open log/MARK and read the valid slot with the greatest seq; an absent
 * file is not an error (m->present = 0). log_mark_create makes it (both
 * slots, fsync'd with the directory) in a new log. */
int log_mark_open(abase_db *db, mark_state *m);
int log_mark_create(abase_db *db, uint64_t end);
/* After recovery: clear the flags and write `end` (fsync'd with `sync`). */
int log_mark_reset(abase_db *db, uint64_t end, int sync);
int log_stall_needed(abase_db *db);
/* The sticky failure. Record it (first one wins): with `log_data`, an I/O
 * error on the log itself (under durability "sync" the unacknowledged
 * records past the durable end are hidden and the mark is flagged CUT,
 * otherwise FAILED). `lock_held`: the caller holds the write lock. Sets the
 * error info to the failure. */
void log_fail(abase_db *db, int lock_held, int log_data, int sys_errno, const char *file,
              const char *syscall, const char *message);
/* log_fail in two steps, for the group-commit leader, which must record
 * the failure in the same sync_mu hold in which it ends its sync (so that
 * no waiter leads a later sync that would seem to succeed):
 * log_fail_record with sync_mu held (returns 1 for the first failure),
 * then log_fail_finish with no lock held but `lock` if lock_held;
 * `durable` is synced_addr as of the record. */
int log_fail_record(abase_db *db, int sys_errno, const char *file, const char *syscall,
                    const char *message);
void log_fail_finish(abase_db *db, int first, int lock_held, int log_data, uint64_t durable,
                     int sys_errno, const char *file, const char *syscall, const char *message);
/* Refuse a write: copy the failure into the error info (write lock held). */
int log_refuse(abase_db *db);
/* Move the durable end forward to `end` and write the mark (sync_mu not
 * held; `lock_held`: the caller holds the write lock). */
void log_durable(abase_db *db, uint64_t end, int lock_held);
void log_mark_write(abase_db *db, uint64_t end, uint32_t flags, int lock_held);
int log_mark_sync(abase_db *db);
void log_read_boot_id(uint8_t out[16]);
/* Stall a local write while the live log is over the limit (no lock held). */
void log_stall(abase_db *db);
void log_stall_wake(abase_db *db);

/* tail.c */
/* Set up / tear down the keeper's fields (abase_db_new / abase_db_free). */
void log_tail_init(abase_db *db);
void log_tail_destroy(abase_db *db);
/* Stop the keeper and wait for its thread (abase_db_close, before unmapping). */
void log_tail_stop(abase_db *db);
/* Wake the keeper: an append reached tail_wake_at (write lock held). */
void log_tail_kick(abase_db *db);
/* Wait until the keeper does not populate segment `no` (write lock held). */
void log_tail_unpin(abase_db *db, uint32_t no);

/* read.c */
void log_newest_version(abase_db *db, uint64_t head, uint64_t base_hlc,
                        uint32_t base_node, uint64_t hlc, uint32_t node,
                        const uint8_t *val, uint32_t vlen, int by_value,
                        uint64_t *max_hlc, uint32_t *max_node, int *dup);
void log_lww_resolve(abase_db *db, uint64_t head, uint64_t at_hlc, uint32_t at_node,
                     const uint8_t **winner, int *complete);

#endif
