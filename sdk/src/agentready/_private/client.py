"""What every typed client shares: its channel (made or given) and its call path."""

from __future__ import annotations

from typing import Self

import grpc

from agentready._private.call import CallPath, TokenSource


class ServiceClient:
    """A channel to one service and the call path over it.

    Args:
        target: the service's address (any gRPC target), or pass ``channel``.
        token: a bearer token, a callable returning one, or credentials.
        channel: an existing channel to use instead of ``target`` (not closed by us).
        timeout: seconds per call.
        attempts: tries per retryable call.
    """

    def __init__(
        self,
        target: str | None,
        *,
        token: TokenSource | None,
        channel: grpc.aio.Channel | None,
        timeout: float,
        attempts: int,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give either target or channel")
        self._own_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(target or "")
        self._calls = CallPath(token, timeout=timeout, attempts=attempts)

    async def close(self) -> None:
        """Closes the channel, if the client made it."""
        if self._own_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
