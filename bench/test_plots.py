"""bench/plots.py on a real (tiny) report of bench/compare.py.

Skipped without matplotlib (the `bench` extra). Nothing is timed: the test
checks that the charts are written from the report's own numbers and that a
file that is not a report is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cmp") / "out.json")
    src = os.path.join(os.path.dirname(HERE), "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), "--stores", "abase-process,lmdb",
                        "--workloads", "put_single,get_hit,compact", "--n", "300", "--no-p99", "--json", out],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    return out


def test_charts_come_from_the_report(report_path, tmp_path):
    report = plots.load_report(report_path)
    workloads, peers, rows = plots.ratio_rows(report)
    assert peers == ["lmdb"] and workloads == ["put_single", "get_hit"]  # compact has no ratio
    assert rows == report["ratios"]["rows"]
    lat = plots.latency_rows(report)
    assert set(lat) == {"put_single", "get_hit", "compact"}
    assert set(lat["get_hit"]) == {"abase-process", "lmdb"}
    got = {r["workload"]: r["latency_us"]["p50"] for r in report["runs"]["lmdb"]["results"]}
    assert lat["get_hit"]["lmdb"][0]["p50"] == got["get_hit"]
    assert plots.main([report_path, "--out", str(tmp_path)]) == 0
    tl = plots.timeline_rows(report)
    assert tl["samples"][0]["t_s"] == 0 and tl["ops"] == 3 * 300
    assert [x["t_s"] for x in tl["samples"]] == sorted(x["t_s"] for x in tl["samples"])
    for name in ("throughput_ratios.png", "latency_percentiles.png", "compaction_timeline.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_not_a_report_is_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert plots.main([str(bad), "--out", str(tmp_path / "img")]) == 2
    assert not (tmp_path / "img").exists()
