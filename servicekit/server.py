"""Server start-up shared by the three services.

``main(spec)`` is each service's entry point: it reads the settings (a bad value is one
line on stderr and exit code 2), configures JSON logging, connects to PostgreSQL and
migrates the service's schema, connects to Redis, starts the ``grpc.aio`` server with
health, reflection, metrics and the shared interceptor, and serves until SIGTERM or
SIGINT. Shutdown: health turns NOT_SERVING, the server drains for
``SHUTDOWN_DRAIN_SECONDS``, then ``stop(SHUTDOWN_GRACE_SECONDS)`` lets in-flight RPCs
finish, and the service's own shutdown hooks run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import asyncpg
import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from servicekit import db, tracing
from servicekit.auth import KeySet, TokenVerifier
from servicekit.channels import client_channel, server_credentials
from servicekit.errors import SettingsError
from servicekit.logs import configure_logging
from servicekit.metrics import serve_metrics
from servicekit.platform import FileToken, PlatformConfig
from servicekit.ratelimit import RateLimiter
from servicekit.redisconn import connect_redis
from servicekit.revocation import RevocationList
from servicekit.rpc import ServerInterceptor
from servicekit.settings import ExtraSetting, Settings, load_settings
from servicekit.streams import StreamGuards

log = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]


@dataclasses.dataclass(kw_only=True)
class Resources:
    """What a service's handlers and background tasks are given."""

    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    verifier: TokenVerifier | None
    revocations: RevocationList
    # The platform's own configuration (rate limits, organization limits), watched.
    platform: PlatformConfig
    # Runs once the server listens, with its port (e.g. to watch its own service).
    started_hooks: list[Callable[[int], Awaitable[None]]] = dataclasses.field(default_factory=list)
    shutdown_hooks: list[ShutdownHook] = dataclasses.field(default_factory=list)
    stopping_hooks: list[ShutdownHook] = dataclasses.field(default_factory=list)
    # What the service built, by name, for in-process tools and tests to reach.
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)

    def on_stopping(self, hook: ShutdownHook) -> None:
        """Runs ``hook`` once health is NOT_SERVING, before in-flight RPCs are waited for
        (e.g. to end long-lived streams so clients move to another replica)."""
        self.stopping_hooks.append(hook)

    def on_shutdown(self, hook: ShutdownHook) -> None:
        """Runs ``hook`` after the server has stopped serving (last added runs first)."""
        self.shutdown_hooks.append(hook)

    def run_in_background(
        self, coroutine: Coroutine[Any, Any, None], *, name: str, stop_when_stopping: bool = False
    ) -> asyncio.Task[None]:
        """Runs ``coroutine`` as a task that the server cancels and awaits on its way
        down: once health is NOT_SERVING with ``stop_when_stopping``, else after the
        server has stopped serving."""
        task = asyncio.create_task(coroutine, name=name)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        if stop_when_stopping:
            self.on_stopping(cancel)
        else:
            self.on_shutdown(cancel)
        return task


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """How one service plugs into the shared start-up.

    Attributes:
        name: ``tenant``, ``config`` or ``provisioner`` (settings prefix, log field).
        schema: the PostgreSQL schema the service owns and migrates.
        migrations: folder of ``NNNN_description.sql`` files for that schema.
        service_names: full protobuf names of the gRPC services it serves.
        register: adds the servicers to the server; may start background work and
            register shutdown hooks on the resources.
        public_methods: full method names served without a token.
        extra_settings: service-specific variables and their defaults.
    """

    name: str
    schema: str
    migrations: Path
    service_names: tuple[str, ...]
    register: Callable[[grpc.aio.Server, Resources], Awaitable[None]]
    public_methods: frozenset[str] = frozenset()
    extra_settings: Mapping[str, ExtraSetting] = dataclasses.field(default_factory=dict)


