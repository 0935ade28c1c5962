/*
 * recovery.c: recovery at open (abase_db_recover) and abase_check.
 *
 * Recovery lists the segment files, unlinks the compacted ones, reads the
 * durable end mark (mark.c), maps and checks every live segment, decides
 * where the log ends (the rules are at the top of abase.h: corruption
 * before the mark; past it a torn tail after a reboot or a failure, and
 * after a process kill only the last record of the newest segment), drops
 * what lies past that end and fills the index in one pass. abase_check
 * re-reads every live record and checks the index against the log.
 *
 * Crash windows, named:
 *   W1 mid-append: a torn record at the tail of the newest segment; recovery
 *      drops it (crc) and zeroes the rest of the file.
 *   W2 mid-batch: a batch without its BATCH_END record; recovery drops the
 *      whole batch.
 *   W3 mid-roll: a new segment file with a zero or partial header; recovery
 *      rewrites it when it is the newest, empty segment.
 *   W4 after the store commit, before the segment files are unlinked: the
 *      caller passes first_live, and recovery unlinks older segments.
 *   W5 power loss: pages written after the last sync may be on disk or not,
 *      in any order; past the mark the log ends at the first bad record and
 *      later segments are removed.
 *
 * Locks: both hold the write `lock` for the whole call (abase_check records
 * the first problem with log_set_error); neither takes sync_mu.
 */
#include "log_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* -------------------------------------------------------------- recovery */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The segment number of a file name written by seg_path ("%08u.seg": 8
 * digits, or 9 or 10 without a leading zero from 10^8 on), else 0. */
