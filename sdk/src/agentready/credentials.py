"""Credentials: where the clients' bearer tokens come from.

Every client and watcher takes ``token=``, one of:

* a string: a token used as is (a development token, a service-account key's token);
* a callable, sync or async, asked before every call (it may read a rotated file);
* :class:`EnvironmentToken`: a pod's service-account token from its environment
  (``AGENTREADY_TOKEN_FILE``, re-read when the mounted secret rotates, or
  ``AGENTREADY_TOKEN``);
* :class:`Session`: a user's ``Login``. It refreshes the access token before it
  expires, and once more if a server still finds it expired. Refresh tokens are
  single use (TenantService revokes the whole family when one is presented twice,
  as a theft), so refreshes never race: one runs at a time and the others wait for
  its result. :meth:`Session.close` logs out.

A :class:`Session` belongs to the event loop that first uses it; code without a loop
uses :class:`SyncSession`, the same session on a background thread, usable by any
client or watcher, sync or asyncio.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from agentready._private.call import CallPath, Credentials
from agentready._private.sync import LoopThread
from agentready.errors import Unauthenticated
from agentready.tenant.v1 import tenant_pb2, tenant_service_pb2_grpc

__all__ = ["Credentials", "EnvironmentToken", "Session", "SyncSession"]

TokenPair = tenant_pb2.TokenPair


class EnvironmentToken(Credentials):
    """A pod's token from its environment: the file named by ``AGENTREADY_TOKEN_FILE``
    (read again whenever it changes, so a rotated secret is picked up), else the
    token in ``AGENTREADY_TOKEN``.

    Args:
        environ: the environment to read (default ``os.environ``).
        file_variable: the variable naming a token file.
        variable: the variable holding a token.

    Raises:
        Unauthenticated: (when asked for a token) neither variable is set, or the file
            is unreadable or empty.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        file_variable: str = "AGENTREADY_TOKEN_FILE",
        variable: str = "AGENTREADY_TOKEN",
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._file_variable = file_variable
        self._variable = variable
        self._cached: tuple[str, int, str] | None = None  # (path, mtime_ns, token)

    def current(self) -> str:
        """The token now (the synchronous form of :meth:`token`)."""
        path = self._environ.get(self._file_variable, "")
        if path:
            try:
                mtime = os.stat(path).st_mtime_ns
                if self._cached is None or self._cached[:2] != (path, mtime):
                    self._cached = (path, mtime, Path(path).read_text().strip())
            except OSError as error:
                raise Unauthenticated(
                    f"cannot read {self._file_variable}={path}: {error}"
                ) from None
            if self._cached[2]:
                return self._cached[2]
            raise Unauthenticated(f"the token file {path} is empty")
        token = self._environ.get(self._variable, "").strip()
        if not token:
            raise Unauthenticated(f"neither {self._file_variable} nor {self._variable} is set")
        return token

    async def token(self) -> str:
        return self.current()

    def __call__(self) -> str:
        return self.current()


def _expiry(tokens: TokenPair) -> float:
    if not tokens.HasField("access_token_expire_time"):
        return float("inf")
    return tokens.access_token_expire_time.ToDatetime(tzinfo=dt.UTC).timestamp()


