"""``abase dump`` and ``abase load``: one namespace to text and back.

A dump comes in one of two kinds:

* ``records`` (the default): the newest record of every key, tombstones
  included, each with its timestamp (``Engine.records`` over every digest
  leaf). ``load`` hands these to ``Engine.apply``, so the copy keeps the
  original timestamps and node ids and has the same ``digest()`` as the
  source; loading into a store that already has data merges like
  replication does (idempotent, newest wins). For a CRDT key the records are
  its newest delete, if any, and its whole state (a MERGE). A range delete
  of an LWW namespace (``delete_range``) is a ``delete_range`` record:
  ``key`` its start, ``value`` its stop (absent or empty: no bound).
* ``values`` (``--values``, or any ``--at``): the visible value of every
  key in key order, as of ``--at`` if given (``scan``; a CRDT key's encoded
  state through ``get_raw``). ``load`` writes these as new writes of its own
  ``--node-id`` with fresh timestamps.

JSON Lines: a header object first, then one object per record::

    {"abase_dump": 1, "kind": "records", "namespace": "", "operator": "abase.LWW.v1", "encoding": "base64", ...}
    {"key": "azE=", "op": "put", "value": "djE=", "ts": "1700000000000,0,1"}
    {"key": "azI=", "op": "delete", "ts": "1700000000001,0,1"}

CSV: a header row naming the columns (``key,value,op,ts`` or ``key,value``),
then one row per record; CSV carries no header object, so ``load`` takes
the namespace, operator and encoding from its options.

``load`` commits ``--batch-size`` lines at a time, each batch atomically. A
malformed line stops the load before anything of its batch is written; the
error names the line, and the batches before it stay written (a records
load can simply be run again: ``apply`` is idempotent).

Thread-safety: not safe (one command at a time).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, TextIO, Tuple

from ..engine import Engine, Namespace
from ..errors import AbaseError
from ..log import MAX_KEY, MAX_VALUE
from ..merge import LWW
from ..record import Change, Op, Timestamp
from ._formats import FormatError, decode_bytes, encode_bytes, format_ts, parse_ts
from ._stores import all_namespaces, open_namespace
from ._ui import CliError, Outcome, Ui

__all__ = ["dump", "load", "open_input", "DUMP_VERSION"]

#: Version of the JSON Lines dump layout (the header's ``abase_dump``).
DUMP_VERSION = 1

_OPS = {"put": Op.PUT, "delete": Op.DELETE, "merge": Op.MERGE, "delete_range": Op.DELETE_RANGE}
_OP_NAMES = {v: k for k, v in _OPS.items()}
_LINE_FIELDS = {"key", "value", "op", "ts"}
_HEADER_FIELDS = {"abase_dump", "kind", "namespace", "operator", "encoding", "prefix", "at"}
_LEAVES = [(a, b, c) for a in range(16) for b in range(16) for c in range(16)]


# ----------------------------------------------------------------- dump

def _records_of(db: Engine, name: str, prefix: Optional[bytes], ui: Ui) -> List[Change]:
    """Every key's newest record (tombstones included), sorted by key.

    The engine gives records per digest leaf, in hash order, so the whole
    namespace is collected and sorted: memory O(keys).
    """
    out: List[Change] = []
    for path in ui.progress(_LEAVES, total=len(_LEAVES), desc="reading", unit="leaf"):
        for ch in db.records(name, path):
            if prefix is None or ch.key.startswith(prefix):
                out.append(ch)
    out.sort(key=lambda c: c.key)  # stable: a CRDT key's delete stays before its state
    return out


def _values_of(ns: Namespace, prefix: Optional[bytes], at: Optional[Timestamp]) -> Iterator[Tuple[bytes, bytes]]:
    """(key, value) in key order; a merge namespace's value is its encoded state."""
    if ns.merge_operator.name == LWW.name:
        yield from ns.scan(prefix=prefix, at=at)
        return
    for key in ns.keys(prefix=prefix, at=at):
        raw = ns.get_raw(key, at=at)
        if raw is not None:
            yield key, raw


class _Sink:
    """The dump's output: stdout, or a file written beside its final name and
    renamed into place only when the dump is complete."""

    def __init__(self, path: Optional[str], stdout: TextIO) -> None:
        self.path = path
        if path is None or path == "-":
            self.path = None
            self.stream = stdout
            self._tmp = None
        else:
            self._tmp = path + ".partial"
            self.stream = open(self._tmp, "w", encoding="utf-8", newline="")

    def finish(self, ok: bool) -> None:
        if self._tmp is None:
            self.stream.flush()
            return
        self.stream.close()
        if ok:
            os.replace(self._tmp, self.path)  # type: ignore[arg-type]
        else:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


