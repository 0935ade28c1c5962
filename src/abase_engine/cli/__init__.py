"""``abase``: the operator's command line for abase_engine stores.

Run it as ``abase COMMAND ...`` (the console script) or
``python -m abase_engine COMMAND ...``. docs/operations.md is the reference;
``abase COMMAND --help`` lists each command's options.

======== =====================================================================
stats    counters: keys, bytes, segments, compaction lag, namespaces, slots
verify   open + ``check()`` + read everything; exit 0 healthy, 1 findings
dump     one namespace as JSON Lines or CSV (``--prefix``, ``--at``, ``--values``)
load     the inverse of dump, in atomic batches (``--node-id`` required)
compact  fold the whole log into the store now
digest   the anti-entropy digest hashes of a namespace
changes  the change feed from ``--since CURSOR`` (or a slot), as JSON Lines
slots    replication slots, their positions and lags; ``--drop NAME``
bench    a short put/get/scan run on a scratch store, in ops/s
backup   a consistent copy of a store (``Engine.backup``), with a manifest
restore  a backup into a new directory, under a new ``--node-id``
======== =====================================================================

Rules every command follows:

* It works on a store that no program has open; a held store is refused
  with one line naming ``LockedError``. A path that is not a store is
  refused before anything is opened, so no store is ever created by
  accident (only ``load --create`` makes one, in a missing or empty
  directory).
* Stores are opened with ``compact_interval=None``: no compactor thread.
  Commands that only read write nothing beyond what ``open`` itself does.
* Commands other than ``load`` open the store under the node id its
  ``NODE`` file names (the id it was last opened under; a store older than
  that file: :data:`~._stores.DEFAULT_READ_NODE_ID`). ``load`` writes
  records, so it requires ``--node-id``.
* ``--json`` prints a JSON document instead of text (for ``dump`` and
  ``changes``, whose stdout is the data, the summary on stderr is JSON);
  ``--quiet`` drops progress bars and summaries; ``--debug`` adds a
  traceback to an error.
* Exit codes: 0 done; 1 ``verify`` found problems; 2 error (usage, not a
  store, locked, malformed input, any engine error), reported as one line
  on stderr: ``abase: error: KIND: message`` (``{"error": KIND, ...}`` with
  ``--json``); 130 interrupted; 141 stdout closed early (``abase dump | head``).

Thread-safety: :func:`main` is not reentrant for one store (the store lock
refuses a second open), otherwise safe.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import List, NoReturn, Optional, Sequence

from .. import __version__
from ..errors import AbaseError
from ._backup import backup, restore
from ._formats import ENCODINGS, FormatError, parse_cursor, parse_ts
from ._inspect import changes, digest, slots, stats, verify
from ._maintain import COMPACT_KEEP_ALL, bench, compact
from ._stores import open_store
from ._transfer import dump, load, open_input
from ._ui import EXIT_ERROR, CliError, Outcome, Ui

__all__ = ["main"]

_EXIT_INTERRUPTED = 130
_EXIT_BROKEN_PIPE = 141


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as the tool's one error line."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _common(json_default) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", default=json_default,
                   help="print JSON instead of text (a summary on stderr for dump and changes)")
    g.add_argument("-q", "--quiet", action="store_true", default=json_default,
                   help="no progress bars, no summaries on stderr")
    g.add_argument("--debug", action="store_true", default=json_default, help="print a traceback with an error")
    return p


def _parser() -> _Parser:
    top = _Parser(prog="abase", parents=[_common(False)],
                  description="Inspect, verify, dump, load and compact abase_engine stores "
                              "(stores that no program has open).",
                  epilog="exit codes: 0 done, 1 verify found problems, 2 error. docs/operations.md has the details.")
    top.add_argument("--version", action="version", version=f"abase_engine {__version__}")
    # SUPPRESS: an option given before the command is not reset by the command's own default
    common = _common(argparse.SUPPRESS)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def cmd(name: str, help_text: str, store: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if store:
            p.add_argument("store", metavar="STORE", help="the store directory")
        return p

    p = cmd("stats", "counters: keys, bytes, segments, compaction lag, namespaces and their operators, slots")
    p.add_argument("--exact", action="store_true", help="also count each namespace's keys (a full scan each)")

    cmd("verify", "check log checksums and store values and read every key; exit 0 healthy, 1 problems found")

    p = cmd("dump", "write one namespace as JSON Lines or CSV on stdout (or --output)")
    p.add_argument("-n", "--namespace", default="", help="namespace name (default: the default namespace, '')")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--encoding", choices=ENCODINGS, default="base64", help="how keys and values are written")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefix", help="only keys starting with this (UTF-8 text)")
    g.add_argument("--prefix-hex", help="only keys starting with these bytes (hex)")
    p.add_argument("--at", metavar="TIMESTAMP",
                   help="values as of this timestamp: MS,LOGICAL,NODE (as in repr(Timestamp)) or 24 hex digits "
                        "(Timestamp.to_bytes()); implies --values")
    p.add_argument("--values", action="store_true",
                   help="visible values only, no timestamps or tombstones (load rewrites them as new writes)")
    p.add_argument("-o", "--output", help="write here (renamed into place when complete) instead of stdout")

    p = cmd("load", "write a dump (JSON Lines or CSV) into a store, in atomic batches")
    p.add_argument("--node-id", type=int, required=True,
                   help="this writer's node id (required: the engine does not persist one; a values dump is "
                        "written under it, a records dump keeps each record's own)")
    p.add_argument("-n", "--namespace", help="target namespace (default: the dump header's, else '')")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--encoding", choices=ENCODINGS, help="default: the dump header's, else base64")
    p.add_argument("--merge", metavar="OPERATOR",
                   help="operator to create the namespace with, e.g. abase.PNCounter.v1 (default: the dump "
                        "header's, else LWW)")
    p.add_argument("--batch-size", type=int, default=1000, help="lines per atomic batch (default 1000)")
    p.add_argument("-i", "--input", help="read this file instead of stdin")
    p.add_argument("--create", action="store_true", help="create the store if STORE is missing or an empty directory")

    p = cmd("compact", "fold the whole log into the store now")
    p.add_argument("--tombstone-grace-ms", type=int, metavar="MS",
                   help="purge tombstones older than this, as the application's option of that name does "
                        "(default: purge none; the engine does not store the application's value)")
    p.add_argument("--max-slot-lag-bytes", type=int, metavar="BYTES",
                   help="invalidate replication slots lagging more than this (default: invalidate none)")

    p = cmd("digest", "the anti-entropy digest (16 child hashes) of a namespace")
    p.add_argument("-n", "--namespace", default="")
    p.add_argument("--path", help="descend: up to 2 hex nibbles, e.g. '3,a' (default: the root)")

    p = cmd("changes", "the change feed as JSON Lines, from --since CURSOR or a slot's position")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--since", metavar="CURSOR", help="24 hex digits, the 'cursor' of an earlier change")
    g.add_argument("--slot", help="start at this replication slot's position (does not advance it)")
    p.add_argument("--limit", type=int, help="at most this many changes")
    p.add_argument("--origin", type=int, metavar="NODE_ID", help="only records stamped by this node id")
    p.add_argument("--encoding", choices=ENCODINGS, default="base64")

    p = cmd("slots", "list replication slots (position, lag, state)")
    p.add_argument("--drop", metavar="NAME", help="drop this slot (it stops holding the log back)")

    p = cmd("backup", "a consistent copy of a closed store into DEST (missing or empty), with a manifest")
    p.add_argument("dest", metavar="DEST", help="the backup directory to create")

    p = cmd("restore", "make a backup a store again, in DEST (missing or empty), under a new node id", store=False)
    p.add_argument("backup", metavar="BACKUP", help="a directory made by `abase backup` or Engine.backup()")
    p.add_argument("dest", metavar="DEST", help="the store directory to create")
    p.add_argument("--node-id", type=int, required=True,
                   help="the restored store's node id: one no replica uses, and not one the backup was written "
                        "under (those are refused: the copy could reissue timestamps its original already issued)")
    p.add_argument("--force", action="store_true",
                   help="allow a node id of the original (only for a copy that replaces its original for good)")

    p = cmd("bench", "a short put/get/scan run on a scratch store, printing ops/s", store=False)
    p.add_argument("--keys", type=int, default=20000, help="keys per phase (default 20000)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--batch", type=int, default=1000, help="pairs per put_many call (default 1000)")
    p.add_argument("--dir", help="make the scratch store under this directory (default: the temp dir)")
    return top


def _prefix(args: argparse.Namespace) -> Optional[bytes]:
    if args.prefix is not None:
        return args.prefix.encode("utf-8")
    if args.prefix_hex is not None:
        try:
            return bytes.fromhex(args.prefix_hex)
        except ValueError:
            raise CliError("UsageError", f"--prefix-hex {args.prefix_hex!r} is not hex") from None
    return None


def _run(args: argparse.Namespace, ui: Ui) -> Outcome:
    c = args.command
    try:
        at = parse_ts(args.at) if c == "dump" and args.at is not None else None
        since = parse_cursor(args.since) if c == "changes" and args.since is not None else None
    except FormatError as exc:
        raise CliError("UsageError", str(exc)) from None
    if c == "bench":
        return bench(keys=args.keys, value_size=args.value_size, batch=args.batch, directory=args.dir, ui=ui)
    if c == "verify":
        return verify(args.store, node_id=None, ui=ui)
    if c == "backup":
        return backup(args.store, args.dest, ui=ui)
    if c == "restore":
        return restore(args.backup, args.dest, node_id=args.node_id, force=args.force, ui=ui)
    if c == "load":
        if args.batch_size < 1:
            raise CliError("UsageError", "--batch-size must be >= 1")
        stream = open_input(args.input, sys.stdin)
        try:
            with open_store(args.store, node_id=args.node_id, create=args.create) as db:
                return load(db, stream=stream, fmt=args.format, namespace=args.namespace, encoding=args.encoding,
                            merge=args.merge, batch_size=args.batch_size, ui=ui)
        finally:
            if stream is not sys.stdin:
                stream.close()
    if c == "changes" and args.limit is not None and args.limit < 0:
        raise CliError("UsageError", "--limit must be >= 0")
    prefix = _prefix(args) if c == "dump" else None
    options = {}
    if c == "compact":
        options = dict(COMPACT_KEEP_ALL)
        for name in ("tombstone_grace_ms", "max_slot_lag_bytes"):
            value = getattr(args, name)
            if value is not None:
                if value < 0:
                    raise CliError("UsageError", f"--{name.replace('_', '-')} must be >= 0")
                options[name] = value
    with open_store(args.store, **options) as db:
        if c == "stats":
            return stats(db, exact=args.exact, ui=ui)
        if c == "dump":
            return dump(db, namespace=args.namespace, fmt=args.format, encoding=args.encoding, prefix=prefix,
                        at=at, values=args.values, output=args.output, ui=ui)
        if c == "compact":
            return compact(db, ui=ui)
        if c == "digest":
            return digest(db, namespace=args.namespace, path=args.path)
        if c == "changes":
            return changes(db, since=since, slot=args.slot, limit=args.limit, origin=args.origin,
                           encoding=args.encoding, ui=ui)
        if c == "slots":
            return slots(db, drop=args.drop)
    raise CliError("UsageError", f"unknown command {c!r}")  # argparse refuses it first


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit code (the console script exits with it).

    ``argv``: the arguments after the program name (default ``sys.argv[1:]``).
    Output goes to ``sys.stdout`` / ``sys.stderr`` as they are when called.
    """
    argv_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv_list)
    except _UsageError as exc:
        return Ui("--json" in argv_list, False).error("UsageError", str(exc))
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    ui = Ui(args.json, args.quiet)
    try:
        return ui.show(_run(args, ui))
    except BrokenPipeError:
        _silence_stdout()
        return _EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        ui.stderr.write("abase: interrupted\n")
        return _EXIT_INTERRUPTED
    except CliError as exc:
        return _fail(ui, args, exc.kind, exc.message)
    except AbaseError as exc:
        return _fail(ui, args, type(exc).__name__, str(exc))
    except (OSError, ValueError, TypeError) as exc:
        return _fail(ui, args, type(exc).__name__, str(exc))
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        return _fail(ui, args, "InternalError", f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")


def _fail(ui: Ui, args: argparse.Namespace, kind: str, message: str) -> int:
    if args.debug:
        traceback.print_exc(file=ui.stderr)
    return ui.error(kind, message)


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
