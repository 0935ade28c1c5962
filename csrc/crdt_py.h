/*
 * crdt_py.h: what the CPython files of the CRDT fast paths share
 * (crdt_py.c: merge lock, values, operation parsing, test functions;
 * crdt_path.c: the per-namespace fast path). See crdt.h for the C CRDTs.
 */
#ifndef ABASE_CRDT_PY_H
#define ABASE_CRDT_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include "crdt.h"

/* The engine's merge lock: re-entrant; every field under the GIL. */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    unsigned long owner; /* thread ident of the holder */
    unsigned long count; /* 0: free */
} MergeLock;

/* Take the lock without waiting (1), or not (0). GIL held. */
int mlock_try(MergeLock *l);
void mlock_release(MergeLock *l);

/* The Python value of a state (what the operator's to_value returns); a
 * new reference to None when nothing is visible. */
PyObject *crdt_state_value(cstate *s);

/* Parse (kind, args) of an operation for a state of type tag: 1 parsed,
 * 0 not one the fast path takes (the general path decides). */
int crdt_parse_op(int tag, PyObject *kind, PyObject *args, cop *out);

/* crdt_path.c: add the CrdtPath type; its `_lock_type` is lock_type. */
int crdt_path_add_type(PyObject *m, PyObject *lock_type);

/* Add MergeLock, CrdtPath and the test functions to the _fast module. */
int crdt_module_exec(PyObject *m);

#endif
