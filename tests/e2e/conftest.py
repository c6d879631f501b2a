"""The three servers, started in-process on free ports against real stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from config_service.app import SPEC as CONFIG
from provisioner.app import SPEC as PROVISIONER
from servicekit.server import RunningServer, ServiceSpec, start
from servicekit.settings import load_settings
from tenant_service.app import SPEC as TENANT

# Started in this order: TenantService is told where the other two listen.
SPECS: dict[str, ServiceSpec] = {"config": CONFIG, "provisioner": PROVISIONER, "tenant": TENANT}


@pytest.fixture(scope="session")
async def servers(server_env: dict[str, str]) -> AsyncIterator[dict[str, RunningServer]]:
    """All three servers, each SERVING on its own free port."""
    running: dict[str, RunningServer] = {}
    try:
        for name, spec in SPECS.items():
            env = dict(server_env)
            if "config" in running:
                env["CONFIG_ADDRESS"] = f"127.0.0.1:{running['config'].port}"
            if name == "tenant":
                env["TENANT_PROVISIONER_ADDRESS"] = f"127.0.0.1:{running['provisioner'].port}"
            settings = load_settings(name, env, extra=spec.extra_settings)
            running[name] = await start(spec, settings)
        yield running
    finally:
        for server in running.values():
            await server.stop()
