"""TenantService end to end: sign-up, sign-in, token rotation and theft detection,
sign-out, revocation reaching ConfigService, and attacks on tokens."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from agentready.tenant.v1 import tenant_pb2 as pb
from google.rpc import error_details_pb2

from servicekit.auth import generate_signing_key
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import (
    PASSWORD,
    Code,
    TenantApi,
    bearer,
    eventually,
    new_email,
    rpc_error,
)
from tests.rpcerrors import detail, error_info, field_violations


@pytest.fixture(scope="module")
async def api(servers: dict[str, RunningServer]) -> AsyncIterator[TenantApi]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['tenant'].port}") as tenant,
        grpc.aio.insecure_channel(f"127.0.0.1:{servers['config'].port}") as config,
    ):
        yield TenantApi(tenant, config)


def claims_of(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# -- sign-up ---------------------------------------------------------------------------


async def test_sign_up_normalises_the_email_and_refuses_a_taken_one(api: TenantApi) -> None:
    email = new_email()
    person = await api.signup(f"  {email.upper()} ", display_name="Ada")
    assert person.user.email == email
    assert person.user.display_name == "Ada"
    assert person.user.id
    assert person.user.etag
    assert person.user.create_time.seconds > 0
    err = await rpc_error(api.signup(email), Code.ALREADY_EXISTS)
    assert error_info(err).reason == "ALREADY_EXISTS"


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [
        ("", PASSWORD, "user.email"),
        ("not-an-email", PASSWORD, "user.email"),
        ("a@b", PASSWORD, "user.email"),
        ("x" * 250 + "@example.com", PASSWORD, "user.email"),
        (None, "short", "password"),
        (None, "x" * 257, "password"),
        (None, "password123", "password"),  # in the shipped common list
        (None, "Qwertyuiop", "password"),  # case-insensitively
        (None, "EMAIL", "password"),  # the email itself
    ],
)
async def test_sign_up_refuses_bad_fields_and_writes_nothing(
    api: TenantApi, email: str | None, password: str, field: str
) -> None:
    address = new_email() if email is None else email
    if password == "EMAIL":
        password = address
    err = await rpc_error(
        api.stub.CreateUser(
            pb.CreateUserRequest(user=pb.User(email=address), password=password), timeout=10
        ),
        Code.INVALID_ARGUMENT,
    )
    assert field in field_violations(err)
    if email is None:  # a valid address: nothing was created under it
        await rpc_error(
            api.stub.Login(pb.LoginRequest(email=address, password=PASSWORD), timeout=10),
            Code.UNAUTHENTICATED,
        )


async def test_the_same_request_id_signs_up_once(api: TenantApi) -> None:
    import uuid

    email, request_id = new_email(), str(uuid.uuid4())
    request = pb.CreateUserRequest(
        user=pb.User(email=email), password=PASSWORD, request_id=request_id
    )
    first = await api.stub.CreateUser(request, timeout=10)
    again = await api.stub.CreateUser(request, timeout=10)
    assert again.id == first.id
    other = pb.CreateUserRequest(
        user=pb.User(email=new_email()), password=PASSWORD, request_id=request_id
    )
    err = await rpc_error(api.stub.CreateUser(other, timeout=10), Code.INVALID_ARGUMENT)
    assert "request_id" in field_violations(err)


# -- sign-in ---------------------------------------------------------------------------


async def test_login_gives_tokens_the_other_services_accept(api: TenantApi, keys: Keys) -> None:
    person, org = await api.owner_of_new_org()
    claims = claims_of(person.access)
    assert claims["sub"] == person.id
    assert claims["org"] == org
    assert claims["role"] == "owner"
    assert "config:write" in str(claims["scope"]).split()
    assert claims["iss"] == "agentready"
    assert claims["aud"] == "agentready"
    assert int(claims["exp"]) - int(claims["iat"]) == 15 * 60  # type: ignore[call-overload]
    assert jwt.get_unverified_header(person.access)["kid"] == keys.jwk["kid"]
    assert await api.config_works(person.access, org)
    me = await api.stub.GetUser(pb.GetUserRequest(id="me"), metadata=person.auth, timeout=10)
    assert me.id == person.id


async def test_wrong_password_and_unknown_email_get_the_same_answer(api: TenantApi) -> None:
    person = await api.signup()
    wrong = await rpc_error(
        api.stub.Login(pb.LoginRequest(email=person.email, password="not it at all"), timeout=10),
        Code.UNAUTHENTICATED,
    )
    unknown = await rpc_error(
        api.stub.Login(pb.LoginRequest(email=new_email(), password=PASSWORD), timeout=10),
        Code.UNAUTHENTICATED,
    )
    assert wrong.details() == unknown.details()
    assert error_info(wrong).reason == error_info(unknown).reason == "INVALID_CREDENTIALS"


async def test_repeated_failures_are_throttled_per_email(api: TenantApi) -> None:
    person = await api.signup()
    bad = pb.LoginRequest(email=person.email, password="definitely wrong")
    for _ in range(5):  # TENANT_LOGIN_MAX_FAILURES_PER_EMAIL's default
        await rpc_error(api.stub.Login(bad, timeout=10), Code.UNAUTHENTICATED)
    err = await rpc_error(api.stub.Login(bad, timeout=10), Code.RESOURCE_EXHAUSTED)
    assert error_info(err).reason == "TOO_MANY_LOGIN_FAILURES"
    assert detail(err, error_details_pb2.RetryInfo).retry_delay.seconds >= 1
    # The right password is refused too while the email is throttled.
    good = pb.LoginRequest(email=person.email, password=PASSWORD)
    await rpc_error(api.stub.Login(good, timeout=10), Code.RESOURCE_EXHAUSTED)


async def test_login_to_an_organization_needs_membership(api: TenantApi) -> None:
    _, org = await api.owner_of_new_org()
    stranger = await api.signup()
    err = await rpc_error(api.login(stranger, org), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "NOT_A_MEMBER"
    err = await rpc_error(api.login(stranger, "no-such-org"), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "NOT_A_MEMBER"


# -- rotation, theft detection, sign-out ------------------------------------------------


async def test_refresh_rotates_and_switches_organization(api: TenantApi) -> None:
    person, org = await api.owner_of_new_org()
    first_access, first_refresh = person.access, person.refresh
    await api.refresh(person)
    assert person.refresh != first_refresh
    assert person.access != first_access
    assert claims_of(person.access)["org"] == org
    await api.refresh(person, organization="")  # keeps the scope
    assert claims_of(person.access)["org"] == org
    _, other = await api.owner_of_new_org()
    err = await rpc_error(api.refresh(person, other), Code.PERMISSION_DENIED)
    assert error_info(err).reason == "NOT_A_MEMBER"


async def test_a_reused_refresh_token_revokes_its_whole_family(api: TenantApi) -> None:
    person, org = await api.owner_of_new_org()
    stolen = person.refresh
    await api.refresh(person)  # the rightful holder rotates
    holder_access, holder_refresh = person.access, person.refresh
    assert await api.config_works(holder_access, org)
    person.refresh = stolen  # the thief replays the old one
    err = await rpc_error(api.refresh(person), Code.UNAUTHENTICATED)
    assert error_info(err).reason == "REFRESH_TOKEN_REUSED"
    # Every token of that sign-in is dead: the newer refresh token and its access
    # token, at TenantService and, within a second, at ConfigService.
    person.refresh = holder_refresh
    await rpc_error(api.refresh(person), Code.UNAUTHENTICATED)
    await eventually(lambda: api.config_works(holder_access, org), lambda ok: not ok)


async def test_logout_revokes_the_access_and_refresh_token_everywhere(api: TenantApi) -> None:
    person, org = await api.owner_of_new_org()
    assert await api.config_works(person.access, org)
    await api.stub.Logout(
        pb.LogoutRequest(refresh_token=person.refresh), metadata=person.auth, timeout=10
    )
    err = await rpc_error(
        api.stub.GetUser(pb.GetUserRequest(id="me"), metadata=person.auth, timeout=10),
        Code.UNAUTHENTICATED,
    )
    assert error_info(err).reason == "TOKEN_REVOKED"
    await eventually(lambda: api.config_works(person.access, org), lambda ok: not ok)
    await rpc_error(api.refresh(person), Code.UNAUTHENTICATED)


async def test_refresh_tokens_that_are_not_ours_are_refused(api: TenantApi) -> None:
    person = await api.login(await api.signup())
    token_id, _, _ = person.refresh.partition(".")
    for bad in ("garbage", f"{token_id}.wrong-secret", "00000000-0000-0000-0000-000000000000.x"):
        err = await rpc_error(
            api.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=bad), timeout=10),
            Code.UNAUTHENTICATED,
        )
        assert error_info(err).reason == "REFRESH_TOKEN_INVALID"


# -- users -----------------------------------------------------------------------------


async def test_users_see_themselves_and_people_they_share_an_organization_with(
    api: TenantApi,
) -> None:
    owner, org = await api.owner_of_new_org()
    colleague = await api.join(owner, org, pb.ROLE_VIEWER)
    stranger = await api.login(await api.signup())
    seen = await api.stub.GetUser(
        pb.GetUserRequest(id=colleague.id), metadata=owner.auth, timeout=10
    )
    assert seen.email == colleague.email
    for target in (stranger.id, "0b7e2c1a-5d3f-4a8e-9c61-2f4d8b9a1e07"):
        await rpc_error(
            api.stub.GetUser(pb.GetUserRequest(id=target), metadata=owner.auth, timeout=10),
            Code.NOT_FOUND,
        )
    err = await rpc_error(
        api.stub.GetUser(pb.GetUserRequest(id="not-a-uuid"), metadata=owner.auth, timeout=10),
        Code.INVALID_ARGUMENT,
    )
    assert "id" in field_violations(err)


# -- attacks on tokens -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature))
    )


async def test_token_attacks_are_unauthenticated(api: TenantApi, keys: Keys) -> None:
    person = await api.login(await api.signup())
    good = person.access
    claims = claims_of(good)
    header = jwt.get_unverified_header(good)
    head, body, signature = good.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    public_pem = base64.urlsafe_b64decode(keys.jwk["x"] + "==")
    attacks = {
        "expired": keys.token(
            None, "owner", subject=person.id, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        ),
        "bad signature": f"{head}.{body}.{flipped}",
        "alg none": _forge({**header, "alg": "none"}, claims, b""),
        "HS256 with the public key": jwt.encode(
            claims, public_pem, algorithm="HS256", headers={"kid": header["kid"]}
        ),
        "unknown kid": _forge({**header, "kid": "nobody-knows-me"}, claims, b"x" * 64),
        "changed claims": ".".join(
            (head, _b64(json.dumps({**claims, "sub": "someone-else"}).encode()), signature)
        ),
    }
    for name, token in attacks.items():
        err = await rpc_error(
            api.stub.GetUser(pb.GetUserRequest(id="me"), metadata=bearer(token), timeout=10),
            Code.UNAUTHENTICATED,
        )
        assert error_info(err).reason.startswith("TOKEN_"), name
    # The genuine token still works, and then is revoked by signing out.
    await api.stub.GetUser(pb.GetUserRequest(id="me"), metadata=person.auth, timeout=10)
    await api.stub.Logout(pb.LogoutRequest(), metadata=person.auth, timeout=10)
    err = await rpc_error(
        api.stub.GetUser(pb.GetUserRequest(id="me"), metadata=person.auth, timeout=10),
        Code.UNAUTHENTICATED,
    )
    assert error_info(err).reason == "TOKEN_REVOKED"


async def test_jwks_lists_the_signing_key_without_private_parts(api: TenantApi) -> None:
    reply = await api.stub.GetJwks(pb.GetJwksRequest(), timeout=10)
    assert reply.keys
    for key in reply.keys:
        assert key.kid
        assert key.kty == "OKP"
        assert key.x
    # Nothing but public members in the message type at all.
    assert "d" not in {f.name for f in pb.JsonWebKey.DESCRIPTOR.fields}


async def test_signing_keys_rotate_and_are_withdrawn_without_a_restart(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """Rotation without a restart: publish the new public key, swap the private key;
    new tokens carry the new kid and are accepted everywhere, old ones still are, until
    the old key is withdrawn from the JWKS."""
    from config_service.app import SPEC as CONFIG
    from servicekit.server import start
    from servicekit.settings import load_settings
    from tenant_service.app import SPEC as TENANT

    (tmp_path / "old").mkdir()
    old = Keys(tmp_path / "old")
    new_pem, new_jwk = generate_signing_key()
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(old.private_pem)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [old.jwk]}))
    env = {
        **server_env,
        "JWT_JWKS_FILE": str(jwks),
        "TENANT_SIGNING_KEY_FILE": str(key_file),
        "METRICS_PORT": "off",
    }
    config = await start(CONFIG, load_settings("config", env, extra=CONFIG.extra_settings))
    env["CONFIG_ADDRESS"] = f"127.0.0.1:{config.port}"
    tenant = await start(TENANT, load_settings("tenant", env, extra=TENANT.extra_settings))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{tenant.port}") as tenant_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{config.port}") as config_channel,
        ):
            api = TenantApi(tenant_channel, config_channel)
            person, org = await api.owner_of_new_org()
            before = person.access
            assert jwt.get_unverified_header(before)["kid"] == old.jwk["kid"]
            # 1. Publish the new public key beside the old one; 2. swap the private key.
            jwks.write_text(json.dumps({"keys": [old.jwk, new_jwk]}))
            replacement = tmp_path / "signing-key.pem.new"
            replacement.write_bytes(new_pem)
            replacement.replace(key_file)
            await api.login(person, org)
            assert jwt.get_unverified_header(person.access)["kid"] == new_jwk["kid"]
            published = await api.stub.GetJwks(pb.GetJwksRequest(), timeout=10)
            assert {k.kid for k in published.keys} >= {old.jwk["kid"], new_jwk["kid"]}
            # The verifiers pick the new kid up without a restart; the old token stays
            # good while its key is published.
            await eventually(lambda: api.config_works(person.access, org), bool)
            assert await api.config_works(before, org)
            # 3. Withdraw the old key (say it leaked): tokens it signed stop verifying,
            # even those verified (and cached) before; the new ones go on.
            jwks.write_text(json.dumps({"keys": [new_jwk]}))
            await eventually(lambda: api.config_works(before, org), lambda ok: not ok)
            assert await api.config_works(person.access, org)
    finally:
        await tenant.stop()
        await config.stop()
