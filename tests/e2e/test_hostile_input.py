"""Hostile input against every RPC of the three services, as a hostile client sends it.

Every method of TenantService, ConfigService and ProvisionerService is taken from the
service descriptors (a new RPC is covered without touching this file) and called by an
authorized caller (the owner of a real organization, or an operator where the RPC needs
one), so the requests get past authentication and reach validation and the database.
Each call starts from a valid request and changes one field to a hostile value: NUL and
other control characters, 1 MiB strings, non-ASCII text, surrounding whitespace, empty
strings, integer extremes, NaN and infinities, unknown enum numbers, huge or deeply
nested maps, lists and JSON values, garbage, foreign and tampered page tokens, update
masks with unknown or nested paths, garbage etags. A few raw bodies that are not valid
protobuf (or carry invalid UTF-8 in a string field) go through a channel with identity
serializers, as a client in another language could send them. The values come from a
fixed seed and their number is bounded.

For every call: the answer is never INTERNAL, UNKNOWN or DEADLINE_EXCEEDED; an
INVALID_ARGUMENT for a field problem carries a BadRequest naming a field of the request
(a body that does not parse is MALFORMED_REQUEST instead); a huge input is never
accepted and echoed back. Afterwards the servers still answer, and a few hostile writes
are shown to have written nothing. Bad answers whose fix belongs elsewhere are listed in
KNOWN, each with where it must be fixed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from agentready.config.v1 import config_pb2, config_service_pb2, config_service_pb2_grpc
from agentready.provisioner.v1 import (
    provisioner_pb2,
    provisioner_service_pb2,
    provisioner_service_pb2_grpc,
)
from agentready.tenant.v1 import tenant_pb2, tenant_service_pb2
from google.protobuf import (
    descriptor,
    duration_pb2,
    field_mask_pb2,
    message,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import PASSWORD, Person, TenantApi, new_slug

Code = grpc.StatusCode
FieldDescriptor = descriptor.FieldDescriptor
Metadata = tuple[tuple[str, str], ...]
Mutate = Callable[[message.Message], None]

SEED = 20250101
TIMEOUT = 15.0
MIB = 1024 * 1024
# Variants per RPC, at most: a deterministic sample when the walk finds more.
MAX_VARIANTS = 200
# How far the walk descends into nested messages.
MAX_DEPTH = 5
FORBIDDEN = frozenset({Code.INTERNAL, Code.UNKNOWN, Code.DEADLINE_EXCEEDED})
STALE = '"999999"'  # a well-formed etag of a version no resource has
STALE_ENV = 'W/"999999"'

SERVICES: dict[str, descriptor.ServiceDescriptor] = {
    "tenant": tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"],
    "config": config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"],
    "provisioner": provisioner_service_pb2.DESCRIPTOR.services_by_name["ProvisionerService"],
}
METHODS = [(name, method) for name, service in SERVICES.items() for method in service.methods]
# List RPCs whose base request has more than one page of data (seeded below), so a real
# next_page_token is there to tamper with.
PAGINATED = frozenset(
    {
        "ListOrganizations",
        "ListMembers",
        "ListProjects",
        "ListNotes",
        "ListServiceAccountKeys",
        "ListConfigs",
        "ListConfigHistory",
        "ListConfigSchemas",
        "ListConfigClients",
        "ListTenantEnvironments",
        "ListQuotaHistory",
    }
)


# Bad answers found here whose fix belongs in code that is being changed elsewhere:
# (RPC, variant) → where and why. An entry whose call answers well again is reported
# too, so the list never outlives the bug.
KNOWN: dict[tuple[str, str], str] = {}


# --- the world the requests act in ----------------------------------------------------


@dataclasses.dataclass
class World:
    """An organization with something of everything in it, and who may act there."""

    api: TenantApi
    org: str
    owner: Person
    viewer: Person
    newcomer: Person  # signed up, not a member: CreateMember's base adds them
    signin: Person  # Login's base signs them in
    leaver: Person  # signs in afresh for each Logout and RefreshToken call
    project: str
    note: str
    key: str
    revision: int
    operator: Metadata
    purger: Metadata
    # Real next_page_tokens of a few list RPCs (page_size 1), to send to the others.
    tokens: dict[str, str]
    suffix: str

    @property
    def auth(self) -> Metadata:
        return self.owner.auth


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def channels(servers: dict[str, RunningServer]) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    opened = {
        name: grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        for name, server in servers.items()
    }
    try:
        yield opened
    finally:
        for channel in opened.values():
            await channel.close()


@pytest.fixture(scope="module")
async def world(channels: dict[str, grpc.aio.Channel], keys: Keys) -> World:
    api = TenantApi(channels["tenant"], channels["config"])
    t = api.stub
    owner, org = await api.owner_of_new_org()
    await api.create_org(owner)  # a second one: ListOrganizations has two pages
    viewer = await api.join(owner, org, tenant_pb2.ROLE_VIEWER)
    newcomer, signin, leaver = await api.signup(), await api.signup(), await api.signup()
    md = owner.auth
    for project in ("alpha", "beta"):
        await t.CreateProject(
            tenant_pb2.CreateProjectRequest(
                organization=org, project=tenant_pb2.Project(id=project, description="seed")
            ),
            metadata=md,
            timeout=TIMEOUT,
        )
    notes = [
        await t.CreateNote(
            tenant_pb2.CreateNoteRequest(
                organization=org, project="alpha", note=tenant_pb2.Note(title=f"n{i}", body="b")
            ),
            metadata=md,
            timeout=TIMEOUT,
        )
        for i in range(2)
    ]
    sa_keys = [
        await t.CreateServiceAccountKey(
            tenant_pb2.CreateServiceAccountKeyRequest(
                organization=org,
                service_account_key=tenant_pb2.ServiceAccountKey(scopes=["config:read"]),
            ),
            metadata=md,
            timeout=TIMEOUT,
        )
        for _ in range(2)
    ]
    c = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    for key in ("k1", "k2"):
        entry = await c.SetConfig(
            config_pb2.SetConfigRequest(
                organization=org,
                service="svc-a",
                key=key,
                value=config_pb2.Value(string_value="seed"),
            ),
            metadata=md,
            timeout=TIMEOUT,
        )
    for service in ("svc-b", "svc-c"):
        await c.SetConfigSchema(
            config_pb2.SetConfigSchemaRequest(schema=schema_of(org, service)),
            metadata=md,
            timeout=TIMEOUT,
        )
    p = provisioner_service_pb2_grpc.ProvisionerServiceStub(channels["provisioner"])
    await p.UpdateTenantQuota(  # a second entry in the quota history
        provisioner_pb2.UpdateTenantQuotaRequest(
            organization=org, quota=provisioner_pb2.Quota(cpu="2")
        ),
        metadata=md,
        timeout=TIMEOUT,
    )
    tokens = {
        "ListProjects": (
            await t.ListProjects(
                tenant_pb2.ListProjectsRequest(organization=org, page_size=1),
                metadata=md,
                timeout=TIMEOUT,
            )
        ).next_page_token,
        "ListNotes": (
            await t.ListNotes(
                tenant_pb2.ListNotesRequest(organization=org, page_size=1),
                metadata=md,
                timeout=TIMEOUT,
            )
        ).next_page_token,
        "ListConfigs": (
            await c.ListConfigs(
                config_pb2.ListConfigsRequest(organization=org, page_size=1),
                metadata=md,
                timeout=TIMEOUT,
            )
        ).next_page_token,
        "ListConfigHistory": (
            await c.ListConfigHistory(
                config_pb2.ListConfigHistoryRequest(organization=org, page_size=1),
                metadata=md,
                timeout=TIMEOUT,
            )
        ).next_page_token,
        "ListQuotaHistory": (
            await p.ListQuotaHistory(
                provisioner_pb2.ListQuotaHistoryRequest(organization=org, page_size=1),
                metadata=md,
                timeout=TIMEOUT,
            )
        ).next_page_token,
    }
    assert all(tokens.values()), tokens
    return World(
        api=api,
        org=org,
        owner=owner,
        viewer=viewer,
        newcomer=newcomer,
        signin=signin,
        leaver=leaver,
        project="alpha",
        note=notes[0].id,
        key=sa_keys[0].service_account_key.id,
        revision=entry.revision,
        operator=bearer(keys.token(None, "operator", subject="service:hostile")),
        purger=bearer(
            keys.token(
                None, "operator", scopes=frozenset({"config:purge"}), subject="service:hostile"
            )
        ),
        tokens=tokens,
        suffix=new_slug("h"),
    )


def schema_of(org: str, service: str) -> config_pb2.ConfigSchema:
    return config_pb2.ConfigSchema(
        organization=org,
        service=service,
        keys=[
            config_pb2.ConfigKeySchema(
                key="limit",
                type=config_pb2.VALUE_TYPE_STRING,
                default_value=config_pb2.Value(string_value="x"),
                minimum=0,
                maximum=10,
                allowed_values=["x", "y"],
                pattern="[a-z]+",
                description="seed",
            )
        ],
    )


# --- valid requests the variants start from --------------------------------------------

T, C, P = tenant_pb2, config_pb2, provisioner_pb2
BASES: dict[str, Callable[[World], message.Message]] = {
    "CreateUser": lambda w: T.CreateUserRequest(
        user=T.User(email=f"{w.suffix}@example.com", display_name="Hostile"), password=PASSWORD
    ),
    "GetUser": lambda w: T.GetUserRequest(id=w.viewer.id),
    "Login": lambda w: T.LoginRequest(email=w.signin.email, password=PASSWORD),
    "GetJwks": lambda w: T.GetJwksRequest(),
    "CreateOrganization": lambda w: T.CreateOrganizationRequest(
        organization=T.Organization(slug=w.suffix, display_name="New", labels={"team": "a"})
    ),
    "GetOrganization": lambda w: T.GetOrganizationRequest(organization=w.org),
    "ListOrganizations": lambda w: T.ListOrganizationsRequest(page_size=1),
    "UpdateOrganization": lambda w: T.UpdateOrganizationRequest(
        organization=T.Organization(slug=w.org, display_name="Hostile Org")
    ),
    "DeleteOrganization": lambda w: T.DeleteOrganizationRequest(organization=w.org, etag=STALE),
    "CreateMember": lambda w: T.CreateMemberRequest(
        organization=w.org, member=T.Member(email=w.newcomer.email, role=T.ROLE_VIEWER)
    ),
    "GetMember": lambda w: T.GetMemberRequest(organization=w.org, user_id=w.viewer.id),
    "ListMembers": lambda w: T.ListMembersRequest(organization=w.org, page_size=1),
    "UpdateMember": lambda w: T.UpdateMemberRequest(
        member=T.Member(organization=w.org, user_id=w.viewer.id, role=T.ROLE_VIEWER)
    ),
    "DeleteMember": lambda w: T.DeleteMemberRequest(
        organization=w.org, user_id=w.viewer.id, etag=STALE
    ),
    "CreateProject": lambda w: T.CreateProjectRequest(
        organization=w.org, project=T.Project(id="gamma", display_name="G", description="d")
    ),
    "GetProject": lambda w: T.GetProjectRequest(organization=w.org, id=w.project),
    "ListProjects": lambda w: T.ListProjectsRequest(organization=w.org, page_size=1),
    "UpdateProject": lambda w: T.UpdateProjectRequest(
        project=T.Project(organization=w.org, id=w.project, display_name="A", description="d")
    ),
    "DeleteProject": lambda w: T.DeleteProjectRequest(organization=w.org, id=w.project, etag=STALE),
    "CreateNote": lambda w: T.CreateNoteRequest(
        organization=w.org, project=w.project, note=T.Note(title="t", body="b")
    ),
    "GetNote": lambda w: T.GetNoteRequest(organization=w.org, project=w.project, id=w.note),
    "ListNotes": lambda w: T.ListNotesRequest(organization=w.org, project=w.project, page_size=1),
    "UpdateNote": lambda w: T.UpdateNoteRequest(
        note=T.Note(organization=w.org, project=w.project, id=w.note, title="T", body="B")
    ),
    "DeleteNote": lambda w: T.DeleteNoteRequest(
        organization=w.org, project=w.project, id=w.note, etag=STALE
    ),
    "CreateServiceAccountKey": lambda w: T.CreateServiceAccountKeyRequest(
        organization=w.org,
        service_account_key=T.ServiceAccountKey(display_name="k", scopes=["config:read"]),
    ),
    "ListServiceAccountKeys": lambda w: T.ListServiceAccountKeysRequest(
        organization=w.org, page_size=1
    ),
    "DeleteServiceAccountKey": lambda w: T.DeleteServiceAccountKeyRequest(
        organization=w.org, id=w.key, etag=STALE
    ),
    "SetConfig": lambda w: C.SetConfigRequest(
        organization=w.org,
        service="svc-a",
        key="k1",
        value=C.Value(string_value="v"),
        reason="r",
    ),
    "BatchSetConfig": lambda w: C.BatchSetConfigRequest(
        organization=w.org,
        mutations=[C.ConfigMutation(service="svc-a", key="k2", set_value=C.Value(int_value=2))],
    ),
    "GetConfig": lambda w: C.GetConfigRequest(organization=w.org, service="svc-a", key="k1"),
    "ListConfigs": lambda w: C.ListConfigsRequest(organization=w.org, page_size=1),
    "DeleteConfig": lambda w: C.DeleteConfigRequest(
        organization=w.org, service="svc-a", key="k1", etag=STALE
    ),
    "ListConfigHistory": lambda w: C.ListConfigHistoryRequest(organization=w.org, page_size=1),
    "RollbackConfig": lambda w: C.RollbackConfigRequest(organization=w.org, revision=w.revision),
    "SetConfigSchema": lambda w: C.SetConfigSchemaRequest(schema=schema_of(w.org, "svc-b")),
    "GetConfigSchema": lambda w: C.GetConfigSchemaRequest(organization=w.org, service="svc-b"),
    "ListConfigSchemas": lambda w: C.ListConfigSchemasRequest(organization=w.org, page_size=1),
    "DeleteConfigSchema": lambda w: C.DeleteConfigSchemaRequest(
        organization=w.org, service="svc-c", etag=STALE
    ),
    "GetConfigUsage": lambda w: C.GetConfigUsageRequest(organization=w.org),
    "WatchConfig": lambda w: C.WatchConfigRequest(organization=w.org, services=["svc-a"]),
    "ReportConfigStatus": lambda w: C.ReportConfigStatusRequest(
        organization=w.org, client_id="pod/a", labels={"app": "x"}, applied_revision=1
    ),
    "ListConfigClients": lambda w: C.ListConfigClientsRequest(
        organization=w.org, label_selector="app=x", page_size=1
    ),
    # Never the world's organization: purging it would empty every later base.
    "PurgeConfig": lambda w: C.PurgeConfigRequest(organization=f"{w.suffix}-gone"),
    "ProvisionTenant": lambda w: P.ProvisionTenantRequest(
        organization=w.org,
        owners=[w.owner.id],
        quota=P.Quota(cpu="2", memory="20Gi", storage="10Gi"),
        labels={"team": "a"},
    ),
    "GetTenantEnvironment": lambda w: P.GetTenantEnvironmentRequest(organization=w.org),
    "ListTenantEnvironments": lambda w: P.ListTenantEnvironmentsRequest(page_size=1),
    "UpdateTenantQuota": lambda w: P.UpdateTenantQuotaRequest(
        organization=w.org, quota=P.Quota(cpu="2"), reason="r"
    ),
    "ListQuotaHistory": lambda w: P.ListQuotaHistoryRequest(organization=w.org, page_size=1),
    "DeprovisionTenant": lambda w: P.DeprovisionTenantRequest(organization=w.org, etag=STALE_ENV),
    "ReconcileTenant": lambda w: P.ReconcileTenantRequest(organization=w.org),
}


async def report_clients(world: World, channels: dict[str, grpc.aio.Channel]) -> None:
    """Two watching clients, heard from just now (a client quiet for the grace period
    drops out of ListConfigClients)."""
    stub = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    for client in ("pod/a", "pod/b"):
        await stub.ReportConfigStatus(
            C.ReportConfigStatusRequest(
                organization=world.org, client_id=client, labels={"app": "x"}, applied_revision=1
            ),
            metadata=world.auth,
            timeout=TIMEOUT,
        )


# What an RPC's base needs that may not last from the world's creation to its turn.
FRESHEN: dict[str, Callable[[World, dict[str, grpc.aio.Channel]], Awaitable[None]]] = {
    "ListConfigClients": report_clients,
}
# RPCs that span organizations: an operator calls them.
OPERATOR_CALLS = {"PurgeConfig": "purger", "ListTenantEnvironments": "operator"}


def request_class(method: descriptor.MethodDescriptor) -> type[message.Message]:
    return message_factory.GetMessageClass(method.input_type)


def generic_base(cls: type[message.Message], world: World) -> message.Message:
    """A new RPC's base: its organization fields set to the world's, one item a page."""
    request = cls()
    for field in request.DESCRIPTOR.fields:
        if field.name == "organization" and field.type == FieldDescriptor.TYPE_STRING:
            setattr(request, field.name, world.org)
        elif field.name == "page_size":
            setattr(request, field.name, 1)
    return request


async def prepare(
    world: World, method: descriptor.MethodDescriptor
) -> tuple[message.Message, Metadata]:
    """A fresh valid request of ``method`` and the metadata of an authorized caller."""
    if method.name in ("Logout", "RefreshToken"):
        # Each call spends its tokens: sign in afresh every time.
        person = await world.api.login(world.leaver)
        if method.name == "Logout":
            return T.LogoutRequest(refresh_token=person.refresh), person.auth
        return T.RefreshTokenRequest(refresh_token=person.refresh), ()
    build = BASES.get(method.name)
    request = build(world) if build else generic_base(request_class(method), world)
    role = OPERATOR_CALLS.get(method.name)
    metadata: Metadata = getattr(world, role) if role else world.auth
    return request, metadata


# --- hostile values ---------------------------------------------------------------------

NUL = "\x00"
CONTROL = "\x01\x07\x08\x1b\x7f\x85\u2028"
ODD_TEXT = "é中😀\u202e\ufeff\u200d"
# Code point ranges of the garbage strings (no surrogates: they cannot be sent as UTF-8).
_RANGES = [
    (0x20, 0x7E),
    (0xA0, 0x2FF),
    (0x300, 0x36F),
    (0x590, 0x6FF),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x4E00, 0x4FFF),
    (0xE000, 0xE0FF),
    (0xFFF0, 0xFFFF),
    (0x1F300, 0x1FAFF),
    (0x10FFF0, 0x10FFFF),
]


def garbage_text(rng: random.Random) -> str:
    return "".join(
        chr(rng.randint(*rng.choice(_RANGES))) for _ in range(rng.randint(1, 40))
    ).replace(NUL, "")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def tamper(token: str, position: Any) -> str:
    """``token`` with its position replaced: its request binding stays valid."""
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    payload["p"] = position
    return b64(json.dumps(payload).encode())


# Positions a tampered page token carries: wrong types, NUL, out-of-range numbers.
POSITIONS: list[tuple[str, Any]] = [
    ("nul", NUL),
    ("nul-inside", f"a{NUL}b"),
    ("object", {"x": 1}),
    ("list", [1, 2, 3]),
    ("empty-list", []),
    ("negative", -1),
    ("huge-int", 2**70),
    ("huge-float", 1e308),
    ("nan", math.nan),
    ("null", None),
    ("bool", True),
    ("nul-pair", [NUL, NUL]),
    ("time-nul", ["2024-01-01T00:00:00+00:00", NUL]),
    ("time-out-of-range", ["9999-12-31T23:59:59.999999-23:59", "x"]),
    ("bad-time", ["not a time", 1]),
    ("nested", [[[[]]]]),
    ("emoji", "😀"),
    ("long", "a" * 100_000),
]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One hostile call: a change to the base request, or a raw body built from it."""

    label: str
    mutate: Mutate | None = None
    raw: Callable[[bytes], bytes] | None = None
    huge: bool = False  # an input far over any limit: never accepted and echoed back
    may_not_parse: bool = False  # deeper than protobuf parsers go: MALFORMED_REQUEST is fine