def dump(db: Engine, *, namespace: str, fmt: str, encoding: str, prefix: Optional[bytes],
         at: Optional[Timestamp], values: bool, output: Optional[str], ui: Ui) -> Outcome:
    """Write one namespace as JSON Lines or CSV (see the module docstring).

    :raises CliError: no such namespace, an operator the CLI cannot build,
        a key or value not valid in ``encoding``.
    :raises SnapshotTooOldError: ``at`` is older than the history still held.
    """
    ns = open_namespace(db, namespace)
    op_name = all_namespaces(db)[namespace]
    kind = "values" if values or at is not None else "records"
    sink = _Sink(output, ui.stdout)
    ok = False
    n = 0
    try:
        out = sink.stream
        writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow(["key", "value", "op", "ts"] if kind == "records" else ["key", "value"])
        else:
            header = {"abase_dump": DUMP_VERSION, "kind": kind, "namespace": namespace, "operator": op_name,
                      "encoding": encoding, "prefix": None if prefix is None else encode_bytes(prefix, encoding, "prefix"),
                      "at": None if at is None else format_ts(at)}
            out.write(json.dumps(header, sort_keys=True) + "\n")
        try:
            if kind == "records":
                for ch in _records_of(db, namespace, prefix, ui):
                    key = encode_bytes(ch.key, encoding, "key")
                    value = None if ch.value is None else encode_bytes(ch.value, encoding)
                    op = _OP_NAMES[Op(ch.op)]
                    if writer is not None:
                        writer.writerow([key, "" if value is None else value, op, format_ts(ch.timestamp)])
                    else:
                        line: Dict[str, Any] = {"key": key, "op": op, "ts": format_ts(ch.timestamp)}
                        if value is not None:
                            line["value"] = value
                        out.write(json.dumps(line) + "\n")
                    n += 1
            else:
                for k, v in ui.progress(_values_of(ns, prefix, at), desc="dumping", unit="key"):
                    key, value = encode_bytes(k, encoding, "key"), encode_bytes(v, encoding)
                    if writer is not None:
                        writer.writerow([key, value])
                    else:
                        out.write(json.dumps({"key": key, "value": value}) + "\n")
                    n += 1
        except FormatError as exc:
            raise CliError("FormatError", f"{exc} (after {n} records were written)") from None
        ok = True
    finally:
        sink.finish(ok)
    where = sink.path or "stdout"
    data = {"command": "dump", "namespace": namespace, "operator": op_name, "kind": kind, "format": fmt,
            "encoding": encoding, "records": n, "output": where, "at": None if at is None else format_ts(at)}
    return Outcome(data, f"dumped {n} {kind[:-1]}(s) of namespace {namespace!r} to {where}", summary_only=True)


# ----------------------------------------------------------------- load

class _Item(NamedTuple):
    line: int
    key: bytes
    op: Op
    value: Optional[bytes]
    ts: Optional[Timestamp]


