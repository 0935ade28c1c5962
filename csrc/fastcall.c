/*
 * fastcall.c: the CPython-API fast path for the engine's hot calls.
 *
 * The C core is bound through cffi (abase_engine._abase). A cffi call costs
 * an argument tuple, per-argument conversion and a release and re-take of
 * the GIL, several times the ~100 ns a put or a log-resident get does in C,
 * and while another thread (the compactor) wants the GIL, every release
 * becomes a thread switch. This module is only glue for the calls a program
 * makes millions of times: put, get, put_many and get_many of one
 * namespace. It takes the core's function addresses from cffi, so the core
 * is compiled and linked once, and it:
 *   - takes exact bytes arguments and nothing else; any other argument,
 *     keyword or state goes to the general Python path given at creation;
 *   - calls the _nowait variants with the GIL held, and only when they
 *     report ABASE_EWOULDBLOCK (lock busy, new segment, sync) releases the
 *     GIL and calls the blocking variant;
 *   - builds the result (bytes, a Timestamp) directly.
 * Errors are turned into exceptions by the Python callable `fail`, so the
 * mapping from status to exception stays in log.py.
 *
 * Two module functions decode the buffers the core fills for the compactor
 * (fold_split) and for scans (scan_split) into Python objects, a loop that
 * cost about 1-2 us a record in Python.
 */

#include "fast.h"

#include <structmember.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crdt_py.h"

/* Values up to this size are read into a stack buffer, then copied once
 * into the result; larger ones are read straight into a new bytes object. */
#define SMALL_VALUE 1024

/* ------------------------------------------------------------ helpers */

