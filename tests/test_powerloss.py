"""Simulated power loss for durability "sync" (the harness and what it
models are described in tests/powerloss.py).

The short form runs in the default test run (one workload, 48 crash images,
a few seconds); the long form (marked ``long``, skipped by default) builds
400 images from a longer workload:

    python -m pytest -m long tests/test_powerloss.py
    python tests/powerloss.py --images 400          # the same, with a summary
"""

from __future__ import annotations

import os
import random

import pytest

import faultfs
import powerloss

_why = faultfs.available()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


def test_power_loss_images_short(tmp_path):
    summary = powerloss.run(48, seed=11, workdir=str(tmp_path))
    assert summary["images"] == 48 and summary["failures"] == 0
    assert summary["acknowledged_writes_checked"] > 0


@pytest.mark.long
def test_power_loss_images_long(tmp_path):
    seed = int(os.environ.get("ABASE_POWERLOSS_SEED", random.randrange(1 << 30)))
    summary = powerloss.run(400, seed=seed, workdir=str(tmp_path))
    print(f"power loss (seed {seed}): {summary}")
    assert summary["images"] == 400 and summary["failures"] == 0


def test_image_pages_mix_old_and_new():
    """The image builder itself: unchanged pages stay, changed ones come from
    either side (or torn at a sector boundary), and a file that grew keeps
    at least its durable length."""
    rnd = random.Random(3)
    old = bytes(8192)
    new = b"\x01" * 4096 + bytes(4096) + b"\x02" * 4096
    seen = set()
    for _ in range(200):
        img = powerloss._mix(old, new, rnd, "torn", 0)
        assert len(img) in (8192, 12288) or 8192 < len(img) <= 12288
        first = img[:4096]
        k = first.count(1)
        assert k % 512 == 0 and first[:k] == b"\x01" * k and first[k:] == bytes(4096 - k)
        seen.add(k)
        assert img[4096:8192] == bytes(4096)
    assert 0 in seen and 4096 in seen and len(seen) > 2  # old, new and torn pages all occur
    assert powerloss._mix(old, new, rnd, "durable", 0) == old
    assert powerloss._mix(old, new, rnd, "cache", 0) == new
