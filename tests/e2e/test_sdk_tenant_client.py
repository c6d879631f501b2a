"""The SDK's TenantClient and credentials against real servers: every resource through
typed calls, paging, typed errors, the sync face, a login session that refreshes
across an access-token expiry (never two refreshes at once) and logs out on close,
and a pod's token from its environment."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from pathlib import Path

import grpc
import pytest
from agentready import (
    AlreadyExists,
    AsyncConfigWatcher,
    ConfigClient,
    Conflict,
    EnvironmentToken,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Session,
    SyncSession,
    SyncTenantClient,
    TenantClient,
    Unauthenticated,
    Unavailable,
)
from agentready.tenant.client import role_name
from agentready.tenant.v1 import tenant_pb2
from google.protobuf import timestamp_pb2

from servicekit.devstack import free_port
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import PASSWORD, TenantApi, new_email, new_slug

Servers = dict[str, RunningServer]


def address(servers: Servers, name: str) -> str:
    return f"127.0.0.1:{servers[name].port}"


async def signup(servers: Servers) -> str:
    """A fresh user's email (password PASSWORD)."""
    async with TenantClient(address(servers, "tenant")) as public:
        email = new_email()
        user = await public.create_user(email, PASSWORD, display_name="Ada")
        assert user.email == email
        assert user.id
        return email


async def test_every_resource_through_typed_calls(servers: Servers) -> None:
    email = await signup(servers)
    tenant = address(servers, "tenant")
    async with (
        await Session.login(tenant, email, PASSWORD) as session,
        TenantClient(tenant, token=session) as client,
    ):
        assert (await client.get_user()).email == email
        slugs = [new_slug() for _ in range(3)]
        for slug in slugs:
            org = await client.create_organization(slug, display_name=slug.upper())
            assert org.slug == slug
        # page_size 1: the iterator pages through all of them.
        listed = [o.slug async for o in client.list_organizations(page_size=1)]
        assert sorted(listed) == sorted(slugs)

        org_slug = slugs[0]
        await session.switch(org_slug)  # scope the tokens to the organization
        org = await client.update_organization(org_slug, display_name="Acme", labels={"t": "1"})
        assert (org.display_name, dict(org.labels)) == ("Acme", {"t": "1"})
        with pytest.raises(Conflict):
            await client.update_organization(org_slug, display_name="X", etag='"stale"')

        friend = await signup(servers)
        member = await client.add_member(org_slug, email=friend, role="viewer")
        assert role_name(member.role) == "viewer"
        with pytest.raises(AlreadyExists):
            await client.add_member(org_slug, email=friend, role="viewer")
        updated = await client.update_member(org_slug, member.user_id, role="admin")
        assert role_name(updated.role) == "admin"
        roles = {role_name(m.role) async for m in client.list_members(org_slug, page_size=1)}
        assert roles == {"owner", "admin"}
        owner = (await client.get_user()).id
        with pytest.raises(FailedPrecondition):  # the last owner stays
            await client.remove_member(org_slug, owner)
        await client.remove_member(org_slug, member.user_id)
        with pytest.raises(NotFound):
            await client.get_member(org_slug, member.user_id)

        project = await client.create_project(org_slug, "website", display_name="Web")
        assert project.id == "website"
        project = await client.update_project(org_slug, "website", description="the site")
        assert (await client.get_project(org_slug, "website")).description == "the site"
        note = await client.create_note(org_slug, "website", title="hello", body="world")
        note = await client.update_note(org_slug, "website", note.id, body="there")
        assert (await client.get_note(org_slug, "website", note.id)).body == "there"
        assert [n.id async for n in client.list_notes(org_slug)] == [note.id]
        await client.delete_note(org_slug, "website", note.id)
        assert [p.id async for p in client.list_projects(org_slug)] == ["website"]
        await client.delete_project(org_slug, "website", etag=project.etag)
        with pytest.raises(NotFound):
            await client.get_project(org_slug, "website")

        created = await client.create_service_account_key(
            org_slug, scopes=["config:read"], display_name="pods", ttl=dt.timedelta(days=1)
        )
        assert created.token
        keys_listed = [k.id async for k in client.list_service_account_keys(org_slug)]
        assert keys_listed == [created.service_account_key.id]
        await client.delete_service_account_key(org_slug, created.service_account_key.id)
        assert [k async for k in client.list_service_account_keys(org_slug)] == []

        await session.switch(slugs[2])
        await client.delete_organization(slugs[2])
        # Every token of a DELETING organization is refused from then on.
        with pytest.raises(Unauthenticated) as revoked:
            await client.get_organization(slugs[2])
        assert revoked.value.reason == "TOKEN_REVOKED"