PyObject *fast_raise_status(FastPath *self, int64_t rc, const char *what)
{
    PyObject *exc = PyObject_CallFunction(self->fail, "Ls", (long long)rc, what);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *make_ts(FastPath *self, int64_t hlc)
{
    return fast_ts_new(self->ts_type, (uint64_t)hlc, self->node_id);
}

/* ------------------------------------------------------------ put */

/* The ttl in ms of a plain `ttl=` argument (an int or float of seconds,
 * > 0, at most 10^12 s; a fraction of a ms rounds up, as ttl.py does), or 0:
 * anything else, which the general path checks (and refuses). */
static uint64_t plain_ttl_ms(PyObject *ttl)
{
    if (PyLong_CheckExact(ttl)) {
        int overflow;
        long long t = PyLong_AsLongLongAndOverflow(ttl, &overflow);
        if (overflow || t <= 0 || t > 1000000000000LL)
            return 0;
        return (uint64_t)t * 1000u;
    }
    if (PyFloat_CheckExact(ttl)) {
        double ms = PyFloat_AS_DOUBLE(ttl) * 1000.0;
        if (!(ms > 0.0) || !(ms <= 1e15))
            return 0; /* also NaN */
        uint64_t m = (uint64_t)ms;
        if ((double)m < ms)
            m++;
        return m ? m : 1;
    }
    return 0;
}

/* The expire_at in ms of a plain `expire_at=` argument (an exact int in
 * [0, 2**63 - 1]; 0 is written as 1, as ttl.py does), or 0: anything else
 * (a Timestamp, a bad value), which the general path takes. */
static uint64_t plain_expire_at(PyObject *expire_at)
{
    if (!PyLong_CheckExact(expire_at))
        return 0;
    int overflow;
    long long t = PyLong_AsLongLongAndOverflow(expire_at, &overflow);
    if (overflow || t < 0)
        return 0;
    return t ? (uint64_t)t : 1;
}

/* put(key, value, ttl=seconds) and put(key, value, expire_at=ms) in one
 * call into the core: the record goes through abase_write_batch flagged
 * ABASE_F_TTL_RELATIVE (ms = the ttl, which the core makes an expire_at on
 * the timestamp it issues) or ABASE_F_TTL (ms = the expire_at). NULL
 * without an exception: the general path must take it. */
static PyObject *put_ttl(FastPath *self, PyObject *key, PyObject *value, uint8_t flag, uint64_t ttl_ms)
{
    size_t kl = (size_t)PyBytes_GET_SIZE(key), vl = (size_t)PyBytes_GET_SIZE(value);
    if (kl > ABASE_MAX_KEY || vl > ABASE_MAX_VALUE - ABASE_TTL_PREFIX)
        return NULL; /* the general path raises the size error */
    uint8_t *blob = malloc(kl + ABASE_TTL_PREFIX + vl + 1);
    if (!blob)
        return PyErr_NoMemory();
    memcpy(blob, PyBytes_AS_STRING(key), kl);
    for (unsigned i = 0; i < ABASE_TTL_PREFIX; i++) /* little-endian u64 */
        blob[kl + i] = (uint8_t)(ttl_ms >> (8 * i));
    memcpy(blob + kl + ABASE_TTL_PREFIX, PyBytes_AS_STRING(value), vl);
    uint8_t op = ABASE_OP_PUT;
    uint32_t ns = self->ns, lens[2] = {(uint32_t)kl, (uint32_t)(vl + ABASE_TTL_PREFIX)};
    abase_db *db = self->db;
    batch_fn wb = self->write_batch;
    int64_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = wb(db, 1, &op, &ns, blob, lens, NULL, NULL, NULL, NULL, NULL, NULL, &flag, -1);
    Py_END_ALLOW_THREADS
    free(blob);
    if (rc > 0)
        return make_ts(self, rc);
    if (rc == ABASE_EAGAIN) /* clock exhausted: the general path waits it out */
        return NULL;
    return fast_raise_status(self, rc, "put");
}

static PyObject *fp_put(FastPath *self, PyObject *const *args, Py_ssize_t nargsf,
                        PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 2 && kwnames && PyTuple_GET_SIZE(kwnames) == 1 && fast_usable(self) &&
        PyBytes_CheckExact(args[0]) && PyBytes_CheckExact(args[1])) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, 0);
        uint8_t flag = 0;
        uint64_t ms = 0;
        if (PyUnicode_CompareWithASCIIString(kw, "ttl") == 0) {
            flag = ABASE_F_TTL_RELATIVE;
            ms = plain_ttl_ms(args[2]);
        } else if (PyUnicode_CompareWithASCIIString(kw, "expire_at") == 0) {
            flag = ABASE_F_TTL;
            ms = plain_expire_at(args[2]);
        }
        if (ms) {
            PyObject *ts = put_ttl(self, args[0], args[1], flag, ms);
            if (ts || PyErr_Occurred())
                return ts;
        }
    }
    if (nargs != 2 || kwnames || !fast_usable(self) || !PyBytes_CheckExact(args[0]) ||
        !PyBytes_CheckExact(args[1]))
        return PyObject_Vectorcall(self->slow_put, args, nargsf, kwnames);
    const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *v = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    size_t kl = (size_t)PyBytes_GET_SIZE(args[0]), vl = (size_t)PyBytes_GET_SIZE(args[1]);
    abase_db *db = self->db;
    int64_t rc = self->put_nowait(db, self->ns, ABASE_OP_PUT, k, kl, v, vl, -1);
    if (rc == ABASE_EWOULDBLOCK) {
        put_fn put = self->put;
        uint32_t ns = self->ns;
        Py_BEGIN_ALLOW_THREADS
        rc = put(db, ns, ABASE_OP_PUT, k, kl, v, vl, -1);
        Py_END_ALLOW_THREADS
    }
    if (rc > 0)
        return make_ts(self, rc);
    if (rc == ABASE_EAGAIN) /* clock exhausted: the general path waits it out */
        return PyObject_Vectorcall(self->slow_put, args, nargsf, kwnames);
    return fast_raise_status(self, rc, "put");
}

/* ------------------------------------------------------------ get */

/* One log read of a non-empty exact-bytes key. Returns a new reference to
 * the value, or NULL with *rc set to the status (no exception) when the log
 * did not produce a value, or NULL with an exception set. */
/* The time an expiry is judged at for a read of the latest value, as
 * KeyReader does it (ttl.py): the HLC's physical clock, the real wall clock
 * (the fast path runs only with it) or the clock's last timestamp (`clock`,
 * packed) when that is ahead. */
static uint64_t now_ms(uint64_t clock)
{
    struct timespec ts;
    uint64_t wall = 0;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && ts.tv_sec >= 0)
        wall = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    uint64_t hlc_ms = clock >> ABASE_LOGICAL_BITS;
    return wall > hlc_ms ? wall : hlc_ms;
}

