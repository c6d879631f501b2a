"""TenantClient: TenantService in Python types.

Users, organizations, members, projects, notes and service-account keys, on the
call path every typed client shares (token, deadline, retries, typed errors). Calls
that are safe to repeat are retried on ``UNAVAILABLE``: reads, and writes, which all
carry a request id here. Updates carry none in the contract, so they are retried
only when they name no etag (setting the same fields twice changes nothing; with an
etag, a retry of an update that did land would fail ``ABORTED``). Log in with
:class:`agentready.Session`, which refreshes its tokens itself.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from agentready._private.call import TokenSource
from agentready._private.client import ServiceClient
from agentready._private.sync import SyncFace, blocking, blocking_iter
from agentready.tenant.v1 import tenant_pb2, tenant_service_pb2_grpc

RoleLike = str | int
_ROLES = {
    "owner": tenant_pb2.ROLE_OWNER,
    "admin": tenant_pb2.ROLE_ADMIN,
    "member": tenant_pb2.ROLE_MEMBER,
    "viewer": tenant_pb2.ROLE_VIEWER,
}


def role_value(role: RoleLike) -> tenant_pb2.Role.ValueType:
    """A ``Role`` from its name ("owner", "ROLE_ADMIN", ...) or number.

    Raises:
        ValueError: no such role.
    """
    if isinstance(role, int):
        return tenant_pb2.Role.ValueType(role)
    name = role.lower().removeprefix("role_")
    if name not in _ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(_ROLES)}")
    return _ROLES[name]


def role_name(role: int) -> str:
    """The lowercase name of a ``Role`` ("owner", ...)."""
    return tenant_pb2.Role.Name(tenant_pb2.Role.ValueType(role)).removeprefix("ROLE_").lower()


def _rid(request_id: str | None) -> str:
    return request_id or str(uuid.uuid4())


class TenantClient(ServiceClient):
    """Typed, retrying access to TenantService.

    Args:
        target: the TenantService address, or pass ``channel``.
        token: the credentials: a token, a callable returning one, or
            :class:`agentready.Session` / :class:`agentready.EnvironmentToken`. May be
            None for the public calls only (:meth:`create_user`, :meth:`get_jwks`).
        channel: an existing ``grpc.aio`` channel (not closed by :meth:`close`).
        timeout: the deadline of each call, in seconds.
        attempts: tries per retryable call (see :class:`agentready.ConfigClient`).
    """

    def __init__(
        self,
        target: str | None,
        *,
        token: TokenSource | None = None,
        channel: grpc.aio.Channel | None = None,
        timeout: float = 10.0,
        attempts: int = 8,
    ) -> None:
        super().__init__(target, token=token, channel=channel, timeout=timeout, attempts=attempts)
        self.stub = tenant_service_pb2_grpc.TenantServiceStub(self._channel)

    async def _call(self, method: Any, request: Any, *, idempotent: bool = True) -> Any:
        return await self._calls.unary(method, request, idempotent=idempotent)

    # -- users ----------------------------------------------------------------------

    async def create_user(
        self,
        email: str,
        password: str,
        *,
        display_name: str = "",
        request_id: str | None = None,
    ) -> tenant_pb2.User:
        """Signs a user up (public: no token needed).

        Raises:
            AlreadyExists: the email is taken.
            InvalidArgument: a bad email or a password outside 8-256 characters.
        """
        request = tenant_pb2.CreateUserRequest(
            user=tenant_pb2.User(email=email, display_name=display_name),
            password=password,
            request_id=_rid(request_id),
        )
        user: tenant_pb2.User = await self._calls.unary(
            self.stub.CreateUser, request, idempotent=True, authenticated=False
        )
        return user

    async def get_user(self, user_id: str = "me") -> tenant_pb2.User:
        """A user: the caller ("me") or someone sharing an organization with it.

        Raises:
            NotFound: no such user visible to the caller.
        """
        user: tenant_pb2.User = await self._call(
            self.stub.GetUser, tenant_pb2.GetUserRequest(id=user_id)
        )
        return user

    async def get_jwks(self) -> tenant_pb2.GetJwksResponse:
        """The public keys that verify tokens (public: no token needed)."""
        reply: tenant_pb2.GetJwksResponse = await self._calls.unary(
            self.stub.GetJwks, tenant_pb2.GetJwksRequest(), idempotent=True, authenticated=False
        )
        return reply

    # -- organizations -----------------------------------------------------------------

    async def create_organization(
        self,
        slug: str,
        *,
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> tenant_pb2.Organization:
        """Creates an organization; the caller becomes its owner. Returned
        ``PROVISIONING`` or ``ACTIVE``.

        Raises:
            AlreadyExists: the slug is or was ever taken.
            InvalidArgument: a bad slug (a DNS-1123 label of 3-40 characters).
        """
        request = tenant_pb2.CreateOrganizationRequest(
            organization=tenant_pb2.Organization(
                slug=slug, display_name=display_name, labels=dict(labels or {})
            ),
            request_id=_rid(request_id),
        )
        org: tenant_pb2.Organization = await self._call(self.stub.CreateOrganization, request)
        return org

    async def get_organization(self, slug: str) -> tenant_pb2.Organization:
        """An organization (also while it is being deleted).

        Raises:
            PermissionDenied: no access to it, whether or not it exists.
        """
        org: tenant_pb2.Organization = await self._call(
            self.stub.GetOrganization, tenant_pb2.GetOrganizationRequest(organization=slug)
        )
        return org

    async def list_organizations(
        self, *, show_deleted: bool = False, page_size: int = 0
    ) -> AsyncIterator[tenant_pb2.Organization]:
        """Every organization the caller is a member of, page after page."""
        request = tenant_pb2.ListOrganizationsRequest(
            page_size=page_size, show_deleted=show_deleted
        )
        async for org in self._calls.pages(self.stub.ListOrganizations, request, "organizations"):
            yield org

    async def update_organization(
        self,
        slug: str,
        *,
        display_name: str | None = None,
        labels: Mapping[str, str] | None = None,
        etag: str = "",
    ) -> tenant_pb2.Organization:
        """Changes the display name and/or the labels (replaced as a whole).

        Raises:
            NotFound: no such organization.
            Conflict: ``etag`` did not match.
            FailedPrecondition: it is being deleted.
        """
        org = tenant_pb2.Organization(slug=slug, etag=etag)
        paths = []
        if display_name is not None:
            org.display_name = display_name
            paths.append("display_name")
        if labels is not None:
            org.labels.update(labels)
            paths.append("labels")
        request = tenant_pb2.UpdateOrganizationRequest(
            organization=org, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        result: tenant_pb2.Organization = await self._call(
            self.stub.UpdateOrganization, request, idempotent=not etag
        )
        return result

    async def delete_organization(
        self, slug: str, *, etag: str = "", request_id: str | None = None
    ) -> None:
        """Starts deleting an organization (``DELETING`` at once, then ``DELETED``).

        Raises:
            NotFound: no such organization.
            Conflict: ``etag`` did not match.
        """
        request = tenant_pb2.DeleteOrganizationRequest(
            organization=slug, etag=etag, request_id=_rid(request_id)
        )
        await self._call(self.stub.DeleteOrganization, request)

    # -- members ----------------------------------------------------------------------

    async def add_member(
        self,
        organization: str,
        *,
        role: RoleLike,
        user_id: str = "",
        email: str = "",
        request_id: str | None = None,
    ) -> tenant_pb2.Member:
        """Adds an existing user (by ``user_id`` or ``email``) with ``role``.

        Raises:
            NotFound: no user has that id or email.
            AlreadyExists: the user is a member already.
        """
        request = tenant_pb2.CreateMemberRequest(
            organization=organization,
            member=tenant_pb2.Member(user_id=user_id, email=email, role=role_value(role)),
            request_id=_rid(request_id),
        )
        member: tenant_pb2.Member = await self._call(self.stub.CreateMember, request)
        return member

    async def get_member(self, organization: str, user_id: str) -> tenant_pb2.Member:
        """A member.

        Raises:
            NotFound: not a member.
        """
        member: tenant_pb2.Member = await self._call(
            self.stub.GetMember,
            tenant_pb2.GetMemberRequest(organization=organization, user_id=user_id),
        )
        return member

    async def list_members(
        self, organization: str, *, page_size: int = 0
    ) -> AsyncIterator[tenant_pb2.Member]:
        """Every member of an organization, page after page."""
        request = tenant_pb2.ListMembersRequest(organization=organization, page_size=page_size)
        async for member in self._calls.pages(self.stub.ListMembers, request, "members"):
            yield member

    async def update_member(
        self, organization: str, user_id: str, *, role: RoleLike, etag: str = ""
    ) -> tenant_pb2.Member:
        """Changes a member's role.

        Raises:
            NotFound: not a member.
            Conflict: ``etag`` did not match.
            FailedPrecondition: it would leave the organization without an owner.
        """
        request = tenant_pb2.UpdateMemberRequest(
            member=tenant_pb2.Member(
                organization=organization, user_id=user_id, role=role_value(role), etag=etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        )
        member: tenant_pb2.Member = await self._call(
            self.stub.UpdateMember, request, idempotent=not etag
        )
        return member

    async def remove_member(
        self, organization: str, user_id: str, *, etag: str = "", request_id: str | None = None
    ) -> None:
        """Removes a member; its tokens scoped to the organization stop working.

        Raises:
            NotFound: not a member.
            FailedPrecondition: it would leave the organization without an owner.
        """
        request = tenant_pb2.DeleteMemberRequest(
            organization=organization, user_id=user_id, etag=etag, request_id=_rid(request_id)
        )
        await self._call(self.stub.DeleteMember, request)

    # -- projects ---------------------------------------------------------------------

    async def create_project(
        self,
        organization: str,
        project_id: str,
        *,
        display_name: str = "",
        description: str = "",
        request_id: str | None = None,
    ) -> tenant_pb2.Project:
        """Creates a project.

        Raises:
            AlreadyExists: the id is taken in the organization.
            InvalidArgument: a bad id (a DNS-1123 label).
        """
        request = tenant_pb2.CreateProjectRequest(
            organization=organization,
            project=tenant_pb2.Project(
                id=project_id, display_name=display_name, description=description
            ),
            request_id=_rid(request_id),
        )
        project: tenant_pb2.Project = await self._call(self.stub.CreateProject, request)
        return project

    async def get_project(self, organization: str, project_id: str) -> tenant_pb2.Project:
        """A project.

        Raises:
            NotFound: no such project.
        """
        project: tenant_pb2.Project = await self._call(
            self.stub.GetProject,
            tenant_pb2.GetProjectRequest(organization=organization, id=project_id),
        )
        return project

    async def list_projects(
        self, organization: str, *, page_size: int = 0
    ) -> AsyncIterator[tenant_pb2.Project]:
        """Every project of an organization, page after page."""
        request = tenant_pb2.ListProjectsRequest(organization=organization, page_size=page_size)
        async for project in self._calls.pages(self.stub.ListProjects, request, "projects"):
            yield project

    async def update_project(
        self,
        organization: str,
        project_id: str,
        *,
        display_name: str | None = None,
        description: str | None = None,
        etag: str = "",
    ) -> tenant_pb2.Project:
        """Changes a project's display name and/or description.

        Raises:
            NotFound: no such project.
            Conflict: ``etag`` did not match.
        """
        project = tenant_pb2.Project(organization=organization, id=project_id, etag=etag)
        paths = []
        if display_name is not None:
            project.display_name = display_name
            paths.append("display_name")
        if description is not None:
            project.description = description
            paths.append("description")
        request = tenant_pb2.UpdateProjectRequest(
            project=project, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        result: tenant_pb2.Project = await self._call(
            self.stub.UpdateProject, request, idempotent=not etag
        )
        return result

    async def delete_project(
        self,
        organization: str,
        project_id: str,
        *,
        etag: str = "",
        request_id: str | None = None,
    ) -> None:
        """Deletes a project and all its notes.

        Raises:
            NotFound: no such project.
            Conflict: ``etag`` did not match.
        """
        request = tenant_pb2.DeleteProjectRequest(
            organization=organization, id=project_id, etag=etag, request_id=_rid(request_id)
        )
        await self._call(self.stub.DeleteProject, request)

    # -- notes ------------------------------------------------------------------------

    async def create_note(
        self,
        organization: str,
        project_id: str,
        *,
        title: str,
        body: str = "",
        request_id: str | None = None,
    ) -> tenant_pb2.Note:
        """Creates a note in a project; the caller is its author.

        Raises:
            NotFound: no such project.
        """
        request = tenant_pb2.CreateNoteRequest(
            organization=organization,
            project=project_id,
            note=tenant_pb2.Note(title=title, body=body),
            request_id=_rid(request_id),
        )
        note: tenant_pb2.Note = await self._call(self.stub.CreateNote, request)
        return note

    async def get_note(self, organization: str, project_id: str, note_id: str) -> tenant_pb2.Note:
        """A note.

        Raises:
            NotFound: no such note.
        """
        note: tenant_pb2.Note = await self._call(
            self.stub.GetNote,
            tenant_pb2.GetNoteRequest(organization=organization, project=project_id, id=note_id),
        )
        return note

    async def list_notes(
        self, organization: str, project_id: str = "", *, page_size: int = 0
    ) -> AsyncIterator[tenant_pb2.Note]:
        """Every note of a project (or of the whole organization), page after page."""
        request = tenant_pb2.ListNotesRequest(
            organization=organization, project=project_id, page_size=page_size
        )
        async for note in self._calls.pages(self.stub.ListNotes, request, "notes"):
            yield note

    async def update_note(
        self,
        organization: str,
        project_id: str,
        note_id: str,
        *,
        title: str | None = None,
        body: str | None = None,
        etag: str = "",
    ) -> tenant_pb2.Note:
        """Changes a note's title and/or body.

        Raises:
            NotFound: no such note.
            Conflict: ``etag`` did not match.
        """
        note = tenant_pb2.Note(organization=organization, project=project_id, id=note_id, etag=etag)
        paths = []
        if title is not None:
            note.title = title
            paths.append("title")
        if body is not None:
            note.body = body
            paths.append("body")
        request = tenant_pb2.UpdateNoteRequest(
            note=note, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        result: tenant_pb2.Note = await self._call(
            self.stub.UpdateNote, request, idempotent=not etag
        )
        return result

    async def delete_note(
        self,
        organization: str,
        project_id: str,
        note_id: str,
        *,
        etag: str = "",
        request_id: str | None = None,
    ) -> None:
        """Deletes a note.

        Raises:
            NotFound: no such note.
            Conflict: ``etag`` did not match.
        """
        request = tenant_pb2.DeleteNoteRequest(
            organization=organization,
            project=project_id,
            id=note_id,
            etag=etag,
            request_id=_rid(request_id),
        )
        await self._call(self.stub.DeleteNote, request)

    # -- service-account keys -----------------------------------------------------------

    async def create_service_account_key(
        self,
        organization: str,
        *,
        scopes: Iterable[str],
        display_name: str = "",
        ttl: dt.timedelta | None = None,
        request_id: str | None = None,
    ) -> tenant_pb2.CreateServiceAccountKeyResponse:
        """Creates a key for pods and returns it with its token (shown only this once;
        a retry with the same ``request_id`` returns the same key and token).

        Raises:
            InvalidArgument: an unknown scope or a ttl outside 1 minute-365 days.
            PermissionDenied: not an admin, or a service-account token.
        """
        request = tenant_pb2.CreateServiceAccountKeyRequest(
            organization=organization,
            service_account_key=tenant_pb2.ServiceAccountKey(
                display_name=display_name, scopes=list(scopes)
            ),
            request_id=_rid(request_id),
        )
        if ttl is not None:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl.total_seconds())))
        reply: tenant_pb2.CreateServiceAccountKeyResponse = await self._call(
            self.stub.CreateServiceAccountKey, request
        )
        return reply

    async def list_service_account_keys(
        self, organization: str, *, page_size: int = 0
    ) -> AsyncIterator[tenant_pb2.ServiceAccountKey]:
        """Every service-account key of an organization (without tokens)."""
        request = tenant_pb2.ListServiceAccountKeysRequest(
            organization=organization, page_size=page_size
        )
        async for key in self._calls.pages(
            self.stub.ListServiceAccountKeys, request, "service_account_keys"
        ):
            yield key

    async def delete_service_account_key(
        self, organization: str, key_id: str, *, etag: str = "", request_id: str | None = None
    ) -> None:
        """Deletes a key; its token stops working at once.

        Raises:
            NotFound: no such key.
        """
        request = tenant_pb2.DeleteServiceAccountKeyRequest(
            organization=organization, id=key_id, etag=etag, request_id=_rid(request_id)
        )
        await self._call(self.stub.DeleteServiceAccountKey, request)


class SyncTenantClient(SyncFace[TenantClient]):
    """:class:`TenantClient` for code without an event loop: the same methods,
    blocking, run on a background thread (list methods return plain iterators).

    Takes the same arguments as :class:`TenantClient` (except ``channel``).
    """

    def __init__(
        self,
        target: str,
        *,
        token: TokenSource | None = None,
        timeout: float = 10.0,
        attempts: int = 8,
    ) -> None:
        super().__init__(
            lambda: TenantClient(target, token=token, timeout=timeout, attempts=attempts)
        )

    create_user = blocking(TenantClient.create_user)
    get_user = blocking(TenantClient.get_user)
    get_jwks = blocking(TenantClient.get_jwks)
    create_organization = blocking(TenantClient.create_organization)
    get_organization = blocking(TenantClient.get_organization)
    list_organizations = blocking_iter(TenantClient.list_organizations)
    update_organization = blocking(TenantClient.update_organization)
    delete_organization = blocking(TenantClient.delete_organization)
    add_member = blocking(TenantClient.add_member)
    get_member = blocking(TenantClient.get_member)
    list_members = blocking_iter(TenantClient.list_members)
    update_member = blocking(TenantClient.update_member)
    remove_member = blocking(TenantClient.remove_member)
    create_project = blocking(TenantClient.create_project)
    get_project = blocking(TenantClient.get_project)
    list_projects = blocking_iter(TenantClient.list_projects)
    update_project = blocking(TenantClient.update_project)
    delete_project = blocking(TenantClient.delete_project)
    create_note = blocking(TenantClient.create_note)
    get_note = blocking(TenantClient.get_note)
    list_notes = blocking_iter(TenantClient.list_notes)
    update_note = blocking(TenantClient.update_note)
    delete_note = blocking(TenantClient.delete_note)
    create_service_account_key = blocking(TenantClient.create_service_account_key)
    list_service_account_keys = blocking_iter(TenantClient.list_service_account_keys)
    delete_service_account_key = blocking(TenantClient.delete_service_account_key)
