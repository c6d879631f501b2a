"""Wiring of ConfigService into the shared server start-up."""

from __future__ import annotations

from pathlib import Path

import grpc
from agentready.config.v1 import config_service_pb2, config_service_pb2_grpc

from config_service.adapters.notifier import Notifier
from config_service.adapters.postgres import ConfigStore
from config_service.domain.model import Event
from config_service.entrypoints.convert import WatchMessages
from config_service.entrypoints.grpc_api import ConfigServiceServicer
from config_service.service_layer.clients import ConfigClients
from config_service.service_layer.hub import Hub
from config_service.service_layer.maintenance import run_maintenance
from config_service.service_layer.writes import ConfigWriter, Limits
from servicekit.server import Resources, ServiceSpec
from servicekit.settings import ExtraSetting

SERVICE_NAME = config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name

SETTINGS = {
    "CONFIG_CHANNEL_PREFIX": ExtraSetting(
        "agentready", "Prefix of the Redis pub/sub channels (`<prefix>:config:<org>`)."
    ),
    "CONFIG_POLL_INTERVAL_SECONDS": ExtraSetting(
        "1",
        "How often each replica checks PostgreSQL for revisions it was not told of.",
        kind="seconds",
        lo=0.05,
        hi=60,
    ),
    "CONFIG_FALLBACK_POLL_SECONDS": ExtraSetting(
        "0.2",
        "The same, while Redis pub/sub is down.",
        kind="seconds",
        lo=0.01,
        hi=1,
    ),
    "CONFIG_WATCH_QUEUE": ExtraSetting(
        "1024",
        "Revisions a WatchConfig stream may fall behind before it is closed.",
        kind="int",
        lo=1,
        hi=1_000_000,
    ),
    "CONFIG_HISTORY_RETENTION": ExtraSetting(
        "100000",
        "Revisions of history kept per organization; 0 keeps everything.",
        kind="int",
        lo=0,
        hi=10**12,
    ),
    "CONFIG_MAX_ORGANIZATION_KEYS": ExtraSetting(
        "1000",
        "Keys one organization may store (a write past it is refused with "
        "`RESOURCE_EXHAUSTED`, reason `ORGANIZATION_KEY_LIMIT`).",
        kind="int",
        lo=1,
        hi=1_000_000,
    ),
    "CONFIG_MAX_ORGANIZATION_BYTES": ExtraSetting(
        "1048576",
        "Bytes one organization may store, keys and values (reason "
        "`ORGANIZATION_SIZE_LIMIT` past it). Snapshots larger than a message are split, "
        "so raising it never breaks a watcher.",
        kind="int",
        lo=65536,
        hi=1 << 34,
    ),
    "CONFIG_CLIENT_GRACE_SECONDS": ExtraSetting(
        "30",
        "How long a watching client stays in `ListConfigClients` after its last report "
        "(the SDK reports every 10 s while nothing changes).",
        kind="seconds",
        lo=1,
        hi=86400,
    ),
    "CONFIG_MAX_ORGANIZATION_CLIENTS": ExtraSetting(
        "10000",
        "Watching clients one organization may have reporting (`ReportConfigStatus` from "
        "a new one past it is refused with `RESOURCE_EXHAUSTED`, reason `CLIENT_LIMIT`; "
        "clients quiet for `CONFIG_CLIENT_GRACE_SECONDS` are pruned).",
        kind="int",
        lo=1,
        hi=10_000_000,
    ),
    "CONFIG_COMPACT_INTERVAL_SECONDS": ExtraSetting(
        "300",
        "How often history is compacted.",
        kind="seconds",
        lo=1,
        hi=86400,
    ),
}


async def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Builds ConfigService (store, hub, notifier) and starts its background tasks."""
    extra = resources.settings.extra
    store = ConfigStore(resources.pool)
    hub = Hub(
        store,
        WatchMessages().event,
        queue_capacity=extra["CONFIG_WATCH_QUEUE"],
        poll_interval=extra["CONFIG_POLL_INTERVAL_SECONDS"],
        fallback_poll_interval=extra["CONFIG_FALLBACK_POLL_SECONDS"],
    )
    notifier = Notifier(
        resources.redis,
        prefix=extra["CONFIG_CHANNEL_PREFIX"],
        on_revision=hub.notify,
        on_health=lambda healthy: hub.set_fallback(not healthy),
    )

    def committed(event: Event) -> None:
        hub.committed(event)  # local streams at once, Redis or not
        notifier.publish(event.organization, event.revision)

    limits = Limits(
        keys=extra["CONFIG_MAX_ORGANIZATION_KEYS"], bytes=extra["CONFIG_MAX_ORGANIZATION_BYTES"]
    )
    writer = ConfigWriter(store, committed, limits)
    clients = ConfigClients(
        store,
        grace_seconds=extra["CONFIG_CLIENT_GRACE_SECONDS"],
        max_clients=extra["CONFIG_MAX_ORGANIZATION_CLIENTS"],
    )
    servicer = ConfigServiceServicer(store, writer, hub, clients)
    config_service_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, server)

    # Shutdown hooks run last-added first: the tasks stop, then the hub closes.
    resources.on_shutdown(hub.close)
    resources.run_in_background(hub.run_poller(), name="config-poller")
    resources.run_in_background(hub.run_progress(), name="config-progress")
    resources.run_in_background(notifier.run_publisher(), name="config-publisher")
    resources.run_in_background(notifier.run_subscriber(), name="config-subscriber")
    resources.run_in_background(
        run_maintenance(
            store,
            keep=extra["CONFIG_HISTORY_RETENTION"],
            interval=extra["CONFIG_COMPACT_INTERVAL_SECONDS"],
            client_grace=extra["CONFIG_CLIENT_GRACE_SECONDS"],
        ),
        name="config-maintenance",
    )

    async def end_streams() -> None:
        hub.close_streams()

    resources.on_stopping(end_streams)


SPEC = ServiceSpec(
    name="config",
    schema="config",
    migrations=Path(__file__).parent / "migrations",
    service_names=(SERVICE_NAME,),
    register=register,
    extra_settings=SETTINGS,
)