static PyObject *log_value(FastPath *self, PyObject *key, int64_t *rc, uint64_t *clock)
{
    const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(key);
    size_t kl = (size_t)PyBytes_GET_SIZE(key);
    abase_db *db = self->db;
    uint32_t ns = self->ns;
    uint8_t small[SMALL_VALUE];
    abase_getinfo info;
    info.clock = 0; /* set by an LWW read that reaches the index */
    int64_t n = self->get_nowait(db, ns, k, kl, 0, 0, ABASE_MODE_LWW, small, sizeof(small), &info);
    if (n == ABASE_EWOULDBLOCK) {
        get_fn get = self->get;
        Py_BEGIN_ALLOW_THREADS
        n = get(db, ns, k, kl, 0, 0, ABASE_MODE_LWW, small, sizeof(small), &info);
        Py_END_ALLOW_THREADS
    }
    if (n >= 0)
        return PyBytes_FromStringAndSize((const char *)small, (Py_ssize_t)n);
    *clock = info.clock;
    if (n == ABASE_EXPIRES && info.needed <= sizeof(small)) {
        /* a value with an expiry (a larger one takes the general path) */
        if (info.expire_at <= now_ms(info.clock)) {
            *rc = ABASE_DELETED;
            return NULL;
        }
        return PyBytes_FromStringAndSize((const char *)small, (Py_ssize_t)info.needed);
    }
    while (n == ABASE_ETOOSMALL) {
        /* Large value: read it into a bytes object of the reported size; if
         * it grew meanwhile, try again with the new size. */
        if (info.needed > (uint64_t)PY_SSIZE_T_MAX)
            return PyErr_NoMemory();
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)info.needed);
        if (!out)
            return NULL;
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        size_t cap = (size_t)info.needed;
        get_fn get = self->get;
        Py_BEGIN_ALLOW_THREADS
        n = get(db, ns, k, kl, 0, 0, ABASE_MODE_LWW, dst, cap, &info);
        Py_END_ALLOW_THREADS
        if (n == (int64_t)cap)
            return out;
        if (n >= 0) {
            PyObject *shorter = PyBytes_FromStringAndSize((const char *)dst, (Py_ssize_t)n);
            Py_DECREF(out);
            return shorter;
        }
        Py_DECREF(out);
    }
    *rc = n;
    return NULL;
}

PyObject *fast_strip_header(PyObject *raw)
{
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (Py_REFCNT(raw) == 1 && PyBytes_CheckExact(raw)) {
        /* py-lmdb's fresh bytes, ours alone: move the value down and shrink
         * the object in place rather than allocate and copy a second one */
        char *p = PyBytes_AS_STRING(raw);
        memmove(p, p + STORED_HEADER, (size_t)(n - STORED_HEADER));
        if (_PyBytes_Resize(&raw, n - STORED_HEADER) < 0)
            return NULL; /* raw was freed */
        return raw;
    }
    PyObject *out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw) + STORED_HEADER, n - STORED_HEADER);
    Py_DECREF(raw);
    return out;
}

/* The value of a key the log does not hold, from the store through the
 * thread's cached read transaction (fast_store.c). New reference; NULL
 * with an exception; or NULL without one when the general path must
 * answer (a stored state or undecodable bytes, an LMDB error to report,
 * the store closing). */
static PyObject *store_value(FastPath *self, PyObject *key, PyObject *dflt, uint64_t clock)
{
    PyObject *raw = NULL;
    int rc = fast_store_get(self->reader, self->dbi, key, &raw);
    if (rc == STORE_MISSING) {
        Py_INCREF(dflt);
        return dflt;
    }
    if (rc == STORE_FOUND) {
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(raw);
        Py_ssize_t n = PyBytes_GET_SIZE(raw);
        PyObject *out = NULL;
        if (n >= STORED_HEADER && p[0] == STORED_VALUE)
            return fast_strip_header(raw); /* consumes raw */
        if (n >= STORED_HEADER && p[0] == STORED_TOMBSTONE) {
            Py_INCREF(dflt);
            out = dflt;
        } else if (n >= STORED_HEADER + 8 && p[0] == (STORED_VALUE | STORED_EXPIRES)) {
            /* a value with an expiry; an expired one the compactor dropped
             * (a tombstone with it) takes the general path, as do states */
            uint64_t expire_at;
            memcpy(&expire_at, p + STORED_HEADER, 8);
            if (expire_at <= now_ms(clock)) {
                Py_INCREF(dflt);
                out = dflt;
            } else {
                out = PyBytes_FromStringAndSize((const char *)p + STORED_HEADER + 8, n - STORED_HEADER - 8);
            }
        }
        Py_DECREF(raw);
        return out;
    }
    if (rc == STORE_FAILED && fast_store_error_is_lmdb(self->reader))
        PyErr_Clear();
    return NULL;
}

/* The value of key or dflt, resolving what the log cannot decide through
 * the store or the general path. New reference, or NULL with an exception. */