Navigate = Callable[[message.Message], message.Message]


def _child(navigate: Navigate, field: FieldDescriptor) -> Navigate:
    def go(root: message.Message) -> message.Message:
        parent = navigate(root)
        if field.is_repeated:
            items: Any = getattr(parent, field.name)
            element: message.Message = items[0] if len(items) else items.add()
            return element
        child: message.Message = getattr(parent, field.name)
        return child

    return go


def _set_to(navigate: Navigate, name: str, value: Any) -> Mutate:
    def mutate(root: message.Message) -> None:
        setattr(navigate(root), name, value)

    return mutate


def _transform(navigate: Navigate, name: str, change: Callable[[str], str]) -> Mutate:
    def mutate(root: message.Message) -> None:
        target = navigate(root)
        setattr(target, name, change(getattr(target, name)))

    return mutate


def _replace_repeated(
    navigate: Navigate, name: str, items: Callable[[list[Any]], list[Any]]
) -> Mutate:
    def mutate(root: message.Message) -> None:
        target: Any = navigate(root)
        current = list(getattr(target, name))
        del getattr(target, name)[:]
        getattr(target, name).extend(items(current))

    return mutate


def _replace_map(navigate: Navigate, name: str, entries: dict[str, str]) -> Mutate:
    def mutate(root: message.Message) -> None:
        target: Any = getattr(navigate(root), name)
        target.clear()
        target.update(entries)

    return mutate


