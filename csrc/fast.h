/*
 * fast.h: private header of the CPython-API extension abase_engine._fast.
 *
 * The extension is glue between Python and the C core (which cffi builds
 * and links once, as abase_engine._abase; _fast calls it by the function
 * addresses cffi gives it). One file per concern, all sharing the module
 * state declared here:
 *   fastcall.c        the module, FastPath (put, get, put_many, get_many of
 *                     one namespace), fold_split, scan_split
 *   fast_timestamp.c  Timestamp: an immutable (hlc, node) value the cyclic
 *                     GC does not track
 *   fast_store.c      StoreReader: per-thread py-lmdb read transactions
 *                     and the store lookup of a key the log does not hold
 *   fast_scan.c       ScanIter: a scan of an LWW namespace, the log's
 *                     chunks and a py-lmdb cursor merged in one C loop
 *   fast_batch.c      BatchBuffer: the records of a db.batch(), committed
 *                     with one call into the core
 *   fast_apply.c      ApplyPath: Engine.apply of records into LWW
 *                     namespaces, decoded in C, one call into the core
 * No file keeps global state: the types live in the module state.
 * Everything here runs with the GIL held unless a comment says otherwise.
 */
#ifndef ABASE_FAST_H
#define ABASE_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "abase.h"

/* ------------------------------------------------------ core signatures */

typedef int64_t (*put_fn)(abase_db *, uint32_t, int, const uint8_t *, size_t,
                          const uint8_t *, size_t, int64_t);
typedef int64_t (*get_fn)(abase_db *, uint32_t, const uint8_t *, size_t, uint64_t,
                          uint32_t, int, uint8_t *, size_t, abase_getinfo *);
typedef int64_t (*batch_fn)(abase_db *, uint32_t, const uint8_t *, const uint32_t *,
                            const uint8_t *, const uint32_t *, const uint64_t *,
                            const uint32_t *, const uint64_t *, const uint32_t *,
                            const uint8_t *, uint8_t *, const uint8_t *, int64_t);
typedef int64_t (*scan_next_fn)(abase_scan *, uint64_t, uint32_t, int, uint32_t,
                                uint8_t *, size_t, uint32_t *);
typedef void (*scan_free_fn)(abase_scan *);

/* ------------------------------------------------------ module state */

typedef struct {
    PyTypeObject *timestamp_type;
    PyTypeObject *fastpath_type;
    PyTypeObject *reader_type;
    PyTypeObject *scan_type;
    PyTypeObject *batch_type;
} fast_state;

/* The state of the module that defined `tp` (one of the types above). */
fast_state *fast_state_of(PyTypeObject *tp);

/* ------------------------------------------------------ stored versions */

/* The store's encoding (store.py): kind u8 | hlc u64 | node u32 [| anchor
 * hlc u64 | anchor node u32] | bytes, little-endian. */
#define STORED_VALUE 1
#define STORED_TOMBSTONE 2
#define STORED_HEADER 13
/* Kind bit: an expire_at u64 follows the header (LWW; store.py). A VALUE
 * with it is not served by the C lookups of compacted keys (fastcall.c
 * sends it to the general path); scans check it (fast_scan.c). */
#define STORED_EXPIRES 0x40

/* The value part of a stored VALUE version `raw` (at least STORED_HEADER
 * bytes): a new reference, or NULL with an exception. Consumes `raw`,
 * reusing it when nothing else holds it. */
PyObject *fast_strip_header(PyObject *raw);

/* ------------------------------------------------------ FastPath */

/* One namespace's fast path (fastcall.c). Shared so that BatchBuffer and
 * ScanIter can call the core through it and see when it is detached. */
typedef struct {
    PyObject_HEAD
    abase_db *db; /* NULL once detached (engine closed): take the general path */
    put_fn put, put_nowait;
    get_fn get, get_nowait;
    batch_fn write_batch;
    uint32_t ns;
    uint32_t node_id;
    char enabled;           /* cleared while writes need the general path */
    char store_empty;       /* the store holds nothing of this namespace */
    PyTypeObject *ts_type;  /* the module's Timestamp */
    PyObject *slow_put;     /* (key, value) -> Timestamp */
    PyObject *slow_get;     /* (key, default=None, *, at=None) -> value */
    PyObject *slow_put_many;/* (pairs) -> Timestamp | None; NULL: no put_many */
    PyObject *store_get;    /* (key, default) -> value, for a key the log lacks */
    PyObject *fail;         /* (status, what) -> exception instance */
    PyObject *reader;       /* StoreReader, or NULL: store_get answers every miss */
    PyObject *dbi;          /* the namespace's py-lmdb database handle (with reader) */
} FastPath;

/* Whether the fast path may call the core (enabled and not detached). */
static inline int fast_usable(FastPath *fp) { return fp->enabled && fp->db != NULL; }

/* Raise the exception fp->fail maps `rc` to; returns NULL. */
PyObject *fast_raise_status(FastPath *fp, int64_t rc, const char *what);

/* ------------------------------------------------------ Timestamp */

/* A new Timestamp (a new reference, or NULL with an exception). */
PyObject *fast_ts_new(PyTypeObject *tp, uint64_t hlc, uint32_t node);
int fast_timestamp_init(PyObject *module, fast_state *st);
/* The (hlc, node) of a Timestamp (the caller checked its type). */
void fast_ts_read(PyObject *ts, uint64_t *hlc, uint32_t *node);

/* ------------------------------------------------------ StoreReader */

/* Outcome of fast_store_get. */
#define STORE_FOUND 1      /* *raw: the stored version (a new bytes reference) */
#define STORE_MISSING 0    /* the store holds no version of the key */
#define STORE_FAILED (-1)  /* an exception is set */
#define STORE_UNAVAILABLE (-2) /* closed, or in use by this thread: no exception;
                                * the caller takes the general path */

/* The encoded stored version of a non-empty key in database dbi, read
 * through the calling thread's cached read transaction of `reader` (a
 * StoreReader). May wait (GIL released) while the map grows. */
int fast_store_get(PyObject *reader, PyObject *dbi, PyObject *key, PyObject **raw);
/* Whether the exception set is one py-lmdb raises (lmdb.Error): the read
 * should be retried on the general path, which reports it properly. */
int fast_store_error_is_lmdb(PyObject *reader);
int fast_store_init(PyObject *module, fast_state *st);

/* ------------------------------------------------------ ScanIter, BatchBuffer */

int fast_scan_init(PyObject *module, fast_state *st);
int fast_batch_init(PyObject *module, fast_state *st);
/* ApplyPath (fast_apply.c): Engine.apply into LWW namespaces in one core call. */
int fast_apply_init(PyObject *module, fast_state *st);

#endif