static PyObject *get_one(FastPath *self, PyObject *key, PyObject *dflt)
{
    int64_t rc = 0;
    uint64_t clock = 0;
    PyObject *v = log_value(self, key, &rc, &clock);
    if (v || PyErr_Occurred())
        return v;
    if (rc == ABASE_DELETED) {
        Py_INCREF(dflt);
        return dflt;
    }
    PyObject *args[2] = {key, dflt};
    if (rc == ABASE_NOTFOUND) {
        if (self->store_empty) {
            Py_INCREF(dflt);
            return dflt;
        }
        if (!self->reader)
            return PyObject_Vectorcall(self->store_get, args, 2, NULL);
        v = store_value(self, key, dflt, clock);
        if (v || PyErr_Occurred())
            return v;
    }
    return PyObject_Vectorcall(self->slow_get, args, 2, NULL);
}

static PyObject *fp_get(FastPath *self, PyObject *const *args, Py_ssize_t nargsf,
                        PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((nargs != 1 && nargs != 2) || kwnames || !fast_usable(self) || !PyBytes_CheckExact(args[0]) ||
        PyBytes_GET_SIZE(args[0]) == 0)
        return PyObject_Vectorcall(self->slow_get, args, nargsf, kwnames);
    return get_one(self, args[0], nargs == 2 ? args[1] : Py_None);
}

static PyObject *fp_get_many(FastPath *self, PyObject *keys)
{
    /* A private copy: the calls below can run Python code (the store, the
     * general path) or release the GIL, and the caller's list could change. */
    PyObject *seq = PySequence_List(keys);
    if (!seq)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (!out) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(seq, i), *v;
        if (fast_usable(self) && PyBytes_CheckExact(k) && PyBytes_GET_SIZE(k) > 0)
            v = get_one(self, k, Py_None);
        else
            v = PyObject_Vectorcall(self->slow_get, &k, 1, NULL);
        if (!v) {
            Py_DECREF(out);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    Py_DECREF(seq);
    return out;
}

/* ------------------------------------------------------------ put_many */

static PyObject *fp_put_many_one(FastPath *self, PyObject *pairs);

/* put_many(pairs, **options): with options (ttl=, expire_at=) the general
 * path writes the batch. */
static PyObject *fp_put_many(FastPath *self, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 1 && !kwnames)
        return fp_put_many_one(self, args[0]);
    if (!self->slow_put_many) {
        PyErr_SetString(PyExc_AttributeError, "put_many is only offered for the default namespace");
        return NULL;
    }
    return PyObject_Vectorcall(self->slow_put_many, args, nargsf, kwnames);
}

static PyObject *fp_put_many_one(FastPath *self, PyObject *pairs)
{
    if (!self->slow_put_many) {
        PyErr_SetString(PyExc_AttributeError, "put_many is only offered for the default namespace");
        return NULL;
    }
    if (!fast_usable(self) || !(PyList_CheckExact(pairs) || PyTuple_CheckExact(pairs)))
        return PyObject_CallOneArg(self->slow_put_many, pairs);
    PyObject *seq = PySequence_Fast(pairs, "");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    /* Every item an exact (bytes, bytes) tuple within the record limits, or
     * the whole batch goes to the general path, which says what is wrong. */
    size_t total = 0;
    uint64_t encoded = 0; /* bytes in the log; over ABASE_MAX_BATCH the general path refuses it */
    int plain = n > 0 && (uint64_t)n <= UINT32_MAX;
    for (Py_ssize_t i = 0; plain && i < n; i++) {
        PyObject *it = items[i];
        if (!PyTuple_CheckExact(it) || PyTuple_GET_SIZE(it) != 2) {
            plain = 0;
            break;
        }
        PyObject *k = PyTuple_GET_ITEM(it, 0), *v = PyTuple_GET_ITEM(it, 1);
        if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v) ||
            PyBytes_GET_SIZE(k) > ABASE_MAX_KEY || PyBytes_GET_SIZE(v) > ABASE_MAX_VALUE) {
            plain = 0;
            break;
        }
        total += (size_t)PyBytes_GET_SIZE(k) + (size_t)PyBytes_GET_SIZE(v);
        encoded += (ABASE_REC_HEADER_SIZE + (uint64_t)PyBytes_GET_SIZE(k) + (uint64_t)PyBytes_GET_SIZE(v) + 7) & ~(uint64_t)7;
        if (encoded > ABASE_MAX_BATCH) {
            plain = 0;
            break;
        }
    }
    if (!plain) {
        Py_DECREF(seq);
        return PyObject_CallOneArg(self->slow_put_many, pairs);
    }
    uint32_t count = (uint32_t)n;
    uint8_t *blob = malloc(total ? total : 1);
    uint32_t *lens = malloc(sizeof(uint32_t) * 2 * (size_t)count);
    uint32_t *nss = malloc(sizeof(uint32_t) * (size_t)count);
    uint8_t *ops = malloc(count);
    if (!blob || !lens || !nss || !ops) {
        free(blob), free(lens), free(nss), free(ops);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    size_t off = 0;
    for (uint32_t i = 0; i < count; i++) {
        PyObject *k = PyTuple_GET_ITEM(items[i], 0), *v = PyTuple_GET_ITEM(items[i], 1);
        size_t kl = (size_t)PyBytes_GET_SIZE(k), vl = (size_t)PyBytes_GET_SIZE(v);
        memcpy(blob + off, PyBytes_AS_STRING(k), kl);
        off += kl;
        memcpy(blob + off, PyBytes_AS_STRING(v), vl);
        off += vl;
        lens[2 * i] = (uint32_t)kl;
        lens[2 * i + 1] = (uint32_t)vl;
        nss[i] = self->ns;
        ops[i] = ABASE_OP_PUT;
    }
    Py_DECREF(seq);
    abase_db *db = self->db;
    batch_fn wb = self->write_batch;
    int64_t rc;
    Py_BEGIN_ALLOW_THREADS
    rc = wb(db, count, ops, nss, blob, lens, NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1);
    Py_END_ALLOW_THREADS
    free(blob), free(lens), free(nss), free(ops);
    if (rc > 0)
        return make_ts(self, rc);
    if (rc == ABASE_EAGAIN)
        return PyObject_CallOneArg(self->slow_put_many, pairs);
    return fast_raise_status(self, rc, "write batch");
}

