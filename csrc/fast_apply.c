/*
 * fast_apply.c: ApplyPath, Engine.apply of records into LWW namespaces in C.
 *
 * A replica spends its time in apply. Decoding each Change in Python
 * (attribute reads, argument checks, a store lookup per record, the arrays
 * for abase_write_batch) cost about 10 us a record against 1 us for
 * put_many. ApplyPath.apply(changes, wall_ms, max_skew_ms, want_prev,
 * store_below) reads a list of Change tuples in C and hands them to
 * abase_apply_batch (csrc/apply.c) in one call, GIL released:
 *   - only exact types: a Change (the class given at creation) whose
 *     namespace is an exact str naming an LWW namespace (found through the
 *     Python callable `resolve`, name -> that namespace's FastPath or None,
 *     cached by name), an int op, exact bytes keys (1..ABASE_MAX_KEY bytes)
 *     and values (or None), a Timestamp. Anything else (a merge namespace,
 *     a bad type, a size over a limit, an empty key, whose stored version
 *     lives in `meta`) returns None having done nothing: the caller takes
 *     the general Python path, which raises the documented errors;
 *   - the store's version of a key is looked up (through the namespace's
 *     StoreReader, GIL held) only when the core asks for it
 *     (ABASE_NEEDBASE), the namespace's store is not known empty, and,
 *     unless want_prev, the record is not newer than store_below (the
 *     store's HLC high-water mark: no stored version is newer);
 *   - a negative status is raised through `fail` (log.py's mapping).
 * The caller holds the engine's merge and fold locks (batch.py), so the
 * store cannot change between the core's two calls.
 *
 * Returns None, or (appended, status, prevs): status is bytes, one
 * ABASE_APPLY_* per change; prevs (want_prev, else None) lists
 * (index, ns id, op, prev kind, prev hlc, prev node) of each appended record,
 * the key's newest version before it, for the digest tree's upkeep.
 */
#include "fast.h"

#include <string.h>

typedef int64_t (*apply_fn)(abase_db *, uint32_t, abase_apply_rec *, int64_t, uint64_t);

typedef struct {
    PyObject_HEAD
    abase_db *db;
    apply_fn apply;
    PyObject *change_type; /* abase_engine.Change */
    PyObject *resolve;     /* name -> FastPath of an LWW namespace, or None */
    PyObject *fail;        /* (status, what) -> exception instance */
    PyObject *paths;       /* dict: name -> FastPath or None (resolve's answers) */
} ApplyPath;

/* ------------------------------------------------------------ helpers */

