/*
 * fold.c: what compaction needs from the log. abase_fold_open/next/free
 * read sealed segments in (namespace, key, newest first) order for the
 * store; abase_compacted_through moves live_first past them;
 * abase_retire_step removes their entries from the index;
 * abase_segment_drop unmaps and unlinks the oldest compacted segment.
 * sort_handles, the stable merge sort of record addresses, is here.
 *
 * Locks: abase_fold_open holds the read `lock` only to copy each segment's
 * mapping and length; its walk and sort, and abase_fold_next, hold no
 * lock (a sealed segment's bytes never change and its mapping stays until
 * abase_segment_drop, which only the compaction that owns the fold calls,
 * after it). abase_retire_step reads and hashes keys with no lock and holds
 * the write `lock` for the index removals; abase_compacted_through and
 * abase_segment_drop hold the write `lock`. Never takes sync_mu.
 */
#include "log_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int abase_compacted_through(abase_db *db, uint32_t seg_no)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    segment *s = seg_by_no(db, seg_no);
    int rc = ABASE_OK;
    if (!s || !s->sealed)
        rc = ABASE_EINVAL;
    else if (seg_no + 1 > db->live_first) {
        db->live_first = seg_no + 1;
        log_recount_live(db);
    }
    pthread_rwlock_unlock(&db->lock);
    if (rc == ABASE_OK)
        log_stall_wake(db); /* the log shrank: stalled writers may go */
    gate_leave(db);
    return rc;
}

typedef int (*order_fn)(const void *ctx, uint64_t a, uint64_t b);

/* Stable bottom-up merge sort of 64-bit handles by `cmp` (qsort has no
 * context pointer): insertion-sorted runs of 16, then merges. */