/* ------------------------------------------------------------ fold_split */

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static size_t pad8(size_t n) { return (n + 7u) & ~(size_t)7u; }

/* Appends (key, data) to the list of namespace ns in the dict. */
static int add_pair(PyObject *pairs, uint32_t ns, PyObject *key, PyObject *data)
{
    PyObject *k = PyLong_FromUnsignedLong(ns);
    if (!k)
        return -1;
    PyObject *lst = PyDict_GetItemWithError(pairs, k);
    if (!lst) {
        if (PyErr_Occurred() || !(lst = PyList_New(0)) || PyDict_SetItem(pairs, k, lst) < 0) {
            Py_XDECREF(lst);
            Py_DECREF(k);
            return -1;
        }
        Py_DECREF(lst); /* the dict holds it */
    }
    Py_DECREF(k);
    PyObject *t = PyTuple_Pack(2, key, data);
    if (!t)
        return -1;
    int rc = PyList_Append(lst, t);
    Py_DECREF(t);
    return rc;
}

/* fold_split(data, items, lww_ids) -> (pairs, tombs, rest, nbytes)
 *
 * Splits one buffer (any object with the buffer protocol, read in place) of abase_fold_next entries (layout in abase.h) for the
 * compactor. An entry of a namespace in lww_ids whose record was DOMINANT
 * and whose key is not empty needs no look at the store: it goes to
 * pairs[ns] as (key, stored value), ready for a cursor putmulti, and if it
 * is a delete also to tombs as (ns, key, hlc, node). Every other entry goes
 * to rest as (ns, key, op, flags, count, hlc, node, data), for the Python
 * fold. nbytes: key + value bytes of the pairs. */
