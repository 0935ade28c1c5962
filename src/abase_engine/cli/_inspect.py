"""The commands that look at a store: ``stats``, ``verify``, ``digest``, ``slots``, ``changes``.

Each takes an open engine (``verify`` takes the path: a store that fails
to open is its finding) and returns an :class:`~._ui.Outcome`. None of them
writes to the store, except ``slots --drop``, which is asked to.

Thread-safety: not safe (one command at a time).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from ..engine import Engine
from ..errors import AbaseError, CorruptionError, FormatVersionError
from ..record import Op
from ._formats import FormatError, encode_bytes, format_cursor, format_ts
from ._stores import all_namespaces, open_known_namespaces, open_namespace, open_store
from ._ui import EXIT_FINDINGS, EXIT_OK, CliError, Outcome, Ui, human_bytes, table

__all__ = ["stats", "verify", "digest", "slots", "changes"]

_CHECK_WHERE = re.compile(r" at (?P<file>\S+) offset (?P<offset>\d+)")


def _ns_label(name: str) -> str:
    return '"" (default)' if name == "" else name


# ---------------------------------------------------------------- stats

def stats(db: Engine, *, exact: bool, ui: Ui) -> Outcome:
    """Counters of the store (``Engine.stats()``), its namespaces and slots.

    ``exact``: also count each namespace's visible keys (a full scan each).
    """
    opened, skipped = open_known_namespaces(db)  # stats() counts opened namespaces only
    st = db.stats()
    namespaces: Dict[str, Dict[str, Any]] = {}
    for name, op in sorted(all_namespaces(db).items()):
        entry: Dict[str, Any] = {"operator": op, "opened": name in opened}
        if exact and name in opened:
            entry["keys"] = sum(1 for _ in ui.progress(opened[name].keys(), desc=f"counting {name!r}", unit="key"))
        namespaces[name] = entry
    data = {"command": "stats", "path": db.path, "stats": st, "namespaces": namespaces}
    lines = [
        f"store       {db.path}",
        f"keys        {st['keys']} (approximate: {st['index_keys']} in the log index + {st['store_keys']} "
        f"in the store, a key in both counts twice)",
        f"log         {human_bytes(st['log_bytes'])} in {st['segments']} segment(s), {st['sealed_segments']} sealed",
        f"compaction  lag {human_bytes(st['compaction_lag_bytes'])} (sealed, not yet folded)",
        f"store size  {human_bytes(st['store_bytes'])}",
        f"index       {human_bytes(st['index_bytes'])} for {st['index_keys']} key(s)",
        f"recovery    {st['recovery']['records']} record(s) in {st['recovery']['segments']} segment(s) at open; "
        f"dropped {st['recovery']['dropped_bytes']} byte(s) of torn tail",
        "namespaces",
        table([[_ns_label(n), e["operator"]] + ([f"{e['keys']} keys"] if "keys" in e else [])
               + ([] if e["opened"] else ["(operator unknown to the command line: not counted)"])
               for n, e in namespaces.items()], indent="  "),
        "slots" + ("" if st["slots"] else "       none"),
    ]
    if st["slots"]:
        lines.append(table([[n, f"lag {human_bytes(s['lag_bytes'])}", "INVALIDATED" if s["invalidated"] else "active"]
                            for n, s in sorted(st["slots"].items())], indent="  "))
    if skipped:
        data["not_opened"] = skipped
    return Outcome(data, "\n".join(lines))


# ---------------------------------------------------------------- verify

def _finding(kind: str, exc_or_msg: Any, namespace: Optional[str] = None) -> Dict[str, Any]:
    msg = str(exc_or_msg)
    out: Dict[str, Any] = {"kind": kind, "message": msg, "file": None, "offset": None}
    if isinstance(exc_or_msg, CorruptionError):
        out["file"], out["offset"] = exc_or_msg.file, exc_or_msg.offset
    else:
        m = _CHECK_WHERE.search(msg)
        if m is not None:
            out["file"], out["offset"] = m.group("file"), int(m.group("offset"))
    if namespace is not None:
        out["namespace"] = namespace
    return out


def verify(path: str, *, node_id: Optional[int], ui: Ui) -> Outcome:
    """Open the store, run ``Engine.check()`` and read every namespace in full.

    Exit code 0: healthy; 1 (:data:`EXIT_FINDINGS`): the store failed to
    open (corruption, unknown format version), check() reported problems,
    or a read failed. Corruption names file and offset.
    """
    findings: List[Dict[str, Any]] = []
    notes: List[str] = []
    counts: Dict[str, int] = {}
    try:
        db = open_store(path, node_id=node_id)
    except CorruptionError as exc:
        findings.append(_finding("corruption", exc))
        db = None
    except FormatVersionError as exc:
        findings.append(_finding("format-version", exc))
        db = None
    if db is not None:
        with db:
            rec = db.recovery
            if rec["dropped_bytes"]:
                later = (f" and {rec['dropped_segments']} later segment(s)"
                         if rec.get("dropped_segments") else "")
                why = ("past the durable end mark after a reboot: writes not yet synced when the machine went down "
                       "(never an acknowledged one under durability sync)" if rec.get("rebooted") else
                       "the record a killed process was writing (never an acknowledged one)")
                notes.append(f"open dropped a torn tail of {rec['dropped_bytes']} byte(s) at offset "
                             f"{rec['dropped_offset']}{later}: {why}")
            for msg in db.check():
                findings.append(_finding("check", msg))
            opened, skipped = open_known_namespaces(db)
            for name, ns in opened.items():
                n = 0
                try:
                    for _ in ui.progress(ns.scan(), desc=f"reading {name!r}", unit="key"):
                        n += 1
                except AbaseError as exc:
                    findings.append(_finding("read", f"{type(exc).__name__}: {exc}", namespace=name))
                    if isinstance(exc, CorruptionError):
                        findings[-1]["file"], findings[-1]["offset"] = exc.file, exc.offset
                counts[name] = n
            for name in skipped:
                notes.append(f"namespace {name!r} not read: its operator "
                             f"{all_namespaces(db)[name]!r} is not one the command line knows")
    healthy = not findings
    data = {"command": "verify", "path": path, "healthy": healthy, "findings": findings, "notes": notes,
            "keys_read": counts}
    if healthy:
        text = (f"healthy: log checksums and store values check out; read {sum(counts.values())} key(s) "
                f"in {len(counts)} namespace(s)")
    else:
        text = f"{len(findings)} problem(s) found:\n" + "\n".join(
            f"  {f['kind']}: {f['message']}" for f in findings)
    if notes:
        text += "\n" + "\n".join(f"  note: {n}" for n in notes)
    return Outcome(data, text, EXIT_OK if healthy else EXIT_FINDINGS)


# ---------------------------------------------------------------- digest

def _parse_digest_path(text: Optional[str]) -> Tuple[int, ...]:
    if text is None or text.strip() == "":
        return ()
    try:
        path = tuple(int(p, 16) for p in text.replace(",", " ").split())
    except ValueError:
        raise CliError("UsageError", f"--path {text!r}: give up to 2 hex nibbles, e.g. '3,a'") from None
    if len(path) > 2 or any(not 0 <= p < 16 for p in path):
        raise CliError("UsageError", f"--path {text!r}: give up to 2 nibbles in 0..f")
    return path


def digest(db: Engine, *, namespace: str, path: Optional[str]) -> Outcome:
    """The 16 child hashes of the digest tree at ``path`` (the root by default)."""
    nibbles = _parse_digest_path(path)
    open_namespace(db, namespace)  # refuses a missing namespace: digest() would create it
    hashes = [f"{h:016x}" for h in db.digest(namespace, nibbles)]
    data = {"command": "digest", "namespace": namespace, "path": [format(p, "x") for p in nibbles],
            "hashes": hashes}
    where = "root" if not nibbles else "node " + ",".join(format(p, "x") for p in nibbles)
    text = f"digest of namespace {namespace!r} at the {where} (child: hash)\n" + table(
        [[format(i, "x"), h] for i, h in enumerate(hashes)], indent="  ")
    return Outcome(data, text)


# ---------------------------------------------------------------- slots

def slots(db: Engine, *, drop: Optional[str]) -> Outcome:
    """The replication slots, their positions and lags; ``drop``: forget one."""
    known = db.stats()["slots"]
    dropped = None
    if drop is not None:
        if drop not in known:
            raise CliError("NoSuchSlot", f"no replication slot {drop!r} (the store has "
                                         f"{', '.join(map(repr, sorted(known))) or 'none'})")
        db.drop_replication_slot(drop)
        dropped = drop
        known = db.stats()["slots"]
    out = {}
    for name in sorted(known):
        st = known[name]
        # the slot exists, so this opens it and creates nothing
        out[name] = {"position": format_cursor(db.replication_slot(name).position),
                     "lag_bytes": st["lag_bytes"], "invalidated": st["invalidated"]}
    data = {"command": "slots", "slots": out, "dropped": dropped}
    lines = [f"dropped slot {dropped!r}"] if dropped else []
    if out:
        lines.append(table([["name", "position", "lag", "state"]] + [
            [n, s["position"], human_bytes(s["lag_bytes"]), "INVALIDATED" if s["invalidated"] else "active"]
            for n, s in out.items()]))
    else:
        lines.append("no replication slots")
    return Outcome(data, "\n".join(lines))


# ---------------------------------------------------------------- changes

def changes(db: Engine, *, since: Optional[bytes], slot: Optional[str], limit: Optional[int],
            origin: Optional[int], encoding: str, ui: Ui) -> Outcome:
    """Write the change feed as JSON Lines on stdout, from ``since`` (or a slot's position).

    Every record is listed, those that came through ``apply`` included;
    ``origin`` keeps only records stamped by that node id.

    :raises CliError: unknown or invalidated slot, a value not valid in ``encoding``.
    :raises SlotInvalidatedError: ``since`` lies in history already compacted away.
    """
    if slot is not None:
        known = db.stats()["slots"]
        if slot not in known:
            raise CliError("NoSuchSlot", f"no replication slot {slot!r}")
        if known[slot]["invalidated"]:
            raise CliError("SlotInvalidatedError", f"replication slot {slot!r} was invalidated (lagged too far)")
        since = db.replication_slot(slot).position
    n = 0
    last = since
    out = ui.stdout
    try:
        for ch in ui.progress(db.changes(since=since, include_applied=True), desc="feed", unit="rec"):
            last = ch.cursor
            if origin is not None and ch.timestamp.node_id != origin:
                continue
            line = {"cursor": format_cursor(ch.cursor), "namespace": ch.namespace,
                    "key": encode_bytes(ch.key, encoding, "key"), "op": Op(ch.op).name.lower(),
                    "ts": format_ts(ch.timestamp)}
            if ch.value is not None:
                line["value"] = encode_bytes(ch.value, encoding)
            out.write(json.dumps(line) + "\n")
            n += 1
            if limit is not None and n >= limit:
                break
    except FormatError as exc:
        raise CliError("FormatError", f"{exc} (after {n} changes were written)") from None
    out.flush()
    data = {"command": "changes", "changes": n, "next_cursor": format_cursor(last), "encoding": encoding}
    resume = f"; resume with --since {format_cursor(last)}" if last is not None else ""
    return Outcome(data, f"{n} change(s){resume}", summary_only=True)
