/*
 * feed.c: raw reads of the log's records, in log order, for the change
 * feed and replication: abase_log_check (is a position one the log really
 * has), abase_log_read (whole records from a position on, across
 * segments), abase_log_lag (bytes after a position), and abase_segment_read
 * (whole records of one sealed segment).
 *
 * Positions come from outside (a feed cursor sent by a peer), so none is
 * trusted: a position must be a record boundary of a live segment, proven
 * by walking the segment's records from its header, never by what the
 * bytes at the position look like (a user's value can hold a whole record
 * with a valid checksum). The walk is bounded: each segment keeps the
 * first boundary of every 64 KiB window it has walked through (its marks),
 * so a check walks at most one window of records past a mark. Every length
 * read is checked against the segment's end before it is used.
 *
 * Locks: each call holds the read `lock` for the whole call and copies out
 * under it; the marks are extended under feed_mu, taken with the read
 * lock held. Never takes sync_mu. Every call is inside the teardown gate.
 */
#include "log_internal.h"

#include <stdlib.h>
#include <string.h>

/* The size of the record at off (padded), or 0 if the bytes there cannot
 * be a whole record of s: a length field past the end, a length below a
 * header's, or a record running past `used`. Read lock held. */
static uint64_t rec_size_at(const segment *s, uint64_t off)
{
    if (off + ABASE_REC_HEADER_SIZE > s->used)
        return 0;
    uint32_t len = ld32(s->base + off + R_LEN);
    if (len < ABASE_REC_HEADER_SIZE || align8(len) > s->used - off)
        return 0;
    return align8(len);
}

/* Add the marks of the windows that start in (from, to]: their first
 * boundary is `to`. feed_mu held. */
static int add_marks(segment *s, uint64_t to)
{
    for (;;) {
        uint64_t start = ABASE_SEG_HEADER_SIZE + (uint64_t)s->nmarks * MARK_SPAN;
        if (start > to)
            return ABASE_OK;
        if (s->nmarks == s->marks_cap) {
            uint32_t cap = s->marks_cap ? s->marks_cap * 2 : 16;
            uint64_t *m = realloc(s->marks, cap * sizeof(uint64_t));
            if (!m)
                return ABASE_ENOMEM;
            s->marks = m;
            s->marks_cap = cap;
        }
        s->marks[s->nmarks++] = to;
    }
}

/* ABASE_OK if target is a record boundary of s (its header end and `used`
 * included), ABASE_EINVAL if it is not, ABASE_ECORRUPT if the walk meets a
 * length that does not fit. Read lock held; takes feed_mu. */
static int seg_boundary(abase_db *db, segment *s, uint64_t target)
{
    if (target == ABASE_SEG_HEADER_SIZE || target == s->used)
        return ABASE_OK;
    if (target < ABASE_SEG_HEADER_SIZE || target > s->used || (target & 7u))
        return ABASE_EINVAL;
    int rc = ABASE_OK;
    pthread_mutex_lock(&db->feed_mu);
    if (s->walked == 0) {
        s->walked = ABASE_SEG_HEADER_SIZE;
        rc = add_marks(s, ABASE_SEG_HEADER_SIZE);
    }
    uint64_t pos = s->walked;
    int extend = 1;
    if (rc == ABASE_OK && target <= s->walked) {
        uint64_t w = (target - ABASE_SEG_HEADER_SIZE) / MARK_SPAN;
        pos = w < s->nmarks ? s->marks[w] : s->walked;
        extend = 0;
    }
    while (rc == ABASE_OK && pos < target) {
        uint64_t sz = rec_size_at(s, pos);
        if (sz == 0) {
            rc = ABASE_ECORRUPT;
            break;
        }
        pos += sz;
        if (extend) {
            s->walked = pos;
            rc = add_marks(s, pos);
        }
    }
    pthread_mutex_unlock(&db->feed_mu);
    if (rc != ABASE_OK)
        return rc;
    return pos == target ? ABASE_OK : ABASE_EINVAL;
}

/* Check the position (seg_no, offset) under the read lock: ABASE_OK for a
 * boundary of a live segment (offset 0 stands for the first record), or
 * for the end of the log; ABASE_NOTFOUND for a compacted segment;
 * ABASE_EINVAL for anything else. */