static PyObject *fold_split(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[1]) || !PyAnySet_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "fold_split(data: buffer, items: int, lww_ids: set)");
        return NULL;
    }
    unsigned long items = PyLong_AsUnsignedLong(args[1]);
    if (items == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *buf = (const uint8_t *)view.buf;
    size_t n = (size_t)view.len;
    PyObject *lww = args[2];
    PyObject *pairs = PyDict_New(), *tombs = PyList_New(0), *rest = PyList_New(0);
    if (!pairs || !tombs || !rest)
        goto fail;
    size_t off = 0;
    unsigned long long nbytes = 0;
    for (unsigned long i = 0; i < items; i++) {
        if (n - off < 32) {
            PyErr_Format(PyExc_ValueError, "fold entry %lu runs past the buffer", i);
            goto fail;
        }
        const uint8_t *e = buf + off;
        uint32_t ns = rd32(e), slen = rd32(e + 8), count = rd32(e + 12), node = rd32(e + 24);
        uint16_t klen = rd16(e + 4);
        uint8_t op = e[6], flags = e[7];
        uint64_t hlc = rd64(e + 16);
        size_t kpad = pad8(klen), spad = pad8(slen);
        if (n - off - 32 < kpad || n - off - 32 - kpad < spad) {
            PyErr_Format(PyExc_ValueError, "fold entry %lu runs past the buffer", i);
            goto fail;
        }
        PyObject *key = PyBytes_FromStringAndSize((const char *)e + 32, klen);
        PyObject *data = key ? PyBytes_FromStringAndSize((const char *)e + 32 + kpad, slen) : NULL;
        PyObject *nso = data ? PyLong_FromUnsignedLong(ns) : NULL;
        if (!nso) {
            Py_XDECREF(key);
            Py_XDECREF(data);
            goto fail;
        }
        int in_lww = PySet_Contains(lww, nso);
        int rc = in_lww < 0 ? -1 : 0;
        /* a TTL value goes to rest: the compactor decides whether it has
         * expired and indexes its expiry */
        if (rc == 0 && in_lww && (flags & ABASE_F_DOMINANT) && !(flags & ABASE_F_TTL) && klen > 0) {
            rc = add_pair(pairs, ns, key, data);
            nbytes += klen + slen;
            if (rc == 0 && op == ABASE_OP_DELETE) {
                PyObject *t = Py_BuildValue("(OOKI)", nso, key, (unsigned long long)hlc, node);
                rc = t ? PyList_Append(tombs, t) : -1;
                Py_XDECREF(t);
            }
        } else if (rc == 0) {
            PyObject *t = Py_BuildValue("(OOBBIKIO)", nso, key, op, flags, count,
                                        (unsigned long long)hlc, node, data);
            rc = t ? PyList_Append(rest, t) : -1;
            Py_XDECREF(t);
        }
        Py_DECREF(nso);
        Py_DECREF(key);
        Py_DECREF(data);
        if (rc < 0)
            goto fail;
        off += 32 + kpad + spad;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNNK)", pairs, tombs, rest, nbytes);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(pairs);
    Py_XDECREF(tombs);
    Py_XDECREF(rest);
    return NULL;
}

/* ------------------------------------------------------------ scan_split */

/* scan_split(data, items) -> [(key, status, value, hlc, node, op), ...]
 *
 * Decodes one buffer (read in place) of abase_scan_next entries (layout in
 * abase.h); value is None where the entry carries none (see log.py's
 * Log.scan). LWW scans of the engine are decoded by ScanIter
 * (fast_scan.c) instead. */
static PyObject *scan_split(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan_split(data: buffer, items: int)");
        return NULL;
    }
    Py_ssize_t items = PyLong_AsSsize_t(args[1]);
    if (items < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "negative item count");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *buf = (const uint8_t *)view.buf;
    size_t n = (size_t)view.len;
    PyObject *out = PyList_New(0);
    if (!out) {
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t off = 0;
    for (Py_ssize_t i = 0; i < items; i++) {
        if (n - off < 40) {
            PyErr_Format(PyExc_ValueError, "scan entry %zd runs past the buffer", i);
            Py_DECREF(out);
            PyBuffer_Release(&view);
            return NULL;
        }
        const uint8_t *e = buf + off;
        uint32_t klen = rd32(e), vlen = rd32(e + 4), node = rd32(e + 24), op = rd32(e + 28);
        int32_t status = (int32_t)rd32(e + 8);
        uint64_t hlc = rd64(e + 16);
        size_t kpad = pad8(klen), vpad = pad8(vlen);
        if (n - off - 40 < kpad || n - off - 40 - kpad < vpad) {
            PyErr_Format(PyExc_ValueError, "scan entry %zd runs past the buffer", i);
            Py_DECREF(out);
            PyBuffer_Release(&view);
            return NULL;
        }
        off += 40 + kpad + vpad;
        PyObject *value;
        if (status >= 0 || (status == ABASE_NEEDBASE && op != 0))
            value = PyBytes_FromStringAndSize((const char *)e + 40 + kpad, vlen);
        else
        {
            Py_INCREF(Py_None);
            value = Py_None;
        }
        PyObject *t = NULL;
        if (value)
            t = Py_BuildValue("(y#iNKII)", (const char *)e + 40, (Py_ssize_t)klen, (int)status,
                              value, (unsigned long long)hlc, node, op);
        if (!t || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            PyBuffer_Release(&view);
            return NULL;
        }
        Py_DECREF(t);
    }
    PyBuffer_Release(&view);
    return out;
}

/* ------------------------------------------------------------ the type */

static PyObject *fp_detach(FastPath *self, PyObject *Py_UNUSED(ignored))
{
    self->db = NULL;
    Py_RETURN_NONE;
}

