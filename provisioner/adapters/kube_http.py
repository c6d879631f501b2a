"""HTTP to the Kubernetes API server on the event loop, with the official client's settings.

The official ``kubernetes`` client stays the source of the connection settings: it
loads the kubeconfig (its current context) or the in-cluster service account into a
``Configuration`` (server URL, CA, client certificate, TLS verification and server
name, bearer token and the hook that refreshes it, proxy). The requests themselves go
out through one ``aiohttp`` session instead of the client's synchronous urllib3 pool:
the client needed a thread per call in flight, and each call paid for the thread hop,
the generated wrappers (parameter validation, header and URL assembly) and GIL
contention with the event loop, about a millisecond per call on this project's
machines, three times over on the critical path of provisioning (the namespace, then
the guards, then the label).

What is kept from the client's behaviour:

* TLS: the CA file or data, the client certificate and key, ``verify_ssl`` (a
  kubeconfig's ``insecure-skip-tls-verify``), ``assert_hostname=False`` and
  ``tls_server_name`` (SNI and the name the certificate is checked against).
* Authentication: the header the client's ``auth_settings()`` computes. A kubeconfig
  with an exec plugin or an auth provider, and in-cluster credentials, come with a
  refresh hook that may re-read a file or run a command when the token is about to
  expire; the hook runs on a worker thread (never on the event loop), at most every
  :data:`AUTH_REFRESH_SECONDS`, well inside the loaders' own expiry margins (minutes).
* Proxies: ``proxy`` with ``proxy_headers``, unless ``no_proxy`` matches the server
  (the client's own rule); SOCKS proxies are refused at start-up (aiohttp has none).
* No retries here (the backend retries temporary errors itself) and one timeout for
  the whole request.

Connections are kept alive and reused (at most ``pool_size`` at once); the session is
created on first use, on the running event loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote, urlencode

import aiohttp
import yarl
from kubernetes import client, config
from kubernetes.client.rest import is_socks_proxy_url, should_bypass_proxies

from provisioner.domain.model import BackendError
from servicekit import tracing

JSON = "application/json"
# Errors a retry of the same call may cure.
TEMPORARY_STATUS = frozenset({404, 408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 10.0
# How long a computed Authorization header is reused before the refresh hook runs again.
AUTH_REFRESH_SECONDS = 10.0
_USER_AGENT = "agentready-provisioner"


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """The connection settings from a kubeconfig file (its current context), or
    in-cluster when ``kubeconfig`` is None."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    return configuration


def status_error(status: int, body: bytes, headers: Mapping[str, str]) -> BackendError:
    """An HTTP error answer (a ``Status`` object, usually) as a :class:`BackendError`,
    temporary or permanent."""
    reason, message = "Error", ""
    causes: list[dict[str, Any]] = []
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
        message = body[:200].decode("utf-8", "replace")
    if isinstance(parsed, dict):
        reason = str(parsed.get("reason") or reason)
        message = str(parsed.get("message") or message)
        causes = list((parsed.get("details") or {}).get("causes") or [])
    retry_after: float | None = None
    header = headers.get("Retry-After")
    if header:
        try:
            retry_after = min(float(header), MAX_RETRY_AFTER)
        except ValueError:
            retry_after = None
    temporary = status in TEMPORARY_STATUS
    if status == 403 and any(c.get("reason") == "NamespaceTerminating" for c in causes):
        temporary, reason = True, "NamespaceTerminating"
    return BackendError(
        f"HTTP {status}: {message}",
        temporary=temporary,
        reason=reason.replace(" ", ""),
        retry_after=retry_after,
        status=status,
    )


def classify(exc: BaseException) -> BackendError:
    """An exception raised while calling the API as a :class:`BackendError`: no answer
    in time or no connection is temporary, anything else permanent."""
    if isinstance(exc, BackendError):
        return exc
    # Before OSError: TimeoutError is one, and aiohttp's timeouts are TimeoutErrors.
    if isinstance(exc, TimeoutError):
        return BackendError(f"timed out: {exc!r}", temporary=True, reason="Timeout")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return BackendError(f"unreachable: {exc!r}", temporary=True, reason="Unreachable")
    return BackendError(f"{type(exc).__name__}: {exc}", temporary=False, reason="ClientError")


def _ssl_context(configuration: client.Configuration) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=configuration.ssl_ca_cert or None,
        cadata=getattr(configuration, "ca_cert_data", None) or None,
    )
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    return context


