"""One asyncio lock per key (an organization), kept only while someone uses it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """``async with locks.hold(key):`` runs one holder per key at a time in this process.

    A key's lock is dropped when its last user (holder or waiter) leaves. Counting users
    matters: a released :class:`asyncio.Lock` reports itself free before the waiter it
    woke has taken it, so "not locked" does not mean "not in use".
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Holds ``key``'s lock, waiting for the current holder if need be."""
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