static int read_addr(PyObject *seq, Py_ssize_t i, void **out)
{
    PyObject *o = PySequence_GetItem(seq, i);
    if (!o)
        return -1;
    void *p = PyLong_AsVoidPtr(o);
    Py_DECREF(o);
    if (!p) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null function address");
        return -1;
    }
    *out = p;
    return 0;
}

static int fp_init(FastPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"db", "functions", "ns", "ts_type", "node", "slow_put", "slow_get",
                             "slow_put_many", "store_get", "fail", "reader", "dbi", NULL};
    PyObject *db, *fns, *ts_type, *sp, *sg, *spm, *stg, *fail, *reader = Py_None, *dbi = Py_None;
    unsigned int ns;
    unsigned long node;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOIOkOOOOO|OO", kwlist, &db, &fns, &ns, &ts_type,
                                     &node, &sp, &sg, &spm, &stg, &fail, &reader, &dbi))
        return -1;
    fast_state *st = fast_state_of(Py_TYPE(self));
    if (!st)
        return -1;
    if (ts_type != (PyObject *)st->timestamp_type) {
        PyErr_SetString(PyExc_TypeError, "ts_type must be abase_engine.Timestamp");
        return -1;
    }
    if (node > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "node does not fit in 32 bits");
        return -1;
    }
    if (reader != Py_None && !PyObject_TypeCheck(reader, st->reader_type)) {
        PyErr_SetString(PyExc_TypeError, "reader must be a StoreReader or None");
        return -1;
    }
    if (!PyCallable_Check(sp) || !PyCallable_Check(sg) ||
        (spm != Py_None && !PyCallable_Check(spm)) || !PyCallable_Check(stg) ||
        !PyCallable_Check(fail)) {
        PyErr_SetString(PyExc_TypeError, "the general paths must be callables (slow_put_many may be None)");
        return -1;
    }
    if (spm == Py_None)
        spm = NULL;
    if (reader == Py_None)
        reader = dbi = NULL;
    if (!PySequence_Check(fns) || PySequence_Size(fns) != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "functions: addresses of put, put_nowait, get, get_nowait, write_batch");
        return -1;
    }
    void *p[5];
    for (Py_ssize_t i = 0; i < 5; i++)
        if (read_addr(fns, i, &p[i]) < 0)
            return -1;
    void *dbp = PyLong_AsVoidPtr(db);
    if (!dbp) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null database handle");
        return -1;
    }
    self->db = dbp;
    self->put = (put_fn)p[0];
    self->put_nowait = (put_fn)p[1];
    self->get = (get_fn)p[2];
    self->get_nowait = (get_fn)p[3];
    self->write_batch = (batch_fn)p[4];
    self->ns = ns;
    self->node_id = (uint32_t)node;
    self->enabled = 1;
    Py_INCREF(ts_type);
    Py_XSETREF(self->ts_type, (PyTypeObject *)ts_type);
    Py_INCREF(sp);
    Py_XSETREF(self->slow_put, sp);
    Py_INCREF(sg);
    Py_XSETREF(self->slow_get, sg);
    Py_XINCREF(spm);
    Py_XSETREF(self->slow_put_many, spm);
    Py_INCREF(stg);
    Py_XSETREF(self->store_get, stg);
    Py_INCREF(fail);
    Py_XSETREF(self->fail, fail);
    Py_XINCREF(reader);
    Py_XSETREF(self->reader, reader);
    Py_XINCREF(dbi);
    Py_XSETREF(self->dbi, dbi);
    return 0;
}

static int fp_traverse(FastPath *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->ts_type);
    Py_VISIT(self->slow_put);
    Py_VISIT(self->slow_get);
    Py_VISIT(self->slow_put_many);
    Py_VISIT(self->store_get);
    Py_VISIT(self->fail);
    Py_VISIT(self->reader);
    Py_VISIT(self->dbi);
    return 0;
}

static int fp_clear(FastPath *self)
{
    self->db = NULL;
    Py_CLEAR(self->ts_type);
    Py_CLEAR(self->slow_put);
    Py_CLEAR(self->slow_get);
    Py_CLEAR(self->slow_put_many);
    Py_CLEAR(self->store_get);
    Py_CLEAR(self->fail);
    Py_CLEAR(self->reader);
    Py_CLEAR(self->dbi);
    return 0;
}

