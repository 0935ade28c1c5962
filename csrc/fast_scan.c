/*
 * fast_scan.c: ScanIter, the scan of an LWW namespace in one C loop.
 *
 * A scan merges two key-ordered streams: the log's keys (abase_scan_next
 * fills a buffer with up to SCAN_CHUNK resolved entries at a time; layout
 * in abase.h) and the store's (a py-lmdb cursor iterator, driven through
 * tp_iternext, yielding (key, stored version) tuples). Each (key, value)
 * the caller sees is built once here: from the log buffer, or by replacing
 * the stored version in py-lmdb's own tuple with its value part when
 * nothing else holds that tuple. No Python frame runs per item.
 *
 * Rules (the same as scan.py's general path):
 *   - a key in the log whose status is a value wins; DELETED hides it;
 *     any other status (NEEDBASE, or NOTFOUND when its versions were
 *     compacted since the scan opened) is resolved by the Python callable
 *     `resolve`, which reads the store afresh;
 *   - a key only in the store is its stored value; a tombstone hides it; a
 *     stored version newer than the scan's timestamp raises
 *     SnapshotTooOldError, an unknown kind CorruptionError (both built by
 *     the Python callable `make_error`, as is EngineClosedError when the
 *     engine closes under the scan).
 *
 * The scan opens lazily: the first next() calls `opener`, which takes the
 * scan's timestamp (a pin), opens the log scan and the store cursor and
 * returns the plan (see scan.py), or an iterator to delegate to instead.
 * `on_close` (from the plan) runs exactly once, when the scan ends, fails,
 * is closed or is collected.
 *
 * Safety: abase_scan_next is called with the GIL held, after checking that
 * the FastPath is not detached (Engine.close detaches every fast path,
 * under the GIL, before it frees the log), so the log cannot be freed
 * under a chunk read; abase_scan_free touches only the scan's own memory.
 * Entries are bounds-checked against the bytes the core reported.
 */
#include "fast.h"

#include <stdlib.h>
#include <string.h>

#define SCAN_CHUNK 512
#define ENTRY_HEADER 40

enum { ST_UNOPENED, ST_OPEN, ST_DONE };

typedef struct {
    PyObject_HEAD
    int state;
    PyObject *opener;     /* () -> plan tuple | iterator; until opened */
    PyObject *fallback;   /* the iterator the opener chose instead, or NULL */
    FastPath *fp;         /* the log is open while fp->db != NULL */
    abase_scan *sc;       /* owned: freed with scan_free */
    scan_next_fn scan_next;
    scan_free_fn scan_free;
    uint8_t *buf;         /* the current chunk of log entries */
    size_t cap, used, off;
    uint32_t left;        /* entries of the chunk not yet parsed */
    int log_done;
    /* the current log entry (pointers into buf), when have_log */
    int have_log;
    const uint8_t *lkey, *lval;
    uint32_t lklen, lvlen, lnode, lop;
    int32_t lstatus;
    uint64_t lhlc, lexpire;
    PyObject *store_it;   /* py-lmdb iterator of (key, stored); NULL once done */
    PyObject *sitem;      /* the current store item, or NULL */
    PyObject *bound;      /* forward: stop (exclusive); reverse: start (inclusive); NULL: none */
    int reverse;
    uint64_t at_hlc;
    uint32_t at_node;
    PyObject *resolve;    /* (key, status, value, hlc, node, op) -> value | None */
    PyObject *make_error; /* (kind: str, key: bytes | None) -> exception */
    PyObject *on_close;   /* () -> None */
} ScanIter;

static int key_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl;
}

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static size_t pad8(size_t n) { return (n + 7u) & ~(size_t)7u; }

/* Raise the exception make_error(kind, key) builds; returns -1. */
static int raise_made(ScanIter *it, const char *kind, PyObject *key)
{
    PyObject *exc = PyObject_CallFunction(it->make_error, "sO", kind, key ? key : Py_None);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* Release everything the scan holds and run on_close once. Returns -1 if
 * on_close raised (the exception is set), else 0. */
static int scan_finish(ScanIter *it)
{
    if (it->state == ST_DONE)
        return 0;
    int was_open = it->state == ST_OPEN;
    it->state = ST_DONE;
    if (it->sc) {
        it->scan_free(it->sc);
        it->sc = NULL;
    }
    free(it->buf);
    it->buf = NULL;
    it->have_log = 0;
    it->log_done = 1;
    Py_CLEAR(it->sitem);
    Py_CLEAR(it->store_it);
    Py_CLEAR(it->opener);
    Py_CLEAR(it->fallback);
    PyObject *cb = it->on_close;
    it->on_close = NULL;
    int rc = 0;
    if (cb && was_open) {
        PyObject *r = PyObject_CallNoArgs(cb);
        if (!r)
            rc = -1;
        Py_XDECREF(r);
    }
    Py_XDECREF(cb);
    return rc;
}

/* Finish after an error: the error stays the one reported. */
static PyObject *scan_fail(ScanIter *it)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (scan_finish(it) < 0)
        PyErr_WriteUnraisable((PyObject *)it);
    PyErr_Restore(t, v, tb);
    return NULL;
}

