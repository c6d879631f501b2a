"""Prometheus metrics every server exports on its ``/metrics`` endpoint."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end (whole stream for streaming RPCs).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ),
)
RPC_IN_FLIGHT = Gauge(
    "grpc_server_in_flight",
    "RPCs being served right now (open streams included).",
    ["grpc_service", "grpc_method"],
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Starts the ``/metrics`` HTTP endpoint in a daemon thread.

    Returns:
        The HTTP server: ``server_port`` is the bound port (``port`` 0 picks one) and
        ``shutdown()`` stops it.
    """
    server, _thread = start_http_server(port, addr=host)
    return server
