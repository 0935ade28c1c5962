/*
 * fast_batch.c: BatchBuffer, the records of one db.batch().
 *
 * A batch of plain puts and deletes should cost what put_many costs: one
 * crossing into the C core at commit, whatever namespaces it touches.
 * `put` and `delete` append exact bytes straight into the arrays
 * abase_write_batch takes (ops, namespaces, key/value lengths, one blob);
 * anything else (another bytes-like type, a size over the limits, a
 * namespace argument not seen before, a merge namespace) goes to the
 * Python callable `slow`, which checks it, raises the right error or
 * appends through `append`. A namespace argument that named an LWW
 * namespace is remembered (one entry, by identity), so a loop over one
 * namespace stays in C.
 *
 * commit() writes the records with one abase_write_batch call (GIL
 * released) through the default namespace's FastPath, which says whether
 * the C path may run (no listener, no digest upkeep, no injected clock,
 * not closed); when it may not, commit() returns None and batch.py takes
 * the general path with export(). Merges never come here: batch.py
 * commits a batch holding one through the general path.
 */
#include "fast.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    FastPath *fp;       /* the default namespace's fast path, or NULL */
    PyObject *slow;     /* (buffer, op, key, value, namespace[, ttl, expire_at]) -> None */
    uint8_t *ops;
    uint32_t *nss;
    uint32_t *lens;     /* 2 per record: key, value */
    uint8_t *blob;      /* keys and values, in order */
    uint32_t n, cap;    /* records; capacity of ops, nss (lens: 2 * cap) */
    size_t used, blob_cap;
    PyObject *ns_arg;   /* a namespace argument seen before ... */
    uint32_t ns_id;     /* ... and the id of the LWW namespace it names */
    char busy;          /* commit() is writing from the arrays (GIL released) */
} BatchBuffer;

static int bb_reserve(BatchBuffer *b, size_t bytes)
{
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "batch changed while it commits (a Batch is not thread-safe)");
        return -1;
    }
    if (b->n == UINT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "a batch holds at most 2**32 - 2 records");
        return -1;
    }
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? (b->cap > UINT32_MAX / 2 ? UINT32_MAX - 1 : b->cap * 2) : 64;
        uint8_t *ops = realloc(b->ops, cap);
        if (ops)
            b->ops = ops;
        uint32_t *nss = ops ? realloc(b->nss, (size_t)cap * sizeof(uint32_t)) : NULL;
        if (nss)
            b->nss = nss;
        uint32_t *lens = nss ? realloc(b->lens, (size_t)cap * 2 * sizeof(uint32_t)) : NULL;
        if (!lens) {
            PyErr_NoMemory();
            return -1;
        }
        b->lens = lens;
        b->cap = cap;
    }
    if (!b->blob || bytes > b->blob_cap - b->used) { /* never NULL: the core wants a blob */
        size_t cap = b->blob_cap ? b->blob_cap : 4096;
        while (cap - b->used < bytes) {
            if (cap > SIZE_MAX / 2) {
                PyErr_NoMemory();
                return -1;
            }
            cap *= 2;
        }
        uint8_t *blob = realloc(b->blob, cap);
        if (!blob) {
            PyErr_NoMemory();
            return -1;
        }
        b->blob = blob;
        b->blob_cap = cap;
    }
    return 0;
}

static int bb_add(BatchBuffer *b, uint8_t op, uint32_t ns, const char *k, size_t kl, const char *v, size_t vl)
{
    if (bb_reserve(b, kl + vl) < 0)
        return -1;
    memcpy(b->blob + b->used, k, kl);
    if (vl)
        memcpy(b->blob + b->used + kl, v, vl);
    b->used += kl + vl;
    b->ops[b->n] = op;
    b->nss[b->n] = ns;
    b->lens[2 * (size_t)b->n] = (uint32_t)kl;
    b->lens[2 * (size_t)b->n + 1] = (uint32_t)vl;
    b->n++;
    return 0;
}

