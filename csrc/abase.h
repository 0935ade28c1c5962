/*
 * abase.h: the on-disk log format and the C core's API.
 *
 * This header is shared by the write path (log.c, write.c) and the recovery
 * path (recovery.c), so the format constants live in exactly one place. The
 * log's private structures are in log_internal.h. A format change updates
 * this comment in the same commit and bumps ABASE_FORMAT_VERSION.
 *
 * ON-DISK FORMAT (version 4). All integers are little-endian.
 *
 *   log/NNNNNNNN.seg      one segment; NNNNNNNN is the segment number in
 *                         decimal, zero-padded to 8 digits (numbers from
 *                         10^8 on have 9 or 10 digits, never a leading
 *                         zero). Numbers of the live segments are
 *                         consecutive.
 *   log/MARK              the durable end mark (below), created with the
 *                         log directory, before any segment.
 *
 *   segment  := header record* zero-tail?
 *   header   := (64 bytes)
 *       magic        8 bytes  "ABLOGSEG"
 *       version      u32      ABASE_FORMAT_VERSION
 *       header_len   u32      64
 *       segment_no   u64      the NNNNNNNN of the file name
 *       node_id      u32      node that created the segment
 *       reserved     u32      0
 *       created_hlc  u64      HLC when the segment was created
 *       reserved     20 bytes 0
 *       header_crc   u32      masked crc32c of bytes [0, 60)
 *   record   := (at an offset that is a multiple of 8)
 *       crc          u32      masked crc32c of bytes [4, length) of the record
 *       length       u32      40 + key_len + value_len  (0 here: end of data)
 *       prev         u64      address of the previous record of the same key
 *                             in append order, 0 if none (see "address")
 *       hlc          u64      hybrid logical clock: physical_ms << 16 | logical
 *       node_id      u32      node that issued hlc (the LWW tiebreak)
 *       namespace    u32      namespace id; 0xFFFFFFFF = namespace definitions
 *       op           u8       1 put, 2 delete, 3 merge
 *       flags        u8       bit0 DOMINANT: (hlc, node_id) was greater than
 *                                  every earlier version of the key, in the
 *                                  log and in the store, when appended
 *                             bit1 BATCH: part of a multi-record batch
 *                             bit2 BATCH_END: last record of that batch
 *                             bit3 CHECKPOINT: (merge namespaces) the value
 *                                  is the key's whole state as of this
 *                                  record, so reads need nothing older (a
 *                                  put, a merge or a delete whose removal
 *                                  delta is the whole state after it)
 *                             bit4 TTL: (puts of LWW namespaces only) the
 *                                  value starts with expire_at u64, the
 *                                  physical ms (HLC clock) from which the
 *                                  version reads as absent; value_len
 *                                  counts those 8 bytes (so it is >= 8)
 *       key_len      u16      <= ABASE_MAX_KEY
 *       value_len    u32      <= ABASE_MAX_VALUE; 0 for a delete, except in a
 *                             namespace whose merge operator's deletes join
 *                             (the CRDTs): there a delete's value is its
 *                             removal delta (the writer's observed context,
 *                             observed totals or watermark, encoded as a
 *                             state of the type; see abase_engine/crdt)
 *       key          key_len bytes
 *       value        value_len bytes
 *       padding      zero bytes up to the next multiple of 8 (not in crc)
 *   zero-tail := zero bytes to the end of the file (segments are
 *                preallocated; a length of 0 marks the end of the data)
 *
 *   address  := segment_no << 32 | byte offset of the record in the segment.
 *               Addresses grow in append order. An address in a segment
 *               that compaction has freed means "no longer in the log".
 *
 *   masked crc := ((crc >> 15) | (crc << 17)) + 0xa282ead8, so that a crc
 *                 of bytes that themselves contain crcs is not degenerate.
 *
 *   MARK     := slot slot   (1024 bytes: slot 0 at offset 0, slot 1 at 512,
 *                            so that one torn sector spoils at most one)
 *   slot     := (64 bytes)
 *       magic        8 bytes  "ABLOGMRK"
 *       version      u32      ABASE_FORMAT_VERSION
 *       flags        u32      bit0 FAILED: the engine that wrote this slot
 *                                  stopped after an I/O error on the log;
 *                                  its bytes past `end` are not trusted
 *                             bit1 CUT: (with FAILED) nothing past `end`
 *                                  was acknowledged or shown to a reader:
 *                                  recovery drops it
 *       seq          u64      written alternately to slot seq % 2; the valid
 *                             slot with the greater seq is the mark
 *       end          u64      an address (see "address"): every log byte
 *                             below it was on disk (fdatasync) when the slot
 *                             was written; 0: nothing known
 *       boot_id      16 bytes /proc/sys/kernel/random/boot_id (the 32 hex
 *                             digits as bytes) of the machine that wrote the
 *                             slot; all zero when unknown
 *       reserved     12 bytes 0
 *       crc          u32      masked crc32c of bytes [0, 60)
 *   The mark is written after every successful sync of the log (group
 *   commit, seal, abase_sync), at open (with this boot's id) and at a clean
 *   close (abase_db_checkpoint, fsync'd). Writes between syncs are not
 *   fsync'd: on disk the mark may lag, never lead. A slot with a bad crc or
 *   magic is ignored; segments without any valid slot are corruption.
 *
 * Recovery reads every live segment in order and checks each record's crc.
 * A record that fails it, a zero length where data is due, or a batch whose
 * BATCH_END record is missing, is the first BAD record; then:
 *   - before the mark's end: corruption (ABASE_ECORRUPT, file and offset);
 *   - past it, when the mark has CUT: the log ends at the mark;
 *   - past it, when the machine rebooted since the mark was written (its
 *     boot id differs or is unknown) or the mark has FAILED: a power loss
 *     can leave written and unwritten pages in any order, so the log ends
 *     at the bad record, and everything after it (later segments
 *     included) is dropped;
 *   - past it, on the same boot (only the process died): a kill tears at
 *     most the record being copied, the last one of the newest segment, so
 *     a bad record is dropped only when no valid record follows it in that
 *     segment; otherwise, or in an older segment, it is corruption.
 * Dropped bytes are zeroed (and later segment files removed) before the
 * log is used, counted in abase_recovery.dropped_bytes. A batch is all or
 * nothing. A length field is never trusted before the crc of its record has
 * been checked against bounds that lie inside the file.
 *
 * Version history: 2 added log/MARK (the durable end mark); 3 gave deletes
 * in merge namespaces whose deletes join a value (the removal delta above);
 * 4 added range tombstones, records of the namespace-definition namespace
 * whose key starts 0xFF 'R' (their layout: src/abase_engine/ranges.py),
 * which a version-3 reader would take for a namespace name, and the TTL
 * flag (an expire_at u64 before the value of a put).
 * Opening a directory of another version is ABASE_EVERSION
 * (FormatVersionError); there is no upgrade path.
 *
 * THREADS. An abase_db may be used from many threads at once: appends and
 * index changes hold its write lock, reads hold its read lock, and syncs
 * (group commit) serialize on a separate mutex without holding either.
 * abase_hlc and abase_scan are not thread-safe: guard them yourself.
 *
 * TEARDOWN. abase_db_close may be called while other threads are inside
 * any call on the same abase_db (or on an abase_scan or abase_fold of it):
 * it waits for the calls in flight to finish, then unmaps and frees the
 * log; every call made after it began returns ABASE_ECLOSED (calls that
 * return a count or an address have an int status for this). The handle
 * itself stays valid until abase_db_free, which must come last, when no
 * thread can use the pointer any more.
 */
