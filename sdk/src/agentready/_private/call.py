"""The one call path of the typed clients: token, deadline, retries, typed errors."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agentready.errors import AgentReadyError, from_rpc_error

T = TypeVar("T")
TokenSource = str | Callable[[], str]
# Retried only for calls that are safe to repeat: reads, and writes with a request_id.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class CallPath:
    """Adds the bearer token and a deadline, retries what is safe, raises typed errors."""

    def __init__(
        self,
        token: TokenSource,
        *,
        timeout: float,
        attempts: int,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
    ) -> None:
        self._token = token
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = (backoff_initial, backoff_max)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata: the current bearer token."""
        token = self._token() if callable(self._token) else self._token
        return (("authorization", f"Bearer {token}"),)

    async def unary(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call gRPC deadline
    ) -> T:
        """Calls ``method(request)``. When ``idempotent``, retries UNAVAILABLE, and
        RESOURCE_EXHAUSTED with ``RetryInfo`` (a rate limit, not a limit of what is
        stored), with jittered exponential backoff (RetryInfo's delay wins when longer).

        Raises:
            AgentReadyError: the typed error of the last attempt.
        """
        delay = self._backoff[0]
        for attempt in range(1, self._attempts + 1):
            try:
                return await method(
                    request, metadata=self.metadata(), timeout=timeout or self._timeout
                )
            except grpc.aio.AioRpcError as rpc_error:
                error: AgentReadyError = from_rpc_error(rpc_error)
                if (
                    not idempotent
                    or error.code not in _RETRYABLE
                    or attempt == self._attempts
                    # A limit of what is stored comes without RetryInfo: waiting won't help.
                    or (
                        error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                        and error.retry_after is None
                    )
                ):
                    raise error from None
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                if error.retry_after is not None:
                    wait = max(wait, error.retry_after)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self._backoff[1])
        raise AssertionError("unreachable")  # pragma: no cover