/* The namespace id for a namespace argument the C path knows (None: the
 * default namespace, when the buffer has the default namespace's fast path;
 * without one, None goes through `slow`, whose resolver may map it to
 * another namespace; or the remembered one), or -1. */
static int64_t known_ns(BatchBuffer *b, PyObject *ns)
{
    if (ns == NULL || ns == Py_None)
        return b->fp ? 0 : -1;
    if (ns == b->ns_arg)
        return b->ns_id;
    return -1;
}

/* put(key, value, namespace=None, *, ttl=None, expire_at=None) and
 * delete(key, namespace=None). A put with a ttl or expire_at goes to `slow`
 * (with them as two more arguments). */
static PyObject *bb_write(BatchBuffer *b, int op, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t want = op == ABASE_OP_PUT ? 2 : 1;
    const char *name = op == ABASE_OP_PUT ? "put" : "delete";
    PyObject *key = NULL, *value = NULL, *ns = NULL, *ttl = NULL, *expire_at = NULL;
    if (nargs >= 1)
        key = args[0];
    if (op == ABASE_OP_PUT && nargs >= 2)
        value = args[1];
    if (nargs == want + 1)
        ns = args[want];
    if (nargs > want + 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", name, want + 1, nargs);
        return NULL;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, i), *val = args[nargs + i];
        PyObject **slot = NULL;
        if (PyUnicode_CompareWithASCIIString(kw, "namespace") == 0)
            slot = &ns;
        else if (PyUnicode_CompareWithASCIIString(kw, "key") == 0)
            slot = &key;
        else if (op == ABASE_OP_PUT && PyUnicode_CompareWithASCIIString(kw, "value") == 0)
            slot = &value;
        else if (op == ABASE_OP_PUT && PyUnicode_CompareWithASCIIString(kw, "ttl") == 0)
            slot = &ttl;
        else if (op == ABASE_OP_PUT && PyUnicode_CompareWithASCIIString(kw, "expire_at") == 0)
            slot = &expire_at;
        if (!slot || *slot) {
            PyErr_Format(PyExc_TypeError, "%s() got %s keyword argument %R", name,
                         slot ? "a repeated" : "an unexpected", kw);
            return NULL;
        }
        *slot = val;
    }
    if (!key || (op == ABASE_OP_PUT && !value)) {
        PyErr_Format(PyExc_TypeError, "%s() missing a required argument: %s", name, key ? "value" : "key");
        return NULL;
    }
    if (ttl == Py_None)
        ttl = NULL;
    if (expire_at == Py_None)
        expire_at = NULL;
    int64_t ns_id = ttl || expire_at ? -1 : known_ns(b, ns);
    if (ns_id >= 0 && PyBytes_CheckExact(key) && PyBytes_GET_SIZE(key) <= ABASE_MAX_KEY &&
        (op != ABASE_OP_PUT || (PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) <= ABASE_MAX_VALUE))) {
        const char *v = op == ABASE_OP_PUT ? PyBytes_AS_STRING(value) : "";
        size_t vl = op == ABASE_OP_PUT ? (size_t)PyBytes_GET_SIZE(value) : 0;
        if (bb_add(b, (uint8_t)op, (uint32_t)ns_id, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key), v,
                   vl) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *opo = PyLong_FromLong(op);
    if (!opo)
        return NULL;
    PyObject *call[7] = {(PyObject *)b, opo, key, value ? value : Py_None, ns ? ns : Py_None,
                         ttl ? ttl : Py_None, expire_at ? expire_at : Py_None};
    PyObject *res = PyObject_Vectorcall(b->slow, call, ttl || expire_at ? 7 : 5, NULL);
    Py_DECREF(opo);
    return res;
}

static PyObject *bb_put(BatchBuffer *b, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return bb_write(b, ABASE_OP_PUT, args, nargsf, kwnames);
}

static PyObject *bb_delete(BatchBuffer *b, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    return bb_write(b, ABASE_OP_DELETE, args, nargsf, kwnames);
}