static int parse_seg_name(const char *nm, uint32_t *out)
{
    size_t len = strlen(nm);
    if (len < 12 || len > 14 || strcmp(nm + len - 4, ".seg") != 0)
        return 0;
    size_t digits = len - 4;
    if (digits > 8 && nm[0] == '0')
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < digits; i++) {
        if (nm[i] < '0' || nm[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(nm[i] - '0');
    }
    if (v > UINT32_MAX || (digits > 8 && v < UINT64_C(100000000)))
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* Segment numbers of dir/log, sorted; older-than-first_live files unlinked
 * (crash window W4). */
static int list_segments(abase_db *db, uint32_t first_live, uint32_t **out, uint32_t *n)
{
    *out = NULL;
    *n = 0;
    int created = mkdir(db->logdir, 0755) == 0;
    if (!created && errno != EEXIST) {
        log_set_io_error(db, errno, db->logdir, "mkdir", "cannot create the log directory");
        return ABASE_EIO;
    }
    /* fsync point: the new log directory's name in the engine directory */
    if (created && log_fsync_dir(db->dir) != 0) {
        log_set_io_error(db, errno, db->dir, "fsync", "cannot sync the engine directory");
        return ABASE_EIO;
    }
    /* Segment files are opened relative to this descriptor, so only the
     * directory's own path must be one the OS accepts (ENAMETOOLONG here
     * is the clear error for a path that is too long). */
    if (db->logdir_fd < 0)
        db->logdir_fd = open(db->logdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (db->logdir_fd < 0) {
        log_set_io_error(db, errno, db->logdir, "open", "cannot open the log directory");
        return ABASE_EIO;
    }
    int dfd = dup(db->logdir_fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        int e = errno;
        if (dfd >= 0)
            close(dfd);
        log_set_io_error(db, e, db->logdir, "opendir", "cannot read the log directory");
        return ABASE_EIO;
    }
    uint32_t cap = 16, cnt = 0;
    uint32_t *nums = malloc(cap * sizeof(uint32_t));
    if (!nums) {
        closedir(d);
        return ABASE_ENOMEM;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint32_t v;
        if (!parse_seg_name(e->d_name, &v))
            continue;
        if (v < first_live) {
            unlinkat(db->logdir_fd, e->d_name, 0); /* compacted before the crash (W4) */
            continue;
        }
        if (cnt == cap) {
            cap *= 2;
            uint32_t *nn = realloc(nums, cap * sizeof(uint32_t));
            if (!nn) {
                free(nums);
                closedir(d);
                return ABASE_ENOMEM;
            }
            nums = nn;
        }
        nums[cnt++] = v;
    }
    closedir(d);
    qsort(nums, cnt, sizeof(uint32_t), cmp_u32);
    *out = nums;
    *n = cnt;
    return ABASE_OK;
}

/* Whether the 64 bytes at p are all zero. */
static int zero64(const uint8_t *p)
{
    return (ld64(p) | ld64(p + 8) | ld64(p + 16) | ld64(p + 24) | ld64(p + 32) |
            ld64(p + 40) | ld64(p + 48) | ld64(p + 56)) == 0;
}

static int all_zero(const uint8_t *p, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 64 <= n; i += 64)
        if (!zero64(p + i))
            return 0;
    for (; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* 1 + the offset of the last non-zero byte of p[0, n), or 0 when all are zero. */
static uint64_t last_nonzero(const uint8_t *p, uint64_t n)
{
    uint64_t i = n;
    while ((i & 7) && p[i - 1] == 0)
        i--;
    if (i & 7)
        return i;
    while (i >= 64 && zero64(p + i - 64))
        i -= 64;
    while (i >= 8 && ld64(p + i - 8) == 0)
        i -= 8;
    while (i > 0 && p[i - 1] == 0)
        i--;
    return i;
}

/* End of the last non-zero byte of [from, to) of the segment file fd
 * (mapped at base), or `from` when all of it is zero. Ranges the file system
 * reports as holes read as zero by definition, so they are skipped unread:
 * the preallocated, never-written tail of the newest segment is one, and
 * touching it would bring up to a whole segment of zero pages into memory.
 * Where SEEK_DATA is not supported, everything is read. */
static uint64_t nonzero_end(int fd, uint8_t *base, uint64_t from, uint64_t to)
{
    /* No readahead while reading here: it would fill the holes ahead with
     * zero pages, which SEEK_DATA then reports as data, and so on to the
     * end of the file. */
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t first = pg > 0 ? from / (uint64_t)pg * (uint64_t)pg : 0;
    int advised = madvise(base + first, to - first, MADV_RANDOM) == 0;
    uint64_t last = from, pos = from;
    while (pos < to) {
        uint64_t d = pos, h = to;
        off_t r = lseek(fd, (off_t)pos, SEEK_DATA);
        if (r >= 0) {
            if ((uint64_t)r >= to)
                break;
            d = (uint64_t)r < pos ? pos : (uint64_t)r;
            off_t e = lseek(fd, (off_t)d, SEEK_HOLE);
            if (e >= 0 && (uint64_t)e > d && (uint64_t)e < to)
                h = (uint64_t)e;
        } else if (errno == ENXIO) {
            break; /* only holes from pos to the end of the file */
        }
        uint64_t z = last_nonzero(base + d, h - d);
        if (z)
            last = d + z;
        pos = h;
    }
    if (advised)
        (void)madvise(base + first, to - first, MADV_NORMAL);
    return last;
}

/* Why the record at off is not valid, or NULL if it is. */
static const char *check_record(const uint8_t *base, uint64_t off, uint64_t end)
{
    if (off + ABASE_REC_HEADER_SIZE > end)
        return "record header runs past the end of the segment";
    const uint8_t *p = base + off;
    uint32_t len = ld32(p + R_LEN);
    if (len < ABASE_REC_HEADER_SIZE || len > end - off)
        return "record length out of bounds";
    if (align8(len) > end - off) /* a file cut inside the padding (fuzz finding) */
        return "record padding runs past the end of the segment";
    if (abase_crc_unmask(ld32(p + R_CRC)) != abase_crc32c(0, p + 4, len - 4))
        return "record checksum mismatch";
    uint32_t klen = ld16(p + R_KLEN), vlen = ld32(p + R_VLEN);
    if ((uint64_t)ABASE_REC_HEADER_SIZE + klen + vlen != len || klen > ABASE_MAX_KEY)
        return "record key/value lengths disagree with its length";
    uint8_t op = p[R_OP];
    if (op < ABASE_OP_PUT || op > ABASE_OP_MERGE)
        return "unknown record op";
    if ((p[R_FLAGS] & ABASE_F_TTL) && (op != ABASE_OP_PUT || vlen < ABASE_TTL_PREFIX))
        return "TTL flag on a record that is not a put with an expiry";
    return NULL;
}

/* Recovery checks every segment first, queueing (hash, address) of each
 * record to index, then sizes the index once and fills it (ix_load):
 * growing it record by record would move every entry several times, each
 * move a random read of the entry's key in the log, and inserting in log
 * order would miss the cache on nearly every insert. The index is sized for
 * the number of distinct keys, estimated with a HyperLogLog sketch of the
 * hashes (a log that rewrites few keys must not get an index sized for its
 * records: the index never shrinks). The queue costs 16 bytes a record
 * until the index is filled. */
#define HLL_BITS 14
#define HLL_REGS (1u << HLL_BITS)

typedef struct recovery_queue {
    ix_item *items; /* records to index, in log order */
    size_t n, cap;
    uint8_t hll[HLL_REGS];
} recovery_queue;

/* Natural logarithm of x >= 1 (no libm here): x = 2^k * f, f in [1, 2),
 * ln f = 2 atanh((f - 1) / (f + 1)) by its series. */
static double ln_ge1(double x)
{
    int k = 0;
    while (x >= 2) {
        x /= 2;
        k++;
    }
    double z = (x - 1) / (x + 1), z2 = z * z, term = z, sum = 0;
    for (int i = 1; i < 40; i += 2) {
        sum += term / i;
        term *= z2;
    }
    return 2 * sum + k * 0.69314718055994531;
}

/* Distinct hashes among those queued, estimated: HyperLogLog (0.8%
 * standard error), linear counting of the empty registers when small. */
static uint64_t hll_estimate(const recovery_queue *q)
{
    double sum = 0, m = HLL_REGS;
    uint32_t empty = 0;
    for (uint32_t j = 0; j < HLL_REGS; j++) {
        sum += 1.0 / (double)(UINT64_C(1) << q->hll[j]);
        empty += q->hll[j] == 0;
    }
    double est = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
    if (est <= 2.5 * m && empty > 0)
        est = m * ln_ge1(m / empty);
    return est >= 9e18 ? UINT64_MAX : (uint64_t)est + 1;
}

/* Queue the (valid) record at off of segment s for the index. */
static int index_record(recovery_queue *q, const segment *s, uint64_t off)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 4096;
        if (cap > SIZE_MAX / sizeof(ix_item))
            return ABASE_ENOMEM;
        ix_item *ni = realloc(q->items, cap * sizeof(ix_item));
        if (!ni)
            return ABASE_ENOMEM;
        q->items = ni;
        q->cap = cap;
    }
    const uint8_t *p = s->base + off;
    uint64_t h = abase_hash(ld32(p + R_NS), p + ABASE_REC_HEADER_SIZE, ld16(p + R_KLEN));
    uint32_t reg = (uint32_t)(h >> (64 - HLL_BITS));
    uint8_t rank = (uint8_t)(__builtin_clzll((h << HLL_BITS) | (UINT64_C(1) << (HLL_BITS - 1))) + 1);
    if (rank > q->hll[reg])
        q->hll[reg] = rank;
    q->items[q->n].hash = h;
    q->items[q->n].addr = make_addr(s->no, off);
    q->n++;
    return ABASE_OK;
}

/* Whether a valid record (crc and lengths) starts at off, below `to`. The
 * lengths are checked first, so garbage costs no crc. */
static int valid_record_at(const uint8_t *base, uint64_t off, uint64_t to)
{
    if (off + ABASE_REC_HEADER_SIZE > to)
        return 0;
    const uint8_t *p = base + off;
    uint32_t len = ld32(p + R_LEN);
    if (len < ABASE_REC_HEADER_SIZE || len > to - off || ld16(p + R_KLEN) > ABASE_MAX_KEY ||
        (uint64_t)ABASE_REC_HEADER_SIZE + ld16(p + R_KLEN) + ld32(p + R_VLEN) != len)
        return 0;
    return check_record(base, off, to) == NULL;
}

/* After a process kill only the record being copied can be torn, and a
 * record's header (with its length) is stored before its key and value
 * (log_append_rec), so a torn record whose length lies inside the file is
 * skipped whole: its value may hold bytes that look like a valid record.
 * Whether any valid record starts, at a multiple of 8, after the bad one at
 * `bad` and before `to`. */
static int valid_record_after(const uint8_t *base, uint64_t bad, uint64_t to)
{
    uint64_t off = bad + 8;
    if (bad + ABASE_REC_HEADER_SIZE <= to) {
        uint32_t len = ld32(base + bad + R_LEN);
        if (len >= ABASE_REC_HEADER_SIZE && len <= to - bad)
            off = bad + align8(len);
    }
    for (; off + ABASE_REC_HEADER_SIZE <= to; off += 8)
        if (valid_record_at(base, off, to))
            return 1;
    return 0;
}

/* What the walk of one segment found. */
typedef struct seg_walk {
    uint64_t size;       /* bytes mapped */
    uint64_t end;        /* end of the valid data (an unfinished batch excluded) */
    uint64_t stop;       /* where the walk stopped: the bad or zero record */
    const char *why;     /* why the record at stop is bad; NULL: zero or limit */
    int open_batch;      /* a batch without its BATCH_END was dropped */
    int interrupted;     /* ... and a record outside it followed (never a kill) */
    int tail_dirty;      /* non-zero bytes lie past `end` */
} seg_walk;

static int header_ok(const uint8_t *base, uint32_t no, abase_db *db, const char *path)
{
    if (memcmp(base, SEG_MAGIC, 8) != 0 || abase_crc_unmask(ld32(base + 60)) != abase_crc32c(0, base, 60)) {
        log_set_error(db, ABASE_ECORRUPT, 0, path, 0, "bad segment header");
        return ABASE_ECORRUPT;
    }
    if (ld32(base + 8) != ABASE_FORMAT_VERSION) {
        log_set_error(db, ABASE_EVERSION, 0, path, 8, "segment format version %u, this build reads %u",
                      ld32(base + 8), ABASE_FORMAT_VERSION);
        return ABASE_EVERSION;
    }
    if (ld64(base + 16) != no) {
        log_set_error(db, ABASE_ECORRUPT, 0, path, 16, "segment number does not match its file name");
        return ABASE_ECORRUPT;
    }
    return ABASE_OK;
}

/* Open, map and check one segment, queueing its records for the index,
 * up to `limit` bytes. `last`: the last segment listed, whose header may
 * be zero (W3) when `may_be_new`. On success the segment is appended to
 * db->segs with used = w->end; the caller decides what happens past it.
 * A bad header fails with the error recorded and nothing added. */
static int recover_segment(abase_db *db, uint32_t no, int last, int may_be_new, uint64_t limit,
                           abase_recovery *rep, recovery_queue *q, seg_walk *w)
{
    memset(w, 0, sizeof(*w));
    char name[SEG_NAME_CAP], path[sizeof(db->err.file)];
    seg_name(no, name);
    log_seg_display_path(db, no, path, sizeof(path));
    int fd = openat(db->logdir_fd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        log_set_io_error(db, errno, path, "open", "cannot open segment");
        return ABASE_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        log_set_io_error(db, errno, path, "fstat", "cannot stat segment");
        close(fd);
        return ABASE_EIO;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > (UINT64_C(1) << 32)) {
        close(fd);
        log_set_seg_error(db, ABASE_ECORRUPT, 0, no, 0, "segment larger than 4 GiB");
        return ABASE_ECORRUPT;
    }
    uint64_t map_size = size;
    if (last && may_be_new && map_size < ABASE_SEG_HEADER_SIZE) {
        /* W3: created but never written. Give it a full preallocation
         * (posix_fallocate returns its error; it does not set errno). */
        map_size = db->seg_size;
        int frc = posix_fallocate(fd, 0, (off_t)map_size);
        if (frc != 0) {
            close(fd);
            log_set_io_error(db, frc, path, "posix_fallocate", "cannot preallocate segment");
            return ABASE_EIO;
        }
        size = map_size;
    }
    if (size < ABASE_SEG_HEADER_SIZE) {
        close(fd);
        log_set_seg_error(db, ABASE_ECORRUPT, 0, no, 0, "segment shorter than its header");
        return ABASE_ECORRUPT;
    }
    uint8_t *base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        log_set_io_error(db, errno, path, "mmap", "cannot map segment");
        close(fd);
        return ABASE_EIO;
    }
    int rc = ABASE_OK;
    if (last && may_be_new && all_zero(base, ABASE_SEG_HEADER_SIZE))
        log_write_seg_header(base, no, db->node_id, db->clock.last); /* W3 */
    else
        rc = header_ok(base, no, db, path);
    if (rc == ABASE_OK)
        rc = log_grow_seg_array(db);
    if (rc != ABASE_OK) {
        munmap(base, map_size);
        close(fd);
        return rc;
    }
    segment *s = &db->segs[db->nsegs++];
    memset(s, 0, sizeof(*s));
    s->no = no;
    s->fd = fd;
    s->base = base;
    s->mapped = map_size;
    s->used = ABASE_SEG_HEADER_SIZE;
    s->sealed = !last;
    w->size = size;
    if (limit > size)
        limit = size;

    uint64_t off = ABASE_SEG_HEADER_SIZE;
    uint64_t batch_start = 0; /* offset of the first record of an open batch */
    size_t batch_first = 0;   /* its place in the queue */
    /* what the open batch adds to s when it ends */
    uint32_t batch_records = 0, batch_defs = 0;
    uint64_t batch_hlc = 0;
    uint32_t batch_node = 0;
    const char *why = NULL;
    while (off + 8 <= limit) {
        const uint8_t *p = base + off;
        uint32_t len = ld32(p + R_LEN);
        if (len == 0 && ld32(p) == 0)
            break; /* zero tail */
        why = check_record(base, off, limit);
        if (why)
            break;
        if (!abase_hlc_usable(ld64(p + R_HLC))) {
            /* A whole record (its checksum holds), not a torn write, with a
             * timestamp the clock could never advance from: corruption
             * wherever it is. Judged against the clock's range only, never
             * against the wall clock. */
            log_set_seg_error(db, ABASE_ECORRUPT, 0, no, off,
                              "record timestamp at the end of the clock's range");
            return ABASE_ECORRUPT;
        }
        uint8_t flags = p[R_FLAGS];
        uint64_t next = off + align8(len);
        if (next > limit)
            next = limit;
        if (!(flags & ABASE_F_BATCH) && batch_start != 0) {
            why = "batch interrupted by a record outside it";
            w->interrupted = 1;
            break;
        }
        rc = index_record(q, s, off);
        if (rc != ABASE_OK)
            return rc;
        uint64_t hlc = ld64(p + R_HLC);
        uint32_t node = ld32(p + R_NODE);
        uint32_t is_def = ld32(p + R_NS) == ABASE_NS_DEFS;
        if (flags & ABASE_F_BATCH) {
            batch_defs += is_def;
            if (batch_start == 0) {
                batch_start = off;
                batch_first = q->n - 1;
            }
            batch_records++;
            if (ts_greater(hlc, node, batch_hlc, batch_node)) {
                batch_hlc = hlc;
                batch_node = node;
            }
            if (flags & ABASE_F_BATCH_END) {
                s->records += batch_records;
                rep->records += batch_records;
                rep->ns_def_records += batch_defs;
                if (ts_greater(batch_hlc, batch_node, s->max_hlc, s->max_node)) {
                    s->max_hlc = batch_hlc;
                    s->max_node = batch_node;
                }
                batch_start = 0;
                batch_records = 0;
                batch_defs = 0;
                batch_hlc = 0;
                batch_node = 0;
            }
        } else {
            s->records++;
            rep->records++;
            rep->ns_def_records += is_def;
            if (ts_greater(hlc, node, s->max_hlc, s->max_node)) {
                s->max_hlc = hlc;
                s->max_node = node;
            }
        }
        off = next;
    }
    w->stop = off;
    w->why = why;
    w->end = off;
    if (batch_start) {
        w->end = batch_start; /* W2: an unfinished batch is dropped */
        w->open_batch = 1;
        q->n = batch_first;
    }
    w->tail_dirty = w->end < size && nonzero_end(fd, base, w->end, size) > w->end;
    s->used = w->end;
    return ABASE_OK;
}

/* Zero segment s from `from` on (a dropped tail), so that stale bytes can
 * never be read as records after later appends, and count it. */
static int drop_tail(abase_db *db, segment *s, uint64_t from, abase_recovery *rep)
{
    uint64_t last = nonzero_end(s->fd, s->base, from, s->mapped);
    s->used = from;
    if (last <= from)
        return ABASE_OK;
    rep->dropped_bytes += last - from;
    rep->dropped_offset = from;
    memset(s->base + from, 0, last - from);
    if (msync(s->base, s->mapped, MS_SYNC) != 0) { /* fsync point: the cut */
        char path[sizeof(db->err.file)];
        log_seg_display_path(db, s->no, path, sizeof(path));
        log_set_io_error(db, errno, path, "msync", "cannot sync the truncated tail");
        return ABASE_EIO;
    }
    return ABASE_OK;
}

/* Remove a segment file past the end of the log, counting its data. */
static void drop_segment_file(abase_db *db, uint32_t no, abase_recovery *rep)
{
    char name[SEG_NAME_CAP];
    seg_name(no, name);
    int fd = openat(db->logdir_fd, name, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && (uint64_t)st.st_size > ABASE_SEG_HEADER_SIZE &&
            (uint64_t)st.st_size <= (UINT64_C(1) << 32)) {
            uint64_t size = (uint64_t)st.st_size;
            uint8_t *base = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
            if (base != MAP_FAILED) {
                uint64_t last = nonzero_end(fd, base, ABASE_SEG_HEADER_SIZE, size);
                rep->dropped_bytes += last - ABASE_SEG_HEADER_SIZE;
                munmap(base, size);
            }
        }
        close(fd);
    }
    unlinkat(db->logdir_fd, name, 0);
    rep->dropped_segments++;
}

