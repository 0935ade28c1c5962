"""Text forms of the engine's binary values, as the command line reads and writes them.

One place decides how a key, a value, a timestamp and a feed cursor look on
a terminal or in a dump file, so that ``dump`` and ``load``, ``changes`` and
``--since``, ``--at`` and the timestamps a dump carries all agree:

* keys and values: ``base64`` (standard alphabet, padded; lossless, the
  default) or ``utf-8`` (readable; a key or value that is not valid UTF-8 is
  an error, never silently altered);
* a timestamp: ``MS,LOGICAL,NODE`` (the numbers of ``repr(Timestamp)``,
  which is also accepted as written: ``Timestamp(MS, LOGICAL, NODE)``) or the
  24 hex digits of ``Timestamp.to_bytes()``; written as ``MS,LOGICAL,NODE``;
* a feed cursor: the 24 hex digits of ``Change.cursor``.

Thread-safety: pure functions.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Optional

from ..record import Timestamp

__all__ = [
    "ENCODINGS", "FormatError", "encode_bytes", "decode_bytes", "format_ts", "parse_ts",
    "format_cursor", "parse_cursor",
]

#: The names ``--encoding`` takes.
ENCODINGS = ("base64", "utf-8")

_CURSOR_BYTES = 12  # segment u32 | offset u64, big-endian (Engine.changes)
_TS_TEXT = re.compile(r"^\s*(?:Timestamp\s*\()?\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)?\s*$")
_HEX24 = re.compile(r"^[0-9a-fA-F]{24}$")


class FormatError(ValueError):
    """A piece of text is not a valid key, value, timestamp or cursor for its format."""


def encode_bytes(data: bytes, encoding: str, what: str = "value") -> str:
    """``data`` as text in ``encoding`` (one of :data:`ENCODINGS`).

    >>> encode_bytes(b"hi", "base64"), encode_bytes(b"hi", "utf-8")
    ('aGk=', 'hi')

    :raises FormatError: ``data`` is not valid UTF-8 and ``encoding`` is ``utf-8``.
    """
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} {bytes(data)[:40]!r} is not valid UTF-8: use --encoding base64") from None


def decode_bytes(text: object, encoding: str, what: str = "value") -> bytes:
    """The bytes that :func:`encode_bytes` turned into ``text``.

    >>> decode_bytes("aGk=", "base64"), decode_bytes("hi", "utf-8")
    (b'hi', b'hi')

    :raises FormatError: ``text`` is not a string, or not valid base64.
    """
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a string, not {type(text).__name__}")
    if encoding == "base64":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise FormatError(f"{what} {text[:40]!r} is not valid base64") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        raise FormatError(f"{what} {text[:40]!r} is not encodable as UTF-8") from None


def format_ts(ts: Timestamp) -> str:
    """``MS,LOGICAL,NODE``, the form :func:`parse_ts` reads first.

    >>> format_ts(Timestamp(1700000000000, 2, 7))
    '1700000000000,2,7'
    """
    return f"{ts.physical_ms},{ts.logical},{ts.node_id}"


def parse_ts(text: str) -> Timestamp:
    """A timestamp from ``MS,LOGICAL,NODE``, ``Timestamp(MS, LOGICAL, NODE)`` or 24 hex digits.

    >>> parse_ts("1700000000000,2,7") == parse_ts("Timestamp(1700000000000, 2, 7)")
    True
    >>> parse_ts(Timestamp(5, 0, 1).to_bytes().hex())
    Timestamp(5, 0, 1)

    :raises FormatError: none of those forms, or a number out of range.
    """
    if not isinstance(text, str):
        raise FormatError(f"a timestamp must be a string, not {type(text).__name__}")
    m = _TS_TEXT.match(text)
    try:
        if m is not None:
            return Timestamp(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if _HEX24.match(text.strip()):
            return Timestamp.from_bytes(bytes.fromhex(text.strip()))
    except ValueError as exc:
        raise FormatError(f"timestamp {text!r}: {exc}") from None
    raise FormatError(f"timestamp {text!r} is neither MS,LOGICAL,NODE nor 24 hex digits (Timestamp.to_bytes())")


def format_cursor(cursor: Optional[bytes]) -> Optional[str]:
    """A feed cursor as hex (None stays None)."""
    return None if cursor is None else bytes(cursor).hex()


def parse_cursor(text: str) -> bytes:
    """The cursor bytes from the hex that ``changes`` prints.

    >>> parse_cursor("00000001" + "0000000000000040")
    b'\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00@'

    :raises FormatError: not 24 hex digits.
    """
    t = text.strip()
    if not _HEX24.match(t):
        raise FormatError(f"cursor {text!r} is not {2 * _CURSOR_BYTES} hex digits (as printed by `abase changes`)")
    return bytes.fromhex(t)
