"""The HTTP face of the fake: routing, request decoding, faults, and the server class.

Built on the standard library's ``ThreadingHTTPServer`` (one thread per connection)
running in a background thread, so it serves sync tests and asyncio tests alike and
needs nothing beyond the test dependencies.

Latency: a request goes through :meth:`_Handler._handle`. It is timed from its
arrival, then served (authorization, an injected fault, the route; the store's lock
is held only while the store works), then charged as a verb (the route tells whether a
PATCH/PUT created the object), then held until ``arrival + latency`` (the latency rule
for that verb and resource, see :mod:`.faults`) with no lock held, so slow calls
overlap as on a real server; then it is logged, with its verb and latency, and
answered.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml  # type: ignore[import-untyped, unused-ignore]

from . import errors, resources
from .arrival import ArrivalReader
from .errors import KubeApiError, reason_for_code
from .faults import Fault, FaultTable, RequestInfo, RequestLog, RequestRecord
from .resources import ResourceType, resolve_type
from .store import APPLY_PATCH, JSON_PATCH, PATCH_TYPES, ObjectStore
from .validation import warm_up

DEFAULT_TOKEN = "fakekube-token"

Body = dict[str, Any]


@dataclass
class _Call:
    """A decoded request, handed to the verb implementations."""

    method: str
    info: RequestInfo
    params: dict[str, list[str]]
    body: bytes
    content_type: str
    user_agent: str

    def param(self, name: str, default: str = "") -> str:
        values = self.params.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return self.param(name).lower() in ("true", "1")

    @property
    def dry_run(self) -> bool:
        return self.param("dryRun") == "All"

    @property
    def manager(self) -> str:
        # The real server falls back to the user agent's product name.
        return self.param("fieldManager") or self.user_agent.split("/", 1)[0] or "unknown"


@dataclass
class _Response:
    code: int
    body: Any
    headers: dict[str, str]
    # The verb the route served (faults.VERBS); "" when the route did not say (errors,
    # discovery), and _Api.verb_of derives it from the request.
    verb: str = ""


Route = Callable[[_Call], _Response]


def _ok(body: Any, code: int = 200, *, verb: str = "") -> _Response:
    return _Response(code, body, {}, verb)


def _decode(call: _Call, *, yaml_allowed: bool) -> Any:
    if not call.body:
        raise errors.bad_request("the request body is empty")
    try:
        if yaml_allowed or "yaml" in call.content_type:
            # Clients mostly send JSON (valid YAML); the C JSON parser is far faster.
            try:
                return json.loads(call.body)
            except ValueError:
                return yaml.safe_load(call.body.decode("utf-8"))
        return json.loads(call.body)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"unable to decode the request body: {exc}") from exc


class _Api:
    """Maps decoded requests onto the store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def route(self, method: str, path: str) -> tuple[RequestInfo, Route]:
        """Resolve a path; the route raises 404/405 itself when there is nothing to serve."""
        segments = [unquote(s) for s in path.split("/") if s]
        plain = RequestInfo(method=method, path=path)

        def static(body: Any) -> tuple[RequestInfo, Route]:
            def serve(call: _Call) -> _Response:
                if call.method != "GET":
                    raise errors.method_not_allowed()
                if body is None:
                    raise errors.route_not_found()
                return _ok(body)

            return plain, serve

        if segments == ["version"]:
            return static(resources.version_info())
        if segments in (["healthz"], ["livez"], ["readyz"]):
            return static("ok")
        if segments == ["api"]:
            return static(resources.api_versions())
        if segments == ["apis"]:
            return static(resources.api_group_list())
        if len(segments) == 2 and segments[0] == "apis":
            return static(resources.api_group(segments[1]))
        if segments[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return static(None)
        if not rest:
            return static(resources.api_resource_list(group, version))

        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        rt = resources.find_type(group, version, rest[0])
        if rt is None or len(rest) > 3 or (namespace and not rt.namespaced):
            return static(None)
        name = rest[1] if len(rest) >= 2 else ""
        subresource = rest[2] if len(rest) == 3 else ""
        if (subresource and (subresource != "status" or not rt.status_subresource)) or (
            name and rt.namespaced and not namespace
        ):
            return static(None)
        info = RequestInfo(method, path, rt.plural, rt.kind, namespace, name, subresource)
        if not name:
            return info, lambda call: self._collection(call, rt)
        return info, lambda call: self._object(call, rt)

    def verb_of(self, call: _Call, response: _Response) -> str:
        """The verb a served request is charged as (see ``faults.VERBS``).

        The route's own word when it answered successfully (it knows whether a PATCH
        created the object); otherwise derived from the request: a failed PATCH/PUT of
        an object is ``create`` when the object does not exist, ``update`` when it does.
        ``""`` for discovery and unknown paths.
        """
        if response.verb:
            return response.verb
        info = call.info
        if not info.resource:
            return ""
        if call.method == "GET":
            if call.flag("watch"):
                return "watch"
            return "get" if info.name else "list"
        if call.method == "POST":
            return "create"
        if call.method == "DELETE":
            return "delete"
        if call.method in ("PATCH", "PUT"):
            if not info.name or info.subresource:
                return "update"
            rt = resolve_type(info.resource)
            exists = self.store.exists(rt, info.namespace or None, info.name)
            return "update" if exists else "create"
        return ""

    def _collection(self, call: _Call, rt: ResourceType) -> _Response:
        namespace = call.info.namespace or None
        if call.method == "GET":
            if call.flag("watch"):
                raise KubeApiError(405, "MethodNotAllowed", "watch is not supported by this fake")
            try:
                limit = int(call.param("limit", "0") or 0)
            except ValueError as exc:
                raise errors.bad_request(f"invalid limit: {exc}") from exc
            return _ok(
                self.store.list_objects(
                    rt,
                    namespace,
                    label_selector=call.param("labelSelector"),
                    field_selector=call.param("fieldSelector"),
                    limit=limit,
                    continue_token=call.param("continue"),
                ),
                verb="list",
            )
        if call.method == "POST" and (namespace or not rt.namespaced):
            body = _decode(call, yaml_allowed=False)
            created = self.store.create(
                rt, namespace, body, manager=call.manager, dry_run=call.dry_run
            )
            return _ok(created, 201, verb="create")
        if call.method == "DELETE" and rt.namespaced and namespace:
            return _ok(
                self.store.delete_collection(
                    rt,
                    namespace,
                    label_selector=call.param("labelSelector"),
                    field_selector=call.param("fieldSelector"),
                ),
                verb="delete",
            )
        raise errors.method_not_allowed()

    def _object(self, call: _Call, rt: ResourceType) -> _Response:
        info = call.info
        namespace = info.namespace or None
        if call.method == "GET":
            return _ok(self.store.get(rt, namespace, info.name), verb="get")
        if call.method == "PUT":
            body = _decode(call, yaml_allowed=False)
            # PUT never creates here: it replaces an existing object or fails.
            return _ok(
                self.store.replace(
                    rt,
                    namespace,
                    info.name,
                    body,
                    manager=call.manager,
                    subresource=info.subresource,
                    dry_run=call.dry_run,
                ),
                verb="update",
            )
        if call.method == "PATCH":
            return self._patch(call, rt)
        if call.method == "DELETE" and not info.subresource:
            options = json.loads(call.body) if call.body.strip() else {}
            preconditions = options.get("preconditions") if isinstance(options, dict) else None
            return _ok(
                self.store.delete(
                    rt, namespace, info.name, preconditions=preconditions, dry_run=call.dry_run
                ),
                verb="delete",
            )
        raise errors.method_not_allowed()

    def _patch(self, call: _Call, rt: ResourceType) -> _Response:
        patch_type = call.content_type
        if patch_type not in PATCH_TYPES:
            raise KubeApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(PATCH_TYPES)}",
            )
        if patch_type == APPLY_PATCH and not call.param("fieldManager"):
            raise _patch_options_invalid(
                errors.FIELD_REQUIRED,
                "Required value: is required for apply patch",
                "fieldManager",
            )
        if patch_type != APPLY_PATCH and call.param("force"):
            raise _patch_options_invalid(
                errors.FIELD_FORBIDDEN,
                "Forbidden: may not be specified for non-apply patch",
                "force",
            )
        body = _decode(call, yaml_allowed=patch_type == APPLY_PATCH)
        if patch_type == JSON_PATCH and not isinstance(body, list):
            raise errors.bad_request("a JSON patch must be a list of operations")
        obj, created = self.store.patch(
            rt,
            call.info.namespace or None,
            call.info.name,
            patch_type,
            body,
            manager=call.manager,
            force=call.flag("force"),
            subresource=call.info.subresource,
            dry_run=call.dry_run,
        )
        # Known only now: server-side apply creates a missing object, updates otherwise.
        return _ok(obj, 201 if created else 200, verb="create" if created else "update")


