"""A small fake Kubernetes API server for tests.

The Provisioner's tests point the official ``kubernetes`` client at it through a
kubeconfig, exactly as at a real cluster. It serves the kinds a tenant gets
(Namespace, ResourceQuota, LimitRange, ServiceAccount, Role, RoleBinding,
NetworkPolicy), validates every stored object against the official schemas, and can
inject failures and latency.

    with FakeKubeServer() as kube:
        client = kubernetes.config.new_client_from_config(kube.write_kubeconfig(path))
"""

from __future__ import annotations

from .errors import KubeApiError
from .faults import Fault, RequestRecord
from .resources import KUBERNETES_VERSION, ResourceType
from .server import DEFAULT_TOKEN, FakeKubeServer
from .store import ObjectStore

__all__ = [
    "DEFAULT_TOKEN",
    "KUBERNETES_VERSION",
    "FakeKubeServer",
    "Fault",
    "KubeApiError",
    "ObjectStore",
    "RequestRecord",
    "ResourceType",
]
