"""ConfigService: SetConfig → WatchConfig latency, SetConfig throughput, idle streams.

One ConfigService replica runs as its own process; watchers run in several client
processes, as pods would. Figures printed:

* latency from SetConfig to a watcher receiving it, 1 watcher (p50/p99);
* the same until the *last* of 1000 watchers (spread over 4 processes) has it;
* SetConfig throughput with concurrent writers;
* server memory per idle stream with 10,000 open streams.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
import uuid
from typing import Any

import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

from tests.bench.common import bench_environment, ms, percentile
from tests.e2e.watching import Replica

Response = config_pb2.WatchConfigResponse


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _watch_worker(
    port: int,
    organization: str,
    token: str,
    streams: int,
    channels: int,
    reports: Any,
    stop: Any,
) -> None:
    """A client process holding ``streams`` watch streams; reports, per revision,
    when the last of its streams received it (monotonic clock, shared by processes)."""

    async def run() -> None:
        pending: dict[int, list[float]] = {}
        ready = 0
        opened = [
            grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(channels)
        ]
        metadata = (("authorization", f"Bearer {token}"),)

        async def one(index: int) -> None:
            nonlocal ready
            stub = config_service_pb2_grpc.ConfigServiceStub(opened[index % channels])
            call = stub.WatchConfig(
                config_pb2.WatchConfigRequest(organization=organization), metadata=metadata
            )
            async for message in call:
                if message.type == Response.EVENT_TYPE_SNAPSHOT:
                    ready += 1
                    if ready == streams:
                        reports.put(("ready", streams))
                elif message.type == Response.EVENT_TYPE_CHANGE:
                    now = time.monotonic()
                    seen = pending.setdefault(message.revision, [0, 0.0])
                    seen[0] += 1
                    seen[1] = max(seen[1], now)
                    if seen[0] == streams:
                        reports.put(("revision", message.revision, seen[1]))
                        del pending[message.revision]

        tasks = [asyncio.create_task(one(i)) for i in range(streams)]
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in opened:
            await channel.close()

    asyncio.run(run())


class Watchers:
    """``processes`` client processes holding ``per_process`` streams each."""

    def __init__(
        self,
        port: int,
        organization: str,
        token: str,
        processes: int,
        per_process: int,
        channels: int = 4,
    ) -> None:
        context = mp.get_context("spawn")
        self.reports: Any = context.Queue()
        self.stop = context.Event()
        self.count = processes
        self.processes = [
            context.Process(
                target=_watch_worker,
                args=(port, organization, token, per_process, channels, self.reports, self.stop),
                daemon=True,
            )
            for _ in range(processes)
        ]
        for process in self.processes:
            process.start()
        ready = 0
        while ready < processes:
            kind, *_ = self.reports.get(timeout=120)
            ready += kind == "ready"

    def arrival(self, revision: int, timeout: float = 30) -> float:
        """When the last watcher of every process had ``revision``."""
        latest, reported = 0.0, 0
        deadline = time.monotonic() + timeout
        while reported < self.count:
            kind, rev, at = self.reports.get(timeout=max(0.1, deadline - time.monotonic()))
            if kind == "revision" and rev == revision:
                latest, reported = max(latest, at), reported + 1
        return latest

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


async def _latency(
    port: int, organization: str, token: str, watchers: Watchers | None, writes: int
) -> list[float]:
    """SetConfig, then wait for the watchers; one write at a time."""
    latencies = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        for i in range(writes):
            started = time.monotonic()
            entry = await stub.SetConfig(
                config_pb2.SetConfigRequest(
                    organization=organization,
                    service="ai",
                    key="threshold",
                    value=config_pb2.Value(int_value=i + 1_000_000),
                ),
                metadata=metadata,
            )
            assert watchers is not None
            arrived = await asyncio.to_thread(watchers.arrival, entry.revision)
            latencies.append(arrived - started)
    return latencies


async def _throughput(port: int, keys: Any, writers: int, seconds: float) -> tuple[int, float]:
    """Concurrent writers, each on its own organization and key; (writes, elapsed)."""
    count = 0
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + seconds

    async def writer(n: int) -> None:
        nonlocal count
        organization = f"tp-{n % 8}-{uuid.uuid4().hex[:6]}"
        stub = config_service_pb2_grpc.ConfigServiceStub(channels[n % len(channels)])
        metadata = (("authorization", f"Bearer {keys.token(organization)}"),)
        i = 0
        while time.monotonic() < deadline:
            await stub.SetConfig(
                config_pb2.SetConfigRequest(
                    organization=organization,
                    service="ai",
                    key=f"k{n}",
                    value=config_pb2.Value(int_value=i),
                ),
                metadata=metadata,
            )
            i += 1
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(writer(n) for n in range(writers)))
    elapsed = time.monotonic() - started
    for channel in channels:
        await channel.close()
    return count, elapsed


def main(args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    with bench_environment() as (env, keys):
        replica = Replica({**env, "CONFIG_POLL_INTERVAL_SECONDS": "1"})
        try:
            port = replica.port
            print(f"ConfigService pid {replica.process.pid} on port {port}")

            organization = f"bench-{uuid.uuid4().hex[:8]}"
            token = keys.token(organization)
            one = Watchers(port, organization, token, processes=1, per_process=1, channels=1)
            writes = 100 if quick else 500
            latencies = asyncio.run(_latency(port, organization, token, one, writes))
            one.close()
            print(
                f"SetConfig -> 1 watcher ({writes} writes): "
                f"p50 {ms(percentile(latencies, 50))}, p99 {ms(percentile(latencies, 99))}"
            )

            organization = f"bench-{uuid.uuid4().hex[:8]}"
            token = keys.token(organization)
            many = Watchers(port, organization, token, processes=4, per_process=250)
            writes = 50 if quick else 200
            latencies = asyncio.run(_latency(port, organization, token, many, writes))
            many.close()
            print(
                f"SetConfig -> last of 1000 watchers in 4 processes ({writes} writes): "
                f"p50 {ms(percentile(latencies, 50))}, p99 {ms(percentile(latencies, 99))}"
            )

            for writers in (16, 64):
                count, elapsed = asyncio.run(_throughput(port, keys, writers, 3 if quick else 8))
                print(
                    f"SetConfig throughput, {writers} concurrent writers: "
                    f"{count / elapsed:.0f} writes/s ({count} in {elapsed:.1f} s)"
                )

            streams = 2_000 if quick else 10_000
            organization = f"bench-{uuid.uuid4().hex[:8]}"
            token = keys.token(organization)
            time.sleep(1)
            before = _rss_kib(replica.process.pid)
            idle = Watchers(
                port, organization, token, processes=4, per_process=streams // 4, channels=8
            )
            time.sleep(2)
            after = _rss_kib(replica.process.pid)
            idle.close()
            per_stream = (after - before) * 1024 / streams
            print(
                f"Idle streams: {streams} open, server RSS {before // 1024} MiB -> "
                f"{after // 1024} MiB, {per_stream / 1024:.1f} KiB per stream"
            )
        finally:
            replica.stop()