def _patch_options_invalid(reason: str, message: str, field: str) -> KubeApiError:
    return KubeApiError(
        422,
        "Invalid",
        f'PatchOptions.meta.k8s.io "" is invalid: {field}: {message}',
        details={
            "group": "meta.k8s.io",
            "kind": "PatchOptions",
            "causes": [errors.cause(reason, message, field)],
        },
    )


def _fault_error(fault: Fault) -> KubeApiError:
    reason = fault.reason or reason_for_code(fault.status)
    message = fault.message or f"injected failure: {reason}"
    details: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        details["retryAfterSeconds"] = fault.retry_after
        headers["Retry-After"] = str(fault.retry_after)
    return KubeApiError(fault.status, reason, message, details=details, headers=headers)


class _AnswerClock:
    """Sends held answers at their deadlines, from one thread of its own.

    Handler threads that each watched the clock for their own answer competed for the
    GIL just when answers were due: four requests answered at the same deadline (the
    Provisioner's guard objects) left up to a millisecond late, the last one most. A
    handler now hands its answer over and sleeps; this thread alone sleeps until just
    before the earliest deadline, watches the clock for the rest, and sends every
    answer that is due, earliest first, writing what each socket takes at once (a
    client that does not read holds up no one else: its handler writes the rest). An
    answer that is due already when handed over is sent by its handler at once.

    Answers due together, or within a millisecond of each other, leave back to back:
    their handlers are woken only once all of them are out (or after 5 ms at most), so
    none takes the GIL in between; a handler woken just then, running on the core
    the client needs to read its answer, would keep the next answer waiting for the
    GIL. The clock watches the last
    stretch yielding the processor (``sched_yield``, which also lets the GIL go)
    rather than sleeping: a sleep, even of zero, wakes about 0.1 ms late on a virtual
    machine. With ``handler_niceness`` (see :class:`FakeKubeServer`) this thread keeps
    the process's priority, so the client an answer wakes does not preempt it before
    the next answer is out.
    """

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._due: list[tuple[float, int, _HeldAnswer]] = []
        self._seq = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fakekube-answers", daemon=True)
        self._thread.start()

    def send_at(self, deadline: float, send: Callable[[], None]) -> None:
        """Runs ``send`` no earlier than ``deadline`` (at once when the server stops);
        returns once it ran, raising what it raised."""
        job = _HeldAnswer(send)
        if time.monotonic() < deadline:
            with self._changed:
                if not self._stopping.is_set():  # checked where the clock checks it
                    self._seq += 1
                    heapq.heappush(self._due, (deadline, self._seq, job))
                    self._changed.notify()
                    job.held = True
        if not job.held:
            job.run()
        job.done.wait()
        if job.error is not None:
            raise job.error

    def stop(self) -> None:
        """Sends what is held at once (the server is stopping) and ends the thread."""
        with self._changed:
            self._changed.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sent: list[_HeldAnswer] = []  # out, their handlers not woken yet
        sent_since = 0.0
        while True:
            if sent and not self._more_due_soon(since=sent_since):
                for job in sent:
                    job.done.set()
                sent = []
            with self._changed:
                while not self._due and not sent and not self._stopping.is_set():
                    self._changed.wait()
                if not self._due:
                    if sent:
                        continue  # wake them
                    return  # stopping, nothing held
                remaining = self._due[0][0] - time.monotonic()
                if remaining > _SPIN and not self._stopping.is_set():
                    if sent:
                        continue  # wake them before sleeping
                    # Timed waits wake a few tenths of a millisecond late: wake up
                    # before the deadline (or when an earlier one comes in), then
                    # watch the clock for the rest.
                    self._changed.wait(remaining - _SPIN)
                    continue
            while not self._stopping.is_set() and time.monotonic() < self._due[0][0]:
                os.sched_yield()  # the GIL goes to the handlers meanwhile
            now = time.monotonic()
            if not sent:
                sent_since = now
            while True:
                with self._changed:
                    if not self._due or (self._due[0][0] > now and not self._stopping.is_set()):
                        break
                    _, _, job = heapq.heappop(self._due)
                job.run(notify=False)
                sent.append(job)

    def _more_due_soon(self, *, since: float) -> bool:
        """Whether another answer falls due within _SPIN, and the handlers of those
        sent since ``since`` may sleep on."""
        with self._changed:
            now = time.monotonic()
            return (
                bool(self._due)
                and self._due[0][0] - now <= _SPIN
                and now - since <= _HOLD_WAKEUPS
                and not self._stopping.is_set()
            )


