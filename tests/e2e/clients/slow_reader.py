"""A client process with two WatchConfig streams on one channel (one HTTP/2
connection): it stops reading the first after its snapshot and keeps reading the
second, printing each revision the second delivers. Used by test_config_limits.py.

    python slow_reader.py <port> <stalled org> <live org> <last revision>

Reads the bearer tokens of the two organizations from AGENTREADY_TOKEN_STALLED and
AGENTREADY_TOKEN_LIVE.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc

Response = config_pb2.WatchConfigResponse


async def main(port: int, stalled: str, live: str, last: int) -> None:
    def bearer(name: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {os.environ[name]}"),)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = config_service_pb2_grpc.ConfigServiceStub(channel)
        slow = stub.WatchConfig(
            config_pb2.WatchConfigRequest(organization=stalled),
            metadata=bearer("AGENTREADY_TOKEN_STALLED"),
        )
        await slow.read()  # its snapshot; then never read again
        fast = stub.WatchConfig(
            config_pb2.WatchConfigRequest(organization=live),
            metadata=bearer("AGENTREADY_TOKEN_LIVE"),
        )
        print("ready", (await fast.read()).revision, flush=True)
        while True:
            message = await fast.read()
            if message.type == Response.EVENT_TYPE_CHANGE:
                print("change", message.revision, flush=True)
                if message.revision >= last:
                    break
        slow.cancel()
        fast.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
