"""The TenantService servicer: checks the caller against the permission matrix and the
request field by field, calls the use cases, answers in protobuf. Domain errors become
``google.rpc.Status`` in the shared call path (:mod:`servicekit.rpc`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from agentready.tenant.v1 import tenant_pb2, tenant_service_pb2_grpc
from google.protobuf import empty_pb2

from servicekit.auth import KeySet, TokenSigner
from servicekit.errors import FieldViolation, InvalidArgument, PermissionDenied
from servicekit.pagination import decode_token, next_page, page_size
from servicekit.requests import (
    check_organization,
    check_request_id,
    raise_if_invalid,
    request_key,
)
from servicekit.rpc import current_principal
from tenant_service.domain import checks
from tenant_service.domain.model import Role
from tenant_service.domain.permissions import Caller, check
from tenant_service.entrypoints import convert
from tenant_service.service_layer.organizations import Organizations
from tenant_service.service_layer.tenancy import Tenancy
from tenant_service.service_layer.users import Users

DEFAULT_PAGE = 50


def _authorize(method: str, organization: str | None) -> Caller:
    return check(method, current_principal(), organization)


def _mask(paths: Sequence[str], allowed: Sequence[str], given: dict[str, bool]) -> frozenset[str]:
    """The fields an update touches (AIP-134): the mask's, or those set when omitted."""
    if not paths:
        return frozenset(name for name, present in given.items() if present)
    if list(paths) == ["*"]:
        return frozenset(allowed)
    unknown = [p for p in paths if p not in allowed]
    if unknown:
        raise InvalidArgument.field(
            "update_mask", f"unknown or immutable paths {unknown}; allowed: {list(allowed)}"
        )
    return frozenset(paths)


def _client_address(context: Any) -> str:
    peer = str(context.peer() or "")
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer or "unknown"


def _role(value: int, field: str) -> tuple[Role | None, list[FieldViolation]]:
    role = convert.ROLE_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if role is None:
        return None, [FieldViolation(field, "required: ROLE_OWNER, ADMIN, MEMBER or VIEWER")]
    return role, []


# The position of lists ordered by creation: (ISO time, UUID).
TIME_ID = (str, str)


def _time_position(position: tuple[str, str] | None) -> tuple[dt.datetime, str] | None:
    if position is None:
        return None
    when, key = position
    try:
        moment = dt.datetime.fromisoformat(when)
        uuid.UUID(key)
        # A forged offset can push a time past the years a datetime holds in UTC.
        moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.field("page_token", "not a page token of this API") from None
    if moment.tzinfo is None:
        raise InvalidArgument.field("page_token", "not a page token of this API")
    return moment, key


class TenantServiceServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    """TenantService over gRPC."""

    def __init__(
        self,
        users: Users,
        organizations: Organizations,
        tenancy: Tenancy,
        *,
        keys: KeySet | None,
        signer: Any,
    ) -> None:
        self._users = users
        self._orgs = organizations
        self._tenancy = tenancy
        self._keys = keys
        self._signer = signer

    # -- users and authentication -------------------------------------------------------

    async def CreateUser(
        self, request: tenant_pb2.CreateUserRequest, context: Any
    ) -> tenant_pb2.User:
        email = checks.normalize_email(request.user.email)
        raise_if_invalid(
            checks.check_email(email, "user.email")
            + checks.check_text(
                request.user.display_name, "user.display_name", max_chars=checks.MAX_DISPLAY_NAME
            )
            + checks.check_password(request.password, email)
            + check_request_id(request.request_id)
        )
        # The password stays out of the request record's fingerprint: no derivative
        # of a password is stored but its argon2id hash.
        body = tenant_pb2.CreateUserRequest()
        body.CopyFrom(request)
        body.ClearField("password")
        user = await self._users.create(
            email=email,
            display_name=request.user.display_name,
            password=request.password,
            request=request_key("CreateUser", body),
        )
        return convert.user(user)

    async def GetUser(self, request: tenant_pb2.GetUserRequest, context: Any) -> tenant_pb2.User:
        caller = _authorize("GetUser", None)
        if request.id != "me":
            raise_if_invalid(checks.check_uuid(request.id, "id"))
        return convert.user(await self._users.get(caller.subject, request.id))

    async def Login(
        self, request: tenant_pb2.LoginRequest, context: Any
    ) -> tenant_pb2.LoginResponse:
        email = checks.normalize_email(request.email)
        # No format check (a wrong address is a failed sign-in like any other), but a
        # bound and no NUL, which PostgreSQL text cannot hold.
        violations = checks.check_text(email, "email", max_chars=checks.MAX_EMAIL, required=True)
        if not request.password:
            violations.append(FieldViolation("password", "required"))
        elif len(request.password) > checks.MAX_PASSWORD:
            violations.append(FieldViolation("password", f"at most {checks.MAX_PASSWORD}"))
        if request.organization:
            violations += check_organization(request.organization)
        raise_if_invalid(violations)
        user, pair = await self._users.login(
            email=email,
            password=request.password,
            organization=request.organization,
            client=_client_address(context),
        )
        return tenant_pb2.LoginResponse(tokens=convert.tokens(pair), user=convert.user(user))

    async def RefreshToken(
        self, request: tenant_pb2.RefreshTokenRequest, context: Any
    ) -> tenant_pb2.RefreshTokenResponse:
        violations = [] if request.refresh_token else [FieldViolation("refresh_token", "required")]
        if request.organization:
            violations += check_organization(request.organization)
        raise_if_invalid(violations)
        pair = await self._users.refresh(
            refresh_token=request.refresh_token, organization=request.organization
        )
        return tenant_pb2.RefreshTokenResponse(tokens=convert.tokens(pair))

    async def Logout(self, request: tenant_pb2.LogoutRequest, context: Any) -> empty_pb2.Empty:
        _authorize("Logout", None)
        await self._users.logout(current_principal(), request.refresh_token)
        return empty_pb2.Empty()

    async def GetJwks(
        self, request: tenant_pb2.GetJwksRequest, context: Any
    ) -> tenant_pb2.GetJwksResponse:
        documents: dict[str, dict[str, Any]] = {}
        signer: TokenSigner = self._signer()
        documents[signer.jwk["kid"]] = dict(signer.jwk)
        if self._keys is not None:
            for jwk in self._keys.public_keys():
                documents.setdefault(jwk["kid"], jwk)
        fields = {f.name for f in tenant_pb2.JsonWebKey.DESCRIPTOR.fields}
        return tenant_pb2.GetJwksResponse(
            keys=[
                tenant_pb2.JsonWebKey(**{k: str(v) for k, v in jwk.items() if k in fields})
                for jwk in documents.values()
            ]
        )

    # -- organizations ------------------------------------------------------------------

    async def CreateOrganization(
        self, request: tenant_pb2.CreateOrganizationRequest, context: Any
    ) -> tenant_pb2.Organization:
        caller = _authorize("CreateOrganization", None)
        org = request.organization
        raise_if_invalid(
            check_organization(org.slug, "organization.slug")
            + checks.check_text(
                org.display_name, "organization.display_name", max_chars=checks.MAX_DISPLAY_NAME
            )
            + checks.check_labels(org.labels, "organization.labels")
        )
        key = request_key("CreateOrganization", request)
        if key is not None:
            # Bound to the caller: another user's request id is never replayed to it.
            key = dataclasses.replace(key, method=f"CreateOrganization/{caller.subject}")
        created = await self._orgs.create(
            slug=org.slug,
            display_name=org.display_name,
            labels=dict(org.labels),
            creator=caller.subject,
            request=key,
        )
        return convert.organization(created)

    async def GetOrganization(
        self, request: tenant_pb2.GetOrganizationRequest, context: Any
    ) -> tenant_pb2.Organization:
        _authorize("GetOrganization", request.organization)
        raise_if_invalid(check_organization(request.organization))
        return convert.organization(await self._orgs.get(request.organization))

    async def ListOrganizations(
        self, request: tenant_pb2.ListOrganizationsRequest, context: Any
    ) -> tenant_pb2.ListOrganizationsResponse:
        caller = _authorize("ListOrganizations", None)
        limit = page_size(request.page_size, default=DEFAULT_PAGE)
        binding = [caller.subject, request.page_size, request.show_deleted]
        after = decode_token(request.page_token, request=binding, shape=str) or ""
        orgs = await self._orgs.list_for(
            caller.subject, after=str(after), limit=limit + 1, show_deleted=request.show_deleted
        )
        page, token = next_page(orgs, limit, lambda o: o.slug, request=binding)
        return tenant_pb2.ListOrganizationsResponse(
            organizations=[convert.organization(o) for o in page], next_page_token=token
        )

    async def UpdateOrganization(
        self, request: tenant_pb2.UpdateOrganizationRequest, context: Any
    ) -> tenant_pb2.Organization:
        org = request.organization
        _authorize("UpdateOrganization", org.slug)
        fields = _mask(
            request.update_mask.paths,
            ("display_name", "labels"),
            {"display_name": bool(org.display_name), "labels": bool(org.labels)},
        )
        raise_if_invalid(
            check_organization(org.slug, "organization.slug")
            + checks.check_text(
                org.display_name, "organization.display_name", max_chars=checks.MAX_DISPLAY_NAME
            )
            + checks.check_labels(org.labels, "organization.labels")
        )
        updated = await self._orgs.update(
            org.slug,
            etag=org.etag,
            display_name=org.display_name if "display_name" in fields else None,
            labels=dict(org.labels) if "labels" in fields else None,
        )
        return convert.organization(updated)

    async def DeleteOrganization(
        self, request: tenant_pb2.DeleteOrganizationRequest, context: Any
    ) -> empty_pb2.Empty:
        _authorize("DeleteOrganization", request.organization)
        raise_if_invalid(check_organization(request.organization))
        await self._orgs.delete(
            request.organization,
            etag=request.etag,
            request=request_key("DeleteOrganization", request),
        )
        return empty_pb2.Empty()

    # -- members ------------------------------------------------------------------------

    async def CreateMember(
        self, request: tenant_pb2.CreateMemberRequest, context: Any
    ) -> tenant_pb2.Member:
        caller = _authorize("CreateMember", request.organization)
        m = request.member
        violations = check_organization(request.organization)
        email = checks.normalize_email(m.email)
        if m.user_id and m.email:
            violations.append(FieldViolation("member.user_id", "give user_id or email, not both"))
        elif m.user_id:
            violations += checks.check_uuid(m.user_id, "member.user_id")
        elif m.email:
            violations += checks.check_email(email, "member.email")
        else:
            violations.append(FieldViolation("member.user_id", "give user_id or email"))
        role, bad = _role(m.role, "member.role")
        raise_if_invalid(violations + bad)
        assert role is not None
        member = await self._tenancy.add_member(
            request.organization,
            caller,
            user_id=m.user_id,
            email=email,
            role=role,
            request=request_key("CreateMember", request),
        )
        return convert.member(member)

    async def GetMember(
        self, request: tenant_pb2.GetMemberRequest, context: Any
    ) -> tenant_pb2.Member:
        _authorize("GetMember", request.organization)
        raise_if_invalid(
            check_organization(request.organization) + checks.check_uuid(request.user_id, "user_id")
        )
        return convert.member(await self._tenancy.get_member(request.organization, request.user_id))

    async def ListMembers(
        self, request: tenant_pb2.ListMembersRequest, context: Any
    ) -> tenant_pb2.ListMembersResponse:
        _authorize("ListMembers", request.organization)
        raise_if_invalid(check_organization(request.organization))
        limit = page_size(request.page_size, default=DEFAULT_PAGE)
        binding = [request.organization, request.page_size]
        after = decode_token(request.page_token, request=binding, shape=str) or ""
        members = await self._tenancy.list_members(
            request.organization, after=str(after), limit=limit + 1
        )
        page, token = next_page(members, limit, lambda m: m.email, request=binding)
        return tenant_pb2.ListMembersResponse(
            members=[convert.member(m) for m in page], next_page_token=token
        )

    async def UpdateMember(
        self, request: tenant_pb2.UpdateMemberRequest, context: Any
    ) -> tenant_pb2.Member:
        m = request.member
        caller = _authorize("UpdateMember", m.organization)
        _mask(request.update_mask.paths, ("role",), {"role": True})
        role, bad = _role(m.role, "member.role")
        raise_if_invalid(
            check_organization(m.organization, "member.organization")
            + checks.check_uuid(m.user_id, "member.user_id")
            + bad
        )
        assert role is not None
        member = await self._tenancy.set_role(
            m.organization, caller, user_id=m.user_id, role=role, etag=m.etag
        )
        return convert.member(member)

    async def DeleteMember(
        self, request: tenant_pb2.DeleteMemberRequest, context: Any
    ) -> empty_pb2.Empty:
        principal = current_principal()
        leaving = (
            principal.organization == request.organization
            and principal.subject == request.user_id
            and not principal.is_service_account
            and not principal.is_platform
        )
        # Any member may leave; removing someone else needs the matrix's role.
        caller = check("GetMember" if leaving else "DeleteMember", principal, request.organization)
        raise_if_invalid(
            check_organization(request.organization) + checks.check_uuid(request.user_id, "user_id")
        )
        await self._tenancy.remove_member(
            request.organization,
            caller,
            user_id=request.user_id,
            etag=request.etag,
            request=request_key("DeleteMember", request),
        )
        return empty_pb2.Empty()

    # -- projects -----------------------------------------------------------------------

    @staticmethod
    def _project_violations(project: tenant_pb2.Project) -> list[FieldViolation]:
        return checks.check_text(
            project.display_name, "project.display_name", max_chars=checks.MAX_DISPLAY_NAME
        ) + checks.check_text(
            project.description, "project.description", max_chars=checks.MAX_DESCRIPTION
        )

    async def CreateProject(
        self, request: tenant_pb2.CreateProjectRequest, context: Any
    ) -> tenant_pb2.Project:
        _authorize("CreateProject", request.organization)
        p = request.project
        raise_if_invalid(
            check_organization(request.organization)
            + checks.check_project_id(p.id, "project.id")
            + self._project_violations(p)
        )
        project = await self._tenancy.create_project(
            request.organization,
            project_id=p.id,
            display_name=p.display_name,
            description=p.description,
            request=request_key("CreateProject", request),
        )
        return convert.project(project)

    async def GetProject(
        self, request: tenant_pb2.GetProjectRequest, context: Any
    ) -> tenant_pb2.Project:
        _authorize("GetProject", request.organization)
        raise_if_invalid(
            check_organization(request.organization) + checks.check_project_id(request.id)
        )
        return convert.project(await self._tenancy.get_project(request.organization, request.id))

    async def ListProjects(
        self, request: tenant_pb2.ListProjectsRequest, context: Any
    ) -> tenant_pb2.ListProjectsResponse:
        _authorize("ListProjects", request.organization)
        raise_if_invalid(check_organization(request.organization))
        limit = page_size(request.page_size, default=DEFAULT_PAGE)
        binding = [request.organization, request.page_size]
        after = decode_token(request.page_token, request=binding, shape=str) or ""
        projects = await self._tenancy.list_projects(
            request.organization, after=str(after), limit=limit + 1
        )
        page, token = next_page(projects, limit, lambda p: p.id, request=binding)
        return tenant_pb2.ListProjectsResponse(
            projects=[convert.project(p) for p in page], next_page_token=token
        )

    async def UpdateProject(
        self, request: tenant_pb2.UpdateProjectRequest, context: Any
    ) -> tenant_pb2.Project:
        p = request.project
        _authorize("UpdateProject", p.organization)
        fields = _mask(
            request.update_mask.paths,
            ("display_name", "description"),
            {"display_name": bool(p.display_name), "description": bool(p.description)},
        )
        raise_if_invalid(
            check_organization(p.organization, "project.organization")
            + checks.check_project_id(p.id, "project.id")
            + self._project_violations(p)
        )
        project = await self._tenancy.update_project(
            p.organization,
            p.id,
            etag=p.etag,
            display_name=p.display_name if "display_name" in fields else None,
            description=p.description if "description" in fields else None,
        )
        return convert.project(project)

    async def DeleteProject(
        self, request: tenant_pb2.DeleteProjectRequest, context: Any
    ) -> empty_pb2.Empty:
        _authorize("DeleteProject", request.organization)
        raise_if_invalid(
            check_organization(request.organization) + checks.check_project_id(request.id)
        )
        await self._tenancy.delete_project(
            request.organization,
            request.id,
            etag=request.etag,
            request=request_key("DeleteProject", request),
        )
        return empty_pb2.Empty()

    # -- notes --------------------------------------------------------------------------

    @staticmethod
    def _note_violations(note: tenant_pb2.Note, *, title_required: bool) -> list[FieldViolation]:
        return checks.check_text(
            note.title, "note.title", max_chars=checks.MAX_TITLE, required=title_required
        ) + checks.check_text(note.body, "note.body", max_chars=checks.MAX_BODY)

    async def CreateNote(
        self, request: tenant_pb2.CreateNoteRequest, context: Any
    ) -> tenant_pb2.Note:
        caller = _authorize("CreateNote", request.organization)
        raise_if_invalid(
            check_organization(request.organization)
            + checks.check_project_id(request.project, "project")
            + self._note_violations(request.note, title_required=True)
        )
        note = await self._tenancy.create_note(
            request.organization,
            request.project,
            title=request.note.title,
            body=request.note.body,
            author=caller.subject,
            request=request_key("CreateNote", request),
        )
        return convert.note(note)

    async def GetNote(self, request: tenant_pb2.GetNoteRequest, context: Any) -> tenant_pb2.Note:
        _authorize("GetNote", request.organization)
        raise_if_invalid(
            check_organization(request.organization)
            + checks.check_project_id(request.project, "project")
            + checks.check_uuid(request.id, "id")
        )
        return convert.note(
            await self._tenancy.get_note(request.organization, request.project, request.id)
        )

    async def ListNotes(
        self, request: tenant_pb2.ListNotesRequest, context: Any
    ) -> tenant_pb2.ListNotesResponse:
        _authorize("ListNotes", request.organization)
        violations = check_organization(request.organization)
        if request.project:
            violations += checks.check_project_id(request.project, "project")
        raise_if_invalid(violations)
        limit = page_size(request.page_size, default=DEFAULT_PAGE)
        binding = [request.organization, request.project, request.page_size]
        after = _time_position(decode_token(request.page_token, request=binding, shape=TIME_ID))
        notes = await self._tenancy.list_notes(
            request.organization, project_id=request.project, after=after, limit=limit + 1
        )
        page, token = next_page(
            notes,
            limit,
            lambda n: [n.created_at.isoformat(), n.id],
            request=binding,
            # A note holds up to 100,000 characters: pages are cut by bytes too.
            size=lambda n: len(n.title.encode()) + len(n.body.encode()) + 256,
        )
        return tenant_pb2.ListNotesResponse(
            notes=[convert.note(n) for n in page], next_page_token=token
        )

    async def UpdateNote(
        self, request: tenant_pb2.UpdateNoteRequest, context: Any
    ) -> tenant_pb2.Note:
        n = request.note
        _authorize("UpdateNote", n.organization)
        fields = _mask(
            request.update_mask.paths,
            ("title", "body"),
            {"title": bool(n.title), "body": bool(n.body)},
        )
        raise_if_invalid(
            check_organization(n.organization, "note.organization")
            + checks.check_project_id(n.project, "note.project")
            + checks.check_uuid(n.id, "note.id")
            + self._note_violations(n, title_required="title" in fields)
        )
        note = await self._tenancy.update_note(
            n.organization,
            n.project,
            n.id,
            etag=n.etag,
            title=n.title if "title" in fields else None,
            body=n.body if "body" in fields else None,
        )
        return convert.note(note)

    async def DeleteNote(
        self, request: tenant_pb2.DeleteNoteRequest, context: Any
    ) -> empty_pb2.Empty:
        _authorize("DeleteNote", request.organization)
        raise_if_invalid(
            check_organization(request.organization)
            + checks.check_project_id(request.project, "project")
            + checks.check_uuid(request.id, "id")
        )
        await self._tenancy.delete_note(
            request.organization,
            request.project,
            request.id,
            etag=request.etag,
            request=request_key("DeleteNote", request),
        )
        return empty_pb2.Empty()

    # -- service-account keys -----------------------------------------------------------

    async def CreateServiceAccountKey(
        self, request: tenant_pb2.CreateServiceAccountKeyRequest, context: Any
    ) -> tenant_pb2.CreateServiceAccountKeyResponse:
        caller = _authorize("CreateServiceAccountKey", request.organization)
        k = request.service_account_key
        ttl, bad_ttl = checks.key_ttl(request.ttl.seconds, request.ttl.nanos)
        raise_if_invalid(
            check_organization(request.organization)
            + checks.check_text(
                k.display_name,
                "service_account_key.display_name",
                max_chars=checks.MAX_DISPLAY_NAME,
            )
            + checks.check_scopes(list(k.scopes), "service_account_key.scopes")
            + bad_ttl
        )
        key, token = await self._tenancy.create_key(
            request.organization,
            caller,
            display_name=k.display_name,
            scopes=tuple(k.scopes),
            ttl=ttl,
            request=request_key("CreateServiceAccountKey", request),
        )
        return tenant_pb2.CreateServiceAccountKeyResponse(
            service_account_key=convert.key(key), token=token
        )

    async def ListServiceAccountKeys(
        self, request: tenant_pb2.ListServiceAccountKeysRequest, context: Any
    ) -> tenant_pb2.ListServiceAccountKeysResponse:
        _authorize("ListServiceAccountKeys", request.organization)
        raise_if_invalid(check_organization(request.organization))
        limit = page_size(request.page_size, default=DEFAULT_PAGE)
        binding = [request.organization, request.page_size]
        after = _time_position(decode_token(request.page_token, request=binding, shape=TIME_ID))
        keys = await self._tenancy.list_keys(request.organization, after=after, limit=limit + 1)
        page, token = next_page(
            keys, limit, lambda k: [k.created_at.isoformat(), k.id], request=binding
        )
        return tenant_pb2.ListServiceAccountKeysResponse(
            service_account_keys=[convert.key(k) for k in page], next_page_token=token
        )

    async def DeleteServiceAccountKey(
        self, request: tenant_pb2.DeleteServiceAccountKeyRequest, context: Any
    ) -> empty_pb2.Empty:
        _authorize("DeleteServiceAccountKey", request.organization)
        raise_if_invalid(
            check_organization(request.organization) + checks.check_uuid(request.id, "id")
        )
        await self._tenancy.delete_key(
            request.organization,
            request.id,
            etag=request.etag,
            request=request_key("DeleteServiceAccountKey", request),
        )
        return empty_pb2.Empty()


__all__ = ["PermissionDenied", "TenantServiceServicer"]
