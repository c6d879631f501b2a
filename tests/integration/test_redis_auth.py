"""Redis with a password (AUTH/ACL) and TLS, through the one REDIS_URL setting
(security review finding 9)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import AuthenticationError, ResponseError

from servicekit.devstack import EmbeddedRedis, free_port, port_open
from servicekit.redisconn import connect_redis
from servicekit.settings import load_settings


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis of the test's own that wants a password and has an ACL user."""
    port = free_port()
    process = subprocess.Popen(
        [
            EmbeddedRedis.executable(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--requirepass",
            "s3cret-pass",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, "Redis did not start"
            assert time.monotonic() < deadline, "Redis did not start in time"
            time.sleep(0.05)
        admin: Any = redis.Redis(host="127.0.0.1", port=port, password="s3cret-pass")
        try:
            admin.execute_command(
                "ACL", "SETUSER", "agentready", "on", ">app-pass", "~agentready:*", "&*", "+@all"
            )
        finally:
            admin.close()
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_a_password_in_the_url_authenticates(guarded_redis: int) -> None:
    for url in (
        f"redis://:s3cret-pass@127.0.0.1:{guarded_redis}/0",
        f"redis://agentready:app-pass@127.0.0.1:{guarded_redis}/0",  # an ACL user
    ):
        settings = load_settings("config", {"REDIS_URL": url})
        client = connect_redis(settings.redis_url)
        try:
            assert await client.ping()
            await client.set("agentready:probe", "1")
        finally:
            await client.aclose()


async def test_a_wrong_or_missing_password_is_refused(guarded_redis: int) -> None:
    for url in (
        f"redis://:wrong@127.0.0.1:{guarded_redis}/0",
        f"redis://127.0.0.1:{guarded_redis}/0",
    ):
        client = connect_redis(url)
        try:
            with pytest.raises(AuthenticationError):
                await client.set("agentready:probe", "1")
        finally:
            await client.aclose()
    # The ACL user is held to its keys.
    limited = connect_redis(f"redis://agentready:app-pass@127.0.0.1:{guarded_redis}/0")
    try:
        with pytest.raises(ResponseError, match="no permissions"):
            await limited.set("someone-else:key", "1")
    finally:
        await limited.aclose()


def test_rediss_urls_speak_tls() -> None:
    settings = load_settings("config", {"REDIS_URL": "rediss://:pw@cache.example:6380/0"})
    client = connect_redis(settings.redis_url)
    assert client.connection_pool.connection_class is SSLConnection
    assert client.connection_pool.connection_kwargs["password"] == "pw"
