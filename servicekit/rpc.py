"""One call path for every RPC: request id, logging context, metrics, auth, errors.

:class:`ServerInterceptor` wraps each method handler of a ``grpc.aio`` server so that,
inside the handler:

* the request id (``x-request-id`` metadata, or a new one) is in the log context and
  echoed to the client;
* the caller's verified token is available as :func:`current_principal` (methods
  listed as public, health and reflection need none); a missing or bad token is
  ``UNAUTHENTICATED`` before any handler code runs;
* the caller's organization is held to its request rate
  (:mod:`servicekit.ratelimit`): ``RESOURCE_EXHAUSTED`` with ``RetryInfo`` beyond it;
* a streaming call ends with ``UNAUTHENTICATED`` when its token expires or is revoked
  (:mod:`servicekit.streams`);
* a :class:`~servicekit.errors.AgentReadyError` raised by the handler becomes a
  ``google.rpc.Status`` with ``ErrorInfo`` (plus ``BadRequest``, ``ResourceInfo`` or
  ``RetryInfo``), ``NotImplementedError`` becomes ``UNIMPLEMENTED`` and anything else
  ``INTERNAL`` without leaking its text;
* count, latency and in-flight metrics are kept per method and status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import asyncpg
import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicekit import errors
from servicekit.auth import Principal, TokenVerifier
from servicekit.logs import method_var, organization_var, request_id_var
from servicekit.metrics import RPC_HANDLED, RPC_IN_FLIGHT, RPC_LATENCY, RPC_STARTED
from servicekit.ratelimit import RateLimiter
from servicekit.streams import Guard, StreamGuards

log = logging.getLogger(__name__)

ERROR_DOMAIN = "agentready.dev"
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Infrastructure services answer without a token: probes and tooling must reach them.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_principal() -> Principal:
    """The verified caller of the RPC being served.

    Raises:
        Unauthenticated: the method was served without a token (a public method).
    """
    principal = principal_var.get()
    if principal is None:
        raise errors.Unauthenticated("this call needs a bearer token", reason="TOKEN_MISSING")
    return principal


def authorize(organization: str, scope: str) -> str:
    """The caller's subject, once it is shown to act in ``organization`` with ``scope``.

    Raises:
        Unauthenticated: no token.
        PermissionDenied: another organization's token, or one without the scope.
    """
    principal = current_principal()
    principal.require(organization, scope)
    return principal.subject


def authorize_operator(scope: str) -> str:
    """The caller's subject, once it is shown to be an operator with ``scope``."""
    principal = current_principal()
    principal.require_operator(scope)
    return principal.subject


# Errors that say "the database cannot be reached right now", not "this call is wrong".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby, during a switchover
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    ConnectionError,
    TimeoutError,  # a pool that could not hand out a connection in time
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the database was unreachable (retry), not a bug."""
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc) or "connection" in str(exc)
    if isinstance(exc, asyncpg.InternalClientError):
        # A connection the server dropped mid-operation (a restart) is left with its
        # protocol in that operation; the next statement on it (e.g. the COMMIT)
        # then fails with this instead of a connection error.
        return "another operation" in str(exc)
    return isinstance(exc, _CONNECTION_ERRORS) or (
        isinstance(exc, OSError) and exc.errno is not None
    )


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# Error details travel in HTTP/2 trailers, which clients cap (gRPC's default hard limit
# is 16 KiB): a long message or hundreds of violations must not turn an INVALID_ARGUMENT
# into a transport error. Beyond these bounds the answer says how many were left out.
# Bounds in UTF-8 bytes (not characters: four-byte characters would quadruple them),
# on every text a caller's input can reach (a violation's field names a caller's label
# key, for one), and on the whole status: 7 KiB, so its base64 trailer stays well under
# the 16 KiB a default gRPC client accepts.
MAX_MESSAGE_CHARS = 1000
MAX_VIOLATIONS = 25
MAX_DESCRIPTION_CHARS = 200
MAX_STATUS_BYTES = 7 * 1024


def _clip(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "…"


def _bounded(violations: Any, keep: int) -> list[Any]:
    kept = [
        dataclasses.replace(
            v,
            field=_clip(v.field, MAX_DESCRIPTION_CHARS),
            description=_clip(v.description, MAX_DESCRIPTION_CHARS),
        )
        for v in violations[:keep]
    ]
    if len(violations) > keep:
        kept.append(
            errors.FieldViolation(
                "…", f"and {len(violations) - keep} more problems of the same request"
            )
        )
    return kept


def status_from_error(error: errors.AgentReadyError) -> status_pb2.Status:
    """The ``google.rpc.Status`` (with details) a domain error is reported as, at most
    :data:`MAX_STATUS_BYTES` (fewer violations are listed until it fits)."""
    keep = MAX_VIOLATIONS
    while True:
        status = _status(error, keep)
        if status.ByteSize() <= MAX_STATUS_BYTES or keep == 0:
            return status
        keep //= 2


def _status(error: errors.AgentReadyError, keep: int) -> status_pb2.Status:
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code_name), message=_clip(error.message, MAX_MESSAGE_CHARS)
    )
    status.details.append(
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=ERROR_DOMAIN,
                metadata={k: _clip(v, MAX_DESCRIPTION_CHARS) for k, v in error.metadata.items()},
            )
        )
    )
    if isinstance(error, errors.InvalidArgument) and error.violations:
        status.details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in _bounded(error.violations, keep)
                    ]
                )
            )
        )
    if isinstance(error, errors.FailedPrecondition) and error.violations:
        status.details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=error.reason, subject=v.field, description=v.description
                        )
                        for v in _bounded(error.violations, keep)
                    ]
                )
            )
        )
    if isinstance(error, errors.NotFound | errors.AlreadyExists):
        status.details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=_clip(error.resource_name, MAX_DESCRIPTION_CHARS),
                    description=_clip(error.message, MAX_MESSAGE_CHARS),
                )
            )
        )
    if (
        isinstance(error, errors.ResourceExhausted | errors.Unavailable)
        and error.retry_after_seconds is not None
    ):  # RetryInfo
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


_CLOSING: set[asyncio.Task[None]] = set()


async def _close_quietly(generator: Any) -> None:
    """Closes a stream handler's generator left suspended (its ``finally`` runs)."""
    with contextlib.suppress(Exception):
        await generator.aclose()


