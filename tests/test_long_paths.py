"""Long directory paths (issue 11 defect 6).

Segment paths used to be built in a fixed ``char[1100]`` with a silently
truncating ``snprintf``: with a 1,087-character directory several segments
shared one file name and each new one truncated the last. Segment files are
now opened relative to the ``log/`` directory's descriptor, so any path the
OS accepts works, and one it does not is a clear error.
"""

from __future__ import annotations

import errno
import os

import pytest

import abase_engine as ae


def _deep_dir(root: str, length: int) -> str:
    """A directory path of about ``length`` characters under root."""
    path = root
    while len(path) < length:
        path = os.path.join(path, "d" * min(200, max(1, length - len(path) - 1)))
    os.makedirs(path, exist_ok=True)
    return path


@pytest.mark.parametrize("length", [1087, 1100, 3000])
def test_every_key_survives_with_a_long_directory(tmp_path, length):
    path = os.path.join(_deep_dir(str(tmp_path), length), "db")
    keys = {b"key%03d" % i: os.urandom(300) for i in range(100)}
    with ae.open(path, segment_size=4096, compact_interval=None) as db:
        for k, v in keys.items():
            db.put(k, v)  # ~10 segments
        assert all(db.get(k) == v for k, v in keys.items())
        assert db.check() == []
    names = [n for n in os.listdir(os.path.join(path, "log")) if n.endswith(".seg")]
    assert len(names) >= 8 and all(len(n) == len("00000000.seg") for n in names)
    assert len(set(names)) == len(names)  # one file per segment, none truncated to another's name
    with ae.open(path, segment_size=4096, compact_interval=None) as db:
        assert all(db.get(k) == v for k, v in keys.items())
        db.compact(wait=True)
        assert all(db.get(k) == v for k, v in keys.items())


def test_errors_name_the_file_even_for_a_long_directory(tmp_path):
    path = os.path.join(_deep_dir(str(tmp_path), 2500), "db")
    with ae.open(path, compact_interval=None) as db:
        db.put(b"k", b"v")
    seg = os.path.join(path, "log", sorted(os.listdir(os.path.join(path, "log")))[0])
    with open(seg, "r+b") as f:
        f.write(b"X")  # break the segment header
    with pytest.raises(ae.CorruptionError) as info:
        ae.open(path, compact_interval=None)
    assert info.value.file.endswith(os.path.basename(seg))


def test_a_path_the_os_refuses_is_a_clear_error(tmp_path):
    path = str(tmp_path) + "/" + "/".join(["p" * 250] * 20)  # > PATH_MAX (4096)
    with pytest.raises(OSError) as info:
        ae.open(path, compact_interval=None)
    assert info.value.errno == errno.ENAMETOOLONG