/* append(op, ns_id, key, value): a record the Python checks accepted. */
static PyObject *bb_append(BatchBuffer *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_Check(args[2]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "append(op: int, ns_id: int, key: bytes, value: bytes)");
        return NULL;
    }
    long op = PyLong_AsLong(args[0]);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    unsigned long ns = PyLong_AsUnsignedLong(args[1]);
    if (ns == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (op < ABASE_OP_PUT || op > ABASE_OP_MERGE || ns > UINT32_MAX ||
        PyBytes_GET_SIZE(args[2]) > ABASE_MAX_KEY || PyBytes_GET_SIZE(args[3]) > ABASE_MAX_VALUE) {
        PyErr_SetString(PyExc_ValueError, "append: op, namespace id or a size out of range");
        return NULL;
    }
    if (bb_add(b, (uint8_t)op, (uint32_t)ns, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]),
               PyBytes_AS_STRING(args[3]), (size_t)PyBytes_GET_SIZE(args[3])) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* remember(namespace, ns_id): the argument names that LWW namespace. */
static PyObject *bb_remember(BatchBuffer *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "remember(namespace, ns_id)");
        return NULL;
    }
    unsigned long ns = PyLong_AsUnsignedLong(args[1]);
    if (ns == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (ns > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "namespace id does not fit in 32 bits");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(b->ns_arg, args[0]);
    b->ns_id = (uint32_t)ns;
    Py_RETURN_NONE;
}

static void bb_release(BatchBuffer *b)
{
    free(b->ops);
    free(b->nss);
    free(b->lens);
    free(b->blob);
    b->ops = b->blob = NULL;
    b->nss = b->lens = NULL;
    b->n = b->cap = 0;
    b->used = b->blob_cap = 0;
}

/* commit() -> Timestamp | None: the records in one call into the core;
 * None when the C path may not run (the caller takes the general path). */
static PyObject *bb_commit(BatchBuffer *b, PyObject *Py_UNUSED(ignored))
{
    FastPath *fp = b->fp;
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "batch is already committing (a Batch is not thread-safe)");
        return NULL;
    }
    if (!fp || !fast_usable(fp) || b->n == 0)
        Py_RETURN_NONE;
    abase_db *db = fp->db;
    batch_fn wb = fp->write_batch;
    int64_t rc;
    /* `busy` keeps another thread from moving the arrays meanwhile */
    b->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = wb(db, b->n, b->ops, b->nss, b->blob, b->lens, NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1);
    Py_END_ALLOW_THREADS
    b->busy = 0;
    if (rc > 0) {
        bb_release(b);
        return fast_ts_new(fp->ts_type, (uint64_t)rc, fp->node_id);
    }
    if (rc == ABASE_EAGAIN) /* the clock ran out in this ms: the general path waits */
        Py_RETURN_NONE;
    return fast_raise_status(fp, rc, "batch commit");
}

/* export() -> (ops: bytes, nss: list, parts: list): the records for the
 * general path; parts alternates key and value. */
static PyObject *bb_export(BatchBuffer *b, PyObject *Py_UNUSED(ignored))
{
    if (b->busy) {
        PyErr_SetString(PyExc_RuntimeError, "batch is committing (a Batch is not thread-safe)");
        return NULL;
    }
    PyObject *ops = PyBytes_FromStringAndSize((const char *)b->ops, b->n);
    PyObject *nss = ops ? PyList_New(b->n) : NULL;
    PyObject *parts = nss ? PyList_New(2 * (Py_ssize_t)b->n) : NULL;
    if (!parts)
        goto fail;
    size_t off = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        PyObject *ns = PyLong_FromUnsignedLong(b->nss[i]);
        if (!ns)
            goto fail;
        PyList_SET_ITEM(nss, i, ns);
        for (int j = 0; j < 2; j++) {
            uint32_t len = b->lens[2 * (size_t)i + j];
            PyObject *part = PyBytes_FromStringAndSize((const char *)b->blob + off, len);
            if (!part)
                goto fail;
            PyList_SET_ITEM(parts, 2 * (Py_ssize_t)i + j, part);
            off += len;
        }
    }
    return Py_BuildValue("(NNN)", ops, nss, parts);
