"""Build glue: compiles csrc/ into abase_engine._abase through cffi (API mode),
and the CPython-API glue for the hot calls (csrc/fastcall.c) into
abase_engine._fast, which calls the cffi module's functions by address."""

import os

from setuptools import Extension, setup

_CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
if os.environ.get("ABASE_SANITIZE"):
    _CFLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]

setup(
    cffi_modules=["src/abase_engine/_build_ffi.py:ffi"],
    ext_modules=[
        Extension(
            "abase_engine._fast",
            sources=["csrc/fastcall.c", "csrc/fast_timestamp.c", "csrc/fast_store.c", "csrc/fast_scan.c",
                     "csrc/fast_batch.c", "csrc/fast_apply.c", "csrc/crdt_codec.c", "csrc/crdt_state.c", "csrc/crdt_ops.c",
                     "csrc/crdt_py.c", "csrc/crdt_path.c"],
            include_dirs=["csrc"],
            depends=["csrc/abase.h", "csrc/fast.h", "csrc/crdt.h", "csrc/crdt_py.h"],
            extra_compile_args=_CFLAGS,
        )
    ],
)