static int zero16(const uint8_t *p)
{
    return ld64(p) == 0 && ld64(p + 8) == 0;
}

int abase_db_recover(abase_db *db, uint32_t first_live, abase_recovery *rep)
{
    memset(rep, 0, sizeof(*rep));
    recovery_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return ABASE_ENOMEM;
    pthread_rwlock_wrlock(&db->lock);
    log_read_boot_id(db->boot_id);
    uint32_t *nums = NULL, n = 0;
    mark_state m;
    memset(&m, 0, sizeof(m));
    int rc = list_segments(db, first_live, &nums, &n);
    if (rc == ABASE_OK)
        rc = log_mark_open(db, &m);
    db->live_first = first_live;
    db->next_no = first_live;
    /* Where recovery must find valid data: everything below the mark. */
    int cut = m.valid && (m.flags & ABASE_MARK_CUT);
    int rebooted = !m.valid || zero16(m.boot) || zero16(db->boot_id) || memcmp(m.boot, db->boot_id, 16) != 0;
    int lenient = rebooted || (m.valid && (m.flags & ABASE_MARK_FAILED));
    uint32_t mseg = (uint32_t)(m.end >> 32);
    uint64_t moff = m.end & 0xffffffffu;
    if (m.end == 0)
        moff = 0;
    uint32_t keep = n; /* segments nums[keep..] are past the end of the log */
    for (uint32_t i = 0; rc == ABASE_OK && i < n; i++) {
        uint32_t want = first_live + i;
        /* bytes of segment `want` the mark says are on disk */
        uint64_t before = m.end == 0 || want > mseg ? 0 : (want < mseg ? UINT64_MAX : moff);
        int past = before <= ABASE_SEG_HEADER_SIZE; /* the whole segment lies past the mark */
        if (nums[i] != want || (cut && want > mseg)) {
            if (nums[i] == want || (past && (cut || lenient))) {
                keep = i; /* W5 (or CUT): the log ends before this segment */
                break;
            }
            char path[sizeof(db->err.file)];
            log_seg_display_path(db, want, path, sizeof(path));
            log_set_error(db, ABASE_ECORRUPT, 0, path, 0, "segment missing from the log");
            rc = ABASE_ECORRUPT;
            break;
        }
        int last = i + 1 == n;
        uint64_t limit = cut && want == mseg ? moff : UINT64_MAX;
        seg_walk w;
        rc = recover_segment(db, want, last, past, limit, rep, q, &w);
        if (rc == ABASE_ECORRUPT && past && (cut || lenient)) {
            keep = i; /* W5: a header never written, or torn */
            rc = ABASE_OK;
            break;
        }
        if (rc != ABASE_OK)
            break;
        if (i == 0 && (!m.present || !m.valid)) {
            /* The segments are of this version, so the mark should exist. */
            log_set_error(db, ABASE_ECORRUPT, 0, db->logdir, 0,
                          m.present ? "durable end mark log/MARK has no valid slot"
                                    : "durable end mark log/MARK is missing");
            rc = ABASE_ECORRUPT;
            break;
        }
        db->next_no = want + 1;
        segment *s = &db->segs[db->nsegs - 1];
        int bad = w.why || w.open_batch || w.tail_dirty;
        if (cut && want == mseg) {
            if (w.end < moff) {
                char path[sizeof(db->err.file)];
                log_seg_display_path(db, want, path, sizeof(path));
                log_set_error(db, ABASE_ECORRUPT, 0, path, w.why ? w.stop : w.end, "%s",
                              w.why ? w.why : "data ends before the durable end mark");
                rc = ABASE_ECORRUPT;
                break;
            }
            rc = drop_tail(db, s, moff, rep); /* never acknowledged nor shown */
            keep = i + 1;
            break;
        }
        if (!bad)
            continue;
        /* the first bad bytes: the bad record, or an unfinished batch */
        uint64_t at = w.open_batch && (w.interrupted || !w.why) ? w.end : w.stop;
        int tolerated;
        if (w.end < before)
            tolerated = 0; /* data the mark says was on disk is bad: corruption */
        else if (lenient)
            tolerated = 1; /* W5: power loss, or a failed sync, past the mark */
        else /* only the process died: it tore at most its last record */
            tolerated = last && !w.interrupted && !valid_record_after(s->base, w.stop, w.size);
        if (!tolerated) {
            char path[sizeof(db->err.file)];
            log_seg_display_path(db, want, path, sizeof(path));
            log_set_error(db, ABASE_ECORRUPT, 0, path, at, "%s",
                          w.why ? w.why
                                : w.open_batch ? "unfinished batch before more data"
                                               : w.end < before ? "data ends before the durable end mark"
                                                                : "garbage after the end of a sealed segment");
            rc = ABASE_ECORRUPT;
            break;
        }
        rc = drop_tail(db, s, w.end, rep); /* W1/W2/W5 */
        keep = i + 1;
        break;
    }
    if (rc == ABASE_OK && m.end != 0 && mseg >= first_live && moff > ABASE_SEG_HEADER_SIZE &&
        (db->nsegs == 0 || db->segs[db->nsegs - 1].no < mseg) && keep == n) {
        /* the mark says segment mseg holds data, and there is no such file */
        char path[sizeof(db->err.file)];
        log_seg_display_path(db, mseg, path, sizeof(path));
        log_set_error(db, ABASE_ECORRUPT, 0, path, 0, "segment missing from the log");
        rc = ABASE_ECORRUPT;
    }
    if (rc == ABASE_OK && keep < n) {
        for (uint32_t j = keep; j < n; j++)
            drop_segment_file(db, nums[j], rep);
        if (log_fsync_dir(db->logdir) != 0) { /* fsync point: the removed segments */
            log_set_io_error(db, errno, db->logdir, "fsync", "cannot sync the log directory");
            rc = ABASE_EIO;
        }
    }
    free(nums);
    if (rc == ABASE_OK && db->nsegs) {
        segment *newest = &db->segs[db->nsegs - 1];
        newest->sealed = 0; /* the newest kept segment is the active one */
        for (uint32_t i = 0; i < db->nsegs; i++) {
            segment *s = &db->segs[i];
            rep->bytes += s->used - ABASE_SEG_HEADER_SIZE;
            if (ts_greater(s->max_hlc, s->max_node, rep->max_hlc, 0))
                rep->max_hlc = s->max_hlc;
            if (s->sealed && make_addr(s->no, s->used) <= m.end)
                s->synced = 1;
        }
    }
    if (rc == ABASE_OK && q->n) {
        /* Every segment is mapped and its `used` final, so the index can
         * read any queued record's key. */
        uint64_t distinct = hll_estimate(q);
        rc = ix_load(&db->ix, q->items, q->n, distinct < q->n ? distinct : q->n);
    }
    free(q->items);
    free(q);
    uint64_t durable = m.end;
    if (rc == ABASE_OK && db->nsegs) {
        segment *newest = &db->segs[db->nsegs - 1];
        uint64_t log_end = make_addr(newest->no, newest->used);
        if (durable > log_end)
            durable = log_end;
        if (db->durability == ABASE_DUR_SYNC && log_end > durable) {
            /* Durability "sync" holds everything below the active segment
             * on disk: sync what the last run left unsynced. */
            for (uint32_t i = 0; rc == ABASE_OK && i < db->nsegs; i++) {
                segment *s = &db->segs[i];
                if (make_addr(s->no, s->used) > durable && fdatasync(s->fd) != 0) { /* fsync point */
                    char path[sizeof(db->err.file)];
                    log_seg_display_path(db, s->no, path, sizeof(path));
                    log_set_io_error(db, errno, path, "fdatasync", "cannot sync a recovered segment");
                    rc = ABASE_EIO;
                }
                s->synced = s->sealed;
            }
            if (rc == ABASE_OK && log_fsync_dir(db->logdir) != 0) {
                log_set_io_error(db, errno, db->logdir, "fsync", "cannot sync the log directory");
                rc = ABASE_EIO;
            }
            durable = log_end;
        }
    }
    if (rc == ABASE_OK) {
        pthread_mutex_lock(&db->sync_mu);
        db->synced_addr = durable;
        pthread_mutex_unlock(&db->sync_mu);
        /* This boot's id, the failure flags cleared; fsync'd when they were
         * set, so that a later crash cannot cut again what this run writes.
         * Not written when it would say the same (an open changes no file
         * it does not have to). */
        if (!m.present)
            rc = log_mark_create(db, durable); /* a new log: no segment yet */
        else if (m.flags || durable != m.end || memcmp(m.boot, db->boot_id, 16) != 0)
            rc = log_mark_reset(db, durable, m.flags != 0);
    }
    rep->mark_end = m.end;
    rep->mark_flags = m.flags;
    rep->rebooted = (uint32_t)rebooted;
    rep->segments = db->nsegs;
    log_recount_live(db);
    abase_hlc_observe(&db->clock, rep->max_hlc);
    pthread_rwlock_unlock(&db->lock);
    return rc;
}

