"""Users and authentication: sign-up, sign-in, token rotation, sign-out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac

import asyncpg

from servicekit.auth import ROLE_SCOPES, Principal
from servicekit.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated
from servicekit.requests import RequestKey
from servicekit.revocation import jti_key
from tenant_service.adapters import postgres as pg
from tenant_service.domain.model import User
from tenant_service.service_layer.tokens import (
    Pair,
    Passwords,
    Revoker,
    SigningKey,
    Throttle,
    TokenPolicy,
    access_revocations,
    mint_pair,
    split_refresh_token,
    unauthenticated_refresh,
)


@dataclasses.dataclass(frozen=True)
class _Reused:
    """A spent refresh token came back: its family is revoked, the call refused."""

    revoked: dict[str, float]


class Users:
    """The user and token use cases."""

    def __init__(
        self,
        store: pg.TenantStore,
        *,
        passwords: Passwords,
        throttle: Throttle,
        key: SigningKey,
        policy: TokenPolicy,
        revoker: Revoker,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._throttle = throttle
        self._key = key
        self._policy = policy
        self._revoker = revoker

    async def create(
        self, *, email: str, display_name: str, password: str, request: RequestKey | None
    ) -> User:
        """Signs a user up.

        Raises:
            AlreadyExists: the email is taken.
        """
        if request is not None:
            async with self._store.plain() as conn:
                found = await pg.find_request(conn, None, request.request_id)
                if found is not None:
                    request.confirm_retry(found[0], found[1])
                    user = await pg.user_by_id(conn, found[2]["user_id"])
                    if user is not None:
                        return user
        password_hash = await self._passwords.hash(password)
        async with self._store.plain() as conn:
            user = await pg.insert_user(
                conn, email=email, display_name=display_name, password_hash=password_hash
            )
            if user is None:
                raise AlreadyExists("User", email, f"a user with email {email!r} exists")
            if request is not None:
                await pg.save_request(
                    conn,
                    None,
                    request.request_id,
                    request.method,
                    request.fingerprint,
                    {"user_id": user.id},
                )
        return user

    async def get(self, caller: str, user_id: str) -> User:
        """A user the caller may see: itself, or someone sharing an organization.

        Raises:
            NotFound: no such user, or one the caller may not see.
        """
        target = caller if user_id == "me" else user_id
        async with self._store.plain() as conn:
            user = await pg.user_by_id(conn, target)
            if user is None or (
                target != caller and not await pg.shares_organization(conn, caller, target)
            ):
                raise NotFound("User", user_id)
        return user

    async def login(
        self, *, email: str, password: str, organization: str, client: str
    ) -> tuple[User, Pair]:
        """Exchanges credentials for a token pair.

        Raises:
            ResourceExhausted: too many recent failures for the email or the client.
            Unauthenticated: unknown email or wrong password (one answer for both).
            PermissionDenied: not a member of ``organization``, or it is being deleted.
        """
        await self._throttle.check(email, client)
        async with self._store.plain() as conn:
            found = await pg.credentials(conn, email)
        ok, rehash = await self._passwords.verify(found[1] if found else None, password)
        if found is None or not ok:
            await self._throttle.failed(email, client)
            raise Unauthenticated("wrong email or password", reason="INVALID_CREDENTIALS")
        user = found[0]
        await self._throttle.succeeded(email)
        if rehash:
            new_hash = await self._passwords.hash(password)
            async with self._store.plain() as conn:
                await pg.set_password_hash(conn, user.id, new_hash)
        async with self._store.plain() as conn:
            role = await self._role_in(conn, organization, user.id) if organization else None
            pair = await mint_pair(
                conn,
                self._key,
                self._policy,
                user_id=user.id,
                organization=organization or None,
                role=role,
                scopes=ROLE_SCOPES[role] if role else frozenset(),
            )
        return user, pair

    @staticmethod
    async def _role_in(conn: asyncpg.Connection, organization: str, user_id: str) -> str:
        state = await pg.organization_state(conn, organization)
        member = await pg.load_member(conn, organization, user_id) if state else None
        if member is None:
            raise PermissionDenied(
                f"you are not a member of organization {organization!r}",
                reason="NOT_A_MEMBER",
                metadata={"organization": organization},
            )
        if state is not None and state.removing:
            raise PermissionDenied(
                f"organization {organization!r} is being deleted",
                reason="ORGANIZATION_DELETED",
                metadata={"organization": organization},
            )
        return member.role.value

    async def refresh(self, *, refresh_token: str, organization: str) -> Pair:
        """Rotates a refresh token; a reused one revokes its whole family.

        Raises:
            Unauthenticated: unknown, expired, revoked or reused refresh token.
            PermissionDenied: not a member of the organization asked for.
        """
        parsed = split_refresh_token(refresh_token)
        if parsed is None:
            raise unauthenticated_refresh()
        token_id, secret_hash = parsed
        outcome: Pair | _Reused
        async with self._store.plain() as conn:
            row = await pg.refresh_row(conn, token_id)
            if (
                row is None
                or not hmac.compare_digest(bytes(row["secret_hash"]), secret_hash)
                or row["revoked_at"] is not None
                or row["expires_at"] <= dt.datetime.now(dt.UTC)
            ):
                raise unauthenticated_refresh()
            if row["used_at"] is not None:
                # Theft detection: the rightful holder and a thief both hold this
                # token; one of them already rotated it. End the whole family.
                revoked = access_revocations(await pg.revoke_family(conn, str(row["family"])))
                await self._revoker.record(conn, revoked)
                outcome = _Reused(revoked)
            else:
                await pg.mark_refresh_used(conn, token_id)
                user_id = str(row["user_id"])
                scope = organization or row["organization"]
                role = await self._role_in(conn, scope, user_id) if scope else None
                outcome = await mint_pair(
                    conn,
                    self._key,
                    self._policy,
                    user_id=user_id,
                    organization=scope,
                    role=role,
                    scopes=ROLE_SCOPES[role] if role else frozenset(),
                    family=str(row["family"]),
                )
        if isinstance(outcome, _Reused):
            await self._revoker.publish(outcome.revoked)
            raise Unauthenticated(
                "this refresh token was already used: every token of its sign-in is now "
                "revoked; sign in again",
                reason="REFRESH_TOKEN_REUSED",
            )
        return outcome

    async def logout(self, principal: Principal, refresh_token: str) -> None:
        """Revokes the calling access token and, if given, the caller's refresh token."""
        entries = {jti_key(principal.token_id): principal.expires_at.timestamp()}
        parsed = split_refresh_token(refresh_token) if refresh_token else None
        async with self._store.plain() as conn:
            if parsed is not None:
                row = await pg.refresh_row(conn, parsed[0])
                if (
                    row is not None
                    and str(row["user_id"]) == principal.subject
                    and hmac.compare_digest(bytes(row["secret_hash"]), parsed[1])
                ):
                    entries.update(access_revocations(await pg.revoke_refresh(conn, parsed[0])))
            await self._revoker.record(conn, entries)
        await self._revoker.publish(entries)