#ifndef ABASE_H
#define ABASE_H

#include <stddef.h>
#include <stdint.h>

#define ABASE_FORMAT_VERSION 4u
#define ABASE_SEG_HEADER_SIZE 64u
#define ABASE_REC_HEADER_SIZE 40u
#define ABASE_MAX_KEY 511u
#define ABASE_MAX_VALUE (256u * 1024u * 1024u)
/* Encoded bytes (each record 40 + key + value, padded to 8) one batch may
 * hold: the whole batch goes into one segment, which must stay within the
 * largest segment size, so that every record offset fits the 32 bits an
 * address gives it. */
#define ABASE_MAX_BATCH (2048u * 1024u * 1024u)
#define ABASE_NS_DEFS 0xFFFFFFFFu
#define ABASE_LOGICAL_BITS 16
/* physical ms below 2^47 keeps a packed hlc positive as an int64_t */
#define ABASE_MAX_PHYSICAL_MS ((UINT64_C(1) << 47) - 1)

/* A timestamp the clock can be raised to and still advance from: its
 * physical part below the last representable millisecond. A record with
 * any other timestamp is refused at write (ABASE_ERANGE) and is corruption
 * at recovery: a clock raised to it could never issue a newer one. */
static inline int abase_hlc_usable(uint64_t hlc)
{
    return (hlc >> ABASE_LOGICAL_BITS) < ABASE_MAX_PHYSICAL_MS;
}

/* ops */
#define ABASE_OP_PUT 1
#define ABASE_OP_DELETE 2
#define ABASE_OP_MERGE 3

/* record flags */
#define ABASE_F_DOMINANT 0x01u
#define ABASE_F_BATCH 0x02u
#define ABASE_F_BATCH_END 0x04u
#define ABASE_F_CHECKPOINT 0x08u
#define ABASE_F_TTL 0x10u
/* Never on disk: an input flag of abase_write_batch (local writes) saying
 * that the record's first 8 value bytes hold a time to live in ms, which
 * the write turns into expire_at = its timestamp's physical ms + ttl and
 * flags ABASE_F_TTL. */
