"""A connection's deadline: one asyncio timer re-used across re-arms."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["TIMER_SLACK_S", "Deadline"]

#: a timer firing at most this early runs its callback rather than re-scheduling itself
TIMER_SLACK_S = 0.001


class Deadline:
    """Call a function at a deadline unless re-armed or disarmed first.

    A request arms three deadlines (head, body, idle), and an asyncio ``TimerHandle`` made and
    cancelled for each took ~15 % of the event loop's time on a small model (py-spy, digits JSON, one
    client). Here a timer due before the new deadline stays, and re-schedules itself when it fires
    early; only a deadline earlier than the pending timer's needs a new one. Event loop thread only.
    """

    __slots__ = ("_loop", "_then", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._then: Callable[[], None] | None = None

    def arm(self, seconds: float, then: Callable[[], None]) -> None:
        """``then()`` in ``seconds`` (replaces whatever was armed)."""
        when = self._loop.time() + seconds
        self._when, self._then = when, then
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)

    def disarm(self) -> None:
        """Nothing is called (a pending timer fires into nothing, or serves the next :meth:`arm`)."""
        self._then = None

    def close(self) -> None:
        """Disarm and drop the timer (the connection is gone)."""
        self._then = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def armed(self) -> bool:
        return self._then is not None

    def _fire(self) -> None:
        self._timer = None
        then = self._then
        if then is None:
            return
        if self._when - self._loop.time() > TIMER_SLACK_S:  # re-armed later since this timer was set
            self._timer = self._loop.call_at(self._when, self._fire)
            return
        self._then = None
        then()
