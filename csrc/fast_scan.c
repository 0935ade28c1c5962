#include "fast.h"
int fast_scan_init(PyObject *module, fast_state *st) { (void)module; (void)st; return 0; }
