"""Sync faces of the asyncio clients: the same code, run on a background event loop.

The typed clients are written once, for asyncio. Their sync face owns a daemon thread
running an event loop; it builds the asyncio client on that loop (gRPC channels
belong to the loop that made them) and runs each call there, blocking the caller
until it returns. :func:`blocking` and :func:`blocking_iter` turn the asyncio
methods into sync ones with the same signature, so the type checker sees the real
parameters and results.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class _Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class LoopThread:
    """An event loop on a daemon thread, running coroutines for other threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` has run."""
        return self.loop.is_closed()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Runs ``awaitable`` on the loop and blocks until its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync face cannot be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(_await(awaitable), self.loop).result()

    async def run_async(self, awaitable: Awaitable[T]) -> T:
        """Runs ``awaitable`` on this loop, awaited from another loop."""
        if asyncio.get_running_loop() is self.loop:
            return await awaitable
        future = asyncio.run_coroutine_threadsafe(_await(awaitable), self.loop)
        return await asyncio.wrap_future(future)

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """The items of an async iterator, fetched one by one on the loop."""
        try:
            while True:
                try:
                    yield self.run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            closing = getattr(iterator, "aclose", None)
            if closing is not None and not self.stopped:
                self.run(closing())

    def stop(self) -> None:
        """Stops the loop and its thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class SyncFace(Generic[C]):
    """The base of a sync client: the asyncio client ``C`` on a background loop.

    Args:
        make: builds the asyncio client; called on the background loop.
    """

    def __init__(self, make: Callable[[], C]) -> None:
        self._loop = LoopThread(f"agentready-{type(self).__name__}")

        async def build() -> C:
            return make()

        try:
            self._async: C = self._loop.run(build())
        except BaseException:
            self._loop.stop()
            raise

    @property
    def aio(self) -> C:
        """The asyncio client underneath (its methods run on the background loop)."""
        return self._async

    def close(self) -> None:
        """Closes the client and stops its background thread."""
        if self._loop.stopped:
            return
        try:
            self._loop.run(self._async.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncFace[Any], P], T]:
    """A sync method running the asyncio ``method`` of the face's client."""
    name = method.__name__

    @functools.wraps(method)
    def run(self: SyncFace[Any], /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self._loop.run(getattr(self._async, name)(*args, **kwargs))
        return result

    return run


def blocking_iter(
    method: Callable[Concatenate[Any, P], AsyncIterator[T]],
) -> Callable[Concatenate[SyncFace[Any], P], Iterator[T]]:
    """A sync method iterating over the asyncio ``method``'s async iterator."""
    name = method.__name__

    @functools.wraps(method)
    def run(self: SyncFace[Any], /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._loop.iterate(getattr(self._async, name)(*args, **kwargs))

    return run