#define ABASE_F_TTL_RELATIVE 0x80u
#define ABASE_TTL_PREFIX 8u

/* durability levels */
#define ABASE_DUR_NONE 0
#define ABASE_DUR_PROCESS 1
#define ABASE_DUR_SYNC 2

/* read modes */
#define ABASE_MODE_LWW 0
#define ABASE_MODE_MERGE 1

/* Status codes: 0 is success, every failure is negative. */
#define ABASE_OK 0
#define ABASE_NOTFOUND (-1)   /* the key has no version in the log */
#define ABASE_DELETED (-2)    /* the visible version in the log is a tombstone */
#define ABASE_NEEDBASE (-3)   /* the log alone cannot decide: consult the store */
#define ABASE_ETOOSMALL (-4)  /* output buffer too small; needed size reported */
#define ABASE_EINVAL (-5)     /* bad argument */
#define ABASE_EIO (-6)        /* an OS call failed; errno in the error info */
#define ABASE_ENOMEM (-7)
#define ABASE_ECORRUPT (-8)   /* bad bytes on disk; file + offset in error info */
#define ABASE_EVERSION (-9)   /* unknown format version */
#define ABASE_EKEYSIZE (-10)
#define ABASE_EVALSIZE (-11)
#define ABASE_ESKEW (-12)     /* remote clock too far ahead */
#define ABASE_EAGAIN (-13)    /* injected clock: logical counter of this ms exhausted, advance it */
#define ABASE_ERANGE (-14)    /* a clock reading is out of the representable range */
#define ABASE_EWOULDBLOCK (-15) /* a _nowait call would have had to wait: call the blocking one */
#define ABASE_EBATCHSIZE (-16) /* a batch larger than ABASE_MAX_BATCH */
#define ABASE_ECLOSED (-17)   /* abase_db_close has begun: nothing was done */
#define ABASE_ECONFLICT (-18) /* abase_append_if: the key's head moved; nothing written */
#define ABASE_EXPIRES (-19)   /* LWW read: the winner is a value with an expiry (info->expire_at,
                               * value in buf without it); the caller decides by its clock */

/* abase_apply_batch: what became of a record */
#define ABASE_APPLY_SKIPPED 0
#define ABASE_APPLY_APPENDED 1
#define ABASE_APPLY_NEEDBASE 2

/* MARK flags */
#define ABASE_MARK_FAILED 0x01u
#define ABASE_MARK_CUT 0x02u

/* ---- the part below is also given to cffi (see _build_ffi.py) ---- */

/* A hybrid logical clock. `last` is the last packed hlc issued or seen. */
typedef struct abase_hlc {
    uint64_t last;
} abase_hlc;

/* Details of the last failure of an abase_db call (set under its lock). */
typedef struct abase_error {
    int status;
    int sys_errno;
    uint64_t offset;
    char file[1024];
    char message[256];
    char syscall[32];   /* the failing OS call of an ABASE_EIO, "" if none */
} abase_error;

/* What recovery found. */
typedef struct abase_recovery {
    uint32_t segments;       /* live segments opened */
    uint64_t records;        /* records indexed */
    uint64_t bytes;          /* bytes of valid records read */
    uint64_t dropped_bytes;  /* torn tail dropped from the newest segment */
    uint64_t dropped_offset; /* where the torn tail started */
    uint64_t max_hlc;        /* greatest hlc seen (raises the clock) */
    uint64_t ns_def_records; /* records of namespace ABASE_NS_DEFS indexed */
    uint64_t mark_end;       /* the durable end mark found (an address) */
    uint32_t mark_flags;     /* its flags (ABASE_MARK_*) */
    uint32_t rebooted;       /* 1: written on another boot (or unknown): lenient tail */
    uint32_t dropped_segments; /* later segment files removed with a dropped tail */
} abase_recovery;

/* Outcome of a read that did not return a plain value (see abase_get). */
typedef struct abase_getinfo {
    uint64_t hlc;       /* timestamp of the winner (LWW) */
    uint32_t node;
    uint32_t op;        /* op of the winner (LWW) */
    uint64_t needed;    /* bytes needed when ABASE_ETOOSMALL */
    uint32_t nrecords;  /* records written to the buffer (merge mode) */
    uint32_t complete;  /* 1: the log alone decided; 0: fold over the store's base */
    uint64_t expire_at; /* LWW: the winner's expiry (physical ms), 0 if it has none */
    uint64_t clock;     /* LWW: the HLC's last timestamp (packed) at the read, for the
                         * caller's "now" when it judges an expiry */
} abase_getinfo;