class _Call:
    """Book-keeping of one RPC: its names, start time and final code."""

    def __init__(self, method: str, kind: str, needs_auth: bool) -> None:
        self.full_method = method
        self.service, _, self.method = method.lstrip("/").rpartition("/")
        self.kind = kind
        self.needs_auth = needs_auth
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        self.counted = False
        self.metrics: _MethodMetrics | None = None


@dataclasses.dataclass(frozen=True)
class _MethodMetrics:
    started: Any
    in_flight: Any
    latency: Any


@functools.lru_cache(maxsize=4096)
def _method_metrics(service: str, method: str, kind: str) -> _MethodMetrics:
    """The labelled metric children of one method, looked up once."""
    return _MethodMetrics(
        RPC_STARTED.labels(service, method, kind),
        RPC_IN_FLIGHT.labels(service, method),
        RPC_LATENCY.labels(service, method, kind),
    )


class _Malformed:
    """A request body that did not parse, kept so the handler can say why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def tolerant(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return tolerant


def _raise_if_malformed(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise errors.InvalidArgument(
            f"the request is not a valid message: {request.reason}",
            reason="MALFORMED_REQUEST",
        )


# Methods whose wrapped handler is kept: every method a server serves, with room to
# spare; only known methods reach the cache (an unknown one has no handler).
MAX_WRAPPED_METHODS = 1024


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of a server in the shared call path."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        public_methods: Iterable[str] = (),
        rate_limiter: RateLimiter | None = None,
        streams: StreamGuards | None = None,
    ) -> None:
        """
        Args:
            verifier: checks bearer tokens; ``None`` rejects every call that needs one.
            public_methods: full method names (``/pkg.Service/Method``) served without
                a token, e.g. ``Login``.
            rate_limiter: holds each organization to its request rate (calls with a
                token scoped to an organization; operators and platform services are
                not limited).
            streams: ends streaming calls when their token expires or is revoked.
        """
        self._verifier = verifier
        self._public = frozenset(public_methods)
        self._limiter = rate_limiter
        self._streams = streams
        # Method → (the handler gRPC found, its wrapped form): a method's handler is
        # one object for the server's life, so it is wrapped once, not per call.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        service = method.lstrip("/").rpartition("/")[0]
        needs_auth = method not in self._public and service not in OPEN_SERVICES
        wrapped = self._wrap(handler, method, needs_auth)
        if len(self._wrapped) < MAX_WRAPPED_METHODS:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, method: str, needs_auth: bool) -> Handler:
        if handler.request_streaming and handler.response_streaming:
            kind, field = "bidi_stream", "stream_stream"
        elif handler.request_streaming:
            kind, field = "client_stream", "stream_unary"
        elif handler.response_streaming:
            kind, field = "server_stream", "unary_stream"
        else:
            kind, field = "unary", "unary_unary"
        behaviour = getattr(handler, field)
        replaced: dict[str, Any] = {}
        decode = handler.request_deserializer
        if decode is not None and not handler.request_streaming:
            # A request that does not parse (bad UTF-8 in a string, truncated bytes)
            # reaches the handler as _Malformed and is answered INVALID_ARGUMENT once
            # the caller is authenticated; gRPC itself would answer UNKNOWN.
            replaced["request_deserializer"] = _tolerant(decode)

        if handler.response_streaming:

            async def streaming(request: Any, context: Context) -> Any:
                call = _Call(method, kind, needs_auth)
                guard: Guard | None = None
                result: Any = None
                loop = asyncio.get_running_loop()
                released = False

                def end() -> None:
                    # Runs once, from here or when the RPC terminates: a client that
                    # goes while a message is being sent leaves this generator (and the
                    # handler's) suspended at a yield that nothing resumes, so the RPC's
                    # end, not the generator's, releases the stream and its guard.
                    nonlocal released
                    if released:
                        return
                    released = True
                    if guard is not None and self._streams is not None:
                        self._streams.close(guard)
                    self._leave(call)
                    if inspect.isasyncgen(result) and not result.ag_running:
                        task = loop.create_task(_close_quietly(result))
                        _CLOSING.add(task)  # held until done: the loop keeps only weak refs
                        task.add_done_callback(_CLOSING.discard)

                def terminated(ctx: Any) -> None:
                    with contextlib.suppress(RuntimeError):  # the loop is already closed
                        loop.call_soon_threadsafe(end)

                # (The stubs type the callback as a class no function matches.)
                context.add_done_callback(cast(Any, terminated))
                try:
                    await self._enter(call, context)
                    _raise_if_malformed(request)
                    principal = principal_var.get()
                    if principal is not None and self._streams is not None:
                        guard = self._streams.open(principal)
                    result = behaviour(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result
                    else:
                        for item in result:
                            yield item
                except asyncio.CancelledError as exc:
                    # Cancelled by its guard: the token expired or was revoked.
                    ended = guard.ended if guard is not None else None
                    await self._fail(call, context, ended or exc)
                except BaseException as exc:
                    await self._fail(call, context, exc)
                finally:
                    end()

            wrapped: Callable[..., Any] = streaming
        else:

            async def unary(request: Any, context: Context) -> Any:
                call = _Call(method, kind, needs_auth)
                try:
                    await self._enter(call, context)
                    _raise_if_malformed(request)
                    result = behaviour(request, context)
                    if inspect.isawaitable(result):
                        result = await result
                    return result
                except BaseException as exc:
                    await self._fail(call, context, exc)
                finally:
                    self._leave(call)

            wrapped = unary
        # Handlers are namedtuples: swap in the wrapped behaviour (and the tolerant
        # request decoder), keep the rest.
        wrapped_handler: Handler = cast(Any, handler)._replace(**{field: wrapped, **replaced})
        return wrapped_handler

    async def _enter(self, call: _Call, context: Context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get(REQUEST_ID_HEADER, "")
        if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        request_id_var.set(request_id)
        method_var.set(call.full_method)
        organization_var.set(None)
        principal_var.set(None)
        call.metrics = _method_metrics(call.service, call.method, call.kind)
        call.metrics.started.inc()
        call.metrics.in_flight.inc()
        call.counted = True
        # Echoed in the trailers: no extra send, and errors carry it too (see _fail).
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        if not call.needs_auth:
            return
        principal = await self._authenticate(metadata.get("authorization"))
        principal_var.set(principal)
        organization_var.set(principal.organization)
        if self._limiter is not None and principal.organization and not principal.is_platform:
            await self._limiter.check(principal.organization)

    async def _authenticate(self, header: Any) -> Principal:
        if not isinstance(header, str) or not header.strip():
            raise errors.Unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>'",
                reason="TOKEN_MISSING",
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.Unauthenticated(
                "the authorization header must be 'Bearer <token>'", reason="TOKEN_MALFORMED"
            )
        if self._verifier is None:
            raise errors.Unauthenticated(
                "this server has no keys to verify tokens with (set JWT_JWKS_FILE or JWT_JWKS_URL)",
                reason="NO_VERIFICATION_KEYS",
            )
        return await self._verifier.verify(token.strip())

    async def _fail(self, call: _Call, context: Context, exc: BaseException) -> NoReturn:
        """Reports ``exc`` to the client as a status, or re-raises what must pass."""
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            call.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            call.code = grpc.StatusCode.CANCELLED
            raise exc  # CancelledError, KeyboardInterrupt, SystemExit: not ours to map
        if isinstance(exc, errors.AgentReadyError):
            error = exc
        elif is_connection_error(exc):
            # The database is restarting or failing over (or briefly unreachable): the
            # call did not happen or will be recognized by its request_id, so the
            # client may retry it safely.
            log.warning("%s: database unavailable: %s", call.full_method, exc)
            error = errors.Unavailable(
                "the database is briefly unavailable; retry (with the same request_id)",
                reason="DATABASE_UNAVAILABLE",
                retry_after_seconds=0.5,
            )
        elif isinstance(exc, NotImplementedError):
            error = errors.Unimplemented(f"{call.method} is not implemented yet")
        else:
            log.error("unhandled error in %s", call.full_method, exc_info=exc)
            error = errors.Internal(f"internal error (request id {request_id_var.get()})")
        status = rpc_status.to_status(status_from_error(error))
        call.code = status.code
        if status.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.warning("%s failed: %s", call.full_method, error.message)
        else:
            log.info("%s answered %s: %s", call.full_method, status.code.name, error.message)
        trailers = (*status.trailing_metadata, (REQUEST_ID_HEADER, request_id_var.get() or ""))
        await context.abort(status.code, status.details, trailers)
        raise AssertionError("unreachable: abort() raises")  # pragma: no cover

    def _leave(self, call: _Call) -> None:
        if not call.counted:
            return
        metrics = call.metrics
        assert metrics is not None
        metrics.in_flight.dec()
        RPC_HANDLED.labels(call.service, call.method, call.kind, call.code.name).inc()
        metrics.latency.observe(time.perf_counter() - call.started)
