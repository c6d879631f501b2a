"""ConfigWatcher: an organization's configuration, kept hot in a pod's memory.

The watcher holds one ``WatchConfig`` stream: a snapshot first, then every change, in
revision order. When the stream breaks it reconnects with exponential backoff and
jitter and resumes from the last revision it has, so nothing is missed or applied
twice; a server that can no longer replay sends a fresh snapshot instead. Reads never
touch the network: they look up the latest state, swapped in whole on each revision.

Two faces:

* :class:`AsyncConfigWatcher` for asyncio code (``async with``);
* :class:`ConfigWatcher` for everything else: the same, on a background thread.

With ``last_known_good`` set, every revision is also written to that file, and a
watcher that cannot reach any server at start-up serves the file's values (marked
stale) until the stream is back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format

from agentready._private.call import Credentials, TokenSource, current_token, is_provider
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.errors import from_rpc_error
from agentready.flags import FlagResult, evaluate_flag

log = logging.getLogger(__name__)
Response = config_pb2.WatchConfigResponse
Key = tuple[str, str]
# Codes a retry cannot cure while the credentials stay the same; retried anyway (a
# token provider may hand out a better one), but at the longest backoff.
_PERMANENT = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


# Reasons with which a server ends a stream whose token ran out or was revoked; with a
# token provider, the watcher reconnects at once with a fresh token.
_TOKEN_ENDED = frozenset({"TOKEN_EXPIRED", "TOKEN_REVOKED"})


class WatcherState(enum.Enum):
    """How current the watcher's values are."""

    STARTING = "starting"  # nothing received yet
    LIVE = "live"  # streaming, or reconnecting within the grace period
    STALE = "stale"  # no stream for longer than the grace period (or values from file)
    STOPPED = "stopped"


class ConfigEvent:
    """What one revision changed, as handed to listeners.

    Attributes:
        revision: the revision now held.
        changes: the ``ConfigChange`` messages of that revision (empty for a snapshot).
        snapshot: True when the whole state was replaced (first load or reset).
    """

    __slots__ = ("changes", "revision", "snapshot")

    def __init__(
        self, revision: int, changes: Sequence[config_pb2.ConfigChange], snapshot: bool
    ) -> None:
        self.revision = revision
        self.changes = tuple(changes)
        self.snapshot = snapshot

    def __repr__(self) -> str:
        kind = "snapshot" if self.snapshot else f"{len(self.changes)} changes"
        return f"ConfigEvent(revision={self.revision}, {kind})"


Listener = Callable[[ConfigEvent], None]


class RevisionRefused(Exception):
    """:meth:`AsyncConfigWatcher.wait_for_revision`: the revision arrived but the
    validator refused it; the values served are older.

    Attributes:
        revision: the revision waited for.
        rejected_revision: the last revision refused.
        reason: why it was refused.
    """

    def __init__(self, revision: int, rejected_revision: int, reason: str) -> None:
        super().__init__(f"revision {revision} not served: {reason or 'refused'}")
        self.revision = revision
        self.rejected_revision = rejected_revision
        self.reason = reason


