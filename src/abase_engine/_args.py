"""Checks of the arguments every public method takes: keys and values.

Keys and values are bytes-like (``bytes``, ``bytearray``, ``memoryview``);
anything else is a ``TypeError``. Sizes are bounded by the log format
(``csrc/abase.h``): a key longer than ``MAX_KEY`` raises
:class:`~abase_engine.errors.KeyTooLargeError`, a value longer than
``MAX_VALUE`` :class:`~abase_engine.errors.ValueTooLargeError`. The checked
value is returned as ``bytes`` (copied from a mutable or view type, so a
caller changing its buffer later cannot change what was written).
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import KeyTooLargeError, ValueTooLargeError
from .log import MAX_KEY, MAX_VALUE

__all__ = ["BYTES_LIKE", "check_key", "check_value", "check_optional_key"]

BYTES_LIKE = (bytes, bytearray, memoryview)


def check_key(key: Any) -> bytes:
    """``key`` as bytes. :raises TypeError, KeyTooLargeError:"""
    if type(key) is bytes:
        if len(key) > MAX_KEY:
            raise KeyTooLargeError(f"key of {len(key)} bytes; the maximum is {MAX_KEY}")
        return key
    if isinstance(key, BYTES_LIKE):
        return check_key(bytes(key))
    raise TypeError(f"keys must be bytes-like, not {type(key).__name__}")


def check_optional_key(key: Any) -> Optional[bytes]:
    """None, or ``key`` checked as by :func:`check_key` (scan bounds)."""
    return None if key is None else check_key(key)


def check_value(value: Any) -> bytes:
    """``value`` as bytes. :raises TypeError, ValueTooLargeError:"""
    if type(value) is bytes:
        if len(value) > MAX_VALUE:
            raise ValueTooLargeError(f"value of {len(value)} bytes; the maximum is {MAX_VALUE}")
        return value
    if isinstance(value, BYTES_LIKE):
        return check_value(bytes(value))
    raise TypeError(f"values must be bytes-like, not {type(value).__name__}")