static PyObject *ap_raise(ApplyPath *self, int64_t rc)
{
    PyObject *exc = PyObject_CallFunction(self->fail, "Ls", (long long)rc, "apply");
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* The FastPath of the LWW namespace `name` (borrowed; the cache holds it),
 * NULL with no exception when it has none, NULL with an exception on error. */
static FastPath *ap_namespace(ApplyPath *self, PyObject *name, PyTypeObject *fp_type)
{
    PyObject *fp = PyDict_GetItemWithError(self->paths, name);
    if (!fp) {
        if (PyErr_Occurred())
            return NULL;
        PyObject *found = PyObject_CallOneArg(self->resolve, name);
        if (!found)
            return NULL;
        if (found != Py_None && !PyObject_TypeCheck(found, fp_type)) {
            Py_DECREF(found);
            PyErr_SetString(PyExc_TypeError, "resolve must return a FastPath or None");
            return NULL;
        }
        fp = PyDict_SetDefault(self->paths, name, found); /* never replaces an entry */
        Py_DECREF(found);
        if (!fp)
            return NULL;
    }
    return fp == Py_None ? NULL : (FastPath *)fp;
}

/* Fill rec from one change; 1 done, 0 not for this path (no exception),
 * -1 error. */
static int ap_decode(ApplyPath *self, PyObject *ch, fast_state *st, abase_apply_rec *rec, FastPath **fp_out)
{
    if ((PyObject *)Py_TYPE(ch) != self->change_type || PyTuple_GET_SIZE(ch) < 5)
        return 0;
    /* a record with an expiry (Change.expire_at, field 6) is the general path's */
    if (PyTuple_GET_SIZE(ch) > 6 && PyTuple_GET_ITEM(ch, 6) != Py_None)
        return 0;
    PyObject *name = PyTuple_GET_ITEM(ch, 0), *key = PyTuple_GET_ITEM(ch, 1);
    PyObject *op_obj = PyTuple_GET_ITEM(ch, 2), *value = PyTuple_GET_ITEM(ch, 3);
    PyObject *ts = PyTuple_GET_ITEM(ch, 4);
    if (!PyUnicode_CheckExact(name) || !PyBytes_CheckExact(key) || !PyLong_Check(op_obj) ||
        (PyObject *)Py_TYPE(ts) != (PyObject *)st->timestamp_type)
        return 0;
    Py_ssize_t klen = PyBytes_GET_SIZE(key);
    if (klen < 1 || klen > ABASE_MAX_KEY)
        return 0;
    int overflow = 0;
    long op = PyLong_AsLongAndOverflow(op_obj, &overflow);
    if (op == -1 && PyErr_Occurred())
        return -1;
    if (overflow || op < ABASE_OP_PUT || op > ABASE_OP_MERGE)
        return 0;
    if (op == ABASE_OP_MERGE)
        op = ABASE_OP_PUT; /* a merge into an LWW namespace: its operand is the new value */
    const uint8_t *v = NULL;
    Py_ssize_t vlen = 0;
    if (op == ABASE_OP_PUT && value != Py_None) {
        if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > (Py_ssize_t)ABASE_MAX_VALUE)
            return 0;
        v = (const uint8_t *)PyBytes_AS_STRING(value);
        vlen = PyBytes_GET_SIZE(value);
    }
    FastPath *fp = ap_namespace(self, name, st->fastpath_type);
    if (!fp)
        return PyErr_Occurred() ? -1 : 0;
    memset(rec, 0, sizeof(*rec));
    rec->key = (const uint8_t *)PyBytes_AS_STRING(key);
    rec->klen = (uint32_t)klen;
    rec->value = v;
    rec->vlen = (uint32_t)vlen;
    rec->op = (uint8_t)op;
    rec->ns = fp->ns;
    fast_ts_read(ts, &rec->hlc, &rec->node);
    /* A namespace whose store holds nothing: the store's version is known
     * (none) without a lookup. */
    rec->base_known = fp->store_empty ? 1 : 0;
    *fp_out = fp;
    return 1;
}

/* The store's version of rec's key: 1 done, 0 take the general path (no
 * exception), -1 error. */
static int ap_lookup_base(FastPath *fp, PyObject *key, abase_apply_rec *rec)
{
    if (!fp->reader)
        return 0;
    PyObject *raw = NULL;
    int rc = fast_store_get(fp->reader, fp->dbi, key, &raw);
    if (rc == STORE_UNAVAILABLE)
        return 0;
    if (rc == STORE_FAILED) {
        if (fast_store_error_is_lmdb(fp->reader)) {
            PyErr_Clear(); /* the general path reports it properly */
            return 0;
        }
        return -1;
    }
    rec->base_known = 1;
    rec->base_kind = 0;
    if (rc == STORE_MISSING)
        return 1;
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    int ok = n >= STORED_HEADER && (b[0] == STORED_VALUE || b[0] == STORED_TOMBSTONE);
    if (ok) {
        uint64_t h = 0;
        uint32_t node = 0;
        for (int i = 7; i >= 0; i--)
            h = h << 8 | b[1 + i];
        for (int i = 3; i >= 0; i--)
            node = node << 8 | b[9 + i];
        rec->base_kind = b[0] == STORED_VALUE ? ABASE_OP_PUT : ABASE_OP_DELETE;
        rec->base_hlc = h;
        rec->base_node = node;
    }
    Py_DECREF(raw);
    return ok; /* anything else (a merge state?) is the general path's to report */
}

