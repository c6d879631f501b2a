"""Row-level security of the ``tenant`` schema: a query that forgets its WHERE, run as
the service's role with another organization set, sees nothing of this one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from agentready.tenant.v1 import tenant_pb2 as pb

from servicekit.server import RunningServer
from tests.e2e.tenant_support import TenantApi

TENANT_TABLES = {
    "organizations",
    "members",
    "projects",
    "notes",
    "service_account_keys",
    "requests",
}


@pytest.fixture(scope="module")
async def api(servers: dict[str, RunningServer]) -> AsyncIterator[TenantApi]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['tenant'].port}") as channel:
        yield TenantApi(channel)


async def test_every_tenant_table_is_filtered_by_organization(
    api: TenantApi, database_url: str
) -> None:
    owner, org = await api.owner_of_new_org()
    await api.stub.CreateProject(
        pb.CreateProjectRequest(
            organization=org, project=pb.Project(id="p"), request_id=str(uuid.uuid4())
        ),
        metadata=owner.auth,
        timeout=10,
    )
    await api.stub.CreateNote(
        pb.CreateNoteRequest(organization=org, project="p", note=pb.Note(title="secret")),
        metadata=owner.auth,
        timeout=10,
    )
    await api.stub.CreateServiceAccountKey(
        pb.CreateServiceAccountKeyRequest(
            organization=org, service_account_key=pb.ServiceAccountKey(scopes=["org:read"])
        ),
        metadata=owner.auth,
        timeout=10,
    )
    conn = await asyncpg.connect(database_url)
    try:
        protected = {
            row["relname"]
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'tenant' AND c.relkind = 'r' AND c.relrowsecurity"
            )
        }
        assert protected == TENANT_TABLES
        role_can_bypass = await conn.fetchval(
            "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = 'agentready_tenant'"
        )
        assert role_can_bypass is False
        for table in sorted(protected):
            counts = {}
            for seen_as in (org, "someone-else"):
                async with conn.transaction():
                    await conn.execute(
                        "SELECT set_config('role', 'agentready_tenant', true), "
                        "set_config('app.org_id', $1, true)",
                        seen_as,
                    )
                    # No WHERE on purpose: the policy alone must filter.
                    counts[seen_as] = await conn.fetchval(f"SELECT count(*) FROM tenant.{table}")
            assert counts[org] >= 1, table
            assert counts["someone-else"] == 0, table
    finally:
        await conn.close()
