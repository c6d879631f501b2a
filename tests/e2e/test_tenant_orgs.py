"""TenantService end to end: organizations (create, get, list, update, delete) and the
sagas behind them, against the in-process suite (GitOps backend)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agentready.config.v1 import config_pb2
from agentready.tenant.v1 import tenant_pb2 as pb
from google.protobuf import field_mask_pb2

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import (
    Code,
    TenantApi,
    bearer,
    eventually,
    new_slug,
    rpc_error,
)
from tests.rpcerrors import error_info, field_violations

ACTIVE, DELETING, DELETED = (
    pb.Organization.STATE_ACTIVE,
    pb.Organization.STATE_DELETING,
    pb.Organization.STATE_DELETED,
)


@pytest.fixture(scope="module")
async def api(servers: dict[str, RunningServer]) -> AsyncIterator[TenantApi]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['tenant'].port}") as tenant,
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as config,
    ):
        yield TenantApi(tenant, config)


async def test_create_provisions_end_to_end_and_makes_the_caller_owner(
    api: TenantApi, servers: dict[str, RunningServer], server_env: dict[str, str]
) -> None:
    person = await api.login(await api.signup())
    slug = new_slug()
    org = await api.create_org(person, slug, display_name="Acme", labels={"tier": "gold"})
    assert org.state == ACTIVE  # the GitOps backend is READY at once
    assert (org.slug, org.display_name, dict(org.labels)) == (slug, "Acme", {"tier": "gold"})
    assert org.uid
    assert org.etag
    assert not org.state_reason
    assert not org.HasField("delete_time")
    # The environment exists: its Kustomize directory, with the owner bound.
    folder = Path(server_env["PROVISIONER_GITOPS_DIR"]) / f"org-{slug}"
    assert (folder / "kustomization.yaml").is_file()
    assert person.email in (folder / "rolebinding.yaml").read_text()
    await api.login(person, slug)
    members = await api.stub.ListMembers(
        pb.ListMembersRequest(organization=slug), metadata=person.auth, timeout=10
    )
    assert [(m.user_id, m.role) for m in members.members] == [(person.id, pb.ROLE_OWNER)]
    got = await api.stub.GetOrganization(
        pb.GetOrganizationRequest(organization=slug), metadata=person.auth, timeout=10
    )
    assert got == org


async def test_display_name_defaults_to_the_slug(api: TenantApi) -> None:
    person = await api.login(await api.signup())
    org = await api.create_org(person)
    assert org.display_name == org.slug


@pytest.mark.parametrize(
    ("slug", "fields", "violation"),
    [
        ("", {}, "organization.slug"),
        ("ab", {}, "organization.slug"),
        ("Upper-Case", {}, "organization.slug"),
        ("1starts-with-digit", {}, "organization.slug"),
        ("ends-with-dash-", {}, "organization.slug"),
        ("a" * 41, {}, "organization.slug"),
        ("good-slug\n", {}, "organization.slug"),
        (None, {"display_name": "x" * 101}, "organization.display_name"),
        (None, {"labels": {"bad key!": "v"}}, "organization.labels[bad key!]"),
        (None, {"labels": {"k": "bad value!"}}, "organization.labels[k]"),
    ],
)
async def test_create_refuses_bad_fields_and_writes_nothing(
    api: TenantApi, slug: str | None, fields: dict[str, object], violation: str
) -> None:
    person = await api.login(await api.signup())
    name = new_slug() if slug is None else slug
    err = await rpc_error(api.create_org(person, name, **fields), Code.INVALID_ARGUMENT)
    assert violation in field_violations(err)
    listed = await api.stub.ListOrganizations(
        pb.ListOrganizationsRequest(), metadata=person.auth, timeout=10
    )
    assert list(listed.organizations) == []


async def test_slugs_are_never_reused_and_reserved_ones_are_refused(api: TenantApi) -> None:
    person = await api.login(await api.signup())
    org = await api.create_org(person)
    other = await api.login(await api.signup())
    err = await rpc_error(api.create_org(other, org.slug), Code.ALREADY_EXISTS)
    assert error_info(err).reason == "ALREADY_EXISTS"
    await rpc_error(api.create_org(other, "platform"), Code.ALREADY_EXISTS)


async def test_the_same_request_id_creates_one_organization(api: TenantApi) -> None:
    person = await api.login(await api.signup())
    request = pb.CreateOrganizationRequest(
        organization=pb.Organization(slug=new_slug()), request_id=str(uuid.uuid4())
    )
    first = await api.stub.CreateOrganization(request, metadata=person.auth, timeout=10)
    again = await api.stub.CreateOrganization(request, metadata=person.auth, timeout=10)
    assert again.uid == first.uid
    # Another user cannot replay (or learn about) this request id.
    thief = await api.login(await api.signup())
    err = await rpc_error(
        api.stub.CreateOrganization(request, metadata=thief.auth, timeout=10),
        Code.INVALID_ARGUMENT,
    )
    assert "request_id" in field_violations(err)


async def test_list_shows_only_the_callers_organizations_in_pages(api: TenantApi) -> None:
    person = await api.login(await api.signup())
    mine = sorted([(await api.create_org(person, new_slug("l"))).slug for _ in range(3)])
    stranger = await api.login(await api.signup())
    await api.create_org(stranger)
    seen: list[str] = []
    token = ""
    while True:
        page = await api.stub.ListOrganizations(
            pb.ListOrganizationsRequest(page_size=2, page_token=token),
            metadata=person.auth,
            timeout=10,
        )
        assert len(page.organizations) <= 2
        seen += [o.slug for o in page.organizations]
        token = page.next_page_token
        if not token:
            break
    assert seen == mine
    err = await rpc_error(
        api.stub.ListOrganizations(
            pb.ListOrganizationsRequest(page_size=3, page_token="garbage"),
            metadata=person.auth,
            timeout=10,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "page_token" in field_violations(err)


async def test_update_with_a_mask_and_an_etag(api: TenantApi) -> None:
    person, slug = await api.owner_of_new_org(display_name="Before", labels={"a": "1"})
    org = await api.stub.GetOrganization(
        pb.GetOrganizationRequest(organization=slug), metadata=person.auth, timeout=10
    )
    updated = await api.stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization=pb.Organization(slug=slug, display_name="After", etag=org.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    assert (updated.display_name, dict(updated.labels)) == ("After", {"a": "1"})
    assert updated.etag != org.etag
    err = await rpc_error(
        api.stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=pb.Organization(slug=slug, display_name="Stale", etag=org.etag)
            ),
            metadata=person.auth,
            timeout=10,
        ),
        Code.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    cleared = await api.stub.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization=pb.Organization(slug=slug),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        ),
        metadata=person.auth,
        timeout=10,
    )
    assert dict(cleared.labels) == {}
    assert cleared.display_name == "After"
    err = await rpc_error(
        api.stub.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=pb.Organization(slug=slug),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            ),
            metadata=person.auth,
            timeout=10,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert "update_mask" in field_violations(err)


async def test_delete_revokes_everything_purges_config_and_keeps_the_slug(
    api: TenantApi, keys: Keys, server_env: dict[str, str]
) -> None:
    person, slug = await api.owner_of_new_org()
    assert api.config is not None
    await api.config.SetConfig(
        config_pb2.SetConfigRequest(
            organization=slug,
            service="ai",
            key="threshold",
            value=config_pb2.Value(int_value=5),
        ),
        metadata=person.auth,
        timeout=10,
    )
    org = await api.stub.GetOrganization(
        pb.GetOrganizationRequest(organization=slug), metadata=person.auth, timeout=10
    )
    await rpc_error(
        api.stub.DeleteOrganization(
            pb.DeleteOrganizationRequest(organization=slug, etag='W/"999"'),
            metadata=person.auth,
            timeout=10,
        ),
        Code.ABORTED,
    )
    await api.stub.DeleteOrganization(
        pb.DeleteOrganizationRequest(organization=slug, etag=org.etag),
        metadata=person.auth,
        timeout=10,
    )
    # Its tokens stop working at once here and within a second at ConfigService.
    err = await rpc_error(
        api.stub.GetOrganization(
            pb.GetOrganizationRequest(organization=slug), metadata=person.auth, timeout=10
        ),
        Code.UNAUTHENTICATED,
    )
    assert error_info(err).reason == "TOKEN_REVOKED"
    await eventually(lambda: api.config_works(person.access, slug), lambda ok: not ok)
    # Signing in to it again is refused; the slug stays taken.
    await rpc_error(api.login(person, slug), Code.PERMISSION_DENIED)
    await api.login(person)

    async def listed() -> list[pb.Organization]:
        reply = await api.stub.ListOrganizations(
            pb.ListOrganizationsRequest(show_deleted=True), metadata=person.auth, timeout=10
        )
        return list(reply.organizations)

    (gone,) = await eventually(listed, lambda orgs: orgs[0].state == DELETED)
    assert gone.slug == slug
    assert gone.HasField("delete_time")
    hidden = await api.stub.ListOrganizations(
        pb.ListOrganizationsRequest(), metadata=person.auth, timeout=10
    )
    assert list(hidden.organizations) == []
    await rpc_error(api.create_org(person, slug), Code.ALREADY_EXISTS)
    # The environment's folder and the configuration are gone.
    assert not (Path(server_env["PROVISIONER_GITOPS_DIR"]) / f"org-{slug}").exists()
    operator = keys.token(None, "operator", subject="operator")
    configs = await api.config.ListConfigs(
        config_pb2.ListConfigsRequest(organization=slug), metadata=bearer(operator), timeout=10
    )
    assert list(configs.configs) == []
    assert configs.revision == 0


async def test_purge_config_is_for_the_platform_only(api: TenantApi, keys: Keys) -> None:
    person, slug = await api.owner_of_new_org()
    assert api.config is not None
    err = await rpc_error(
        api.config.PurgeConfig(
            config_pb2.PurgeConfigRequest(organization=slug), metadata=person.auth, timeout=10
        ),
        Code.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "OPERATOR_REQUIRED"
    operator = keys.token(None, "operator", subject="operator")
    err = await rpc_error(
        api.config.PurgeConfig(
            config_pb2.PurgeConfigRequest(organization=slug), metadata=bearer(operator), timeout=10
        ),
        Code.PERMISSION_DENIED,
    )
    assert error_info(err).reason == "MISSING_SCOPE"