/* (appended, status, prevs): see the top of this file. */
static PyObject *ap_result(const abase_apply_rec *recs, Py_ssize_t n, int64_t appended, int want_prev)
{
    PyObject *status = PyBytes_FromStringAndSize(NULL, n);
    if (!status)
        return NULL;
    uint8_t *sp = (uint8_t *)PyBytes_AS_STRING(status);
    for (Py_ssize_t i = 0; i < n; i++)
        sp[i] = recs[i].status == ABASE_APPLY_APPENDED;
    PyObject *prevs = Py_None;
    Py_INCREF(prevs);
    if (want_prev) {
        Py_DECREF(prevs);
        prevs = PyList_New(0);
        for (Py_ssize_t i = 0; prevs && i < n; i++) {
            const abase_apply_rec *r = &recs[i];
            if (r->status != ABASE_APPLY_APPENDED)
                continue;
            PyObject *t = Py_BuildValue("(nIBBKIK)", i, r->ns, r->op, r->prev_kind,
                                        (unsigned long long)r->prev_hlc, r->prev_node,
                                        (unsigned long long)r->prev_expire_at);
            if (!t || PyList_Append(prevs, t) < 0) {
                Py_XDECREF(t);
                Py_CLEAR(prevs);
                break;
            }
            Py_DECREF(t);
        }
    }
    if (!prevs) {
        Py_DECREF(status);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(LNN)", (long long)appended, status, prevs);
    return out;
}

/* ------------------------------------------------------------ apply */

static PyObject *ap_apply(ApplyPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "apply(changes, wall_ms, max_skew_ms, want_prev, store_below)");
        return NULL;
    }
    long long wall_ms = PyLong_AsLongLong(args[1]);
    if (wall_ms == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long max_skew = PyLong_AsUnsignedLongLong(args[2]);
    if (max_skew == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int want_prev = PyObject_IsTrue(args[3]);
    if (want_prev < 0)
        return NULL;
    unsigned long long store_below = PyLong_AsUnsignedLongLong(args[4]);
    if (store_below == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    PyObject *changes = args[0];
    if (!PyList_CheckExact(changes) && !PyTuple_CheckExact(changes))
        Py_RETURN_NONE;
    fast_state *st = fast_state_of(Py_TYPE(self));
    if (!st)
        return NULL;
    /* A tuple of its own: the records stay alive while the GIL is released,
     * whatever another thread does to the caller's list. */
    PyObject *items = PySequence_Tuple(changes);
    if (!items)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    if (n == 0 || (uint64_t)n > UINT32_MAX) {
        Py_DECREF(items);
        Py_RETURN_NONE;
    }
    abase_apply_rec *recs = PyMem_Calloc((size_t)n, sizeof(abase_apply_rec));
    FastPath **fps = PyMem_Calloc((size_t)n, sizeof(FastPath *));
    PyObject *out = NULL;
    if (!recs || !fps) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int rc = ap_decode(self, PyTuple_GET_ITEM(items, i), st, &recs[i], &fps[i]);
        if (rc < 0)
            goto done;
        /* Newer than everything the store holds: its version cannot decide
         * (only the digest upkeep, want_prev, needs to know it). */
        if (rc == 1 && !want_prev && recs[i].hlc > store_below)
            recs[i].base_known = 1;
        if (rc == 0) {
            out = Py_None;
            Py_INCREF(out);
            goto done;
        }
    }
    for (int round = 0;; round++) {
        int64_t rc;
        abase_db *db = self->db;
        apply_fn fn = self->apply;
        Py_BEGIN_ALLOW_THREADS
        rc = fn(db, (uint32_t)n, recs, (int64_t)wall_ms, (uint64_t)max_skew);
        Py_END_ALLOW_THREADS
        if (rc >= 0) {
            out = ap_result(recs, n, rc, want_prev);
            break;
        }
        if (rc != ABASE_NEEDBASE || round == 2) {
            if (rc == ABASE_NEEDBASE) { /* the store moved under the caller's lock? */
                out = Py_None;
                Py_INCREF(out);
            } else {
                ap_raise(self, rc);
            }
            break;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (recs[i].status != ABASE_APPLY_NEEDBASE || recs[i].base_known)
                continue;
            int got = ap_lookup_base(fps[i], PyTuple_GET_ITEM(PyTuple_GET_ITEM(items, i), 1), &recs[i]);
            if (got < 0)
                goto done;
            if (got == 0) {
                out = Py_None;
                Py_INCREF(out);
                goto done;
            }
        }
    }
done:
    PyMem_Free(recs);
    PyMem_Free(fps);
    Py_DECREF(items);
    return out;
}

/* ------------------------------------------------------------ the type */

static int ap_init(ApplyPath *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"db", "apply_batch", "change_type", "resolve", "fail", NULL};
    PyObject *db, *fn, *change_type, *resolve, *fail;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO:ApplyPath", kwlist, &db, &fn, &change_type, &resolve,
                                     &fail))
        return -1;
    if (!PyType_Check(change_type) || !PyType_IsSubtype((PyTypeObject *)change_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "change_type must be a tuple subclass (abase_engine.Change)");
        return -1;
    }
    if (!PyCallable_Check(resolve) || !PyCallable_Check(fail)) {
        PyErr_SetString(PyExc_TypeError, "resolve and fail must be callable");
        return -1;
    }
    void *dbp = PyLong_AsVoidPtr(db);
    void *fnp = dbp ? PyLong_AsVoidPtr(fn) : NULL;
    if (!dbp || !fnp) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null database handle or function address");
        return -1;
    }
    PyObject *paths = PyDict_New();
    if (!paths)
        return -1;
    self->db = dbp;
    self->apply = (apply_fn)fnp;
    Py_INCREF(change_type);
    Py_XSETREF(self->change_type, change_type);
    Py_INCREF(resolve);
    Py_XSETREF(self->resolve, resolve);
    Py_INCREF(fail);
    Py_XSETREF(self->fail, fail);
    Py_XSETREF(self->paths, paths);
    return 0;
}

