"""The bytes of request bodies (and unsent answers) the HTTP server holds at once, bounded.

A request reserves its ``Content-Length`` before its body is read; when the budget is spent it
waits, first come first served, with its socket paused (the bytes stay in the client's and the
kernel's buffers, not in the agent), and is answered 503 with ``Retry-After`` when it waited too
long. Memory under load is then bounded by the budget, not by the number of clients.

Used from the server's event loop thread only: no lock.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

__all__ = ["ByteBudget"]


class _Waiter:
    __slots__ = ("granted", "grant", "size")

    def __init__(self, size: int, grant: Callable[[], None]) -> None:
        self.size = size
        self.grant = grant
        self.granted = False


class ByteBudget:
    """``limit`` bytes shared by all connections; ``take`` / ``wait`` reserve, ``give`` returns."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget must be at least 1 byte, got {limit}")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._queue: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes now if they fit and nobody waits before us; False otherwise."""
        if self._queue or self.used + size > self.limit:
            return False
        self._add(size)
        return True

    def force(self, size: int) -> None:
        """Reserve ``size`` bytes even over the limit (an answer already computed must be sent); later requests wait."""
        self._add(size)

    def wait(self, size: int, grant: Callable[[], None]) -> _Waiter:
        """Queue for ``size`` bytes; ``grant()`` is called once they are reserved. Cancel with :meth:`cancel`."""
        w = _Waiter(size, grant)
        self._queue.append(w)
        self._wake()
        return w

    def cancel(self, waiter: _Waiter) -> None:
        """Leave the queue (timeout, closed connection); a waiter already granted keeps its bytes."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            return
        self._wake()

    def give(self, size: int) -> None:
        """Return ``size`` bytes and admit the waiters that now fit, in order."""
        self.used -= size
        self._wake()

    def _add(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        # A body never larger than the limit always fits once the budget is empty: strict order cannot deadlock.
        while self._queue and (self.used + self._queue[0].size <= self.limit or self.used == 0):
            w = self._queue.popleft()
            self._add(w.size)
            w.granted = True
            w.grant()
