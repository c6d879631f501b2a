"""agent-ready SDK.

The generated modules live under ``agentready.<service>.v1`` (``tenant``, ``config``,
``provisioner``), e.g. ``agentready.config.v1.config_service_pb2_grpc``; feature flags
are evaluated with :func:`evaluate_flag`.
"""

from __future__ import annotations

from agentready.flags import FlagResult, evaluate_flag

__version__ = "0.1.0"

__all__ = ["FlagResult", "__version__", "evaluate_flag"]
