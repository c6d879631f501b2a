"""agent-ready SDK: generated stubs of the control plane's gRPC services.

The generated modules live under ``agentready.<service>.v1`` (``tenant``, ``config``,
``provisioner``), e.g. ``agentready.config.v1.config_service_pb2_grpc``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
