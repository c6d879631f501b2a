"""Row-level security, as the README claims it: every table of the `config` and
`provisioner` schemas is filtered by organization for the role each service runs its
organization-scoped work as (TenantService's tables: test_tenant_isolation.py)."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.provisioner.v1 import provisioner_pb2 as pb

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.provisioner_support import Caller
from tests.e2e.tenant_support import bearer, new_slug


async def filtered_counts(
    database_url: str, schema: str, role: str, organization: str
) -> dict[str, tuple[int, int]]:
    """For every table of ``schema``: (rows seen as ``organization``, rows seen as
    another organization), read as ``role`` with no WHERE clause."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT c.relname, c.relrowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname <> 'schema_migrations'",
            schema,
        )
        assert all(t["relrowsecurity"] for t in tables), tables
        assert not await conn.fetchval(
            "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = $1", role
        )
        counts: dict[str, tuple[int, int]] = {}
        for table in sorted(t["relname"] for t in tables):
            seen = []
            for seen_as in (organization, "someone-else"):
                async with conn.transaction():
                    await conn.execute(
                        "SELECT set_config('role', $1, true), set_config('app.org_id', $2, true)",
                        role,
                        seen_as,
                    )
                    # No WHERE on purpose: the policy alone must filter.
                    seen.append(await conn.fetchval(f"SELECT count(*) FROM {schema}.{table}"))
            counts[table] = (seen[0], seen[1])
        return counts
    finally:
        await conn.close()


async def test_every_config_table_is_filtered_by_organization(
    servers: dict[str, RunningServer], keys: Keys, database_url: str
) -> None:
    org = new_slug("rls")
    md = bearer(keys.token(org))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as channel:
        stub = config_service_pb2_grpc.ConfigServiceStub(channel)
        await stub.SetConfigSchema(
            config_pb2.SetConfigSchemaRequest(
                schema=config_pb2.ConfigSchema(
                    organization=org,
                    service="app",
                    keys=[config_pb2.ConfigKeySchema(key="k", type=config_pb2.VALUE_TYPE_INT)],
                )
            ),
            metadata=md,
        )
        await stub.SetConfig(
            config_pb2.SetConfigRequest(
                organization=org,
                service="app",
                key="k",
                value=config_pb2.Value(int_value=1),
                request_id=str(uuid.uuid4()),
            ),
            metadata=md,
        )
        await stub.ReportConfigStatus(
            config_pb2.ReportConfigStatusRequest(
                organization=org, client_id="pod/a", applied_revision=1
            ),
            metadata=md,
        )
    counts = await filtered_counts(database_url, "config", "agentready_config", org)
    assert set(counts) == {
        "clients",
        "entries",
        "history",
        "organizations",
        "requests",
        "schemas",
    }
    for table, (own, other) in counts.items():
        assert own >= 1, table
        assert other == 0, table


async def test_every_provisioner_table_is_filtered_by_organization(
    servers: dict[str, RunningServer], keys: Keys, database_url: str
) -> None:
    org = new_slug("rls")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['provisioner'].port}") as channel:
        api = Caller.of(channel, keys, org)
        await api.provision(request_id=str(uuid.uuid4()))
        await api.update_quota(quota=pb.Quota(cpu="4"), reason="rls test")
    counts = await filtered_counts(database_url, "provisioner", "agentready_provisioner", org)
    assert set(counts) == {"environments", "quota_history", "requests"}
    for table, (own, other) in counts.items():
        assert own >= 1, table
        assert other == 0, table
