"""One holder per key at a time, even when newcomers arrive while a released lock's
waiter has not run yet; no lock is kept for a key nobody uses."""

from __future__ import annotations

import asyncio

from servicekit.keyedlock import KeyedLocks


async def test_one_holder_per_key_and_nothing_kept_after() -> None:
    locks = KeyedLocks()
    inside = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}

    async def user(key: str, arrive_after: int) -> None:
        for _ in range(arrive_after):
            await asyncio.sleep(0)  # arrivals interleaved with releases
        async with locks.hold(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await asyncio.sleep(0)
            inside[key] -= 1

    await asyncio.gather(*(user("ab"[i % 2], i % 7) for i in range(200)))
    assert most == {"a": 1, "b": 1}
    assert len(locks) == 0
