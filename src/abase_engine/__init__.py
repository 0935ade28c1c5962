"""abase_engine: an embeddable, crash-safe, multi-version key-value engine.

HLC-stamped versions, deterministic last-write-wins or CRDT merges per
namespace, and hooks to replicate it. Start with :func:`open`.
"""

from . import errors
from .engine import Batch, Engine, Namespace, ReplicationSlot, Snapshot, open
from .errors import (
    AbaseError,
    ClockSkewError,
    CorruptionError,
    EngineClosedError,
    FormatVersionError,
    IOFailedError,
    KeyTooLargeError,
    LockedError,
    InvalidOptionError,
    InvalidRangeError,
    MergeOperandError,
    NodeIdRetiredError,
    MergeOperatorMismatch,
    SlotInvalidatedError,
    SnapshotTooOldError,
    NamespaceNotFoundError,
    ValueTooLargeError,
)
from .hlc import HLC
from .merge import LWW, MergeOperator
from .record import Change, Op, Timestamp
from .repair import repair
from .backup import restore

try:  # the CRDT library is its own module; import it lazily if it is absent
    from . import crdt
except ImportError:  # pragma: no cover
    crdt = None  # type: ignore[assignment]

__version__ = "0.1.0"

__all__ = [
    "open", "repair", "restore", "Engine", "Namespace", "Batch", "Snapshot", "ReplicationSlot", "Timestamp", "Op", "Change", "HLC",
    "MergeOperator", "LWW", "crdt", "errors", "AbaseError", "CorruptionError", "LockedError",
    "EngineClosedError", "KeyTooLargeError", "ValueTooLargeError", "ClockSkewError",
    "SnapshotTooOldError", "FormatVersionError", "MergeOperatorMismatch", "MergeOperandError",
    "SlotInvalidatedError", "InvalidOptionError", "IOFailedError",
    "NodeIdRetiredError",
    "SlotInvalidatedError", "InvalidOptionError", "IOFailedError", "InvalidRangeError", "NamespaceNotFoundError",
]
