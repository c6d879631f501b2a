"""The SDK's ProvisionerClient against a real server (GitOps backend): an environment's
life through typed calls, paging, typed errors and the sync face; and the sync face
of ConfigClient."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from agentready import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProvisionerClient,
    SyncConfigClient,
    SyncProvisionerClient,
    Unauthenticated,
    Unavailable,
)
from agentready.provisioner.client import state_name

from servicekit.devstack import free_port
from servicekit.server import RunningServer
from tests.conftest import Keys

Servers = dict[str, RunningServer]


def new_org() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def address(servers: Servers, name: str) -> str:
    return f"127.0.0.1:{servers[name].port}"


async def test_an_environment_through_typed_calls(servers: Servers, keys: Keys) -> None:
    target = address(servers, "provisioner")
    organizations = [new_org() for _ in range(3)]
    for organization in organizations:
        async with ProvisionerClient(target, token=keys.token(organization)) as client:
            environment = await client.provision(
                organization, owners=["user-1"], labels={"tier": "free"}
            )
            assert environment.namespace == f"org-{organization}"
    organization = organizations[0]
    async with ProvisionerClient(target, token=keys.token(organization)) as client:
        environment = await client.get_environment(organization)
        assert state_name(environment.state) == "ready"
        assert dict(environment.labels) == {"tier": "free"}
        updated = await client.update_quota(organization, cpu="4", reason="smaller")
        assert updated.quota.cpu == "4"
        assert updated.quota.memory == environment.quota.memory  # the others stay
        history = [h async for h in client.list_quota_history(organization, page_size=1)]
        assert [h.new_quota.cpu for h in history][-1] == "4"
        assert len(history) == 2  # the initial quota, then the change
        reconciled = await client.reconcile(organization)
        assert reconciled.organization == organization
        with pytest.raises(InvalidArgument) as invalid:
            await client.update_quota(organization, cpu="lots")
        assert "quota.cpu" in invalid.value.field_violations
        deleting = await client.deprovision(organization, etag=reconciled.etag)
        assert state_name(deleting.state) in ("deleting", "deleted")
    operator = keys.token(None, "operator")
    async with ProvisionerClient(target, token=operator) as client:
        listed = {e.organization async for e in client.list_environments(page_size=1)}
        assert set(organizations) <= listed
        ready = {e.organization async for e in client.list_environments(state="ready")}
        assert organizations[1] in ready
        assert organization not in ready


async def test_errors_are_typed(servers: Servers, keys: Keys) -> None:
    target = address(servers, "provisioner")
    organization = new_org()
    async with ProvisionerClient(target, token=keys.token(organization)) as client:
        with pytest.raises(NotFound):
            await client.get_environment(organization)
        with pytest.raises(PermissionDenied):  # another organization's
            await client.get_environment(new_org())
        with pytest.raises(PermissionDenied):  # spans organizations: operators only
            _ = [e async for e in client.list_environments()]
    async with ProvisionerClient(target, token=keys.token(organization, "viewer")) as viewer:
        with pytest.raises(PermissionDenied):
            await viewer.provision(organization)
    async with ProvisionerClient(target, token="garbage") as garbage:
        with pytest.raises(Unauthenticated):
            await garbage.get_environment(organization)
    async with ProvisionerClient(f"127.0.0.1:{free_port()}", token="x", attempts=1) as down:
        with pytest.raises(Unavailable):
            await down.get_environment(organization)


async def test_the_sync_faces(servers: Servers, keys: Keys) -> None:
    organization = new_org()
    token = keys.token(organization)

    def in_plain_code() -> tuple[str, list[int], int, list[str]]:
        with SyncProvisionerClient(address(servers, "provisioner"), token=token) as client:
            client.provision(organization, owners=["user-1"])
            history = [h.new_quota.cpu for h in client.list_quota_history(organization)]
            state = state_name(client.get_environment(organization).state)
        with SyncConfigClient(address(servers, "config"), organization, token=token) as config:
            revisions = [config.set("ai", f"k{i}", i).revision for i in range(3)]
            value = config.get_value("ai", "k2")
            keys_listed = [e.key for e in config.list_configs("ai")]
            usage = config.usage()
            revision, clients = config.clients()
        assert history
        assert (usage.keys, usage.revision) == (3, 3)
        assert (revision, clients) == (3, [])
        return state, revisions, value, keys_listed

    state, revisions, value, keys_listed = await asyncio.to_thread(in_plain_code)
    assert (state, revisions, value, keys_listed) == ("ready", [1, 2, 3], 2, ["k0", "k1", "k2"])
