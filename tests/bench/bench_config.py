"""ConfigService side by side with etcd and the raw gRPC floor.

Two ConfigService replicas (processes of their own, on one scratch database and one
Redis), a one-member etcd (Debian's ``etcd-server``, a temporary data folder) and a
bare ``grpc.aio`` health server (``floor.py``). Clients for all of them are Python and
grpcio, in processes of their own; one clock (``time.perf_counter`` within a process,
``time.monotonic`` across processes). Every change is timed from just before the write
call to the moment the watcher has it. Measured, in this order:

1. hot reload, sequential changes: SetConfig → the SDK's ``AsyncConfigWatcher``
   listener on the same replica and on the other one; etcd Put → watch event;
2. the decomposition: the floor's health check, ConfigService's and etcd's health
   check, GetConfig, SetConfig with and without request_id, Redis PUBLISH →
   subscriber, a one-row PostgreSQL commit (alone and as BEGIN/INSERT/COMMIT);
3. fan-out: until the last of 100 and of 1,000 watch streams, spread over four client
   processes, has the change (ours: WatchConfig streams; etcd: Watch streams);
4. throughput with concurrent clients and server CPU per call (the server process's
   own counters, ``/proc/<pid>/stat``);
5. 10,000 idle streams: the server's memory per stream.

etcd's column is skipped, with the reason printed, when etcd cannot be had.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.watcher import AsyncConfigWatcher, ConfigEvent
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bench import etcd
from tests.bench.common import bench_environment
from tests.bench.etcdv3 import rpc_pb2_grpc
from tests.bench.results import RESULTS
from tests.e2e.watching import Replica

Response = config_pb2.WatchConfigResponse
HOT = "hot reload"
PARTS = "decomposition"
FLOOR = "floor"
FANOUT = "fan-out"
LOAD = "throughput"
IDLE = "idle streams"


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"changes": 100, "calls": 200, "fanout_writes": 20, "seconds": 2, "idle": 2_000}
    return {"changes": 1_000, "calls": 1_000, "fanout_writes": 100, "seconds": 5, "idle": 10_000}


# -- processes ------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from its own counters."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def _floor_server() -> Iterator[int]:
    """The bare health server (``floor.py``) in a process of its own; its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.floor"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- watch streams in client processes ------------------------------------------------


def _watch_worker(
    side: str,
    port: int,
    organization: str,
    token: str,
    streams: int,
    channels: int,
    reports: Any,
    stop: Any,
) -> None:
    """A client process holding ``streams`` watch streams (``side``: "ours" or
    "etcd"); reports, per revision, when the last of its streams had it."""

    async def run() -> None:
        pending: dict[int, list[float]] = {}
        ready = 0
        opened = [
            grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(channels)
        ]

        def arrived(revision: int) -> None:
            now = time.monotonic()
            seen = pending.setdefault(revision, [0, 0.0])
            seen[0] += 1
            seen[1] = max(seen[1], now)
            if seen[0] == streams:
                reports.put(("revision", revision, seen[1]))
                del pending[revision]

        def opened_one() -> None:
            nonlocal ready
            ready += 1
            if ready == streams:
                reports.put(("ready", streams, 0.0))

        async def ours(index: int) -> None:
            stub = config_service_pb2_grpc.ConfigServiceStub(opened[index % channels])
            call = stub.WatchConfig(
                config_pb2.WatchConfigRequest(organization=organization),
                metadata=(("authorization", f"Bearer {token}"),),
            )
            async for message in call:
                if message.type == Response.EVENT_TYPE_SNAPSHOT:
                    opened_one()
                elif message.type == Response.EVENT_TYPE_CHANGE and not message.fragment:
                    arrived(message.revision)

        async def theirs(index: int) -> None:
            async with etcd.watch(opened[index % channels], organization.encode()) as call:
                opened_one()
                while (message := await call.read()) is not None:
                    if message.events:
                        arrived(message.events[-1].kv.mod_revision)

        async def watch(index: int) -> None:
            try:
                await (ours if side == "ours" else theirs)(index)
            except Exception as exc:  # the parent fails at once, saying why
                reports.put(("failed", repr(exc)[:300], 0.0))

        tasks = [asyncio.create_task(watch(i)) for i in range(streams)]
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in opened:
            await channel.close()

    asyncio.run(run())


# Seconds the client processes may take to open all their streams.
READY_TIMEOUT = 300