static int addr_of(PyObject *o, void **out)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null address in a scan plan");
        return -1;
    }
    *out = p;
    return 0;
}

/* Take the plan the opener returned:
 * (scan, scan_next, scan_free, fastpath, store_iter | None, bound | None,
 *  reverse, at_hlc, at_node, resolve, make_error, on_close). */
static int take_plan(ScanIter *it, PyObject *plan)
{
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != 12) {
        PyErr_SetString(PyExc_TypeError, "scan opener must return a 12-tuple plan or an iterator");
        return -1;
    }
    PyObject **p = &PyTuple_GET_ITEM(plan, 0);
    /* on_close first: whatever fails below, the caller's cleanup runs */
    if (!PyCallable_Check(p[11]) || !PyCallable_Check(p[9]) || !PyCallable_Check(p[10])) {
        PyErr_SetString(PyExc_TypeError, "scan plan: resolve, make_error and on_close must be callable");
        return -1;
    }
    Py_INCREF(p[11]);
    it->on_close = p[11];
    it->state = ST_OPEN;
    void *sc, *nx, *fr;
    if (addr_of(p[2], &fr) < 0 || addr_of(p[0], &sc) < 0)
        return -1;
    it->scan_free = (scan_free_fn)fr;
    it->sc = sc; /* owned from here on, even if the rest fails */
    if (addr_of(p[1], &nx) < 0)
        return -1;
    it->scan_next = (scan_next_fn)nx;
    fast_state *st = fast_state_of(Py_TYPE(it));
    if (!st)
        return -1;
    if (!PyObject_TypeCheck(p[3], st->fastpath_type)) {
        PyErr_SetString(PyExc_TypeError, "scan plan: fastpath must be a FastPath");
        return -1;
    }
    if ((p[5] != Py_None && !PyBytes_Check(p[5])) || (p[4] != Py_None && !PyIter_Check(p[4]))) {
        PyErr_SetString(PyExc_TypeError, "scan plan: bound must be bytes or None, store_iter an iterator or None");
        return -1;
    }
    int reverse = PyObject_IsTrue(p[6]);
    if (reverse < 0)
        return -1;
    unsigned long long h = PyLong_AsUnsignedLongLong(p[7]);
    if (h == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    unsigned long n = PyLong_AsUnsignedLong(p[8]);
    if (n == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "scan plan: node does not fit in 32 bits");
        return -1;
    }
    Py_INCREF(p[3]);
    it->fp = (FastPath *)p[3];
    if (p[4] != Py_None) {
        Py_INCREF(p[4]);
        it->store_it = p[4];
    }
    if (p[5] != Py_None) {
        Py_INCREF(p[5]);
        it->bound = p[5];
    }
    it->reverse = reverse;
    it->at_hlc = h;
    it->at_node = (uint32_t)n;
    Py_INCREF(p[9]);
    it->resolve = p[9];
    Py_INCREF(p[10]);
    it->make_error = p[10];
    it->cap = 64 * 1024;
    it->buf = malloc(it->cap);
    if (!it->buf) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int scan_open(ScanIter *it)
{
    PyObject *opener = it->opener;
    it->opener = NULL;
    PyObject *plan = PyObject_CallNoArgs(opener);
    Py_DECREF(opener);
    if (!plan)
        return -1;
    if (PyIter_Check(plan) && !PyTuple_Check(plan)) {
        it->fallback = plan;
        it->state = ST_OPEN;
        return 0;
    }
    int rc = take_plan(it, plan);
    Py_DECREF(plan);
    return rc;
}

/* Parse the next log entry into it->l*; fetch a chunk when the current one
 * is used up. Returns 1 with an entry, 0 at the end of the log's keys, -1
 * with an exception. */
