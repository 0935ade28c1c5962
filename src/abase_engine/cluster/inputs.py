"""Argument checks of the cluster client's API: keys and values.

The client enforces the engine's limits (:data:`~abase_engine.log.MAX_KEY`,
:data:`~abase_engine.log.MAX_VALUE`) itself, so that a bad argument fails
with a clear error before anything is sent to a replica.

Thread-safety: pure functions.
"""

from __future__ import annotations

from typing import Any

from ..errors import KeyTooLargeError, ValueTooLargeError
from ..log import MAX_KEY, MAX_VALUE

__all__ = ["BYTES_LIKE", "check_key", "check_value"]

#: The types the client takes as keys, values and encoded operands.
BYTES_LIKE = (bytes, bytearray, memoryview)


def check_key(key: Any) -> bytes:
    """``key`` as bytes.

    :raises TypeError: ``key`` is not bytes-like.
    :raises KeyTooLargeError: longer than ``MAX_KEY`` (a ``ValueError``).
    """
    if isinstance(key, BYTES_LIKE):
        key = bytes(key)
        if len(key) > MAX_KEY:
            raise KeyTooLargeError(f"key of {len(key)} bytes; the maximum is {MAX_KEY}")
        return key
    raise TypeError(f"keys must be bytes-like, not {type(key).__name__}")


def check_value(value: Any) -> bytes:
    """``value`` as bytes.

    :raises TypeError: ``value`` is not bytes-like.
    :raises ValueTooLargeError: longer than ``MAX_VALUE`` (a ``ValueError``).
    """
    if isinstance(value, BYTES_LIKE):
        value = bytes(value)
        if len(value) > MAX_VALUE:
            raise ValueTooLargeError(f"value of {len(value)} bytes; the maximum is {MAX_VALUE}")
        return value
    raise TypeError(f"values must be bytes-like, not {type(value).__name__}")