class KubeHttp:
    """JSON over HTTP to one API server.

    Args:
        configuration: the official client's settings (see :func:`load_configuration`).
        timeout: seconds per request, connecting and answering included.
        pool_size: connections kept to the server at most.
    """

    def __init__(
        self, configuration: client.Configuration, *, timeout: float, pool_size: int
    ) -> None:
        self._configuration = configuration
        self._base = str(configuration.host).rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if self._base.startswith("https:"):
            self._ssl = _ssl_context(configuration)
        self._server_hostname: str | None = configuration.tls_server_name or None
        self._proxy: str | None = None
        self._proxy_headers: dict[str, str] | None = None
        if configuration.proxy and not should_bypass_proxies(
            self._base, configuration.no_proxy or ""
        ):
            if is_socks_proxy_url(configuration.proxy):  # type: ignore[no-untyped-call]
                raise ValueError(f"SOCKS proxies are not supported: {configuration.proxy}")
            self._proxy = str(configuration.proxy)
            self._proxy_headers = dict(configuration.proxy_headers or {}) or None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        # The Authorization header: computed once, or every AUTH_REFRESH_SECONDS when
        # the configuration carries a refresh hook (on a thread: the hook may block).
        self._refreshing = configuration.refresh_api_key_hook is not None
        self._auth: dict[str, str] = {} if self._refreshing else self._auth_headers()
        self._auth_at: float | None = None  # monotonic time of the last refresh
        self._auth_lock = asyncio.Lock()

    def _auth_headers(self) -> dict[str, str]:
        """The headers the official client would authenticate with (runs its hook)."""
        headers: dict[str, str] = {}
        for setting in self._configuration.auth_settings().values():
            item = cast(Mapping[str, Any], setting)
            if item.get("in") == "header" and item.get("value"):
                headers[str(item["key"]).title()] = str(item["value"])
        return headers

    def _auth_fresh(self) -> bool:
        return not self._refreshing or (
            self._auth_at is not None and time.monotonic() - self._auth_at < AUTH_REFRESH_SECONDS
        )

    async def _auth_now(self) -> dict[str, str]:
        if not self._auth_fresh():
            async with self._auth_lock:  # one refresh at a time; the others wait for it
                if not self._auth_fresh():
                    self._auth = await asyncio.to_thread(self._auth_headers)
                    self._auth_at = time.monotonic()
        return self._auth

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # ``ssl`` matters for https only; True is aiohttp's default verification.
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, ssl=self._ssl if self._ssl is not None else True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"Accept": JSON, "User-Agent": _USER_AGENT},
                auto_decompress=True,
                # A client span per API request when tracing is on (none otherwise).
                trace_configs=tracing.http_trace_configs(),
            )
        return self._session

    async def close(self) -> None:
        """Closes the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
        accept: tuple[int, ...] = (),
    ) -> Any:
        """One request; the answer's JSON (None for an empty body).

        Args:
            path: the API path, e.g. ``/api/v1/namespaces/acme`` (already quoted).
            body: sent as JSON (valid YAML too, for server-side apply).
            accept: error statuses that are an answer (e.g. 404 on a delete): the call
                returns None.

        Raises:
            BackendError: an error answer, a timeout, no connection.
        """
        url = self._base + path
        if query:
            url += "?" + urlencode(query)
        headers = dict(await self._auth_now())
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        try:
            async with self._open().request(
                method,
                yarl.URL(url, encoded=True),
                data=data,
                headers=headers,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                server_hostname=self._server_hostname,
            ) as response:
                payload = await response.read()
        except Exception as exc:  # aiohttp and the OS raise many kinds; classify them all
            raise classify(exc) from exc
        if response.status >= 400:
            if response.status in accept:
                return None
            raise status_error(response.status, payload, response.headers)
        try:
            return json.loads(payload) if payload else None
        except ValueError as exc:
            raise BackendError(
                f"HTTP {response.status}: the answer is not JSON: {payload[:200]!r}",
                temporary=False,
                reason="BadResponse",
                status=response.status,
            ) from exc


def object_path(api_version: str, plural: str, name: str, namespace: str = "") -> str:
    """The REST path of one object, e.g. ``/apis/rbac.authorization.k8s.io/v1/namespaces/
    org-acme/rolebindings/agentready-owners``."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"{base}{scope}/{plural}/{quote(name, safe='')}"