def _copy_into(navigate: Navigate, name: str, build: Callable[[], message.Message]) -> Mutate:
    def mutate(root: message.Message) -> None:
        getattr(navigate(root), name).CopyFrom(build())

    return mutate


def _fill(navigate: Navigate, name: str, items: list[Any]) -> Mutate:
    return _replace_repeated(navigate, name, lambda _: items)


def _on_first(change: Callable[[str], str]) -> Callable[[list[Any]], list[Any]]:
    """A repeated string field holding one item: ``change`` of its first (or of "")."""
    return lambda items: [change(items[0] if items else "")]


def _clear(navigate: Navigate, name: str) -> Mutate:
    return lambda root: navigate(root).ClearField(name)


def string_values(rng: random.Random, name: str) -> list[tuple[str, Callable[[str], str], bool]]:
    """(label, new value from the current one, huge) for a string field."""
    garbage = garbage_text(rng)
    values: list[tuple[str, Callable[[str], str], bool]] = [
        ("nul-suffix", lambda s: (s or "x") + NUL, False),
        ("nul-inside", lambda s: (s or "xy")[:1] + NUL + (s or "xy")[1:], False),
        ("control", lambda s: (s or "x") + CONTROL, False),
        ("1MiB", lambda s: "a" * MIB, True),
        ("non-ascii", lambda s: (s or "x") + ODD_TEXT, False),
        ("whitespace", lambda s: f" \t{s or 'x'} \n", False),
        ("garbage", lambda s: garbage, False),
    ]
    if name != "etag":  # an empty etag is documented: an unconditional write
        values.append(("empty", lambda s: "", False))
    return values


