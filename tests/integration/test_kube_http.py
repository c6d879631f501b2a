"""The Provisioner's HTTP/1.1 client to the Kubernetes API server, against small
scripted servers on loopback: every way an answer can be framed, kept-alive
connections the server closed, error answers, timeouts, TLS, and proxies (a tunnel
to an https server, absolute-form requests to an http one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from kubernetes import client

from provisioner.adapters.kube_http import KubeHttp
from provisioner.domain.model import BackendError
from tests.pki import make_pki

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def read_request(reader: Reader) -> tuple[str, dict[str, str], bytes]:
    """One request: its request line, headers (names in lower case) and body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head[0], headers, body


def answer(status: int, body: object, *, headers: str = "") -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


class Scripted:
    """A server that hands each connection to ``script`` and notes what it saw."""

    def __init__(self, script: Callable[[Reader, Writer, Scripted], Awaitable[None]]) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.script(reader, writer, self)
        writer.close()

    async def request(self, reader: Reader) -> tuple[str, dict[str, str], bytes]:
        seen = await read_request(reader)
        self.requests.append(seen)
        return seen


@contextlib.asynccontextmanager
async def serving(
    script: Callable[[Reader, Writer, Scripted], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Scripted]:
    scripted = Scripted(script)
    server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0, ssl=tls)
    scripted.port = server.sockets[0].getsockname()[1]
    try:
        yield scripted
    finally:
        server.close()


def http(url: str, *, timeout: float = 5.0, **settings: object) -> KubeHttp:
    configuration = client.Configuration()
    configuration.host = url
    configuration.api_key = {"authorization": "Bearer sesame"}
    for name, value in settings.items():
        setattr(configuration, name, value)
    return KubeHttp(configuration, timeout=timeout, pool_size=4)


async def test_answers_of_every_framing_are_read_and_connections_kept() -> None:
    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        while True:
            line, _, _ = await server.request(reader)
            if line.startswith("GET /length"):
                writer.write(answer(200, {"framing": "length"}))
            elif line.startswith("GET /chunked"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b'6\r\n{"fram\r\n'
                    b'12;ext=1\r\ning": "chunked"}   \r\n'
                    b"0\r\nX-Trailer: 1\r\n\r\n"
                )
            else:  # no length: the answer ends with the connection
                writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"framing": "close"}')
                await writer.drain()
                return

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}")
        try:
            assert await api.request("GET", "/length") == {"framing": "length"}
            assert await api.request("GET", "/chunked") == {"framing": "chunked"}
            assert await api.request("GET", "/close") == {"framing": "close"}
            assert server.connections == 1  # kept alive until the server said close
            assert await api.request("GET", "/length") == {"framing": "length"}
            assert server.connections == 2
        finally:
            await api.close()
    # What went out: the bearer token, JSON accepted, the path as given.
    line, headers, _ = server.requests[0]
    assert line == "GET /length HTTP/1.1"
    assert headers["authorization"] == "Bearer sesame"
    assert headers["accept"] == "application/json"
    assert headers["host"] == f"127.0.0.1:{server.port}"


async def test_a_body_goes_out_as_json_with_its_content_type_and_query() -> None:
    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        _, _, body = await server.request(reader)
        writer.write(answer(201, json.loads(body)))

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}")
        try:
            sent = {"metadata": {"name": "org-acme"}, "data": "é"}
            got = await api.request(
                "PATCH",
                "/api/v1/namespaces/org-acme",
                query=(("fieldManager", "m"), ("force", "true")),
                body=sent,
                content_type="application/apply-patch+yaml",
            )
        finally:
            await api.close()
    assert got == sent
    line, headers, _ = server.requests[0]
    assert line == "PATCH /api/v1/namespaces/org-acme?fieldManager=m&force=true HTTP/1.1"
    assert headers["content-type"] == "application/apply-patch+yaml"


async def test_a_kept_alive_connection_the_server_closed_is_replaced() -> None:
    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        await server.request(reader)
        writer.write(answer(200, {"n": server.connections}))
        await writer.drain()
        # Then the connection is closed, as an idle timeout on the server would.

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}")
        try:
            assert await api.request("GET", "/a") == {"n": 1}
            assert await api.request("GET", "/b") == {"n": 2}
        finally:
            await api.close()
    assert [r[0] for r in server.requests] == ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]


async def test_a_new_connection_closed_without_an_answer_is_a_temporary_error() -> None:
    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        await server.request(reader)  # and goes without a word

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}")
        try:
            with pytest.raises(BackendError) as caught:
                await api.request("GET", "/a")
        finally:
            await api.close()
    assert (caught.value.temporary, caught.value.reason) == (True, "Unreachable")
    assert server.connections == 1  # no retry on a connection that was new


async def test_an_error_answer_keeps_its_status_reason_and_retry_after() -> None:
    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        while True:
            await server.request(reader)
            status = {"kind": "Status", "reason": "TooManyRequests", "message": "slow down"}
            writer.write(answer(429, status, headers="retry-after: 3\r\n"))

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}")
        try:
            with pytest.raises(BackendError) as caught:
                await api.request("GET", "/a")
            assert await api.request("GET", "/a", accept=(429,)) is None
        finally:
            await api.close()
    error = caught.value
    assert (error.status, error.reason, error.temporary) == (429, "TooManyRequests", True)
    assert error.retry_after == 3.0
    assert "slow down" in str(error)


