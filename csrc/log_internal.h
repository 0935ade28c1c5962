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
 *   fold.c      compaction: fold, compacted_through, retire, segment drop
 *   feed.c      change feed: abase_log_read, abase_segment_read, abase_log_lag
 *   merge_log.c the log side of the merge fast paths: compare-and-append,
 *               heads, walks, timestamps
 * and, below them, index.c (index.h), hlc.c, crc32c.c, bytes.h.
 *
 * Locking. Two locks, never held together (a writer releases `lock` before
 * it waits for a sync; the sync leader releases sync_mu before it syncs):
 *   lock     rwlock; GUARDED_BY(lock) below. The read lock to look, the
 *            write lock to change anything it guards.
 *   sync_mu  mutex of group commit; GUARDED_BY(sync_mu) below.
 * Fields marked "fixed" are set by abase_db_new and read without a lock.
 * `segs` moves when it grows (log_grow_seg_array) and shifts when the
 * oldest segment is dropped, so a `segment *` is valid only while `lock`
 * is held. A segment's mapping (`base`) stays until abase_segment_drop or
 * abase_db_free, and a sealed segment's bytes never change: the fold and
 * retire steps copy `base` and `used` under the lock and then read sealed
 * bytes without it (see fold.c).
 */
#ifndef ABASE_LOG_INTERNAL_H
#define ABASE_LOG_INTERNAL_H

#define _GNU_SOURCE
#include "abase.h"

#include <pthread.h>
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
} segment;

struct abase_db {
    pthread_rwlock_t lock;  /* see "Locking" above */
    pthread_mutex_t sync_mu;/* see "Locking" above */
    char *dir;              /* fixed */
    char *logdir;           /* fixed: dir/log */
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
};

/* ---------------------------------------------------------------- helpers */

static inline uint64_t align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

static inline uint64_t make_addr(uint32_t no, uint64_t off) { return ((uint64_t)no << 32) | off; }

static inline void seg_path(const abase_db *db, uint32_t no, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%08u.seg", db->logdir, no);
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

/* memcmp order of two keys, a key sorting before every longer key it begins. */
static inline int key_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl;
}

/* ------------------------------------------------- internal functions */

/* log.c */
/* Record the engine's last error (abase_db_error). Write lock held, or the
 * engine not yet shared (recovery holds the write lock throughout). */
void log_set_error(abase_db *db, int status, int sys_errno, const char *file,
                   uint64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
int log_write_seg_header(uint8_t *p, uint32_t no, uint32_t node, uint64_t hlc);
int log_grow_seg_array(abase_db *db);
int log_room_for(abase_db *db, uint64_t need, segment **out);
uint64_t log_append_rec(abase_db *db, segment *s, uint32_t ns, int op,
                        uint8_t flags, const uint8_t *key, size_t klen,
                        const uint8_t *val, size_t vlen, uint64_t hlc,
                        uint32_t node, uint64_t prev);
void log_rewrite_flags(uint8_t *p, uint8_t flags);

/* read.c */
void log_newest_version(abase_db *db, uint64_t head, uint64_t base_hlc,
                        uint32_t base_node, uint64_t hlc, uint32_t node,
                        const uint8_t *val, uint32_t vlen, int by_value,
                        uint64_t *max_hlc, uint32_t *max_node, int *dup);
void log_lww_resolve(abase_db *db, uint64_t head, uint64_t at_hlc, uint32_t at_node,
                     const uint8_t **winner, int *complete);

#endif