def json_value(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth - 1):
        leaf = [leaf]
    return leaf


def value_variants(navigate: Navigate, field: FieldDescriptor, path: str) -> Iterator[Variant]:
    """A ``google.protobuf.Value`` field: JSON-shaped hostility."""

    def build(data: Any) -> Callable[[], message.Message]:
        def make() -> message.Message:
            value = struct_pb2.Value()
            if isinstance(data, list):
                value.list_value.extend(data)
            elif isinstance(data, dict):
                value.struct_value.update(data)
            elif isinstance(data, str):
                value.string_value = data
            else:
                value.number_value = data
            return value

        return make

    def nested(depth: int) -> Callable[[], message.Message]:
        def make() -> message.Message:
            value = struct_pb2.Value(number_value=1)
            for _ in range(depth - 1):
                outer = struct_pb2.Value()
                outer.list_value.values.add().CopyFrom(value)
                value = outer
            return value

        return make

    name = field.name
    for label, data, huge in [
        ("nul-string", f"a{NUL}b", False),
        ("nul-key", {f"k{NUL}": 1}, False),
        ("control-key", {CONTROL: ODD_TEXT}, False),
        ("nan", math.nan, False),
        ("infinity", math.inf, False),
        ("1MiB-string", "a" * MIB, True),
        # Past the 64 KiB a value may have, in JSON and on the wire.
        ("40k-list", [1] * 40_000, True),
        ("20k-keys", {f"k{i}": i for i in range(20_000)}, True),
    ]:
        yield Variant(f"{path}={label}", _copy_into(navigate, name, build(data)), huge=huge)
    yield Variant(f"{path}=nested-40", _copy_into(navigate, name, nested(40)))
    yield Variant(f"{path}=nested-150", _copy_into(navigate, name, nested(150)), may_not_parse=True)
    yield Variant(f"{path}=no-kind", _copy_into(navigate, name, struct_pb2.Value))


