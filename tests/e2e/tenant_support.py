"""Shared helpers of TenantService's end-to-end tests: a typed caller that signs people
up, logs them in and acts with their tokens."""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.tenant.v1 import tenant_pb2 as pb
from agentready.tenant.v1 import tenant_service_pb2_grpc

from tests.e2e.provisioner_support import eventually, rpc_error

__all__ = ["eventually", "rpc_error"]

if TYPE_CHECKING:
    from agentready.config.v1.config_service_pb2_grpc import ConfigServiceAsyncStub
    from agentready.tenant.v1.tenant_service_pb2_grpc import TenantServiceAsyncStub

T = TypeVar("T")
Code = grpc.StatusCode
PASSWORD = "correct horse battery staple"
TIMEOUT = 10.0


def new_slug(prefix: str = "o") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def new_email() -> str:
    return f"u{uuid.uuid4().hex[:12]}@example.com"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclasses.dataclass
class Person:
    """A signed-up user and the tokens it holds."""

    user: pb.User
    email: str
    access: str = ""
    refresh: str = ""

    @property
    def id(self) -> str:
        return self.user.id

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.access)


class TenantApi:
    """TenantService (and ConfigService, to see tokens work elsewhere) from outside."""

    def __init__(self, tenant: grpc.aio.Channel, config: grpc.aio.Channel | None = None) -> None:
        self.stub: TenantServiceAsyncStub = tenant_service_pb2_grpc.TenantServiceStub(tenant)
        self.config: ConfigServiceAsyncStub | None = (
            config_service_pb2_grpc.ConfigServiceStub(config) if config else None
        )

    async def signup(self, email: str | None = None, *, display_name: str = "") -> Person:
        email = email or new_email()
        user = await self.stub.CreateUser(
            pb.CreateUserRequest(
                user=pb.User(email=email, display_name=display_name), password=PASSWORD
            ),
            timeout=TIMEOUT,
        )
        return Person(user, email)

    async def login(self, person: Person, organization: str = "") -> Person:
        reply = await self.stub.Login(
            pb.LoginRequest(email=person.email, password=PASSWORD, organization=organization),
            timeout=TIMEOUT,
        )
        person.access, person.refresh = reply.tokens.access_token, reply.tokens.refresh_token
        return person

    async def refresh(self, person: Person, organization: str = "") -> Person:
        reply = await self.stub.RefreshToken(
            pb.RefreshTokenRequest(refresh_token=person.refresh, organization=organization),
            timeout=TIMEOUT,
        )
        person.access, person.refresh = reply.tokens.access_token, reply.tokens.refresh_token
        return person

    async def create_org(
        self, person: Person, slug: str | None = None, **fields: Any
    ) -> pb.Organization:
        slug = new_slug() if slug is None else slug
        return await self.stub.CreateOrganization(
            pb.CreateOrganizationRequest(organization=pb.Organization(slug=slug, **fields)),
            metadata=person.auth,
            timeout=TIMEOUT,
        )

    async def owner_of_new_org(self, **fields: Any) -> tuple[Person, str]:
        """A fresh user owning a fresh ACTIVE organization, logged into it."""
        person = await self.login(await self.signup())
        org = await self.create_org(person, **fields)
        await self.login(person, org.slug)
        return person, org.slug

    async def join(self, admin: Person, organization: str, role: pb.Role.ValueType) -> Person:
        """A fresh user added to ``organization`` with ``role``, logged into it."""
        person = await self.signup()
        await self.stub.CreateMember(
            pb.CreateMemberRequest(
                organization=organization, member=pb.Member(user_id=person.id, role=role)
            ),
            metadata=admin.auth,
            timeout=TIMEOUT,
        )
        return await self.login(person, organization)

    async def config_works(self, token: str, organization: str) -> bool:
        """Whether ConfigService accepts ``token`` for a read in ``organization``."""
        assert self.config is not None
        try:
            await self.config.ListConfigs(
                config_pb2.ListConfigsRequest(organization=organization),
                metadata=bearer(token),
                timeout=TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == Code.UNAUTHENTICATED:
                return False
            raise
        return True
