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

import os
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
    "IOFailedError",
    "NodeIdRetiredError",
    "InvalidRangeError",
    "NamespaceNotFoundError",
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


class NodeIdRetiredError(InvalidOptionError):
    """A node id this directory may not be written under: an id its original
    used before it was backed up and restored (opening, or ``restore``
    without ``force``). Its timestamps ``(hlc, node)`` could repeat ones the
    original already issued, with other contents (docs/operations.md)."""


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


class InvalidRangeError(AbaseError, ValueError):
    """A key range whose start is after its stop (``delete_range``)."""


class NamespaceNotFoundError(AbaseError, KeyError):
    """A namespace name this directory does not define (``drop_namespace``, ``delete_range``)."""

    def __str__(self) -> str:  # KeyError's own str() shows the repr of its argument
        return str(self.args[0]) if self.args else ""


class SlotInvalidatedError(AbaseError):
    """A replication slot fell too far behind and its history was discarded; use anti-entropy."""


class IOFailedError(AbaseError):
    """An operating-system call on the engine's files failed.

    ``file`` names the file (or directory), ``syscall`` the call
    (``fdatasync``, ``fsync``, ``msync``, ``posix_fallocate``,
    ``mdb_txn_commit``, ``write``, ...) and ``errno`` its error number, when
    known.

    After a failed sync of the log or its directory, a failed seal or
    segment allocation, or a failed store commit, the engine refuses every
    later write with this error until it is reopened: a failed writeback is
    reported once and the kernel may have dropped the pages, so a later
    successful sync would prove nothing. Reads keep working, and
    ``Engine.stats()["io_error"]`` describes the first failure. Under
    durability ``"sync"`` the write whose sync failed (and any other write
    not yet acknowledged) is not visible to reads or the change feed, and
    is gone after reopening.
    """

    def __init__(self, message: str, file: Optional[str] = None, syscall: Optional[str] = None,
                 errno: int = 0, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.file = file
        self.syscall = syscall
        self.errno = errno
        #: the message without the call, errno and file appended
        self.reason = reason if reason is not None else message


#: C status -> (exception class, what the status means). Statuses that are
#: answers rather than failures (NOTFOUND, DELETED, NEEDBASE, ETOOSMALL,
#: EAGAIN) are handled where they occur and never reach this table.
_STATUS_ERRORS: Dict[int, Tuple[Type[Exception], str]] = {
    lib.ABASE_EINVAL: (ValueError, "invalid argument"),
    lib.ABASE_EIO: (IOFailedError, "I/O error"),
    lib.ABASE_ENOMEM: (MemoryError, "out of memory"),
    lib.ABASE_ECORRUPT: (CorruptionError, "corruption"),
    lib.ABASE_EVERSION: (FormatVersionError, "unknown format version"),
    lib.ABASE_EKEYSIZE: (KeyTooLargeError, f"key longer than {lib.ABASE_MAX_KEY} bytes"),
    lib.ABASE_EVALSIZE: (ValueTooLargeError, f"value longer than {lib.ABASE_MAX_VALUE} bytes"),
    lib.ABASE_ESKEW: (ClockSkewError, "remote timestamp too far ahead of the local clock"),
    lib.ABASE_ERANGE: (ValueError, "timestamp or wall clock reading out of the clock's range "
                                   "(physical ms must be below 2**47 - 1, leaving the clock room to advance)"),
    lib.ABASE_EWOULDBLOCK: (AbaseError, "would block"),
    lib.ABASE_EBATCHSIZE: (ValueTooLargeError,
                           f"batch larger than {lib.ABASE_MAX_BATCH} encoded bytes (40 + key + value, "
                           "padded to 8, a record)"),
    lib.ABASE_ECLOSED: (EngineClosedError, "the engine is closed"),
    lib.ABASE_ECONFLICT: (AbaseError, "the key changed meanwhile"),
}


def error_for_status(rc: int, what: str, *, message: str = "", file: Optional[str] = None,
                     offset: Optional[int] = None, sys_errno: int = 0, syscall: str = "") -> Exception:
    """The exception for the failure status ``rc`` of the C call ``what``.

    ``message``, ``file``, ``offset``, ``sys_errno`` and ``syscall`` are the
    C core's error details when it gave them (``abase_db_error``): a
    :class:`CorruptionError` carries file and offset, an
    :class:`IOFailedError` the file, the failing call and its errno.
    """
    cls, meaning = _STATUS_ERRORS.get(rc, (AbaseError, f"status {rc}"))
    if cls in (KeyTooLargeError, ValueTooLargeError, ClockSkewError, EngineClosedError):
        return cls(f"{what}: {meaning}")  # the C message adds nothing here
    text = f"{what}: {message or meaning}"
    if cls is CorruptionError:
        return CorruptionError(text, file, offset)
    if cls is FormatVersionError and file:
        return FormatVersionError(f"{text} ({file})")
    if rc == lib.ABASE_EIO:
        return io_failed(text, file, syscall or None, sys_errno)
    return cls(text)


def io_failed(text: str, file: Optional[str], syscall: Optional[str], sys_errno: int) -> IOFailedError:
    """An :class:`IOFailedError` whose message names the call, the errno and the file."""
    detail = []
    if syscall:
        detail.append(syscall)
    if sys_errno:
        detail.append(f"errno {sys_errno} ({os.strerror(sys_errno)})")
    if file:
        detail.append(file)
    suffix = f" [{', '.join(detail)}]" if detail else ""
    return IOFailedError(text + suffix, file, syscall, sys_errno, reason=text)