def duration_variants(navigate: Navigate, field: FieldDescriptor, path: str) -> Iterator[Variant]:
    for label, seconds, nanos in [
        ("max-seconds", 2**63 - 1, 0),
        ("min-seconds", -(2**63), 0),
        ("past-range", 315_576_000_001, 0),
        ("negative", -1, -5),
        ("bad-nanos", 1, -1),
        ("huge-nanos", 0, 2**31 - 1),
    ]:

        def build(s: int = seconds, n: int = nanos) -> message.Message:
            return duration_pb2.Duration(seconds=s, nanos=n)

        yield Variant(f"{path}={label}", _copy_into(navigate, field.name, build))


def timestamp_variants(navigate: Navigate, field: FieldDescriptor, path: str) -> Iterator[Variant]:
    for label, seconds, nanos in [
        ("max-seconds", 2**63 - 1, 0),
        ("min-seconds", -(2**63), 0),
        ("year-10000", 253_402_300_800, 0),
        ("bad-nanos", 0, -1),
    ]:

        def build(s: int = seconds, n: int = nanos) -> message.Message:
            return timestamp_pb2.Timestamp(seconds=s, nanos=n)

        yield Variant(f"{path}={label}", _copy_into(navigate, field.name, build))


def mask_variants(
    navigate: Navigate, field: FieldDescriptor, path: str, resource: FieldDescriptor | None
) -> Iterator[Variant]:
    """An update mask: paths that are unknown, nested, empty or far too many. ``resource``
    is the request's field holding what the mask selects fields of."""
    kind = resource.message_type if resource is not None else None
    name = resource.name if resource is not None else "resource"
    fields = [f.name for f in kind.fields] if kind is not None else []
    first = fields[0] if fields else "name"
    for label, paths, huge in [
        ("unknown", ["no_such_field"], False),
        ("resource-prefixed", [f"{name}.{f}" for f in fields] or [f"{name}.x"], False),
        ("sub-paths", [f"{f}.x" for f in fields] or ["name.x"], False),
        ("deep", ["labels.a.b"], False),
        ("nul", [f"{first}{NUL}"], False),
        ("empty-path", [""], False),
        ("star-and-more", ["*", "no_such_field"], False),
        ("output-only", ["etag", "create_time"], False),
        ("non-ascii", [ODD_TEXT], False),
        ("duplicates", [first] * 3, False),
        ("10k-paths", [f"p{i}" for i in range(10_000)], True),
        ("1MiB-path", ["a" * MIB], True),
    ]:

        def build(p: list[str] = paths) -> message.Message:
            return field_mask_pb2.FieldMask(paths=p)

        yield Variant(f"{path}={label}", _copy_into(navigate, field.name, build), huge=huge)


INTS: dict[int, list[Any]] = {
    FieldDescriptor.CPPTYPE_INT32: [-1, -(2**31), 2**31 - 1],
    FieldDescriptor.CPPTYPE_INT64: [-1, -(2**63), 2**63 - 1],
    FieldDescriptor.CPPTYPE_UINT32: [2**32 - 1],
    FieldDescriptor.CPPTYPE_UINT64: [2**64 - 1],
    FieldDescriptor.CPPTYPE_DOUBLE: [math.nan, math.inf, -math.inf, 1e308, -0.0],
    FieldDescriptor.CPPTYPE_FLOAT: [math.nan, math.inf, -math.inf, 3e38],
    FieldDescriptor.CPPTYPE_BOOL: [True],
    FieldDescriptor.CPPTYPE_ENUM: [999, -7],
}


