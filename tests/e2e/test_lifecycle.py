"""What the README claims of a server's life, each shown on a running server: in-flight
calls finish through the drain window and the grace period, history is compacted on
its own, a JWKS URL is read again at most as often as the README says yet a rotated
key is picked up without a restart, and every metric the README names is exported."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from config_service.app import SPEC as CONFIG
from servicekit.devstack import REPO_ROOT, scratch_database
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tests.conftest import Keys
from tests.e2e.tenant_support import bearer, eventually, new_slug


def set_request(org: str, key: str, value: int) -> config_pb2.SetConfigRequest:
    return config_pb2.SetConfigRequest(
        organization=org, service="app", key=key, value=config_pb2.Value(int_value=value)
    )


async def health(port: int) -> int:
    """The overall health status, on a connection of its own (-1: refused)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError:
            return -1
        return int(reply.status)


async def test_an_in_flight_call_finishes_through_the_drain_and_the_grace_period(
    server_env: dict[str, str], keys: Keys, database_url: str
) -> None:
    env = {
        **server_env,
        "METRICS_PORT": "off",
        "SHUTDOWN_DRAIN_SECONDS": "0.2",
        "SHUTDOWN_GRACE_SECONDS": "60",
    }
    server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    org = new_slug("grace")
    md = bearer(keys.token(org))
    app = f"config-{uuid.uuid4().hex[:6]}"
    blocker = await asyncpg.connect(database_url)
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = config_service_pb2_grpc.ConfigServiceStub(channel)
            await stub.SetConfig(set_request(org, "k", 1), metadata=md, timeout=10)
            # The test holds the organization's row: the next write waits in the database.
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute(
                "SELECT 1 FROM config.organizations WHERE organization = $1 FOR UPDATE", org
            )
            await blocker.execute("SELECT set_config('application_name', $1, false)", app)
            writing = asyncio.ensure_future(
                stub.SetConfig(set_request(org, "k", 2), metadata=md, timeout=60)
            )
            await eventually(
                lambda: blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity a "
                    "JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
                    "WHERE a.datname = current_database() AND a.application_name <> $1",
                    app,
                ),
                lambda n: n >= 1,
            )
            stopping = asyncio.create_task(server.stop())
            # Drained (health NOT_SERVING), then stopped: a new call finds no server ...
            await eventually(lambda: health(server.port), lambda s: s == -1)
            assert not writing.done()
            # ... while the call in flight is still served once the database lets it go.
            await lock.rollback()
            answer = await asyncio.wait_for(writing, 30)
            assert answer.revision == 2
            await asyncio.wait_for(stopping, 30)
    finally:
        await blocker.close()
        if stopping is None:
            await server.stop()
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT revision FROM config.entries WHERE organization = $1 AND key = 'k'", org
        )
    finally:
        await conn.close()
    assert stored == 2


@pytest.fixture
def own_database(postgres_server_url: str) -> Iterator[str]:
    """A database of its own: compaction there touches no other test's history."""
    with scratch_database(postgres_server_url, "agentready_compact") as url:
        yield url


async def test_history_is_compacted_periodically(
    server_env: dict[str, str], keys: Keys, own_database: str
) -> None:
    env = {
        **server_env,
        "DATABASE_URL": own_database,
        "METRICS_PORT": "off",
        "CONFIG_HISTORY_RETENTION": "3",
        "CONFIG_COMPACT_INTERVAL_SECONDS": "1",
    }
    server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    org = new_slug("compact")
    md = bearer(keys.token(org))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
            for i in range(1, 11):
                await stub.SetConfig(set_request(org, "k", i), metadata=md, timeout=10)

            async def retained() -> list[int]:
                page = await stub.ListConfigHistory(
                    config_pb2.ListConfigHistoryRequest(organization=org), metadata=md
                )
                return [h.revision for h in page.history_entries]

            # Nobody asks for it: the maintenance task keeps the last 3 revisions.
            assert await eventually(retained, lambda r: r == [8, 9, 10]) == [8, 9, 10]
            call = stub.WatchConfig(
                config_pb2.WatchConfigRequest(organization=org, start_revision=2), metadata=md
            )
            first = await call.read()
            call.cancel()
            assert first.reset
            assert first.compact_revision == 8
    finally:
        await server.stop()


class JwksServer:
    """Serves a JWKS document over HTTP and counts the reads."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.reads = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.reads += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/jwks.json"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


async def test_a_jwks_url_is_read_sparingly_and_a_rotated_key_is_picked_up(
    server_env: dict[str, str], keys: Keys, tmp_path: Any
) -> None:
    (tmp_path / "new").mkdir()
    rotated = Keys(tmp_path / "new")
    with JwksServer({"keys": [keys.jwk]}) as jwks:
        env = {k: v for k, v in server_env.items() if k != "JWT_JWKS_FILE"}
        env |= {"JWT_JWKS_URL": jwks.url, "JWT_JWKS_ALLOW_HTTP": "true", "METRICS_PORT": "off"}
        env["JWT_JWKS_RELOAD_SECONDS"] = "86400"  # only unknown kids trigger reads here
        server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
        org = new_slug("jwks")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = config_service_pb2_grpc.ConfigServiceStub(channel)

                async def outcome(token: str) -> str:
                    try:
                        await stub.SetConfig(
                            set_request(org, "k", 1), metadata=bearer(token), timeout=10
                        )
                    except grpc.aio.AioRpcError as error:
                        return error.code().name
                    return "OK"

                assert await outcome(keys.token(org)) == "OK"
                started_with = jwks.reads
                # Tokens naming a key nobody published: refused, and they cannot make
                # every server fetch the JWKS again and again.
                stranger = Keys(tmp_path).token(org)
                for _ in range(20):
                    assert await outcome(stranger) == "UNAUTHENTICATED"
                assert jwks.reads <= started_with + 1
                # The rotated key is published: the running server picks it up when a
                # token names it (at most one read per throttle period), no restart.
                jwks.document = {"keys": [keys.jwk, rotated.jwk]}
                token = rotated.token(org)
                assert await eventually(lambda: outcome(token), lambda o: o == "OK") == "OK"
                assert jwks.reads <= started_with + 2
        finally:
            await server.stop()


async def test_every_metric_the_readme_names_is_exported(
    servers: dict[str, RunningServer],
) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    named = set(
        re.findall(r"`((?:agentready|config|provisioner|tenant|grpc_server)_[a-z_]+)`", readme)
    )
    text = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(
                f"http://127.0.0.1:{servers['config'].metrics_port}/metrics", timeout=5
            )
            .read()
            .decode()
        )
    )
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    roles = {"agentready_config", "agentready_tenant", "agentready_provisioner"}
    missing = sorted(
        name
        for name in named - roles
        if name not in exported and name.removesuffix("_total") not in exported
    )
    assert missing == []
    assert len(named - roles) >= 10