def plain_value(value: config_pb2.Value) -> Any:
    """A ``Value`` as plain Python: str, int, float, bool, JSON, or the FeatureFlag."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "json_value":
        return json_format.MessageToDict(value.json_value)
    return getattr(value, kind)


def default_client_id() -> str:
    """``<namespace>/<pod>`` from the Downward API variables POD_NAMESPACE and POD_NAME
    (or HOSTNAME) on Kubernetes, ``<host>/<pid>`` elsewhere."""
    pod = os.environ.get("POD_NAME")
    if pod:
        raw = f"{os.environ.get('POD_NAMESPACE', 'default')}/{pod}"
    else:
        raw = f"{socket.gethostname()}/{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9._:/@-]", "-", raw)[:253] or "client"


class AsyncConfigWatcher:
    """An organization's configuration in memory, kept current by a WatchConfig stream.

    Args:
        target: the ConfigService address (any gRPC target, e.g. ``host:50052`` or
            ``ipv4:10.0.0.1:50052,10.0.0.2:50052``), or pass ``channel``.
        organization: the organization's slug.
        token: a bearer token, a callable returning the current one (asked at every
            connection, so it may refresh), or credentials such as
            :class:`agentready.Session` or :class:`agentready.EnvironmentToken`.
        services: only these services' keys (empty: all).
        channel: an existing channel to use instead of ``target`` (not closed by us).
        stale_after: seconds without a stream after which the values count as stale.
        progress_interval: how often the server confirms an idle stream is current,
            1 to 60 seconds.
        backoff_initial: first wait before reconnecting, in seconds; doubles per failure.
        backoff_max: the longest wait between reconnections.
        last_known_good: a file that keeps the latest state across restarts.
        on_change: called with a :class:`ConfigEvent` after each revision is applied.
        validator: called with the state a revision would bring (a mapping of
            (service, key) to ``ConfigEntry``) before it is applied; if it raises, the
            watcher keeps serving the state it has and reports the revision refused.
        client_id: how this watcher is known in ``ListConfigClients`` (default:
            ``<POD_NAMESPACE>/<POD_NAME>`` on Kubernetes, ``<host>/<pid>`` elsewhere).
        labels: labels to select this watcher by in ``ListConfigClients``.
        report_status: report the applied (or refused) revision to ConfigService after
            each revision and every ``report_interval`` seconds (rollout status).
        report_delay: a report after a revision waits a random 0 to ``report_delay``
            seconds (revisions meanwhile go in the same report), so a fleet of pods
            does not answer each change with a burst of writes while it rolls out.
    """

    def __init__(
        self,
        target: str | None,
        organization: str,
        *,
        token: TokenSource,
        services: Sequence[str] = (),
        channel: grpc.aio.Channel | None = None,
        stale_after: float = 30.0,
        progress_interval: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        last_known_good: str | os.PathLike[str] | None = None,
        on_change: Listener | None = None,
        validator: Callable[[Mapping[Key, config_pb2.ConfigEntry]], object] | None = None,
        client_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        report_status: bool = True,
        report_interval: float = 10.0,
        report_delay: float = 1.0,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give either target or channel")
        if not 1 <= progress_interval <= 60:
            raise ValueError("progress_interval: 1 to 60 seconds (the server's bounds)")
        if len(services) > 100:
            raise ValueError("services: at most 100 (the server's bound)")
        self.organization = organization
        self._target = target
        self._channel = channel
        self._own_channel = channel is None
        self._token = token
        self._services = list(services)
        self._stale_after = stale_after
        self._progress_interval = progress_interval
        self._backoff = (backoff_initial, backoff_max)
        self._file = Path(last_known_good) if last_known_good else None
        self._listeners: list[Listener] = [on_change] if on_change else []
        self._entries: Mapping[Key, config_pb2.ConfigEntry] = {}
        # The server's state as streamed; differs from _entries (what is served) while
        # the validator refuses it.
        self._server_entries: Mapping[Key, config_pb2.ConfigEntry] = {}
        self._revision_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._revision = 0  # the stream's position: where a new stream resumes
        self._applied_revision = 0  # the revision whose state is served
        self._rejected: tuple[int, str] = (0, "")
        self._validator = validator
        self.client_id = client_id or default_client_id()
        self.labels = dict(labels or {})
        self._report_status = report_status
        self._report_interval = report_interval
        self._report_delay = report_delay
        self._report_wanted = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None
        self.last_report_error: grpc.RpcError | None = None
        # Parts of a split SNAPSHOT or CHANGE received so far (see ``fragment``).
        self._fragments: list[Any] = []
        self._have_state = False
        self._from_file = False
        self._connected = False
        self._stopped = False
        self._lost_at: float | None = None
        self._last_message_at: float | None = None
        self.last_error: grpc.RpcError | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, *, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109
        """Connects and waits for the first state.

        Raises:
            TimeoutError: no snapshot within ``timeout`` and no last-known-good file
                to fall back on (the watcher keeps trying in the background).
        """
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self._target or "",
                options=[("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)],
            )
        self._task = asyncio.create_task(self._run(), name=f"config-watcher:{self.organization}")
        if self._report_status:
            self._reporter = asyncio.create_task(
                self._report_loop(), name=f"config-reporter:{self.organization}"
            )
        try:
            await asyncio.wait_for(asyncio.shield(self._first.wait()), timeout)
        except TimeoutError:
            if not self._load_file():
                raise

    async def stop(self) -> None:
        """Closes the stream (and the channel, if the watcher made it)."""
        self._stopped = True
        for task in (self._task, self._reporter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._own_channel and self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncConfigWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def add_listener(self, listener: Listener) -> None:
        """Calls ``listener`` with a :class:`ConfigEvent` after each applied revision."""
        self._listeners.append(listener)

    # -- reading (from memory) -------------------------------------------------------

    @property
    def revision(self) -> int:
        """The organization revision the values are at."""
        return self._applied_revision

    @property
    def rejected(self) -> tuple[int, str]:
        """The last revision refused (by the validator or a listener) and why;
        ``(0, "")`` if none."""
        return self._rejected

    @property
    def state(self) -> WatcherState:
        """How current the values are (see :class:`WatcherState`)."""
        if self._stopped:
            return WatcherState.STOPPED
        if not self._have_state:
            return WatcherState.STARTING
        if self._from_file and not self._connected:
            return WatcherState.STALE
        if self._connected or self._lost_at is None:
            return WatcherState.LIVE
        if time.monotonic() - self._lost_at > self._stale_after:
            return WatcherState.STALE
        return WatcherState.LIVE

    @property
    def connected(self) -> bool:
        """Whether a stream is open and has delivered (values are live right now)."""
        return self._connected

    @property
    def age(self) -> float | None:
        """Seconds since the server last confirmed the values (None: never)."""
        if self._last_message_at is None:
            return None
        return time.monotonic() - self._last_message_at

    def entries(self) -> Mapping[Key, config_pb2.ConfigEntry]:
        """Every (service, key) that is set, with its entry."""
        return self._entries

    def get(self, service: str, key: str, default: Any = None) -> Any:
        """The value as plain Python (str, int, float, bool, JSON or FeatureFlag)."""
        entry = self._entries.get((service, key))
        return default if entry is None else plain_value(entry.value)

    def get_str(self, service: str, key: str, default: str = "") -> str:
        """A string value; ``default`` when unset or of another type."""
        value = self.get(service, key)
        return value if isinstance(value, str) else default

    def get_int(self, service: str, key: str, default: int = 0) -> int:
        """An int value; ``default`` when unset or of another type."""
        value = self.get(service, key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def get_float(self, service: str, key: str, default: float = 0.0) -> float:
        """A number (int or double) as float; ``default`` when unset or not a number."""
        value = self.get(service, key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return default

    def get_bool(self, service: str, key: str, default: bool = False) -> bool:
        """A bool value; ``default`` when unset or of another type."""
        value = self.get(service, key)
        return value if isinstance(value, bool) else default

    def flag(self, service: str, key: str, subject: str) -> FlagResult:
        """The feature flag at ``service``/``key`` for ``subject``; off when unset."""
        value = self.get(service, key)
        if not isinstance(value, config_pb2.FeatureFlag):
            return FlagResult(False, "", None, "missing")
        return evaluate_flag(value, subject, service=service, key=key)

    async def wait_for_revision(self, revision: int, timeout: float | None = 10.0) -> int:  # noqa: ASYNC109
        """Waits until the watcher serves ``revision`` (or a later one), its listeners
        called: read-your-writes after a write through any replica, e.g.
        ``await watcher.wait_for_revision((await client.set(...)).revision)``.

        Returns:
            The revision now served (at least ``revision``).

        Raises:
            RevisionRefused: the stream reached ``revision`` but the validator refused
                it, so the values served are older (see :attr:`rejected`).
            TimeoutError: not reached within ``timeout`` seconds.
        """
        if self._revision < revision:
            waiter = asyncio.get_running_loop().create_future()
            entry = (revision, waiter)
            self._revision_waiters.append(entry)
            try:
                await asyncio.wait_for(waiter, timeout)
            finally:
                self._revision_waiters.remove(entry)
        if self._applied_revision < revision:
            raise RevisionRefused(revision, *self._rejected)
        return self._applied_revision

    @property
    def _revision(self) -> int:
        return self._stream_revision

    @_revision.setter
    def _revision(self, revision: int) -> None:
        # Every place that moves the stream's position wakes the waiters through here.
        # They resume once this message is handled whole (validated, served, listeners
        # called): a woken coroutine runs only when the stream task next yields.
        self._stream_revision = revision
        for wanted, waiter in self._revision_waiters:
            if revision >= wanted and not waiter.done():
                waiter.set_result(None)

    # -- the stream ------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._channel is not None
        stub = config_service_pb2_grpc.ConfigServiceStub(self._channel)
        delay = self._backoff[0]
        while True:
            try:
                token = await current_token(self._token)
            except Exception:  # a token file mid-rotation, a refresh that failed: later
                log.warning("no token for the watch stream; retrying", exc_info=True)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                delay = min(delay * 2, self._backoff[1])
                continue
            request = config_pb2.WatchConfigRequest(
                organization=self.organization,
                services=self._services,
                start_revision=self._revision if self._have_state else 0,
                progress_interval=duration_pb2.Duration(seconds=int(self._progress_interval)),
            )
            call = stub.WatchConfig(request, metadata=(("authorization", f"Bearer {token}"),))
            self._fragments = []  # parts of a stream that ended are never completed
            try:
                async for message in call:
                    self._connected = True
                    self._lost_at = None
                    delay = self._backoff[0]
                    self._receive(message)
                wait = delay
            except grpc.aio.AioRpcError as error:
                self.last_error = error
                wait = self._backoff[1] if error.code() in _PERMANENT else delay
                if (
                    error.code() == grpc.StatusCode.UNAUTHENTICATED
                    and self._connected  # ended mid-stream, not refused at the door
                    and is_provider(self._token)
                    and from_rpc_error(error).reason in _TOKEN_ENDED
                ):
                    # The stream outlived its token: ask the provider for a fresh one
                    # and resume at once from the last revision (nothing is lost).
                    wait = 0.0
                elif isinstance(self._token, Credentials) and await self._refreshed(
                    token, from_rpc_error(error).reason
                ):
                    wait = 0.0  # refused at the door, and a login session has refreshed
            except Exception:  # nothing may end the stream for good: log, back off, resume
                log.exception("the watch stream failed; resuming")
                wait = delay
            finally:
                if self._connected or self._lost_at is None:
                    self._lost_at = time.monotonic()
                self._connected = False
            # Full jitter keeps a fleet of pods from reconnecting in lockstep.
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, self._backoff[1])

    async def _refreshed(self, token: str, reason: str) -> bool:
        """Whether the login session refreshed after ``token`` was refused (a failed
        refresh counts as no: the stream backs off and tries again)."""
        assert isinstance(self._token, Credentials)
        try:
            return await self._token.rejected(token, reason)
        except Exception:
            log.warning("refreshing the watcher's token failed", exc_info=True)
            return False

    def _receive(self, message: Any) -> None:
        self._last_message_at = time.monotonic()
        if message.type == Response.EVENT_TYPE_PROGRESS:
            # Current up to here (revisions of other services may have passed).
            self._revision = max(self._revision, message.revision)
            if self._entries is self._server_entries:
                self._applied_revision = max(self._applied_revision, message.revision)
            return
        if message.fragment:
            # Part of a snapshot or revision too large for one message: held until
            # its last part arrives, never applied alone.
            self._fragments.append(message)
            return
        parts, self._fragments = [*self._fragments, message], []
        if message.type == Response.EVENT_TYPE_SNAPSHOT:
            entries = {(e.service, e.key): e for part in parts for e in part.entries}
            self._commit(message.revision, [], entries, snapshot=True)
        elif message.type == Response.EVENT_TYPE_CHANGE:
            changes = [c for part in parts for c in part.changes]
            entries = dict(self._server_entries)
            for change in changes:
                if change.type == config_pb2.CHANGE_TYPE_DELETE:
                    entries.pop((change.service, change.key), None)
                else:
                    entries[(change.service, change.key)] = change.entry
            self._commit(message.revision, changes, entries, snapshot=False)

    def _commit(
        self,
        revision: int,
        changes: Sequence[config_pb2.ConfigChange],
        entries: Mapping[Key, config_pb2.ConfigEntry],
        *,
        snapshot: bool,
    ) -> None:
        self._revision = revision
        self._server_entries = entries
        self._have_state = True
        self._first.set()
        self._report_wanted.set()
        if self._validator is not None:
            try:
                self._validator(entries)
            except Exception as exc:  # any refusal keeps the good state
                log.warning("revision %d refused by the validator: %s", revision, exc)
                self._rejected = (revision, f"validator: {type(exc).__name__}: {exc}")
                return
        self._entries = entries  # swapped whole: readers never see half a revision
        self._applied_revision = revision
        self._from_file = False
        self._save_file()
        event = ConfigEvent(revision, changes, snapshot)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # one listener cannot stop the stream
                log.exception("a config listener failed at revision %d", revision)
                self._rejected = (revision, f"listener: {type(exc).__name__}: {exc}")

    # -- rollout status --------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Reports the applied (or refused) revision after each revision and every
        ``report_interval`` seconds (the heartbeat); a failed report waits for the next."""
        assert self._channel is not None
        stub = config_service_pb2_grpc.ConfigServiceStub(self._channel)
        while True:
            try:
                await asyncio.wait_for(self._report_wanted.wait(), self._report_interval)
                # A change: spread the fleet's reports (and gather the revisions that
                # arrive meanwhile) instead of all answering at once.
                await asyncio.sleep(random.uniform(0.0, self._report_delay))  # noqa: S311
            except TimeoutError:
                pass  # the heartbeat
            self._report_wanted.clear()
            if not self._have_state:
                continue
            try:
                token = await current_token(self._token)
            except Exception:  # a token provider failing now may work next time
                log.warning("no token for the status report", exc_info=True)
                continue
            request = config_pb2.ReportConfigStatusRequest(
                organization=self.organization,
                client_id=self.client_id,
                labels=self.labels,
                applied_revision=self._applied_revision,
                rejected_revision=self._rejected[0],
                rejection_reason=self._rejected[1][:1000],
            )
            try:
                await stub.ReportConfigStatus(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
                )
                self.last_report_error = None
            except grpc.aio.AioRpcError as error:
                self.last_report_error = error

    # -- last known good -------------------------------------------------------------

    def _save_file(self) -> None:
        if self._file is None:
            return
        document = {
            "organization": self.organization,
            "revision": self._revision,
            "entries": [
                base64.b64encode(e.SerializeToString()).decode() for e in self._entries.values()
            ],
        }
        temporary = ""
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self._file.parent, prefix=".lkg-")
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle)
            os.replace(temporary, self._file)  # atomic: a reader never sees half a file
        except OSError:  # a full or read-only disk costs the file, not the stream
            log.warning("cannot write the last-known-good file %s", self._file, exc_info=True)
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def _load_file(self) -> bool:
        if self._file is None or not self._file.exists() or self._have_state:
            return self._have_state
        try:
            document = json.loads(self._file.read_text())
            if document["organization"] != self.organization:
                return False
            entries = [
                config_pb2.ConfigEntry.FromString(base64.b64decode(raw))
                for raw in document["entries"]
            ]
        except (OSError, ValueError, KeyError):
            return False
        self._entries = self._server_entries = {(e.service, e.key): e for e in entries}
        self._revision = self._applied_revision = int(document["revision"])
        self._have_state = True
        self._from_file = True
        return True


