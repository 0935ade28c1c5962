/*
 * crdt_py.c: CPython pieces of the CRDT fast paths (crdt_py.h): the engine's
 * merge lock (MergeLock), Python values of decoded states, parsing of
 * operations, and the module functions the tests use to compare the C
 * CRDTs with the Python ones (crdt_fold, crdt_value, crdt_operand,
 * crdt_apply). crdt_path.c holds the per-namespace fast path itself.
 *
 * MergeLock: a re-entrant lock (the engine's merge lock) that C can try to
 * take without calling Python: acquire/release/with, like threading.RLock.
 * Every field is read and written with the GIL held.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <stdlib.h>
#include <string.h>

#include "abase.h"
#include "crdt.h"
#include "crdt_py.h"

/* ------------------------------------------------------------ MergeLock */

int mlock_try(MergeLock *l)
{
    unsigned long me = PyThread_get_thread_ident();
    if (l->count && l->owner == me) {
        l->count++;
        return 1;
    }
    if (!PyThread_acquire_lock(l->lock, NOWAIT_LOCK))
        return 0;
    l->owner = me;
    l->count = 1;
    return 1;
}

void mlock_release(MergeLock *l)
{
    if (--l->count == 0) {
        l->owner = 0;
        PyThread_release_lock(l->lock);
    }
}

static int ml_init(MergeLock *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, "") || (kwds && PyDict_Size(kwds))) {
        PyErr_SetString(PyExc_TypeError, "MergeLock() takes no arguments");
        return -1;
    }
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void ml_dealloc(MergeLock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->lock) {
        if (self->count)
            PyThread_release_lock(self->lock);
        PyThread_free_lock(self->lock);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *ml_acquire(MergeLock *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pd", kwlist, &blocking, &timeout))
        return NULL;
    if (mlock_try(self))
        Py_RETURN_TRUE;
    if (!blocking)
        Py_RETURN_FALSE;
    PyLockStatus st;
    PY_TIMEOUT_T us = timeout < 0 ? -1 : (PY_TIMEOUT_T)(timeout * 1e6);
    Py_BEGIN_ALLOW_THREADS
    st = PyThread_acquire_lock_timed(self->lock, us, 0);
    Py_END_ALLOW_THREADS
    if (st != PY_LOCK_ACQUIRED)
        Py_RETURN_FALSE;
    self->owner = PyThread_get_thread_ident();
    self->count = 1;
    Py_RETURN_TRUE;
}

static PyObject *ml_release(MergeLock *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->count || self->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    mlock_release(self);
    Py_RETURN_NONE;
}

static PyObject *ml_enter(MergeLock *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *empty = PyTuple_New(0);
    if (!empty)
        return NULL;
    PyObject *r = ml_acquire(self, empty, NULL);
    Py_DECREF(empty);
    return r;
}

static PyObject *ml_exit(MergeLock *self, PyObject *Py_UNUSED(args))
{
    return ml_release(self, NULL);
}

static PyObject *ml_is_owned(MergeLock *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->count && self->owner == PyThread_get_thread_ident());
}

