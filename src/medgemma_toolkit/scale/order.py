"""Results that arrive in completion order, handed on in input order with bounded memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrder(Generic[T]):
    """A reorder buffer: `put(i, item)` in any order; `emit` sees items 0, 1, 2, ... as soon as each prefix is
    complete. Only the items that arrived ahead of a missing one are held (for a pool, about its in-flight window),
    so a report of millions of files can be written in input order without keeping it in memory."""

    def __init__(self, emit: Callable[[int, T], None], start: int = 0) -> None:
        self._emit = emit
        self._next = start
        self._held: dict[int, T] = {}

    def put(self, i: int, item: T) -> None:
        self._held[i] = item
        while self._next in self._held:
            self._emit(self._next, self._held.pop(self._next))
            self._next += 1

    @property
    def pending(self) -> int:
        """Items held back waiting for an earlier one."""
        return len(self._held)

    @property
    def next_index(self) -> int:
        return self._next
