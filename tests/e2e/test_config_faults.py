"""Fault injection against WatchConfig's delivery guarantees (DESIGN.md invariants 2-5).

ConfigService replicas run as real processes on PostgreSQL and a Redis of this
module's own, which they reach through a TCP proxy the tests cut and restore. Each
scenario runs a fixed number of writes from concurrent writers on several replicas
(blind writes, expected revisions, etags, batches, deletes, rollbacks, schema
changes) while raw WatchConfig streams and SDK watchers sit on the replicas, and
injects its fault while the writes run: none, Redis cut and restored, a replica
SIGKILLed, rollbacks and schema changes racing the writes.

Everything is checked structurally, never with sleeps or wall-clock overlap; a phase
begins when a count of finished writes is reached, and timeouts are upper bounds
only. Afterwards, against the history read back from PostgreSQL (ListConfigHistory):

- history holds exactly the revisions 1..N, and every revision is the one a
  successful answer named, with the changes that answer reported (nothing committed
  without a success, no success without its revision);
- every stream received exactly the revisions it is owed (1..N, or S+1..N after a
  snapshot at S, or r+1..N resumed at r, or the ones touching its services), in
  order, once, each whole in one message and equal to that revision's history;
- a revision reached every stream as the same message, whether it was handed over
  from memory (written on that replica) or read from PostgreSQL (written elsewhere);
- each stream's view of the keys, applied from its messages, equals ListConfigs at N.

The replicas poll PostgreSQL only every 60 s, so what reaches a stream within the
tests' bounds came by the push paths (a revision written on the same replica, a
Redis message, the gap a later revision reveals) or, while Redis is down, by the
fast fallback poll; a feed that stalls shows as a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import pytest
from agentready import AsyncConfigWatcher, ConfigEvent
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from google.protobuf import json_format, struct_pb2

from servicekit.devstack import EmbeddedRedis
from tests.conftest import Keys
from tests.e2e.proxy import CuttableProxy
from tests.e2e.watching import Recorder, Replica, Response, channel_for, eventually

pytestmark = pytest.mark.slow

Code = grpc.StatusCode
SET = config_pb2.CHANGE_TYPE_SET
DELETE = config_pb2.CHANGE_TYPE_DELETE
# One key's change as every API shows it: (service, key, type, new value's bytes).
Sig = tuple[str, str, int, bytes]
KeyOf = tuple[str, str]

AI_KEYS = [("ai", f"k{i}") for i in range(6)]
BILLING_KEYS = [("billing", f"b{i}") for i in range(3)]
KEYS = AI_KEYS + BILLING_KEYS


# -- a Redis that can be cut -------------------------------------------------------------


@pytest.fixture(scope="module")
async def redis_proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CuttableProxy]:
    """A Redis of the module's own behind a cuttable proxy (the machine's shared
    Redis is never touched)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("fault-redis"))
    await asyncio.to_thread(server.start)
    try:
        async with CuttableProxy(server.port) as proxy:
            yield proxy
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="module")
def replica_env(server_env: dict[str, str], redis_proxy: CuttableProxy) -> dict[str, str]:
    return {
        **server_env,
        "REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
        "CONFIG_CHANNEL_PREFIX": f"faults-{uuid.uuid4().hex[:8]}",
        # The poll is the safety net: as slow as it goes, so these tests see the push
        # paths (local hand-over, Redis) at work and a stalled feed shows as a timeout.
        "CONFIG_POLL_INTERVAL_SECONDS": "60",
        "CONFIG_FALLBACK_POLL_SECONDS": "0.2",
    }


@pytest.fixture(scope="module")
async def pair(replica_env: dict[str, str]) -> AsyncIterator[list[Replica]]:
    """Two ConfigService replicas, shared by the module's scenarios (each has an
    organization of its own)."""
    started = list(await asyncio.gather(*(asyncio.to_thread(Replica, replica_env) for _ in "ab")))
    yield started
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in started))


async def fallback_modes(replicas: Sequence[Replica]) -> list[float]:
    """Each replica's `config_notification_fallback` gauge (1: polling, 0: pub/sub)."""
    return [await asyncio.to_thread(r.metric, "config_notification_fallback") for r in replicas]


async def all_in_mode(replicas: Sequence[Replica], mode: float) -> None:
    async def check() -> bool:
        return await fallback_modes(replicas) == [mode] * len(replicas)

    await eventually(check, timeout=15)


def errors_logged(replica: Replica) -> list[dict[str, Any]]:
    return [e for e in replica.log if e.get("level") in ("ERROR", "CRITICAL")]