typedef struct abase_stats {
    uint64_t live_keys;       /* entries in the index */
    uint64_t index_bytes;     /* bytes held by the index tables */
    uint64_t index_capacity;
    uint64_t log_bytes;       /* bytes of records in live segments */
    uint64_t log_bytes_written;
    uint64_t records_appended;
    uint32_t segments;
    uint32_t first_segment;
    uint32_t active_segment;
    uint32_t rehashing;
    uint64_t syncs;           /* fdatasync calls made by group commit */
    uint64_t synced_writes;   /* writes acknowledged after a sync */
    uint64_t durable_end;     /* address below which the log is known on disk */
    uint64_t stalls;          /* writes delayed because the log was over the stall limit */
    uint64_t stall_ns;        /* total time those writes waited */
    uint32_t stalled_writers; /* writes waiting right now */
    uint32_t failed;          /* 1 after an I/O failure: writes are refused */
} abase_stats;

typedef struct abase_segstat {
    uint32_t no;
    uint32_t sealed;
    uint64_t used;
    uint64_t max_hlc;
    uint32_t max_node;
    uint32_t records;
} abase_segstat;

typedef struct abase_db abase_db;
typedef struct abase_scan abase_scan;

/* crc32c of data, continuing from crc (start with 0). */
uint32_t abase_crc32c(uint32_t crc, const uint8_t *data, size_t len);
/* the portable table version, for tests against the hardware one */
uint32_t abase_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len);
int abase_crc32c_hardware(void);
uint32_t abase_crc_mask(uint32_t crc);
uint32_t abase_crc_unmask(uint32_t masked);
uint64_t abase_hash(uint32_t ns, const uint8_t *key, size_t klen);

/* clock: wall_ms < 0 reads CLOCK_REALTIME; >= 0 is an injected reading */
int abase_hlc_now(abase_hlc *clk, int64_t wall_ms, uint64_t *out);
/* CLOCK_REALTIME in ms (-1 if it cannot be read): passed to abase_hlc_now
 * as an injected reading, it makes a used-up millisecond ABASE_EAGAIN
 * instead of a wait for the next one. */
int64_t abase_wall_ms(void);
int abase_hlc_update(abase_hlc *clk, uint64_t remote, int64_t wall_ms,
                     uint64_t max_skew_ms, uint64_t *out);
void abase_hlc_observe(abase_hlc *clk, uint64_t seen);

/* Lifecycle. abase_db_new allocates; abase_db_recover opens the segments
 * numbered >= first_live in dir/log and rebuilds the index;
 * abase_db_close waits for the calls in flight, then unmaps and closes
 * everything (no sync; see TEARDOWN above; a second call waits for the
 * first to finish); abase_db_free closes if needed and frees the handle
 * (no thread may use it any more). abase_db_closed: 1 once close began. */
int abase_db_new(const char *dir, uint32_t node_id, uint64_t segment_size,
                 int durability, abase_db **out);
int abase_db_recover(abase_db *db, uint32_t first_live, abase_recovery *rep);
int abase_db_close(abase_db *db);
void abase_db_free(abase_db *db);
/* Clean close: sync every segment and the log directory, write the durable
 * end mark and fsync it. ABASE_EIO (nothing written) after an I/O failure.
 * Call before abase_db_close. */
int abase_db_checkpoint(abase_db *db);
int abase_db_closed(abase_db *db);
void abase_db_error(abase_db *db, abase_error *out);
/* Sticky I/O failure. After any failed fdatasync/fsync/msync/ftruncate/
 * fallocate of the log or its directory (or abase_db_fail), every write
 * (put, batch, seal, sync, fold) returns ABASE_EIO until the engine is
 * reopened; reads keep working. Under durability "sync" the records past
 * the durable end (never acknowledged) are hidden from reads and the feed,
 * and the mark is flagged CUT so that recovery drops them too.
 * abase_db_fail: the caller's own I/O on the engine's files failed (the
 * store's commit); the log itself is untouched. abase_db_failure: 1 and the
 * first failure's details when failed, else 0. */
void abase_db_fail(abase_db *db, int sys_errno, const char *file, const char *syscall,
                   const char *message);
int abase_db_failure(abase_db *db, abase_error *out);
/* Write stalls (backpressure). With limit_bytes > 0, a local write that
 * finds more than limit_bytes of live (not yet compacted) log waits until
 * compaction brings the log under the limit, at most max_wait_ms, once per
 * write; abase_put and abase_write_batch (local) do it themselves,
 * abase_stall is for a caller about to write received records.
 * abase_stall_waiters waits (at most timeout_ms) until at least `at_least`
 * writes are stalled and returns how many are. */
