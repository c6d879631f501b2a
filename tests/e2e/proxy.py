"""TCP proxies that fail on purpose: one in front of a gRPC server that, once armed,
cuts the connection when the server's first response HEADERS frame comes back (the
call has run on the server and its answer never reaches the client); one that cuts
every connection to its server, and turns new ones away, until it is restored."""

from __future__ import annotations

import asyncio
import contextlib

_FRAME_HEADER = 9
_HEADERS = 0x1


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies ``reader`` to ``writer`` until either side ends."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class AnswerCuttingProxy:
    """Forwards 127.0.0.1:<port> to ``upstream_port``; see the module doc."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._armed = False
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AnswerCuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def arm(self) -> None:
        """Cut the next connection that carries an answer back, once."""
        self._armed = True

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        upstream = asyncio.create_task(pipe(client_r, server_w))
        try:
            await self._answers(server_r, client_w)
        finally:
            upstream.cancel()
            for writer in (client_w, server_w):
                writer.close()
            self._handlers.discard(task)

    async def _answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client, frame by frame (the server side sends no preface magic)."""
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                header = await reader.readexactly(_FRAME_HEADER)
                length = int.from_bytes(header[:3], "big")
                kind = header[3]
                stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                payload = await reader.readexactly(length)
                if self._armed and kind == _HEADERS and stream != 0:
                    self._armed = False
                    self.cuts += 1
                    return  # the answer is dropped with the connection
                writer.write(header + payload)
                await writer.drain()


class CuttableProxy:
    """A TCP proxy to ``upstream_port``. :meth:`cut` drops every connection through it
    and turns new ones away (accepted, then closed at once) until :meth:`restore`:
    to its clients the server is gone, though it never stopped."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_off = False
        self.turned_away = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._drop_all()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        self._drop_all()

    def restore(self) -> None:
        self.cut_off = False

    def _drop_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.cut_off:
            self.turned_away += 1
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        self._open |= {client_w, server_w}
        pipes = [
            asyncio.create_task(pipe(client_r, server_w)),
            asyncio.create_task(pipe(server_r, client_w)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_w, server_w):
                self._open.discard(writer)
                writer.transport.abort()
