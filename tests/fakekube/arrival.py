"""When a request reached the fake's socket, as the kernel saw it.

A request's latency runs from its arrival. A handler thread that takes the time itself
takes it late whenever it waits for the GIL first (while other handler threads parse
and validate their own requests), and concurrent requests then seem to arrive one
after another, each later than it did: the fake's own queueing, which a real API
server does not have, would be charged to the client. On Linux the kernel stamps each
received segment (``SO_TIMESTAMPNS``); elsewhere the time of the read stands in.
"""

from __future__ import annotations

import io
import socket
import struct
import sys
import time

# SO_TIMESTAMPNS (and SCM_TIMESTAMPNS, the same number): a struct timespec of
# CLOCK_REALTIME with each read. Python's socket module does not name it.
_SO_TIMESTAMPNS: int | None = (
    getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform.startswith("linux") else None
)
_TIMESPEC = struct.Struct("@ll")


class ArrivalReader(io.RawIOBase):
    """A socket's bytes, noting when the data of the latest read arrived
    (:attr:`arrived`, on the monotonic clock)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.arrived = time.monotonic()
        self._stamped = False
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._stamped = True
            except OSError:
                pass
        self._ancillary = socket.CMSG_SPACE(_TIMESPEC.size) if self._stamped else 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._stamped:
            read = self._sock.recv_into(buffer)
            self.arrived = time.monotonic()
            return read
        read, ancillary, _flags, _address = self._sock.recvmsg_into([buffer], self._ancillary)
        now_real, now = time.time(), time.monotonic()
        self.arrived = now
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack_from(data)
                # The stamp is wall-clock time: carried over to the monotonic clock by
                # how long ago it was (never in the future, whatever the clocks do).
                self.arrived = now - max(0.0, now_real - (seconds + nanoseconds / 1e9))
        return read
