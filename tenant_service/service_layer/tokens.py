"""Signing keys, token pairs, passwords, sign-in throttling and revocation.

* :class:`SigningKey` holds the private key TenantService signs with, re-read when its
  file changes, so a rotated key signs new tokens without a restart (the verifiers pick
  the new ``kid`` from the JWKS on their own).
* :class:`Passwords` hashes with argon2id off the event loop and verifies an unknown
  email against a dummy hash, so both failures cost the same time.
* :class:`Throttle` counts failed sign-ins per email and per client address in Redis
  (one round trip), in memory while Redis is down.
* :class:`Revoker` records revocations in PostgreSQL, then publishes them to Redis for
  every service's :class:`~servicekit.revocation.RevocationList`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import argon2
import asyncpg
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from servicekit import revocation
from servicekit.auth import TokenSigner
from servicekit.errors import ResourceExhausted, Unauthenticated
from tenant_service.adapters import postgres as pg

log = logging.getLogger(__name__)

THROTTLE_FALLBACKS = Counter(
    "agentready_login_throttle_fallback_total",
    "Sign-in failure counts kept in memory because Redis did not answer.",
)
REVOCATION_PUBLISH_ERRORS = Counter(
    "agentready_revocation_publish_errors_total",
    "Revocations recorded in PostgreSQL whose publication to Redis failed (re-published later).",
)


class SigningKey:
    """The private key tokens are signed with, from a PEM file re-read when it changes
    (checked at every signature: a ``stat``, cheap beside the signature itself)."""

    def __init__(self, path: Path, *, issuer: str, audience: str) -> None:
        self._path = path
        self._issuer = issuer
        self._audience = audience
        self._version: tuple[int, int, int] = (0, 0, 0)
        self._signer = self._load()

    def _stamp(self) -> tuple[int, int, int]:
        stat = self._path.stat()
        return stat.st_mtime_ns, stat.st_ino, stat.st_size

    def _load(self) -> TokenSigner:
        self._version = self._stamp()
        return TokenSigner(self._path.read_bytes(), issuer=self._issuer, audience=self._audience)

    @property
    def signer(self) -> TokenSigner:
        """The current signer."""
        try:
            if self._stamp() != self._version:
                self._signer = self._load()
                log.info("signing key reloaded", extra={"kid": self._signer.jwk["kid"]})
        except (OSError, ValueError) as exc:
            log.error("cannot reload the signing key, keeping the old one: %s", exc)
        return self._signer


class ServiceToken:
    """TenantService's own platform token for its sagas (role "service", no
    organization), renewed at half its life."""

    SUBJECT = "service:tenant"
    SCOPES = frozenset({"provisioner:read", "provisioner:write", "config:read", "config:purge"})
    TTL = dt.timedelta(minutes=15)

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        now = time.time()
        if now >= self._renew_at:
            self._token, _ = self._key.signer.mint(
                subject=self.SUBJECT,
                organization=None,
                role="service",
                scopes=self.SCOPES,
                ttl=self.TTL,
            )
            self._renew_at = now + self.TTL.total_seconds() / 2
        return self._token


@dataclasses.dataclass(frozen=True)
class TokenPolicy:
    """Lifetimes of minted tokens."""

    access_ttl: dt.timedelta = dt.timedelta(minutes=15)
    refresh_ttl: dt.timedelta = dt.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class Pair:
    """A minted access and refresh token."""

    access_token: str
    refresh_token: str
    access_expires_at: dt.datetime
    refresh_expires_at: dt.datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def split_refresh_token(token: str) -> tuple[str, bytes] | None:
    """(token id, SHA-256 of the secret) of a well-formed refresh token, else None."""
    token_id, dot, secret = token.partition(".")
    if not dot or not secret or len(token) > 200:
        return None
    try:
        parsed = str(uuid.UUID(token_id))
    except ValueError:
        return None
    return parsed, hashlib.sha256(secret.encode()).digest()


async def mint_pair(
    conn: asyncpg.Connection,
    key: SigningKey,
    policy: TokenPolicy,
    *,
    user_id: str,
    organization: str | None,
    role: str | None,
    scopes: frozenset[str],
    family: str | None = None,
) -> Pair:
    """Mints an access token and a refresh token and records them (in ``conn``'s
    transaction). A new ``family`` starts at sign-in; rotation keeps it."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    access, claims = key.signer.mint(
        subject=user_id,
        organization=organization,
        role=role,
        scopes=scopes,
        ttl=policy.access_ttl,
        now=now,
    )
    token_id = str(uuid.uuid4())
    secret = _b64(secrets.token_bytes(32))
    refresh_expires = now + policy.refresh_ttl
    await pg.insert_refresh(
        conn,
        token_id=token_id,
        family=family or token_id,
        user_id=user_id,
        organization=organization,
        secret_hash=hashlib.sha256(secret.encode()).digest(),
        expires_at=refresh_expires,
        access_jti=claims["jti"],
        access_expires_at=now + policy.access_ttl,
    )
    return Pair(
        access_token=access,
        refresh_token=f"{token_id}.{secret}",
        access_expires_at=now + policy.access_ttl,
        refresh_expires_at=refresh_expires,
    )