class _Input:
    """Parsed lines of a JSON Lines or CSV dump, with their line numbers."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        self.fmt = fmt
        self.header: Dict[str, Any] = {}
        self._stream = stream
        self._pending: Optional[Tuple[int, Dict[str, Any]]] = None
        self.lines_read = 0
        if fmt == "csv":
            self._rows = csv.reader(stream)
            self._columns = self._csv_header()
        else:
            self._read_json_header()

    # JSON Lines
    def _json_lines(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        for lineno, text in enumerate(self._stream, start=self.lines_read + 1):
            self.lines_read = lineno
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _bad(lineno, f"not JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise _bad(lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj

    def _read_json_header(self) -> None:
        self._iter = self._json_lines()
        first = next(self._iter, None)
        if first is None:
            return
        lineno, obj = first
        if "abase_dump" not in obj:
            self._pending = first
            return
        unknown = set(obj) - _HEADER_FIELDS
        if unknown:
            raise _bad(lineno, f"unknown header field(s) {', '.join(sorted(unknown))}")
        if obj["abase_dump"] != DUMP_VERSION:
            raise _bad(lineno, f"dump layout version {obj['abase_dump']!r}; this tool reads {DUMP_VERSION}")
        if obj.get("kind") not in (None, "records", "values"):
            raise _bad(lineno, f"unknown dump kind {obj.get('kind')!r}")
        self.header = obj

    # CSV
    def _csv_header(self) -> List[str]:
        try:
            row = next(self._rows, None)
        except csv.Error as exc:
            raise _bad(self._rows.line_num, f"not CSV ({exc})") from None
        self.lines_read = self._rows.line_num
        if row is None:
            return []
        cols = [c.strip() for c in row]
        if "key" not in cols or set(cols) - _LINE_FIELDS or len(set(cols)) != len(cols):
            raise _bad(self._rows.line_num,
                       f"the first CSV row must name the columns (key, value, op, ts), got {row!r}")
        return cols

    def _csv_lines(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        while True:
            try:
                row = next(self._rows, None)
            except csv.Error as exc:
                raise _bad(self._rows.line_num, f"not CSV ({exc})") from None
            if row is None:
                return
            lineno = self.lines_read = self._rows.line_num
            if not row:
                continue
            if len(row) != len(self._columns):
                raise _bad(lineno, f"{len(row)} fields; the header names {len(self._columns)}")
            obj: Dict[str, Any] = dict(zip(self._columns, row))
            if obj.get("ts") == "":
                del obj["ts"]
            if obj.get("value") == "" and obj.get("op") == "delete":
                del obj["value"]
            if obj.get("op") == "":
                del obj["op"]
            yield lineno, obj

    def objects(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        if self.fmt == "csv":
            if self._columns:
                yield from self._csv_lines()
            return
        if self._pending is not None:
            yield self._pending
            self._pending = None
        yield from self._iter


def _bad(lineno: int, message: str) -> CliError:
    return CliError("MalformedInput", f"line {lineno}: {message}")


def _parse_item(lineno: int, obj: Dict[str, Any], encoding: str, merge_ns: bool) -> _Item:
    unknown = set(obj) - _LINE_FIELDS
    if unknown:
        raise _bad(lineno, f"unknown field(s) {', '.join(sorted(unknown))}")
    if "key" not in obj:
        raise _bad(lineno, "no key")
    op_text = obj.get("op", "put")
    op = _OPS.get(op_text) if isinstance(op_text, str) else None
    if op is None:
        raise _bad(lineno, f"op {op_text!r} is not put, delete, merge or delete_range")
    try:
        key = decode_bytes(obj["key"], encoding, "key")
        value = None
        if op == Op.DELETE:
            if obj.get("value") not in (None, ""):
                raise FormatError("a delete carries no value")
        elif op == Op.DELETE_RANGE:  # key: the start; value: the stop, absent for no bound
            if "ts" not in obj:
                raise FormatError("a delete_range needs its ts")
            if obj.get("value") not in (None, ""):
                value = decode_bytes(obj["value"], encoding)
        else:
            if obj.get("value") is None:
                raise FormatError(f"a {op_text} needs a value")
            value = decode_bytes(obj["value"], encoding)
        ts = parse_ts(obj["ts"]) if "ts" in obj else None
    except FormatError as exc:
        raise _bad(lineno, str(exc)) from None
    if len(key) > MAX_KEY:
        raise _bad(lineno, f"key of {len(key)} bytes; the maximum is {MAX_KEY}")
    if value is not None and len(value) > MAX_VALUE:
        raise _bad(lineno, f"value of {len(value)} bytes; the maximum is {MAX_VALUE}")
    if op == Op.MERGE and not merge_ns and ts is None:
        op = Op.PUT  # a merge on an LWW namespace is a put (as Namespace.merge does)
    return _Item(lineno, key, op, value, ts)


def _commit(db: Engine, ns: Namespace, items: List[_Item], kind: str) -> int:
    """Write one batch atomically; returns how many records changed anything
    (records kind) or were written (values kind).

    :raises CliError: an engine error, naming the batch's lines.
    """
    first, last = items[0].line, items[-1].line
    if kind == "records":
        check = ns.merge_operator.check_operand if ns.merge_operator.name != LWW.name else None
        changes = []
        for it in items:
            if check is not None and it.value is not None:
                try:
                    check(it.value)
                except AbaseError as exc:
                    raise _bad(it.line, f"{type(exc).__name__}: {exc}") from None
            changes.append(Change(ns.name, it.key, it.op, it.value, it.ts))  # type: ignore[arg-type]
        try:
            return db.apply(changes)
        except AbaseError as exc:
            raise CliError(type(exc).__name__, f"lines {first}-{last}: {exc}") from None
    current = first
    try:
        with db.batch() as b:
            for it in items:
                current = it.line
                if it.op == Op.PUT:
                    b.put(it.key, it.value, namespace=ns)  # type: ignore[arg-type]
                elif it.op == Op.DELETE:
                    b.delete(it.key, namespace=ns)
                else:
                    b.merge(it.key, it.value, namespace=ns)
            current = last
    except (AbaseError, ValueError, TypeError) as exc:
        raise CliError(type(exc).__name__, f"line {current}: {exc}") from None
    return len(items)


def load(db: Engine, *, stream: TextIO, fmt: str, namespace: Optional[str], encoding: Optional[str],
         merge: Optional[str], batch_size: int, ui: Ui) -> Outcome:
    """Read a dump and write it into ``db`` (see the module docstring).

    :raises CliError: malformed input (``MalformedInput``, naming the line),
        a namespace/operator conflict, or an engine error naming the lines.
    """
    inp = _Input(stream, fmt)
    hdr = inp.header
    for opt, field_name, given in (("--encoding", "encoding", encoding), ("--merge", "operator", merge)):
        if given is not None and hdr.get(field_name) not in (None, given):
            raise CliError("MalformedInput", f"{opt} {given} contradicts the dump header ({field_name} "
                                             f"{hdr[field_name]!r})")
    enc = encoding or hdr.get("encoding") or "base64"
    if enc not in ("base64", "utf-8"):
        raise CliError("MalformedInput", f"unknown encoding {enc!r} in the dump header")
    name = namespace if namespace is not None else hdr.get("namespace", "")
    if not isinstance(name, str):
        raise CliError("MalformedInput", "the dump header's namespace is not a string")
    explicit = merge or hdr.get("operator")
    if explicit is not None and not isinstance(explicit, str):
        raise CliError("MalformedInput", "the dump header's operator is not a string")
    ns = open_namespace(db, name, create_with=explicit or LWW.name, require=explicit)
    merge_ns = ns.merge_operator.name != LWW.name
    kind = hdr.get("kind")
    batch: List[_Item] = []
    written = changed = batches = 0

    def flush() -> None:
        nonlocal written, changed, batches
        if batch:
            try:
                changed += _commit(db, ns, batch, kind or "values")
            except CliError as exc:
                raise CliError(exc.kind, _so_far(exc.message, written, batches)) from None
            written += len(batch)
            batches += 1
            batch.clear()

    lines = iter(ui.progress(inp.objects(), desc="loading", unit="line"))
    while True:
        try:
            nxt = next(lines, None)
            if nxt is None:
                break
            item = _parse_item(nxt[0], nxt[1], enc, merge_ns)
            item_kind = "records" if item.ts is not None else "values"
            if kind is None:
                kind = item_kind
            elif kind != item_kind:
                raise _bad(item.line, "a timestamp (ts) on some lines and not on others: "
                                      "a dump is all records (with ts) or all values (without)")
        except CliError as exc:
            raise CliError(exc.kind, _so_far(exc.message, written, batches)) from None
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    flush()
    db.sync()  # what load reports as written is on disk
    data = {"command": "load", "node_id": db.node_id, "namespace": name, "operator": ns.merge_operator.name, "kind": kind,
            "records": written, "changed": changed, "batches": batches, "lines": inp.lines_read}
    if kind == "records":
        text = (f"applied {written} record(s) to namespace {name!r} in {batches} batch(es), with their own "
                f"timestamps; {changed} changed the store")
    else:
        text = (f"wrote {written} value(s) to namespace {name!r} in {batches} batch(es), as new writes of "
                f"node {db.node_id}")
    return Outcome(data, text)


def _so_far(message: str, written: int, batches: int) -> str:
    if not batches:
        return f"{message} (nothing was written)"
    return (f"{message} (nothing of its batch was written; the {batches} batch(es) before it, {written} "
            f"record(s), were)")


def open_input(path: Optional[str], stdin: TextIO) -> TextIO:
    """The stream to load from: ``path``, or ``stdin`` for None or ``-``."""
    if path is None or path == "-":
        buffer = getattr(stdin, "buffer", None)
        # csv needs the line ends as they are (newline=""); JSON Lines does not mind
        return io.TextIOWrapper(buffer, encoding="utf-8", newline="") if buffer is not None else stdin
    try:
        return io.open(path, "r", encoding="utf-8", newline="")
    except OSError as exc:
        raise CliError("InputError", f"{path}: {exc.strerror}") from None
