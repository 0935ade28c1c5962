/*
 * recovery.c: recovery at open (abase_db_recover) and abase_check.
 *
 * Recovery lists the segment files, unlinks the compacted ones, maps and
 * checks every live segment, cuts a torn tail of the newest one and fills
 * the index in one pass. abase_check re-reads every live record and checks
 * the index against the log.
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

/* Segment numbers of dir/log, sorted; older-than-first_live files unlinked
 * (crash window W4). */
static int list_segments(abase_db *db, uint32_t first_live, uint32_t **out, uint32_t *n)
{
    *out = NULL;
    *n = 0;
    if (mkdir(db->logdir, 0755) != 0 && errno != EEXIST) {
        log_set_error(db, ABASE_EIO, errno, db->logdir, 0, "cannot create log directory");
        return ABASE_EIO;
    }
    /* Segment files are opened relative to this descriptor, so only the
     * directory's own path must be one the OS accepts (ENAMETOOLONG here
     * is the clear error for a path that is too long). */
    if (db->logdir_fd < 0)
        db->logdir_fd = open(db->logdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (db->logdir_fd < 0) {
        log_set_error(db, ABASE_EIO, errno, db->logdir, 0, "cannot open log directory");
        return ABASE_EIO;
    }
    int dfd = dup(db->logdir_fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        log_set_error(db, ABASE_EIO, errno, db->logdir, 0, "cannot read log directory");
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
        const char *nm = e->d_name;
        if (strlen(nm) != 12 || strcmp(nm + 8, ".seg") != 0)
            continue;
        uint32_t v = 0;
        int ok = 1;
        for (int i = 0; i < 8; i++) {
            if (nm[i] < '0' || nm[i] > '9') {
                ok = 0;
                break;
            }
            v = v * 10 + (uint32_t)(nm[i] - '0');
        }
        if (!ok)
            continue;
        if (v < first_live) {
            unlinkat(db->logdir_fd, nm, 0); /* compacted before the crash (W4) */
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

/* Open, map and check one segment, queueing its records for the index.
 * `newest`: a torn tail is cut, not an error. */
static int recover_segment(abase_db *db, uint32_t no, int newest, abase_recovery *rep,
                           recovery_queue *q)
{
    char name[SEG_NAME_CAP];
    seg_name(no, name);
    int fd = openat(db->logdir_fd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        log_set_seg_error(db, ABASE_EIO, errno, no, 0, "cannot open segment");
        return ABASE_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        log_set_seg_error(db, ABASE_EIO, errno, no, 0, "cannot stat segment");
        return ABASE_EIO;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > (UINT64_C(1) << 32)) {
        close(fd);
        log_set_seg_error(db, ABASE_ECORRUPT, 0, no, 0, "segment larger than 4 GiB");
        return ABASE_ECORRUPT;
    }
    uint64_t map_size = size;
    if (newest && map_size < ABASE_SEG_HEADER_SIZE) {
        /* W3: created but never written. Give it a full preallocation. */
        map_size = db->seg_size;
        if (posix_fallocate(fd, 0, (off_t)map_size) != 0) {
            close(fd);
            log_set_seg_error(db, ABASE_EIO, errno, no, 0, "cannot preallocate segment");
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
        close(fd);
        log_set_seg_error(db, ABASE_EIO, errno, no, 0, "cannot map segment");
        return ABASE_EIO;
    }
    int rc = log_grow_seg_array(db);
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
    s->sealed = !newest;

    /* header */
    if (newest && all_zero(base, ABASE_SEG_HEADER_SIZE)) {
        log_write_seg_header(base, no, db->node_id, db->clock.last); /* W3 */
    } else {
        if (memcmp(base, SEG_MAGIC, 8) != 0 ||
            abase_crc_unmask(ld32(base + 60)) != abase_crc32c(0, base, 60)) {
            log_set_seg_error(db, ABASE_ECORRUPT, 0, no, 0, "bad segment header");
            return ABASE_ECORRUPT;
        }
        if (ld32(base + 8) != ABASE_FORMAT_VERSION) {
            log_set_seg_error(db, ABASE_EVERSION, 0, no, 8, "segment format version %u, this build reads %u",
                          ld32(base + 8), ABASE_FORMAT_VERSION);
            return ABASE_EVERSION;
        }
        if (ld64(base + 16) != no) {
            log_set_seg_error(db, ABASE_ECORRUPT, 0, no, 16, "segment number does not match its file name");
            return ABASE_ECORRUPT;
        }
    }

    uint64_t off = ABASE_SEG_HEADER_SIZE;
    uint64_t batch_start = 0; /* offset of the first record of an open batch */
    size_t batch_first = 0;   /* its place in the queue */
    /* what the open batch adds to s when it ends */
    uint32_t batch_records = 0, batch_defs = 0;
    uint64_t batch_hlc = 0;
    uint32_t batch_node = 0;
    const char *why = NULL;
    while (off + 8 <= size) {
        const uint8_t *p = base + off;
        uint32_t len = ld32(p + R_LEN);
        if (len == 0 && ld32(p) == 0)
            break; /* zero tail */
        why = check_record(base, off, size);
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
        if (next > size)
            next = size;
        if (!(flags & ABASE_F_BATCH) && batch_start != 0) {
            why = "batch interrupted by a record outside it";
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
    uint64_t end = off;
    if (batch_start) {
        end = batch_start; /* W2: an unfinished batch is dropped */
        q->n = batch_first;
    }
    if (!newest) {
        if (why || batch_start || (off < size && nonzero_end(fd, base, off, size) != off)) {
            log_set_seg_error(db, ABASE_ECORRUPT, 0, no, why ? off : end, "%s",
                          why ? why : "unfinished batch or garbage after the end of a sealed segment");
            return ABASE_ECORRUPT;
        }
    } else if (end < size) {
        /* W1/W2: torn tail. Count what is dropped, then zero it, so that
         * stale bytes can never be read as records after later appends. */
        uint64_t last = nonzero_end(fd, base, end, size);
        if (last > end) {
            rep->dropped_bytes += last - end;
            rep->dropped_offset = end;
            memset(base + end, 0, last - end);
            if (msync(base, map_size, MS_SYNC) != 0) { /* fsync point: the cut */
                log_set_seg_error(db, ABASE_EIO, errno, no, end, "cannot sync the truncated tail");
                return ABASE_EIO;
            }
        }
    }
    s->used = end;
    rep->bytes += end - ABASE_SEG_HEADER_SIZE;
    if (ts_greater(s->max_hlc, s->max_node, rep->max_hlc, 0))
        rep->max_hlc = s->max_hlc;
    return ABASE_OK;
}

int abase_db_recover(abase_db *db, uint32_t first_live, abase_recovery *rep)
{
    memset(rep, 0, sizeof(*rep));
    recovery_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return ABASE_ENOMEM;
    pthread_rwlock_wrlock(&db->lock);
    uint32_t *nums = NULL, n = 0;
    int rc = list_segments(db, first_live, &nums, &n);
    db->live_first = first_live;
    db->next_no = first_live;
    for (uint32_t i = 0; rc == ABASE_OK && i < n; i++) {
        if (nums[i] != first_live + i) {
            log_set_seg_error(db, ABASE_ECORRUPT, 0, first_live + i, 0, "segment missing from the log");
            rc = ABASE_ECORRUPT;
            break;
        }
        rc = recover_segment(db, nums[i], i + 1 == n, rep, q);
        db->next_no = nums[i] + 1;
    }
    free(nums);
    if (rc == ABASE_OK && q->n) {
        /* Every segment is mapped and its `used` final, so the index can
         * read any queued record's key. */
        uint64_t distinct = hll_estimate(q);
        rc = ix_load(&db->ix, q->items, q->n, distinct < q->n ? distinct : q->n);
    }
    free(q->items);
    free(q);
    rep->segments = db->nsegs;
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