static int next_log(ScanIter *it)
{
    while (it->left == 0) {
        if (it->log_done)
            return 0;
        if (!it->fp->db)
            return raise_made(it, "closed", NULL);
        uint32_t count = 0;
        int64_t n = it->scan_next(it->sc, it->at_hlc, it->at_node, ABASE_MODE_LWW, SCAN_CHUNK, it->buf,
                                  it->cap, &count);
        if (n == ABASE_ETOOSMALL) {
            if (it->cap > SIZE_MAX / 4) {
                PyErr_NoMemory();
                return -1;
            }
            uint8_t *nb = realloc(it->buf, it->cap * 4);
            if (!nb) {
                PyErr_NoMemory();
                return -1;
            }
            it->buf = nb;
            it->cap *= 4;
            continue;
        }
        if (n < 0) {
            fast_raise_status(it->fp, n, "scan");
            return -1;
        }
        if (n == 0 || count == 0) {
            it->log_done = 1;
            return 0;
        }
        if ((uint64_t)n > it->cap) {
            PyErr_SetString(PyExc_SystemError, "scan chunk larger than its buffer");
            return -1;
        }
        it->used = (size_t)n;
        it->off = 0;
        it->left = count;
    }
    const uint8_t *e = it->buf + it->off;
    size_t room = it->used - it->off;
    if (room < ENTRY_HEADER) {
        PyErr_SetString(PyExc_SystemError, "scan entry runs past its chunk");
        return -1;
    }
    uint32_t klen = rd32(e), vlen = rd32(e + 4);
    size_t kpad = pad8(klen), vpad = pad8(vlen);
    if (room - ENTRY_HEADER < kpad || room - ENTRY_HEADER - kpad < vpad) {
        PyErr_SetString(PyExc_SystemError, "scan entry runs past its chunk");
        return -1;
    }
    it->lklen = klen;
    it->lvlen = vlen;
    it->lstatus = (int32_t)rd32(e + 8);
    it->lhlc = rd64(e + 16);
    it->lnode = rd32(e + 24);
    it->lop = rd32(e + 28);
    it->lexpire = rd64(e + 32);
    it->lkey = e + ENTRY_HEADER;
    it->lval = e + ENTRY_HEADER + kpad;
    it->off += ENTRY_HEADER + kpad + vpad;
    it->left--;
    it->have_log = 1;
    return 1;
}

/* Load the next store item into it->sitem, dropping the store side at its
 * end or past the bound. 1: an item; 0: none left; -1: exception. */
static int next_store(ScanIter *it)
{
    if (!it->store_it)
        return 0;
    PyObject *item = Py_TYPE(it->store_it)->tp_iternext(it->store_it);
    if (!item) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_StopIteration))
                return -1;
            PyErr_Clear();
        }
        Py_CLEAR(it->store_it);
        return 0;
    }
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
        Py_DECREF(item);
        PyErr_SetString(PyExc_TypeError, "the store cursor must yield (bytes, bytes)");
        return -1;
    }
    if (it->bound) {
        PyObject *k = PyTuple_GET_ITEM(item, 0);
        int c = key_cmp((const uint8_t *)PyBytes_AS_STRING(k), (size_t)PyBytes_GET_SIZE(k),
                        (const uint8_t *)PyBytes_AS_STRING(it->bound), (size_t)PyBytes_GET_SIZE(it->bound));
        if (it->reverse ? c < 0 : c >= 0) {
            Py_DECREF(item);
            Py_CLEAR(it->store_it);
            return 0;
        }
    }
    it->sitem = item;
    return 1;
}

static PyObject *pair(PyObject *key, PyObject *value)
{
    PyObject *t = PyTuple_New(2);
    if (!t) {
        Py_DECREF(key);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, key);
    PyTuple_SET_ITEM(t, 1, value);
    return t;
}

/* The (key, value) of the current log entry: a new tuple, Py_None to skip
 * the key, or NULL with an exception. */
