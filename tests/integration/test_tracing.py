"""OpenTelemetry: an organization's saga is one trace across TenantService, the
Provisioner and its Kubernetes API requests (the official gRPC instrumentation and the
Provisioner's own client spans); JSON logs carry its ids; and without an OTLP endpoint
nothing is instrumented."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config_service.app import SPEC as CONFIG
from provisioner.app import SPEC as PROVISIONER
from servicekit import tracing
from servicekit.devstack import scratch_database
from servicekit.errors import SettingsError
from servicekit.logs import JsonFormatter
from servicekit.server import RunningServer, start
from servicekit.settings import load_settings
from tenant_service.app import SPEC as TENANT
from tests.e2e.tenant_support import TenantApi, eventually
from tests.fakekube import FakeKubeServer

CREATE = "/agentready.tenant.v1.TenantService/CreateOrganization"
PROVISION = "/agentready.provisioner.v1.ProvisionerService/ProvisionTenant"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the servers and channels made during the test, into memory."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    try:
        yield spans
    finally:
        tracing.install(None)
        provider.shutdown()


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        yield server


@pytest.fixture
def database_of_our_own(postgres_server_url: str) -> Iterator[str]:
    """The session's servers reconcile the shared database; these use one of their own."""
    with scratch_database(postgres_server_url, "agentready_trace") as url:
        yield url


@pytest.fixture
async def traced_servers(
    exporter: InMemorySpanExporter,
    server_env: dict[str, str],
    database_of_our_own: str,
    kube: FakeKubeServer,
    tmp_path: Path,
) -> AsyncIterator[dict[str, RunningServer]]:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    running: dict[str, RunningServer] = {}
    try:
        for spec in (CONFIG, PROVISIONER, TENANT):
            env = dict(server_env, DATABASE_URL=database_of_our_own, METRICS_PORT="off")
            if "config" in running:
                env["CONFIG_ADDRESS"] = f"127.0.0.1:{running['config'].port}"
            if spec.name == "tenant":
                env["TENANT_PROVISIONER_ADDRESS"] = f"127.0.0.1:{running['provisioner'].port}"
            if spec.name == "provisioner":
                env.update(PROVISIONER_BACKEND="kubernetes", KUBECONFIG=str(kubeconfig))
            settings = load_settings(spec.name, env, extra=spec.extra_settings)
            running[spec.name] = await start(spec, settings)
        yield running
    finally:
        for server in running.values():
            await server.stop()


async def test_an_organization_saga_is_one_trace_across_two_services(
    traced_servers: dict[str, RunningServer], exporter: InMemorySpanExporter
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{traced_servers['tenant'].port}") as channel:
        api = TenantApi(channel)
        person = await api.login(await api.signup())
        org = await api.create_org(person)
        # A probe's health check, on the same traced server.
        health: Any = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def spans_named(name: str) -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.name == name]

    async def saga_spans() -> list[ReadableSpan]:
        return spans_named(PROVISION)

    (created,) = [
        s
        for s in spans_named(CREATE)
        if s.kind == trace.SpanKind.SERVER and s.parent is None  # our client is not traced
    ]
    assert created.context is not None
    trace_id = created.context.trace_id
    await eventually(
        saga_spans,
        lambda spans: any(
            s.kind == trace.SpanKind.SERVER and s.context and s.context.trace_id == trace_id
            for s in spans
        ),
    )
    in_trace = [s for s in spans_named(PROVISION) if s.context and s.context.trace_id == trace_id]
    (client,) = [s for s in in_trace if s.kind == trace.SpanKind.CLIENT]
    (server,) = [s for s in in_trace if s.kind == trace.SpanKind.SERVER]
    # TenantService's call is a child of CreateOrganization; the Provisioner's span
    # continues it from the traceparent the call carried, in the other server.
    assert client.parent is not None
    assert server.parent is not None
    assert client.context is not None
    assert client.parent.span_id == created.context.span_id
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    # The Provisioner's Kubernetes API requests are children of its ProvisionTenant
    # span: the namespace created by server-side apply among them.
    api_calls = [
        s
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.CLIENT
        and s.context is not None
        and s.context.trace_id == trace_id
        and "/api/v1/namespaces/org-" in str((s.attributes or {}).get("http.url", ""))
    ]
    assert api_calls, [s.name for s in exporter.get_finished_spans()]
    by_id = {s.context.span_id: s for s in exporter.get_finished_spans() if s.context}
    for call in api_calls:
        ancestor = call
        while ancestor.parent is not None and ancestor.parent.span_id in by_id:
            ancestor = by_id[ancestor.parent.span_id]
            if ancestor is server:
                break
        assert ancestor is server, f"{call.name} is not under ProvisionTenant"
    assert org.slug
    # Health checks (probes every few seconds) are not traced: the one above left none.
    assert not [s for s in exporter.get_finished_spans() if "grpc.health" in s.name]


def test_json_logs_carry_the_current_trace_and_span_ids() -> None:
    provider = TracerProvider()
    formatter = JsonFormatter("config")
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "t"})
    assert "trace_id" not in json.loads(formatter.format(record))
    with provider.get_tracer("test").start_as_current_span("work") as span:
        entry = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    provider.shutdown()


def test_tracing_is_off_without_an_otlp_endpoint() -> None:
    for env in (
        {},
        {"OTEL_SERVICE_NAME": "x"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"},
    ):
        assert tracing.configure("config", env) is None, env
        assert tracing.server_interceptors() == []
        assert tracing.client_interceptors() == []
    assert tracing.enabled_by({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"})


def test_an_unsupported_otlp_protocol_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.configure(
            "config",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
        )
    assert tracing.current() is None
