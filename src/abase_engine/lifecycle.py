"""Whether an engine is open: the one flag every component checks.

:class:`Lifecycle` is shared by the engine and every handle it gives out
(namespaces, batches, snapshots, feeds, slots), so that a call after
``close()`` raises :class:`~abase_engine.errors.EngineClosedError` wherever
it lands. It owns no lock: the flag is set once, by ``Engine.close()``.
"""

from __future__ import annotations

from .errors import EngineClosedError

__all__ = ["Lifecycle"]


class Lifecycle:
    """The open/closed state of one engine."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def check(self, what: str) -> None:
        """:raises EngineClosedError: the engine is closed (``what`` names the call)."""
        if self.closed:
            raise EngineClosedError(f"{what} on a closed engine")
