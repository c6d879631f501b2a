"""OpenTelemetry traces across the suite, off unless an OTLP endpoint is configured.

The official gRPC instrumentation does the work: a server interceptor starts a span per
RPC (continuing the caller's trace from the ``traceparent`` metadata) and the client
interceptors on the channels between servers (:mod:`servicekit.channels`) start a child
span and send ``traceparent`` on, so an organization's saga is one trace from
TenantService's ``CreateOrganization`` to the Provisioner's ``ProvisionTenant`` and its
Kubernetes API requests (a client span per request, :func:`http_client_span`). Health
checks are left out: probes would otherwise be most of the spans.

Everything is read from the standard variables, by the SDK itself:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns tracing
on; ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (and
``_ARG``), ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._CERTIFICATE``, ``..._INSECURE``,
``..._TIMEOUT`` and ``..._COMPRESSION`` tune it; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turns it off again. Spans go out over OTLP/gRPC in
batches, off the request path. With no endpoint no interceptor is installed at all, so
nothing changes for a server that does not trace.

While a span is current, the JSON logs carry its ``trace_id`` and ``span_id``
(:mod:`servicekit.logs`), so a log line leads to its trace and back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from servicekit.errors import SettingsError

_provider: TracerProvider | None = None

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


def enabled_by(env: Mapping[str, str]) -> bool:
    """Whether the standard variables in ``env`` ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure(service: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Sets up tracing for the process from the ``OTEL_*`` variables; ``None`` when off.

    Raises:
        SettingsError: a protocol other than OTLP over gRPC is asked for.
    """
    source = os.environ if env is None else env
    if not enabled_by(source):
        install(None)
        return None
    for name in PROTOCOL_VARIABLES:
        protocol = source.get(name, "").strip()
        if protocol and protocol != "grpc":
            raise SettingsError(f"{name}={protocol!r}: only grpc (OTLP over gRPC) is supported")
    # Imported only when tracing is on: the exporter pulls in its own gRPC stubs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    attributes: dict[str, Any] = {}
    if not source.get("OTEL_SERVICE_NAME", "").strip():
        attributes[SERVICE_NAME] = f"agentready-{service}"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # for any other instrumented library too
    install(provider)
    return provider


def install(provider: TracerProvider | None) -> None:
    """Makes ``provider`` the one the servers and channels started from now on trace
    with (``None``: no tracing); tests install one with an in-memory exporter."""
    global _provider  # one provider per process, as OpenTelemetry has
    _provider = provider


def current() -> TracerProvider | None:
    """The installed provider, or ``None`` when tracing is off."""
    return _provider


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The tracing interceptor for a new server (to run first), or none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=filters.negate(filters.health_check())
    )
    return [interceptor]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The tracing interceptors for a new channel to another server, or none when off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_provider
    )
    return interceptors


class HttpSpan:
    """The span of one HTTP request, told how it was answered (none when tracing is
    off: then this does nothing)."""

    def __init__(self, span: trace.Span | None = None) -> None:
        self._span = span

    def answered(self, status: int) -> None:
        """Records the answer's status; 4xx and 5xx mark the span as an error."""
        if self._span is None:
            return
        self._span.set_attribute("http.status_code", status)
        self._span.set_attribute("http.response.status_code", status)
        if status >= 400:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))


@contextlib.contextmanager
def http_client_span(
    method: str, url: str, headers: dict[str, str] | None = None
) -> Iterator[HttpSpan]:
    """A client span around one HTTP request (the Provisioner's Kubernetes API calls),
    a child of the current span, with the ``traceparent`` to send added to
    ``headers``; a no-op when tracing is off."""
    if _provider is None:
        yield HttpSpan()
        return
    from opentelemetry import propagate

    tracer = _provider.get_tracer(__name__)
    attributes = {
        "http.method": method,
        "http.request.method": method,
        "http.url": url,
        "url.full": url,
    }
    with tracer.start_as_current_span(
        method, kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        if headers is not None:
            propagate.inject(headers)
        yield HttpSpan(span)


def shutdown() -> None:
    """Exports the spans still buffered; called once the server has stopped."""
    if _provider is not None:
        _provider.shutdown()