/* ------------------------------------------------------------------- check */

typedef struct check_ctx {
    abase_db *db;
    int64_t problems;
} check_ctx;

static int check_entry(void *arg, uint64_t addr)
{
    check_ctx *c = arg;
    const uint8_t *r = rec_mapped(c->db, addr);
    if (!r) {
        if (c->problems++ == 0)
            log_set_error(c->db, ABASE_ECORRUPT, 0, c->db->logdir, addr,
                          "index entry points at no record");
        return 0;
    }
    uint32_t ns = ld32(r + R_NS), kl = ld16(r + R_KLEN);
    uint64_t h = abase_hash(ns, r + ABASE_REC_HEADER_SIZE, kl);
    uint64_t *slot = ix_find(&c->db->ix, h, ns, r + ABASE_REC_HEADER_SIZE, kl);
    if (!slot || *slot != addr) {
        if (c->problems++ == 0)
            log_set_error(c->db, ABASE_ECORRUPT, 0, c->db->logdir, addr,
                          "index entry not found by its own key");
    }
    return 0;
}

int64_t abase_check(abase_db *db)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    check_ctx c = {db, 0};
    for (uint32_t i = 0; i < db->nsegs; i++) {
        segment *s = &db->segs[i];
        if (s->no < db->live_first)
            continue;
        for (uint64_t off = ABASE_SEG_HEADER_SIZE; off < s->used;) {
            const char *why = check_record(s->base, off, s->used);
            if (why) {
                if (c.problems++ == 0)
                    log_set_seg_error(db, ABASE_ECORRUPT, 0, s->no, off, "%s", why);
                break;
            }
            off += align8(ld32(s->base + off + R_LEN));
        }
    }
    ix_foreach(&db->ix, check_entry, &c);
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return c.problems;
}