def new_org() -> str:
    return f"f-{uuid.uuid4().hex[:10]}"


# -- writers ----------------------------------------------------------------------------


def sig_of_change(change: config_pb2.ConfigChange) -> Sig:
    value = change.entry.value.SerializeToString(deterministic=True) if change.type == SET else b""
    return (change.service, change.key, change.type, value)


def sig_of_history(entry: config_pb2.ConfigHistoryEntry) -> Sig:
    value = (
        entry.new_value.SerializeToString(deterministic=True)
        if entry.HasField("new_value")
        else b""
    )
    return (entry.service, entry.key, entry.type, value)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A successful write's answer: the revision it names, the changes it reports,
    and whether it made that revision (False: a rollback that changed nothing)."""

    method: str
    revision: int
    changes: tuple[Sig, ...]
    made: bool = True


class Traffic:
    """Writes to one organization through several replicas and keeps every answer.

    ``failover`` maps a port that may die to the one its writers move to: a call
    that fails UNAVAILABLE there is sent again, the same request (same request id),
    to the other replica, as a client retries a write whose answer it lost.
    """

    def __init__(
        self,
        organization: str,
        token: str,
        ports: Iterable[int],
        *,
        seed: int,
        failover: dict[int, int] | None = None,
    ) -> None:
        self.organization = organization
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.channels = {port: channel_for(port) for port in ports}
        self.stubs = {
            port: config_service_pb2_grpc.ConfigServiceStub(channel)
            for port, channel in self.channels.items()
        }
        self.failover = failover or {}
        self.rng = random.Random(seed)
        self.claims: list[Claim] = []
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self.unexpected: list[str] = []
        self.failovers = 0
        self.started = 0
        self.done = 0
        # (n, event): the n-th write and later ones start only once event is set.
        self.holds: list[tuple[int, asyncio.Event]] = []
        # port -> gate: the writers on that port start a write only while it is set.
        self.gates: dict[int, asyncio.Event] = {}
        self.done_on: collections.Counter[int] = collections.Counter()
        self._changed = asyncio.Condition()
        self._serial = itertools.count(1)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    # pacing

    async def admit(self, port: int) -> None:
        """Called before each write of a writer on ``port``: waits at a hold the write
        count has reached, and while the port's gate is closed."""
        n = self.started
        self.started += 1
        for at, event in self.holds:
            if n >= at:
                await event.wait()
        gate = self.gates.get(port)
        if gate is not None:
            await gate.wait()

    async def finished(self, port: int) -> None:
        self.done += 1
        self.done_on[port] += 1
        async with self._changed:
            self._changed.notify_all()

    async def reached(self, n: int, port: int | None = None, timeout: float = 60.0) -> None:
        """Until ``n`` writes (of the writers on ``port``, if given) have been answered."""

        def count() -> int:
            return self.done if port is None else self.done_on[port]

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: count() >= n)

    def latest(self) -> int:
        return max((c.revision for c in self.claims), default=0)

    # calls

    async def call(
        self, home: list[int], method: str, request: Any, accept: frozenset[Code]
    ) -> Any:
        """The answer, or the status code when it is one of ``accept`` (a clean
        refusal). Any other failure is recorded in ``unexpected`` and returns None."""
        while True:
            port = home[0]
            try:
                return await getattr(self.stubs[port], method)(
                    request, metadata=self.metadata, timeout=20
                )
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == Code.UNAVAILABLE and port in self.failover:
                    home[0] = self.failover[port]
                    self.failovers += 1
                    continue
                if code in accept:
                    self.refusals[(method, code.name)] += 1
                    return code
                self.unexpected.append(f"{method}: {code.name}: {error.details()}")
                return None

    def value(self, kind: str = "any") -> config_pb2.Value:
        """A value never written before, so every write of it makes a revision."""
        n = next(self._serial)
        choice = self.rng.randrange(5) if kind == "any" else -1
        if choice == 0:
            return config_pb2.Value(string_value=f"v{n}")
        if choice == 1:
            return config_pb2.Value(double_value=n + 0.25)
        if choice == 2:
            return config_pb2.Value(
                # -0.0: jsonb has none, so it is stored (and must be answered and
                # streamed everywhere) as 0.0.
                json_value=json_format.ParseDict(
                    {"n": n, "tags": ["x", n, -0.0]}, struct_pb2.Value()
                )
            )
        if choice == 3:
            return config_pb2.Value(int_value=-n)
        return config_pb2.Value(int_value=n)

    def request_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    async def current(self, home: list[int], key: KeyOf) -> config_pb2.ConfigEntry | None:
        entry = await self.call(
            home,
            "GetConfig",
            config_pb2.GetConfigRequest(organization=self.organization, service=key[0], key=key[1]),
            frozenset({Code.NOT_FOUND}),
        )
        return entry if isinstance(entry, config_pb2.ConfigEntry) else None

    async def set(
        self,
        home: list[int],
        key: KeyOf,
        value: config_pb2.Value,
        accept: frozenset[Code],
        **condition: Any,
    ) -> None:
        request = config_pb2.SetConfigRequest(
            organization=self.organization,
            service=key[0],
            key=key[1],
            value=value,
            request_id=self.request_id(),
            **condition,
        )
        answer = await self.call(home, "SetConfig", request, accept)
        if isinstance(answer, config_pb2.ConfigEntry):
            told = (key[0], key[1], SET, answer.value.SerializeToString(deterministic=True))
            self.claims.append(Claim("SetConfig", int(answer.revision), (told,)))

    async def batch(self, home: list[int], mutations: Sequence[config_pb2.ConfigMutation]) -> None:
        request = config_pb2.BatchSetConfigRequest(
            organization=self.organization, mutations=mutations, request_id=self.request_id()
        )
        answer = await self.call(
            home,
            "BatchSetConfig",
            request,
            frozenset({Code.ABORTED, Code.NOT_FOUND, Code.INVALID_ARGUMENT}),
        )
        if isinstance(answer, config_pb2.BatchSetConfigResponse):
            changes = tuple(sig_of_change(c) for c in answer.changes)
            self.claims.append(Claim("BatchSetConfig", int(answer.revision), changes))

    # writers: each makes `ops` writes on its home replica

    async def blind_writer(self, port: int, ops: int, keys: Sequence[KeyOf]) -> None:
        home = [port]
        for _ in range(ops):
            await self.admit(port)
            await self.set(home, self.rng.choice(keys), self.value(), frozenset())
            await self.finished(port)

    async def revision_writer(self, port: int, ops: int, keys: Sequence[KeyOf]) -> None:
        """Read, then write only if the key is still at the revision read."""
        home = [port]
        for _ in range(ops):
            await self.admit(port)
            key = self.rng.choice(keys)
            entry = await self.current(home, key)
            revision = entry.revision if entry is not None else 0
            await self.set(
                home, key, self.value(), frozenset({Code.ABORTED}), expected_revision=revision
            )
            await self.finished(port)

    async def etag_writer(self, port: int, ops: int, keys: Sequence[KeyOf]) -> None:
        """Read, then write only if the key's etag is still the one read."""
        home = [port]
        for _ in range(ops):
            await self.admit(port)
            key = self.rng.choice(keys)
            entry = await self.current(home, key)
            condition: dict[str, Any] = (
                {"etag": entry.etag} if entry is not None else {"expected_revision": 0}
            )
            await self.set(home, key, self.value(), frozenset({Code.ABORTED}), **condition)
            await self.finished(port)

    async def batch_writer(self, port: int, ops: int, keys: Sequence[KeyOf]) -> None:
        """Several keys in one revision: sets, deletes (NOT_FOUND when the key is not
        set) and creates (expected revision 0: ABORTED when it is)."""
        home = [port]
        for _ in range(ops):
            await self.admit(port)
            mutations = []
            for service, key in self.rng.sample(list(keys), self.rng.randint(2, 4)):
                roll = self.rng.random()
                mutation = config_pb2.ConfigMutation(service=service, key=key)
                if roll < 0.15:
                    mutation.delete.SetInParent()
                else:
                    mutation.set_value.CopyFrom(self.value())
                    if roll > 0.9:
                        mutation.expected_revision = 0
                mutations.append(mutation)
            await self.batch(home, mutations)
            await self.finished(port)

    def mixed_writers(
        self, ports: Sequence[int], ops: int, keys: Sequence[KeyOf] = KEYS
    ) -> list[Any]:
        """On each port: a blind writer, one with expected revisions, one with etags
        and a batch writer, all on the same few keys."""
        return [
            writer(port, ops, keys)
            for port in ports
            for writer in (
                self.blind_writer,
                self.revision_writer,
                self.etag_writer,
                self.batch_writer,
            )
        ]