static int ap_traverse(ApplyPath *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->change_type);
    Py_VISIT(self->resolve);
    Py_VISIT(self->fail);
    Py_VISIT(self->paths);
    return 0;
}

static int ap_clear(ApplyPath *self)
{
    Py_CLEAR(self->change_type);
    Py_CLEAR(self->resolve);
    Py_CLEAR(self->fail);
    Py_CLEAR(self->paths);
    return 0;
}

static void ap_dealloc(ApplyPath *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ap_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *ap_call_apply(ApplyPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!self->paths) {
        PyErr_SetString(PyExc_RuntimeError, "ApplyPath not initialised");
        return NULL;
    }
    return ap_apply(self, args, nargs);
}

/* forget(): drop the cached answers of `resolve`, which are asked again on
 * next use (a namespace stopped being eligible: it got range tombstones). */
static PyObject *ap_forget(ApplyPath *self, PyObject *Py_UNUSED(ignored))
{
    if (self->paths)
        PyDict_Clear(self->paths);
    Py_RETURN_NONE;
}

static PyMethodDef ap_methods[] = {
    {"forget", (PyCFunction)ap_forget, METH_NOARGS,
     "forget(): ask `resolve` again for every namespace on next use."},
    {"apply", (PyCFunction)(void (*)(void))ap_call_apply, METH_FASTCALL,
     "apply(changes, wall_ms, max_skew_ms, want_prev, store_below) -> (appended, status, prevs) | None: "
     "see csrc/fast_apply.c. None: nothing done, take the general path."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ap_slots[] = {
    {Py_tp_doc, "ApplyPath(db, apply_batch, change_type, resolve, fail): Engine.apply into LWW "
                "namespaces in C; see csrc/fast_apply.c."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, ap_init},
    {Py_tp_dealloc, ap_dealloc},
    {Py_tp_traverse, ap_traverse},
    {Py_tp_clear, ap_clear},
    {Py_tp_methods, ap_methods},
    {0, NULL},
};

static PyType_Spec ap_spec = {
    .name = "abase_engine._fast.ApplyPath",
    .basicsize = sizeof(ApplyPath),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = ap_slots,
};

int fast_apply_init(PyObject *module, fast_state *st)
{
    (void)st;
    PyObject *tp = PyType_FromModuleAndSpec(module, &ap_spec, NULL);
    if (!tp)
        return -1;
    if (PyModule_AddObject(module, "ApplyPath", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}
