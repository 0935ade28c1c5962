"""Every committed fuzz input, replayed (issue 11 item 5).

The seed corpus (``fuzz/corpus/<harness>/``) and every input a fuzzer ever
failed on (``fuzz/regressions/<harness>/``, one file per finding, named for
what it found) run through the harness's ``TestOneInput`` without atheris,
so each finding stays fixed. The specific findings also have a plain test
below. The fuzzers themselves run from ``fuzz/run.sh`` (see fuzz/README.md).
"""

from __future__ import annotations

import os
import sys

import pytest

import abase_engine as ae
from abase_engine.errors import CorruptionError
from abase_engine.feed import CURSOR

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
HARNESSES = ["segment", "cursor", "apply", "crdt", "digests", "slots"]


@pytest.mark.parametrize("harness", HARNESSES)
def test_committed_fuzz_inputs_pass(harness):
    sys.path.insert(0, FUZZ)
    try:
        import replay

        dirs = [os.path.join(FUZZ, "corpus", harness), os.path.join(FUZZ, "regressions", harness)]
        assert replay.replay(harness, dirs) >= 1
    finally:
        sys.path.remove(FUZZ)


def test_sealed_segment_cut_inside_the_last_records_padding_is_corruption(db_path):
    """Finding of fuzz_segment (fuzz/regressions/segment/unpadded-last-record):
    recovery accepted a sealed segment whose file ended inside the padding of
    its last record, set its end to an unaligned offset, and the change feed
    then failed with CorruptionError on an engine that had opened cleanly."""
    with ae.open(db_path, segment_size=4096, compact_interval=None) as db:
        for i in range(100):
            db.put(b"k%02d" % i, b"vvv")  # 40 + 3 + 3 = 46 bytes, padded to 48
        cursors = [CURSOR.unpack(c.cursor) for c in db.changes()]
    sealed = cursors[0][0]
    end = max(off for seg, off in cursors if seg == sealed)
    path = os.path.join(db_path, "log", "%08d.seg" % sealed)
    with open(path, "r+b") as f:
        f.truncate(end - 1)
    with pytest.raises(CorruptionError):
        ae.open(db_path, compact_interval=None)