# -- what the streams must show ---------------------------------------------------------


@dataclasses.dataclass
class Truth:
    """What PostgreSQL holds at the end: N, each revision's changes, the listing."""

    revision: int
    history: dict[int, list[Sig]]
    listing: dict[KeyOf, config_pb2.ConfigEntry]


async def read_truth(traffic: Traffic, port: int) -> Truth:
    stub = traffic.stubs[port]
    history: dict[int, list[Sig]] = collections.defaultdict(list)
    token = ""
    while True:
        page = await stub.ListConfigHistory(
            config_pb2.ListConfigHistoryRequest(
                organization=traffic.organization, page_size=1000, page_token=token
            ),
            metadata=traffic.metadata,
        )
        for entry in page.history_entries:
            history[entry.revision].append(sig_of_history(entry))
        token = page.next_page_token
        if not token:
            break
    listing: dict[KeyOf, config_pb2.ConfigEntry] = {}
    revisions = set()
    token = ""
    while True:
        listed = await stub.ListConfigs(
            config_pb2.ListConfigsRequest(
                organization=traffic.organization, page_size=1000, page_token=token
            ),
            metadata=traffic.metadata,
        )
        revisions.add(listed.revision)
        listing.update({(e.service, e.key): e for e in listed.configs})
        token = listed.next_page_token
        if not token:
            break
    n = max(history, default=0)
    assert sorted(history) == list(range(1, n + 1)), "history has a gap"
    assert revisions == {n}, f"listing read at {revisions}, history ends at {n}"
    return Truth(n, dict(history), listing)


