"""An example consumer of the agentready SDK that uses every client, asyncio and sync.

It is type-checked with ``mypy --strict`` by ``make lint`` (so the SDK's public types
stay usable by strict consumers) and run against real servers by the test suite
(``tests/e2e/test_sdk_example.py``), so it never rots.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os

from agentready import (
    AsyncConfigWatcher,
    ConfigClient,
    ConfigEvent,
    ConfigWatcher,
    EnvironmentToken,
    NotFound,
    ProvisionerClient,
    Session,
    SyncConfigClient,
    SyncProvisionerClient,
    SyncSession,
    SyncTenantClient,
    TenantClient,
)
from agentready.provisioner.client import state_name
from agentready.tenant.client import role_name


async def onboard(
    tenant: str, config: str, provisioner: str, *, email: str, password: str, slug: str
) -> str:
    """Signs up, creates an organization, configures it and reads the config hot.

    Returns:
        A service-account token for the organization's pods (``config:read``).
    """
    async with TenantClient(tenant) as public:
        await public.create_user(email, password, display_name="Example")
    async with await Session.login(tenant, email, password) as session:
        async with TenantClient(tenant, token=session) as tenants:
            org = await tenants.create_organization(slug, display_name="Example Inc.")
            await session.switch(org.slug)  # tokens scoped to the new organization
            members = [role_name(m.role) async for m in tenants.list_members(org.slug)]
            assert members == ["owner"]
            key = await tenants.create_service_account_key(
                org.slug, scopes=["config:read"], ttl=dt.timedelta(days=1)
            )
        async with ProvisionerClient(provisioner, token=session) as environments:
            environment = await environments.get_environment(org.slug)
            print(environment.namespace, state_name(environment.state))
        async with (
            ConfigClient(config, org.slug, token=session) as settings,
            settings.watcher() as watcher,
        ):
            entry = await settings.set("ai", "threshold", 0.75, reason="first try")
            await watcher.wait_for_revision(entry.revision)  # read-your-writes
            assert watcher.get_float("ai", "threshold") == 0.75
            try:
                await settings.get("ai", "missing")
            except NotFound as error:
                print("not set:", error.reason or error.message)
    return key.token


def pod(config: str, slug: str, token_file: str) -> float:
    """What a pod does: its token from the environment, config hot in memory."""
    changes: list[ConfigEvent] = []
    credentials = EnvironmentToken(environ={"AGENTREADY_TOKEN_FILE": token_file})
    with ConfigWatcher(config, slug, token=credentials, on_change=changes.append) as watcher:
        watcher.wait_for_revision(1)
        return watcher.get_float("ai", "threshold", 0.5)


def operator(tenant: str, config: str, provisioner: str, *, email: str, password: str) -> None:
    """An operator's script without asyncio: the sync faces."""
    with SyncSession.login(tenant, email, password) as session:
        with SyncTenantClient(tenant, token=session) as tenants:
            slugs = [org.slug for org in tenants.list_organizations()]
        session.switch(slugs[0])
        with SyncConfigClient(config, slugs[0], token=session) as settings:
            for entry in settings.list_configs("ai"):
                print(entry.key, entry.revision)
        with SyncProvisionerClient(provisioner, token=session) as environments:
            quota = environments.update_quota(slugs[0], cpu="4", reason="example").quota
            print(quota.cpu)


async def watch_async(config: str, slug: str, token: str) -> int:
    """The asyncio watcher on its own."""
    async with AsyncConfigWatcher(config, slug, token=token) as watcher:
        return await watcher.wait_for_revision(1, timeout=10)


def main() -> None:
    """Against a local ``make run``:
    ``EXAMPLE_PASSWORD=... python sdk/examples/consumer.py``."""
    tenant, config, provisioner = "127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"
    asyncio.run(
        onboard(
            tenant,
            config,
            provisioner,
            email="example@example.com",
            password=os.environ["EXAMPLE_PASSWORD"],
            slug="example",
        )
    )


if __name__ == "__main__":
    main()