def page_token_variants(
    navigate: Navigate, path: str, own: str, foreign: dict[str, str], rng: random.Random
) -> Iterator[Variant]:
    for label, token in [
        ("random-base64", b64(rng.randbytes(24))),
        ("not-base64", "%%%not-a-token%%%"),
        ("json-array", b64(b"[1,2]")),
        ("json-no-binding", b64(b'{"p":"a"}')),
        ("invalid-utf8", b64(b"\xff\xfe{")),
    ]:
        yield Variant(f"{path}={label}", _set_to(navigate, "page_token", token))
    for name, token in sorted(foreign.items()):
        yield Variant(f"{path}=token-of-{name}", _set_to(navigate, "page_token", token))
    if own:
        for label, position in POSITIONS:
            forged = tamper(own, position)
            yield Variant(f"{path}=tampered-{label}", _set_to(navigate, "page_token", forged))


def field_variants(
    desc: descriptor.Descriptor,
    navigate: Navigate,
    prefix: str,
    rng: random.Random,
    depth: int,
    tokens: tuple[str, dict[str, str]],
) -> Iterator[Variant]:
    """Every hostile change of one field of ``desc`` (and of its nested messages)."""
    for field in desc.fields:
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            # Maps of strings (the only kind requests have): labels and the like.
            if field.message_type.fields_by_name["value"].type != FieldDescriptor.TYPE_STRING:
                continue
            for label, mapping, huge in [
                ("nul-key", {f"k{NUL}": "v"}, False),
                ("nul-value", {"k": f"v{NUL}"}, False),
                ("empty-key", {"": "v"}, False),
                ("non-ascii-key", {ODD_TEXT: "v"}, False),
                ("whitespace-key", {" k ": " v "}, False),
                ("control-value", {"k": CONTROL}, False),
                ("10k-entries", {f"k{i}": "v" for i in range(10_000)}, True),
                ("1MiB-value", {"k": "a" * MIB}, True),
            ]:
                yield Variant(
                    f"{path}={label}", _replace_map(navigate, field.name, mapping), huge=huge
                )
            continue
        if field.message_type is not None:
            full = field.message_type.full_name
            if repeated:
                element = message_factory.GetMessageClass(field.message_type)
                yield Variant(
                    f"{path}=10k-elements",
                    _fill(navigate, field.name, [element() for _ in range(10_000)]),
                    huge=True,
                )
            else:
                yield Variant(f"{path}=unset", _clear(navigate, field.name))
            if full == "google.protobuf.Value" and not repeated:
                yield from value_variants(navigate, field, path)
            elif full == "google.protobuf.Duration":
                yield from duration_variants(navigate, field, path)
            elif full == "google.protobuf.Timestamp":
                yield from timestamp_variants(navigate, field, path)
            elif full == "google.protobuf.FieldMask":
                resource = next(
                    (
                        f
                        for f in desc.fields
                        if f.message_type is not None
                        and not f.message_type.full_name.startswith("google.")
                    ),
                    None,
                )
                yield from mask_variants(navigate, field, path, resource)
            elif not full.startswith("google.protobuf.") and depth < MAX_DEPTH:
                at = f"{path}[0]." if repeated else f"{path}."
                yield from field_variants(
                    field.message_type, _child(navigate, field), at, rng, depth + 1, tokens
                )
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            if repeated:
                yield Variant(
                    f"{path}[]=10k-items",
                    _fill(navigate, field.name, [f"s{i}" for i in range(10_000)]),
                    huge=True,
                )
                yield Variant(
                    f"{path}[]=empty-item",
                    _replace_repeated(navigate, field.name, lambda items: [*items, ""]),
                )
                for label, change, huge in string_values(rng, field.name):
                    yield Variant(
                        f"{path}[]={label}",
                        _replace_repeated(navigate, field.name, _on_first(change)),
                        huge=huge,
                    )
                continue
            for label, change, huge in string_values(rng, field.name):
                yield Variant(
                    f"{path}={label}", _transform(navigate, field.name, change), huge=huge
                )
            if field.name == "page_token":
                own, foreign = tokens
                yield from page_token_variants(navigate, path, own, foreign, rng)
            continue
        if field.type == FieldDescriptor.TYPE_BYTES:
            for label, data in [("nul", b"\x00"), ("1MiB", b"\xff" * MIB)]:
                mutate = (
                    _fill(navigate, field.name, [data])
                    if repeated
                    else _set_to(navigate, field.name, data)
                )
                yield Variant(f"{path}={label}", mutate, huge=len(data) > 1)
            continue
        for number in INTS.get(field.cpp_type, []):
            if repeated:
                yield Variant(
                    f"{path}[]={number!r}x10k",
                    _fill(navigate, field.name, [number] * 10_000),
                    huge=True,
                )
            else:
                yield Variant(f"{path}={number!r}", _set_to(navigate, field.name, number))


# --- raw bodies -------------------------------------------------------------------------


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _append(extra: bytes) -> Callable[[bytes], bytes]:
    return lambda base: base + extra


def raw_variants(desc: descriptor.Descriptor) -> Iterator[Variant]:
    """Bodies no protobuf library would send: each goes through as raw bytes."""
    yield Variant("raw:empty-body", raw=lambda _: b"")
    yield Variant("raw:not-protobuf", raw=lambda _: b"\xff" * 10 + b"\x01")
    yield Variant("raw:truncated", raw=_append(b"\x0a\x10acme"))
    yield Variant("raw:huge-length", raw=_append(b"\x0a" + varint(2**31) + b"ab"))
    unknown = varint(1000 << 3) + varint(2**63) + length_delimited(1001, b"?")
    yield Variant("raw:unknown-fields", raw=_append(unknown))
    deep = varint(999 << 3 | 3) * 10_000 + varint(999 << 3 | 4) * 10_000
    yield Variant("raw:10k-nested-groups", raw=_append(deep))
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            bad = length_delimited(field.number, b"ac\xffme")
            yield Variant(f"raw:{field.name}=invalid-utf8", raw=_append(bad))
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = length_delimited(1, b"\xc3(") + length_delimited(2, b"v")
            bad = length_delimited(field.number, entry)
            yield Variant(f"raw:{field.name}=invalid-utf8-key", raw=_append(bad))
        elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
            wrong = length_delimited(field.number, b"\x01\x02")
            yield Variant(f"raw:{field.name}=wrong-wire-type", raw=_append(wrong))