int abase_db_set_stall(abase_db *db, uint64_t limit_bytes, uint64_t max_wait_ms);
void abase_stall(abase_db *db);
uint32_t abase_stall_waiters(abase_db *db, uint32_t at_least, uint64_t timeout_ms);
int abase_db_stats(abase_db *db, abase_stats *out);
int abase_db_clock(abase_db *db, uint64_t *out);
int abase_db_clock_now(abase_db *db, int64_t wall_ms, uint64_t *out);
int abase_db_clock_update(abase_db *db, uint64_t remote, int64_t wall_ms,
                          uint64_t max_skew_ms, uint64_t *out);
/* Raise the clock to at least `seen`, without a skew check (our own past). */
int abase_db_clock_observe(abase_db *db, uint64_t seen);

/* A local put or delete in one call: issues the timestamp, appends, indexes,
 * and (durability sync) waits for the group commit. Returns the packed hlc
 * (> 0) or a negative status. value may be NULL when vlen is 0. */
int64_t abase_put(abase_db *db, uint32_t ns, int op, const uint8_t *key,
                  size_t klen, const uint8_t *value, size_t vlen,
                  int64_t wall_ms);

/* abase_put for a caller that holds an interpreter lock and must not block
 * in it: ABASE_EWOULDBLOCK, with nothing written, when the put would wait
 * for the lock, create a segment or sync; then call abase_put. */
int64_t abase_put_nowait(abase_db *db, uint32_t ns, int op, const uint8_t *key,
                         size_t klen, const uint8_t *value, size_t vlen,
                         int64_t wall_ms);

/* Append n records as one atomic batch.
 *   ops[i], nss[i]: op and namespace of record i
 *   blob, lens: key i then value i, concatenated; lens[2i] = key length,
 *               lens[2i+1] = value length
 *   hlcs, nodes: NULL for local writes (timestamps are issued in order);
 *               else the records' own timestamps (replication)
 *   base_hlcs, base_nodes: with hlcs, the timestamp of the key's version in
 *               the store (0, 0: none), used to decide dominance
 *   modes: with hlcs, per record ABASE_MODE_LWW (skip a record that is not
 *          newer than the key's visible version) or ABASE_MODE_MERGE (skip
 *          only an exact duplicate: same timestamp and same value)
 *   out_status: with hlcs, per record 1 appended, 0 skipped
 *   flags: NULL, or per record extra flags: ABASE_F_CHECKPOINT, ABASE_F_TTL
 *          (a put whose value starts with its expire_at) or, for local
 *          writes, ABASE_F_TTL_RELATIVE (a put whose value starts with a
 *          ttl in ms: written as ABASE_F_TTL with expire_at = the issued
 *          timestamp's physical ms + ttl, saturating); a TTL flag on
 *          anything but a put of at least 8 bytes is ABASE_EINVAL
 * Returns the last hlc issued or appended (> 0), 0 if all were skipped, or a
 * negative status. */
int64_t abase_write_batch(abase_db *db, uint32_t n, const uint8_t *ops,
                          const uint32_t *nss, const uint8_t *blob,
                          const uint32_t *lens, const uint64_t *hlcs,
                          const uint32_t *nodes, const uint64_t *base_hlcs,
                          const uint32_t *base_nodes, const uint8_t *modes,
                          uint8_t *out_status, const uint8_t *flags,
                          int64_t wall_ms);

/* One record received from another replica, for abase_apply_batch. */
typedef struct abase_apply_rec {
    const uint8_t *key;
    const uint8_t *value;  /* may be NULL when vlen is 0 */
    uint64_t hlc;          /* the record's own timestamp */
    uint64_t base_hlc;     /* with base_known: the store's version of the key */
    uint64_t prev_hlc;     /* out, when appended: the key's newest version before it */
    uint64_t prev_expire_at; /* out, when appended: that version's expiry (ABASE_F_TTL), 0: none */
    uint32_t klen, vlen;   /* a delete has no value (vlen 0) */
    uint32_t node;
    uint32_t ns;           /* an LWW namespace */
    uint32_t base_node;
    uint32_t prev_node;
    uint8_t op;            /* ABASE_OP_PUT or ABASE_OP_DELETE */
    uint8_t base_known;    /* in: base_kind/hlc/node hold the store's version */
    uint8_t base_kind;     /* 0: the store holds none; ABASE_OP_PUT a value, ABASE_OP_DELETE a tombstone */
    uint8_t status;        /* out: ABASE_APPLY_SKIPPED, _APPENDED or _NEEDBASE */
    uint8_t prev_kind;     /* out, when appended: 0 none, else the op of the newest version before it */
} abase_apply_rec;