static PyObject *from_log(ScanIter *it)
{
    if (it->lstatus == ABASE_DELETED)
        Py_RETURN_NONE;
    if (it->lstatus == ABASE_EXPIRES) {
        /* a value with an expiry: absent from the scan's time on */
        if (it->lexpire <= (it->at_hlc >> ABASE_LOGICAL_BITS))
            Py_RETURN_NONE;
        it->lstatus = 0;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)it->lkey, it->lklen);
    if (!key)
        return NULL;
    if (it->lstatus >= 0) {
        PyObject *value = PyBytes_FromStringAndSize((const char *)it->lval, it->lvlen);
        if (!value) {
            Py_DECREF(key);
            return NULL;
        }
        return pair(key, value);
    }
    PyObject *value = Py_None;
    if (it->lstatus == ABASE_NEEDBASE && it->lop != 0) {
        value = PyBytes_FromStringAndSize((const char *)it->lval, it->lvlen);
        if (!value) {
            Py_DECREF(key);
            return NULL;
        }
    } else {
        Py_INCREF(value);
    }
    PyObject *res = PyObject_CallFunction(it->resolve, "OiOKII", key, (int)it->lstatus, value,
                                          (unsigned long long)it->lhlc, (unsigned)it->lnode, (unsigned)it->lop);
    Py_DECREF(value);
    if (!res || res == Py_None) {
        Py_DECREF(key);
        return res;
    }
    return pair(key, res);
}

/* The (key, value) of the current store item (consumed): a tuple, Py_None
 * to skip, or NULL with an exception. */
static PyObject *from_store(ScanIter *it)
{
    PyObject *item = it->sitem;
    it->sitem = NULL;
    PyObject *key = PyTuple_GET_ITEM(item, 0), *raw = PyTuple_GET_ITEM(item, 1);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    uint8_t kind = n >= STORED_HEADER ? p[0] & (uint8_t)~STORED_EXPIRES : 0;
    if (n < STORED_HEADER || (kind != STORED_VALUE && kind != STORED_TOMBSTONE) ||
        ((p[0] & STORED_EXPIRES) && n < STORED_HEADER + 8)) {
        raise_made(it, "corrupt", key);
        Py_DECREF(item);
        return NULL;
    }
    uint64_t h = rd64(p + 1);
    uint32_t node = rd32(p + 9);
    if (h > it->at_hlc || (h == it->at_hlc && node > it->at_node)) {
        raise_made(it, "too_old", key);
        Py_DECREF(item);
        return NULL;
    }
    if (p[0] == STORED_TOMBSTONE) {
        Py_DECREF(item);
        Py_RETURN_NONE;
    }
    if (p[0] & STORED_EXPIRES) {
        /* a value with an expiry, or one the compactor found expired (a
         * tombstone kept with its expiry): absent from its expire_at on; a
         * scan older than that needs the value itself, which the store no
         * longer has */
        uint64_t expire_at = rd64(p + STORED_HEADER);
        int gone = expire_at <= (it->at_hlc >> ABASE_LOGICAL_BITS);
        if (kind == STORED_TOMBSTONE && !gone) {
            raise_made(it, "too_old", key);
            Py_DECREF(item);
            return NULL;
        }
        if (gone) {
            Py_DECREF(item);
            Py_RETURN_NONE;
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)p + STORED_HEADER + 8, n - STORED_HEADER - 8);
        if (!value) {
            Py_DECREF(item);
            return NULL;
        }
        Py_INCREF(key);
        Py_DECREF(item);
        return pair(key, value);
    }
    if (Py_REFCNT(item) == 1) {
        /* nothing else holds py-lmdb's fresh tuple: reuse it, and the
         * stored bytes in it (fast_strip_header) */
        PyTuple_SET_ITEM(item, 1, NULL);
        PyObject *value = fast_strip_header(raw);
        if (!value) {
            Py_DECREF(item);
            return NULL;
        }
        PyTuple_SET_ITEM(item, 1, value);
        return item;
    }
    PyObject *value = PyBytes_FromStringAndSize((const char *)p + STORED_HEADER, n - STORED_HEADER);
    if (!value) {
        Py_DECREF(item);
        return NULL;
    }
    Py_INCREF(key);
    Py_DECREF(item);
    return pair(key, value);
}