class Passwords:
    """argon2id hashing, off the event loop."""

    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when the email is unknown: the same work as a real check.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        """The PHC string of ``password``."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs rehash); an unknown user (``stored`` None) never matches but
        costs the same."""

        def check() -> tuple[bool, bool]:
            try:
                self._hasher.verify(stored or self._dummy, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False, False
            return stored is not None, self._hasher.check_needs_rehash(stored or self._dummy)

        return await asyncio.to_thread(check)


class Throttle:
    """Failed sign-ins per email and per client address, over a window.

    Args:
        redis: counters live there (``INCR`` + ``EXPIRE`` in one round trip).
        max_per_email: failures per email in a window before refusing.
        max_per_client: failures per client address in a window before refusing.
        window: seconds a counter lives after its first failure.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        max_per_email: int,
        max_per_client: int,
        window: float,
        prefix: str = "agentready",
    ) -> None:
        self._redis = redis
        self._limits = {"email": max_per_email, "client": max_per_client}
        self._window = window
        self._prefix = prefix
        self._local: dict[str, tuple[int, float]] = {}

    def _keys(self, email: str, client: str) -> dict[str, str]:
        digest = hashlib.sha256(email.encode()).hexdigest()[:32]
        return {
            "email": f"{self._prefix}:login-failures:email:{digest}",
            "client": f"{self._prefix}:login-failures:client:{client}",
        }

    async def check(self, email: str, client: str) -> None:
        """Refuses a sign-in while either counter is at its limit.

        Raises:
            ResourceExhausted: reason TOO_MANY_LOGIN_FAILURES, with the wait.
        """
        keys = self._keys(email, client)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys.values():
                    pipe.get(key)
                    pipe.pttl(key)
                replies = await pipe.execute()
            counts = {
                kind: (int(replies[2 * i] or 0), max(0, int(replies[2 * i + 1])) / 1000)
                for i, kind in enumerate(keys)
            }
        except (RedisError, OSError):
            THROTTLE_FALLBACKS.inc()
            now = time.monotonic()
            counts = {}
            for kind, key in keys.items():
                n, until = self._local.get(key, (0, now))
                counts[kind] = (n, max(0.0, until - now)) if until > now else (0, 0.0)
        for kind, (n, ttl) in counts.items():
            if n >= self._limits[kind]:
                raise ResourceExhausted(
                    "too many failed sign-ins; try again later",
                    reason="TOO_MANY_LOGIN_FAILURES",
                    retry_after_seconds=max(ttl, 1.0),
                    metadata={"limit": kind},
                )

    async def failed(self, email: str, client: str) -> None:
        """Counts one failure against both the email and the client address."""
        keys = self._keys(email, client)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in keys.values():
                    # The window starts at the first failure (SET NX, not EXPIRE NX,
                    # which Redis before 7 lacks).
                    pipe.set(key, 0, ex=max(1, int(self._window)), nx=True)
                    pipe.incr(key)
                await pipe.execute()
        except (RedisError, OSError):
            THROTTLE_FALLBACKS.inc()
            now = time.monotonic()
            for key in keys.values():
                n, until = self._local.get(key, (0, now + self._window))
                if until <= now:
                    n, until = 0, now + self._window
                self._local[key] = (n + 1, until)

    async def succeeded(self, email: str) -> None:
        """A correct password clears the email's counter (not the client's)."""
        key = self._keys(email, "")["email"]
        self._local.pop(key, None)
        try:
            await self._redis.delete(key)
        except (RedisError, OSError):
            THROTTLE_FALLBACKS.inc()


class Revoker:
    """Records revocations and carries them to every service."""

    def __init__(
        self,
        redis: aioredis.Redis,
        local: revocation.RevocationList,
        *,
        prefix: str = "agentready",
    ) -> None:
        self._redis = redis
        self._local = local
        self._prefix = prefix

    @staticmethod
    async def record(conn: asyncpg.Connection, entries: Mapping[str, float]) -> None:
        """Stores revocations in the caller's transaction (call :meth:`publish` after
        it commits)."""
        await pg.record_revocations(conn, entries)

    async def publish(self, entries: Mapping[str, float]) -> None:
        """Applies revocations here at once and publishes them to Redis; a failure is
        logged and counted (the saga loop re-publishes what is in force)."""
        if not entries:
            return
        self._local.add_local(entries)
        try:
            await revocation.publish(self._redis, entries, prefix=self._prefix)
        except (RedisError, OSError) as exc:
            REVOCATION_PUBLISH_ERRORS.inc()
            log.warning("cannot publish %d revocations to Redis: %s", len(entries), exc)

    async def republish(self, pool: asyncpg.Pool) -> None:
        """Writes every revocation in force to Redis's hash again and prunes lapsed
        ones (periodic: repairs a lost publication or a Redis that lost its data)."""
        async with pool.acquire() as conn:
            lapsed = await pg.prune_revocations(conn)
            in_force = await pg.revocations_in_force(conn)
        await revocation.prune(self._redis, lapsed, prefix=self._prefix)
        if in_force:
            try:
                await self._redis.hset(
                    f"{self._prefix}:revocations",
                    mapping={k: repr(v) for k, v in in_force.items()},
                )
            except (RedisError, OSError) as exc:
                REVOCATION_PUBLISH_ERRORS.inc()
                log.warning("cannot re-publish revocations to Redis: %s", exc)


def access_revocations(tokens: list[tuple[str, float]]) -> dict[str, float]:
    """Revocation entries for live access tokens (jti, expiry)."""
    return {revocation.jti_key(jti): until for jti, until in tokens}


def unauthenticated_refresh() -> Unauthenticated:
    """The one answer for every unusable refresh token (no hint which check failed)."""
    return Unauthenticated(
        "the refresh token is unknown, expired or revoked; sign in again",
        reason="REFRESH_TOKEN_INVALID",
    )
