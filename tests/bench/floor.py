"""The raw floor: a bare ``grpc.aio`` server on uvloop that only answers health checks.

``python -m tests.bench.floor`` serves on a free loopback port, prints the port on its
first line and runs until its standard input closes (so it never outlives the bench).
Whatever a health check to ConfigService costs above this server's is the cost of our
own server set-up (interceptors, options); what this server costs is the client, the
loopback and the gRPC runtime, which no server written with grpcio can go below.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2_grpc


async def serve() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(0)


if __name__ == "__main__":
    uvloop.run(serve())
