"""Build and drive the fault-injection shim ``tests/faultfs.c``.

The shim is an LD_PRELOAD library, so it acts on a process from its start:
the tests run the engine in a child Python (``tests/fault_child.py``,
``tests/powerloss.py``) started with :func:`child_env`, and the child drives
the shim through :class:`Shim` (ctypes on the preloaded library). The
library is compiled once per content of ``faultfs.c`` (with ``$CC``, default
``cc``) into the temporary directory; :func:`available` says whether that
worked (the tests that need it are skipped, with the reason, when it did not).

Why a preloaded shim rather than hooks compiled into the core: it reaches
the three places that write the engine's files (the C core, LMDB inside
py-lmdb, Python's own ``os.fsync``/``write`` for ``slots.json``) through the
same calls, the core is tested exactly as shipped, and nothing test-only is
compiled into it.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "faultfs.c")

FAIL, SHORT = 0, 1
_built: Dict[str, object] = {}


def build() -> str:
    """The path of the compiled shim (built on first use).

    :raises RuntimeError: no C compiler, or the shim does not compile.
    """
    if "so" in _built:
        return _built["so"]  # type: ignore[return-value]
    if "error" in _built:
        raise RuntimeError(_built["error"])
    with open(SRC, "rb") as f:
        src = f.read()
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha1(src + cc.encode()).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(), f"abase-faultfs-{digest}.so")
    if not os.path.exists(out):
        if shutil.which(cc) is None:
            _built["error"] = f"no C compiler ({cc}) to build tests/faultfs.c"
            raise RuntimeError(_built["error"])
        tmp = f"{out}.{os.getpid()}.tmp"
        res = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", tmp, SRC, "-ldl",
                              "-lpthread"], capture_output=True, text=True)
        if res.returncode != 0:
            _built["error"] = f"tests/faultfs.c does not compile: {res.stderr}"
            raise RuntimeError(_built["error"])
        os.replace(tmp, out)
    _built["so"] = out
    return out


def available() -> Optional[str]:
    """None if the shim can be used here, else why not."""
    if not sys.platform.startswith("linux"):
        return "the fault shim needs Linux (/proc/self/fd, LD_PRELOAD)"
    try:
        build()
    except RuntimeError as exc:
        return str(exc)
    return None


def child_env(**extra: str) -> Dict[str, str]:
    """Environment of a child that runs with the shim preloaded (after any
    library already preloaded, such as the sanitizers') and imports the same
    abase_engine as this process."""
    so = build()
    env = dict(os.environ)
    pre = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{pre} {so}".strip()
    env["FAULTFS_SO"] = so
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra)
    return env


class Shim:
    """The preloaded shim, seen from inside the child process."""

    def __init__(self) -> None:
        path = os.environ.get("FAULTFS_SO")
        if not path:
            raise RuntimeError("not running under the fault shim (FAULTFS_SO is not set)")
        self.lib = ctypes.CDLL(path)  # the library already loaded by LD_PRELOAD
        self.lib.faultfs_rule.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int]
        self.lib.faultfs_hits.argtypes = [ctypes.c_char_p]
        self.lib.faultfs_hits.restype = ctypes.c_long
        self.lib.faultfs_clock_offset_ms.argtypes = [ctypes.c_longlong]
        self.lib.faultfs_trace.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self.lib.faultfs_cut.argtypes = [ctypes.c_char_p]

    def fail(self, call: str, path_part: str, err: int = _errno.EIO, *, skip: int = 0, count: int = 1) -> None:
        """Make calls of ``call`` on matching paths fail with ``err`` (see faultfs.c)."""
        assert self.lib.faultfs_rule(call.encode(), path_part.encode(), FAIL, err, skip, count) == 0

    def short_write(self, path_part: str, *, skip: int = 0, count: int = 1) -> None:
        """Make writes to matching paths write only half of their bytes."""
        assert self.lib.faultfs_rule(b"write", path_part.encode(), SHORT, 0, skip, count) == 0

    def clear(self) -> None:
        self.lib.faultfs_clear()

    def hits(self, call: str) -> int:
        """Faults injected so far into ``call``."""
        return int(self.lib.faultfs_hits(call.encode()))

    def clock_offset_ms(self, ms: int) -> None:
        """Move every CLOCK_REALTIME reading by ``ms`` (negative: back)."""
        self.lib.faultfs_clock_offset_ms(ms)

    def trace(self, root: str, snapdir: str) -> None:
        """Keep the durable state of the files under ``root`` in ``snapdir``."""
        self.lib.faultfs_trace(os.path.realpath(root).encode(), snapdir.encode())

    def cut(self, dest: str) -> None:
        """Copy the durable state kept so far to ``dest/durable`` and the
        traced files as they are now to ``dest/current``, at one moment."""
        if self.lib.faultfs_cut(dest.encode()) != 0:
            raise OSError(f"faultfs_cut({dest!r}) failed")
