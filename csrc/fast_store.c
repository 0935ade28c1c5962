/*
 * fast_store.c: StoreReader, the store's per-thread read transactions.
 *
 * A get of a key the log does not hold reads the key's compacted version
 * from LMDB. py-lmdb bundles its own liblmdb and one environment must
 * never be opened by two copies of LMDB in a process, so this file reaches
 * LMDB only through py-lmdb's objects: each thread keeps one read
 * Transaction, and a lookup calls its bound `get` through the vectorcall
 * protocol (py-lmdb releases the GIL around mdb_get).
 *
 * A cached transaction must not keep LMDB from reusing pages the compactor
 * frees, nor be open while the map grows:
 *   - `generation` is bumped by the store after every commit and after a
 *     new database handle is opened; a lookup whose transaction began
 *     under an older generation renews it first, and release_stale()
 *     (called by the store before each write transaction) aborts every
 *     stale transaction that no thread is using;
 *   - block() makes new lookups wait, waits until none is in flight and
 *     aborts every cached transaction; the store calls it before
 *     set_mapsize and unblock() after; close() does the same for good.
 *
 * Threads. Slots are found by thread ident in an open-addressing table of
 * pointers (a slot never moves, so a thread may hold its slot across the
 * GIL release inside py-lmdb). A slot is used only by its own thread;
 * `in_use` tells the others (release_stale, block, close) to leave its
 * transaction alone. Everything runs with the GIL held, except the waits
 * of block() and of a blocked lookup, which hold `mu` instead; `in_use`
 * (a count of threads inside a lookup) is atomic because block() reads it
 * without the GIL.
 */
#include "fast.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned long ident; /* the owning thread */
    PyObject *txn;       /* its read Transaction, or NULL */
    PyObject *get;       /* txn.get, bound, or NULL */
    uint64_t generation; /* the reader's generation when txn began */
    char in_use;         /* the owner is inside a lookup */
} reader_slot;

typedef struct {
    PyObject_HEAD
    PyObject *env;        /* lmdb.Environment; NULL once closed */
    PyObject *begin;      /* env.begin */
    PyObject *lmdb_error; /* lmdb.Error */
    uint64_t generation;
    reader_slot **table;  /* open addressing by ident; NULL entries are free */
    size_t cap;           /* a power of two */
    size_t used;
    int in_use;           /* lookups in flight (atomic) */
    int blocked;          /* block() called: new lookups wait */
    int closed;
    pthread_mutex_t mu;   /* with cv: waits of block() and of blocked lookups */
    pthread_cond_t cv;
} StoreReader;

/* Above this many slots, slots of threads that hold no transaction (gone,
 * most likely) are dropped when a new thread needs one. */
#define SWEEP_AT 256

static size_t ident_hash(unsigned long ident, size_t mask)
{
    uint64_t x = (uint64_t)ident * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(x >> 32) & mask;
}

static int table_put(reader_slot **table, size_t cap, reader_slot *s)
{
    size_t mask = cap - 1;
    for (size_t i = ident_hash(s->ident, mask);; i = (i + 1) & mask) {
        if (!table[i]) {
            table[i] = s;
            return 0;
        }
    }
}

/* Rebuild the table at capacity `cap`, dropping idle slots without a
 * transaction when `sweep`. Returns -1 on allocation failure (unchanged). */
static int table_rebuild(StoreReader *r, size_t cap, int sweep)
{
    reader_slot **t = calloc(cap, sizeof(*t));
    if (!t)
        return -1;
    size_t used = 0;
    for (size_t i = 0; i < r->cap; i++) {
        reader_slot *s = r->table[i];
        if (!s)
            continue;
        if (sweep && !s->txn && !s->in_use) {
            free(s);
            continue;
        }
        table_put(t, cap, s);
        used++;
    }
    free(r->table);
    r->table = t;
    r->cap = cap;
    r->used = used;
    return 0;
}

/* The calling thread's slot, created on first use; NULL (MemoryError set)
 * when it cannot be allocated. */