def build_verifier(settings: Settings) -> TokenVerifier | None:
    """The token verifier for the configured key source, or ``None`` if there is none."""
    if settings.jwks_file is None and settings.jwks_url is None:
        return None
    keys = KeySet(file=settings.jwks_file, url=settings.jwks_url)
    return TokenVerifier(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience)


class RunningServer:
    """A started server: its ports, and how to stop it."""

    def __init__(
        self,
        *,
        spec: ServiceSpec,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        resources: Resources,
        port: int,
        metrics: WSGIServer | None,
    ) -> None:
        self.spec = spec
        self.server = server
        self.health = health_servicer
        self.resources = resources
        self.port = port
        self._metrics = metrics
        self.metrics_port: int | None = int(metrics.server_port) if metrics is not None else None
        self._stopped = asyncio.Event()

    async def stop(self) -> None:
        """Health NOT_SERVING, drain, graceful stop, then hooks and connections."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        settings = self.resources.settings
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
        await self.health.enter_graceful_shutdown()
        if settings.shutdown_drain_seconds:
            await asyncio.sleep(settings.shutdown_drain_seconds)
        for hook in self.resources.stopping_hooks:
            try:
                await hook()
            except Exception:
                log.exception("stopping hook failed")
        await self.server.stop(settings.shutdown_grace_seconds)
        for hook in reversed(self.resources.shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        await self.resources.redis.aclose()
        try:
            await asyncio.wait_for(self.resources.pool.close(), POOL_CLOSE_SECONDS)
        except TimeoutError:
            # Nothing may keep a stopping server up: what still holds a connection
            # (a task no hook stopped) loses it.
            log.warning(
                "database connections still in use %.0f s after the server stopped; closed",
                POOL_CLOSE_SECONDS,
            )
            self.resources.pool.terminate()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
        log.info("stopped")

    async def wait(self) -> None:
        """Returns when the server has stopped."""
        await self.server.wait_for_termination()


async def start(spec: ServiceSpec, settings: Settings) -> RunningServer:
    """Connects, migrates and starts serving ``spec``; returns once it is SERVING.

    Raises:
        ConnectionError: PostgreSQL did not answer.
        db.MigrationError: the schema's migrations are inconsistent.
        OSError: the gRPC port could not be bound.
    """
    pool = await db.connect_pool(
        settings.database_url,
        schema=spec.schema,
        application_name=f"agentready-{spec.name}",
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        wait_seconds=settings.db_connect_timeout_seconds,
    )
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn, spec.schema, spec.migrations)
    except BaseException:
        await pool.close()
        raise
    verifier = build_verifier(settings)
    redis = connect_redis(
        settings.redis_url,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
    )
    revocations = RevocationList(redis, prefix=settings.redis_prefix)
    streams = StreamGuards(
        per_token=settings.max_streams_per_token,
        per_organization=settings.max_streams_per_organization,
    )
    revocations.listeners.append(streams.revoked)
    if verifier is not None:
        verifier.is_revoked = revocations.revoked
    platform = PlatformConfig(
        settings.platform_organization,
        target=settings.config_address,
        token=FileToken(settings.platform_token_file) if settings.platform_token_file else None,
        connect=lambda target: client_channel(target, settings),
    )
    resources = Resources(
        settings=settings,
        pool=pool,
        redis=redis,
        verifier=verifier,
        revocations=revocations,
        platform=platform,
    )
    resources.run_in_background(revocations.run(), name="revocations")
    if verifier is not None:
        resources.run_in_background(
            verifier.run_key_refresh(url_every=settings.jwks_reload_seconds), name="jwks-refresh"
        )
    resources.on_shutdown(platform.stop)
    server = grpc.aio.server(
        interceptors=[
            # Tracing first (none when off), so the call's span is current in the rest.
            *tracing.server_interceptors(),
            ServerInterceptor(
                verifier=verifier,
                public_methods=spec.public_methods,
                rate_limiter=RateLimiter(redis, platform.rate_limit, prefix=settings.redis_prefix),
                streams=streams,
            ),
        ],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # A burst of new calls (every pod of an organization reconnecting its
            # WatchConfig stream after a replica restart) waits in a queue until the
            # asyncio server picks each up; with the small default queue, calls beyond
            # it were silently never served.
            ("grpc.server.max_pending_requests", 50_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
            *connection_age_options(settings),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.grpc_reflection:
        reflection.enable_server_reflection(
            (*spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    try:
        await spec.register(server, resources)
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen on {settings.grpc_host}:{settings.grpc_port}: {exc}"
            ) from None
        metrics = None
        if settings.metrics_port is not None:
            metrics = serve_metrics(settings.metrics_port)
        await server.start()
        if spec.name == "config":  # ConfigService watches itself, where it listens
            host = settings.grpc_host
            wildcard = host in ("", "[::]", "::", "0.0.0.0")
            platform.target = f"{'127.0.0.1' if wildcard else host}:{port}"
        await platform.start()
        for started in resources.started_hooks:
            await started(port)
    except BaseException:
        for hook in reversed(resources.shutdown_hooks):
            await hook()
        await resources.redis.aclose()
        await pool.close()
        raise
    for name in ("", *spec.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(
        spec=spec,
        server=server,
        health_servicer=health_servicer,
        resources=resources,
        port=port,
        metrics=metrics,
    )
    log.info(
        "serving",
        extra={
            "grpc_port": port,
            "metrics_port": running.metrics_port,
            "services": list(spec.service_names),
            "auth": verifier is not None,
        },
    )
    return running


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """``GRPC_MAX_CONNECTION_AGE_SECONDS`` as gRPC server options (none when 0).

    Behind a layer-4 load balancer (a Kubernetes Service) a client keeps its HTTP/2
    connection, and so its replica, for as long as the connection lives: replicas added
    by a scale-up would get no streams. A GOAWAY after a maximum age makes clients
    reconnect and spread again; the grace lets calls in flight finish, then ends
    long-lived streams, which the SDK resumes from their last revision.
    """
    if not settings.grpc_max_connection_age_seconds:
        return []
    return [
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_seconds * 1000)),
        (
            "grpc.max_connection_age_grace_ms",
            int(settings.grpc_max_connection_age_grace_seconds * 1000),
        ),
    ]


# How long a stopping server waits for its database connections to come back to the
# pool once RPCs are over, before closing those still in use.
POOL_CLOSE_SECONDS = 10.0


def tune_garbage_collector(thresholds: tuple[int, int, int] | None) -> None:
    """Fewer, cheaper garbage collections once the server is up.

    Everything allocated at start-up (modules, descriptors, pools) is frozen out of
    the collector's sight, and generation 0 collects after more allocations: fanning
    one change out to thousands of streams allocates a lot, and a full collection in
    the middle of it shows as tail latency (p99 of the last of 1000 watchers: about
    120 ms before, 70-85 ms after, on the benchmark machine).
    """
    gc.freeze()
    if thresholds is not None:
        gc.set_threshold(*thresholds)


async def serve(spec: ServiceSpec, settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    running = await start(spec, settings)
    tune_garbage_collector(settings.gc_thresholds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.stop()


def main(spec: ServiceSpec) -> int:
    """Entry point of a service process; returns the exit code."""
    try:
        settings = load_settings(spec.name, extra=spec.extra_settings)
    except SettingsError as exc:
        print(f"{spec.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(spec.name, level=settings.log_level, fmt=settings.log_format)
    try:
        tracing.configure(spec.name)
    except SettingsError as exc:
        print(f"{spec.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if settings.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(spec, settings))
        else:
            asyncio.run(serve(spec, settings))
    except SettingsError as exc:
        print(f"{spec.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError, db.MigrationError) as exc:
        print(f"{spec.name}: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()
    return 0
