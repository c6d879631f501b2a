"""agent-ready SDK.

The generated modules live under ``agentready.<service>.v1`` (``tenant``, ``config``,
``provisioner``), e.g. ``agentready.config.v1.config_service_pb2_grpc``.
:class:`ConfigWatcher` (and :class:`AsyncConfigWatcher`) keep an organization's
configuration in memory; feature flags are evaluated with :func:`evaluate_flag`.
"""

from __future__ import annotations

from agentready.config.client import DELETE, ConfigClient
from agentready.errors import (
    AgentReadyError,
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from agentready.flags import FlagResult, evaluate_flag
from agentready.watcher import AsyncConfigWatcher, ConfigEvent, ConfigWatcher, WatcherState

__version__ = "0.1.0"

__all__ = [
    "DELETE",
    "AgentReadyError",
    "AlreadyExists",
    "AsyncConfigWatcher",
    "ConfigClient",
    "ConfigEvent",
    "ConfigWatcher",
    "Conflict",
    "FailedPrecondition",
    "FlagResult",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "WatcherState",
    "__version__",
    "evaluate_flag",
]
