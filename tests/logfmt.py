"""Test helpers that read and write the log's files directly, by the format
documented at the top of ``csrc/abase.h`` (kept independent of the C code on
purpose, so the tests check the documentation too).

* segments: ``seg_files``, ``records`` (parse a segment), ``data_end``;
* the durable end mark ``log/MARK``: ``read_mark``, ``write_mark`` (writes
  the next slot, as the engine does), ``mark_before`` (rewind it, as if the
  last sync had covered less), ``simulate_reboot`` (another boot id, as if
  the machine had rebooted since the log was written).
"""

from __future__ import annotations

import os
import struct
from typing import Dict, List, Optional, Tuple

from abase_engine._abase import lib

REC_HDR = struct.Struct("<IIQQIIBBHI")  # crc len prev hlc node ns op flags klen vlen
MARK_SLOT = struct.Struct("<8sIIQQ16s12sI")  # magic version flags seq end boot reserved crc
MARK_STRIDE = 512
MARK_FAILED, MARK_CUT = 1, 2


def addr(seg: int, off: int) -> int:
    """A log address: segment << 32 | offset."""
    return (seg << 32) | off


def seg_files(path) -> List[str]:
    d = os.path.join(path, "log")
    return sorted((os.path.join(d, f) for f in os.listdir(d) if f.endswith(".seg")),
                  key=lambda f: int(os.path.basename(f)[:-4]))


def seg_no(file: str) -> int:
    return int(os.path.basename(file)[:-4])


def records(file: str) -> List[Tuple[int, int, int, bytes]]:
    """[(offset, length, flags, key)] of a segment file, up to the first
    record whose length does not fit (no crc check)."""
    with open(file, "rb") as f:
        raw = f.read()
    out = []
    off = 64
    while off + 40 <= len(raw):
        _c, length, _p, _h, _n, _ns, _op, flags, klen, _vlen = REC_HDR.unpack_from(raw, off)
        if length < 40 or off + length > len(raw):
            break
        out.append((off, length, flags, raw[off + 40: off + 40 + klen]))
        off += (length + 7) & ~7
    return out


def data_end(file: str) -> int:
    recs = records(file)
    if not recs:
        return 64
    off, length, _f, _k = recs[-1]
    return off + ((length + 7) & ~7)


def _mark_path(path) -> str:
    return os.path.join(path, "log", "MARK")


def masked_crc(data: bytes) -> int:
    """The masked crc32c the format stores (see abase.h)."""
    return lib.abase_crc_mask(lib.abase_crc32c(0, data, len(data)))


_crc = masked_crc


def read_slot(chunk: bytes) -> Optional[Dict[str, object]]:
    """One 64-byte slot of the mark as a dict, or None if it is not valid."""
    if len(chunk) < 64:
        return None
    magic, version, flags, seq, end, boot, _r, crc = MARK_SLOT.unpack(chunk[:64])
    if magic != b"ABLOGMRK" or lib.abase_crc_unmask(crc) != lib.abase_crc32c(0, chunk[:60], 60):
        return None
    return {"version": version, "flags": flags, "seq": seq, "end": end, "boot": boot}


def read_mark(path) -> Optional[Dict[str, object]]:
    """The current slot of ``path/log/MARK`` (the valid one with the greatest
    seq) as a dict, or None if no slot is valid."""
    with open(_mark_path(path), "rb") as f:
        raw = f.read()
    best = None
    for i in range(2):
        slot = read_slot(raw[i * MARK_STRIDE: i * MARK_STRIDE + 64])
        if slot is None:
            continue
        slot["slot"] = i
        if best is None or slot["seq"] > best["seq"]:
            best = slot
    return best


def write_mark(path, *, end: Optional[int] = None, flags: Optional[int] = None,
               boot: Optional[bytes] = None, version: Optional[int] = None) -> Dict[str, object]:
    """Write the next slot of the mark (seq + 1), changing the given fields."""
    cur = read_mark(path)
    assert cur is not None, "no valid mark slot"
    seq = cur["seq"] + 1
    new = dict(cur, seq=seq)
    if end is not None:
        new["end"] = end
    if flags is not None:
        new["flags"] = flags
    if boot is not None:
        new["boot"] = boot
    if version is not None:
        new["version"] = version
    body = MARK_SLOT.pack(b"ABLOGMRK", new["version"], new["flags"], seq, new["end"], new["boot"],
                          bytes(12), 0)[:60]
    with open(_mark_path(path), "r+b") as f:
        f.seek((seq % 2) * MARK_STRIDE)
        f.write(body + struct.pack("<I", _crc(body)))
    return new


def mark_before(path, seg: int, off: int) -> None:
    """Rewind the durable end to (seg, off): as if the last sync had covered
    the log only that far (what a process kill leaves behind)."""
    write_mark(path, end=addr(seg, off))


def simulate_reboot(path) -> None:
    """Give the mark another machine boot's id, as a power loss would."""
    cur = read_mark(path)
    assert cur is not None
    write_mark(path, boot=bytes(b ^ 0x5A for b in cur["boot"]) if any(cur["boot"]) else b"\x01" * 16)


def this_boot() -> bytes:
    """This machine's boot id as the mark stores it (16 bytes; zero if unknown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))
    except OSError:
        return bytes(16)
