"""Node ids that are never reused: a persisted high-water counter.

Every client and every replica of a cluster stamps records with its node id,
and ``(HLC, node id)`` must be unique for ever: ``Engine.apply`` skips a
record whose ``(HLC, node id)`` it already holds as "already held", so a
reused pair with another value would make replicas diverge for good. So a
replica rebuilt on an empty directory, and every client that starts, takes
an id that was never handed out before.

On disk (``<dir>/``)::

    LOCK           fcntl lock taken for each allocation (processes on one host)
    next_node_id   "abase-node-ids v1 <next id> <crc32 of the line before it>\\n"

An allocation takes the lock, reads the counter, writes ``counter + n`` to
``next_node_id.tmp``, fsyncs it, renames it over ``next_node_id`` and
fsyncs the directory, then returns the ids. A crash at any point either
hands out nothing or loses ids (never reissues one): the counter on disk is
always at least every id returned.

A multi-machine deployment needs one allocator for all of them: under Ray
the cluster's registry actor owns this file on the head node and allocates
for everyone.

Thread-safety: safe (a process-local lock plus the file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import zlib
from typing import Iterator

from ..errors import CorruptionError
from ..record import MAX_NODE_ID

__all__ = ["IdAllocator", "FIRST_NODE_ID"]

#: Ids start here; 0 stays unused (some tests use it for hand-built records).
FIRST_NODE_ID = 1
_MAGIC = "abase-node-ids v1"


class IdAllocator:
    """Hands out node ids from a counter persisted in ``directory``.

    :param directory: created if missing.
    :raises CorruptionError: the counter file exists but does not parse or
        fails its checksum (naming the file).
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._path = os.path.join(self.directory, "next_node_id")
        self._lock = threading.Lock()
        with self._locked():
            self._read()  # fail early on a corrupt file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The process-local lock, then the file lock (other processes)."""
        with self._lock:
            fd = os.open(os.path.join(self.directory, "LOCK"), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _read(self) -> int:
        try:
            with open(self._path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return FIRST_NODE_ID
        parts = raw.decode("ascii", "replace").rstrip("\n").rsplit(" ", 1)
        if len(parts) != 2 or not parts[0].startswith(_MAGIC + " "):
            raise CorruptionError("node id counter does not parse", self._path, 0)
        body, crc = parts
        try:
            value = int(body[len(_MAGIC) + 1:])
            ok = int(crc, 16) == zlib.crc32(body.encode())
        except ValueError:
            ok = False
        if not ok or not FIRST_NODE_ID <= value <= MAX_NODE_ID + 1:
            raise CorruptionError("node id counter fails its checksum or range check", self._path, 0)
        return value

    def _write(self, value: int) -> None:
        body = f"{_MAGIC} {value}"
        line = f"{body} {zlib.crc32(body.encode()):08x}\n".encode()
        tmp = self._path + ".tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)  # durability point 1: the new counter's bytes
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)  # durability point 2: the rename
        finally:
            os.close(dfd)

    def allocate(self, n: int = 1) -> int:
        """Reserve ``n`` consecutive ids and return the first.

        The ids are durable before this returns: no later allocation, in
        this process or another, after any crash, returns them again.

        :raises ValueError: ``n`` < 1, or the 32-bit id space is exhausted.
        Runtime complexity: O(1), two fsyncs.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError("allocate needs n >= 1")
        with self._locked():
            first = self._read()
            if first + n - 1 > MAX_NODE_ID:
                raise ValueError("node id space exhausted")
            self._write(first + n)
            return first

    def peek(self) -> int:
        """The next id that would be handed out (for tests and diagnostics)."""
        with self._locked():
            return self._read()