static int check_position(abase_db *db, uint32_t seg_no, uint64_t offset)
{
    if (seg_no < db->live_first)
        return ABASE_NOTFOUND;
    segment *s = seg_by_no(db, seg_no);
    if (!s) /* only the start of the segment that comes next */
        return seg_no == db->next_no && (offset == 0 || offset == ABASE_SEG_HEADER_SIZE)
                   ? ABASE_OK
                   : ABASE_EINVAL;
    if (offset == 0)
        return ABASE_OK;
    return seg_boundary(db, s, offset);
}

int abase_log_check(abase_db *db, uint32_t seg_no, uint64_t offset)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    int rc = check_position(db, seg_no, offset);
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}

int64_t abase_segment_read(abase_db *db, uint32_t seg_no, uint64_t *offset,
                           uint8_t *buf, size_t cap)
{
    if (!offset || !buf)
        return ABASE_EINVAL;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    segment *s = seg_by_no(db, seg_no);
    int64_t rc = 0;
    uint64_t off = *offset == 0 ? ABASE_SEG_HEADER_SIZE : *offset;
    if (!s || !s->sealed)
        rc = ABASE_EINVAL;
    else
        rc = seg_boundary(db, s, off);
    if (rc == ABASE_OK) {
        uint64_t start = off;
        while (off < s->used) {
            uint64_t sz = rec_size_at(s, off);
            if (sz == 0) {
                rc = ABASE_ECORRUPT;
                break;
            }
            if (off - start + sz > cap) {
                if (off == start)
                    rc = ABASE_ETOOSMALL;
                break;
            }
            off += sz;
        }
        if (off > start)
            rc = ABASE_OK; /* what was whole before a problem is returned first */
        if (rc == ABASE_OK) {
            memcpy(buf, s->base + start, off - start);
            rc = (int64_t)(off - start);
            *offset = off;
        }
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}

int64_t abase_log_read(abase_db *db, uint32_t *seg_no, uint64_t *offset,
                       uint8_t *buf, size_t cap)
{
    if (!seg_no || !offset || !buf)
        return ABASE_EINVAL;
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    int64_t rc = 0;
    for (;;) {
        if (*seg_no < db->live_first) {
            rc = ABASE_NOTFOUND;
            break;
        }
        segment *s = seg_by_no(db, *seg_no);
        if (!s) {
            if (*seg_no != db->next_no || (*offset != 0 && *offset != ABASE_SEG_HEADER_SIZE))
                rc = ABASE_EINVAL; /* not a position this log has */
            break; /* else the end of the log */
        }
        uint64_t off = *offset == 0 ? ABASE_SEG_HEADER_SIZE : *offset;
        if (off < ABASE_SEG_HEADER_SIZE || off > s->used || (off & 7u)) {
            rc = ABASE_EINVAL;
            break;
        }
        uint64_t used = seg_visible_used(db, s); /* nothing past a failure's durable end */
        if (off >= used) {
            if (s->sealed && used == s->used && seg_by_no(db, *seg_no + 1)) {
                (*seg_no)++;
                *offset = ABASE_SEG_HEADER_SIZE;
                continue;
            }
            *offset = off;
            break;
        }
        /* off is checked for being in bounds, not for being a boundary: the
         * caller proves that once with abase_log_check and then passes only
         * positions this call returned. Lengths are checked whatever. */
        uint64_t end = off;
        while (end < used) {
            uint64_t sz = rec_size_at(s, end);
            if (sz == 0 || end + sz > used) {
                if (sz == 0 && end == off)
                    rc = ABASE_ECORRUPT;
                break;
            }
            if (end - off + sz > cap) {
                if (end == off)
                    rc = ABASE_ETOOSMALL;
                break;
            }
            end += sz;
        }
        if (rc == 0) {
            memcpy(buf, s->base + off, end - off);
            *offset = off;
            rc = (int64_t)(end - off);
        }
        break;
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return rc;
}

int64_t abase_log_lag(abase_db *db, uint32_t seg_no, uint64_t offset)
{
    if (!gate_enter(db))
        return ABASE_ECLOSED;
    pthread_rwlock_rdlock(&db->lock);
    uint64_t lag = 0;
    for (uint32_t i = 0; i < db->nsegs; i++) {
        segment *s = &db->segs[i];
        if (s->no < seg_no || s->no < db->live_first)
            continue;
        uint64_t from = s->no == seg_no && offset > ABASE_SEG_HEADER_SIZE ? offset : ABASE_SEG_HEADER_SIZE;
        uint64_t used = seg_visible_used(db, s);
        if (used > from)
            lag += used - from;
    }
    pthread_rwlock_unlock(&db->lock);
    gate_leave(db);
    return lag > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)lag;
}