/* Append records received from another replica into LWW namespaces as one
 * atomic batch, each with its own timestamp (apply.c). A record is skipped
 * when the key holds a version with the same or a newer timestamp (log or
 * store); an appended record is flagged DOMINANT. When a key's log versions
 * cannot decide and its record lacks base_known, the call returns
 * ABASE_NEEDBASE with those records' status ABASE_APPLY_NEEDBASE, nothing
 * appended and the clock untouched: look their store versions up and call
 * again (hold whatever keeps the store from changing across both calls).
 * Otherwise the clock receives the newest timestamp first (ABASE_ESKEW, with
 * nothing appended, past max_skew_ms; wall_ms as for abase_hlc_now), then the
 * records are appended and, with durability sync, synced. Returns how many
 * were appended (>= 0) or a negative status. */
int64_t abase_apply_batch(abase_db *db, uint32_t n, abase_apply_rec *recs, int64_t wall_ms,
                          uint64_t max_skew_ms);

/* Wait until everything appended so far is on disk (fdatasync, shared by
 * concurrent callers). */
int abase_sync(abase_db *db);

/* Read the visible version of (ns, key) as of (at_hlc, at_node) (0, 0:
 * latest).
 * LWW mode: returns the value length (>= 0) and copies the value into buf
 *   when the winner is a put decided by the log alone; ABASE_EXPIRES when
 *   that put has a TTL (its value, without the expire_at prefix, in buf,
 *   length in info->needed, expire_at in info->expire_at: the caller
 *   compares it with its clock); ABASE_DELETED for a
 *   tombstone decided by the log; ABASE_NOTFOUND when the log has no
 *   version; ABASE_NEEDBASE when the store's version may be newer: the
 *   log's best candidate is in info and buf (value length in info->needed,
 *   its expiry in info->expire_at).
 * MERGE mode: copies the versions needed to resolve the key into buf as
 *   entries of [u8 op][u8 flags][u16 0][u32 vlen][u64 hlc][u32 node]
 *   [u32 0][value, padded to 8], newest first, ending after a CHECKPOINT
 *   or a DOMINANT delete without a value (a reset; info->complete = 1) or
 *   at the end of the log's versions
 *   (complete = 0: fold over the store's base); returns the bytes used and
 *   sets info->nrecords.
 * ABASE_ETOOSMALL sets info->needed. */
int64_t abase_get(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                  uint64_t at_hlc, uint32_t at_node, int mode, uint8_t *buf,
                  size_t cap, abase_getinfo *info);

/* abase_get that returns ABASE_EWOULDBLOCK instead of waiting for the lock. */
int64_t abase_get_nowait(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                         uint64_t at_hlc, uint32_t at_node, int mode, uint8_t *buf,
                         size_t cap, abase_getinfo *info);

/* *addr = address of the newest live record of (ns, key), 0 if the log has
 * none. Any append to the key, or compaction of its versions, changes it.
 * Returns ABASE_OK or a negative status. */
int abase_head(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, uint64_t *addr);

/* Newest record timestamp of (ns, key) in the log, any op: 1 found, 0 not,
 * or a negative status. */
int abase_newest(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                 uint64_t *hlc, uint32_t *node);

/* Key-ordered scans of the keys the log holds for one namespace.
 * abase_scan_open copies the keys in [start, stop) (NULL: unbounded) that
 * begin with prefix, with the address of each key's newest record, into a
 * sorted private list. abase_scan_next resolves up to max_items of them,
 * from those records back (so versions appended after the open are not
 * seen: take the snapshot before opening), into buf as entries of
 *   [u32 klen][u32 vlen][i32 status][u32 0][u64 hlc][u32 node][u32 op]
 *   [u64 expire_at][key][value], each padded to 8
 * where status is the abase_get LWW result for the key (>= 0: a value;
 * ABASE_EXPIRES, ABASE_DELETED, ABASE_NOTFOUND, ABASE_NEEDBASE), the value
 * never includes a TTL prefix and expire_at is the winner's expiry (0:
 * none); in MERGE mode values are
 * left out (vlen 0) and status is ABASE_NEEDBASE for every key. Returns
 * bytes used, 0 at the end. */
int abase_scan_open(abase_db *db, uint32_t ns, const uint8_t *start,
                    size_t start_len, int has_start, const uint8_t *stop,
                    size_t stop_len, int has_stop, const uint8_t *prefix,
                    size_t prefix_len, int reverse, abase_scan **out);
int64_t abase_scan_next(abase_scan *scan, uint64_t at_hlc, uint32_t at_node,
                        int mode, uint32_t max_items, uint8_t *buf,
                        size_t cap, uint32_t *count);
/* abase_scan_open that also resolves each key (LWW) as of (at_hlc, at_node)
 * while it reads the records, and copies each key's entry, value included,
 * when the live log's bytes are at most copy_limit: abase_scan_next then
 * copies entries out without the lock and without reading the log again
 * (its at_hlc, at_node are not used; MERGE mode is ABASE_EINVAL). A key
 * whose newest record is already compacted is left out (it is in the
 * store). The scan holds about 40 + klen + vlen (each padded to 8) + 24
 * bytes per key until it is freed. Above copy_limit it behaves as
 * abase_scan_open. */
