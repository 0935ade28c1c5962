"""Run one harness over files, without atheris: for the sanitizer replay
and the regression tests.

    python fuzz/replay.py HARNESS FILE_OR_DIR ...

Every input runs through ``TestOneInput`` once; the first failure stops the
run with its traceback and the file's name (exit status 1). Run it with the
C core built with ``ABASE_SANITIZE=1`` and the sanitizer runtimes preloaded
(fuzz/run.sh does) to catch memory errors that do not crash by themselves.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Iterator, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def inputs(paths: List[str]) -> Iterator[str]:
    """Every file under the given files and directories, sorted."""
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                full = os.path.join(p, name)
                if os.path.isfile(full):
                    yield full
        elif os.path.isfile(p):
            yield p


def replay(harness: str, paths: List[str]) -> int:
    """Run every input; returns how many ran. :raises: the first failure."""
    mod = importlib.import_module(f"fuzz_{harness}")
    n = 0
    for path in inputs(paths):
        with open(path, "rb") as f:
            data = f.read()
        try:
            mod.TestOneInput(data)
        except BaseException as exc:
            raise AssertionError(f"fuzz_{harness} failed on {path}") from exc
        n += 1
    return n


def main() -> int:
    harness, paths = sys.argv[1], sys.argv[2:]
    try:
        n = replay(harness, paths)
    except AssertionError:
        traceback.print_exc()
        return 1
    print(f"fuzz_{harness}: {n} input(s) replayed, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
