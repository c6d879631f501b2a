"""Which database errors answer UNAVAILABLE (retry) rather than INTERNAL (a bug)."""

from __future__ import annotations

import asyncpg

from servicekit.rpc import is_connection_error


def test_a_connection_dropped_mid_operation_is_a_connection_error() -> None:
    # What asyncpg raises on the COMMIT of a connection the server dropped during a
    # restart (seen in tests/e2e/test_db_failover.py under load).
    dropped = asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )
    assert is_connection_error(dropped)
    assert not is_connection_error(asyncpg.InternalClientError("unexpected message"))
    assert is_connection_error(asyncpg.InterfaceError("connection is closed"))
    assert not is_connection_error(ValueError("a bug"))
