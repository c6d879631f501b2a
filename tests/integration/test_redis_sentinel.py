"""Redis through Sentinel (REDIS_SENTINELS): the servers find the master by asking the
sentinels and follow it through a failover. A real master, replica and sentinel are
started on free ports (the redis-server binary runs as a sentinel with ``--sentinel``).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from servicekit.devstack import EmbeddedRedis, free_port, port_open
from servicekit.redisconn import connect_redis
from servicekit.settings import load_settings

MASTER = "agentready-test"


def launch(args: list[str], port: int, processes: list[subprocess.Popen[bytes]]) -> None:
    process = subprocess.Popen(
        [EmbeddedRedis.executable(), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert process.poll() is None, f"redis-server {args[:2]} did not start"
        assert time.monotonic() < deadline, "redis-server did not start in time"
        time.sleep(0.05)


def server_args(port: int, folder: Path) -> list[str]:
    folder.mkdir()
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(folder), "--requirepass", "pw", "--masterauth", "pw",
    ]  # fmt: skip


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    """(master port, replica port, sentinel port), the replica in sync."""
    master, replica, sentinel = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        launch(server_args(master, tmp_path / "master"), master, processes)
        launch(
            [*server_args(replica, tmp_path / "replica"), "--replicaof", "127.0.0.1", str(master)],
            replica,
            processes,
        )
        wait_until(lambda: info(replica, "replication").get("master_link_status") == "up")
        config = tmp_path / "sentinel.conf"  # a sentinel rewrites its own file
        config.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master} 1\n"
            f"sentinel auth-pass {MASTER} pw\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )
        launch([str(config), "--sentinel"], sentinel, processes)
        yield master, replica, sentinel
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def info(port: int, section: str) -> dict[str, Any]:
    client: Any = redis.Redis(host="127.0.0.1", port=port, password="pw")
    try:
        result: dict[str, Any] = client.info(section)
        return result
    finally:
        client.close()


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    """Polls ``condition`` (a failover takes the sentinel a few seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def failover_started(sentinel: Any) -> bool:
    """Asks for a failover; False while the sentinel has not yet heard from the replica
    itself (it learns of it from the master's INFO first)."""
    try:
        sentinel.sentinel_failover(MASTER)
    except ResponseError as exc:
        if "NOGOODSLAVE" in str(exc):
            return False
        raise
    return True


def read(port: int, key: str) -> bytes | None:
    client: Any = redis.Redis(host="127.0.0.1", port=port, password="pw")
    try:
        value: bytes | None = client.get(key)
        return value
    finally:
        client.close()


async def test_the_servers_find_the_master_through_the_sentinels_and_follow_a_failover(
    sentinel_setup: tuple[int, int, int],
) -> None:
    master, replica, sentinel = sentinel_setup
    settings = load_settings(
        "config",
        {
            # The URL's host is not used with sentinels: only its password and database.
            "REDIS_URL": "redis://:pw@unused.invalid:6379/0",
            "REDIS_SENTINELS": f"127.0.0.1:{sentinel}",
            "REDIS_SENTINEL_MASTER": MASTER,
        },
    )
    client = connect_redis(
        settings.redis_url,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
    )
    try:
        await client.set("agentready:probe", b"before")
        assert read(master, "agentready:probe") == b"before"

        # The sentinel must know the replica before it can promote it.
        sentinel_client: Any = redis.Redis(host="127.0.0.1", port=sentinel)
        try:
            wait_until(lambda: failover_started(sentinel_client))
            wait_until(
                lambda: sentinel_client.sentinel_get_master_addr_by_name(MASTER)[1] == replica
            )
        finally:
            sentinel_client.close()
        wait_until(lambda: info(replica, "replication").get("role") == "master")
        # Until the sentinel has turned the old master into a replica it still takes
        # writes (and loses them): Redis replicates asynchronously, which is why it is
        # never the only copy of anything here (DESIGN.md invariant 4).
        wait_until(lambda: info(master, "replication").get("role") == "slave")

        # The first write may land on the old master, now a replica: the client drops
        # that connection, and the next write goes to the new master.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                await client.set("agentready:probe", b"after")
                break
            except (RedisConnectionError, ReadOnlyError):
                assert asyncio.get_running_loop().time() < deadline, "never reached the new master"
                await asyncio.sleep(0.1)
        assert read(replica, "agentready:probe") == b"after"
    finally:
        await client.aclose()


def test_sentinel_settings_are_parsed_and_checked() -> None:
    settings = load_settings(
        "tenant",
        {"REDIS_SENTINELS": "redis-a:26379, redis-b:26379,[fd00::1]:26380"},
    )
    assert settings.redis_sentinels == (("redis-a", 26379), ("redis-b", 26379), ("fd00::1", 26380))
    assert settings.redis_sentinel_master == "mymaster"
    assert load_settings("tenant", {}).redis_sentinels == ()
    for bad in ("redis-a", "redis-a:0", "redis-a:x", "redis-a:26379,", ","):
        with pytest.raises(Exception, match="REDIS_SENTINELS"):
            load_settings("tenant", {"REDIS_SENTINELS": bad})


def test_the_url_gives_credentials_database_and_tls_to_the_sentinel_client() -> None:
    client = connect_redis(
        "rediss://app:se%40cret@ignored:6379/3",
        sentinels=[("127.0.0.1", 1)],
        sentinel_master="m",
        sentinel_password="sentinel-pw",
    )
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["username"] == "app"
    assert kwargs["password"] == "se@cret"
    assert kwargs["db"] == 3
    assert "SSL" in client.connection_pool.connection_class.__name__