class _HeldAnswer:
    """An answer's sending, run once by whichever thread sends it."""

    def __init__(self, send: Callable[[], None]) -> None:
        self.send = send
        self.held = False
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self, *, notify: bool = True) -> None:
        try:
            self.send()
        except BaseException as exc:  # re-raised in the handler's own thread
            self.error = exc
        finally:
            if notify:
                self.done.set()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many concurrent clients (benchmarks) must not be refused by a short backlog.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeKubeServer) -> None:
        self.fake = fake
        self.stopping = threading.Event()
        self.clock = _AnswerClock(self.stopping)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on kept-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


# How close to a held answer's deadline the answer clock stops sleeping and watches
# the clock.
_SPIN = 0.001
# How long the answer clock may keep the handlers of answers it sent asleep while
# more answers fall due within _SPIN (see _AnswerClock).
_HOLD_WAKEUPS = 0.005


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive, as urllib3 pools connections.
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm on, the
    # client's delayed ACK adds ~40 ms to every call.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # This connection's thread only: the answer clock keeps its priority.
        if self.server.fake.idle_handlers and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        elif self.server.fake.handler_niceness:
            os.setpriority(
                os.PRIO_PROCESS, threading.get_native_id(), self.server.fake.handler_niceness
            )
        self._reader = ArrivalReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._answered = 0.0  # when the previous answer on this connection was sent

    def parse_request(self) -> bool:
        # Called once the request line has been read: the latency clock starts when
        # that line reached the socket (never before the previous answer left), so the
        # fake's header parsing, and any wait for the GIL, count as its own work
        # (inside the latency), as a real API server's would.
        self._arrived = max(self._reader.arrived, self._answered)
        return super().parse_request()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; the request log has it all."""

    def _handle(self) -> None:
        fake = self.server.fake
        started = self._arrived  # latency is measured from here
        seq = fake.log.next_seq()
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
        info, route = fake.api.route(self.command, url.path)
        call = _Call(
            self.command,
            info,
            parse_qs(url.query, keep_blank_values=True),
            body,
            content_type,
            self.headers.get("User-Agent") or "",
        )
        response, fault = self._serve(call, route)
        # Decided after serving: whether a PATCH/PUT created the object is known only now.
        verb = fake.api.verb_of(call, response)
        latency = fake.faults.latency_for(verb, info.resource)
        # Encoded before the hold: a real server's work on the answer is inside its
        # latency too, and what leaves after the hold is one write (status line,
        # headers and body in one segment, so the client wakes once).
        answer = self._encode(response)
        if fault is not None:
            fault.meet()  # a request held at an injected rendezvous waits here

        rest = [b""]  # what the socket did not take at once, for this thread to write

        def send() -> None:
            # Logged before the answer is written: once a client has its answer, the
            # request is in the log (a test may read or clear the log right after).
            fake.log.add(
                RequestRecord(
                    seq=seq,
                    method=self.command,
                    path=url.path,
                    query=url.query,
                    content_type=content_type,
                    status=response.code,
                    resource=info.resource,
                    namespace=info.namespace,
                    name=info.name,
                    started=started,
                    finished=time.monotonic(),
                    verb=verb,
                    latency=latency,
                )
            )
            # Taken before the write: the next request on this connection (sent once
            # this answer is in) may arrive before this thread runs again.
            self._answered = time.monotonic()
            rest[0] = self._send_now(answer)

        # Latency is the time the API takes to answer, its own work included (as a
        # real API server's would be): the answer leaves no earlier than
        # ``started + latency``, with no lock held (unless the server is stopping). A
        # request held at a rendezvous waited for it above, in the same window, so a
        # test proves that slow calls overlap instead of queueing.
        self.server.clock.send_at(started + latency, send)
        if rest[0]:
            self._send(rest[0])

    def _serve(self, call: _Call, route: Route) -> tuple[_Response, Fault | None]:
        fake = self.server.fake
        fault: Fault | None = None
        try:
            if fake.token is not None and self.headers.get("Authorization") != (
                f"Bearer {fake.token}"
            ):
                raise KubeApiError(401, "Unauthorized", "Unauthorized")
            fault = fake.faults.take(call.info)
            if fault is not None:
                # An injected hang comes before the work: a timed-out write still lands.
                fault.hold()
            if fault is not None and fault.status:
                raise _fault_error(fault)
            return route(call), fault
        except KubeApiError as exc:
            return _Response(exc.code, exc.status(), exc.headers), fault
        except Exception as exc:  # the fake's own bug: still answer like a server
            error = KubeApiError(500, "InternalError", f"fake API server error: {exc!r}")
            return _Response(500, error.status(), {}), fault

    def _encode(self, response: _Response) -> bytes:
        """The whole HTTP answer: status line, headers and body."""
        if isinstance(response.body, str):
            payload, content_type = response.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(response.body).encode(), "application/json"
        phrase = self.responses.get(response.code, ("",))[0]
        lines = [
            f"{self.protocol_version} {response.code} {phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            *(f"{name}: {value}" for name, value in response.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload

    def _send_now(self, answer: bytes) -> bytes:
        """Writes what the socket takes without waiting (the answer clock must never
        wait for one slow client); returns the rest."""
        try:
            sent = self.connection.send(answer, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close_connection = True  # the client gave up and closed the connection
            return b""
        return answer[sent:]

    def _send(self, answer: bytes) -> None:
        try:
            self.wfile.write(answer)
            self.wfile.flush()
        except OSError:
            # The client gave up (timeout) and closed the connection.
            self.close_connection = True


class FakeKubeServer:
    """A small Kubernetes API server for tests, reachable through a kubeconfig.

    Serves Namespace, ResourceQuota, LimitRange, ServiceAccount, Role, RoleBinding and
    NetworkPolicy over the real REST protocol, validates every stored object against the
    official schemas, and lets a test inject failures and latency and read a log of the
    requests it served.

    Latency is how long a request takes to answer, measured from its arrival, the fake's
    own work included; the answer waits out what remains with no lock held. Each
    request is charged as a verb (``create``, ``update``, ``delete``, ``get``, ``list``,
    ``watch``), decided once it was served: a server-side apply PATCH is ``create``
    when it created the object and ``update`` when it changed an existing one. Its
    latency is the first rule found among ``"<verb>:<resource>"``, ``"<verb>"``,
    ``"<resource>"``, else the default; discovery answers at once. The request log
    (:meth:`requests`) records the verb and latency charged to each request.

    Example:
        >>> with FakeKubeServer(latency_rules={"create:namespaces": 0.05, "create": 0.02}) as kube:
        ...     api = CoreV1Api(new_client_from_config(kube.write_kubeconfig(tmp / "kc")))

    Args:
        host: address to bind; loopback by default.
        port: port to bind; 0 picks a free one (see :attr:`port` after start).
        token: bearer token the server requires (and the kubeconfig carries); None
            accepts any request.
        namespace_deletion_delay: seconds a deleted namespace stays ``Terminating``.
        latency: the default latency: for every resource request no rule matches.
        latency_by_resource: latency rules by resource (plural, singular or Kind), for
            every verb on it; verb rules take precedence.
        latency_rules: latency rules keyed ``"<verb>:<resource>"`` or ``"<verb>"`` (or
            ``"<resource>"``), e.g. ``{"create:namespaces": 0.05, "update": 0.02}``; see
            :meth:`set_latency_rules`.
        handler_niceness: how much lower the CPU priority of the threads that read and
            serve requests is (0-19, Linux). On a machine shared with the processes
            being measured, 19 keeps the fake's own work from preempting them, as an
            API server on other machines would not; the thread that sends held
            answers keeps the process's priority, so answers due at once leave at
            once instead of one per preemption by the client they woke.
        idle_handlers: serve requests under the idle scheduling policy (Linux; the
            niceness elsewhere): only on a processor nothing else wants, never
            preempting the client that sent the request. Even at niceness 19 the
            kernel often runs the woken handler at once on the client's core, for
            the half millisecond the fake takes to read and check a request, and
            the client's next write (the second of four concurrent guards, say)
            waits that long. The answer clock keeps the process's policy.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = DEFAULT_TOKEN,
        namespace_deletion_delay: float = 0.2,
        latency: float = 0.0,
        latency_by_resource: Mapping[str, float] | None = None,
        latency_rules: Mapping[str, float] | None = None,
        handler_niceness: int = 0,
        idle_handlers: bool = False,
    ) -> None:
        self.token = token
        self.handler_niceness = handler_niceness
        self.idle_handlers = idle_handlers
        self.store = ObjectStore(namespace_deletion_delay=namespace_deletion_delay)
        self.api = _Api(self.store)
        self.faults = FaultTable()
        self.log = RequestLog()
        self._host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.set_latency(latency, **dict(latency_by_resource or {}))
        self.set_latency_rules(latency_rules or {})

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeKubeServer:
        """Bind and serve in a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("the fake API server is already running")
        warm_up()
        self._httpd = _HTTPServer((self._host, self._port), self)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakekube-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any delayed request, and close connections."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.clock.stop()  # answers still held go out now
        self.faults.release()  # requests held at a rendezvous
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeKubeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self._host}:{self._port}"

    def write_kubeconfig(self, path: str | Path, *, context: str = "fakekube") -> Path:
        """Write a kubeconfig pointing at this server (plain http, bearer token).

        Returns:
            The path written, accepted by ``kubernetes.config.load_kube_config`` and
            ``new_client_from_config``.
        """
        user: dict[str, Any] = {"token": self.token} if self.token is not None else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
            "preferences": {},
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return target

    # -- failures and latency -------------------------------------------------------------

    def inject_error(
        self,
        status: int,
        *,
        method: str | None = None,
        path: str | None = None,
        kind: str | None = None,
        times: int | None = 1,
        message: str = "",
        reason: str = "",
        retry_after: int | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Answer matching requests with ``status`` and a ``Status`` body.

        Args:
            status: HTTP status (500, 409, 422, 429 ...).
            method: match this HTTP method only.
            path: match URL paths where this regular expression is found.
            kind: match this resource (plural, singular or Kind).
            times: affect this many requests; None for every matching request.
            message: ``Status.message``.
            reason: ``Status.reason``; derived from ``status`` when empty.
            retry_after: ``Retry-After`` header seconds.
            delay: seconds to wait before answering.

        Returns:
            The fault; its ``hits`` counts the requests it affected.
        """
        return self.faults.add(
            Fault(
                status,
                method=method,
                path=path,
                kind=kind,
                times=times,
                delay=delay,
                message=message,
                reason=reason,
                retry_after=retry_after,
            )
        )

    def inject_throttle(
        self,
        retry_after: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        kind: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer matching requests with 429 TooManyRequests and ``Retry-After``."""
        return self.inject_error(
            429,
            method=method,
            path=path,
            kind=kind,
            times=times,
            retry_after=retry_after,
            message="Too many requests, please try again later.",
        )

    def inject_delay(
        self,
        seconds: float,
        *,
        method: str | None = None,
        path: str | None = None,
        kind: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Hold matching requests for ``seconds``, then serve them normally.

        With ``seconds`` above the client's timeout this is a hung server; the request is
        still carried out afterwards, like a real write whose answer was lost. The
        fault's ``wait_held()`` waits until a request is held, its ``release()`` lets
        the held requests go at once (so does stopping the server).
        """
        return self.faults.add(
            Fault(0, method=method, path=path, kind=kind, times=times, delay=seconds)
        )

    def inject_rendezvous(
        self,
        parties: int,
        *,
        method: str | None = None,
        path: str | None = None,
        kind: str | None = None,
        times: int | None = None,
        timeout: float = 10.0,
    ) -> Fault:
        """Hold matching requests, once served, until ``parties`` of them wait together.

        The wait is where a request waits out its latency, with no lock held: if the
        fake served or delayed such requests one at a time, the rendezvous could not
        fill. It then breaks after ``timeout`` seconds, every held request answers, and
        the fault's ``broken`` is set. So ``not fault.broken`` proves, without timing
        anything, that the requests were in flight (and in their latency wait) at once.

        Args:
            parties: how many requests must meet.
            method: match this HTTP method only.
            path: match URL paths where this regular expression is found.
            kind: match this resource (plural, singular or Kind).
            times: hold this many requests; ``parties`` when None.
            timeout: seconds each request waits for the others.

        Returns:
            The fault; ``hits`` counts the held requests, ``broken`` a failed meeting.
        """
        if parties < 1:
            raise ValueError("a rendezvous needs at least one party")
        return self.faults.add(
            Fault(
                0,
                method=method,
                path=path,
                kind=kind,
                times=parties if times is None else times,
                rendezvous=parties,
                rendezvous_timeout=timeout,
            )
        )

    def clear_faults(self) -> None:
        """Remove every injected error, delay and rendezvous (latency is kept).

        Requests held at a rendezvous (the rendezvous marked broken) or by a delay are
        let go.
        """
        self.faults.clear()

    def set_latency(self, default: float | None = None, **per_resource: float) -> None:
        """Per-resource latency, e.g. ``set_latency(0.02, namespaces=0.05)``.

        The per-resource form of :meth:`set_latency_rules`: a resource's latency
        applies to every verb on it that no verb rule covers.

        Args:
            default: seconds when no rule matches; unchanged when None.
            **per_resource: seconds per resource, keyed by plural, singular or Kind.

        Raises:
            KeyError: a resource the fake does not serve.
        """
        self.faults.set_latency(
            default, {resolve_type(name).plural: value for name, value in per_resource.items()}
        )

    def set_latency_rules(
        self, rules: Mapping[str, float] | None = None, *, default: float | None = None
    ) -> None:
        """Latency by verb and resource, added to the current rules.

        Example: creating a namespace takes 50 ms, every other write 20 ms, reads
        nothing::

            kube.set_latency_rules(
                {"create:namespaces": 0.05, "create": 0.02, "update": 0.02, "delete": 0.02}
            )

        A request is charged as one verb, decided once it was served: ``create`` (POST,
        or a PATCH/PUT that created the object, e.g. server-side apply of a missing
        object), ``update`` (PATCH/PUT of an existing object), ``delete``, ``get``
        (one object), ``list`` (a collection) or ``watch``. Its latency is the first
        of ``"<verb>:<resource>"``, ``"<verb>"``, ``"<resource>"``, else the default;
        discovery answers at once. The latency runs from the request's arrival and
        includes the fake's own work.

        Args:
            rules: seconds by ``"<verb>:<resource>"``, ``"<verb>"`` or
                ``"<resource>"``; a resource by plural, singular or Kind.
            default: seconds when no rule matches; unchanged when None.

        Raises:
            ValueError: an unknown verb or resource, or a negative latency.
        """
        self.faults.set_latency(default, rules or {})

    def latency_rules(self) -> dict[str, float]:
        """The latency rules in force, normalised (``"create:namespaces"``), and the
        default under the key ``""``."""
        return self.faults.latency_rules()

    def clear_latency(self) -> None:
        """Remove all added latency: every rule, and the default back to 0."""
        self.faults.clear_latency()

    # -- request log -------------------------------------------------------------------

    def requests(
        self, *, method: str | None = None, resource: str | None = None
    ) -> list[RequestRecord]:
        """Finished requests in arrival order, optionally filtered.

        Args:
            method: keep only this HTTP method.
            resource: keep only this resource (plural, singular or Kind).
        """
        plural = resolve_type(resource).plural if resource else None
        return [
            r
            for r in self.log.records()
            if (method is None or r.method == method.upper())
            and (plural is None or r.resource == plural)
        ]

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.log.clear()

    # -- direct store access --------------------------------------------------------------

    @property
    def namespace_deletion_delay(self) -> float:
        """Seconds a deleted namespace stays ``Terminating``."""
        return self.store.namespace_deletion_delay

    @namespace_deletion_delay.setter
    def namespace_deletion_delay(self, seconds: float) -> None:
        self.store.namespace_deletion_delay = seconds

    def get_object(self, kind: str, name: str, namespace: str | None = None) -> Body | None:
        """The stored object (a copy) or None, without going through HTTP."""
        return self.store.peek(resolve_type(kind), namespace, name)

    def delete_object(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Remove an object at once, as if deleted by hand; a namespace takes its contents.

        Returns:
            Whether the object existed.
        """
        return self.store.remove(resolve_type(kind), namespace, name)

    def objects(self) -> list[Body]:
        """Every stored object."""
        return self.store.all_objects()

    @staticmethod
    def served_types() -> tuple[ResourceType, ...]:
        """The resource types this fake serves."""
        return resources.RESOURCE_TYPES
