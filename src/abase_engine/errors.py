"""The one exception hierarchy of abase_engine.

Every error the engine raises on purpose is a subclass of :class:`AbaseError`.
Size errors are also :class:`ValueError`, so code that validates input the usual
Python way keeps working. The C core reports status codes, never exceptions;
:func:`_from_status` is the single place that turns a status into an exception.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AbaseError",
    "CorruptionError",
    "LockedError",
    "EngineClosedError",
    "KeyTooLargeError",
    "ValueTooLargeError",
    "ClockSkewError",
    "SnapshotTooOldError",
    "FormatVersionError",
    "MergeOperatorMismatch",
    "MergeOperandError",
    "SlotInvalidatedError",
    "InvalidOptionError",
]


class AbaseError(Exception):
    """Base class of every error abase_engine raises on purpose."""


class CorruptionError(AbaseError):
    """Bytes on disk failed a check (checksum, length, magic, decoding).

    ``file`` and ``offset`` name where the bad bytes start, when known.
    Corrupt data is never returned as a value.
    """

    def __init__(self, message: str, file: Optional[str] = None, offset: Optional[int] = None):
        where = ""
        if file is not None:
            where = f" (file {file!r}" + (f", offset {offset}" if offset is not None else "") + ")"
        super().__init__(message + where)
        self.file = file
        self.offset = offset


class LockedError(AbaseError):
    """Another process (or another open Engine in this process) holds the directory."""


class EngineClosedError(AbaseError):
    """The engine (or a snapshot, batch or iterator tied to it) was used after close()."""


class KeyTooLargeError(AbaseError, ValueError):
    """A key is longer than the maximum key size (LMDB's limit, 511 bytes)."""


class ValueTooLargeError(AbaseError, ValueError):
    """A value is longer than the maximum value size."""


class InvalidOptionError(AbaseError, ValueError):
    """An option passed to open() is unknown or out of range."""


class ClockSkewError(AbaseError):
    """A remote timestamp is further ahead of the local clock than max_clock_skew allows."""


class SnapshotTooOldError(AbaseError):
    """A read ``at=ts`` needs history that compaction has already discarded."""


class FormatVersionError(AbaseError):
    """The directory (or a segment in it) was written in a format version this build does not know."""


class MergeOperatorMismatch(AbaseError):
    """A namespace is opened with a merge operator other than the one it was created with."""


class MergeOperandError(AbaseError, ValueError):
    """A merge operand is of the wrong type for the namespace's operator, or does not decode."""


class SlotInvalidatedError(AbaseError):
    """A replication slot fell too far behind and its history was discarded; use anti-entropy."""