static reader_slot *slot_of(StoreReader *r, unsigned long me)
{
    size_t mask = r->cap - 1;
    for (size_t i = ident_hash(me, mask); r->table[i]; i = (i + 1) & mask)
        if (r->table[i]->ident == me)
            return r->table[i];
    if (r->used >= SWEEP_AT && (r->used + 1) * 2 > r->cap) {
        if (table_rebuild(r, r->cap, 1) < 0)
            return (reader_slot *)PyErr_NoMemory();
    }
    if ((r->used + 1) * 2 > r->cap && table_rebuild(r, r->cap * 2, 0) < 0)
        return (reader_slot *)PyErr_NoMemory();
    reader_slot *s = calloc(1, sizeof(*s));
    if (!s)
        return (reader_slot *)PyErr_NoMemory();
    s->ident = me;
    table_put(r->table, r->cap, s);
    r->used++;
    return s;
}

/* Detach and abort a slot's transaction (GIL held; the slot is not in use,
 * or in use by the caller). The slot is emptied before py-lmdb runs, since
 * the abort may release the GIL. Returns -1 with an exception set if the
 * abort raised (the transaction is dropped all the same). */
static int slot_drop(reader_slot *s)
{
    PyObject *txn = s->txn, *get = s->get;
    s->txn = NULL;
    s->get = NULL;
    Py_XDECREF(get);
    if (!txn)
        return 0;
    PyObject *res = PyObject_CallMethod(txn, "abort", NULL);
    Py_DECREF(txn);
    if (!res)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* A fresh read transaction for the caller's slot (in use by the caller). */
static int slot_renew(StoreReader *r, reader_slot *s)
{
    if (slot_drop(s) < 0)
        PyErr_Clear(); /* an abort that failed leaves nothing to keep */
    uint64_t gen = r->generation; /* before begin: a commit meanwhile makes it stale */
    PyObject *txn = PyObject_CallNoArgs(r->begin);
    if (!txn)
        return -1;
    PyObject *get = PyObject_GetAttrString(txn, "get");
    if (!get) {
        Py_DECREF(txn);
        return -1;
    }
    s->txn = txn;
    s->get = get;
    s->generation = gen;
    return 0;
}

/* Wait, with the GIL released, until the reader is unblocked or closed. */
static void wait_unblocked(StoreReader *r)
{
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&r->mu);
    while (__atomic_load_n(&r->blocked, __ATOMIC_SEQ_CST) && !__atomic_load_n(&r->closed, __ATOMIC_SEQ_CST))
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    Py_END_ALLOW_THREADS
}

int fast_store_get(PyObject *reader, PyObject *dbi, PyObject *key, PyObject **raw)
{
    StoreReader *r = (StoreReader *)reader;
    while (r->blocked && !r->closed)
        wait_unblocked(r);
    if (r->closed || !r->table)
        return STORE_UNAVAILABLE;
    reader_slot *s = slot_of(r, PyThread_get_thread_ident());
    if (!s)
        return STORE_FAILED;
    if (s->in_use)
        return STORE_UNAVAILABLE; /* re-entered (a destructor run by py-lmdb?) */
    s->in_use = 1;
    __atomic_add_fetch(&r->in_use, 1, __ATOMIC_SEQ_CST);
    int rc = STORE_FAILED;
    if (s->generation == r->generation && s->txn) {
        rc = 0;
    } else if (slot_renew(r, s) == 0) {
        rc = 0;
    }
    PyObject *res = NULL;
    if (rc == 0) {
        PyObject *args[3] = {key, Py_None, dbi};
        res = PyObject_Vectorcall(s->get, args, 3, NULL);
        rc = !res ? STORE_FAILED : res == Py_None ? STORE_MISSING : STORE_FOUND;
        if (!res && PyErr_ExceptionMatches(r->lmdb_error)) {
            /* the transaction may have been invalidated under us (the
             * environment closed or resized by someone else): renew it
             * next time rather than fail forever */
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            if (slot_drop(s) < 0)
                PyErr_Clear();
            PyErr_Restore(t, v, tb);
        }
    }
    s->in_use = 0;
    __atomic_sub_fetch(&r->in_use, 1, __ATOMIC_SEQ_CST);
    if (r->blocked) {
        pthread_mutex_lock(&r->mu);
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (rc == STORE_FOUND) {
        if (!PyBytes_Check(res)) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_TypeError, "the store returned a non-bytes value");
            return STORE_FAILED;
        }
        *raw = res;
    } else if (rc == STORE_MISSING) {
        Py_DECREF(res);
    }
    return rc;
}

