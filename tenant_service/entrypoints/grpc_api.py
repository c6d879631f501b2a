"""The TenantService servicer.

RPCs not built yet are inherited from the generated base class; the shared call path
(:mod:`servicekit.rpc`) answers them with ``UNIMPLEMENTED`` and names the method.
"""

from __future__ import annotations

from agentready.tenant.v1 import tenant_service_pb2_grpc


class TenantServiceServicer(tenant_service_pb2_grpc.TenantServiceServicer):
    """TenantService over gRPC."""
