"""Inside an organization: members and roles, projects, notes, service-account keys.

Every use case runs in one organization transaction (row-level security sees that
organization only), refuses work in an organization being deleted, and records its
request id (AIP-155) in the same transaction, so a retry answers without acting twice.
Creating a member, project, note or key checks the organization's limit under a lock
on the organization's row, so concurrent creations cannot overshoot it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from servicekit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    ResourceExhausted,
)
from servicekit.requests import RequestKey
from servicekit.revocation import jti_key
from tenant_service.adapters import postgres as pg
from tenant_service.domain.model import (
    Limits,
    Member,
    Note,
    Project,
    Role,
    ServiceAccountKey,
    matches_etag,
)
from tenant_service.domain.permissions import Caller, require_role
from tenant_service.service_layer.organizations import check_usable
from tenant_service.service_layer.tokens import Revoker, SigningKey, access_revocations

LimitsFor = Callable[[str], Limits]


class Tenancy:
    """Use cases inside one organization."""

    def __init__(
        self,
        store: pg.TenantStore,
        revoker: Revoker,
        key: SigningKey,
        limits: LimitsFor,
        owners_changed: Callable[[str], None] = lambda _: None,
        grace: float = 1.0,
    ) -> None:
        """``owners_changed(organization)`` is called after a change to the set of
        owners commits (the saga grants the new owners their namespace); the step is
        also due ``grace`` seconds later for the saga loop, should that call fail."""
        self._store = store
        self._revoker = revoker
        self._key = key
        self._limits = limits
        self._owners_changed = owners_changed
        self._grace = grace

    # -- shared steps -------------------------------------------------------------------

    @staticmethod
    async def _usable(conn: asyncpg.Connection, organization: str, *, lock: bool) -> None:
        org = await pg.load_organization(conn, organization, for_update=lock)
        if org is None:
            raise NotFound("Organization", organization, metadata={"organization": organization})
        check_usable(org)

    @staticmethod
    async def _replayed(
        conn: asyncpg.Connection, organization: str, request: RequestKey | None
    ) -> dict[str, Any] | None:
        if request is None:
            return None
        found = await pg.find_request(conn, organization, request.request_id)
        if found is None:
            return None
        request.confirm_retry(found[0], found[1])
        return found[2]

    @staticmethod
    async def _remember(
        conn: asyncpg.Connection,
        organization: str,
        request: RequestKey | None,
        answer: dict[str, Any],
    ) -> None:
        if request is not None:
            await pg.save_request(
                conn, organization, request.request_id, request.method, request.fingerprint, answer
            )

    async def _check_limit(
        self, conn: asyncpg.Connection, organization: str, table: str, limit: int
    ) -> None:
        used = await pg.count(conn, table, organization)
        if used >= limit:
            raise ResourceExhausted(
                f"organization {organization!r} has {used} {table.replace('_', ' ')}, its "
                f"limit; delete some or ask the platform operator to raise it",
                reason="LIMIT_EXCEEDED",
                retry_after_seconds=None,
                metadata={
                    "organization": organization,
                    "limit": str(limit),
                    "used": str(used),
                    "resource": table,
                },
            )

    # -- members ------------------------------------------------------------------------

    async def add_member(
        self,
        organization: str,
        caller: Caller,
        *,
        user_id: str,
        email: str,
        role: Role,
        request: RequestKey | None,
    ) -> Member:
        """Adds an existing user.

        Raises:
            NotFound (no such user), AlreadyExists, PermissionDenied (owner grant by a
            non-owner), ResourceExhausted (member limit).
        """
        if role is Role.OWNER:
            require_role(caller, Role.OWNER)
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=True)
            answer = await self._replayed(conn, organization, request)
            if answer is not None:
                found = await pg.load_member(conn, organization, answer["user_id"])
                if found is None:
                    raise NotFound("Member", answer["user_id"])
                return found
            user = (
                await pg.user_by_id(conn, user_id)
                if user_id
                else await pg.user_by_email(conn, email)
            )
            if not user:
                raise NotFound("User", user_id or email, f"no user {user_id or email!r}")
            await self._check_limit(
                conn, organization, "members", self._limits(organization).members
            )
            member = await pg.insert_member(conn, organization, user.id, role)
            if member is None:
                raise AlreadyExists("Member", user.id, f"{user.email} is already a member")
            if role is Role.OWNER:
                await pg.owners_changed(conn, organization, self._grace)
            await self._remember(conn, organization, request, {"user_id": user.id})
        if role is Role.OWNER:
            self._owners_changed(organization)
        return member

    async def get_member(self, organization: str, user_id: str) -> Member:
        """One member.

        Raises:
            NotFound.
        """
        async with self._store.org(organization, readonly=True) as conn:
            member = await pg.load_member(conn, organization, user_id)
        if member is None:
            raise NotFound("Member", user_id, metadata={"organization": organization})
        return member

    async def list_members(self, organization: str, *, after: str, limit: int) -> list[Member]:
        """Members by email."""
        async with self._store.org(organization, readonly=True) as conn:
            return await pg.list_members(conn, organization, after=after, limit=limit)

    async def set_role(
        self, organization: str, caller: Caller, *, user_id: str, role: Role, etag: str
    ) -> Member:
        """Changes a member's role; the member's tokens for the organization are revoked
        (a refresh gives one with the new role).

        Raises:
            NotFound, Aborted (etag), PermissionDenied (owner rules),
            FailedPrecondition (it would leave no owner).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=False)
            owners = await pg.owners(conn, organization)
            member = await pg.load_member(conn, organization, user_id, for_update=True)
            if member is None:
                raise NotFound("Member", user_id, metadata={"organization": organization})
            _check_etag("member", member.version, etag)
            if member.role is role:
                return member
            if Role.OWNER in (role, member.role):
                require_role(caller, Role.OWNER)
            if member.role is Role.OWNER and len(owners) <= 1:
                raise _last_owner(organization)
            updated = await pg.set_member_role(conn, organization, user_id, role)
            revoked = access_revocations(await pg.revoke_member_tokens(conn, organization, user_id))
            await self._revoker.record(conn, revoked)
            owners_changed = Role.OWNER in (role, member.role)
            if owners_changed:
                await pg.owners_changed(conn, organization, self._grace)
        await self._revoker.publish(revoked)
        if owners_changed:
            self._owners_changed(organization)
        return updated

    async def remove_member(
        self,
        organization: str,
        caller: Caller,
        *,
        user_id: str,
        etag: str,
        request: RequestKey | None,
    ) -> None:
        """Removes a member (or the caller itself) and revokes its tokens for the
        organization at once, everywhere.

        Raises:
            NotFound, Aborted (etag), PermissionDenied, FailedPrecondition (last owner).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=False)
            if await self._replayed(conn, organization, request) is not None:
                return
            owners = await pg.owners(conn, organization)
            member = await pg.load_member(conn, organization, user_id, for_update=True)
            if member is None:
                raise NotFound("Member", user_id, metadata={"organization": organization})
            _check_etag("member", member.version, etag)
            leaving = caller.user and caller.subject == user_id
            if not leaving and member.role is Role.OWNER:
                require_role(caller, Role.OWNER)
            if member.role is Role.OWNER and len(owners) <= 1:
                raise _last_owner(organization)
            await pg.delete_member(conn, organization, user_id)
            revoked = access_revocations(await pg.revoke_member_tokens(conn, organization, user_id))
            await self._revoker.record(conn, revoked)
            if member.role is Role.OWNER:
                await pg.owners_changed(conn, organization, self._grace)
            await self._remember(conn, organization, request, {})
        await self._revoker.publish(revoked)
        if member.role is Role.OWNER:
            self._owners_changed(organization)

    # -- projects -----------------------------------------------------------------------

    async def create_project(
        self,
        organization: str,
        *,
        project_id: str,
        display_name: str,
        description: str,
        request: RequestKey | None,
    ) -> Project:
        """Creates a project.

        Raises:
            AlreadyExists, ResourceExhausted (project limit).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=True)
            answer = await self._replayed(conn, organization, request)
            if answer is not None:
                return await self._project(conn, organization, answer["id"])
            limit = self._limits(organization).projects
            await self._check_limit(conn, organization, "projects", limit)
            project = await pg.insert_project(
                conn, organization, project_id, display_name or project_id, description
            )
            if project is None:
                raise AlreadyExists("Project", project_id, metadata={"organization": organization})
            await self._remember(conn, organization, request, {"id": project_id})
        return project

    @staticmethod
    async def _project(
        conn: asyncpg.Connection, organization: str, project_id: str, *, lock: bool = False
    ) -> Project:
        project = await pg.load_project(conn, organization, project_id, for_update=lock)
        if project is None:
            raise NotFound("Project", project_id, metadata={"organization": organization})
        return project

    async def get_project(self, organization: str, project_id: str) -> Project:
        """One project.

        Raises:
            NotFound.
        """
        async with self._store.org(organization, readonly=True) as conn:
            return await self._project(conn, organization, project_id)

    async def list_projects(self, organization: str, *, after: str, limit: int) -> list[Project]:
        """Projects by id."""
        async with self._store.org(organization, readonly=True) as conn:
            return await pg.list_projects(conn, organization, after=after, limit=limit)

    async def update_project(
        self,
        organization: str,
        project_id: str,
        *,
        etag: str,
        display_name: str | None,
        description: str | None,
    ) -> Project:
        """Changes a project's display name and/or description.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=False)
            project = await self._project(conn, organization, project_id, lock=True)
            _check_etag("project", project.version, etag)
            name = project.display_name if display_name is None else (display_name or project_id)
            text = project.description if description is None else description
            if (name, text) == (project.display_name, project.description):
                return project
            return await pg.update_project(conn, organization, project_id, name, text)

    async def delete_project(
        self, organization: str, project_id: str, *, etag: str, request: RequestKey | None
    ) -> None:
        """Deletes a project and its notes.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=False)
            if await self._replayed(conn, organization, request) is not None:
                return
            project = await self._project(conn, organization, project_id, lock=True)
            _check_etag("project", project.version, etag)
            await pg.delete_project(conn, organization, project_id)
            await self._remember(conn, organization, request, {})

    # -- notes --------------------------------------------------------------------------

    async def create_note(
        self,
        organization: str,
        project_id: str,
        *,
        title: str,
        body: str,
        author: str,
        request: RequestKey | None,
    ) -> Note:
        """Creates a note in a project.

        Raises:
            NotFound (project), ResourceExhausted (note limit).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=True)
            answer = await self._replayed(conn, organization, request)
            if answer is not None:
                return await self._note(conn, organization, answer["project"], answer["id"])
            await self._project(conn, organization, project_id)
            await self._check_limit(conn, organization, "notes", self._limits(organization).notes)
            note = await pg.insert_note(conn, organization, project_id, title, body, author)
            await self._remember(
                conn, organization, request, {"project": project_id, "id": note.id}
            )
        return note

    @staticmethod
    async def _note(
        conn: asyncpg.Connection,
        organization: str,
        project_id: str,
        note_id: str,
        *,
        lock: bool = False,
    ) -> Note:
        note = await pg.load_note(conn, organization, project_id, note_id, for_update=lock)
        if note is None:
            raise NotFound("Note", note_id, metadata={"organization": organization})
        return note

    async def get_note(self, organization: str, project_id: str, note_id: str) -> Note:
        """One note.

        Raises:
            NotFound.
        """
        async with self._store.org(organization, readonly=True) as conn:
            return await self._note(conn, organization, project_id, note_id)

    async def list_notes(
        self,
        organization: str,
        *,
        project_id: str,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Note]:
        """Notes, newest first, of one project or all.

        Raises:
            NotFound: the project does not exist.
        """
        async with self._store.org(organization, readonly=True) as conn:
            if project_id:
                await self._project(conn, organization, project_id)
            return await pg.list_notes(
                conn, organization, project=project_id, after=after, limit=limit
            )

    async def update_note(
        self,
        organization: str,
        project_id: str,
        note_id: str,
        *,
        etag: str,
        title: str | None,
        body: str | None,
    ) -> Note:
        """Changes a note's title and/or body.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=False)
            note = await self._note(conn, organization, project_id, note_id, lock=True)
            _check_etag("note", note.version, etag)
            new_title = note.title if title is None else title
            new_body = note.body if body is None else body
            if (new_title, new_body) == (note.title, note.body):
                return note
            return await pg.update_note(conn, organization, note_id, new_title, new_body)

    async def delete_note(
        self,
        organization: str,
        project_id: str,
        note_id: str,
        *,
        etag: str,
        request: RequestKey | None,
    ) -> None:
        """Deletes a note.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=False)
            if await self._replayed(conn, organization, request) is not None:
                return
            note = await self._note(conn, organization, project_id, note_id, lock=True)
            _check_etag("note", note.version, etag)
            await pg.delete_note(conn, organization, note_id)
            await self._remember(conn, organization, request, {})

    # -- service-account keys -----------------------------------------------------------

    def _key_token(self, key: ServiceAccountKey) -> str:
        token, _ = self._key.signer.mint(
            subject=f"sa:{key.id}",
            organization=key.organization,
            role=None,
            scopes=key.scopes,
            ttl=key.expires_at - key.created_at,
            now=key.created_at,
            token_id=key.id,
        )
        return token

    async def create_key(
        self,
        organization: str,
        caller: Caller,
        *,
        display_name: str,
        scopes: tuple[str, ...],
        ttl: dt.timedelta,
        request: RequestKey | None,
    ) -> tuple[ServiceAccountKey, str]:
        """Creates a key; returns it and its token (the only time the token is shown:
        only its hash is stored; a retry with the same request id re-signs the same
        claims, which EdDSA turns into the same token).

        Raises:
            ResourceExhausted (key limit).
        """
        async with self._store.org(organization) as conn:
            await self._usable(conn, organization, lock=True)
            answer = await self._replayed(conn, organization, request)
            if answer is not None:
                key = await pg.load_key(conn, organization, answer["id"])
                if key is None:
                    raise NotFound("ServiceAccountKey", answer["id"])
                return key, self._key_token(key)
            limit = self._limits(organization).service_account_keys
            await self._check_limit(conn, organization, "service_account_keys", limit)
            created = dt.datetime.now(dt.UTC).replace(microsecond=0)
            draft = ServiceAccountKey(
                organization=organization,
                id=str(uuid.uuid4()),
                display_name=display_name,
                scopes=tuple(sorted(set(scopes))),
                expires_at=created + ttl,
                created_at=created,
            )
            token = self._key_token(draft)
            key = await pg.insert_key(
                conn,
                organization,
                key_id=draft.id,
                display_name=display_name,
                scopes=draft.scopes,
                token_hash=hashlib.sha256(token.encode()).digest(),
                created_by=caller.subject,
                expires_at=draft.expires_at,
                created_at=created,
            )
            await self._remember(conn, organization, request, {"id": key.id})
        return key, token

    async def list_keys(
        self, organization: str, *, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[ServiceAccountKey]:
        """Keys, oldest first."""
        async with self._store.org(organization, readonly=True) as conn:
            return await pg.list_keys(conn, organization, after=after, limit=limit)

    async def delete_key(
        self, organization: str, key_id: str, *, etag: str, request: RequestKey | None
    ) -> None:
        """Deletes a key and revokes its token at once, everywhere.

        Raises:
            NotFound, Aborted (etag).
        """
        async with self._store.org(organization) as conn:
            if await self._replayed(conn, organization, request) is not None:
                return
            key = await pg.load_key(conn, organization, key_id)
            if key is None:
                raise NotFound("ServiceAccountKey", key_id, metadata={"organization": organization})
            _check_etag("service-account key", 1, etag)
            await pg.delete_key(conn, organization, key_id)
            revoked = {jti_key(key.id): key.expires_at.timestamp()}
            await self._revoker.record(conn, revoked)
            await self._remember(conn, organization, request, {})
        await self._revoker.publish(revoked)


def _check_etag(what: str, version: int, etag: str) -> None:
    if not matches_etag(etag, version):
        raise Aborted(f"the {what} changed since it was read; read it again")


def _last_owner(organization: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"organization {organization!r} must keep at least one owner; make another member "
        "owner first",
        reason="LAST_OWNER",
        violations=[FieldViolation("user_id", "is the last owner")],
        metadata={"organization": organization},
    )
