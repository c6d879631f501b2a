"""ConfigService behind a load balancer: with GRPC_MAX_CONNECTION_AGE_SECONDS the
server recycles connections (GOAWAY, then the grace), so clients spread over replicas
added since; the SDK's watcher reconnects across each recycle and still sees every
revision once, in order (deploy/README.md, "ConfigService behind a load balancer")."""

from __future__ import annotations

import asyncio
import uuid

import grpc
from agentready import AsyncConfigWatcher, ConfigEvent
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from prometheus_client import REGISTRY

from config_service.app import SPEC as CONFIG
from servicekit.server import connection_age_options, start
from servicekit.settings import load_settings
from tests.conftest import Keys

WATCH = {
    "grpc_service": "agentready.config.v1.ConfigService",
    "grpc_method": "WatchConfig",
    "grpc_type": "server_stream",
}


def watch_streams_started() -> float:
    return REGISTRY.get_sample_value("grpc_server_started_total", WATCH) or 0.0


def test_the_options_are_set_only_when_asked_for() -> None:
    assert connection_age_options(load_settings("config", {})) == []
    settings = load_settings(
        "config",
        {
            "GRPC_MAX_CONNECTION_AGE_SECONDS": "300",
            "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "30",
        },
    )
    assert connection_age_options(settings) == [
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


async def test_a_watcher_follows_recycled_connections_without_gap_or_duplicate(
    server_env: dict[str, str], keys: Keys
) -> None:
    env = dict(
        server_env,
        GRPC_MAX_CONNECTION_AGE_SECONDS="1",
        GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="1",
    )
    # No platform watcher of its own: the stream starts counted below are the test's.
    env.pop("PLATFORM_TOKEN_FILE", None)
    server = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    organization = f"age-{uuid.uuid4().hex[:8]}"
    target = f"127.0.0.1:{server.port}"
    events: list[ConfigEvent] = []
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = config_service_pb2_grpc.ConfigServiceStub(channel)
            metadata = (("authorization", f"Bearer {keys.token(organization)}"),)

            async def write(value: int) -> int:
                request = config_pb2.SetConfigRequest(
                    organization=organization,
                    service="ai",
                    key="threshold",
                    value=config_pb2.Value(int_value=value),
                    request_id=str(uuid.uuid4()),
                )
                # The writer's connection is recycled too: a call still running when
                # the grace ends is UNAVAILABLE, and is retried with its request id
                # (as the SDK does), so it lands once.
                for _ in range(5):
                    try:
                        entry = await stub.SetConfig(
                            request, metadata=metadata, timeout=10, wait_for_ready=True
                        )
                        return int(entry.revision)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                raise AssertionError("SetConfig stayed UNAVAILABLE")

            watcher = AsyncConfigWatcher(
                target,
                organization,
                token=keys.token(organization, "viewer"),
                on_change=events.append,
                backoff_initial=0.05,
            )
            async with watcher:
                streams_before = watch_streams_started()
                revision, value = 0, 0
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                # Keep writing until the watcher's stream has been cut and resumed
                # at least twice (each connection lives about 1 s plus the grace).
                while watch_streams_started() - streams_before < 2:
                    assert loop.time() < deadline, "the connection was never recycled"
                    value += 1
                    revision = await write(value)
                    await asyncio.sleep(0.02)  # pacing only: nothing waits on it
                while watcher.revision != revision:
                    assert loop.time() < deadline, f"stuck at {watcher.revision} < {revision}"
                    await asyncio.sleep(0.02)
                assert watcher.get_int("ai", "threshold") == value
    finally:
        await server.stop()
    assert events[0].snapshot
    changes = [e.revision for e in events[1:]]
    assert not any(e.snapshot for e in events[1:])  # resumed, never reset
    assert changes == list(range(events[0].revision + 1, revision + 1))
