"""Simulated power loss for durability "sync": crash images that keep only
what was made durable.

A SIGKILL keeps the page cache; a power loss does not. This harness runs a
workload (tests/workload.py: several writer lanes doing puts, deletes,
batches, counter merges and apply(), with compaction running) in a child
process under the fault shim in trace mode (tests/faultfs.c): at every
successful fdatasync/fsync/msync of a file under the engine directory the
shim keeps a copy of the file as it was when the call began, at every fsync
of a directory the names it held, and for O_DSYNC writes (LMDB's meta
pages) the bytes written. A few times during the run the child takes a
*cut*: the acknowledged count of every lane, then (under the shim's lock,
so that no sync can complete in between) the durable copies and the files
as they are in the page cache, then the count of writes each lane had
started.

From each cut the parent builds crash images: every file starts from its
durable copy (empty if never synced) and takes an arbitrary subset of the
4 KiB pages that differ in the page cache, some torn (a prefix of their
512-byte sectors new, the rest old: sectors are the unit a disk writes
atomically, as LMDB also assumes); a name created or removed since its
directory was last fsync'd may or may not be there; a file shortened since
its last sync may have either length. The durable end mark is given another
boot id, as after a reboot. Each image must open, and each lane's state
must equal its model after P writes for a P between its acknowledged count
and the writes it had started: every write acknowledged under "sync" before
the cut is there, no batch is there in part, no counter operand is counted
twice. Every fourth image is also compacted and checked again.

What this does not model: a disk that lies about flushes, a torn write
inside a sector, bit rot, and renames (the log and LMDB never rename;
slots.json, which does, is not part of the workload; ``NODE``, written once
at creation as ``NODE.tmp`` then renamed, has no durable copy under its own
name, so images hold it empty, which the engine reads as no file).

Short form: tests/test_powerloss.py (in the default run). Long form:
``python tests/powerloss.py --images 400`` (also
``python -m pytest -m long tests/test_powerloss.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import abase_engine as ae  # noqa: E402
import faultfs  # noqa: E402
import logfmt  # noqa: E402
import workload  # noqa: E402

PAGE = 4096
SECTOR = 512
KINDS = "pbhmdapbmha"
STYLES = ("durable", "cache", "random", "torn", "prefix", "random", "torn")
OPEN_OPTS = dict(segment_size=8192, compact_interval=None, stall_log_bytes=None)


# --------------------------------------------------------------- the child

def child(path: str, outdir: str, cuts: int, lanes: int, seed: int) -> int:
    """Run the workload under the shim, taking ``cuts`` cuts into outdir/cutNNN.

    Halfway the engine is closed and reopened (the writers pause), so the
    second half also covers a recovered log and its durable end mark."""
    rnd = random.Random(seed)
    shim = faultfs.Shim()
    os.makedirs(path, exist_ok=True)
    shim.trace(path, os.path.join(outdir, "snap"))
    acked = [0] * lanes
    started = [0] * lanes
    progress = threading.Condition()
    errors: List[BaseException] = []
    done = 0
    for session in range(2):
        db = ae.open(path, durability="sync", segment_size=OPEN_OPTS["segment_size"], compact_interval=0.02,
                     stall_log_bytes=None)
        ctr = workload.open_counters(db)
        stop = threading.Event()

        def writer(lane: int) -> None:
            try:
                seq = acked[lane]
                while not stop.is_set():
                    kind, ops = workload.ops_for(KINDS, lane, seq)
                    started[lane] = seq + 1
                    workload.write(db, ctr, kind, lane, seq, ops)
                    acked[lane] = seq + 1
                    seq += 1
                    with progress:
                        progress.notify_all()
            except BaseException as exc:  # reported by the child's exit status
                errors.append(exc)
                with progress:
                    progress.notify_all()

        threads = [threading.Thread(target=writer, args=(lane,)) for lane in range(lanes)]
        for th in threads:
            th.start()
        for _ in range(cuts // 2 if session == 0 else cuts - cuts // 2):
            target = sum(acked) + rnd.choice((rnd.randint(5, 60), rnd.randint(50, 400)))
            with progress:
                progress.wait_for(lambda: sum(acked) >= target or bool(errors))
            if errors:
                break
            cut = os.path.join(outdir, "cut%03d" % done)
            before = list(acked)  # acknowledged before the cut: must survive
            shim.cut(cut)
            after = list(started)  # the writes whose bytes the cut can hold
            with open(os.path.join(cut, "meta.json"), "w") as f:
                json.dump({"acked": before, "upper": after, "lanes": lanes, "session": session}, f)
            done += 1
        stop.set()
        for th in threads:
            th.join()
        compactor_errors = [e for e in db._compactor.errors if "must be opened with its merge operator" not in str(e)]
        db.close()
        if errors or compactor_errors:
            raise (errors or compactor_errors)[0]
        for lane in range(lanes):
            started[lane] = acked[lane]
    return 0


def run_child(path: str, outdir: str, cuts: int, lanes: int, seed: int, timeout: float = 600) -> None:
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "child", path, outdir, str(cuts), str(lanes),
                          str(seed)], capture_output=True, text=True, env=faultfs.child_env(), timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"power-loss workload failed (rc {res.returncode}):\n{res.stderr[-4000:]}")


# ----------------------------------------------------------- crash images

def _files(root: str) -> Dict[str, str]:
    """relative path -> absolute path of every regular file under root."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, root)] = full
    return out


