"""Repository-level pytest configuration: the docstring examples of the package.

Every module under ``src/abase_engine`` is collected for doctests (the
package's examples must stay true), by configuration rather than a list
kept by hand. Modules that need an optional extra are skipped when the extra
is not installed; the build script is never imported.
"""

from __future__ import annotations

import importlib.util
import os

from _pytest.doctest import DoctestModule

_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "abase_engine")

#: path below the package -> the module its extra brings (skipped without it)
_NEEDS_EXTRA = {
    "cluster": "ray",
    "metrics.py": "prometheus_client",
}
_NEVER = {"_build_ffi.py"}


def _skipped(rel: str) -> bool:
    if rel in _NEVER:
        return True
    for prefix, module in _NEEDS_EXTRA.items():
        if (rel == prefix or rel.startswith(prefix + os.sep)) and importlib.util.find_spec(module) is None:
            return True
    return False


def pytest_collect_file(file_path, parent):
    path = str(file_path)
    if not path.endswith(".py") or not path.startswith(_PACKAGE + os.sep):
        return None
    if _skipped(os.path.relpath(path, _PACKAGE)):
        return None
    return DoctestModule.from_parent(parent, path=file_path)