static PyMethodDef ml_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))ml_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)ml_release, METH_NOARGS, "release()"},
    {"__enter__", (PyCFunction)ml_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)ml_exit, METH_VARARGS, NULL},
    {"_is_owned", (PyCFunction)ml_is_owned, METH_NOARGS, "whether this thread holds the lock"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ml_slots[] = {
    {Py_tp_doc, "The engine's merge lock: re-entrant, like threading.RLock; the C fast paths take it too."},
    {Py_tp_init, ml_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, ml_dealloc},
    {Py_tp_methods, ml_methods},
    {0, NULL},
};

static PyType_Spec ml_spec = {
    .name = "abase_engine._fast.MergeLock",
    .basicsize = sizeof(MergeLock),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = ml_slots,
};

/* ------------------------------------------------------------ values */

static PyObject *set_of(PyObject **items, Py_ssize_t n)
{
    PyObject *fs = PyFrozenSet_New(NULL);
    for (Py_ssize_t i = 0; fs && i < n; i++) {
        if (!items[i] || PySet_Add(fs, items[i]) < 0)
            Py_CLEAR(fs);
    }
    return fs;
}

static PyObject *counter_value(const cstate *s)
{
#ifdef __SIZEOF_INT128__
    __int128 v = 0;
    for (uint32_t i = 0; i < s->ncnt; i++)
        v += (__int128)(s->cnt[i].p - s->cnt[i].pr) - (__int128)(s->cnt[i].n - s->cnt[i].nr);
    if (v >= INT64_MIN && v <= INT64_MAX)
        return PyLong_FromLongLong((long long)v);
#endif
    PyObject *acc = PyLong_FromLong(0);
    for (uint32_t i = 0; acc && i < s->ncnt; i++) {
        PyObject *p = PyLong_FromUnsignedLongLong(s->cnt[i].p - s->cnt[i].pr);
        PyObject *m = PyLong_FromUnsignedLongLong(s->cnt[i].n - s->cnt[i].nr);
        PyObject *a = p && m ? PyNumber_Add(acc, p) : NULL;
        PyObject *b = a ? PyNumber_Subtract(a, m) : NULL;
        Py_XDECREF(p);
        Py_XDECREF(m);
        Py_XDECREF(a);
        Py_DECREF(acc);
        acc = b;
    }
    return acc;
}

/* the score of a SortedSet member: its dot with the greatest (hlc, node) */
static double member_score(cmember *m)
{
    cdv *d = cmember_dots(m);
    uint32_t best = 0;
    for (uint32_t j = 1; j < m->n; j++) {
        cts a = {d[j].d.hlc, d[j].d.node}, b = {d[best].d.hlc, d[best].d.node};
        if (cts_cmp(a, b) > 0)
            best = j;
    }
    return d[best].s;
}

typedef struct {
    double s;
    cmember *m;
} zitem;

static int zitem_cmp(const void *a, const void *b)
{
    const zitem *x = a, *y = b;
    if (x->s < y->s)
        return -1;
    if (x->s > y->s)
        return 1;
    uint32_t n = x->m->klen < y->m->klen ? x->m->klen : y->m->klen;
    int c = n ? memcmp(x->m->key, y->m->key, n) : 0;
    if (c)
        return c;
    return x->m->klen < y->m->klen ? -1 : x->m->klen > y->m->klen;
}

PyObject *crdt_state_value(cstate *s)
{
    if (!cstate_live(s))
        Py_RETURN_NONE;
    switch (s->tag) {
    case CT_GC:
    case CT_PN:
        return counter_value(s);
    case CT_LWW:
        return PyBytes_FromStringAndSize((const char *)s->reg_v, s->reg_len);
    case CT_FLAG:
        Py_RETURN_TRUE;
    case CT_MV: {
        PyObject *fs = PyFrozenSet_New(NULL);
        for (uint32_t i = 0; fs && i < s->nmv; i++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)s->mv[i].v, s->mv[i].len);
            if (!b || PySet_Add(fs, b) < 0)
                Py_CLEAR(fs);
            Py_XDECREF(b);
        }
        return fs;
    }
    case CT_ZSET: {
        zitem *v = malloc(sizeof(zitem) * s->map.n);
        if (!v)
            return PyErr_NoMemory();
        for (uint32_t i = 0; i < s->map.n; i++) {
            v[i].m = &s->map.e[i];
            v[i].s = member_score(&s->map.e[i]);
        }
        qsort(v, s->map.n, sizeof(zitem), zitem_cmp);
        PyObject *lst = PyList_New(s->map.n);
        for (uint32_t i = 0; lst && i < s->map.n; i++) {
            PyObject *t = Py_BuildValue("(y#d)", (const char *)v[i].m->key, (Py_ssize_t)v[i].m->klen, v[i].s);
            if (!t)
                Py_CLEAR(lst);
            else
                PyList_SET_ITEM(lst, i, t);
        }
        free(v);
        return lst;
    }
    default: { /* GSet, ORSet: the members */
        PyObject **items = malloc(sizeof(PyObject *) * (s->map.n ? s->map.n : 1));
        if (!items)
            return PyErr_NoMemory();
        for (uint32_t i = 0; i < s->map.n; i++)
            items[i] = PyBytes_FromStringAndSize((const char *)s->map.e[i].key, s->map.e[i].klen);
        PyObject *fs = set_of(items, s->map.n);
        for (uint32_t i = 0; i < s->map.n; i++)
            Py_XDECREF(items[i]);
        free(items);
        return fs;
    }
    }
}

/* ------------------------------------------------------------ operations */

static int kind_is(PyObject *kind, const char *name)
{
    return PyUnicode_Check(kind) && PyUnicode_CompareWithASCIIString(kind, name) == 0;
}

