"""agent-ready SDK.

The generated modules live under ``agentready.<service>.v1`` (``tenant``, ``config``,
``provisioner``), e.g. ``agentready.config.v1.config_service_pb2_grpc``. Typed
clients: :class:`TenantClient`, :class:`ConfigClient`, :class:`ProvisionerClient`
(asyncio) and their sync faces (``Sync...``); credentials: :class:`Session` (login),
:class:`EnvironmentToken` (a pod's token). :class:`ConfigWatcher` (and
:class:`AsyncConfigWatcher`) keep an organization's configuration in memory; feature
flags are evaluated with :func:`evaluate_flag`. The CLI is ``arkctl``.
"""

from __future__ import annotations

from agentready._private.call import Credentials, TokenSource
from agentready.config.client import DELETE, ConfigClient, SyncConfigClient
from agentready.credentials import EnvironmentToken, Session, SyncSession
from agentready.errors import (
    AgentReadyError,
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from agentready.flags import FlagResult, evaluate_flag
from agentready.provisioner.client import ProvisionerClient, SyncProvisionerClient
from agentready.tenant.client import SyncTenantClient, TenantClient
from agentready.watcher import (
    AsyncConfigWatcher,
    ConfigEvent,
    ConfigWatcher,
    RevisionRefused,
    WatcherState,
)

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
    "Credentials",
    "DeadlineExceeded",
    "EnvironmentToken",
    "FailedPrecondition",
    "FlagResult",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ProvisionerClient",
    "ResourceExhausted",
    "RevisionRefused",
    "Session",
    "SyncConfigClient",
    "SyncProvisionerClient",
    "SyncSession",
    "SyncTenantClient",
    "TenantClient",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
    "WatcherState",
    "__version__",
    "evaluate_flag",
]
