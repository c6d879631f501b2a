"""The one call path of the typed clients: token, deadline, retries, typed errors.

Every typed client (config, tenant, provisioner) sends its calls through a
:class:`CallPath`: it asks the credentials for a bearer token, sets the deadline,
retries what is safe to repeat (reads, and writes carrying a ``request_id``) on
``UNAVAILABLE`` / ``RESOURCE_EXHAUSTED``, and raises :mod:`agentready.errors` types.
When the server refuses an expired token and the credentials can get a fresh one (a
login session), the call is repeated once with the fresh token, whatever kind of
call it is: a refused token means nothing was done.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agentready.errors import AgentReadyError, Unauthenticated, from_rpc_error

T = TypeVar("T")
# Retried only for calls that are safe to repeat: reads, and writes with a request_id.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# ErrorInfo reasons after which fresh credentials may succeed where the old failed.
TOKEN_ENDED = frozenset({"TOKEN_EXPIRED", "TOKEN_REVOKED"})


class Credentials(abc.ABC):
    """Where a client's bearer token comes from (see :mod:`agentready.credentials`)."""

    @abc.abstractmethod
    async def token(self) -> str:
        """The access token to send now (refreshed first when it is about to expire)."""

    async def rejected(self, token: str, reason: str) -> bool:
        """Told that the server refused ``token`` with ``reason``; True when a fresh
        token is now available, so the call is worth repeating once."""
        del token, reason
        return False


TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]] | Credentials


async def current_token(source: TokenSource) -> str:
    """The token ``source`` gives now: a string, a (sync or async) callable's result,
    or the credentials' current access token."""
    if isinstance(source, Credentials):
        return await source.token()
    if callable(source):
        value = source()
        if inspect.isawaitable(value):
            return await value
        return value
    return source


def is_provider(source: TokenSource) -> bool:
    """Whether asking ``source`` again may give another token."""
    return not isinstance(source, str)


class CallPath:
    """Adds the bearer token and a deadline, retries what is safe, raises typed errors.

    Args:
        token: the credentials; None for the few public calls (sign-up, login).
        timeout: the deadline of each attempt, in seconds.
        attempts: tries per retryable call.
        backoff_initial: the first wait between attempts; doubles up to ``backoff_max``.
    """

    def __init__(
        self,
        token: TokenSource | None,
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
        """The call metadata for a plain token or a sync callable (see :meth:`unary`
        for every kind of credentials)."""
        if self._token is None:
            return ()
        token = self._token() if callable(self._token) else self._token
        if not isinstance(token, str):
            raise TypeError("these credentials are asynchronous: use unary()")
        return (("authorization", f"Bearer {token}"),)

    async def unary(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call gRPC deadline
        authenticated: bool = True,
    ) -> T:
        """Calls ``method(request)``. When ``idempotent``, retries UNAVAILABLE, and
        RESOURCE_EXHAUSTED with ``RetryInfo`` (a rate limit, not a limit of what is
        stored), with jittered exponential backoff (RetryInfo's delay wins when longer);
        repeats once with fresh credentials after an expired token.

        Raises:
            AgentReadyError: the typed error of the last attempt.
        """
        delay = self._backoff[0]
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = ""
            metadata: tuple[tuple[str, str], ...] = ()
            if authenticated and self._token is not None:
                token = await current_token(self._token)
                metadata = (("authorization", f"Bearer {token}"),)
            try:
                return await method(request, metadata=metadata, timeout=timeout or self._timeout)
            except grpc.aio.AioRpcError as rpc_error:
                error: AgentReadyError = from_rpc_error(rpc_error)
            if (
                isinstance(error, Unauthenticated)
                and not refreshed
                and isinstance(self._token, Credentials)
                and error.reason in TOKEN_ENDED
                and await self._token.rejected(token, error.reason)
            ):
                # The server did nothing with a refused token: safe to send again.
                refreshed = True
                attempt -= 1
                continue
            if (
                not idempotent
                or error.code not in _RETRYABLE
                or attempt >= self._attempts
                # A limit of what is stored comes without RetryInfo: waiting won't help.
                or (error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after is None)
            ):
                raise error from None
            wait = delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
            if error.retry_after is not None:
                wait = max(wait, error.retry_after)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._backoff[1])

    async def pages(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        items: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call gRPC deadline
    ) -> AsyncIterator[Any]:
        """Every item of a List call (AIP-158), page after page: the request's
        ``page_token`` is advanced until the server gives no ``next_page_token``.
        ``items`` names the response's repeated field."""
        while True:
            page = await self.unary(method, request, idempotent=True, timeout=timeout)
            for item in getattr(page, items):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token
