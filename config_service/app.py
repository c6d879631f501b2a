"""Wiring of ConfigService into the shared server start-up."""

from __future__ import annotations

from pathlib import Path

import grpc
from agentready.config.v1 import config_service_pb2, config_service_pb2_grpc

from config_service.entrypoints.grpc_api import ConfigServiceServicer
from servicekit.server import Resources, ServiceSpec

SERVICE_NAME = config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name


async def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the ConfigService servicer to ``server``."""
    del resources
    # RPCs not built yet stay abstract; the shared call path answers them UNIMPLEMENTED.
    servicer = ConfigServiceServicer()  # type: ignore[abstract]
    config_service_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, server)


SPEC = ServiceSpec(
    name="config",
    schema="config",
    migrations=Path(__file__).parent / "migrations",
    service_names=(SERVICE_NAME,),
    register=register,
    public_methods=frozenset(),
)
