"""The kill soak: many SIGKILLs of a writing process, each followed by a
recovery checked against a model.

Each round starts a worker process (this file, ``worker`` mode) that opens
the directory, starts its writer lanes (tests/workload.py) where the last
round's recovered state left them, and prints ``ack <lane> <seq>`` after
every write returns. The driver reads a random number of acks, SIGKILLs the
worker, drains the acks already in the pipe (they were acknowledged too),
reopens the directory in this process and checks, lane by lane, that the
state equals the model after P writes with P = acked or acked + 1 (the one
write in flight): nothing acknowledged lost, no batch in part, no counter
operand counted twice, point reads agree with scans, ``check()`` is clean.
This is the machinery of tests/test_crash.py (tests/crash_worker.py) with
several writer threads and more kinds of writes.

Modes, run in turn (each keeps its own directory, renewed every 100 rounds):
  plain       1 lane: puts, overwrites, deletes
  batch       1 lane: atomic batches and counter merges
  compaction  2 lanes, 4 KiB segments, the compactor every 5 ms (kills land
              mid-compaction)
  apply       1 lane: apply() of received records, and puts
  threads     4 lanes of every kind, 8 KiB segments, compaction
  sync        3 lanes of every kind, durability "sync"

Short form: tests/test_soak.py (60 kills, in the default run). Long form:
``python tests/soak.py --kills 1000`` (or ``python -m pytest -m long
tests/test_soak.py``); it prints a summary: kills, acknowledged writes,
writes checked, losses (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import abase_engine as ae  # noqa: E402
import workload  # noqa: E402

KINDS_ALL = "pbhmdapbmha"
#: name -> lanes, kinds, durability, engine options
MODES: Dict[str, dict] = {
    "plain": dict(lanes=1, kinds="pphpdp", durability="process", opts=dict(segment_size=1 << 16)),
    "batch": dict(lanes=1, kinds="bbmbm", durability="process", opts=dict(segment_size=1 << 16)),
    "compaction": dict(lanes=2, kinds="pbmhd", durability="process",
                       opts=dict(segment_size=4096, compact_interval=0.005)),
    "apply": dict(lanes=1, kinds="aapa", durability="process", opts=dict(segment_size=1 << 16)),
    "threads": dict(lanes=4, kinds=KINDS_ALL, durability="process",
                    opts=dict(segment_size=8192, compact_interval=0.01)),
    "sync": dict(lanes=3, kinds=KINDS_ALL, durability="sync", opts=dict(segment_size=8192, compact_interval=0.02)),
}


def _opts(mode: str, worker: bool) -> dict:
    m = MODES[mode]
    opts = dict(m["opts"])
    if not worker:
        opts["compact_interval"] = None
    return opts


# -------------------------------------------------------------- the worker

def worker(path: str, mode: str, starts: List[int]) -> int:
    m = MODES[mode]
    db = ae.open(path, node_id=1, durability=m["durability"], **_opts(mode, worker=True))
    ctr = workload.open_counters(db)
    # a compaction pass that ran before the counters were opened could not
    # fold them (the operator was unknown): not a failure of the engine
    seen = len(db._compactor.errors)
    os.write(1, b"ready\n")
    failed: List[BaseException] = []

    def lane(l: int) -> None:
        try:
            seq = starts[l]
            while True:
                kind, ops = workload.ops_for(m["kinds"], l, seq)
                workload.write(db, ctr, kind, l, seq, ops)
                os.write(1, b"ack %d %d\n" % (l, seq))
                seq += 1
                errs = db._compactor.errors
                if len(errs) > seen:
                    raise errs[seen]
        except BaseException as exc:
            failed.append(exc)
            os.write(2, ("lane %d failed: %r\n" % (l, exc)).encode())
            os._exit(3)

    threads = [threading.Thread(target=lane, args=(l,), daemon=True) for l in range(m["lanes"])]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return 1


# -------------------------------------------------------------- the driver

def _kill_round(path: str, mode: str, starts: List[int], kill_after: int, timeout: float = 120.0) -> List[int]:
    """Run a worker from ``starts``, SIGKILL it after ``kill_after`` acks;
    returns the acknowledged count of every lane."""
    lanes = MODES[mode]["lanes"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", path, mode, json.dumps(starts)],
                            stdout=subprocess.PIPE, stderr=err, env=env)
    timed_out = []

    def watchdog() -> None:
        timed_out.append(True)
        proc.kill()

    timer = threading.Timer(timeout, watchdog)
    timer.start()
    acked = list(starts)

    def take(line: bytes) -> None:
        parts = line.split()
        assert parts[0] == b"ack", line
        l, seq = int(parts[1]), int(parts[2])
        assert seq == acked[l], (l, seq, acked[l])  # each lane acknowledges in order
        acked[l] = seq + 1

    acks = 0
    try:
        ready = proc.stdout.readline()
        if ready.startswith(b"ready"):
            while acks < kill_after:
                line = proc.stdout.readline()
                if not line:
                    break
                take(line)
                acks += 1
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # acknowledged before the kill, still in the pipe
            take(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    err.close()
    if timed_out:
        raise AssertionError(f"{mode} worker hung; stderr:\n{stderr}")
    if rc != -signal.SIGKILL:
        raise AssertionError(f"{mode} worker exited with {rc} before the kill; stderr:\n{stderr}")
    if acks < min(kill_after, 1):
        raise AssertionError(f"{mode} worker made no progress; stderr:\n{stderr}")
    return acked


def _verify(path: str, mode: str, models: List[workload.LaneModel], acked: List[int]) -> List[workload.LaneModel]:
    """Reopen and match every lane; returns the models at the matched prefixes."""
    m = MODES[mode]
    with ae.open(path, node_id=1, durability=m["durability"], **_opts(mode, worker=False)) as db:
        ctr = workload.open_counters(db)
        out = [workload.match_lane(models[l], acked[l], acked[l] + 1, workload.lane_state(db, ctr, l))
               for l in range(m["lanes"])]
        problems = db.check()
        assert problems == [], problems
        assert db.recovery["rebooted"] is False
    return out


def run(kills: int, seed: int, workdir: Optional[str] = None, modes: Optional[List[str]] = None,
        max_acks: int = 200, log=None) -> dict:
    """Run ``kills`` kill rounds, cycling through ``modes``; returns a summary.

    :raises AssertionError: a recovered state matches no prefix of a lane
        (a loss or a half batch), a check failed, or a worker misbehaved;
        the directory is kept and named in the message.
    """
    modes = modes or list(MODES)
    rnd = random.Random(seed)
    own = workdir is None
    work = workdir or tempfile.mkdtemp(prefix="abase-soak-")
    state: Dict[str, dict] = {}
    per_mode = {md: {"kills": 0, "acked": 0} for md in modes}
    checked = 0
    t0 = time.time()
    for i in range(kills):
        mode = modes[i % len(modes)]
        st = state.get(mode)
        if st is None or st["rounds"] >= 100:
            gen = (st["gen"] + 1) if st else 0
            path = os.path.join(work, f"{mode}-{gen}")
            shutil.rmtree(path, ignore_errors=True)
            st = state[mode] = {"gen": gen, "path": path, "rounds": 0,
                                "models": [workload.LaneModel(MODES[mode]["kinds"], l)
                                           for l in range(MODES[mode]["lanes"])]}
        starts = [mdl.seq for mdl in st["models"]]
        try:
            acked = _kill_round(st["path"], mode, starts, rnd.randint(1, max_acks))
            st["models"] = _verify(st["path"], mode, st["models"], acked)
        except BaseException as exc:
            raise AssertionError(f"kill {i + 1} ({mode}, directory {st['path']}, seed {seed}): {exc}") from exc
        st["rounds"] += 1
        new = sum(a - s for a, s in zip(acked, starts))
        per_mode[mode]["kills"] += 1
        per_mode[mode]["acked"] += new
        checked += sum(acked)
        if log and (i + 1) % 50 == 0:
            log(f"{i + 1} kills, {sum(p['acked'] for p in per_mode.values())} acknowledged writes, "
                f"{round(time.time() - t0)} s")
    summary = {"kills": kills, "lost": 0, "acknowledged_writes": sum(p["acked"] for p in per_mode.values()),
               "acknowledged_writes_checked": checked, "per_mode": per_mode, "seed": seed,
               "seconds": round(time.time() - t0, 1)}
    if own:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def main(argv: List[str]) -> int:
    if len(argv) > 1 and argv[1] == "worker":
        return worker(argv[2], argv[3], json.loads(argv[4]))
    ap = argparse.ArgumentParser(description="SIGKILL soak (see the module docstring).")
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    args = ap.parse_args(argv[1:])
    print(f"soak: {args.kills} kills, seed {args.seed}", flush=True)
    summary = run(args.kills, args.seed, modes=args.modes.split(","), log=lambda m: print(m, flush=True))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