class ConfigWatcher:
    """:class:`AsyncConfigWatcher` for code without an event loop: the stream runs on a
    background thread; reads are plain lookups and safe from any thread. Listeners
    run on that background thread.

    Takes the same arguments as :class:`AsyncConfigWatcher` (except ``channel``).
    """

    def __init__(self, target: str, organization: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"config-watcher:{organization}", daemon=True
        )
        self._thread.start()
        self._watcher: AsyncConfigWatcher = self._call(
            self._make(target, organization, options)
        ).result()

    @staticmethod
    async def _make(target: str, organization: str, options: dict[str, Any]) -> AsyncConfigWatcher:
        return AsyncConfigWatcher(target, organization, **options)

    def _call(self, coroutine: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def start(self, *, timeout: float | None = 10.0) -> None:
        """Connects and waits for the first state (see :meth:`AsyncConfigWatcher.start`)."""
        self._call(self._watcher.start(timeout=timeout)).result()

    def wait_for_revision(self, revision: int, timeout: float | None = 10.0) -> int:
        """Blocks until ``revision`` is applied (see
        :meth:`AsyncConfigWatcher.wait_for_revision`)."""
        result: int = self._call(self._watcher.wait_for_revision(revision, timeout)).result()
        return result

    def stop(self) -> None:
        """Closes the stream and ends the background thread."""
        if self._loop.is_closed():
            return
        self._call(self._watcher.stop()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ConfigWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Typed reads for strict type checkers; they touch no loop state, so they go
    # straight to the asyncio watcher from any thread.
    @property
    def revision(self) -> int:
        """See :attr:`AsyncConfigWatcher.revision`."""
        return self._watcher.revision

    @property
    def state(self) -> WatcherState:
        """See :attr:`AsyncConfigWatcher.state`."""
        return self._watcher.state

    @property
    def age(self) -> float | None:
        """See :attr:`AsyncConfigWatcher.age`."""
        return self._watcher.age

    def get(self, service: str, key: str, default: Any = None) -> Any:
        """See :meth:`AsyncConfigWatcher.get`."""
        return self._watcher.get(service, key, default)

    def get_str(self, service: str, key: str, default: str = "") -> str:
        """See :meth:`AsyncConfigWatcher.get_str`."""
        return self._watcher.get_str(service, key, default)

    def get_int(self, service: str, key: str, default: int = 0) -> int:
        """See :meth:`AsyncConfigWatcher.get_int`."""
        return self._watcher.get_int(service, key, default)

    def get_float(self, service: str, key: str, default: float = 0.0) -> float:
        """See :meth:`AsyncConfigWatcher.get_float`."""
        return self._watcher.get_float(service, key, default)

    def get_bool(self, service: str, key: str, default: bool = False) -> bool:
        """See :meth:`AsyncConfigWatcher.get_bool`."""
        return self._watcher.get_bool(service, key, default)

    def flag(self, service: str, key: str, subject: str) -> FlagResult:
        """See :meth:`AsyncConfigWatcher.flag`."""
        return self._watcher.flag(service, key, subject)

    def __getattr__(self, name: str) -> Any:
        # Reads (get, get_int, flag, revision, state, age, entries, ...) and
        # add_listener go straight to the asyncio watcher: they touch no loop state.
        return getattr(self._watcher, name)