def check_answers(traffic: Traffic, truth: Truth) -> None:
    """Every success names a revision holding what it reported; every revision was
    made by exactly one success; nothing else was answered."""
    assert traffic.unexpected == []
    made = sorted(c.revision for c in traffic.claims if c.made)
    assert made == list(range(1, truth.revision + 1)), "revisions and successes differ"
    for claim in traffic.claims:
        if not claim.made:
            assert claim.revision <= truth.revision
            continue
        held = truth.history[claim.revision]
        if claim.method == "SetConfig":
            assert held == list(claim.changes), (claim, held)
        else:
            assert sorted(held) == sorted(claim.changes), (claim, held)


@dataclasses.dataclass
class Expect:
    """What one recorded stream is owed: ``start`` as requested (0: a snapshot
    first), ``services`` as filtered."""

    recorder: Recorder
    start: int = 0
    services: frozenset[str] | None = None


def owed(truth: Truth, after: int, services: frozenset[str] | None) -> list[int]:
    return [
        r
        for r in range(after + 1, truth.revision + 1)
        if services is None or any(s[0] in services for s in truth.history[r])
    ]


def visible(sigs: Iterable[Sig], services: frozenset[str] | None) -> list[Sig]:
    return [s for s in sigs if services is None or s[0] in services]


def check_stream(expect: Expect, truth: Truth) -> dict[int, Any]:
    """Checks one recorded stream (across its reconnections); returns its CHANGE
    message of each revision."""
    messages = expect.recorder.messages
    positions = [m.revision for m in messages]
    assert positions == sorted(positions), "a stream went back in revisions"
    snapshots = [m for m in messages if m.type == Response.EVENT_TYPE_SNAPSHOT]
    view: dict[KeyOf, config_pb2.ConfigEntry] | None = None
    if expect.start == 0:
        assert len(snapshots) == 1, "one snapshot, first, then never another"
        assert messages[0] is snapshots[0]
        base = snapshots[0].revision
        view = {(e.service, e.key): e for e in snapshots[0].entries}
    else:
        assert snapshots == [], "a resumed stream replays; it gets no snapshot"
        base = expect.start
    changes = [m for m in messages if m.type == Response.EVENT_TYPE_CHANGE]
    assert [m.revision for m in changes] == owed(truth, base, expect.services)
    by_revision = {}
    for message in changes:
        assert not message.fragment, "a revision this small is never split"
        assert [sig_of_change(c) for c in message.changes] == visible(
            truth.history[message.revision], expect.services
        ), f"revision {message.revision} differs from its history"
        by_revision[message.revision] = message
        if view is not None:
            for change in message.changes:
                if change.type == DELETE:
                    del view[(change.service, change.key)]
                else:
                    view[(change.service, change.key)] = change.entry
    if view is not None:
        assert view == {
            k: e
            for k, e in truth.listing.items()
            if expect.services is None or k[0] in expect.services
        }, "the stream's view differs from ListConfigs"
    return by_revision