static int sort_handles(uint64_t *a, uint64_t n, order_fn cmp, const void *ctx)
{
    if (n < 2)
        return ABASE_OK;
    uint64_t *tmp = malloc(n * sizeof(uint64_t));
    if (!tmp)
        return ABASE_ENOMEM;
    const uint64_t RUN = 16;
    for (uint64_t lo = 0; lo < n; lo += RUN) {
        uint64_t hi = lo + RUN < n ? lo + RUN : n;
        for (uint64_t i = lo + 1; i < hi; i++) {
            uint64_t v = a[i];
            uint64_t j = i;
            while (j > lo && cmp(ctx, a[j - 1], v) > 0) {
                a[j] = a[j - 1];
                j--;
            }
            a[j] = v;
        }
    }
    uint64_t *src = a, *dst = tmp;
    for (uint64_t w = RUN; w < n; w *= 2) {
        for (uint64_t lo = 0; lo < n; lo += 2 * w) {
            uint64_t mid = lo + w < n ? lo + w : n;
            uint64_t hi = lo + 2 * w < n ? lo + 2 * w : n;
            uint64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = cmp(ctx, src[i], src[j]) <= 0 ? src[i++] : src[j++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, n * sizeof(uint64_t));
    free(tmp);
    return ABASE_OK;
}

struct abase_fold {
    abase_db *db;
    uint32_t first_no;      /* the folded segments: first_no, first_no + 1, ... */
    uint32_t n_segs;
    const uint8_t **bases;  /* their mappings */
    uint32_t *lww;          /* sorted namespace ids resolved LWW */
    uint32_t n_lww;
    uint64_t *addrs;        /* record addresses in fold order */
    uint64_t n;
    uint64_t pos;
};

static const uint8_t *fold_rec(const abase_fold *f, uint64_t addr)
{
    return f->bases[(uint32_t)(addr >> 32) - f->first_no] + (addr & 0xffffffffu);
}

/* (ns, key) ascending, then timestamp descending, then address descending;
 * ctx is the fold. */
static int fold_cmp(const void *ctx, uint64_t a, uint64_t b)
{
    const abase_fold *f = ctx;
    const uint8_t *ra = fold_rec(f, a), *rb = fold_rec(f, b);
    uint32_t na = ld32(ra + R_NS), nb = ld32(rb + R_NS);
    if (na != nb)
        return na < nb ? -1 : 1;
    int c = key_cmp(ra + ABASE_REC_HEADER_SIZE, ld16(ra + R_KLEN), rb + ABASE_REC_HEADER_SIZE,
                    ld16(rb + R_KLEN));
    if (c)
        return c;
    uint64_t ha = ld64(ra + R_HLC), hb = ld64(rb + R_HLC);
    uint32_t da = ld32(ra + R_NODE), db_ = ld32(rb + R_NODE);
    if (ts_greater(ha, da, hb, db_))
        return -1;
    if (ts_greater(hb, db_, ha, da))
        return 1;
    return a > b ? -1 : (a < b);
}

void abase_fold_free(abase_fold *f)
{
    if (!f)
        return;
    free(f->bases);
    free(f->lww);
    free(f->addrs);
    free(f);
}

int abase_fold_open(abase_db *db, uint32_t first_no, uint32_t n_segs, const uint32_t *lww_ns,
                    uint32_t n_lww, abase_fold **out)
{
    if (!out || (n_lww && !lww_ns) || n_segs == 0 || first_no + (uint64_t)n_segs > UINT32_MAX)
        return ABASE_EINVAL;
    if (log_failed(db)) { /* compaction writes the store: refused after a failure */
        pthread_rwlock_wrlock(&db->lock);
        int rc = log_refuse(db);
        pthread_rwlock_unlock(&db->lock);
        return rc;
    }
    abase_fold *f = calloc(1, sizeof(*f));
    if (!f)
        return ABASE_ENOMEM;
    f->db = db;
    f->first_no = first_no;
    f->n_segs = n_segs;
    f->n_lww = n_lww;
    f->lww = malloc((n_lww ? n_lww : 1) * sizeof(uint32_t));
    f->bases = calloc(n_segs, sizeof(*f->bases));
    uint64_t *used = calloc(n_segs, sizeof(uint64_t));
    if (!f->lww || !f->bases || !used) {
        free(used);
        abase_fold_free(f);
        return ABASE_ENOMEM;
    }
    if (n_lww)
        memcpy(f->lww, lww_ns, n_lww * sizeof(uint32_t));
    if (!gate_enter(db)) {
        free(used);
        abase_fold_free(f);
        return ABASE_ECLOSED;
    }
    int rc = ABASE_OK;
    uint64_t records = 0;
    pthread_rwlock_rdlock(&db->lock);
    for (uint32_t i = 0; i < n_segs && rc == ABASE_OK; i++) {
        segment *s = seg_by_no(db, first_no + i);
        if (!s || !s->sealed) {
            rc = ABASE_EINVAL;
            break;
        }
        f->bases[i] = s->base;
        used[i] = s->used;
        records += s->records;
    }
    pthread_rwlock_unlock(&db->lock);
    /* The walk and the sort run without the lock, so writers never wait
     * for them (hundreds of ms for large segments): a sealed segment's
     * bytes never change and its mapping stays until abase_segment_drop,
     * which only the compaction that owns this fold calls, after it. */
    if (rc == ABASE_OK) {
        f->addrs = malloc((records ? records : 1) * sizeof(uint64_t));
        if (!f->addrs)
            rc = ABASE_ENOMEM;
    }
    for (uint32_t i = 0; i < n_segs && rc == ABASE_OK; i++) {
        const uint8_t *base = f->bases[i];
        for (uint64_t off = ABASE_SEG_HEADER_SIZE; off < used[i];) {
            uint32_t len = ld32(base + off + R_LEN);
            if (len < ABASE_REC_HEADER_SIZE || len > used[i] - off || f->n >= records)
                break;
            f->addrs[f->n++] = make_addr(first_no + i, off);
            off += align8(len);
        }
    }
    free(used);
    if (rc == ABASE_OK)
        rc = sort_handles(f->addrs, f->n, fold_cmp, f);
    gate_leave(db);
    if (rc != ABASE_OK) {
        abase_fold_free(f);
        return rc;
    }
    *out = f;
    return ABASE_OK;
}

static int is_lww(const abase_fold *f, uint32_t ns)
{
    uint32_t lo = 0, hi = f->n_lww;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (f->lww[mid] == ns)
            return 1;
        if (f->lww[mid] < ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

int64_t abase_fold_next(abase_fold *f, uint8_t *buf, size_t cap, uint32_t *items)
{
    *items = 0;
    if (!f || !buf)
        return ABASE_EINVAL;
    /* No lock: the fold reads only sealed segments' bytes, which never
     * change and stay mapped until its compaction drops them (see
     * abase_fold_open), so puts never wait for a fold. The gate keeps
     * abase_db_close from unmapping them while this call reads. */
    if (!gate_enter(f->db))
        return ABASE_ECLOSED;
    uint64_t used = 0;
    int64_t rc = 0;
    while (f->pos < f->n) {
        const uint8_t *r = fold_rec(f, f->addrs[f->pos]);
        uint32_t ns = ld32(r + R_NS), klen = ld16(r + R_KLEN), vlen = ld32(r + R_VLEN);
        int lww = is_lww(f, ns);
        uint32_t count = 1;
        if (lww) { /* the newest comes first; skip the key's older records */
            while (f->pos + count < f->n) {
                const uint8_t *q = fold_rec(f, f->addrs[f->pos + count]);
                if (ld32(q + R_NS) != ns ||
                    key_cmp(q + ABASE_REC_HEADER_SIZE, ld16(q + R_KLEN),
                            r + ABASE_REC_HEADER_SIZE, klen) != 0)
                    break;
                count++;
            }
        }
        uint32_t slen = lww ? 13 + (r[R_OP] == ABASE_OP_DELETE ? 0 : vlen) : vlen;
        uint64_t sz = 32 + align8(klen) + align8(slen);
        if (used + sz > cap) {
            if (*items == 0)
                rc = ABASE_ETOOSMALL;
            break;
        }
        uint8_t *b = buf + used;
        st32(b, ns);
        st16(b + 4, (uint16_t)klen);
        b[6] = r[R_OP];
        b[7] = r[R_FLAGS];
        st32(b + 8, slen);
        st32(b + 12, count);
        st64(b + 16, ld64(r + R_HLC));
        st32(b + 24, ld32(r + R_NODE));
        st32(b + 28, 0);
        memcpy(b + 32, r + ABASE_REC_HEADER_SIZE, klen);
        memset(b + 32 + klen, 0, align8(klen) - klen);
        uint8_t *v = b + 32 + align8(klen);
        const uint8_t *src = r + ABASE_REC_HEADER_SIZE + klen;
        if (lww) {
            /* store kinds VALUE, TOMBSTONE; 0x40: an expire_at u64 leads the
             * value (a put flagged TTL: its value keeps the prefix) */
            v[0] = r[R_OP] == ABASE_OP_DELETE ? 2 : 1;
            if (r[R_OP] == ABASE_OP_PUT && (r[R_FLAGS] & ABASE_F_TTL) && vlen >= ABASE_TTL_PREFIX)
                v[0] |= 0x40;
            st64(v + 1, ld64(r + R_HLC));
            st32(v + 9, ld32(r + R_NODE));
            if (slen > 13)
                memcpy(v + 13, src, slen - 13);
        } else if (vlen) {
            memcpy(v, src, vlen);
        }
        memset(v + slen, 0, align8(slen) - slen);
        used += sz;
        (*items)++;
        f->pos += count;
    }
    gate_leave(f->db);
    return rc < 0 ? rc : (int64_t)used;
}

int abase_retire_step(abase_db *db, uint32_t seg_no, uint64_t *offset, uint32_t budget)
{
    enum { STEP = 512 };
    uint64_t offs[STEP], hashes[STEP];
    if (budget == 0 || budget > STEP)
        budget = STEP;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    segment *s = seg_by_no(db, seg_no);
    int compacted = s && seg_no < db->live_first;
    const uint8_t *base = compacted ? s->base : NULL;
    uint64_t used = compacted ? s->used : 0;
    pthread_rwlock_unlock(&db->lock);
    if (!compacted) {
        gate_leave(db);
        return 0;
    }
    /* Keys are read and hashed without the lock (a compacted segment never
     * changes and only its compaction unmaps it, after the last step); the
     * write lock is held only for the index removals. */
    uint64_t off = *offset < ABASE_SEG_HEADER_SIZE ? ABASE_SEG_HEADER_SIZE : *offset;
    uint32_t n = 0;
    while (off < used && n < budget) {
        const uint8_t *r = base + off;
        uint32_t len = ld32(r + R_LEN);
        if (len < ABASE_REC_HEADER_SIZE || len > used - off)
            break;
        offs[n] = off;
        hashes[n++] = abase_hash(ld32(r + R_NS), r + ABASE_REC_HEADER_SIZE, ld16(r + R_KLEN));
        off += align8(len);
    }
    pthread_rwlock_wrlock(&db->lock);
    uint64_t limit = make_addr(db->live_first, 0);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *r = base + offs[i];
        ix_remove_below(&db->ix, hashes[i], ld32(r + R_NS), r + ABASE_REC_HEADER_SIZE,
                        ld16(r + R_KLEN), limit);
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    *offset = off;
    return n == budget && off < used;
}

int abase_segment_drop(abase_db *db, uint32_t seg_no)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_wrlock(&db->lock);
    int rc = ABASE_OK;
    if (db->nsegs == 0 || db->segs[0].no != seg_no || seg_no >= db->live_first) {
        rc = ABASE_EINVAL;
    } else {
        segment *s = &db->segs[0];
        char name[SEG_NAME_CAP];
        seg_name(seg_no, name);
        log_tail_unpin(db, seg_no); /* the tail keeper may still populate it (tail.c) */
        munmap(s->base, s->mapped);
        close(s->fd);
        free(s->marks);
        if (unlinkat(db->logdir_fd, name, 0) != 0 && errno != ENOENT) {
            log_set_seg_error(db, ABASE_EIO, errno, seg_no, 0, "cannot unlink compacted segment");
            rc = ABASE_EIO;
        }
        memmove(&db->segs[0], &db->segs[1], (db->nsegs - 1) * sizeof(segment));
        db->nsegs--;
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}
