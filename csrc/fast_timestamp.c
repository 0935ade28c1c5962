/*
 * fast_timestamp.c: abase_engine.Timestamp, an immutable (hlc, node) value.
 *
 * Every put returns one, so it must cost about what a small tuple costs to
 * create, and a program that keeps millions of them (a list of put
 * results) must not make the cyclic garbage collector walk them: it holds
 * only integers, so the type is not GC-tracked (no Py_TPFLAGS_HAVE_GC).
 * It used to be a tuple subclass (hlc, node); it is not one any more
 * (CHANGELOG.md).
 *
 * The packed HLC is physical_ms << 16 | logical (abase.h), so ordering by
 * (hlc, node) is ordering by (physical_ms, logical, node_id).
 */
#include "fast.h"

#include <string.h>

#define MAX_LOGICAL ((1u << ABASE_LOGICAL_BITS) - 1u)

typedef struct {
    PyObject_HEAD
    uint64_t hlc;
    uint32_t node;
} TimestampObject;

PyObject *fast_ts_new(PyTypeObject *tp, uint64_t hlc, uint32_t node)
{
    /* PyObject_New: no zeroing, no GC header; it takes a reference to
     * the (heap) type, which ts_dealloc gives back. */
    TimestampObject *t = PyObject_New(TimestampObject, tp);
    if (!t)
        return NULL;
    t->hlc = hlc;
    t->node = node;
    return (PyObject *)t;
}

void fast_ts_read(PyObject *ts, uint64_t *hlc, uint32_t *node)
{
    *hlc = ((TimestampObject *)ts)->hlc;
    *node = ((TimestampObject *)ts)->node;
}

static void ts_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

/* One constructor argument as an integer in 0..hi: TypeError for anything
 * but an int (bool excluded), ValueError out of range. */
static int ts_arg(PyObject *v, const char *name, unsigned long long hi, unsigned long long *out)
{
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "Timestamp %s must be int, not %.100s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow || x < 0 || (unsigned long long)x > hi) {
        PyErr_Format(PyExc_ValueError, "Timestamp %s=%R out of range 0..%llu", name, v, hi);
        return -1;
    }
    *out = (unsigned long long)x;
    return 0;
}

static PyObject *ts_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"physical_ms", "logical", "node_id", NULL};
    PyObject *pm, *lg = NULL, *nd = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:Timestamp", kwlist, &pm, &lg, &nd))
        return NULL;
    unsigned long long p, l = 0, n = 0;
    if (ts_arg(pm, "physical_ms", ABASE_MAX_PHYSICAL_MS, &p) < 0 ||
        (lg && ts_arg(lg, "logical", MAX_LOGICAL, &l) < 0) ||
        (nd && ts_arg(nd, "node_id", UINT32_MAX, &n) < 0))
        return NULL;
    return fast_ts_new(tp, (uint64_t)p << ABASE_LOGICAL_BITS | l, (uint32_t)n);
}

static PyObject *ts_repr(PyObject *self)
{
    TimestampObject *t = (TimestampObject *)self;
    return PyUnicode_FromFormat("Timestamp(%llu, %u, %u)", (unsigned long long)(t->hlc >> ABASE_LOGICAL_BITS),
                                (unsigned)(t->hlc & MAX_LOGICAL), (unsigned)t->node);
}

static Py_hash_t ts_hash(PyObject *self)
{
    TimestampObject *t = (TimestampObject *)self;
    uint64_t x = t->hlc * UINT64_C(0x9E3779B97F4A7C15) ^ ((uint64_t)t->node + UINT64_C(0x632BE59BD9B4E019));
    x ^= x >> 31;
    x *= UINT64_C(0xBF58476D1CE4E5B9);
    x ^= x >> 29;
    Py_hash_t h = (Py_hash_t)x;
    return h == -1 ? -2 : h;
}