/* ------------------------------------------------------------------ verify */

int abase_segment_verify(const uint8_t *data, uint64_t size, uint32_t no, abase_verify *out)
{
    if (!out || (size && !data))
        return ABASE_EINVAL;
    memset(out, 0, sizeof(*out));
    out->bad_offset = size;
    out->status = ABASE_OK;
    const char *why = NULL;
    if (size < ABASE_SEG_HEADER_SIZE)
        why = "segment shorter than its header";
    else if (all_zero(data, ABASE_SEG_HEADER_SIZE))
        why = "segment header is all zero";
    else if (memcmp(data, SEG_MAGIC, 8) != 0 ||
             abase_crc_unmask(ld32(data + 60)) != abase_crc32c(0, data, 60))
        why = "bad segment header";
    else if (ld32(data + 8) != ABASE_FORMAT_VERSION)
        why = "unknown segment format version";
    else if (ld64(data + 16) != no)
        why = "segment number does not match its file name";
    if (why) {
        out->status = ABASE_ECORRUPT;
        out->bad_offset = 0;
        snprintf(out->why, sizeof(out->why), "%s", why);
        return ABASE_OK;
    }
    uint64_t off = ABASE_SEG_HEADER_SIZE, batch_start = 0, batch_records = 0;
    out->good_end = off;
    while (off + 8 <= size) {
        const uint8_t *p = data + off;
        if (ld32(p + R_LEN) == 0 && ld32(p) == 0) {
            if (!all_zero(p, size - off))
                why = "bytes after the zero that ends the records";
            break;
        }
        why = check_record(data, off, size);
        if (!why && !abase_hlc_usable(ld64(p + R_HLC)))
            why = "record timestamp at the end of the clock's range";
        if (!why && !(p[R_FLAGS] & ABASE_F_BATCH) && batch_start)
            why = "batch interrupted by a record outside it";
        if (why)
            break;
        uint64_t next = off + align8(ld32(p + R_LEN));
        if (next > size)
            next = size;
        if (p[R_FLAGS] & ABASE_F_BATCH) {
            if (!batch_start)
                batch_start = off;
            batch_records++;
            if (p[R_FLAGS] & ABASE_F_BATCH_END) {
                out->records += batch_records;
                out->good_end = next;
                batch_start = 0;
                batch_records = 0;
            }
        } else {
            out->records++;
            out->good_end = next;
        }
        off = next;
    }
    if (!why && off + 8 > size && off < size && !all_zero(data + off, size - off))
        why = "bytes after the last record";
    if (!why && batch_start)
        why = "unfinished batch";
    if (why) {
        out->status = ABASE_ECORRUPT;
        out->bad_offset = batch_start ? batch_start : off;
        out->batch_records = batch_records;
        snprintf(out->why, sizeof(out->why), "%s", why);
    }
    return ABASE_OK;
}
