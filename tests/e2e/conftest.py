"""The three servers, started in-process on free ports against real stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from config_service.app import SPEC as CONFIG
from provisioner.app import SPEC as PROVISIONER
from servicekit.server import RunningServer, ServiceSpec, start
from servicekit.settings import load_settings
from tenant_service.app import SPEC as TENANT

SPECS: dict[str, ServiceSpec] = {"tenant": TENANT, "config": CONFIG, "provisioner": PROVISIONER}


@pytest.fixture(scope="session")
async def servers(server_env: dict[str, str]) -> AsyncIterator[dict[str, RunningServer]]:
    """All three servers, each SERVING on its own free port."""
    running: dict[str, RunningServer] = {}
    try:
        for name, spec in SPECS.items():
            settings = load_settings(name, server_env, extra=spec.extra_settings)
            running[name] = await start(spec, settings)
        yield running
    finally:
        for server in running.values():
            await server.stop()
