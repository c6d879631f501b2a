"""Wiring of ProvisionerService into the shared server start-up."""

from __future__ import annotations

from pathlib import Path

import grpc
from agentready.provisioner.v1 import provisioner_service_pb2, provisioner_service_pb2_grpc

from provisioner.entrypoints.grpc_api import ProvisionerServiceServicer
from servicekit.server import Resources, ServiceSpec

SERVICE_NAME = provisioner_service_pb2.DESCRIPTOR.services_by_name["ProvisionerService"].full_name


async def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the ProvisionerService servicer to ``server``."""
    del resources
    # RPCs not built yet stay abstract; the shared call path answers them UNIMPLEMENTED.
    servicer = ProvisionerServiceServicer()  # type: ignore[abstract]
    provisioner_service_pb2_grpc.add_ProvisionerServiceServicer_to_server(servicer, server)


SPEC = ServiceSpec(
    name="provisioner",
    schema="provisioner",
    migrations=Path(__file__).parent / "migrations",
    service_names=(SERVICE_NAME,),
    register=register,
    public_methods=frozenset(),
)