int fast_store_error_is_lmdb(PyObject *reader)
{
    StoreReader *r = (StoreReader *)reader;
    return r->lmdb_error && PyErr_ExceptionMatches(r->lmdb_error);
}

/* ------------------------------------------------------------ the type */

static int sr_init(StoreReader *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"env", "error", NULL};
    PyObject *env, *error;
    if (r->table) {
        PyErr_SetString(PyExc_TypeError, "StoreReader is already initialized");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:StoreReader", kwlist, &env, &error))
        return -1;
    if (!PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "error must be an exception class (lmdb.Error)");
        return -1;
    }
    PyObject *begin = PyObject_GetAttrString(env, "begin");
    if (!begin)
        return -1;
    r->table = calloc(16, sizeof(*r->table));
    if (!r->table) {
        Py_DECREF(begin);
        PyErr_NoMemory();
        return -1;
    }
    r->cap = 16;
    Py_INCREF(env);
    r->env = env;
    r->begin = begin;
    Py_INCREF(error);
    r->lmdb_error = error;
    return 0;
}

static PyObject *sr_new(PyTypeObject *tp, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    StoreReader *r = (StoreReader *)tp->tp_alloc(tp, 0);
    if (!r)
        return NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    return (PyObject *)r;
}

static void free_slots(StoreReader *r)
{
    for (size_t i = 0; r->table && i < r->cap; i++) {
        reader_slot *s = r->table[i];
        if (s) {
            Py_CLEAR(s->get);
            Py_CLEAR(s->txn); /* py-lmdb aborts a transaction it deallocates */
            free(s);
        }
    }
    free(r->table);
    r->table = NULL;
    r->cap = r->used = 0;
}

static void sr_dealloc(StoreReader *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    free_slots(r);
    Py_CLEAR(r->begin);
    Py_CLEAR(r->env);
    Py_CLEAR(r->lmdb_error);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    tp->tp_free((PyObject *)r);
    Py_DECREF(tp);
}

static PyObject *closed_error(StoreReader *r)
{
    PyErr_SetString(r->lmdb_error ? r->lmdb_error : PyExc_RuntimeError, "the store is closed");
    return NULL;
}

/* get(dbi, key) -> bytes | None: the encoded stored version of a non-empty
 * key, through the calling thread's transaction. */
static PyObject *sr_get(StoreReader *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "get(dbi, key: bytes)");
        return NULL;
    }
    if (!r->table)
        return closed_error(r);
    PyObject *raw = NULL;
    int rc = fast_store_get((PyObject *)r, args[0], args[1], &raw);
    if (rc == STORE_FOUND)
        return raw;
    if (rc == STORE_MISSING)
        Py_RETURN_NONE;
    if (rc == STORE_FAILED)
        return NULL;
    if (r->closed)
        return closed_error(r);
    /* this thread's transaction is busy further up the stack: a one-shot one */
    PyObject *txn = PyObject_CallNoArgs(r->begin);
    if (!txn)
        return NULL;
    PyObject *get = PyObject_GetAttrString(txn, "get");
    PyObject *res = NULL;
    if (get) {
        PyObject *a[3] = {args[1], Py_None, args[0]};
        res = PyObject_Vectorcall(get, a, 3, NULL);
        Py_DECREF(get);
    }
    PyObject *ab = PyObject_CallMethod(txn, "abort", NULL);
    Py_XDECREF(ab);
    if (!ab && res) {
        Py_CLEAR(res);
    }
    Py_DECREF(txn);
    return res;
}

static PyObject *sr_invalidate(StoreReader *r, PyObject *Py_UNUSED(ignored))
{
    r->generation++;
    Py_RETURN_NONE;
}

/* Abort the transactions of slots not in use: the stale ones, or all. */
static int drop_idle(StoreReader *r, int all)
{
    int rc = 0;
    for (size_t i = 0; i < r->cap; i++) {
        reader_slot *s = r->table[i];
        /* r->table is re-read each step: an abort that releases the GIL
         * can let another thread grow the table meanwhile */
        if (s && s->txn && !s->in_use && (all || s->generation != r->generation))
            if (slot_drop(s) < 0 && rc == 0)
                rc = -1;
    }
    return rc;
}

