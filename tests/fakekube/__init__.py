"""A small fake Kubernetes API server for tests.

The Provisioner's tests point the official ``kubernetes`` client at it through a
kubeconfig, exactly as at a real cluster. It serves the kinds a tenant gets
(Namespace, ResourceQuota, LimitRange, ServiceAccount, Role, RoleBinding,
NetworkPolicy), validates every stored object against the official schemas, and can
inject failures and latency.

    with FakeKubeServer() as kube:
        client = kubernetes.config.new_client_from_config(kube.write_kubeconfig(path))

Latency model
-------------
Latency is the time the API takes to answer a request, its own work included: it is
measured from the request's arrival, and once the request was served the answer waits
out whatever remains, with no lock held (slow calls overlap, as on a real server).
Arrival is when the request line reached the socket, as the kernel stamped it on Linux
(see :mod:`.arrival`), so a request that waited for the GIL behind others is not
charged the wait. Held answers are sent by one thread of the server's, earliest
deadline first (the last half millisecond watched on the clock, not slept), so
answers due at once (concurrent requests) each leave within about two tenths of a
millisecond of their deadline instead of queueing for the GIL.

Each resource request is charged as one verb, decided after it was served, because
only then is it known whether a PATCH/PUT created the object:

* ``create``: POST, or a PATCH/PUT that created the object (a server-side apply of an
  object that did not exist); a failed PATCH/PUT counts as ``create`` when the object
  does not exist;
* ``update``: PATCH/PUT of an existing object (e.g. a later apply adding a label to a
  namespace), or of its ``status``;
* ``delete``: DELETE of an object or a collection;
* ``get``, ``list``: GET of one object, of a collection; ``watch``: GET with
  ``watch=true`` (refused by the fake, still charged).

Discovery (``/api``, ``/apis``, ``/version`` ...) and unknown paths are charged no verb
and answer at once. The latency of a request is the first rule found among

1. ``"<verb>:<resource>"``, e.g. ``"create:namespaces"``;
2. ``"<verb>"``, e.g. ``"update"``;
3. ``"<resource>"``, e.g. ``"namespaces"`` (the per-resource form);
4. the default (0 unless set).

Resources are named by plural, singular or Kind (stored as the plural). Creating a
namespace in 50 ms and every other write in 20 ms, reads at once::

    kube = FakeKubeServer(
        latency_rules={"create:namespaces": 0.05, "create": 0.02, "update": 0.02, "delete": 0.02}
    )
    kube.set_latency_rules({"get": 0.01})      # adds to the rules
    kube.set_latency(0.02, namespaces=0.05)    # the per-resource form: default + resources
    kube.clear_latency()                       # back to no latency at all

From the command line: ``python -m tests.fakekube --latency-rule create:namespaces=0.05
--latency-rule create=0.02`` (``--latency`` sets the default, ``--namespace-latency``
the ``namespaces`` rule). Every :class:`RequestRecord` in the request log carries the
``verb`` it was charged as and the ``latency`` charged, so tests assert the model
without timing anything; :meth:`FakeKubeServer.inject_rendezvous` likewise proves that
requests were in flight together without a clock.
"""

from __future__ import annotations

from .errors import KubeApiError
from .faults import VERBS, Fault, RequestRecord
from .resources import KUBERNETES_VERSION, ResourceType
from .server import DEFAULT_TOKEN, FakeKubeServer
from .store import ObjectStore

__all__ = [
    "DEFAULT_TOKEN",
    "KUBERNETES_VERSION",
    "VERBS",
    "FakeKubeServer",
    "Fault",
    "KubeApiError",
    "ObjectStore",
    "RequestRecord",
    "ResourceType",
]