static PyObject *scan_iternext(ScanIter *it)
{
    if (it->state == ST_UNOPENED && scan_open(it) < 0)
        return scan_fail(it);
    if (it->state == ST_DONE)
        return NULL;
    if (it->fallback) {
        PyObject *r = Py_TYPE(it->fallback)->tp_iternext(it->fallback);
        if (!r) {
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_StopIteration))
                return scan_fail(it);
            PyErr_Clear();
            scan_finish(it);
        }
        return r;
    }
    if (!it->fp->db) { /* the engine closed: its store's cursor is gone too */
        raise_made(it, "closed", NULL);
        return scan_fail(it);
    }
    for (;;) {
        if (!it->have_log && next_log(it) < 0)
            return scan_fail(it);
        if (!it->sitem && next_store(it) < 0)
            return scan_fail(it);
        if (!it->have_log && !it->sitem) {
            if (scan_finish(it) < 0)
                return NULL;
            return NULL;
        }
        int c;
        if (!it->have_log) {
            c = 1;
        } else if (!it->sitem) {
            c = -1;
        } else {
            PyObject *k = PyTuple_GET_ITEM(it->sitem, 0);
            c = key_cmp(it->lkey, it->lklen, (const uint8_t *)PyBytes_AS_STRING(k), (size_t)PyBytes_GET_SIZE(k));
            if (it->reverse)
                c = -c;
        }
        PyObject *r;
        if (c > 0) {
            r = from_store(it);
        } else {
            /* the log's entry decides a key both hold (its resolution
             * consults the store when the log cannot decide) */
            r = from_log(it);
            it->have_log = 0;
            if (c == 0)
                Py_CLEAR(it->sitem);
        }
        if (!r)
            return scan_fail(it);
        if (r != Py_None)
            return r;
        Py_DECREF(r);
    }
}

static PyObject *scan_close(ScanIter *it, PyObject *Py_UNUSED(ignored))
{
    if (scan_finish(it) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int scan_init(ScanIter *it, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"opener", NULL};
    PyObject *opener;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:ScanIter", kwlist, &opener))
        return -1;
    if (it->state != ST_UNOPENED || it->opener) {
        PyErr_SetString(PyExc_TypeError, "ScanIter is already initialized");
        return -1;
    }
    if (!PyCallable_Check(opener)) {
        PyErr_SetString(PyExc_TypeError, "opener must be callable");
        return -1;
    }
    Py_INCREF(opener);
    it->opener = opener;
    return 0;
}

static PyObject *scan_new(PyTypeObject *tp, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    ScanIter *it = (ScanIter *)tp->tp_alloc(tp, 0);
    if (it)
        it->log_done = 0;
    return (PyObject *)it;
}

static int scan_traverse(ScanIter *it, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(it));
    Py_VISIT(it->opener);
    Py_VISIT(it->fallback);
    Py_VISIT(it->fp);
    Py_VISIT(it->store_it);
    Py_VISIT(it->sitem);
    Py_VISIT(it->bound);
    Py_VISIT(it->resolve);
    Py_VISIT(it->make_error);
    Py_VISIT(it->on_close);
    return 0;
}

static int scan_clear(ScanIter *it)
{
    Py_CLEAR(it->opener);
    Py_CLEAR(it->fallback);
    Py_CLEAR(it->fp);
    Py_CLEAR(it->store_it);
    Py_CLEAR(it->sitem);
    Py_CLEAR(it->bound);
    Py_CLEAR(it->resolve);
    Py_CLEAR(it->make_error);
    Py_CLEAR(it->on_close);
    return 0;
}

/* An unfinished scan left to the collector still runs on_close. */
static void scan_finalize(PyObject *self)
{
    ScanIter *it = (ScanIter *)self;
    if (it->state == ST_DONE)
        return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (scan_finish(it) < 0)
        PyErr_WriteUnraisable(self);
    PyErr_Restore(t, v, tb);
}

static void scan_dealloc(ScanIter *it)
{
    PyTypeObject *tp = Py_TYPE(it);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)it) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(it);
    if (it->sc) /* a cleared, never-finished scan */
        it->scan_free(it->sc);
    free(it->buf);
    scan_clear(it);
    tp->tp_free((PyObject *)it);
    Py_DECREF(tp);
}

static PyObject *scan_self(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static PyMethodDef scan_methods[] = {
    {"close", (PyCFunction)scan_close, METH_NOARGS, "End the scan now and release what it holds."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot scan_slots[] = {
    {Py_tp_doc, "ScanIter(opener): (key, value) of an LWW namespace in key order; see fast_scan.c."},
    {Py_tp_new, scan_new},
    {Py_tp_init, scan_init},
    {Py_tp_dealloc, scan_dealloc},
    {Py_tp_finalize, scan_finalize},
    {Py_tp_traverse, scan_traverse},
    {Py_tp_clear, scan_clear},
    {Py_tp_iter, scan_self},
    {Py_tp_iternext, scan_iternext},
    {Py_tp_methods, scan_methods},
    {0, NULL},
};

static PyType_Spec scan_spec = {
    .name = "abase_engine._fast.ScanIter",
    .basicsize = sizeof(ScanIter),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = scan_slots,
};

int fast_scan_init(PyObject *module, fast_state *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, &scan_spec, NULL);
    if (!tp)
        return -1;
    st->scan_type = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(module, "ScanIter", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}
