"""A connection's deadline (device_agent/serve/deadline.py): one asyncio timer across re-arms, fired on time."""

from __future__ import annotations

import asyncio

from device_agent.serve.deadline import Deadline


def _run(coro_fn):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro_fn(loop))
    finally:
        loop.close()


def test_re_arming_later_reuses_the_timer_and_fires_at_the_last_deadline():
    async def go(loop):
        fired: list[float] = []
        d = Deadline(loop)
        t0 = loop.time()
        d.arm(0.05, lambda: fired.append(loop.time() - t0))
        for _ in range(1000):  # a keep-alive connection re-arms on every request
            d.arm(0.15, lambda: fired.append(loop.time() - t0))
        assert len(loop._scheduled) == 1  # noqa: SLF001 - the point: no timer per arm
        await asyncio.sleep(0.3)
        return fired

    fired = _run(go)
    assert len(fired) == 1 and 0.15 <= fired[0] < 0.28


def test_an_earlier_deadline_gets_its_own_timer_and_the_old_one_is_cancelled():
    async def go(loop):
        fired: list[str] = []
        d = Deadline(loop)
        d.arm(30.0, lambda: fired.append("idle"))
        d.arm(0.05, lambda: fired.append("head"))
        live = [h for h in loop._scheduled if not h.cancelled()]  # noqa: SLF001
        assert len(live) == 1
        await asyncio.sleep(0.2)
        return fired

    assert _run(go) == ["head"]


def test_disarmed_nothing_fires_and_close_drops_the_timer():
    async def go(loop):
        fired: list[str] = []
        d = Deadline(loop)
        d.arm(0.05, lambda: fired.append("x"))
        d.disarm()
        assert not d.armed
        await asyncio.sleep(0.12)
        d.arm(0.05, lambda: fired.append("y"))
        d.close()
        assert not [h for h in loop._scheduled if not h.cancelled()]  # noqa: SLF001
        await asyncio.sleep(0.12)
        return fired

    assert _run(go) == []


def test_re_armed_after_firing_fires_again():
    async def go(loop):
        fired: list[int] = []
        d = Deadline(loop)
        d.arm(0.02, lambda: fired.append(1))
        await asyncio.sleep(0.08)
        d.arm(0.02, lambda: fired.append(2))
        await asyncio.sleep(0.08)
        return fired

    assert _run(go) == [1, 2]
