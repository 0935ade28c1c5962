"""Build glue: compiles csrc/ into abase_engine._abase through cffi (API mode)."""

from setuptools import setup

setup(
    cffi_modules=["src/abase_engine/_build_ffi.py:ffi"],
)
