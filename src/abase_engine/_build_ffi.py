"""Build script of the C core: cffi API (out-of-line) mode.

``setup.py`` names ``ffi`` here in ``cffi_modules``. The cdef is taken from
``csrc/abase.h`` itself (the part after the cffi marker), so the header is the
single source of the API; the values of the constants are left to the C
compiler (``#define NAME ...``). Set ``ABASE_SANITIZE=1`` to build with
AddressSanitizer and UndefinedBehaviorSanitizer;
run this file as a script to build the extension in place (see .ci/run).
"""

import os
import re

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.normpath(os.path.join(_HERE, "..", ".."))
_CSRC = os.path.join(_ROOT, "csrc")
_MARKER = "/* ---- the part below is also given to cffi"


def _cdef_from_header(text: str) -> str:
    names = re.findall(r"^#define\s+(ABASE_[A-Z0-9_]+)\s+\S", text, flags=re.M)
    skip = {"ABASE_H"}
    consts = "".join(f"#define {n} ...\n" for n in names if n not in skip)
    body = text[text.index(_MARKER):]
    body = body[body.index("\n") + 1:]
    body = body[: body.rindex("#endif")]
    return consts + body


with open(os.path.join(_CSRC, "abase.h")) as _f:
    _HEADER = _f.read()

_extra_compile = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
_extra_link = ["-lpthread"]
if os.environ.get("ABASE_SANITIZE"):
    _extra_compile += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    _extra_link += ["-fsanitize=address,undefined"]

# setuptools wants paths relative to the project root; run as a script
# (the sanitizer build) the paths are absolute, since cffi compiles elsewhere.
_AS_SCRIPT = __name__ == "__main__"


def _path(p: str) -> str:
    return p if _AS_SCRIPT else os.path.relpath(p, _ROOT)


# The C core: the log (log_internal.h lists its files) and what it builds on.
_SOURCES = ("crc32c.c", "hlc.c", "index.c", "log.c", "write.c", "read.c", "scan.c", "recovery.c", "fold.c", "feed.c",
            "mark.c", "merge_log.c", "tail.c", "apply.c")
# A change to any of these rebuilds the extension.
_HEADERS = ("abase.h", "bytes.h", "index.h", "log_internal.h")

ffi = FFI()
ffi.cdef(_cdef_from_header(_HEADER))
ffi.set_source(
    "abase_engine._abase",
    '#include "abase.h"\n',
    sources=[_path(os.path.join(_CSRC, n)) for n in _SOURCES],
    depends=[_path(os.path.join(_CSRC, n)) for n in _HEADERS],
    include_dirs=[_path(_CSRC)],
    extra_compile_args=_extra_compile,
    extra_link_args=_extra_link,
)

if _AS_SCRIPT:
    # Build in place, next to this file: ABASE_SANITIZE=1 python src/abase_engine/_build_ffi.py
    ffi.compile(tmpdir=os.path.join(_ROOT, "src"), verbose=False)
