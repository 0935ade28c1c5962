#!/usr/bin/env python3
"""Charts of a ``bench/compare.py`` run, as PNG files for docs/.

Usage::

    pip install -e ".[bench]"                        # matplotlib and the peers
    python bench/compare.py --json out.json          # the run to chart
    python bench/plots.py out.json                   # -> docs/img/*.png
    python bench/plots.py out.json --out /tmp/img    # somewhere else

It writes:

* ``throughput_ratios.png``: per workload, abase's ops/s divided by each
  peer's (abase-process against the non-durable peers, abase-sync against
  the durable ones: the report's own ``ratios`` table), one bar per peer, on
  a log scale with the break-even line at 1x.
* ``latency_percentiles.png``: per workload, the p50/p90/p99/p99.9/max
  latency of every store that ran it, in microseconds, log scale. The unit
  differs by workload (one sampled operation, a batch of 1000, one
  ``next()``, a whole ``compact`` call): each panel's title says which.
* ``compaction_timeline.png``: the engine figure ``compaction_timeline``
  (compare.py runs it with the comparison unless ``--no-timeline``): log
  bytes and store bytes over time while the compactor thread folds a
  steady write load, and below them the put/get p99 of each sampling
  window, sharing the time axis; a line marks where the writes stop.

The title of each chart gives N, the value size, the number of runs (the
median run's row is charted when compare.py ran with ``--repeat``) and
the abase_engine version from the JSON, so a PNG carries where it came from.
Only the report is read; nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

PERCENTILES = ("p50", "p90", "p99", "p99.9", "max")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "img")


class ReportError(ValueError):
    """The JSON is not a report written by ``compare.py --json``."""


def load_report(path: str) -> Dict[str, Any]:
    """Read a ``compare.py --json`` report.

    :raises ReportError: not JSON, or no ``runs`` from a store comparison.
    """
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("runs"), dict) or "config" not in report:
        raise ReportError(f"{path}: not a report of `bench/compare.py --json` (no 'runs'/'config')")
    if not report["runs"]:
        raise ReportError(f"{path}: the report has no store runs (was it made with --no-compare?)")
    return report


def ratio_rows(report: Dict[str, Any]) -> Tuple[List[str], List[str], Dict[str, Dict[str, float]]]:
    """(workloads, peers, {workload: {peer: ratio}}) from the report's ratio table."""
    table = report.get("ratios") or {}
    rows: Dict[str, Dict[str, float]] = table.get("rows") or {}
    peers = [p for p in table.get("columns", []) if any(p in r for r in rows.values())]
    workloads = [w for w in rows if rows[w]]
    return workloads, peers, rows


def latency_rows(report: Dict[str, Any]) -> Dict[str, Dict[str, Tuple[Dict[str, float], str]]]:
    """{workload: {store: (percentiles in us, latency unit)}} for every row that has them."""
    out: Dict[str, Dict[str, Tuple[Dict[str, float], str]]] = {}
    for store, run in report["runs"].items():
        for row in run.get("results") or []:
            lat = row.get("latency_us") or {}
            pct = {p: float(lat[p]) for p in PERCENTILES if isinstance(lat.get(p), (int, float)) and lat[p] > 0}
            if pct:
                out.setdefault(row["workload"], {})[store] = (pct, str(row.get("latency_unit", "")))
    return out


