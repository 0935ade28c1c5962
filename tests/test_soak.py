"""The SIGKILL soak (tests/soak.py): rounds of kill, recover, check against
a model, over every mode (plain writes, batches, compaction, apply, several
writer threads, durability "sync").

The short form (60 kills, ten of each mode) runs in the default test run;
the long form is marked ``long`` and skipped by default:

    python -m pytest -m long tests/test_soak.py
    python tests/soak.py --kills 1000          # the same, with a summary
"""

from __future__ import annotations

import os
import random

import pytest

import soak
import workload


def test_soak_short(tmp_path):
    summary = soak.run(60, seed=7, workdir=str(tmp_path), max_acks=120)
    assert summary["kills"] == 60 and summary["lost"] == 0
    assert all(m["kills"] == 10 for m in summary["per_mode"].values())
    assert all(m["acked"] > 0 for m in summary["per_mode"].values())


@pytest.mark.long
def test_soak_long(tmp_path):
    seed = int(os.environ.get("ABASE_SOAK_SEED", random.randrange(1 << 30)))
    summary = soak.run(1000, seed=seed, workdir=str(tmp_path))
    print(f"soak (seed {seed}): {summary}")
    assert summary["kills"] == 1000 and summary["lost"] == 0


def test_lane_model_rejects_a_lost_write_and_a_half_batch():
    """The soak's check can fail: a state missing an acknowledged write, or
    holding part of a batch, matches no prefix."""
    kinds = "pbp"
    full = workload.LaneModel(kinds, 0)
    full.advance_to(6)
    state, counter = dict(full.state), full.counter[0]
    assert workload.match_lane(workload.LaneModel(kinds, 0), 5, 6, (state, counter)).seq == 6
    lost = dict(state)
    del lost[workload.ops_for(kinds, 0, 5)[1][0][2]]  # write 5 (a put of a fresh key)
    with pytest.raises(AssertionError, match="matches no prefix"):
        workload.match_lane(workload.LaneModel(kinds, 0), 6, 6, (lost, counter))
    half = workload.LaneModel(kinds, 0)
    half.advance_to(4)
    _kind, ops = workload.ops_for(kinds, 0, 4)  # a batch
    part = dict(half.state)
    part[ops[0][2]] = ops[0][3]
    with pytest.raises(AssertionError, match="matches no prefix"):
        workload.match_lane(workload.LaneModel(kinds, 0), 4, 5, (part, counter))