class Watchers:
    """``processes`` client processes holding ``per_process`` watch streams each."""

    def __init__(
        self,
        side: str,
        port: int,
        organization: str,
        token: str,
        *,
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
                args=(
                    side,
                    port,
                    organization,
                    token,
                    per_process,
                    channels,
                    self.reports,
                    self.stop,
                ),
                daemon=True,
            )
            for _ in range(processes)
        ]
        try:
            for process in self.processes:
                process.start()
            ready = 0
            while ready < processes:
                # Opening thousands of streams takes minutes when the machine is slow.
                kind, detail, _ = self.reports.get(timeout=READY_TIMEOUT)
                if kind == "failed":
                    raise RuntimeError(f"a {side} watch stream failed: {detail}")
                ready += kind == "ready"
        except BaseException:
            self.close()
            raise

    def arrival(self, revision: int, timeout: float = 30) -> float:
        """When the last stream of every process had ``revision`` (monotonic)."""
        latest, reported = 0.0, 0
        deadline = time.monotonic() + timeout
        while reported < self.count:
            kind, rev, at = self.reports.get(timeout=max(0.1, deadline - time.monotonic()))
            if kind == "failed":
                raise RuntimeError(f"a watch stream failed: {rev}")
            if kind == "revision" and rev == revision:
                latest, reported = max(latest, at), reported + 1
        return latest

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)

    def __enter__(self) -> Watchers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the clients ----------------------------------------------------------------------


class Ours:
    """ConfigService as the bench drives it: one organization, one key."""

    def __init__(self, port: int, organization: str, token: str) -> None:
        self.port = port
        self.organization = organization
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub: Any = config_service_pb2_grpc.ConfigServiceStub(self.channel)
        self.counter = 0

    async def set(self, *, request_id: bool = False, key: str = "threshold") -> int:
        self.counter += 1
        entry = await self.stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=self.organization,
                service="ai",
                key=key,
                value=config_pb2.Value(int_value=self.counter),
                request_id=str(uuid.uuid4()) if request_id else "",
            ),
            metadata=self.metadata,
            timeout=10,
        )
        return int(entry.revision)

    async def get(self, key: str = "threshold") -> None:
        await self.stub.GetConfig(
            config_pb2.GetConfigRequest(organization=self.organization, service="ai", key=key),
            metadata=self.metadata,
            timeout=10,
        )

    async def close(self) -> None:
        await self.channel.close()


async def _timed(call: Any, count: int, warm_up: int = 20, *, idle: float = 0.0) -> list[float]:
    """``count`` sequential calls of ``call()``, after ``warm_up`` untimed ones; with
    ``idle``, each after that many seconds without a call."""
    for _ in range(warm_up):
        await call()
    samples = []
    for _ in range(count):
        if idle:
            await asyncio.sleep(idle)
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def _health(port: int, count: int, *, idle: float = 0.0) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        return await _timed(lambda: stub.Check(request, timeout=10), count, idle=idle)


# -- 1. hot reload --------------------------------------------------------------------


async def _hot_reload_ours(
    write_port: int, watch_port: int, organization: str, token: str, changes: int, **sdk: Any
) -> tuple[list[float], list[float]]:
    """SetConfig on one replica → the SDK listener of a watcher on ``watch_port``;
    (write → listener delays, SetConfig round trips)."""
    arrived: dict[int, float] = {}
    signal = asyncio.Event()

    def listener(event: ConfigEvent) -> None:
        if not event.snapshot:
            arrived[event.revision] = time.perf_counter()
            signal.set()

    writer = Ours(write_port, organization, token)
    watcher = AsyncConfigWatcher(
        f"127.0.0.1:{watch_port}", organization, token=token, on_change=listener, **sdk
    )
    delays, trips = [], []
    await watcher.start(timeout=30)
    try:
        for i in range(changes + 20):
            started = time.perf_counter()
            revision = await writer.set()
            answered = time.perf_counter()
            async with asyncio.timeout(10):
                while revision not in arrived:
                    signal.clear()
                    await signal.wait()
            if i >= 20:  # the first ones warm up connections and caches
                delays.append(arrived[revision] - started)
                trips.append(answered - started)
    finally:
        await watcher.stop()
        await writer.close()
    return delays, trips


