"""TenantService end to end inside an organization: members and roles, projects, notes,
service-account keys, the permission matrix and isolation between organizations."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from agentready import AsyncConfigWatcher, WatcherState
from agentready.provisioner.v1 import provisioner_pb2 as ppb
from agentready.provisioner.v1 import provisioner_service_pb2_grpc
from agentready.tenant.v1 import tenant_pb2 as pb
from google.protobuf import duration_pb2, field_mask_pb2

from servicekit.server import RunningServer
from tenant_service.domain.model import Role
from tenant_service.domain.permissions import RULES
from tests.conftest import Keys
from tests.e2e.tenant_support import (
    Code,
    Person,
    TenantApi,
    bearer,
    eventually,
    rpc_error,
)
from tests.rpcerrors import error_info, field_violations

ROLES = {
    "owner": pb.ROLE_OWNER,
    "admin": pb.ROLE_ADMIN,
    "member": pb.ROLE_MEMBER,
    "viewer": pb.ROLE_VIEWER,
}


@pytest.fixture(scope="module")
async def api(servers: dict[str, RunningServer]) -> AsyncIterator[TenantApi]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['tenant'].port}") as tenant,
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as config,
    ):
        yield TenantApi(tenant, config)


async def create_key(
    api: TenantApi, admin: Person, org: str, scopes: list[str], **fields: Any
) -> pb.CreateServiceAccountKeyResponse:
    return await api.stub.CreateServiceAccountKey(
        pb.CreateServiceAccountKeyRequest(
            organization=org,
            service_account_key=pb.ServiceAccountKey(scopes=scopes, **fields.pop("key", {})),
            **fields,
        ),
        metadata=admin.auth,
        timeout=10,
    )


# -- members ---------------------------------------------------------------------------


async def test_members_by_id_or_email_with_roles_and_etags(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    alice, bob = await api.signup(), await api.signup()
    by_id = await api.stub.CreateMember(
        pb.CreateMemberRequest(
            organization=org, member=pb.Member(user_id=alice.id, role=pb.ROLE_MEMBER)
        ),
        metadata=owner.auth,
        timeout=10,
    )
    by_email = await api.stub.CreateMember(
        pb.CreateMemberRequest(
            organization=org, member=pb.Member(email=bob.email.upper(), role=pb.ROLE_VIEWER)
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert (by_id.email, by_id.role) == (alice.email, pb.ROLE_MEMBER)
    assert (by_email.user_id, by_email.role) == (bob.id, pb.ROLE_VIEWER)
    await rpc_error(
        api.stub.CreateMember(
            pb.CreateMemberRequest(
                organization=org, member=pb.Member(user_id=alice.id, role=pb.ROLE_VIEWER)
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.ALREADY_EXISTS,
    )
    await rpc_error(
        api.stub.CreateMember(
            pb.CreateMemberRequest(
                organization=org, member=pb.Member(email="nobody@example.com", role=pb.ROLE_OWNER)
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.NOT_FOUND,
    )
    err = await rpc_error(
        api.stub.CreateMember(
            pb.CreateMemberRequest(organization=org, member=pb.Member(user_id=alice.id)),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "member.role" in field_violations(err)
    listed = await api.stub.ListMembers(
        pb.ListMembersRequest(organization=org, page_size=2), metadata=owner.auth, timeout=10
    )
    assert len(listed.members) == 2
    assert listed.next_page_token
    rest = await api.stub.ListMembers(
        pb.ListMembersRequest(organization=org, page_size=2, page_token=listed.next_page_token),
        metadata=owner.auth,
        timeout=10,
    )
    emails = [m.email for m in (*listed.members, *rest.members)]
    assert emails == sorted([owner.email, alice.email, bob.email])
    updated = await api.stub.UpdateMember(
        pb.UpdateMemberRequest(
            member=pb.Member(
                organization=org, user_id=bob.id, role=pb.ROLE_ADMIN, etag=by_email.etag
            )
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert updated.role == pb.ROLE_ADMIN
    assert updated.etag != by_email.etag
    await rpc_error(
        api.stub.UpdateMember(
            pb.UpdateMemberRequest(
                member=pb.Member(
                    organization=org, user_id=bob.id, role=pb.ROLE_MEMBER, etag=by_email.etag
                )
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.ABORTED,
    )


async def test_the_last_owner_can_neither_leave_nor_be_demoted(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    for call in (
        api.stub.UpdateMember(
            pb.UpdateMemberRequest(
                member=pb.Member(organization=org, user_id=owner.id, role=pb.ROLE_ADMIN)
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        api.stub.DeleteMember(
            pb.DeleteMemberRequest(organization=org, user_id=owner.id),
            metadata=owner.auth,
            timeout=10,
        ),
    ):
        err = await rpc_error(call, Code.FAILED_PRECONDITION)
        assert error_info(err).reason == "LAST_OWNER"
    # With a second owner, the first may step down.
    second = await api.join(owner, org, pb.ROLE_OWNER)
    await api.stub.DeleteMember(
        pb.DeleteMemberRequest(organization=org, user_id=owner.id),
        metadata=owner.auth,
        timeout=10,
    )
    members = await api.stub.ListMembers(
        pb.ListMembersRequest(organization=org), metadata=second.auth, timeout=10
    )
    assert [m.user_id for m in members.members] == [second.id]


async def test_only_owners_grant_or_revoke_owner(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    admin = await api.join(owner, org, pb.ROLE_ADMIN)
    newcomer = await api.signup()
    err = await rpc_error(
        api.stub.CreateMember(
            pb.CreateMemberRequest(
                organization=org, member=pb.Member(user_id=newcomer.id, role=pb.ROLE_OWNER)
            ),
            metadata=admin.auth,
            timeout=10,
        ),
        Code.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "ROLE_TOO_LOW"
    for call in (
        api.stub.UpdateMember(
            pb.UpdateMemberRequest(
                member=pb.Member(organization=org, user_id=owner.id, role=pb.ROLE_VIEWER)
            ),
            metadata=admin.auth,
            timeout=10,
        ),
        api.stub.DeleteMember(
            pb.DeleteMemberRequest(organization=org, user_id=owner.id),
            metadata=admin.auth,
            timeout=10,
        ),
    ):
        await rpc_error(call, Code.PERMISSION_DENIED)


async def test_a_removed_member_is_locked_out_everywhere_and_anyone_may_leave(
    api: TenantApi,
) -> None:
    owner, org = await api.owner_of_new_org()
    viewer = await api.join(owner, org, pb.ROLE_VIEWER)
    leaver = await api.join(owner, org, pb.ROLE_VIEWER)
    assert await api.config_works(viewer.access, org)
    await api.stub.DeleteMember(
        pb.DeleteMemberRequest(organization=org, user_id=viewer.id),
        metadata=owner.auth,
        timeout=10,
    )
    await eventually(lambda: api.config_works(viewer.access, org), lambda ok: not ok)
    await rpc_error(api.refresh(viewer), Code.UNAUTHENTICATED)
    await rpc_error(api.login(viewer, org), Code.PERMISSION_DENIED)
    # A viewer cannot remove others, but may leave.
    await rpc_error(
        api.stub.DeleteMember(
            pb.DeleteMemberRequest(organization=org, user_id=owner.id),
            metadata=leaver.auth,
            timeout=10,
        ),
        Code.PERMISSION_DENIED,
    )
    await api.stub.DeleteMember(
        pb.DeleteMemberRequest(organization=org, user_id=leaver.id),
        metadata=leaver.auth,
        timeout=10,
    )


async def test_a_role_change_takes_effect_on_the_next_refresh(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    member = await api.join(owner, org, pb.ROLE_VIEWER)
    await api.stub.UpdateMember(
        pb.UpdateMemberRequest(
            member=pb.Member(organization=org, user_id=member.id, role=pb.ROLE_ADMIN)
        ),
        metadata=owner.auth,
        timeout=10,
    )
    # The old token (role viewer) is revoked; a fresh sign-in carries the new role.
    await eventually(lambda: api.config_works(member.access, org), lambda ok: not ok)
    await api.login(member, org)
    await api.stub.CreateMember(
        pb.CreateMemberRequest(
            organization=org,
            member=pb.Member(user_id=(await api.signup()).id, role=pb.ROLE_MEMBER),
        ),
        metadata=member.auth,
        timeout=10,
    )


# -- projects and notes ----------------------------------------------------------------


async def test_projects_and_notes_round_trip_with_pages_masks_and_etags(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    project = await api.stub.CreateProject(
        pb.CreateProjectRequest(
            organization=org, project=pb.Project(id="website", description="the site")
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert (project.display_name, project.description) == ("website", "the site")
    await rpc_error(
        api.stub.CreateProject(
            pb.CreateProjectRequest(organization=org, project=pb.Project(id="website")),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.ALREADY_EXISTS,
    )
    renamed = await api.stub.UpdateProject(
        pb.UpdateProjectRequest(
            project=pb.Project(
                organization=org, id="website", display_name="Web", etag=project.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert (renamed.display_name, renamed.description) == ("Web", "the site")
    notes = []
    for i in range(5):
        notes.append(
            await api.stub.CreateNote(
                pb.CreateNoteRequest(
                    organization=org, project="website", note=pb.Note(title=f"n{i}", body="b")
                ),
                metadata=owner.auth,
                timeout=10,
            )
        )
    assert notes[0].author_user_id == owner.id
    assert notes[0].project == "website"
    seen: list[str] = []
    token = ""
    while True:
        page = await api.stub.ListNotes(
            pb.ListNotesRequest(organization=org, project="website", page_size=2, page_token=token),
            metadata=owner.auth,
            timeout=10,
        )
        seen += [n.id for n in page.notes]
        token = page.next_page_token
        if not token:
            break
    assert seen == [n.id for n in reversed(notes)]  # newest first
    edited = await api.stub.UpdateNote(
        pb.UpdateNoteRequest(
            note=pb.Note(
                organization=org, project="website", id=notes[0].id, body="", etag=notes[0].etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["body"]),
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert (edited.title, edited.body) == ("n0", "")
    await rpc_error(
        api.stub.DeleteNote(
            pb.DeleteNoteRequest(
                organization=org, project="website", id=notes[0].id, etag=notes[0].etag
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.ABORTED,
    )
    await rpc_error(
        api.stub.CreateNote(
            pb.CreateNoteRequest(organization=org, project="nowhere", note=pb.Note(title="t")),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.NOT_FOUND,
    )
    err = await rpc_error(
        api.stub.CreateNote(
            pb.CreateNoteRequest(organization=org, project="website", note=pb.Note(title="")),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "note.title" in field_violations(err)
    # Deleting the project deletes its notes.
    await api.stub.DeleteProject(
        pb.DeleteProjectRequest(organization=org, id="website"), metadata=owner.auth, timeout=10
    )
    await rpc_error(
        api.stub.GetNote(
            pb.GetNoteRequest(organization=org, project="website", id=notes[1].id),
            metadata=owner.auth,
            timeout=10,
        ),
        Code.NOT_FOUND,
    )
    everything = await api.stub.ListNotes(
        pb.ListNotesRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert list(everything.notes) == []


async def test_a_retried_create_acts_once(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    await api.stub.CreateProject(
        pb.CreateProjectRequest(organization=org, project=pb.Project(id="p")),
        metadata=owner.auth,
        timeout=10,
    )
    request = pb.CreateNoteRequest(
        organization=org, project="p", note=pb.Note(title="once"), request_id=str(uuid.uuid4())
    )
    first = await api.stub.CreateNote(request, metadata=owner.auth, timeout=10)
    again = await api.stub.CreateNote(request, metadata=owner.auth, timeout=10)
    assert again.id == first.id
    listed = await api.stub.ListNotes(
        pb.ListNotesRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert [n.id for n in listed.notes] == [first.id]


# -- service-account keys --------------------------------------------------------------


async def test_a_key_token_is_shown_once_works_in_a_pod_and_dies_with_its_key(
    api: TenantApi, servers: dict[str, RunningServer]
) -> None:
    owner, org = await api.owner_of_new_org()
    request_id = str(uuid.uuid4())
    created = await create_key(
        api,
        owner,
        org,
        ["config:read"],
        key={"display_name": "worker"},
        ttl=duration_pb2.Duration(seconds=3600),
        request_id=request_id,
    )
    key, token = created.service_account_key, created.token
    assert key.scopes == ["config:read"]
    assert key.display_name == "worker"
    assert key.expire_time.seconds - key.create_time.seconds == 3600
    retried = await create_key(
        api,
        owner,
        org,
        ["config:read"],
        key={"display_name": "worker"},
        ttl=duration_pb2.Duration(seconds=3600),
        request_id=request_id,
    )
    assert (retried.service_account_key.id, retried.token) == (key.id, token)
    listed = await api.stub.ListServiceAccountKeys(
        pb.ListServiceAccountKeysRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert [k.id for k in listed.service_account_keys] == [key.id]
    assert token not in str(listed)
    # A pod's watcher runs on the key's token.
    target = f"127.0.0.1:{servers['config'].port}"
    async with AsyncConfigWatcher(target, org, token=token) as watcher:
        assert watcher.state is WatcherState.LIVE
        # The key reads configuration but writes nothing in TenantService.
        await rpc_error(
            api.stub.CreateProject(
                pb.CreateProjectRequest(organization=org, project=pb.Project(id="p")),
                metadata=bearer(token),
                timeout=10,
            ),
            Code.PERMISSION_DENIED,
        )
    await api.stub.DeleteServiceAccountKey(
        pb.DeleteServiceAccountKeyRequest(organization=org, id=key.id),
        metadata=owner.auth,
        timeout=10,
    )
    await eventually(lambda: api.config_works(token, org), lambda ok: not ok)


@pytest.mark.parametrize(
    ("scopes", "ttl", "field"),
    [
        ([], 0, "service_account_key.scopes"),
        (["org:admin"], 0, "service_account_key.scopes[0]"),
        (["org:read", "org:read"], 0, "service_account_key.scopes"),
        (["org:read"], 30, "ttl"),
        (["org:read"], 366 * 86400, "ttl"),
    ],
)
async def test_bad_keys_are_refused(
    api: TenantApi, scopes: list[str], ttl: int, field: str
) -> None:
    owner, org = await api.owner_of_new_org()
    err = await rpc_error(
        create_key(api, owner, org, scopes, ttl=duration_pb2.Duration(seconds=ttl)),
        Code.INVALID_ARGUMENT,
    )
    assert field in field_violations(err)


async def test_keys_cannot_manage_keys_or_act_beyond_their_scopes(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    writer = (await create_key(api, owner, org, ["org:read", "org:write"])).token
    project = await api.stub.CreateProject(
        pb.CreateProjectRequest(organization=org, project=pb.Project(id="by-key")),
        metadata=bearer(writer),
        timeout=10,
    )
    assert project.id == "by-key"
    err = await rpc_error(
        create_key(api, Person(pb.User(), "", access=writer), org, ["org:read"]),
        Code.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "USER_TOKEN_REQUIRED"


# -- the permission matrix and isolation -----------------------------------------------


@dataclasses.dataclass
class Scene:
    """An organization with a sacrificial member and project for one caller."""

    org: str
    victim: Person
    note_id: str
    key_id: str


Call = Callable[[TenantApi, Scene, tuple[tuple[str, str], ...]], Awaitable[Any]]


def _calls() -> dict[str, Call]:
    def t(**kw: Any) -> dict[str, Any]:
        return {"metadata": kw.pop("md"), "timeout": 10, **kw}

    return {
        "GetOrganization": lambda a, s, md: a.stub.GetOrganization(
            pb.GetOrganizationRequest(organization=s.org), **t(md=md)
        ),
        "UpdateOrganization": lambda a, s, md: a.stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=pb.Organization(slug=s.org, display_name="renamed")
            ),
            **t(md=md),
        ),
        "CreateMember": lambda a, s, md: a.stub.CreateMember(
            pb.CreateMemberRequest(
                organization=s.org,
                member=pb.Member(email="nobody-at-all@example.com", role=pb.ROLE_VIEWER),
            ),
            **t(md=md),
        ),
        "GetMember": lambda a, s, md: a.stub.GetMember(
            pb.GetMemberRequest(organization=s.org, user_id=s.victim.id), **t(md=md)
        ),
        "ListMembers": lambda a, s, md: a.stub.ListMembers(
            pb.ListMembersRequest(organization=s.org), **t(md=md)
        ),
        "UpdateMember": lambda a, s, md: a.stub.UpdateMember(
            pb.UpdateMemberRequest(
                member=pb.Member(organization=s.org, user_id=s.victim.id, role=pb.ROLE_MEMBER)
            ),
            **t(md=md),
        ),
        "DeleteMember": lambda a, s, md: a.stub.DeleteMember(
            pb.DeleteMemberRequest(organization=s.org, user_id=s.victim.id), **t(md=md)
        ),
        "CreateProject": lambda a, s, md: a.stub.CreateProject(
            pb.CreateProjectRequest(
                organization=s.org, project=pb.Project(id=f"p{uuid.uuid4().hex[:8]}")
            ),
            **t(md=md),
        ),
        "GetProject": lambda a, s, md: a.stub.GetProject(
            pb.GetProjectRequest(organization=s.org, id="base"), **t(md=md)
        ),
        "ListProjects": lambda a, s, md: a.stub.ListProjects(
            pb.ListProjectsRequest(organization=s.org), **t(md=md)
        ),
        "UpdateProject": lambda a, s, md: a.stub.UpdateProject(
            pb.UpdateProjectRequest(
                project=pb.Project(organization=s.org, id="base", description="d")
            ),
            **t(md=md),
        ),
        "DeleteProject": lambda a, s, md: a.stub.DeleteProject(
            pb.DeleteProjectRequest(organization=s.org, id="gone"), **t(md=md)
        ),
        "CreateNote": lambda a, s, md: a.stub.CreateNote(
            pb.CreateNoteRequest(organization=s.org, project="base", note=pb.Note(title="t")),
            **t(md=md),
        ),
        "GetNote": lambda a, s, md: a.stub.GetNote(
            pb.GetNoteRequest(organization=s.org, project="base", id=s.note_id), **t(md=md)
        ),
        "ListNotes": lambda a, s, md: a.stub.ListNotes(
            pb.ListNotesRequest(organization=s.org), **t(md=md)
        ),
        "UpdateNote": lambda a, s, md: a.stub.UpdateNote(
            pb.UpdateNoteRequest(
                note=pb.Note(organization=s.org, project="base", id=s.note_id, body="x")
            ),
            **t(md=md),
        ),
        "DeleteNote": lambda a, s, md: a.stub.DeleteNote(
            pb.DeleteNoteRequest(organization=s.org, project="base", id=str(uuid.uuid4())),
            **t(md=md),
        ),
        "CreateServiceAccountKey": lambda a, s, md: a.stub.CreateServiceAccountKey(
            pb.CreateServiceAccountKeyRequest(
                organization=s.org, service_account_key=pb.ServiceAccountKey(scopes=["org:read"])
            ),
            **t(md=md),
        ),
        "ListServiceAccountKeys": lambda a, s, md: a.stub.ListServiceAccountKeys(
            pb.ListServiceAccountKeysRequest(organization=s.org), **t(md=md)
        ),
        "DeleteServiceAccountKey": lambda a, s, md: a.stub.DeleteServiceAccountKey(
            pb.DeleteServiceAccountKeyRequest(organization=s.org, id=s.key_id), **t(md=md)
        ),
        # Last: it ends the organization.
        "DeleteOrganization": lambda a, s, md: a.stub.DeleteOrganization(
            pb.DeleteOrganizationRequest(organization=s.org), **t(md=md)
        ),
    }


CALLERS = ("owner", "admin", "member", "viewer", "key:read+write", "key:read", "other-org")


async def _scene(api: TenantApi, owner: Person, org: str) -> Scene:
    victim = await api.join(owner, org, pb.ROLE_VIEWER)
    for project in ("base", "gone"):
        await api.stub.CreateProject(
            pb.CreateProjectRequest(organization=org, project=pb.Project(id=project)),
            metadata=owner.auth,
            timeout=10,
        )
    note = await api.stub.CreateNote(
        pb.CreateNoteRequest(organization=org, project="base", note=pb.Note(title="n")),
        metadata=owner.auth,
        timeout=10,
    )
    key = await create_key(api, owner, org, ["org:read"])
    return Scene(org, victim, note.id, key.service_account_key.id)


def _allowed(caller: str, method: str) -> bool:
    rule = RULES[method]
    if caller == "other-org":
        return False
    if caller.startswith("key:"):
        scopes = {"org:read", "org:write"} if caller == "key:read+write" else {"org:read"}
        return rule.scope in scopes
    assert rule.role is not None
    return Role(caller).at_least(rule.role)


@pytest.mark.parametrize("caller", CALLERS)
async def test_permission_matrix(api: TenantApi, caller: str) -> None:
    """Every kind of caller against every organization-scoped RPC: allowed exactly
    where the matrix says, PERMISSION_DENIED everywhere else."""
    owner, org = await api.owner_of_new_org()
    scene = await _scene(api, owner, org)
    if caller in ROLES:
        token = (
            owner.access
            if caller == "owner"
            else (await api.join(owner, org, ROLES[caller])).access
        )
    elif caller.startswith("key:"):
        scopes = ["org:read", "org:write"] if caller == "key:read+write" else ["org:read"]
        token = (await create_key(api, owner, org, scopes)).token
    else:
        stranger, _ = await api.owner_of_new_org()
        token = stranger.access
    calls = _calls()
    assert set(calls) == set(RULES) - {
        "GetUser",
        "Logout",
        "CreateOrganization",
        "ListOrganizations",
    }
    for method, call in calls.items():
        try:
            await call(api, scene, bearer(token))
            code = Code.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            reason = error_info(exc).reason
        if _allowed(caller, method):
            assert code != Code.PERMISSION_DENIED, f"{caller} {method}: {reason}"
            assert code in (Code.OK, Code.NOT_FOUND), f"{caller} {method}: {code}"
        else:
            assert code == Code.PERMISSION_DENIED, f"{caller} {method}: {code}"
            if caller == "other-org":
                assert reason == "WRONG_ORGANIZATION", method


async def test_key_lifetimes_are_bounded(api: TenantApi) -> None:
    owner, org = await api.owner_of_new_org()
    default = (await create_key(api, owner, org, ["org:read"])).service_account_key
    lifetime = default.expire_time.ToDatetime() - default.create_time.ToDatetime()
    assert lifetime == dt.timedelta(days=90)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda org: ("CreateProject", pb.CreateProjectRequest(organization=org)), "project.id"),
        (
            lambda org: (
                "CreateProject",
                pb.CreateProjectRequest(organization=org, project=pb.Project(id="Not_A_Label")),
            ),
            "project.id",
        ),
        (
            lambda org: (
                "CreateProject",
                pb.CreateProjectRequest(
                    organization=org, project=pb.Project(id="p", description="x" * 2001)
                ),
            ),
            "project.description",
        ),
        (
            lambda org: (
                "CreateProject",
                pb.CreateProjectRequest(
                    organization=org, project=pb.Project(id="p", display_name="a\x00b")
                ),
            ),
            "project.display_name",
        ),
        (
            lambda org: (
                "CreateNote",
                pb.CreateNoteRequest(
                    organization=org, project="base", note=pb.Note(title="x" * 201)
                ),
            ),
            "note.title",
        ),
        (
            lambda org: (
                "CreateNote",
                pb.CreateNoteRequest(
                    organization=org, project="base", note=pb.Note(title="t", body="b" * 100_001)
                ),
            ),
            "note.body",
        ),
        (
            lambda org: (
                "CreateMember",
                pb.CreateMemberRequest(
                    organization=org, member=pb.Member(user_id="nope", role=pb.ROLE_VIEWER)
                ),
            ),
            "member.user_id",
        ),
        (
            lambda org: (
                "CreateMember",
                pb.CreateMemberRequest(
                    organization=org, member=pb.Member(email="not-an-email", role=pb.ROLE_VIEWER)
                ),
            ),
            "member.email",
        ),
        (
            lambda org: (
                "CreateProject",
                pb.CreateProjectRequest(
                    organization=org, project=pb.Project(id="p"), request_id="not-a-uuid"
                ),
            ),
            "request_id",
        ),
        (
            lambda org: ("ListProjects", pb.ListProjectsRequest(organization=org, page_size=-1)),
            "page_size",
        ),
        (
            lambda org: (
                "UpdateProject",
                pb.UpdateProjectRequest(
                    project=pb.Project(organization=org, id="base"),
                    update_mask=field_mask_pb2.FieldMask(paths=["id"]),
                ),
            ),
            "update_mask",
        ),
    ],
)
async def test_each_invalid_field_is_named_and_nothing_is_written(
    api: TenantApi, make: Callable[[str], tuple[str, Any]], field: str
) -> None:
    owner, org = await api.owner_of_new_org()
    await api.stub.CreateProject(
        pb.CreateProjectRequest(organization=org, project=pb.Project(id="base")),
        metadata=owner.auth,
        timeout=10,
    )
    method, request = make(org)
    err = await rpc_error(
        getattr(api.stub, method)(request, metadata=owner.auth, timeout=10), Code.INVALID_ARGUMENT
    )
    assert field in field_violations(err), field_violations(err)
    projects = await api.stub.ListProjects(
        pb.ListProjectsRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert [p.id for p in projects.projects] == ["base"]
    notes = await api.stub.ListNotes(
        pb.ListNotesRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert list(notes.notes) == []
    members = await api.stub.ListMembers(
        pb.ListMembersRequest(organization=org), metadata=owner.auth, timeout=10
    )
    assert [m.user_id for m in members.members] == [owner.id]


async def test_pages_of_big_notes_stay_receivable_by_a_default_client(api: TenantApi) -> None:
    """30 notes of 100,000 characters are 3 MB: a page of 1000 must still fit the 4 MiB
    a default client accepts, and every note must come out over the pages."""
    owner, org = await api.owner_of_new_org()
    await api.stub.CreateProject(
        pb.CreateProjectRequest(organization=org, project=pb.Project(id="big")),
        metadata=owner.auth,
        timeout=10,
    )
    created = set()
    for i in range(30):
        note = await api.stub.CreateNote(
            pb.CreateNoteRequest(
                organization=org, project="big", note=pb.Note(title=f"n{i}", body="é" * 100_000)
            ),
            metadata=owner.auth,
            timeout=10,
        )
        created.add(note.id)
    seen: set[str] = set()
    token, pages = "", 0
    while True:
        page = await api.stub.ListNotes(
            pb.ListNotesRequest(organization=org, page_size=1000, page_token=token),
            metadata=owner.auth,
            timeout=10,
        )
        assert page.ByteSize() < 4 * 1024 * 1024
        seen |= {n.id for n in page.notes}
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == created
    assert pages > 1


async def test_the_environment_grants_exactly_the_current_owners(
    api: TenantApi, servers: dict[str, RunningServer], keys: Keys
) -> None:
    # The namespace's RoleBinding follows the owners: a promoted member gains it, an
    # owner who leaves loses it, without anyone asking the Provisioner.
    owner, org = await api.owner_of_new_org()
    second = await api.join(owner, org, pb.ROLE_ADMIN)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['provisioner'].port}") as channel:
        provisioner: Any = provisioner_service_pb2_grpc.ProvisionerServiceStub(channel)

        async def owners() -> list[str]:
            env = await provisioner.GetTenantEnvironment(
                ppb.GetTenantEnvironmentRequest(organization=org),
                metadata=bearer(keys.token(org, "viewer")),
                timeout=10,
            )
            return sorted(env.owners)

        assert await owners() == [owner.email]
        await api.stub.UpdateMember(
            pb.UpdateMemberRequest(
                member=pb.Member(organization=org, user_id=second.id, role=pb.ROLE_OWNER)
            ),
            metadata=owner.auth,
            timeout=10,
        )
        both = sorted([owner.email, second.email])
        assert await eventually(owners, lambda o: o == both) == both
        await api.stub.DeleteMember(
            pb.DeleteMemberRequest(organization=org, user_id=owner.id),
            metadata=owner.auth,
            timeout=10,
        )
        assert await eventually(owners, lambda o: o == [second.email]) == [second.email]