def _subtitle(report: Dict[str, Any]) -> str:
    cfg = report.get("config", {})
    versions = (report.get("machine") or {}).get("versions") or {}
    repeat = cfg.get("repeat", 1)
    runs = "one run" if repeat == 1 else f"median of {repeat} runs"
    return (f"N = {cfg.get('n', '?'):,} keys, {cfg.get('value_size', '?')} B values, {runs}; "
            f"abase_engine {versions.get('abase', '?')}")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plots.py needs matplotlib: pip install -e \".[bench]\"") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(report: Dict[str, Any], out_dir: str) -> Optional[str]:
    """Grouped bars of abase ÷ peer ops/s per workload; returns the file written (None: no ratios)."""
    workloads, peers, rows = ratio_rows(report)
    if not workloads:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(workloads) + 3), 5.5))
    width = 0.8 / max(1, len(peers))
    cmap = plt.get_cmap("tab10")
    for j, peer in enumerate(peers):
        xs, ys = [], []
        for i, w in enumerate(workloads):
            r = rows[w].get(peer)
            if r is not None and r > 0:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r)
        ax.bar(xs, ys, width=width, label=peer, color=cmap(j % 10))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=30, ha="right")
    ax.set_ylabel("abase ops/s ÷ peer ops/s (log; > 1: abase faster)")
    ax.set_title("Throughput against the peers\n" + _subtitle(report), fontsize=10)
    ax.legend(fontsize=8, ncol=2, title="peer (durable rows: abase-sync)", title_fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "throughput_ratios.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency(report: Dict[str, Any], out_dir: str) -> Optional[str]:
    """One panel per workload: latency percentiles of each store; returns the file (None: none in the JSON)."""
    lat = latency_rows(report)
    if not lat:
        return None
    plt = _pyplot()
    workloads = list(lat)
    cols = min(3, len(workloads))
    nrows = math.ceil(len(workloads) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows + 0.6), squeeze=False,
                             constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for idx, w in enumerate(workloads):
        ax = axes[idx // cols][idx % cols]
        stores = list(lat[w])
        width = 0.8 / len(PERCENTILES)
        for k, p in enumerate(PERCENTILES):
            xs = [i - 0.4 + width * (k + 0.5) for i, s in enumerate(stores) if p in lat[w][s][0]]
            ys = [lat[w][s][0][p] for s in stores if p in lat[w][s][0]]
            ax.bar(xs, ys, width=width, label=p, color=cmap(k / (len(PERCENTILES) - 1)))
        units = sorted({lat[w][s][1] for s in stores})
        ax.set_title(f"{w}\n(per {' / '.join(units)})", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(stores)))
        ax.set_xticklabels(stores, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("µs (log)", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    for idx in range(len(workloads), nrows * cols):
        axes[idx // cols][idx % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", ncol=len(PERCENTILES), fontsize=8)
    fig.suptitle("Latency percentiles (µs, log scale)\n" + _subtitle(report), fontsize=10)
    path = os.path.join(out_dir, "latency_percentiles.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline_rows(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``compaction_timeline`` figure of the report, or None (absent or failed)."""
    tl = (report.get("engine_figures") or {}).get("compaction_timeline")
    if not isinstance(tl, dict) or "error" in tl or not tl.get("samples"):
        return None
    return tl


def plot_timeline(report: Dict[str, Any], out_dir: str) -> Optional[str]:
    """Log/store bytes and per-window p99 over time; returns the file (None: no timeline in the JSON)."""
    tl = timeline_rows(report)
    if tl is None:
        return None
    plt = _pyplot()
    samples = tl["samples"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, constrained_layout=True)
    mib = float(1 << 20)
    for field, label in (("log_bytes", "log (live segments)"), ("lag_bytes", "compaction lag (sealed, unfolded)"),
                         ("store_bytes", "store (LMDB file)")):
        pts = [(x["t_s"], x[field] / mib) for x in samples if isinstance(x.get(field), (int, float))]
        if pts:
            top.plot([a for a, _ in pts], [b for _, b in pts], label=label)
    top.set_ylabel("MiB")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    for field, label in (("put_p99_us", "put p99"), ("get_p99_us", "get p99")):
        pts = [(x["t_s"], x[field]) for x in samples if x.get(field)]
        if pts:
            bottom.plot([a for a, _ in pts], [b for _, b in pts], marker=".", label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("µs per op (log), per window")
    bottom.set_xlabel("seconds since the store was opened")
    bottom.grid(which="both", alpha=0.3)
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.axvline(tl["write_s"], color="grey", linestyle="--", linewidth=0.8)
    seg = (tl.get("open_opts") or {}).get("segment_size")
    fig.suptitle(f"Compaction over time: {tl['ops']:,} ops (90% put) on {tl['n']:,} keys, {tl['rounds']} writes "
                 f"per key, compactor thread on" + (f", {seg >> 20} MiB segments" if seg else "")
                 + "\nwrites end at the dashed line; then the compactor catches up alone\n"
                 + _subtitle(report), fontsize=9)
    path = os.path.join(out_dir, "compaction_timeline.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="PNG charts of a `bench/compare.py --json` report.")
    ap.add_argument("report", help="the JSON written by `python bench/compare.py --json FILE`")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"directory for the PNGs (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    try:
        report = load_report(args.report)
    except ReportError as exc:
        print(f"plots.py: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    written = [p for p in (plot_ratios(report, args.out), plot_latency(report, args.out),
                           plot_timeline(report, args.out)) if p]
    if not written:
        print("plots.py: the report has neither ratios nor latencies to chart", file=sys.stderr)
        return 2
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
