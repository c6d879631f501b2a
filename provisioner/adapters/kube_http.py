"""HTTP/1.1 to the Kubernetes API server on the event loop, with the official client's settings.

The official ``kubernetes`` client stays the source of the connection settings: it
loads the kubeconfig (its current context) or the in-cluster service account into a
``Configuration`` (server URL, CA, client certificate, TLS verification and server
name, bearer token and the hook that refreshes it, proxy). The requests themselves go
out on asyncio streams, over kept-alive connections, with a small HTTP/1.1 client of
our own: the official client needed a thread per call in flight, and a general
purpose asyncio client (request and response objects, cookie jars, hooks, timers)
cost about 0.25 ms of CPU per call on this project's machines, more than half a
millisecond of latency per call on the critical path of provisioning (the namespace,
then the four guards at once, then the label). The API server speaks plain HTTP/1.1
with JSON bodies, so the client needs only: a request with a ``Content-Length`` body,
and an answer with a ``Content-Length`` body, a chunked one, or one that ends with
the connection.

What is kept from the official client's behaviour:

* TLS: the CA file or data, the client certificate and key, ``verify_ssl`` (a
  kubeconfig's ``insecure-skip-tls-verify``), ``assert_hostname=False`` and
  ``tls_server_name`` (SNI and the name the certificate is checked against).
* Authentication: the header the client's ``auth_settings()`` computes. A kubeconfig
  with an exec plugin or an auth provider, and in-cluster credentials, come with a
  refresh hook that may re-read a file or run a command when the token is about to
  expire; the hook runs on a worker thread (never on the event loop), at most every
  :data:`AUTH_REFRESH_SECONDS`, well inside the loaders' own expiry margins (minutes).
* Proxies: an ``http://`` ``proxy`` with ``proxy_headers``, unless ``no_proxy``
  matches the server (the client's own rule): a tunnel (``CONNECT``) to an https
  server, absolute-form requests to an http one. Other proxy schemes (SOCKS, https)
  are refused at start-up.
* No retries here (the backend retries temporary errors itself), except once on a
  fresh connection when a kept-alive one turns out closed before any answer came
  (the server may close idle connections at any time); one timeout for the whole
  request.

At most ``pool_size`` requests are in flight at once, each on a connection of its
own; idle connections are kept for the next requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

from kubernetes import client, config
from kubernetes.client.rest import should_bypass_proxies

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
    header = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
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


class ProtocolError(Exception):
    """The server (or a proxy) answered something that is not HTTP/1.x as expected."""


def classify(exc: BaseException) -> BackendError:
    """An exception raised while calling the API as a :class:`BackendError`: no answer
    in time, no connection, a connection lost or a garbled answer are temporary,
    anything else permanent."""
    if isinstance(exc, BackendError):
        return exc
    # Before OSError: TimeoutError is one.
    if isinstance(exc, TimeoutError):
        return BackendError(f"timed out: {exc!r}", temporary=True, reason="Timeout")
    if isinstance(exc, OSError | asyncio.IncompleteReadError | asyncio.LimitOverrunError):
        return BackendError(f"unreachable: {exc!r}", temporary=True, reason="Unreachable")
    if isinstance(exc, ProtocolError):
        return BackendError(f"bad answer: {exc}", temporary=True, reason="BadResponse")
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


@dataclass(frozen=True)
class _Endpoint:
    """Where a URL points: scheme, host, port and path prefix."""

    secure: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        secure = parts.scheme == "https"
        return cls(
            secure, parts.hostname, parts.port or (443 if secure else 80), parts.path.rstrip("/")
        )

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.authority}"


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class _Connection:
    """One kept-alive connection to the server (or through the proxy to it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, int, dict[str, str]]:
    """The status line and headers of an answer: (HTTP version, status, headers)."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return version, int(code), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line: {line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                pass
            return b"".join(parts)
        parts.append((await reader.readexactly(size + 2))[:-2])


async def _read_answer(connection: _Connection, method: str) -> tuple[_Answer, bool]:
    """The answer on ``connection``, and whether the connection may be used again."""
    reader = connection.reader
    version, status, headers = await _read_head(reader)
    while 100 <= status < 200:  # 100 Continue and other interim answers
        version, status, headers = await _read_head(reader)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    reusable = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
        body = await reader.readexactly(length)
    else:  # the answer ends with the connection
        body, reusable = await reader.read(), False
    return _Answer(status, headers, body), reusable


class KubeHttp:
    """JSON over HTTP/1.1 to one API server.

    Args:
        configuration: the official client's settings (see :func:`load_configuration`).
        timeout: seconds per request, connecting and answering included.
        pool_size: requests (and so connections) in flight at most.
    """

    def __init__(
        self, configuration: client.Configuration, *, timeout: float, pool_size: int
    ) -> None:
        self._configuration = configuration
        self._server = _Endpoint.parse(str(configuration.host))
        self._ssl: ssl.SSLContext | None = None
        if self._server.secure:
            self._ssl = _ssl_context(configuration)
        self._server_hostname: str | None = configuration.tls_server_name or None
        self._proxy: _Endpoint | None = None
        self._proxy_headers: dict[str, str] = {}
        proxy = str(configuration.proxy or "")
        bypass = should_bypass_proxies(str(configuration.host), configuration.no_proxy or "")
        if proxy and not bypass:
            if not proxy.startswith("http://"):
                raise ValueError(f"only http:// proxies are supported: {proxy}")
            self._proxy = _Endpoint.parse(proxy)
            self._proxy_headers = dict(configuration.proxy_headers or {})
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max(1, pool_size))
        self._idle: list[_Connection] = []
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

    async def close(self) -> None:
        """Closes the kept-alive connections; later requests open new ones."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()

    # -- connections ----------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        server_hostname = (self._server_hostname or self._server.host) if self._ssl else None
        if self._proxy is None:
            reader, writer = await asyncio.open_connection(
                self._server.host, self._server.port, ssl=self._ssl, server_hostname=server_hostname
            )
            return _Connection(reader, writer)
        reader, writer = await asyncio.open_connection(self._proxy.host, self._proxy.port)
        connection = _Connection(reader, writer)
        if self._ssl is None:
            return connection  # plain http: absolute-form requests to the proxy
        try:
            authority = self._server.authority
            head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in self._proxy_headers.items())
            writer.write((head + "\r\n").encode("latin-1"))
            _version, status, _headers = await _read_head(reader)
            if status != 200:
                raise BackendError(
                    f"the proxy refused a tunnel to {authority}: HTTP {status}",
                    temporary=status in TEMPORARY_STATUS,
                    reason="ProxyRefused",
                    status=status,
                )
            await writer.start_tls(self._ssl, server_hostname=server_hostname)
        except BaseException:
            connection.close()
            raise
        return connection

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.writer.is_closing() and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    # -- requests -------------------------------------------------------------------------

    def _head(self, method: str, target: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._server.authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if length or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, head: bytes, body: bytes, method: str) -> _Answer:
        """Sends the request on a kept-alive connection (a new one when none is idle, or
        when the idle one turns out closed before answering) and reads the answer."""
        while True:
            connection = self._take()
            fresh = connection is None
            if connection is None:
                connection = await self._connect()
            try:
                connection.writer.write(head + body)
                answer, reusable = await _read_answer(connection, method)
            except BaseException as exc:
                connection.close()  # cancelled or broken: what it carries next is unknown
                partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                if fresh or partial or not isinstance(exc, ConnectionError | EOFError):
                    raise
                continue  # a kept-alive connection the server had closed: once more
            if reusable:
                self._idle.append(connection)
            else:
                connection.close()
            return answer

    def prepare(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = JSON,
        accept: tuple[int, ...] = (),
    ) -> Prepared:
        """A request ready to send (:meth:`send`): its target, headers and encoded body.

        Preparing is the CPU work of a request; a caller that knows its next requests
        prepares them while it waits for an earlier answer, so that what follows the
        answer is only writing them out.

        Args:
            path: the API path, e.g. ``/api/v1/namespaces/acme`` (already quoted).
            body: sent as JSON (valid YAML too, for server-side apply).
            accept: error statuses that are an answer (e.g. 404 on a delete): the call
                returns None.
        """
        target = self._server.prefix + path
        if query:
            target += "?" + urlencode(query)
        headers = {"Accept": JSON, "User-Agent": _USER_AGENT}
        data = b""
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        if self._proxy is not None and self._ssl is None:
            # Through a plain-http proxy: the absolute URL, and the proxy's headers.
            target = f"http://{self._server.authority}{target}"
            headers.update(self._proxy_headers)
        url = target if target.startswith("http:") else self._server.origin + target
        prepared = Prepared(method, target, url, headers, data, accept)
        if self._auth_fresh():
            prepared.auth = self._auth
            prepared.head = self._head(method, target, {**headers, **self._auth}, len(data))
        return prepared

    async def send(self, prepared: Prepared) -> Any:
        """Sends a prepared request (again, when retried); the answer's JSON (None for an
        empty body, or an error status the request accepts).

        Raises:
            BackendError: an error answer, a timeout, no connection.
        """
        auth = await self._auth_now()
        traced: dict[str, str] = {}  # the span's own headers (traceparent), if tracing
        with tracing.http_client_span(prepared.method, prepared.url, traced) as span:
            if traced or prepared.auth is not auth:  # built with other credentials
                head = self._head(
                    prepared.method,
                    prepared.target,
                    {**prepared.headers, **auth, **traced},
                    len(prepared.data),
                )
                if not traced:
                    prepared.head, prepared.auth = head, auth
            else:
                head = prepared.head
            try:
                async with self._slots, asyncio.timeout(self._timeout):
                    answer = await self._exchange(head, prepared.data, prepared.method)
            except Exception as exc:  # the OS and the streams raise many kinds
                raise classify(exc) from exc
            span.answered(answer.status)
        if answer.status >= 400:
            if answer.status in prepared.accept:
                return None
            raise status_error(answer.status, answer.body, answer.headers)
        try:
            return json.loads(answer.body) if answer.body else None
        except ValueError as exc:
            raise BackendError(
                f"HTTP {answer.status}: the answer is not JSON: {answer.body[:200]!r}",
                temporary=False,
                reason="BadResponse",
                status=answer.status,
            ) from exc

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
        """One request (:meth:`prepare`, then :meth:`send`); the answer's JSON.

        Raises:
            BackendError: an error answer, a timeout, no connection.
        """
        return await self.send(
            self.prepare(
                method, path, query=query, body=body, content_type=content_type, accept=accept
            )
        )


@dataclass(slots=True, eq=False)
class Prepared:
    """A request of :meth:`KubeHttp.prepare`: everything but the credentials, and the
    whole head as built with the credentials current then (rebuilt when they change)."""

    method: str
    target: str
    url: str
    headers: dict[str, str]
    data: bytes
    accept: tuple[int, ...]
    head: bytes = b""
    auth: dict[str, str] | None = None


def object_path(api_version: str, plural: str, name: str, namespace: str = "") -> str:
    """The REST path of one object, e.g. ``/apis/rbac.authorization.k8s.io/v1/namespaces/
    org-acme/rolebindings/agentready-owners``."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"{base}{scope}/{plural}/{quote(name, safe='')}"