def _read(path: Optional[str]) -> bytes:
    if path is None:
        return b""
    with open(path, "rb") as f:
        return f.read()


def _listing(durable: str, reldir: str) -> Optional[set]:
    esc = "@" if reldir in ("", ".") else reldir.replace("/", "%")
    p = os.path.join(durable, "d", esc)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return {line.rstrip("\n") for line in f if line.strip()}


def _mix(old: bytes, new: bytes, rnd: random.Random, style: str, frontier: int) -> bytes:
    """A crash image of one file: old plus some of the pages where new differs."""
    n = max(len(old), len(new))
    out = bytearray(old.ljust(n, b"\0"))
    new_p = new.ljust(n, b"\0")
    last_new = 0
    for start in range(0, n, PAGE):
        end = min(start + PAGE, n)
        if out[start:end] == new_p[start:end]:
            continue
        if style == "durable":
            take = 0.0
        elif style == "cache":
            take = 1.0
        elif style == "prefix":  # written back in order, up to a point
            take = 1.0 if start < frontier else 0.0
        else:
            take = rnd.random()
        r = rnd.random()
        if r < take:
            out[start:end] = new_p[start:end]
            last_new = end
        elif style in ("torn", "random") and r < take + 0.25:
            k = rnd.randint(1, max(1, (end - start) // SECTOR - 1)) * SECTOR
            out[start:start + k] = new_p[start:start + k]
            last_new = max(last_new, start + k)
    if len(new) >= len(old):
        length = max(len(old), min(last_new, len(new)))
    else:  # shortened since its last sync: either length
        length = rnd.choice([len(old), len(new)])
    return bytes(out[:length])


def build_image(cut: str, image: str, rnd: random.Random) -> str:
    """Write one crash image of ``cut`` to ``image``; returns its style."""
    durable, current = os.path.join(cut, "durable"), os.path.join(cut, "current")
    cur = _files(current)
    dur = {rel.replace("%", "/"): full for rel, full in _files(os.path.join(durable, "f")).items()}
    style = rnd.choice(STYLES)
    os.makedirs(image)
    for rel in sorted(set(cur) | set(dur)):
        reldir, name = os.path.split(rel)
        names = _listing(durable, reldir)
        durable_name = names is not None and name in names
        if rel in cur and durable_name:
            present = True
        elif rel in cur or durable_name:
            present = rnd.random() < 0.5 if style != "durable" else durable_name
        else:
            present = False
        if reldir and _listing(durable, os.path.dirname(reldir)) is not None:
            parent_names = _listing(durable, os.path.dirname(reldir))
            if os.path.basename(reldir) not in parent_names:
                present = present and rnd.random() < 0.5
        if not present:
            continue
        old, new = _read(dur.get(rel)), _read(cur.get(rel)) if rel in cur else _read(dur.get(rel))
        frontier = rnd.randrange(0, max(len(new), 1) + PAGE)
        data = _mix(old, new, rnd, style, frontier)
        out = os.path.join(image, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(data)
    for d in ("log", "store"):
        os.makedirs(os.path.join(image, d), exist_ok=True)
    if os.path.exists(os.path.join(image, "log", "MARK")):
        _other_boot(os.path.join(image, "log", "MARK"))
    return style


def _other_boot(mark: str) -> None:
    """Every valid slot of the mark gets another boot id: the machine rebooted."""
    raw = bytearray(_read(mark))
    for i in range(2):
        off = i * logfmt.MARK_STRIDE
        chunk = bytes(raw[off:off + 64])
        if len(chunk) < 64 or logfmt.read_slot(chunk) is None:
            continue
        raw[off + 32:off + 48] = bytes(b ^ 0xA5 for b in raw[off + 32:off + 48])
        body = bytes(raw[off:off + 60])
        raw[off + 60:off + 64] = logfmt.masked_crc(body).to_bytes(4, "little")
    with open(mark, "wb") as f:
        f.write(bytes(raw))


def check_image(image: str, meta: dict, compact: bool) -> int:
    """Open the image and check every lane; returns the acknowledged writes checked.

    :raises AssertionError, AbaseError: the image does not open, or a lane
        matches no prefix between its acknowledged and started counts.
    """
    lanes = meta["lanes"]
    with ae.open(image, durability="sync", **OPEN_OPTS) as db:
        ctr = workload.open_counters(db)
        assert db.recovery["rebooted"] is True
        for lane in range(lanes):
            workload.match_lane(workload.LaneModel(KINDS, lane), meta["acked"][lane], meta["upper"][lane],
                                workload.lane_state(db, ctr, lane))
        problems = db.check()
        assert problems == [], problems
        if compact:
            db.compact(wait=True)
            for lane in range(lanes):
                workload.match_lane(workload.LaneModel(KINDS, lane), meta["acked"][lane], meta["upper"][lane],
                                    workload.lane_state(db, ctr, lane))
    return sum(meta["acked"])


def run(images: int, seed: int, lanes: int = 3, per_cut: int = 8, workdir: Optional[str] = None,
        log=None) -> dict:
    """Run the harness: ``images`` crash images from ``images / per_cut``
    cuts of one workload. Returns a summary (raises on the first failure)."""
    cuts = max(1, -(-images // per_cut))
    own = workdir is None
    work = workdir or tempfile.mkdtemp(prefix="abase-powerloss-")
    t0 = time.time()
    try:
        path = os.path.join(work, "db")
        out = os.path.join(work, "out")
        os.makedirs(out, exist_ok=True)
        run_child(path, out, cuts, lanes, seed)
        rnd = random.Random(seed)
        done = checked = 0
        styles: Dict[str, int] = {}
        cut_dirs = sorted(d for d in os.listdir(out) if d.startswith("cut"))
        for c, cd in enumerate(cut_dirs):
            cut = os.path.join(out, cd)
            with open(os.path.join(cut, "meta.json")) as f:
                meta = json.load(f)
            for i in range(per_cut):
                if done >= images:
                    break
                image = os.path.join(work, "image")
                shutil.rmtree(image, ignore_errors=True)
                style = build_image(cut, image, rnd)
                try:
                    checked += check_image(image, meta, compact=done % 4 == 3)
                except BaseException as exc:
                    keep = os.path.join(work, f"failed-{cd}-{i}")
                    shutil.copytree(image, keep)
                    raise AssertionError(f"crash image {cd}/{i} (style {style}, kept in {keep}): {exc}") from exc
                styles[style] = styles.get(style, 0) + 1
                done += 1
            if log:
                log(f"cut {c + 1}/{len(cut_dirs)}: {done} images, {checked} acknowledged writes checked")
        summary = {"images": done, "failures": 0, "cuts": len(cut_dirs), "acknowledged_writes_checked": checked,
                   "styles": styles, "seconds": round(time.time() - t0, 1)}
        if own:
            shutil.rmtree(work, ignore_errors=True)
        return summary
    except BaseException:
        if own:
            sys.stderr.write(f"(power-loss work directory kept: {work})\n")
        raise


def main(argv: List[str]) -> int:
    if len(argv) > 1 and argv[1] == "child":
        path, outdir, cuts, lanes, seed = argv[2], argv[3], int(argv[4]), int(argv[5]), int(argv[6])
        return child(path, outdir, cuts, lanes, seed)
    ap = argparse.ArgumentParser(description="Simulated power loss for durability 'sync' (see the module docstring).")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--lanes", type=int, default=3)
    args = ap.parse_args(argv[1:])
    why = faultfs.available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    print(f"power loss: {args.images} images, seed {args.seed}", flush=True)
    summary = run(args.images, args.seed, lanes=args.lanes, log=lambda m: print(m, flush=True))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