async def _hot_reload_etcd(port: int, changes: int) -> tuple[list[float], list[float]]:
    """etcd Put → the event on a watch of that key; (delays, Put round trips)."""
    key = f"bench/{uuid.uuid4().hex[:8]}".encode()
    arrived: dict[int, float] = {}
    signal = asyncio.Event()
    delays, trips = [], []
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as write_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as watch_channel,
        etcd.watch(watch_channel, key) as call,
    ):
        kv: Any = rpc_pb2_grpc.KVStub(write_channel)

        async def read() -> None:
            while (message := await call.read()) is not None:
                now = time.perf_counter()
                for event in message.events:
                    arrived[event.kv.mod_revision] = now
                signal.set()

        reader = asyncio.create_task(read())
        try:
            for i in range(changes + 20):
                started = time.perf_counter()
                revision = await etcd.put(kv, key, str(i).encode())
                answered = time.perf_counter()
                async with asyncio.timeout(10):
                    while revision not in arrived:
                        signal.clear()
                        await signal.wait()
                if i >= 20:
                    delays.append(arrived[revision] - started)
                    trips.append(answered - started)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return delays, trips


# -- 2. the decomposition -------------------------------------------------------------


async def _parts(port: int, organization: str, token: str, calls: int) -> None:
    ours = Ours(port, organization, token)
    try:
        await ours.set()
        RESULTS.latency(PARTS, "GetConfig", await _timed(ours.get, calls))
        RESULTS.latency(PARTS, "SetConfig without request_id", await _timed(ours.set, calls))
        RESULTS.latency(
            PARTS,
            "SetConfig with request_id",
            await _timed(lambda: ours.set(request_id=True), calls),
        )
        for n in range(10):
            await ours.set(key=f"key-{n}")

        async def first_message() -> None:
            stream = ours.stub.WatchConfig(
                config_pb2.WatchConfigRequest(organization=organization),
                metadata=ours.metadata,
                timeout=10,
            )
            async for _ in stream:
                break
            stream.cancel()

        RESULTS.latency(
            PARTS,
            "WatchConfig opened → its SNAPSHOT (11 keys)",
            await _timed(first_message, max(100, calls // 5)),
        )
    finally:
        await ours.close()


async def _redis_publish(url: str, calls: int) -> list[float]:
    """PUBLISH on one connection → the message on a subscribed one."""
    channel = f"bench-{uuid.uuid4().hex[:8]}"
    publisher = aioredis.Redis.from_url(url)
    subscriber = aioredis.Redis.from_url(url)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe(channel)
        while await pubsub.get_message(timeout=1) is None:
            pass  # the subscribe confirmation

        async def once() -> None:
            await publisher.publish(channel, b"acme:1")
            async with asyncio.timeout(10):
                while await pubsub.get_message(ignore_subscribe_messages=True, timeout=5) is None:
                    pass

        return await _timed(once, calls)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await subscriber.aclose()
        await publisher.aclose()


async def _postgres_commit(url: str, calls: int) -> tuple[list[float], list[float]]:
    """A one-row INSERT committed on its own (one round trip), and the same as
    BEGIN / INSERT / COMMIT (three)."""
    connection = await asyncpg.connect(url)
    try:
        # A real (logged) table: temporary and unlogged ones skip the WAL.
        table = f"bench_commit_{uuid.uuid4().hex[:8]}"
        await connection.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v bigint)")
        try:
            insert = f"INSERT INTO {table} (v) VALUES ($1)"

            async def alone() -> None:
                await connection.execute(insert, 1)

            async def transaction() -> None:
                async with connection.transaction():
                    await connection.execute(insert, 2)

            return await _timed(alone, calls), await _timed(transaction, calls)
        finally:
            await connection.execute(f"DROP TABLE {table}")
    finally:
        await connection.close()


# -- 3. fan-out -----------------------------------------------------------------------


async def _fanout(
    side: str, port: int, organization: str, token: str, watchers: int, writes: int
) -> list[float]:
    """Until the last of ``watchers`` streams (over 4 processes) has each change."""
    streams = await asyncio.to_thread(
        Watchers, side, port, organization, token, processes=4, per_process=watchers // 4
    )
    writer = Ours(port, organization, token)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    kv: Any = rpc_pb2_grpc.KVStub(channel)
    delays = []
    try:
        for i in range(writes + 5):
            started = time.monotonic()
            if side == "ours":
                revision = await writer.set()
            else:
                revision = await etcd.put(kv, organization.encode(), b"v")
            arrived = await asyncio.to_thread(streams.arrival, revision)
            if i >= 5:
                delays.append(arrived - started)
    finally:
        await writer.close()
        await channel.close()
        await asyncio.to_thread(streams.close)
    return delays


# -- 4. throughput and CPU ------------------------------------------------------------


async def _throughput(
    call: Any, clients: int, seconds: float, pid: int
) -> tuple[int, float, float]:
    """``clients`` concurrent loops of ``call(n)`` for ``seconds``; (calls, elapsed,
    server CPU seconds)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(n)
            done += 1

    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    return done, elapsed, _cpu_seconds(pid) - cpu


async def _load_ours(port: int, keys: Any, pid: int, seconds: float, clients: int) -> None:
    writers = []
    for n in range(clients):
        organization = f"tp-{n}-{uuid.uuid4().hex[:6]}"
        writers.append(Ours(port, organization, keys.token(organization)))
    try:
        for writer in writers:
            await writer.set()
        done, elapsed, cpu = await _throughput(lambda n: writers[n].set(), clients, seconds, pid)
        RESULTS.figure(LOAD, f"SetConfig, {clients} concurrent clients", done / elapsed, "/s")
        RESULTS.figure(
            LOAD, "ConfigService CPU per SetConfig", cpu / done * 1000, "ms", f"{done} writes"
        )
        done, elapsed, cpu = await _throughput(lambda n: writers[n].get(), clients, seconds, pid)
        RESULTS.figure(LOAD, f"GetConfig, {clients} concurrent clients", done / elapsed, "/s")
        RESULTS.figure(
            LOAD, "ConfigService CPU per GetConfig", cpu / done * 1000, "ms", f"{done} reads"
        )
    finally:
        for writer in writers:
            await writer.close()


async def _load_etcd(port: int, pid: int, seconds: float, clients: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        kv: Any = rpc_pb2_grpc.KVStub(channel)
        done, elapsed, cpu = await _throughput(
            lambda n: etcd.put(kv, f"bench/tp/{n}".encode(), b"v"), clients, seconds, pid
        )
    RESULTS.figure(LOAD, f"etcd Put, {clients} concurrent clients", done / elapsed, "/s")
    RESULTS.figure(LOAD, "etcd CPU per Put", cpu / done * 1000, "ms", f"{done} writes")


# -- 5. idle streams ------------------------------------------------------------------


async def _idle(
    side: str, port: int, pid: int, organization: str, token: str, streams: int
) -> None:
    await asyncio.sleep(1)
    before = _rss_kib(pid)
    watchers = await asyncio.to_thread(
        Watchers, side, port, organization, token, processes=4, per_process=streams // 4, channels=8
    )
    try:
        await asyncio.sleep(2)
        after = _rss_kib(pid)
    finally:
        await asyncio.to_thread(watchers.close)
    name = "ConfigService" if side == "ours" else "etcd"
    RESULTS.figure(
        IDLE,
        f"{name}: memory per idle stream at {streams:,}",
        (after - before) / streams,
        "KiB",
        f"RSS {before // 1024} → {after // 1024} MiB, one server process",
    )


# -- the run --------------------------------------------------------------------------


def main(args: argparse.Namespace) -> None:
    size = _sizes(bool(getattr(args, "quick", False)))
    binary, reason = etcd.find_etcd()
    if binary is None:
        RESULTS.note(f"etcd column skipped: {reason}")
    with contextlib.ExitStack() as stack:
        env, keys = stack.enter_context(bench_environment())
        replica_env = {**env, "CONFIG_POLL_INTERVAL_SECONDS": "1"}
        first = Replica(replica_env)
        stack.callback(first.stop)
        second = Replica(replica_env)
        stack.callback(second.stop)
        floor = stack.enter_context(_floor_server())
        etcd_port, etcd_pid = 0, 0
        if binary is not None:
            etcd_port, process = stack.enter_context(etcd.etcd_server(binary))
            etcd_pid = process.pid
        print(
            f"ConfigService pids {first.process.pid}, {second.process.pid}; "
            f"etcd pid {etcd_pid or '-'}",
            flush=True,
        )

        asyncio.run(
            _measure(
                size,
                env,
                keys,
                first=first,
                second=second,
                floor=floor,
                etcd_port=etcd_port,
                etcd_pid=etcd_pid,
            )
        )


async def _measure(
    size: dict[str, int],
    env: dict[str, str],
    keys: Any,
    *,
    first: Replica,
    second: Replica,
    floor: int,
    etcd_port: int,
    etcd_pid: int,
) -> None:
    """Every measurement, on one event loop (grpc.aio clients stay on the loop they
    were first used on)."""

    def organization() -> tuple[str, str]:
        slug = f"bench-{uuid.uuid4().hex[:8]}"
        return slug, keys.token(slug)

    # 1. hot reload
    changes = size["changes"]
    org, token = organization()
    delays, trips = await _hot_reload_ours(first.port, first.port, org, token, changes)
    RESULTS.latency(HOT, "ours: SetConfig → SDK listener, same replica", delays)
    RESULTS.latency(PARTS, "of which SetConfig's round trip (same replica run)", trips)
    org, token = organization()
    delays, _ = await _hot_reload_ours(first.port, second.port, org, token, changes)
    RESULTS.latency(HOT, "ours: SetConfig → SDK listener, other replica", delays)
    org, token = organization()
    delays, _ = await _hot_reload_ours(
        first.port, first.port, org, token, changes, report_status=False
    )
    RESULTS.latency(HOT, "ours: same replica, SDK without rollout-status reports", delays)
    if etcd_port:
        delays, trips = await _hot_reload_etcd(etcd_port, changes)
        RESULTS.latency(HOT, "etcd: Put → watch event", delays)
        RESULTS.latency(PARTS, "of which etcd Put's round trip", trips)
        for replica in ("same", "other"):
            RESULTS.ratio(
                f"hot reload, {replica} replica / etcd",
                f"ours: SetConfig → SDK listener, {replica} replica",
                "etcd: Put → watch event",
            )

    # 2. the decomposition
    calls = size["calls"]
    RESULTS.latency(FLOOR, "bare grpc.aio health server (uvloop)", await _health(floor, calls))
    # What waking up costs here: the same calls, each after 20 ms without any (as the
    # steps of a creation wait for the Kubernetes API's answers).
    RESULTS.latency(
        FLOOR,
        "bare grpc.aio health server, each call after 20 ms idle",
        await _health(floor, max(100, calls // 5), idle=0.02),
    )
    RESULTS.latency(FLOOR, "ConfigService health check", await _health(first.port, calls))
    if etcd_port:
        try:
            RESULTS.latency(FLOOR, "etcd health check", await _health(etcd_port, calls))
        except grpc.aio.AioRpcError as exc:
            RESULTS.note(f"etcd health check not measured: {exc.code()}")
    org, token = organization()
    await _parts(first.port, org, token, calls)
    RESULTS.latency(
        PARTS,
        "Redis PUBLISH → subscriber",
        await _redis_publish(env["REDIS_URL"], calls),
    )
    alone, transaction = await _postgres_commit(env["DATABASE_URL"], calls)
    RESULTS.latency(PARTS, "PostgreSQL one-row INSERT, autocommit", alone)
    RESULTS.latency(PARTS, "PostgreSQL BEGIN / one-row INSERT / COMMIT", transaction)
    for ours, floor_name, label in (
        ("GetConfig", "ConfigService health check", "GetConfig / health"),
        ("SetConfig without request_id", "ConfigService health check", "SetConfig / health"),
        (
            "ConfigService health check",
            "bare grpc.aio health server (uvloop)",
            "health / bare server",
        ),
    ):
        RESULTS.ratio(label, ours, floor_name)

    # 3. fan-out
    for count in (100, 1_000):
        for side, port in (("ours", first.port), ("etcd", etcd_port)):
            if not port:
                continue
            org, token = organization()
            name = f"{side}: last of {count:,} watchers (4 processes)"
            RESULTS.latency(
                FANOUT, name, await _fanout(side, port, org, token, count, size["fanout_writes"])
            )
            RESULTS.fanout[(side, count)] = name
        RESULTS.ratio(
            f"last of {count:,} watchers / etcd",
            f"ours: last of {count:,} watchers (4 processes)",
            f"etcd: last of {count:,} watchers (4 processes)",
        )

    # 4. throughput and CPU
    await _load_ours(first.port, keys, first.process.pid, size["seconds"], 32)
    if etcd_port:
        await _load_etcd(etcd_port, etcd_pid, size["seconds"], 32)

    # 5. idle streams
    org, token = organization()
    await _idle("ours", first.port, first.process.pid, org, token, size["idle"])
    if etcd_port:
        await _idle("etcd", etcd_port, etcd_pid, org, token, size["idle"])
