"""The ConfigService servicer.

RPCs not built yet are inherited from the generated base class; the shared call path
(:mod:`servicekit.rpc`) answers them with ``UNIMPLEMENTED`` and names the method.
"""

from __future__ import annotations

from agentready.config.v1 import config_service_pb2_grpc


class ConfigServiceServicer(config_service_pb2_grpc.ConfigServiceServicer):
    """ConfigService over gRPC."""
