"""Each sync face has every method of its asyncio client (the SDK README's promise)."""

from __future__ import annotations

import inspect

import pytest
from agentready import (
    ConfigClient,
    ProvisionerClient,
    SyncConfigClient,
    SyncProvisionerClient,
    SyncTenantClient,
    TenantClient,
)
from agentready._private.client import ServiceClient

# Asyncio-only on purpose: a sync program watches with ConfigWatcher.
ASYNC_ONLY = {"watcher"}


def calls(client: type[ServiceClient]) -> set[str]:
    """The public methods a client adds to what every client shares."""
    return {
        name
        for name, member in vars(client).items()
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
    }


@pytest.mark.parametrize(
    ("client", "face"),
    [
        (TenantClient, SyncTenantClient),
        (ConfigClient, SyncConfigClient),
        (ProvisionerClient, SyncProvisionerClient),
    ],
)
def test_every_call_of_the_client_is_on_its_sync_face(client: type, face: type) -> None:
    assert calls(client)
    missing = {name for name in calls(client) - ASYNC_ONLY if not hasattr(face, name)}
    assert not missing, f"{face.__name__} lacks {sorted(missing)}"
