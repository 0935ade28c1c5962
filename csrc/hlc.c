/*
 * hlc.c: hybrid logical clock (Kulkarni et al., 2014), packed in 64 bits as
 * physical_ms << 16 | logical.
 *
 * The packed form orders exactly as (physical, logical), so "greater" is a
 * plain integer comparison. The caller serializes access (the engine holds
 * its write lock; the Python HLC wrapper holds a lock).
 */
#define _POSIX_C_SOURCE 200809L
#include "abase.h"

#include <time.h>

#define LOGICAL_MASK ((UINT64_C(1) << ABASE_LOGICAL_BITS) - 1)

static int64_t real_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int read_clock(int64_t wall_ms, uint64_t *pt)
{
    int64_t ms = wall_ms >= 0 ? wall_ms : real_ms();
    if (ms < 0 || (uint64_t)ms > ABASE_MAX_PHYSICAL_MS)
        return ABASE_ERANGE;
    *pt = (uint64_t)ms;
    return ABASE_OK;
}

/* The next packed value after floor, given the physical reading pt.
 *
 * When the logical counter of floor's millisecond is used up (65,536
 * timestamps in one ms, or a floor raised ahead of the wall clock by a
 * received or recovered timestamp), the counter never wraps: with an
 * injected clock (wall_ms >= 0) the caller is told to advance it
 * (ABASE_EAGAIN); with the real clock the next millisecond is borrowed
 * (physical part floor + 1, logical 0) instead of waiting for the wall
 * clock, so no caller ever sleeps here, and the engine calls this under
 * its write lock. Borrowing keeps timestamps unique and increasing; every
 * timestamp the engine issues is written to the log in the same call, so
 * recovery raises the clock past any borrowed millisecond (the persisted
 * mark). It runs ahead of the wall clock only while more than 65,536
 * timestamps a millisecond are asked for, or by as much as the floor
 * already was. At the end of the range (no millisecond left to borrow)
 * the answer is ABASE_ERANGE, never a wait. */
static int advance(uint64_t floor, uint64_t pt, int64_t wall_ms, uint64_t *out)
{
    uint64_t floor_pt = floor >> ABASE_LOGICAL_BITS;
    if (pt > floor_pt) {
        *out = pt << ABASE_LOGICAL_BITS;
        return ABASE_OK;
    }
    if (floor_pt > ABASE_MAX_PHYSICAL_MS)
        return ABASE_ERANGE; /* a floor past the range (observed, not issued) */
    if ((floor & LOGICAL_MASK) != LOGICAL_MASK) {
        *out = floor + 1;
        return ABASE_OK;
    }
    if (wall_ms >= 0)
        return ABASE_EAGAIN; /* injected clock: the caller advances it */
    if (floor_pt + 1 > ABASE_MAX_PHYSICAL_MS)
        return ABASE_ERANGE;
    *out = (floor_pt + 1) << ABASE_LOGICAL_BITS; /* borrow the next ms */
    return ABASE_OK;
}

int abase_hlc_now(abase_hlc *clk, int64_t wall_ms, uint64_t *out)
{
    uint64_t pt;
    int rc = read_clock(wall_ms, &pt);
    if (rc != ABASE_OK)
        return rc;
    uint64_t next;
    rc = advance(clk->last, pt, wall_ms, &next);
    if (rc != ABASE_OK)
        return rc;
    clk->last = next;
    *out = next;
    return ABASE_OK;
}

int64_t abase_wall_ms(void)
{
    return real_ms();
}

int abase_hlc_update(abase_hlc *clk, uint64_t remote, int64_t wall_ms,
                     uint64_t max_skew_ms, uint64_t *out)
{
    uint64_t pt;
    int rc = read_clock(wall_ms, &pt);
    if (rc != ABASE_OK)
        return rc;
    if (!abase_hlc_usable(remote))
        return ABASE_ERANGE; /* refused: the clock does not move */
    uint64_t remote_pt = remote >> ABASE_LOGICAL_BITS;
    if (remote_pt > pt && remote_pt - pt > max_skew_ms)
        return ABASE_ESKEW; /* refused: the clock does not move */
    uint64_t floor = clk->last > remote ? clk->last : remote;
    uint64_t next;
    rc = advance(floor, pt, wall_ms, &next);
    if (rc != ABASE_OK)
        return rc;
    clk->last = next;
    *out = next;
    return ABASE_OK;
}

void abase_hlc_observe(abase_hlc *clk, uint64_t seen)
{
    if (seen > clk->last)
        clk->last = seen;
}