class Session(Credentials):
    """A user's login: an access token kept fresh with the refresh token.

    Make one with :meth:`login` (email and password) or :meth:`resume` (a stored
    token pair, e.g. a CLI's). Use it as ``token=`` of any client or watcher.

    Args:
        target: TenantService's address, or pass ``channel``.
        tokens: the current token pair.
        organization: the organization the tokens are scoped to ("" for none).
        channel: an existing ``grpc.aio`` channel (not closed by :meth:`close`).
        refresh_margin: refresh when less than this many seconds of the access token
            remain (at most half its lifetime).
        on_refresh: called with each new token pair (to store it: the old refresh
            token no longer works).
        clock: the time source (seconds since the epoch), for tests.
        timeout: the deadline of each call.
        attempts: tries of the calls safe to repeat (never of a refresh: a refresh
            token works once, and a response lost on the way would burn it).
    """

    def __init__(
        self,
        target: str | None,
        tokens: TokenPair,
        *,
        organization: str = "",
        channel: grpc.aio.Channel | None = None,
        refresh_margin: float = 60.0,
        on_refresh: Callable[[TokenPair], None] | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        attempts: int = 8,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give either target or channel")
        self._target = target
        self._channel = channel
        self._own_channel = channel is None
        self._tokens = tokens
        self._organization = organization
        self._margin = refresh_margin
        self._on_refresh = on_refresh
        self._clock = clock
        self._obtained_at = clock()
        self._timeout, self._attempts = timeout, attempts
        self._public = CallPath(None, timeout=timeout, attempts=attempts)
        self._private = CallPath(self, timeout=timeout, attempts=attempts)
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self.refreshes = 0  # how many times the access token was refreshed

    @classmethod
    async def login(
        cls,
        target: str | None,
        email: str,
        password: str,
        *,
        organization: str = "",
        channel: grpc.aio.Channel | None = None,
        **options: Any,
    ) -> Session:
        """Logs in (``Login``) and returns the session.

        Raises:
            Unauthenticated: wrong email or password.
            PermissionDenied: not a member of ``organization``.
        """
        session = cls(
            target,
            TokenPair(),
            organization=organization,
            channel=channel,
            **options,
        )
        request = tenant_pb2.LoginRequest(email=email, password=password, organization=organization)
        try:
            # Retried on UNAVAILABLE: a login whose answer was lost only leaves an
            # unused token pair behind.
            reply = await session._public.unary(session._stub().Login, request, idempotent=True)
        except BaseException:
            await session._close_channel()
            raise
        session._set(reply.tokens)
        return session

    @classmethod
    def resume(cls, target: str | None, tokens: TokenPair, **options: Any) -> Session:
        """A session from a stored token pair (refreshed at first use if need be)."""
        return cls(target, tokens, **options)

    # -- the token ----------------------------------------------------------------

    @property
    def tokens(self) -> TokenPair:
        """The current token pair."""
        return self._tokens

    @property
    def organization(self) -> str:
        """The organization the tokens are scoped to ("" for none)."""
        return self._organization

    def _due(self) -> bool:
        expiry = _expiry(self._tokens)
        margin = min(self._margin, max(0.0, (expiry - self._obtained_at) / 2))
        return self._clock() >= expiry - margin

    async def token(self) -> str:
        """The access token, refreshed first when it expires within the margin.

        Raises:
            Unauthenticated: the session is closed, or its refresh token was refused
                (expired, revoked, or used elsewhere): log in again.
        """
        if self._closed:
            raise Unauthenticated("the session is closed")
        if self._due():
            current = self._tokens.access_token
            await self._refresh(stale=current)
        return self._tokens.access_token

    async def rejected(self, token: str, reason: str) -> bool:
        if self._closed or reason != "TOKEN_EXPIRED":
            return False  # a revoked token: only a new login helps
        await self._refresh(stale=token)
        return True

    async def switch(self, organization: str) -> None:
        """Scopes the tokens to ``organization`` ("" for none), by a refresh.

        Raises:
            PermissionDenied: not a member of ``organization``.
        """
        await self._refresh(stale=self._tokens.access_token, organization=organization)

    async def _refresh(self, *, stale: str, organization: str | None = None) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # Whoever held the lock before us may have refreshed already.
            if self._tokens.access_token != stale:
                return
            target = self._organization if organization is None else organization
            request = tenant_pb2.RefreshTokenRequest(
                refresh_token=self._tokens.refresh_token, organization=target
            )
            # Never retried: a refresh token works once; a retry of a refresh whose
            # answer was lost would present a spent token, and TenantService takes
            # that for a theft and revokes the whole session.
            reply = await self._public.unary(self._stub().RefreshToken, request, idempotent=False)
            self._organization = target
            self._set(reply.tokens)
            self.refreshes += 1

    def _set(self, tokens: TokenPair) -> None:
        self._tokens = tokens
        self._obtained_at = self._clock()
        if self._on_refresh is not None:
            self._on_refresh(tokens)

    # -- lifecycle ----------------------------------------------------------------

    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target or "")
        return tenant_service_pb2_grpc.TenantServiceStub(self._channel)

    async def close(self, *, logout: bool = True) -> None:
        """Logs out (revokes the access and refresh tokens) and closes the channel.
        A session already refused by the server closes without error.

        Args:
            logout: False to keep the tokens valid (stored for a later
                :meth:`resume`, as a CLI does) and only close the channel.
        """
        if self._closed:
            return
        if not logout:
            self._closed = True
            await self._close_channel()
            return
        try:
            # Refresh first if due, then log out with that pair's own access token and
            # no refresh on the way: a refresh after the request is built would leave it
            # holding a spent refresh token, which the server takes for reuse (theft).
            access = await self.token()
            request = tenant_pb2.LogoutRequest(refresh_token=self._tokens.refresh_token)
            fixed = CallPath(access, timeout=self._timeout, attempts=self._attempts)
            await fixed.unary(self._stub().Logout, request, idempotent=True)
        except Unauthenticated:
            pass  # nothing left to revoke
        finally:
            self._closed = True
            await self._close_channel()

    async def _close_channel(self) -> None:
        if self._own_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncSession(Credentials):
    """A :class:`Session` for code without an event loop: the session runs on a
    background thread. Usable as ``token=`` of any client or watcher, sync or asyncio
    (a call from another loop waits for the session's thread without blocking).

    Args:
        session_factory: makes the session, on the background thread; usually given
            by :meth:`login` or :meth:`resume`.
    """

    def __init__(self, session_factory: Callable[[], Any]) -> None:
        self._loop = LoopThread("agentready-session")
        try:
            self.session: Session = self._loop.run(session_factory())
        except BaseException:
            self._loop.stop()
            raise

    @classmethod
    def login(
        cls, target: str, email: str, password: str, *, organization: str = "", **options: Any
    ) -> SyncSession:
        """Logs in (see :meth:`Session.login`)."""
        return cls(
            lambda: Session.login(target, email, password, organization=organization, **options)
        )

    @classmethod
    def resume(cls, target: str, tokens: TokenPair, **options: Any) -> SyncSession:
        """A session from a stored token pair (see :meth:`Session.resume`)."""

        async def make() -> Session:
            return Session.resume(target, tokens, **options)

        return cls(make)

    @property
    def tokens(self) -> TokenPair:
        """The current token pair."""
        return self.session.tokens

    @property
    def organization(self) -> str:
        """The organization the tokens are scoped to."""
        return self.session.organization

    def current(self) -> str:
        """The access token, refreshed first when due (blocking)."""
        return self._loop.run(self.session.token())

    def switch(self, organization: str) -> None:
        """Scopes the tokens to ``organization`` (see :meth:`Session.switch`)."""
        self._loop.run(self.session.switch(organization))

    async def token(self) -> str:
        return await self._loop.run_async(self.session.token())

    async def rejected(self, token: str, reason: str) -> bool:
        return await self._loop.run_async(self.session.rejected(token, reason))

    def close(self) -> None:
        """Logs out and stops the background thread."""
        if self._loop.stopped:
            return
        try:
            self._loop.run(self.session.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
