"""Plumbing shared by the agent-ready servers.

Settings, logging, the PostgreSQL pool and migrations, the Redis connection, JWT
verification, error mapping to ``google.rpc.Status``, metrics and the ``grpc.aio``
server start-up live here once; the three services import them and copy nothing.
"""