def check_watcher(
    watcher: AsyncConfigWatcher, events: list[ConfigEvent], truth: Truth
) -> list[ConfigEvent]:
    """The SDK watcher applied one snapshot and then every later revision once, in
    order, and serves what ListConfigs lists."""
    assert events
    assert events[0].snapshot
    assert [e for e in events if e.snapshot] == events[:1], "a second snapshot (reset)"
    base = events[0].revision
    assert [e.revision for e in events[1:]] == list(range(base + 1, truth.revision + 1))
    for event in events[1:]:
        assert [sig_of_change(c) for c in event.changes] == truth.history[event.revision]
    assert watcher.revision == truth.revision
    assert dict(watcher.entries()) == truth.listing
    return events[1:]


async def settle(
    expects: Sequence[Expect],
    watchers: Sequence[AsyncConfigWatcher],
    truth: Truth | None = None,
    timeout: float = 30.0,
) -> None:
    """Until every stream and watcher has had the last revision it is owed of
    ``truth`` (without one: until it is past its start). An upper bound: a stream
    that ended, or a feed that stalled, fails here."""
    for expect in expects:
        last = max(owed(truth, 0, expect.services), default=0) if truth else 0
        try:
            await expect.recorder.wait_for(last, timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"stream on {expect.recorder.ports} (start {expect.start}, services "
                f"{expect.services}) stuck at {expect.recorder.seen}, not {last}; "
                f"errors {expect.recorder.errors}"
            ) from None
    for watcher in watchers:
        await watcher.wait_for_revision(truth.revision if truth else 0, timeout=timeout)


def check_all(
    traffic: Traffic,
    truth: Truth,
    expects: Sequence[Expect],
    watched: Sequence[tuple[AsyncConfigWatcher, list[ConfigEvent]]],
) -> None:
    check_answers(traffic, truth)
    seen: dict[int, list[Any]] = collections.defaultdict(list)
    for expect in expects:
        for revision, message in check_stream(expect, truth).items():
            if expect.services is None:
                seen[revision].append(list(message.changes))
    for watcher, events in watched:
        for event in check_watcher(watcher, events, truth):
            seen[event.revision].append(list(event.changes))
    for revision, copies in seen.items():
        # From memory on the replica that wrote it, from PostgreSQL elsewhere: the same.
        assert all(c == copies[0] for c in copies), f"revision {revision} differs by stream"


def sdk_watcher(
    ports: Sequence[int], organization: str, token: str
) -> tuple[AsyncConfigWatcher, list[ConfigEvent]]:
    events: list[ConfigEvent] = []
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    watcher = AsyncConfigWatcher(
        target,
        organization,
        token=token,
        on_change=events.append,
        backoff_initial=0.05,
        backoff_max=0.5,
        report_status=False,
    )
    return watcher, events


class Streams:
    """The streams of a scenario: opened at once or mid-run, all closed at the end."""

    def __init__(self, organization: str, token: str) -> None:
        self.organization = organization
        self.token = token
        self.expects: list[Expect] = []
        self.watched: list[tuple[AsyncConfigWatcher, list[ConfigEvent]]] = []

    async def raw(
        self,
        ports: Sequence[int],
        *,
        start: int = 0,
        services: Sequence[str] = (),
        resume: bool = False,
    ) -> Recorder:
        recorder = Recorder(
            ports,
            self.organization,
            self.token,
            services=services,
            start_revision=start,
            resume=resume,
        )
        await recorder.__aenter__()
        self.expects.append(Expect(recorder, start, frozenset(services) or None))
        return recorder

    async def sdk(self, ports: Sequence[int]) -> AsyncConfigWatcher:
        watcher, events = sdk_watcher(ports, self.organization, self.token)
        self.watched.append((watcher, events))
        await watcher.start()
        return watcher

    async def live(self) -> None:
        """Until every stream opened so far is past its start."""
        await settle(self.expects, [w for w, _ in self.watched])

    async def caught_up(self, revision: int, timeout: float) -> None:
        """Until every unfiltered stream and watcher has ``revision``."""
        try:
            for expect in self.expects:
                if expect.services is None:
                    where = f"stream on {expect.recorder.ports} at {expect.recorder.seen}"
                    await expect.recorder.wait_for(revision, timeout=timeout)
            for watcher, _ in self.watched:
                where = f"SDK watcher at {watcher.revision}"
                await watcher.wait_for_revision(revision, timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"{where} did not reach {revision}") from None

    async def close(self) -> None:
        for expect in self.expects:
            await expect.recorder.stop()
        for watcher, _ in self.watched:
            await watcher.stop()


async def open_everywhere(streams: Streams, ports: Sequence[int]) -> None:
    """On each replica: a raw stream, one filtered to billing, an SDK watcher."""
    for port in ports:
        await streams.raw([port])
        await streams.raw([port], services=["billing"])
        await streams.sdk([port])
    await streams.live()


