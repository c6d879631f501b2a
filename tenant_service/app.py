"""Wiring of TenantService into the shared server start-up."""

from __future__ import annotations

from pathlib import Path

import grpc
from agentready.tenant.v1 import tenant_service_pb2, tenant_service_pb2_grpc

from servicekit.server import Resources, ServiceSpec
from tenant_service.entrypoints.grpc_api import TenantServiceServicer

SERVICE_NAME = tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name


async def register(server: grpc.aio.Server, resources: Resources) -> None:
    """Adds the TenantService servicer to ``server``."""
    del resources
    # RPCs not built yet stay abstract; the shared call path answers them UNIMPLEMENTED.
    servicer = TenantServiceServicer()  # type: ignore[abstract]
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(servicer, server)


SPEC = ServiceSpec(
    name="tenant",
    schema="tenant",
    migrations=Path(__file__).parent / "migrations",
    service_names=(SERVICE_NAME,),
    register=register,
    public_methods=frozenset(
        {
            f"/{SERVICE_NAME}/CreateUser",
            f"/{SERVICE_NAME}/Login",
            f"/{SERVICE_NAME}/RefreshToken",
            f"/{SERVICE_NAME}/GetJwks",
        }
    ),
)