static PyObject *sr_release_stale(StoreReader *r, PyObject *const *args, Py_ssize_t nargs)
{
    int all = 0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "release_stale(all=False)");
        return NULL;
    }
    if (nargs == 1 && (all = PyObject_IsTrue(args[0])) < 0)
        return NULL;
    if (r->table && drop_idle(r, all) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Make new lookups wait, wait for those in flight, abort every transaction. */
static int block_and_drain(StoreReader *r)
{
    r->blocked = 1;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&r->mu);
    while (__atomic_load_n(&r->in_use, __ATOMIC_SEQ_CST) > 0)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    Py_END_ALLOW_THREADS
    return r->table ? drop_idle(r, 1) : 0;
}

static PyObject *sr_block(StoreReader *r, PyObject *Py_UNUSED(ignored))
{
    if (r->blocked) {
        PyErr_SetString(PyExc_RuntimeError, "StoreReader.block: already blocked");
        return NULL;
    }
    if (block_and_drain(r) < 0) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        pthread_mutex_lock(&r->mu);
        r->blocked = 0;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        PyErr_Restore(t, v, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *sr_unblock(StoreReader *r, PyObject *Py_UNUSED(ignored))
{
    r->generation++; /* transactions begun from now on see the new map */
    pthread_mutex_lock(&r->mu);
    __atomic_store_n(&r->blocked, 0, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    Py_RETURN_NONE;
}

static PyObject *sr_close(StoreReader *r, PyObject *Py_UNUSED(ignored))
{
    if (r->closed)
        Py_RETURN_NONE;
    int rc = block_and_drain(r);
    pthread_mutex_lock(&r->mu);
    __atomic_store_n(&r->closed, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    free_slots(r);
    Py_CLEAR(r->begin);
    Py_CLEAR(r->env);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *sr_generation(StoreReader *r, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(r->generation);
}

static PyObject *sr_open_txns(StoreReader *r, void *Py_UNUSED(c))
{
    Py_ssize_t n = 0;
    for (size_t i = 0; i < r->cap; i++)
        if (r->table[i] && r->table[i]->txn)
            n++;
    return PyLong_FromSsize_t(n);
}

static PyObject *sr_closed(StoreReader *r, void *Py_UNUSED(c))
{
    return PyBool_FromLong(r->closed);
}

static PyMethodDef sr_methods[] = {
    {"get", (PyCFunction)(void (*)(void))sr_get, METH_FASTCALL,
     "get(dbi, key) -> bytes | None: the stored version of a non-empty key."},
    {"invalidate", (PyCFunction)sr_invalidate, METH_NOARGS,
     "The store changed: every cached transaction is renewed before its next use."},
    {"release_stale", (PyCFunction)(void (*)(void))sr_release_stale, METH_FASTCALL,
     "release_stale(all=False): abort the cached transactions no thread is using that are stale (or all)."},
    {"block", (PyCFunction)sr_block, METH_NOARGS,
     "Make lookups wait, wait for those in flight and abort every cached transaction (before set_mapsize)."},
    {"unblock", (PyCFunction)sr_unblock, METH_NOARGS, "Let lookups run again, in fresh transactions."},
    {"close", (PyCFunction)sr_close, METH_NOARGS,
     "Wait for lookups in flight, abort every transaction; later lookups take the general path."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sr_getset[] = {
    {"generation", (getter)sr_generation, NULL, "Bumped on every change of the store.", NULL},
    {"open_transactions", (getter)sr_open_txns, NULL, "Cached read transactions currently open.", NULL},
    {"closed", (getter)sr_closed, NULL, "True once close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sr_slots[] = {
    {Py_tp_doc, "StoreReader(env, error): per-thread py-lmdb read transactions; see fast_store.c."},
    {Py_tp_new, sr_new},
    {Py_tp_init, sr_init},
    {Py_tp_dealloc, sr_dealloc},
    {Py_tp_methods, sr_methods},
    {Py_tp_getset, sr_getset},
    {0, NULL},
};

static PyType_Spec sr_spec = {
    .name = "abase_engine._fast.StoreReader",
    .basicsize = sizeof(StoreReader),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = sr_slots,
};

int fast_store_init(PyObject *module, fast_state *st)
{
    PyObject *tp = PyType_FromModuleAndSpec(module, &sr_spec, NULL);
    if (!tp)
        return -1;
    st->reader_type = (PyTypeObject *)tp;
    Py_INCREF(tp);
    if (PyModule_AddObject(module, "StoreReader", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}
