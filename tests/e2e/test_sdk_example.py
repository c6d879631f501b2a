"""The SDK's example consumer (``sdk/examples/consumer.py``, type-checked strictly by
``make lint``) runs against real servers: every client, asyncio and sync."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

from servicekit.devstack import REPO_ROOT
from servicekit.server import RunningServer
from tests.e2e.tenant_support import PASSWORD, new_email, new_slug


def load_example() -> ModuleType:
    path = REPO_ROOT / "sdk" / "examples" / "consumer.py"
    spec = importlib.util.spec_from_file_location("agentready_example_consumer", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_consumer_runs(servers: dict[str, RunningServer], tmp_path: Path) -> None:
    example = load_example()
    tenant, config, provisioner = (
        f"127.0.0.1:{servers[name].port}" for name in ("tenant", "config", "provisioner")
    )
    email, slug = new_email(), new_slug()
    token = await example.onboard(
        tenant, config, provisioner, email=email, password=PASSWORD, slug=slug
    )
    token_file = tmp_path / "token"
    token_file.write_text(token)
    assert await asyncio.to_thread(example.pod, config, slug, str(token_file)) == 0.75
    assert await example.watch_async(config, slug, token) == 1
    await asyncio.to_thread(
        example.operator, tenant, config, provisioner, email=email, password=PASSWORD
    )