static void fp_dealloc(FastPath *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    fp_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef fp_methods[] = {
    {"put", (PyCFunction)(void (*)(void))fp_put, METH_FASTCALL | METH_KEYWORDS,
     "put(key, value) -> Timestamp"},
    {"get", (PyCFunction)(void (*)(void))fp_get, METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None, *, at=None) -> value"},
    {"get_many", (PyCFunction)fp_get_many, METH_O, "get_many(keys) -> list"},
    {"put_many", (PyCFunction)(void (*)(void))fp_put_many, METH_FASTCALL | METH_KEYWORDS,
     "put_many(pairs, *, ttl=None, expire_at=None) -> Timestamp | None"},
    {"detach", (PyCFunction)fp_detach, METH_NOARGS,
     "Forget the database handle: later calls take the general path."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef fp_members[] = {
    {"store_empty", T_BOOL, offsetof(FastPath, store_empty), 0,
     "True while the store holds nothing of this namespace: a key the log lacks is absent."},
    {"enabled", T_BOOL, offsetof(FastPath, enabled), 0,
     "False: every call takes the general path (listeners, digests, a fake clock)."},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot fp_slots[] = {
    {Py_tp_doc, "Hot calls of one namespace, bypassing cffi; see fastcall.c."},
    {Py_tp_init, fp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, fp_dealloc},
    {Py_tp_traverse, fp_traverse},
    {Py_tp_clear, fp_clear},
    {Py_tp_methods, fp_methods},
    {Py_tp_members, fp_members},
    {0, NULL},
};

static PyType_Spec fp_spec = {
    .name = "abase_engine._fast.FastPath",
    .basicsize = sizeof(FastPath),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = fp_slots,
};

fast_state *fast_state_of(PyTypeObject *tp)
{
    /* a Python subclass has no module: its first base of ours has */
    for (PyTypeObject *t = tp; t; t = t->tp_base) {
        if (!PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE))
            continue;
        PyObject *m = PyType_GetModule(t);
        if (m)
            return (fast_state *)PyModule_GetState(m);
        PyErr_Clear();
    }
    PyErr_Format(PyExc_TypeError, "%.100s is not a type of abase_engine._fast", tp->tp_name);
    return NULL;
}

static int fast_exec(PyObject *m)
{
    fast_state *st = PyModule_GetState(m);
    PyObject *tp = PyType_FromModuleAndSpec(m, &fp_spec, NULL);
    if (!tp)
        return -1;
    st->fastpath_type = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(m, "FastPath", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    if (fast_timestamp_init(m, st) < 0 || fast_store_init(m, st) < 0 || fast_scan_init(m, st) < 0 ||
        fast_batch_init(m, st) < 0 || fast_apply_init(m, st) < 0)
        return -1;
    return crdt_module_exec(m); /* MergeLock, CrdtPath (crdt_py.c, crdt_path.c) */
}

static int fast_traverse(PyObject *m, visitproc visit, void *arg)
{
    fast_state *st = PyModule_GetState(m);
    if (st) {
        Py_VISIT(st->timestamp_type);
        Py_VISIT(st->fastpath_type);
        Py_VISIT(st->reader_type);
        Py_VISIT(st->scan_type);
        Py_VISIT(st->batch_type);
    }
    return 0;
}

static int fast_clear(PyObject *m)
{
    fast_state *st = PyModule_GetState(m);
    if (st) {
        Py_CLEAR(st->timestamp_type);
        Py_CLEAR(st->fastpath_type);
        Py_CLEAR(st->reader_type);
        Py_CLEAR(st->scan_type);
        Py_CLEAR(st->batch_type);
    }
    return 0;
}

static void fast_free(void *m)
{
    fast_clear((PyObject *)m);
}

static PyMethodDef fast_functions[] = {
    {"fold_split", (PyCFunction)(void (*)(void))fold_split, METH_FASTCALL,
     "fold_split(data, items, lww_ids) -> (pairs, tombs, rest, nbytes); see fastcall.c."},
    {"scan_split", (PyCFunction)(void (*)(void))scan_split, METH_FASTCALL,
     "scan_split(data, items) -> list of entries; see fastcall.c."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot fast_slots[] = {
    {Py_mod_exec, fast_exec},
    {0, NULL},
};

static struct PyModuleDef fast_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "abase_engine._fast",
    .m_doc = "CPython-API glue for the engine's hot calls (see csrc/fastcall.c).",
    .m_size = sizeof(fast_state),
    .m_methods = fast_functions,
    .m_slots = fast_slots,
    .m_traverse = fast_traverse,
    .m_clear = fast_clear,
    .m_free = fast_free,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    return PyModuleDef_Init(&fast_module);
}