async def open_late(streams: Streams, traffic: Traffic, ports: Sequence[int]) -> None:
    """Mid-run, on each replica: a stream that starts with a snapshot of whatever
    is committed, and one that resumes from a revision already written."""
    resume_at = traffic.latest() // 2
    for port in ports:
        await streams.raw([port])
        await streams.raw([port], start=resume_at)


# -- the scenarios ----------------------------------------------------------------------

OPS = 36  # per writer: 8 writers, 288 writes


async def test_concurrent_writers_on_two_replicas_every_stream_gets_every_revision(
    pair: list[Replica], keys: Keys
) -> None:
    organization = new_org()
    ports = [r.port for r in pair]
    traffic = Traffic(organization, keys.token(organization), ports, seed=1)
    streams = Streams(organization, keys.token(organization, "viewer"))
    try:
        await all_in_mode(pair, 0.0)
        await open_everywhere(streams, ports)
        late = asyncio.Event()
        traffic.holds.append((len(ports) * 4 * OPS // 2, late))

        async def open_mid_run() -> None:
            await traffic.reached(len(ports) * 4 * OPS // 3)
            await open_late(streams, traffic, ports)
            late.set()

        await asyncio.gather(open_mid_run(), *traffic.mixed_writers(ports, OPS))
        truth = await read_truth(traffic, ports[0])
        await settle(streams.expects, [w for w, _ in streams.watched], truth)
        check_all(traffic, truth, streams.expects, streams.watched)
        assert all(e.recorder.errors == [] for e in streams.expects)
        assert [errors_logged(r) for r in pair] == [[], []]
    finally:
        await streams.close()
        await traffic.close()


async def test_redis_cut_and_restored_mid_run_loses_and_repeats_nothing(
    pair: list[Replica], redis_proxy: CuttableProxy, keys: Keys
) -> None:
    organization = new_org()
    a, b = pair
    ports = [a.port, b.port]
    traffic = Traffic(organization, keys.token(organization), ports, seed=2)
    streams = Streams(organization, keys.token(organization, "viewer"))
    # Writers start a write only while their replica's gate is open. While only a's
    # write, b's streams learn of the new revisions from nothing but b's hub: not
    # from a write of b's own, which would reveal them as a gap.
    gate_a, gate_b = asyncio.Event(), asyncio.Event()
    traffic.gates = {a.port: gate_a, b.port: gate_b}
    gate_a.set()
    gate_b.set()

    async def only_a_writes(n: int) -> None:
        gate_b.clear()  # b's writers finish the write in flight, then wait
        gate_a.set()
        await traffic.reached(traffic.done_on[a.port] + n, port=a.port)
        # Every stream, b's too, has every revision answered (b's regular poll, every
        # 60 s, is far beyond this bound).
        await streams.caught_up(traffic.latest(), timeout=10)

    async def faults() -> None:
        await traffic.reached(40)
        redis_proxy.cut()  # writes in flight on both replicas
        await all_in_mode(pair, 1.0)
        # Redis down: b polls PostgreSQL fast, and so learns of a's revisions.
        await only_a_writes(30)
        redis_proxy.restore()
        gate_b.set()  # both write while the replicas subscribe again
        await traffic.reached(traffic.done + 20)
        gate_a.clear()
        gate_b.clear()
        await all_in_mode(pair, 0.0)
        # Redis back: push tells b of a's revisions again.
        await only_a_writes(30)
        gate_b.set()  # the rest, from both

    try:
        await all_in_mode(pair, 0.0)
        await open_everywhere(streams, ports)
        try:
            await asyncio.gather(faults(), *traffic.mixed_writers(ports, 48))
        finally:
            redis_proxy.restore()
        truth = await read_truth(traffic, ports[0])
        await settle(streams.expects, [w for w, _ in streams.watched], truth)
        check_all(traffic, truth, streams.expects, streams.watched)
        # The streams themselves never broke: Redis is not on their path.
        assert all(e.recorder.errors == [] for e in streams.expects)
        assert [errors_logged(r) for r in pair] == [[], []]
    finally:
        await streams.close()
        await traffic.close()


async def test_a_replica_killed_mid_run_its_watchers_resume_elsewhere_with_nothing_lost(
    pair: list[Replica], replica_env: dict[str, str], keys: Keys
) -> None:
    organization = new_org()
    victim = await asyncio.to_thread(Replica, replica_env)
    survivor, other = pair
    ports = [victim.port, survivor.port, other.port]
    # Writers on the victim retry a write whose answer was lost, unchanged, on the
    # survivor: its request id tells whether the victim committed it.
    traffic = Traffic(
        organization,
        keys.token(organization),
        ports,
        seed=3,
        failover={victim.port: survivor.port},
    )
    streams = Streams(organization, keys.token(organization, "viewer"))
    total = 2 * 4 * OPS
    killed, moved = asyncio.Event(), asyncio.Event()
    # Writes go on after the kill; the last third waits until the SDK watcher has
    # resumed on the survivor (the writes in between race its move).
    traffic.holds += [(total // 2, killed), (total * 2 // 3, moved)]
    try:
        await all_in_mode([victim, *pair], 0.0)
        # On the victim, streams that move to the survivor when it dies: the survivor
        # has no stream of the organization before, so its feed starts mid-run, while
        # the victim's writers, moved there too, commit through it...
        moving_sdk = await streams.sdk([victim.port, survivor.port])
        moving = await streams.raw([victim.port, survivor.port], resume=True)
        # ... and on the third replica, streams that must never break.
        await streams.raw([other.port])
        await streams.sdk([other.port])
        await streams.live()

        async def kill() -> None:
            await traffic.reached(total // 3)
            await moving.wait_for(traffic.latest())  # live on the victim
            await asyncio.to_thread(victim.kill)  # writes in flight on it
            killed.set()
            await eventually(lambda: moving_sdk.last_error is not None and moving_sdk.connected)
            moved.set()

        await asyncio.gather(kill(), *traffic.mixed_writers([victim.port, other.port], OPS))
        truth = await read_truth(traffic, survivor.port)
        await settle(streams.expects, [w for w, _ in streams.watched], truth)
        check_all(traffic, truth, streams.expects, streams.watched)
        assert traffic.failovers > 0, "no writer moved off the victim"
        assert moving.errors, "the raw stream on the killed replica should have failed"
        assert moving_sdk.last_error is not None, "so should the SDK watcher's"
        assert streams.expects[1].recorder.errors == []
        assert [errors_logged(r) for r in pair] == [[], []]
    finally:
        await streams.close()
        await traffic.close()
        await asyncio.to_thread(victim.kill)


# Scenario 4: values of ai/k0..k3 are ints; one schema bounds them to 1e6, a stricter
# one to 5e5; some writes break either (a string, a big int).
SCHEMA_KEYS = AI_KEYS[:4]
LOOSE, STRICT = 1_000_000.0, 500_000.0


def schema(organization: str, maximum: float) -> config_pb2.ConfigSchema:
    return config_pb2.ConfigSchema(
        organization=organization,
        service="ai",
        keys=[
            config_pb2.ConfigKeySchema(
                key=key, type=config_pb2.VALUE_TYPE_INT, minimum=0, maximum=maximum
            )
            for _, key in SCHEMA_KEYS
        ],
    )


def obeys(entry: config_pb2.ConfigEntry, maximum: float | None) -> bool:
    if maximum is None:
        return True
    return entry.value.WhichOneof("kind") == "int_value" and 0 <= entry.value.int_value <= maximum


class SchemaTraffic(Traffic):
    """Writes that schema changes and rollbacks race."""

    def bounded_value(self) -> config_pb2.Value:
        n = next(self._serial)
        roll = self.rng.random()
        if roll < 0.1:
            return config_pb2.Value(string_value=f"s{n}")  # breaks any schema
        if roll < 0.3:
            return config_pb2.Value(int_value=int(STRICT) + n)  # breaks the strict one
        return config_pb2.Value(int_value=n)

    async def bounded_writer(self, port: int, ops: int, conditional: bool) -> None:
        home = [port]
        accept = frozenset({Code.INVALID_ARGUMENT, Code.ABORTED})
        for _ in range(ops):
            await self.admit(port)
            key = self.rng.choice(SCHEMA_KEYS)
            condition: dict[str, Any] = {}
            if conditional:
                entry = await self.current(home, key)
                condition["expected_revision"] = entry.revision if entry is not None else 0
            await self.set(home, key, self.bounded_value(), accept, **condition)
            await self.finished(port)

    async def bounded_batcher(self, port: int, ops: int) -> None:
        home = [port]
        for _ in range(ops):
            await self.admit(port)
            await self.batch(
                home,
                [
                    config_pb2.ConfigMutation(service=s, key=k, set_value=self.bounded_value())
                    for s, k in self.rng.sample(SCHEMA_KEYS, 2)
                ],
            )
            await self.finished(port)

    async def schema_changer(self, ports: Sequence[int], ops: int) -> None:
        """Sets the loose schema, the strict one (FAILED_PRECONDITION while values
        break it) or deletes it (NOT_FOUND when there is none), on every replica."""
        for i in range(ops):
            home = [ports[i % len(ports)]]
            roll = self.rng.random()
            if roll < 0.4:
                request = config_pb2.DeleteConfigSchemaRequest(
                    organization=self.organization, service="ai"
                )
                await self.call(home, "DeleteConfigSchema", request, frozenset({Code.NOT_FOUND}))
                continue
            await self.call(
                home,
                "SetConfigSchema",
                config_pb2.SetConfigSchemaRequest(
                    schema=schema(self.organization, STRICT if roll < 0.7 else LOOSE),
                    request_id=self.request_id(),
                ),
                frozenset({Code.FAILED_PRECONDITION}),
            )

    async def rollbacker(self, ports: Sequence[int], ops: int) -> None:
        """Restores an earlier revision, of everything or of one key (INVALID_ARGUMENT
        when the values restored break today's schema)."""
        for i in range(ops):
            home = [ports[i % len(ports)]]
            fields: dict[str, Any] = {}
            if self.rng.random() < 0.5:
                service, key = self.rng.choice(SCHEMA_KEYS)
                fields = {"service": service, "key": key}
            request = config_pb2.RollbackConfigRequest(
                organization=self.organization,
                revision=self.rng.randint(0, self.latest()),
                request_id=self.request_id(),
                **fields,
            )
            answer = await self.call(
                home, "RollbackConfig", request, frozenset({Code.INVALID_ARGUMENT})
            )
            if isinstance(answer, config_pb2.RollbackConfigResponse):
                changes = tuple(sig_of_change(c) for c in answer.changes)
                self.claims.append(
                    Claim("RollbackConfig", int(answer.revision), changes, made=bool(changes))
                )


async def final_schema(traffic: Traffic, port: int) -> float | None:
    answer = await traffic.call(
        [port],
        "GetConfigSchema",
        config_pb2.GetConfigSchemaRequest(organization=traffic.organization, service="ai"),
        frozenset({Code.NOT_FOUND}),
    )
    if not isinstance(answer, config_pb2.ConfigSchema):
        return None
    return answer.keys[0].maximum


async def test_writes_racing_rollbacks_and_schema_changes_answer_cleanly(
    pair: list[Replica], keys: Keys
) -> None:
    organization = new_org()
    ports = [r.port for r in pair]
    traffic = SchemaTraffic(organization, keys.token(organization), ports, seed=4)
    streams = Streams(organization, keys.token(organization, "viewer"))
    try:
        for port in ports:
            await streams.raw([port])
        await streams.live()
        await asyncio.gather(
            *(traffic.bounded_writer(p, 30, conditional=False) for p in ports for _ in "ab"),
            *(traffic.bounded_writer(p, 20, conditional=True) for p in ports),
            *(traffic.bounded_batcher(p, 15) for p in ports),
            traffic.schema_changer(ports, 80),
            traffic.rollbacker(ports, 30),
        )
        # Never INTERNAL: a DeleteConfigSchema that did not wait for the organization's
        # lock made a write holding it fail ("changed under its lock").
        logged = [e.get("message") for r in pair for e in errors_logged(r)]
        assert traffic.unexpected == [], (traffic.unexpected, logged)
        # Each kind of race happened, not just the easy paths.
        for kind in (
            ("SetConfig", "INVALID_ARGUMENT"),
            ("SetConfigSchema", "FAILED_PRECONDITION"),
        ):
            assert traffic.refusals[kind] > 0, (kind, traffic.refusals)
        truth = await read_truth(traffic, ports[0])
        maximum = await final_schema(traffic, ports[1])
        assert all(obeys(e, maximum) for e in truth.listing.values()), (maximum, truth.listing)
        # The strict schema goes in exactly when every value already obeys it.
        fits = all(obeys(e, STRICT) for e in truth.listing.values())
        answer = await traffic.call(
            [ports[0]],
            "SetConfigSchema",
            config_pb2.SetConfigSchemaRequest(schema=schema(organization, STRICT)),
            frozenset({Code.FAILED_PRECONDITION}),
        )
        assert isinstance(answer, config_pb2.ConfigSchema) == fits, (answer, truth.listing)
        await settle(streams.expects, [], truth)
        check_all(traffic, truth, streams.expects, [])
        assert [errors_logged(r) for r in pair] == [[], []]
    finally:
        await streams.close()
        await traffic.close()