int crdt_parse_op(int tag, PyObject *kind, PyObject *args, cop *out)
{
    memset(out, 0, sizeof(*out));
    if (!PyTuple_CheckExact(args))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *a0 = n > 0 ? PyTuple_GET_ITEM(args, 0) : NULL;
    switch (tag) {
    case CT_LWW:
    case CT_MV:
        if (!kind_is(kind, "set") || n != 1 || !PyBytes_CheckExact(a0))
            return 0;
        out->kind = OP_SET;
        break;
    case CT_GC:
    case CT_PN: {
        int dec = tag == CT_PN && kind_is(kind, "decrement");
        if ((!dec && !kind_is(kind, "increment")) || n != 1 || !PyLong_CheckExact(a0))
            return 0;
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(a0, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (tag == CT_GC && v < 0)
            return 0;
        int neg = v < 0;
        out->kind = OP_INC;
        out->amt = neg ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
        out->neg = dec ? !neg : neg;
        if (out->amt == 0)
            out->neg = 0;
        return 1;
    }
    case CT_GSET:
        if (!kind_is(kind, "add") || n != 1 || !PyBytes_CheckExact(a0))
            return 0;
        out->kind = OP_ADD;
        break;
    case CT_ORSET:
    case CT_ZSET:
        if (kind_is(kind, "add")) {
            if (n != (tag == CT_ZSET ? 2 : 1) || !PyBytes_CheckExact(a0))
                return 0;
            if (tag == CT_ZSET) {
                PyObject *s = PyTuple_GET_ITEM(args, 1);
                if (!PyFloat_CheckExact(s))
                    return 0;
                out->score = PyFloat_AS_DOUBLE(s);
            }
            out->kind = OP_ADD;
        } else if (kind_is(kind, "remove")) {
            if (n != 1 || !PyBytes_CheckExact(a0))
                return 0;
            out->kind = OP_REMOVE;
        } else {
            return 0;
        }
        break;
    case CT_FLAG:
        if (n != 0)
            return 0;
        if (kind_is(kind, "enable"))
            out->kind = OP_ENABLE;
        else if (kind_is(kind, "disable"))
            out->kind = OP_DISABLE;
        else
            return 0;
        return 1;
    default:
        return 0;
    }
    if (PyBytes_GET_SIZE(a0) > ABASE_MAX_VALUE)
        return 0;
    out->b = (const uint8_t *)PyBytes_AS_STRING(a0);
    out->blen = (uint32_t)PyBytes_GET_SIZE(a0);
    return 1;
}


/* ------------------------------------------------------------ test entry points */

static int tag_of(PyObject *o, int *tag)
{
    long t = PyLong_AsLong(o);
    if (t == -1 && PyErr_Occurred())
        return -1;
    if (!crdt_supported((int)t)) {
        PyErr_Format(PyExc_ValueError, "no C CRDT of tag %ld", t);
        return -1;
    }
    *tag = (int)t;
    return 0;
}

static PyObject *cr_error(int rc)
{
    if (rc == CR_ENOMEM)
        return PyErr_NoMemory();
    PyErr_Format(PyExc_ValueError, "crdt: %s",
                 rc == CR_EOVERFLOW ? "counter overflow" : rc == CR_ESTALE ? "stale timestamp" : "bad bytes");
    return NULL;
}

static PyObject *encoded(cstate *st)
{
    cbuf b = {0};
    int rc = cstate_encode(st, &b);
    PyObject *r = rc == CR_OK ? PyBytes_FromStringAndSize((const char *)b.p, (Py_ssize_t)b.n) : cr_error(rc);
    cbuf_free(&b);
    return r;
}

/* decode `state` (None: bottom) of type tag into st */
static int load(PyObject *state, int tag, cstate *st)
{
    if (state == Py_None) {
        cstate_init(st, tag);
        return CR_OK;
    }
    if (!PyBytes_Check(state)) {
        PyErr_SetString(PyExc_TypeError, "a state is bytes or None");
        return CR_EBAD - 100;
    }
    return cstate_decode((const uint8_t *)PyBytes_AS_STRING(state), (size_t)PyBytes_GET_SIZE(state), tag, st);
}

/* crdt_fold(tag, values) -> the encoded join of the encoded states (ValueError: one does not decode) */
static PyObject *crdt_fold(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *t, *values;
    int tag;
    if (!PyArg_ParseTuple(args, "OO", &t, &values) || tag_of(t, &tag) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(values, "values must be a sequence of bytes");
    if (!seq)
        return NULL;
    cstate st;
    cstate_init(&st, tag);
    int rc = CR_OK;
    for (Py_ssize_t i = 0; rc == CR_OK && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "values must be bytes");
            rc = CR_EBAD - 100;
            break;
        }
        rc = cstate_join_bytes(&st, (const uint8_t *)PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
    }
    Py_DECREF(seq);
    PyObject *r = rc == CR_OK ? encoded(&st) : rc < CR_EBAD - 50 ? NULL : cr_error(rc);
    cstate_free(&st);
    return r;
}

/* crdt_value(tag, state) -> the Python value (None: nothing visible) */
static PyObject *crdt_value(PyObject *Py_UNUSED(mod), PyObject *args)
{
    PyObject *t, *state;
    int tag;
    if (!PyArg_ParseTuple(args, "OO", &t, &state) || tag_of(t, &tag) < 0)
        return NULL;
    cstate st;
    int rc = load(state, tag, &st);
    if (rc != CR_OK)
        return rc < CR_EBAD - 50 ? NULL : cr_error(rc);
    PyObject *r = crdt_state_value(&st);
    cstate_free(&st);
    return r;
}

static int op_of(int tag, PyObject *kind, PyObject *opargs, cop *c)
{
    if (PyUnicode_Check(kind) && PyUnicode_CompareWithASCIIString(kind, "delete") == 0) {
        memset(c, 0, sizeof(*c));
        c->kind = OP_DELETE;
        return 1;
    }
    if (!crdt_parse_op(tag, kind, opargs, c)) {
        PyErr_SetString(PyExc_ValueError, "an operation the C fast path does not take");
        return 0;
    }
    return 1;
}

/* crdt_operand(tag, state, kind, args, hlc, node) -> the operand bytes
 * (kind "delete": the removal); crdt_apply(...) -> the state after it */
static PyObject *operand_or_apply(PyObject *args, int apply)
{
    PyObject *t, *state, *kind, *opargs;
    unsigned long long hlc;
    unsigned int node;
    int tag;
    if (!PyArg_ParseTuple(args, "OOOOKI", &t, &state, &kind, &opargs, &hlc, &node) || tag_of(t, &tag) < 0)
        return NULL;
    cop c;
    if (!op_of(tag, kind, opargs, &c))
        return NULL;
    cstate st;
    int rc = load(state, tag, &st);
    if (rc != CR_OK)
        return rc < CR_EBAD - 50 ? NULL : cr_error(rc);
    cts ts = {hlc, node};
    PyObject *r;
    if (apply) {
        rc = crdt_apply_local(&st, &c, ts);
        r = rc == CR_OK ? encoded(&st) : cr_error(rc);
    } else {
        cbuf b = {0};
        rc = crdt_operand(&st, &c, ts, &b);
        r = rc == CR_OK ? PyBytes_FromStringAndSize((const char *)b.p, (Py_ssize_t)b.n) : cr_error(rc);
        cbuf_free(&b);
    }
    cstate_free(&st);
    return r;
}

static PyObject *crdt_operand_fn(PyObject *Py_UNUSED(mod), PyObject *args) { return operand_or_apply(args, 0); }
static PyObject *crdt_apply_fn(PyObject *Py_UNUSED(mod), PyObject *args) { return operand_or_apply(args, 1); }

static PyMethodDef crdt_functions[] = {
    {"crdt_fold", crdt_fold, METH_VARARGS, "crdt_fold(tag, values) -> bytes: the C join (tests)."},
    {"crdt_value", crdt_value, METH_VARARGS, "crdt_value(tag, state) -> value: the C to_value (tests)."},
    {"crdt_operand", crdt_operand_fn, METH_VARARGS,
     "crdt_operand(tag, state, kind, args, hlc, node) -> bytes: the C operand (tests)."},
    {"crdt_apply", crdt_apply_fn, METH_VARARGS,
     "crdt_apply(tag, state, kind, args, hlc, node) -> bytes: the state after a local operation (tests)."},
    {NULL, NULL, 0, NULL},
};

int crdt_module_exec(PyObject *m)
{
    PyObject *lock_type = PyType_FromSpec(&ml_spec);
    if (!lock_type)
        return -1;
    if (PyModule_AddObject(m, "MergeLock", lock_type) < 0) {
        Py_DECREF(lock_type);
        return -1;
    }
    if (crdt_path_add_type(m, lock_type) < 0)
        return -1;
    return PyModule_AddFunctions(m, crdt_functions);
}