static PyObject *ts_richcompare(PyObject *a, PyObject *b, int op)
{
    if (Py_TYPE(a) != Py_TYPE(b))
        Py_RETURN_NOTIMPLEMENTED;
    TimestampObject *x = (TimestampObject *)a, *y = (TimestampObject *)b;
    int c = x->hlc < y->hlc ? -1 : x->hlc > y->hlc ? 1 : x->node < y->node ? -1 : x->node > y->node;
    Py_RETURN_RICHCOMPARE(c, 0, op);
}

/* ------------------------------------------------------------ attributes */

static PyObject *ts_physical(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((TimestampObject *)self)->hlc >> ABASE_LOGICAL_BITS);
}

static PyObject *ts_logical(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong((unsigned long)(((TimestampObject *)self)->hlc & MAX_LOGICAL));
}

static PyObject *ts_node(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(((TimestampObject *)self)->node);
}

static PyObject *ts_hlc(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(((TimestampObject *)self)->hlc);
}

static PyGetSetDef ts_getset[] = {
    {"physical_ms", ts_physical, NULL, "Milliseconds since the Unix epoch (the physical part of the HLC).", NULL},
    {"logical", ts_logical, NULL, "The logical counter, which orders events within one millisecond.", NULL},
    {"node_id", ts_node, NULL, "The id of the node that issued this timestamp (the tiebreak).", NULL},
    {"hlc", ts_hlc, NULL, "The packed 64-bit HLC: ``physical_ms << 16 | logical``.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ------------------------------------------------------------ methods */

static PyObject *ts_to_bytes(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    TimestampObject *t = (TimestampObject *)self;
    uint8_t out[12];
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(t->hlc >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        out[8 + i] = (uint8_t)(t->node >> (24 - 8 * i));
    return PyBytes_FromStringAndSize((const char *)out, 12);
}

static PyObject *ts_from_bytes(PyObject *cls, PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError, "Timestamp.from_bytes needs bytes, not %.100s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    PyObject *b = PyBytes_FromObject(data); /* any memoryview layout, copied */
    if (!b)
        return NULL;
    if (PyBytes_GET_SIZE(b) != 12) {
        PyErr_Format(PyExc_ValueError, "Timestamp.from_bytes needs 12 bytes, got %zd", PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(b);
    uint64_t hlc = 0;
    uint32_t node = 0;
    for (int i = 0; i < 8; i++)
        hlc = hlc << 8 | p[i];
    for (int i = 8; i < 12; i++)
        node = node << 8 | p[i];
    Py_DECREF(b);
    if ((hlc >> ABASE_LOGICAL_BITS) > ABASE_MAX_PHYSICAL_MS) {
        PyErr_Format(PyExc_ValueError, "Timestamp.from_bytes: physical_ms %llu out of range 0..%llu",
                     (unsigned long long)(hlc >> ABASE_LOGICAL_BITS), (unsigned long long)ABASE_MAX_PHYSICAL_MS);
        return NULL;
    }
    return fast_ts_new((PyTypeObject *)cls, hlc, node);
}

/* (hlc, node) from two Python ints: OverflowError or TypeError when they do
 * not fit (u64, u32). */
static int packed_args(PyObject *const *args, Py_ssize_t nargs, uint64_t *hlc, uint32_t *node)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "from_packed(hlc, node_id) takes 2 arguments");
        return -1;
    }
    unsigned long long h = PyLong_AsUnsignedLongLong(args[0]);
    if (h == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    unsigned long n = PyLong_AsUnsignedLong(args[1]);
    if (n == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "node_id does not fit in 32 bits");
        return -1;
    }
    *hlc = h;
    *node = (uint32_t)n;
    return 0;
}

static PyObject *ts_from_packed_cls(PyObject *cls, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hlc;
    uint32_t node;
    if (packed_args(args, nargs, &hlc, &node) < 0)
        return NULL;
    return fast_ts_new((PyTypeObject *)cls, hlc, node);
}

static PyObject *ts_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    TimestampObject *t = (TimestampObject *)self;
    return Py_BuildValue("(O(KII))", (PyObject *)Py_TYPE(self), (unsigned long long)(t->hlc >> ABASE_LOGICAL_BITS),
                         (unsigned)(t->hlc & MAX_LOGICAL), (unsigned)t->node);
}

static PyObject *ts_copy(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_INCREF(self); /* immutable: a copy is the object itself */
    return self;
}

static PyMethodDef ts_methods[] = {
    {"to_bytes", ts_to_bytes, METH_NOARGS,
     "12 bytes, big-endian ``hlc`` then ``node_id``: byte order equals timestamp order."},
    {"from_bytes", ts_from_bytes, METH_O | METH_CLASS,
     "Inverse of :meth:`to_bytes`.\n\n:raises TypeError: ``data`` is not bytes, bytearray or memoryview.\n"
     ":raises ValueError: ``data`` is not 12 bytes, or its physical part is out of range."},
    {"_from_packed", (PyCFunction)(void (*)(void))ts_from_packed_cls, METH_FASTCALL | METH_CLASS,
     "Build from the packed 64-bit HLC and the node id (no range checks: C-produced values)."},
    {"__reduce__", ts_reduce, METH_NOARGS, "Pickle as Timestamp(physical_ms, logical, node_id)."},
    {"__copy__", ts_copy, METH_NOARGS, "The timestamp itself (it is immutable)."},
    {"__deepcopy__", ts_copy, METH_O, "The timestamp itself (it is immutable)."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(ts_doc,
"Timestamp(physical_ms, logical=0, node_id=0)\n"
"--\n\n"
"A hybrid-logical-clock reading plus the node that issued it.\n\n"
"Ordered by ``(physical_ms, logical, node_id)``, which is the total order\n"
"used for last-write-wins; hashable; immutable; equal to another Timestamp\n"
"with the same fields and to nothing else (comparing its order with any\n"
"other type raises TypeError). ``to_bytes()`` gives 12 big-endian bytes\n"
"whose byte order equals the timestamp order. A small C object holding\n"
"only integers, which the garbage collector does not track.\n\n"
">>> a = Timestamp(1000, 0, 1); b = Timestamp(1000, 1, 0)\n"
">>> a < b, Timestamp.from_bytes(a.to_bytes()) == a, a.hlc == 1000 << 16\n"
"(True, True, True)\n"
">>> a\n"
"Timestamp(1000, 0, 1)\n\n"
":raises TypeError: an argument is not an int (bool is refused).\n"
":raises ValueError: physical_ms not in 0..2**47-1, logical not in\n"
"    0..65535, or node_id not in 0..2**32-1.\n\n"
"Thread-safety: safe (immutable).");

static PyType_Slot ts_slots[] = {
    {Py_tp_doc, (void *)ts_doc},
    {Py_tp_new, ts_new},
    {Py_tp_dealloc, ts_dealloc},
    {Py_tp_repr, ts_repr},
    {Py_tp_hash, ts_hash},
    {Py_tp_richcompare, ts_richcompare},
    {Py_tp_getset, ts_getset},
    {Py_tp_methods, ts_methods},
    {0, NULL},
};

static PyType_Spec ts_spec = {
    /* record.py re-exports it: pickles and doctests find it there */
    .name = "abase_engine.record.Timestamp",
    .basicsize = sizeof(TimestampObject),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT
#ifdef Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = ts_slots,
};

/* from_packed(hlc, node_id) -> Timestamp: the module-level fast constructor. */
static PyObject *from_packed(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t hlc;
    uint32_t node;
    if (packed_args(args, nargs, &hlc, &node) < 0)
        return NULL;
    fast_state *st = PyModule_GetState(mod);
    return fast_ts_new(st->timestamp_type, hlc, node);
}

static PyMethodDef ts_functions[] = {
    {"from_packed", (PyCFunction)(void (*)(void))from_packed, METH_FASTCALL,
     "from_packed(hlc, node_id) -> Timestamp, without range checks (values the C core produced)."},
    {NULL, NULL, 0, NULL},
};

int fast_timestamp_init(PyObject *module, fast_state *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, &ts_spec, NULL);
    if (!tp)
        return -1;
    st->timestamp_type = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(module, "Timestamp", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return PyModule_AddFunctions(module, ts_functions);
}
