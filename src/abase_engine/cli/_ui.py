"""How the command line talks: results, errors and progress bars.

Every command returns an :class:`Outcome`; :class:`Ui` prints it as text or,
with ``--json``, as one JSON document on stdout. Errors are one line on
stderr (a JSON object with ``--json``). Progress bars come from tqdm (the
``cli`` extra), on stderr, only when stderr is a terminal and ``--quiet`` is
off; without tqdm the tool works the same, without bars.

Thread-safety: not safe; one Ui per invocation.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, TextIO, TypeVar

__all__ = ["CliError", "Outcome", "Ui", "EXIT_OK", "EXIT_FINDINGS", "EXIT_ERROR"]

#: The command did what was asked.
EXIT_OK = 0
#: ``verify`` found problems in the store.
EXIT_FINDINGS = 1
#: The command could not do what was asked (usage, not a store, locked, bad input, engine error).
EXIT_ERROR = 2

T = TypeVar("T")

try:  # optional: the `cli` extra
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _tqdm = None


class CliError(Exception):
    """A failure to report as one line and exit :data:`EXIT_ERROR`.

    ``kind`` names the class of the problem (an engine error's class name,
    or e.g. ``NotAStore``) and opens the line, so scripts can match on it.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Outcome:
    """What a command produced: ``data`` for ``--json``, ``text`` for a person."""

    data: Dict[str, Any]
    text: str
    code: int = EXIT_OK
    #: Streaming commands (dump, changes) already wrote their data to stdout;
    #: their outcome is a summary, printed on stderr.
    summary_only: bool = False


class Ui:
    """Output policy of one invocation (``--json``, ``--quiet``, terminal or not)."""

    def __init__(self, json_mode: bool, quiet: bool, stdout: Optional[TextIO] = None,
                 stderr: Optional[TextIO] = None) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr

    def bars_enabled(self) -> bool:
        """Whether progress bars are shown: tqdm present, stderr a terminal, not quiet."""
        if self.quiet or _tqdm is None:
            return False
        isatty = getattr(self.stderr, "isatty", None)
        return bool(isatty and isatty())

    def progress(self, items: Iterable[T], total: Optional[int] = None, desc: str = "",
                 unit: str = "it") -> Iterator[T]:
        """``items``, with a progress bar on stderr when :meth:`bars_enabled`."""
        if not self.bars_enabled():
            return iter(items)
        return iter(_tqdm(items, total=total, desc=desc, unit=unit, file=self.stderr, leave=False,
                          dynamic_ncols=True))

    @contextmanager
    def byte_progress(self, desc: str) -> Iterator[Callable[[int, int], None]]:
        """A ``progress(done_bytes, total_bytes)`` callback driving a bar on
        stderr when :meth:`bars_enabled` (a no-op otherwise); the bar is
        closed when the block ends."""
        if not self.bars_enabled():
            yield lambda _done, _total: None
            return
        bar = _tqdm(total=0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=self.stderr,
                    leave=False, dynamic_ncols=True)

        def update(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            yield update
        finally:
            bar.close()

    def show(self, outcome: Outcome) -> int:
        """Print ``outcome`` and return its exit code."""
        if outcome.summary_only:
            if self.json:
                self.stderr.write(json.dumps(outcome.data, sort_keys=True) + "\n")
            elif not self.quiet and outcome.text:
                self.stderr.write(outcome.text.rstrip("\n") + "\n")
            return outcome.code
        if self.json:
            self.stdout.write(json.dumps(outcome.data, indent=2, sort_keys=True) + "\n")
        elif outcome.text:
            self.stdout.write(outcome.text.rstrip("\n") + "\n")
        return outcome.code

    def error(self, kind: str, message: str) -> int:
        """Report a failure as one line on stderr; returns :data:`EXIT_ERROR`."""
        one_line = " ".join(str(message).split())
        if self.json:
            self.stderr.write(json.dumps({"error": kind, "message": one_line}) + "\n")
        else:
            self.stderr.write(f"abase: error: {kind}: {one_line}\n")
        return EXIT_ERROR


def table(rows: Iterable[Iterable[Any]], indent: str = "") -> str:
    """Left-aligned columns, for the text outputs."""
    rows = [[str(c) for c in r] for r in rows]
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def human_bytes(n: int) -> str:
    """``n`` bytes as e.g. ``1.5 MiB`` (exact count for under 1 KiB).

    >>> human_bytes(512), human_bytes(1536), human_bytes(3 << 30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{int(v)} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"  # unreachable