async def test_errors_are_typed(servers: Servers, keys: Keys) -> None:
    tenant = address(servers, "tenant")
    email = await signup(servers)
    async with TenantClient(tenant) as public:
        with pytest.raises(AlreadyExists):
            await public.create_user(email, PASSWORD)
        with pytest.raises(InvalidArgument) as invalid:
            await public.create_user(new_email(), "short")
        assert invalid.value.field_violations
        assert (await public.get_jwks()).keys
    with pytest.raises(Unauthenticated):
        await Session.login(tenant, email, "wrong password")
    async with (
        await Session.login(tenant, email, PASSWORD) as session,
        TenantClient(tenant, token=session) as client,
    ):
        with pytest.raises(InvalidArgument) as bad_slug:
            await client.create_organization("No Such Slug!")
        assert bad_slug.value.field_violations
        slug = new_slug()
        await client.create_organization(slug)
        with pytest.raises(AlreadyExists):
            await client.create_organization(slug)
        with pytest.raises(PermissionDenied):  # a token not scoped to the organization
            await client.get_project(slug, "x")
        await session.switch(slug)
        with pytest.raises(NotFound):
            await client.get_project(slug, "missing")
    # A viewer may read, not write.
    viewer_token = keys.token(slug, "viewer")
    async with TenantClient(tenant, token=viewer_token) as viewer:
        with pytest.raises(PermissionDenied) as denied:
            await viewer.create_project(slug, "p")
        assert denied.value.reason
    async with TenantClient(tenant, token="not-a-token") as garbage:
        with pytest.raises(Unauthenticated):
            await garbage.get_user()
    async with TenantClient(f"127.0.0.1:{free_port()}", token="x", attempts=1) as down:
        with pytest.raises(Unavailable):
            await down.get_user()


async def test_the_sync_face_runs_the_same_client(servers: Servers) -> None:
    tenant = address(servers, "tenant")
    email = await signup(servers)

    def in_plain_code() -> tuple[str, list[str], str]:
        with (
            SyncSession.login(tenant, email, PASSWORD) as session,
            SyncTenantClient(tenant, token=session) as client,
        ):
            slug = new_slug()
            client.create_organization(slug)
            session.switch(slug)
            client.create_project(slug, "one")
            client.create_project(slug, "two")
            projects = [p.id for p in client.list_projects(slug, page_size=1)]
            try:
                client.get_project(slug, "three")
            except NotFound as error:
                missing = type(error).__name__
            return client.get_user().email, projects, missing

    assert await asyncio.to_thread(in_plain_code) == (email, ["one", "two"], "NotFound")


def expired_pair(
    keys: Keys, user_id: str, organization: str, refresh: str, *, believed: bool
) -> tenant_pb2.TokenPair:
    """A token pair whose access token expired an hour ago (the refresh token is real).
    ``believed``: the pair says so; else it claims an hour of life left, so only the
    server notices."""
    now = dt.datetime.now(dt.UTC)
    access = keys.token(organization, "owner", subject=user_id, now=now - dt.timedelta(hours=2))
    expiry = timestamp_pb2.Timestamp()
    expiry.FromDatetime(now - dt.timedelta(hours=1) if believed else now + dt.timedelta(hours=1))
    return tenant_pb2.TokenPair(
        access_token=access, refresh_token=refresh, access_token_expire_time=expiry
    )


