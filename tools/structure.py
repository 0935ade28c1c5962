"""Structure figures of the code base: file and class sizes, private reach-ins.

Run ``python tools/structure.py`` from the repository root. It prints, and
checks against the limits the project keeps (issue 9 of the tracker):

* ``engine.py`` at most 700 lines;
* no class in ``src/`` over 450 lines;
* no C file in ``csrc/`` over 1,200 lines;
* at most 40 *private reach-ins* in ``src/``: an attribute access ``x._name``
  (single leading underscore, not a dunder) where ``x`` is neither ``self``,
  ``cls`` nor a module (a name bound by ``import``, or by ``from ... import``
  of a module of this package). The public methods of named tuples
  (``_replace``, ``_asdict``, ``_fields``, ``_make``) are not reach-ins.

``--list`` prints every reach-in with its place; ``--json`` prints the
figures as JSON. The exit status is 1 when a limit is exceeded.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Dict, List, Set, Tuple

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SRC = os.path.join(ROOT, "src", "abase_engine")
CSRC = os.path.join(ROOT, "csrc")

#: Names that start with "_" but are public API (named tuples).
_PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}

LIMITS = {"engine_py_lines": 700, "max_class_lines": 450, "max_c_file_lines": 1200, "private_reach_ins": 40}


def _python_files() -> List[str]:
    out = []
    for dirpath, _dirs, files in os.walk(SRC):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _package_modules() -> Set[str]:
    """Names of this package's modules and subpackages (what ``from . import x`` can bind)."""
    names = set()
    for dirpath, dirs, files in os.walk(SRC):
        names.update(f[:-3] for f in files if f.endswith(".py"))
        names.update(dirs)
        names.update(f.split(".")[0] for f in files if f.endswith(".so"))
    return names


def _module_names(tree: ast.Module, package_modules: Set[str]) -> Set[str]:
    """Names bound to modules anywhere in the file."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name in package_modules:
                    names.add(a.asname or a.name)
    return names


def reach_ins(path: str, package_modules: Set[str]) -> List[Tuple[int, str]]:
    """(line, source text) of every private reach-in in one file."""
    with open(path) as f:
        text = f.read()
    tree = ast.parse(text, path)
    modules = _module_names(tree, package_modules)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        if attr in _PUBLIC_UNDERSCORED:
            continue
        base = node.value
        if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in modules):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def class_sizes(path: str) -> List[Tuple[str, int]]:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def measure() -> Dict[str, object]:
    mods = _package_modules()
    reach: Dict[str, List[Tuple[int, str]]] = {}
    classes: List[Tuple[str, str, int]] = []
    for path in _python_files():
        rel = os.path.relpath(path, ROOT)
        r = reach_ins(path, mods)
        if r:
            reach[rel] = r
        classes += [(rel, name, n) for name, n in class_sizes(path)]
    c_files = sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith(".c"))
    c_sizes = {os.path.relpath(p, ROOT): _lines(p) for p in c_files}
    biggest = max(classes, key=lambda c: c[2])
    return {
        "engine_py_lines": _lines(os.path.join(SRC, "engine.py")),
        "max_class_lines": biggest[2],
        "max_class": f"{biggest[0]}:{biggest[1]}",
        "max_c_file_lines": max(c_sizes.values()),
        "c_files": c_sizes,
        "private_reach_ins": sum(len(v) for v in reach.values()),
        "reach_ins_by_file": {k: len(v) for k, v in reach.items()},
        "python_files": {os.path.relpath(p, ROOT): _lines(p) for p in _python_files()},
        "_reach": reach,
    }


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every private reach-in")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    fig = measure()
    reach = fig.pop("_reach")
    over = [k for k, lim in LIMITS.items() if fig[k] > lim]  # type: ignore[operator]
    if args.json:
        print(json.dumps(dict(fig, limits=LIMITS, over=over), indent=2))
    else:
        for k, lim in LIMITS.items():
            print(f"{k:20} {fig[k]:>6}  (limit {lim}){'  OVER' if k in over else ''}")
        print(f"{'largest class':20} {fig['max_class']}")
        print("python files:", ", ".join(f"{os.path.basename(p)} {n}" for p, n in fig["python_files"].items()))
        print("c files:     ", ", ".join(f"{os.path.basename(p)} {n}" for p, n in fig["c_files"].items()))
        print("reach-ins by file:", fig["reach_ins_by_file"])
    if args.list:
        for rel, items in reach.items():  # type: ignore[union-attr]
            for line, text in items:
                print(f"{rel}:{line}: {text}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