def variants_of(
    method: descriptor.MethodDescriptor, own_token: str, foreign: dict[str, str]
) -> list[Variant]:
    """Every variant of ``method``'s request, at most :data:`MAX_VARIANTS` (sampled with
    a seed of its own, so each RPC's set is the same on every run)."""
    rng = random.Random(f"{SEED}:{method.full_name}")
    found = list(
        field_variants(method.input_type, lambda root: root, "", rng, 0, (own_token, foreign))
    )
    if len(found) > MAX_VARIANTS:
        found = rng.sample(found, MAX_VARIANTS)
    return found + list(raw_variants(method.input_type))


# --- calling and judging ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: Code
    details: str
    status: status_pb2.Status | None
    reply: bytes = b""  # the (first) response message, encoded


def _identity(data: bytes) -> bytes:
    return data


async def call(
    channel: grpc.aio.Channel,
    method: descriptor.MethodDescriptor,
    body: bytes,
    metadata: Metadata,
) -> Outcome:
    """``body`` sent as is; a stream is read up to its first message."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path, request_serializer=_identity, response_deserializer=_identity
            )
            streaming = stream(body, metadata=metadata, timeout=TIMEOUT)
            first = await streaming.read()
            streaming.cancel()
            return Outcome(Code.OK, "", None, first if isinstance(first, bytes) else b"")
        unary = channel.unary_unary(
            path, request_serializer=_identity, response_deserializer=_identity
        )
        reply = await unary(body, metadata=metadata, timeout=TIMEOUT)
        return Outcome(Code.OK, "", None, reply)
    except grpc.aio.AioRpcError as error:
        status = None
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        return Outcome(error.code(), error.details() or "", status)


def _details(status: status_pb2.Status | None) -> tuple[str, list[str]]:
    """(ErrorInfo reason, BadRequest violation fields) of a status."""
    reason, fields = "", []
    for packed in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if packed.Unpack(info):
            reason = info.reason
        elif packed.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return reason, fields


def _root(field: str) -> str:
    return field.split(".", 1)[0].split("[", 1)[0]


def judge(variant: Variant, outcome: Outcome, desc: descriptor.Descriptor) -> str | None:
    """What is wrong with the answer to ``variant``, or None."""
    if outcome.code in FORBIDDEN:
        return f"{outcome.code.name}: {outcome.details[:200]}"
    if outcome.code == Code.INVALID_ARGUMENT:
        reason, fields = _details(outcome.status)
        if reason == "MALFORMED_REQUEST":
            if variant.raw is None and not variant.may_not_parse:
                return "MALFORMED_REQUEST for a well-formed message"
            return None
        if not fields:
            return f"INVALID_ARGUMENT without field violations ({reason}): {outcome.details[:200]}"
        # ("…" stands for the violations left out of a long list.)
        named = set(desc.fields_by_name) | {"…"}
        if not any(_root(f) in named for f in fields):
            return f"INVALID_ARGUMENT names no field of the request: {fields[:5]}"
    if outcome.code == Code.OK and variant.huge and len(outcome.reply) > MIB // 4:
        return f"a huge input was accepted and echoed ({len(outcome.reply)} bytes)"
    return None


def _id(item: tuple[str, descriptor.MethodDescriptor]) -> str:
    return f"{item[1].containing_service.name}.{item[1].name}"


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[_id(m) for m in METHODS])
async def test_hostile_fields_get_a_clear_answer(
    channels: dict[str, grpc.aio.Channel],
    world: World,
    service: str,
    method: descriptor.MethodDescriptor,
) -> None:
    channel = channels[service]
    freshen = FRESHEN.get(method.name)
    if freshen is not None:
        await freshen(world, channels)
    base, metadata = await prepare(world, method)
    baseline = await call(channel, method, base.SerializeToString(), metadata)
    assert baseline.code not in FORBIDDEN | {Code.UNAUTHENTICATED, Code.PERMISSION_DENIED}, (
        f"the base request of {method.name} must reach validation: "
        f"{baseline.code.name} {baseline.details}"
    )
    own = ""  # the base's real next_page_token, to tamper with
    if "next_page_token" in method.output_type.fields_by_name and baseline.code == Code.OK:
        reply: Any = message_factory.GetMessageClass(method.output_type).FromString(baseline.reply)
        own = str(reply.next_page_token)
    if method.name in PAGINATED:
        assert own, f"{method.name}: the seeded data should span more than one page"
    foreign = {name: token for name, token in world.tokens.items() if name != method.name}
    problems: list[str] = []
    known = {label for (name, label) in KNOWN if name == method.name}
    for variant in variants_of(method, own, foreign):
        request, metadata = await prepare(world, method)
        if variant.raw is not None:
            body = variant.raw(request.SerializeToString())
        else:
            assert variant.mutate is not None
            variant.mutate(request)
            body = request.SerializeToString()
        outcome = await call(channel, method, body, metadata)
        problem = judge(variant, outcome, method.input_type)
        if variant.label in known:
            known.discard(variant.label)
            if problem is None:
                problems.append(f"{method.name} {variant.label}: fixed, drop it from KNOWN")
        elif problem is not None:
            problems.append(f"{method.name} {variant.label}: {problem}")
    problems += [f"{method.name} {label}: in KNOWN but never sent" for label in sorted(known)]
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems)


# --- hostile writes write nothing -------------------------------------------------------


async def test_a_user_refused_for_a_nul_is_not_created(world: World) -> None:
    email = f"nul-{world.suffix}@example.com"
    for user, password in [
        (T.User(email=email, display_name=f"Eve{NUL}"), PASSWORD),
        (T.User(email=email, display_name="Eve"), f"{PASSWORD}{NUL}"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await world.api.stub.CreateUser(
                T.CreateUserRequest(user=user, password=password), timeout=TIMEOUT
            )
        assert refused.value.code() == Code.INVALID_ARGUMENT
    # The email is still free: nothing was written.
    created = await world.api.stub.CreateUser(
        T.CreateUserRequest(user=T.User(email=email), password=PASSWORD), timeout=TIMEOUT
    )
    assert created.email == email


async def test_an_organization_refused_for_a_nul_is_not_created(world: World) -> None:
    slug = f"{world.suffix}-nul"
    for organization in [
        T.Organization(slug=slug, display_name=f"Acme{NUL}"),
        T.Organization(slug=slug, labels={"team": f"a{NUL}"}),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await world.api.stub.CreateOrganization(
                T.CreateOrganizationRequest(organization=organization),
                metadata=world.auth,
                timeout=TIMEOUT,
            )
        assert refused.value.code() == Code.INVALID_ARGUMENT
    listed = await world.api.stub.ListOrganizations(
        T.ListOrganizationsRequest(page_size=1000), metadata=world.auth, timeout=TIMEOUT
    )
    assert slug not in {o.slug for o in listed.organizations}


async def test_a_project_refused_for_a_nul_is_not_created(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.api.stub.CreateProject(
            T.CreateProjectRequest(
                organization=world.org,
                project=T.Project(id="nul-project", description=f"d{NUL}"),
            ),
            metadata=world.auth,
            timeout=TIMEOUT,
        )
    assert refused.value.code() == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await world.api.stub.GetProject(
            T.GetProjectRequest(organization=world.org, id="nul-project"),
            metadata=world.auth,
            timeout=TIMEOUT,
        )
    assert missing.value.code() == Code.NOT_FOUND


async def test_config_refused_for_a_nul_writes_nothing(
    channels: dict[str, grpc.aio.Channel], world: World
) -> None:
    stub = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    md = world.auth
    before = await stub.ListConfigs(
        C.ListConfigsRequest(organization=world.org), metadata=md, timeout=TIMEOUT
    )
    for value in [
        C.Value(string_value=f"a{NUL}"),
        C.Value(flag_value=C.FeatureFlag(salt=NUL)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetConfig(
                C.SetConfigRequest(organization=world.org, service="nul", key="k", value=value),
                metadata=md,
                timeout=TIMEOUT,
            )
        assert refused.value.code() == Code.INVALID_ARGUMENT
    schema = schema_of(world.org, "nul")
    schema.keys[0].description = f"d{NUL}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SetConfigSchema(
            C.SetConfigSchemaRequest(schema=schema), metadata=md, timeout=TIMEOUT
        )
    assert refused.value.code() == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetConfigSchema(
            C.GetConfigSchemaRequest(organization=world.org, service="nul"),
            metadata=md,
            timeout=TIMEOUT,
        )
    assert missing.value.code() == Code.NOT_FOUND
    after = await stub.ListConfigs(
        C.ListConfigsRequest(organization=world.org), metadata=md, timeout=TIMEOUT
    )
    assert after.revision == before.revision
    assert "nul" not in {entry.service for entry in after.configs}


async def test_an_environment_refused_for_a_nul_is_not_provisioned(
    channels: dict[str, grpc.aio.Channel], keys: Keys
) -> None:
    stub = provisioner_service_pb2_grpc.ProvisionerServiceStub(channels["provisioner"])
    org = new_slug("n")
    md = bearer(keys.token(org, "owner", subject="owner-of-nul"))
    for request in [
        P.ProvisionTenantRequest(organization=org, owners=["alice"], labels={"team": f"a{NUL}"}),
        P.ProvisionTenantRequest(organization=org, owners=[f"alice{NUL}"]),
        P.ProvisionTenantRequest(organization=org, owners=["alice"], quota=P.Quota(cpu=f"1{NUL}")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ProvisionTenant(request, metadata=md, timeout=TIMEOUT)
        assert refused.value.code() == Code.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetTenantEnvironment(
            P.GetTenantEnvironmentRequest(organization=org), metadata=md, timeout=TIMEOUT
        )
    assert missing.value.code() == Code.NOT_FOUND


# --- and the servers are still there ----------------------------------------------------


async def test_the_servers_still_answer(
    channels: dict[str, grpc.aio.Channel], world: World
) -> None:
    for name, service in SERVICES.items():
        health: Any = health_pb2_grpc.HealthStub(channels[name])  # stubs list no methods
        for target in ("", service.full_name):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=target), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    org = await world.api.stub.GetOrganization(
        T.GetOrganizationRequest(organization=world.org), metadata=world.auth, timeout=TIMEOUT
    )
    assert org.state == T.Organization.STATE_ACTIVE
    config = config_service_pb2_grpc.ConfigServiceStub(channels["config"])
    usage = await config.GetConfigUsage(
        C.GetConfigUsageRequest(organization=world.org), metadata=world.auth, timeout=TIMEOUT
    )
    assert usage.organization == world.org
    provisioner = provisioner_service_pb2_grpc.ProvisionerServiceStub(channels["provisioner"])
    env = await provisioner.GetTenantEnvironment(
        P.GetTenantEnvironmentRequest(organization=world.org),
        metadata=world.auth,
        timeout=TIMEOUT,
    )
    assert env.organization == world.org