@pytest.mark.parametrize("believed", [True, False], ids=["known-expiry", "server-refuses"])
async def test_a_session_refreshes_across_expiry_once_for_many_callers(
    servers: Servers, keys: Keys, believed: bool
) -> None:
    tenant = address(servers, "tenant")
    async with grpc.aio.insecure_channel(tenant) as channel:
        # A login as a CLI would have stored it: a real refresh token ...
        api = TenantApi(channel)
        person, slug = await api.owner_of_new_org()
    user_id, refresh = person.id, person.refresh
    saved: list[tenant_pb2.TokenPair] = []
    # ... and an access token long expired.
    pair = expired_pair(keys, user_id, slug, refresh, believed=believed)
    session = Session.resume(tenant, pair, organization=slug, on_refresh=saved.append)
    try:
        async with (
            TenantClient(tenant, token=session) as client,
            ConfigClient(address(servers, "config"), slug, token=session) as config,
        ):
            # Twenty callers at once: one refresh (a second would present a spent refresh
            # token, which TenantService answers by revoking the whole session).
            results = await asyncio.gather(
                *(client.get_user() for _ in range(10)),
                *(config.get_value("ai", "k", default="unset") for _ in range(10)),
            )
            assert [r.id for r in results[:10]] == [user_id] * 10
            assert results[10:] == ["unset"] * 10
            assert session.refreshes == 1
            assert len(saved) == 1
            assert saved[0].access_token == session.tokens.access_token
            assert session.tokens.refresh_token != refresh
    finally:
        await session.close()
    # Closing logged out: the last access token and refresh token are refused.
    async with TenantClient(tenant, token=session.tokens.access_token) as after:
        with pytest.raises(Unauthenticated) as revoked:
            await after.get_user()
        assert revoked.value.reason == "TOKEN_REVOKED"
    dead = Session.resume(
        tenant, expired_pair(keys, user_id, slug, saved[0].refresh_token, believed=True)
    )
    with pytest.raises(Unauthenticated):
        await dead.token()
    await dead.close()


async def test_a_proactive_refresh_happens_before_expiry(servers: Servers) -> None:
    tenant = address(servers, "tenant")
    email = await signup(servers)
    now = [0.0]
    session = await Session.login(tenant, email, PASSWORD, clock=lambda: now[0])
    try:
        expiry = session.tokens.access_token_expire_time.ToDatetime(tzinfo=dt.UTC).timestamp()
        now[0] = expiry - 3600  # plenty of time left: no refresh
        first = await session.token()
        assert session.refreshes == 0
        now[0] = expiry - 30  # within the margin (60 s): refreshed before use
        second = await session.token()
        assert session.refreshes == 1
        assert second != first
        async with TenantClient(tenant, token=session) as client:
            assert (await client.get_user()).email == email
    finally:
        await session.close()
    with pytest.raises(Unauthenticated):
        await session.token()


async def test_a_pod_token_comes_from_its_environment(
    servers: Servers, keys: Keys, tmp_path: Path
) -> None:
    slug = f"env-{uuid.uuid4().hex[:8]}"
    token_file = tmp_path / "token"
    token_file.write_text(keys.token(slug, "viewer") + "\n")
    credentials = EnvironmentToken(environ={"AGENTREADY_TOKEN_FILE": str(token_file)})
    async with ConfigClient(address(servers, "config"), slug, token=credentials) as config:
        assert await config.get_value("ai", "k", "none") == "none"
        with pytest.raises(PermissionDenied):  # a viewer's token
            await config.set("ai", "k", 1)
        token_file.write_text(keys.token(slug, "owner"))  # the secret rotates
        # The file's modification time decides; make sure the rewrite is seen as new.
        stat = token_file.stat()
        os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        await config.set("ai", "k", 1)
    literal = EnvironmentToken(environ={"AGENTREADY_TOKEN": keys.token(slug, "viewer")})
    async with ConfigClient(address(servers, "config"), slug, token=literal) as config:
        assert await config.get_value("ai", "k") == 1
    with pytest.raises(Unauthenticated):
        EnvironmentToken(environ={}).current()


async def test_a_watcher_on_a_session_gets_past_an_expired_token(
    servers: Servers, keys: Keys
) -> None:
    tenant = address(servers, "tenant")
    async with grpc.aio.insecure_channel(tenant) as channel:
        person, slug = await TenantApi(channel).owner_of_new_org()
    # The session believes its access token is fresh; the server finds it expired.
    pair = expired_pair(keys, person.id, slug, person.refresh, believed=False)
    session = Session.resume(tenant, pair, organization=slug)
    try:
        async with AsyncConfigWatcher(
            address(servers, "config"), slug, token=session, backoff_max=30
        ) as watcher:
            # Refused at the door, it refreshes at once instead of waiting 30 s.
            assert watcher.revision == 0
        assert session.refreshes == 1
    finally:
        await session.close()