int abase_scan_open_at(abase_db *db, uint32_t ns, const uint8_t *start,
                       size_t start_len, int has_start, const uint8_t *stop,
                       size_t stop_len, int has_stop, const uint8_t *prefix,
                       size_t prefix_len, int reverse, uint64_t at_hlc,
                       uint32_t at_node, uint64_t copy_limit, abase_scan **out);
uint64_t abase_scan_count(abase_scan *scan);
void abase_scan_free(abase_scan *scan);

/* Segments, for the compactor. */
int abase_seal(abase_db *db);  /* seal the active segment if it holds records */

/* Fault in up to max_bytes of the active segment past its last record, so
 * that appends there do not each take a page fault (MADV_POPULATE_WRITE,
 * once; the tail keeper below does it continuously). Returns the bytes
 * populated, 0 when there was nothing to do, the kernel cannot, or the
 * durability is "sync" (populated pages count as dirty for fdatasync). */
uint64_t abase_prefault(abase_db *db, uint64_t max_bytes);

/* The tail keeper (tail.c): a thread that keeps `window` bytes of the
 * active segment from the last record on mapped writable
 * (MADV_POPULATE_WRITE), renewing them as appends advance, when a segment
 * starts and after the kernel wrote them back, so that appends do not take
 * the page faults. Records are written as before (durability unchanged).
 * Not under durability "sync" (populated pages count as dirty for
 * fdatasync): ABASE_EINVAL, as for a second start or a window of 0.
 * Stopped by abase_db_close. */
typedef struct abase_tail_info {
    uint32_t running;   /* 1 while the keeper thread runs */
    uint32_t supported; /* 0 once the kernel refused MADV_POPULATE_WRITE */
    uint64_t window;    /* bytes kept populated ahead of the last record */
    uint64_t rounds;    /* rounds the keeper finished */
    uint64_t populated; /* bytes the keeper populated (renewals included) */
    uint64_t filled_to; /* address (segment << 32 | offset) populated up to */
} abase_tail_info;
int abase_tail_start(abase_db *db, uint64_t window);
int abase_tail_info_get(abase_db *db, abase_tail_info *out);
/* Wake the keeper and wait until it has finished a whole round begun after
 * this call, at most timeout_ms: ABASE_OK, ABASE_EAGAIN on timeout,
 * ABASE_EINVAL if no keeper runs. For tests and tools. */
int abase_tail_sync(abase_db *db, uint32_t timeout_ms);
/* Fills up to cap entries; returns the number of live segments (may be
 * more than cap) or a negative status. */
int64_t abase_segments(abase_db *db, abase_segstat *out, uint32_t cap);
/* Whether (seg_no, offset) is a position the log really has: ABASE_OK for
 * a record boundary of a live segment (offset 0: its first record) or the
 * end of the log, ABASE_NOTFOUND when the segment was compacted away,
 * ABASE_EINVAL for any other position. Proven by walking the segment's
 * records from its header (see feed.c), never by the bytes at the
 * position. */
int abase_log_check(abase_db *db, uint32_t seg_no, uint64_t offset);
/* Copy whole records of sealed segment seg_no from *offset into buf, raw
 * as on disk (40-byte header, key, value, padding); advances *offset.
 * Returns bytes copied, 0 at the end of the segment. */
int64_t abase_segment_read(abase_db *db, uint32_t seg_no, uint64_t *offset,
                           uint8_t *buf, size_t cap);
/* The change feed: copy whole records from position (*seg_no, *offset) on,
 * raw as on disk, from one segment per call (the active one included).
 * On return *seg_no and *offset say where the copied bytes start (a position
 * at the end of a sealed segment moves to the start of the next one).
 * Returns bytes copied, 0 at the end of the log, ABASE_NOTFOUND when the
 * position lies in history already compacted away, ABASE_EINVAL for a
 * position outside the log, ABASE_ETOOSMALL when the first record does not
 * fit in cap. A position must have been checked with abase_log_check or
 * returned by this call (lengths are bounds-checked either way). A batch's
 * records are appended under one lock hold, so a call never sees part of
 * one. */
int64_t abase_log_read(abase_db *db, uint32_t *seg_no, uint64_t *offset,
                       uint8_t *buf, size_t cap);
/* Bytes of records from position (seg_no, offset) to the end of the log,
 * or a negative status. */
int64_t abase_log_lag(abase_db *db, uint32_t seg_no, uint64_t offset);

/* Mark every segment numbered <= seg_no as compacted: reads stop seeing
 * versions in them at once. Then abase_retire_step removes index entries
 * whose newest version was in those segments, about `budget` records per
 * call (returns 1 while there is more to do), and abase_segment_drop unmaps
 * and unlinks the files. */