fail:
    Py_XDECREF(ops);
    Py_XDECREF(nss);
    Py_XDECREF(parts);
    return NULL;
}

static Py_ssize_t bb_len(BatchBuffer *b)
{
    return (Py_ssize_t)b->n;
}

static int bb_init(BatchBuffer *b, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fastpath", "slow", NULL};
    PyObject *fp, *slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:BatchBuffer", kwlist, &fp, &slow))
        return -1;
    fast_state *st = fast_state_of(Py_TYPE(b));
    if (!st)
        return -1;
    if (fp != Py_None && !PyObject_TypeCheck(fp, st->fastpath_type)) {
        PyErr_SetString(PyExc_TypeError, "fastpath must be a FastPath or None");
        return -1;
    }
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "slow must be callable");
        return -1;
    }
    if (fp == Py_None)
        fp = NULL;
    Py_XINCREF(fp);
    Py_XSETREF(b->fp, (FastPath *)fp);
    Py_INCREF(slow);
    Py_XSETREF(b->slow, slow);
    return 0;
}

static int bb_traverse(BatchBuffer *b, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(b));
    Py_VISIT(b->fp);
    Py_VISIT(b->slow);
    Py_VISIT(b->ns_arg);
    return 0;
}

static int bb_clear(BatchBuffer *b)
{
    Py_CLEAR(b->fp);
    Py_CLEAR(b->slow);
    Py_CLEAR(b->ns_arg);
    return 0;
}

static void bb_dealloc(BatchBuffer *b)
{
    PyTypeObject *tp = Py_TYPE(b);
    PyObject_GC_UnTrack(b);
    bb_clear(b);
    bb_release(b);
    tp->tp_free((PyObject *)b);
    Py_DECREF(tp);
}

static PyMethodDef bb_methods[] = {
    {"put", (PyCFunction)(void (*)(void))bb_put, METH_FASTCALL | METH_KEYWORDS,
     "put(key, value, namespace=None): add a put (exact bytes in C; anything else through `slow`)."},
    {"delete", (PyCFunction)(void (*)(void))bb_delete, METH_FASTCALL | METH_KEYWORDS,
     "delete(key, namespace=None): add a delete."},
    {"append", (PyCFunction)(void (*)(void))bb_append, METH_FASTCALL,
     "append(op, ns_id, key, value): add a record the caller already checked."},
    {"remember", (PyCFunction)(void (*)(void))bb_remember, METH_FASTCALL,
     "remember(namespace, ns_id): this namespace argument names that LWW namespace."},
    {"commit", (PyCFunction)bb_commit, METH_NOARGS,
     "commit() -> Timestamp | None: write the records in one call; None: take the general path."},
    {"export", (PyCFunction)bb_export, METH_NOARGS, "export() -> (ops, nss, parts) for the general path."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot bb_slots[] = {
    {Py_tp_doc, "BatchBuffer(fastpath, slow): the records of a db.batch(); see fast_batch.c."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, bb_init},
    {Py_tp_dealloc, bb_dealloc},
    {Py_tp_traverse, bb_traverse},
    {Py_tp_clear, bb_clear},
    {Py_tp_methods, bb_methods},
    {Py_sq_length, bb_len},
    {0, NULL},
};

static PyType_Spec bb_spec = {
    .name = "abase_engine._fast.BatchBuffer",
    .basicsize = sizeof(BatchBuffer),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = bb_slots,
};

int fast_batch_init(PyObject *module, fast_state *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, &bb_spec, NULL);
    if (!tp)
        return -1;
    st->batch_type = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(module, "BatchBuffer", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}
