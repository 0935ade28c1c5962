"""The one exception hierarchy of abase_engine.

Every error the engine raises on purpose is a subclass of :class:`AbaseError`.
Size errors are also :class:`ValueError`, so code that validates input the usual
Python way keeps working. The C core reports status codes, never exceptions;
:data:`_STATUS_ERRORS` maps each failure status to its exception class and a
short meaning (the shape of py-lmdb's ``_error_map``), and
:func:`error_for_status` is the one function that turns a status into an
exception, for the log (``log.py``) and the clock (``hlc.py``) alike.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Type

from ._abase import lib

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
    "error_for_status",
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


#: C status -> (exception class, what the status means). Statuses that are
#: answers rather than failures (NOTFOUND, DELETED, NEEDBASE, ETOOSMALL,
#: EAGAIN) are handled where they occur and never reach this table.
_STATUS_ERRORS: Dict[int, Tuple[Type[Exception], str]] = {
    lib.ABASE_EINVAL: (ValueError, "invalid argument"),
    lib.ABASE_EIO: (AbaseError, "I/O error"),
    lib.ABASE_ENOMEM: (MemoryError, "out of memory"),
    lib.ABASE_ECORRUPT: (CorruptionError, "corruption"),
    lib.ABASE_EVERSION: (FormatVersionError, "unknown format version"),
    lib.ABASE_EKEYSIZE: (KeyTooLargeError, f"key longer than {lib.ABASE_MAX_KEY} bytes"),
    lib.ABASE_EVALSIZE: (ValueTooLargeError, f"value longer than {lib.ABASE_MAX_VALUE} bytes"),
    lib.ABASE_ESKEW: (ClockSkewError, "remote timestamp too far ahead of the local clock"),
    lib.ABASE_ERANGE: (ValueError, "wall clock reading out of range (must be 0 <= ms < 2**47)"),
    lib.ABASE_EWOULDBLOCK: (AbaseError, "would block"),
    lib.ABASE_ECONFLICT: (AbaseError, "the key changed meanwhile"),
}


def error_for_status(rc: int, what: str, *, message: str = "", file: Optional[str] = None,
                     offset: Optional[int] = None, sys_errno: int = 0) -> Exception:
    """The exception for the failure status ``rc`` of the C call ``what``.

    ``message``, ``file``, ``offset`` and ``sys_errno`` are the C core's
    error details when it gave them (``abase_db_error``): a
    :class:`CorruptionError` carries file and offset, an I/O error names the
    errno and the file.
    """
    cls, meaning = _STATUS_ERRORS.get(rc, (AbaseError, f"status {rc}"))
    if cls in (KeyTooLargeError, ValueTooLargeError, ClockSkewError):
        return cls(f"{what}: {meaning}")  # the C message adds nothing here
    text = f"{what}: {message or meaning}"
    if cls is CorruptionError:
        return CorruptionError(text, file, offset)
    if cls is FormatVersionError and file:
        return FormatVersionError(f"{text} ({file})")
    if rc == lib.ABASE_EIO:
        return AbaseError(f"{text} (errno {sys_errno}){' ' + file if file else ''}")
    return cls(text)