int abase_compacted_through(abase_db *db, uint32_t seg_no);

/* Folding sealed segments, ordered for the store. abase_fold_open sorts the
 * records of the n_segs consecutive sealed segments from first_no on by
 * (namespace, key, newest timestamp first), so each key's versions from
 * all of them come together;
 * abase_fold_next emits them into buf as entries of
 *   [u32 ns][u16 klen][u8 op][u8 flags][u32 vlen][u32 count][u64 hlc]
 *   [u32 node][u32 0][key, padded to 8][stored value, padded to 8]
 * where, for a namespace listed in lww_ns (sorted ascending), only the
 * newest record of each key is emitted (count = how many records the key
 * had), and stored value = kind u8 (1 value, 2 tombstone) | hlc u64 |
 * node u32 | value, the store's encoding (a put flagged TTL: kind 0x41,
 * whose value keeps its expire_at prefix); for other namespaces every
 * record is emitted with its raw value and count 1. Returns bytes used,
 * 0 at the end; *items = entries written. */
typedef struct abase_fold abase_fold;
int abase_fold_open(abase_db *db, uint32_t first_no, uint32_t n_segs, const uint32_t *lww_ns,
                    uint32_t n_lww, abase_fold **out);
int64_t abase_fold_next(abase_fold *f, uint8_t *buf, size_t cap, uint32_t *items);
void abase_fold_free(abase_fold *f);
int abase_retire_step(abase_db *db, uint32_t seg_no, uint64_t *offset,
                      uint32_t budget);
int abase_segment_drop(abase_db *db, uint32_t seg_no);

/* Walk every live record and check crcs and index agreement; returns the
 * number of problems found, details of the first in the error info. */
int64_t abase_check(abase_db *db);

/* What abase_segment_verify found in the bytes of one segment file. */
typedef struct abase_verify {
    int status;             /* ABASE_OK: every byte checks; ABASE_ECORRUPT: see below */
    uint64_t good_end;      /* end of the last whole record (or whole batch) that
                               checks; 0 when the header itself is bad */
    uint64_t bad_offset;    /* where the first problem starts (the first record
                               of an unfinished batch, if it is in one) */
    uint64_t records;       /* records before good_end */
    uint64_t batch_records; /* records of the unfinished batch dropped with it */
    char why[128];
} abase_verify;

/* Check the bytes of segment file number `no` the way recovery does (the
 * header, every record's bounds and checksum, timestamps, batches, and
 * that only zeros follow the last record), with no engine: for repair and
 * for fuzzing. Never reads outside data[0, size). Returns ABASE_EINVAL for
 * bad arguments, else ABASE_OK with the findings in *out. */
int abase_segment_verify(const uint8_t *data, uint64_t size, uint32_t no, abase_verify *out);

/* The log side of the merge-namespace fast paths (merge_log.c). nowait:
 * ABASE_EWOULDBLOCK, nothing done, instead of waiting for the lock.
 * abase_merge_head: the key's newest live record address (0: none).
 * abase_merge_read: abase_get in MERGE mode as of now, plus the head
 *   address the versions were read from (under one lock hold).
 * abase_merge_walk: how many records a MERGE-mode read of the key walks,
 *   at most limit.
 * abase_merge_appends: how many records were appended since the database
 *   was opened (no head changes while it stays the same, but for compaction).
 * abase_issue: n local timestamps (packed hlcs), as a write would get.
 * abase_append_if: append n (1 or 2) local records of (ns, key), DOMINANT,
 *   as one batch, only if the key's head is still expect_head (else
 *   ABASE_ECONFLICT, nothing written); vals[i]/vlens[i]/ops[i]/hlcs[i]
 *   describe record i (hlcs[i] == 0: a timestamp is issued under the lock
 *   and written back), flags[i] may hold ABASE_F_CHECKPOINT; *out_addr is
 *   the key's new head. Always ABASE_EWOULDBLOCK under durability "sync"
 *   (the general path waits for the group commit). */
int abase_merge_head(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, int nowait,
                     uint64_t *head);
int64_t abase_merge_read(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, int nowait,
                         uint8_t *buf, size_t cap, abase_getinfo *info, uint64_t *head);
int64_t abase_merge_walk(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen, uint32_t limit);
int abase_merge_appends(abase_db *db, int nowait, uint64_t *out);
int abase_issue(abase_db *db, uint32_t n, int nowait, uint64_t *out);
int abase_append_if(abase_db *db, uint32_t ns, const uint8_t *key, size_t klen,
                    uint64_t expect_head, uint32_t n, const uint8_t *ops, const uint8_t *flags,
                    const uint8_t *const *vals, const uint32_t *vlens, uint64_t *hlcs,
                    int nowait, uint64_t *out_addr);

#endif /* ABASE_H */
