/*
 * feed.c: raw reads of the log's records, in log order, for the change
 * feed and replication: abase_log_read (whole records from a position on,
 * across segments), abase_log_lag (bytes after a position), and
 * abase_segment_read (whole records of one sealed segment).
 *
 * Locks: each call holds the read `lock` for the whole call and copies out
 * under it. Never takes sync_mu.
 */
#include "log_internal.h"

#include <string.h>

int64_t abase_segment_read(abase_db *db, uint32_t seg_no, uint64_t *offset,
                           uint8_t *buf, size_t cap)
{
    if (!offset || !buf)
        return ABASE_EINVAL;
    pthread_rwlock_rdlock(&db->lock);
    segment *s = seg_by_no(db, seg_no);
    int64_t rc = 0;
    if (!s || !s->sealed) {
        rc = ABASE_EINVAL;
    } else {
        uint64_t off = *offset < ABASE_SEG_HEADER_SIZE ? ABASE_SEG_HEADER_SIZE : *offset;
        uint64_t start = off;
        while (off < s->used) {
            uint64_t sz = align8(ld32(s->base + off + R_LEN));
            if (sz == 0 || off + sz > s->used) {
                sz = s->used - off; /* cannot happen for a recovered segment */
                break;
            }
            if (off - start + sz > cap) {
                if (off == start) {
                    rc = ABASE_ETOOSMALL;
                }
                break;
            }
            off += sz;
        }
        if (rc == 0) {
            memcpy(buf, s->base + start, off - start);
            rc = (int64_t)(off - start);
            *offset = off;
        }
    }
    pthread_rwlock_unlock(&db->lock);
    return rc;
}

int64_t abase_log_read(abase_db *db, uint32_t *seg_no, uint64_t *offset,
                       uint8_t *buf, size_t cap)
{
    if (!seg_no || !offset || !buf)
        return ABASE_EINVAL;
    pthread_rwlock_rdlock(&db->lock);
    int64_t rc = 0;
    for (;;) {
        if (*seg_no < db->live_first) {
            rc = ABASE_NOTFOUND;
            break;
        }
        segment *s = seg_by_no(db, *seg_no);
        if (!s)
            break; /* past the end of the log */
        uint64_t off = *offset < ABASE_SEG_HEADER_SIZE ? ABASE_SEG_HEADER_SIZE : *offset;
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
        uint64_t end = off;
        while (end < used) {
            uint64_t sz = align8(ld32(s->base + end + R_LEN));
            if (sz < ABASE_REC_HEADER_SIZE || end + sz > used)
                break;
            if (end - off + sz > cap)
                break;
            end += sz;
        }
        if (end == off) {
            rc = ABASE_ETOOSMALL;
            break;
        }
        memcpy(buf, s->base + off, end - off);
        *offset = off;
        rc = (int64_t)(end - off);
        break;
    }
    pthread_rwlock_unlock(&db->lock);
    return rc;
}

uint64_t abase_log_lag(abase_db *db, uint32_t seg_no, uint64_t offset)
{
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
    return lag;
}
