"""The ProvisionerService servicer.

RPCs not built yet are inherited from the generated base class; the shared call path
(:mod:`servicekit.rpc`) answers them with ``UNIMPLEMENTED`` and names the method.
"""

from __future__ import annotations

from agentready.provisioner.v1 import provisioner_service_pb2_grpc


class ProvisionerServiceServicer(provisioner_service_pb2_grpc.ProvisionerServiceServicer):
    """ProvisionerService over gRPC."""