async def test_an_answer_that_is_not_http_is_a_temporary_error() -> None:
    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        await server.request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}")
        try:
            with pytest.raises(BackendError) as caught:
                await api.request("GET", "/a")
        finally:
            await api.close()
    assert (caught.value.temporary, caught.value.reason) == (True, "BadResponse")


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_not_reused() -> None:
    answer_now = asyncio.Event()

    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        while True:
            await server.request(reader)
            if server.connections == 1:
                await answer_now.wait()  # the first connection never gets its answer
            writer.write(answer(200, {"n": server.connections}))

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}", timeout=0.2)
        try:
            with pytest.raises(BackendError) as caught:
                await api.request("GET", "/slow")
            assert (caught.value.temporary, caught.value.reason) == (True, "Timeout")
            # A late answer on that connection must not be read as the next one's.
            answer_now.set()
            assert await api.request("GET", "/next") == {"n": 2}
        finally:
            await api.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_tls(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server_cert"], pki["server_key"])
    return context


async def echo_path(reader: Reader, writer: Writer, server: Scripted) -> None:
    while True:
        line, headers, _ = await server.request(reader)
        writer.write(answer(200, {"path": line.split()[1], "auth": headers["authorization"]}))


async def test_https_verifies_the_server_against_the_configured_ca(
    pki: dict[str, Path],
) -> None:
    async with serving(echo_path, server_tls(pki)) as server:
        trusted = http(f"https://localhost:{server.port}", ssl_ca_cert=str(pki["ca"]))
        untrusted = http(f"https://localhost:{server.port}")
        try:
            assert await trusted.request("GET", "/api") == {
                "path": "/api",
                "auth": "Bearer sesame",
            }
            with pytest.raises(BackendError) as caught:
                await untrusted.request("GET", "/api")
        finally:
            await trusted.close()
            await untrusted.close()
    assert caught.value.reason == "Unreachable"  # certificate verify failed
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


async def test_https_goes_through_a_proxy_tunnel_with_the_proxy_headers(
    pki: dict[str, Path],
) -> None:
    async with serving(echo_path, server_tls(pki)) as upstream:

        async def tunnel(reader: Reader, writer: Writer, proxy: Scripted) -> None:
            line, _, _ = await proxy.request(reader)
            host, _, port = line.split()[1].rpartition(":")
            assert host == "localhost"
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(source: Reader, sink: Writer) -> None:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                sink.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async with serving(tunnel) as proxy:
            api = http(
                f"https://localhost:{upstream.port}",
                ssl_ca_cert=str(pki["ca"]),
                proxy=f"http://127.0.0.1:{proxy.port}",
                proxy_headers={"Proxy-Authorization": "Basic cHJveHk6cHc="},
            )
            try:
                assert await api.request("GET", "/api/v1/namespaces") == {
                    "path": "/api/v1/namespaces",
                    "auth": "Bearer sesame",
                }
            finally:
                await api.close()
    line, headers, _ = proxy.requests[0]
    assert line == f"CONNECT localhost:{upstream.port} HTTP/1.1"
    assert headers["proxy-authorization"] == "Basic cHJveHk6cHc="
    assert "authorization" not in headers  # the bearer token went inside the tunnel only


async def test_plain_http_through_a_proxy_sends_absolute_urls() -> None:
    async with serving(echo_path) as proxy:
        api = http(
            "http://kube.internal:8080",
            proxy=f"http://127.0.0.1:{proxy.port}",
            proxy_headers={"Proxy-Authorization": "Basic cHJveHk6cHc="},
        )
        try:
            got = await api.request("GET", "/api/v1/namespaces")
        finally:
            await api.close()
    assert got["path"] == "http://kube.internal:8080/api/v1/namespaces"
    _, headers, _ = proxy.requests[0]
    assert headers["proxy-authorization"] == "Basic cHJveHk6cHc="
    assert headers["host"] == "kube.internal:8080"


def test_a_proxy_it_cannot_speak_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="only http:// proxies"):
        http("https://kube.internal:6443", proxy="socks5://127.0.0.1:1080")


def test_no_proxy_bypasses_the_proxy() -> None:
    api = http(
        "https://kube.internal:6443", proxy="socks5://127.0.0.1:1080", no_proxy="kube.internal"
    )
    assert api._proxy is None


async def test_a_prepared_request_goes_out_with_the_credentials_current_when_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request prepared ahead (or retried) never carries a token refreshed since."""
    monkeypatch.setattr("provisioner.adapters.kube_http.AUTH_REFRESH_SECONDS", 0.0)

    async def script(reader: Reader, writer: Writer, server: Scripted) -> None:
        while True:
            await server.request(reader)
            writer.write(answer(200, {}))

    refreshed = 0

    def refresh(configuration: client.Configuration) -> None:
        nonlocal refreshed
        refreshed += 1
        configuration.api_key = {"authorization": f"Bearer token-{refreshed}"}

    async with serving(script) as server:
        api = http(f"http://127.0.0.1:{server.port}", refresh_api_key_hook=refresh)
        try:
            prepared = api.prepare("PATCH", "/api/v1/namespaces/org-acme", body={"a": 1})
            await api.send(prepared)
            await api.send(prepared)  # as a retry would
        finally:
            await api.close()
    tokens = [headers["authorization"] for _, headers, _ in server.requests]
    assert tokens == ["Bearer token-1", "Bearer token-2"]
    assert [body for _, _, body in server.requests] == [b'{"a":1}', b'{"a":1}']
