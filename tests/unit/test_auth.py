"""Token signing and offline verification with key ids."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from servicekit.auth import (
    KeySet,
    Principal,
    TokenSigner,
    TokenVerifier,
    generate_signing_key,
)
from servicekit.devstack import ensure_dev_keys, mint_dev_token
from servicekit.errors import PermissionDenied, Unauthenticated


def make_signer() -> tuple[TokenSigner, dict[str, str]]:
    pem, jwk = generate_signing_key()
    return TokenSigner(pem, issuer="agentready", audience="agentready"), jwk


def verifier_for(*jwks: dict[str, str], revoked: set[str] | None = None) -> TokenVerifier:
    def is_revoked(principal: Principal) -> bool:
        return principal.token_id in (revoked or set())

    return TokenVerifier(
        KeySet(jwks={"keys": list(jwks)}),
        issuer="agentready",
        audience="agentready",
        is_revoked=is_revoked,
    )


def mint(signer: TokenSigner, **overrides: object) -> str:
    options: dict[str, object] = {
        "subject": "user-1",
        "organization": "acme",
        "role": "admin",
        "scopes": ["config:read", "config:write"],
        "ttl": dt.timedelta(minutes=5),
    }
    options.update(overrides)
    token, _ = signer.mint(**options)  # type: ignore[arg-type]
    return token


async def test_a_valid_token_becomes_a_principal() -> None:
    signer, jwk = make_signer()
    principal = await verifier_for(jwk).verify(mint(signer))
    assert principal.subject == "user-1"
    assert principal.organization == "acme"
    assert principal.role == "admin"
    assert principal.scopes == {"config:read", "config:write"}
    assert jwt.get_unverified_header(mint(signer))["kid"] == jwk["kid"]


async def test_the_key_is_picked_by_kid_among_several() -> None:
    first, first_jwk = make_signer()
    second, second_jwk = make_signer()
    verifier = verifier_for(first_jwk, second_jwk)
    assert (await verifier.verify(mint(first, subject="a"))).subject == "a"
    assert (await verifier.verify(mint(second, subject="b"))).subject == "b"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("expired", "TOKEN_EXPIRED"),
        ("unknown_key", "TOKEN_UNKNOWN_KEY"),
        ("forged", "TOKEN_INVALID"),
        ("refresh", "TOKEN_WRONG_TYPE"),
        ("garbage", "TOKEN_MALFORMED"),
        ("revoked", "TOKEN_REVOKED"),
    ],
)
async def test_unusable_tokens_are_unauthenticated(tamper: str, reason: str) -> None:
    signer, jwk = make_signer()
    other, _ = make_signer()
    makers: dict[str, Callable[[], str]] = {
        "expired": lambda: mint(
            signer,
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2),
            ttl=dt.timedelta(minutes=5),
        ),
        "unknown_key": lambda: mint(other),
        # Signed by another key but claiming the trusted key's id.
        "forged": lambda: jwt.encode(
            {**jwt.decode(mint(other), options={"verify_signature": False})},
            other._key,
            algorithm="EdDSA",
            headers={"kid": jwk["kid"]},
        ),
        "refresh": lambda: mint(signer, token_type="refresh"),
        "garbage": lambda: "not.a.token",
        "revoked": lambda: mint(signer),
    }
    token = makers[tamper]()
    revoked = set()
    if tamper == "revoked":
        revoked.add(jwt.decode(token, options={"verify_signature": False})["jti"])
    with pytest.raises(Unauthenticated) as info:
        await verifier_for(jwk, revoked=revoked).verify(token)
    assert info.value.reason == reason


async def test_a_cached_token_still_expires_and_can_be_revoked() -> None:
    signer, jwk = make_signer()
    revoked: set[str] = set()
    now = [time.time()]

    def is_revoked(principal: Principal) -> bool:
        return principal.token_id in revoked

    verifier = TokenVerifier(
        KeySet(jwks={"keys": [jwk]}),
        issuer="agentready",
        audience="agentready",
        is_revoked=is_revoked,
        clock=lambda: now[0],
    )
    token = mint(signer)
    principal = await verifier.verify(token)  # now cached
    revoked.add(principal.token_id)
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    assert info.value.reason == "TOKEN_REVOKED"
    revoked.clear()
    # Cached, then an hour later: the cache must not keep an expired token alive.
    now[0] += 3600
    with pytest.raises(Unauthenticated) as expired:
        await verifier.verify(token)
    assert expired.value.reason == "TOKEN_EXPIRED"


async def test_a_rotated_key_is_picked_up_from_the_jwks_file(tmp_path: Path) -> None:
    old, old_jwk = make_signer()
    new, new_jwk = make_signer()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [old_jwk]}))
    keys = KeySet(file=path, min_reload_seconds=0)
    verifier = TokenVerifier(keys, issuer="agentready", audience="agentready")
    assert (await verifier.verify(mint(old))).subject == "user-1"
    path.write_text(json.dumps({"keys": [old_jwk, new_jwk]}))
    assert (await verifier.verify(mint(new, subject="rotated"))).subject == "rotated"


def test_principal_requires_its_own_organization_and_the_scope() -> None:
    principal = Principal(
        subject="u",
        organization="acme",
        role="viewer",
        scopes=frozenset({"config:read"}),
        token_id="t",
        expires_at=dt.datetime.now(dt.UTC),
    )
    principal.require("acme", "config:read")
    with pytest.raises(PermissionDenied) as wrong_org:
        principal.require("globex", "config:read")
    assert wrong_org.value.reason == "WRONG_ORGANIZATION"
    with pytest.raises(PermissionDenied) as missing:
        principal.require("acme", "config:write")
    assert missing.value.reason == "MISSING_SCOPE"


async def test_keys_can_come_from_a_jwks_url() -> None:
    signer, jwk = make_signer()
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
        keys = await asyncio.to_thread(KeySet, url=url)
        verifier = TokenVerifier(keys, issuer="agentready", audience="agentready")
        assert (await verifier.verify(mint(signer))).subject == "user-1"
    finally:
        server.shutdown()
        server.server_close()


async def test_dev_tokens_for_an_organization_and_for_an_operator(tmp_path: Path) -> None:
    key_path, jwks_path = ensure_dev_keys(tmp_path)
    verifier = TokenVerifier(KeySet(file=jwks_path), issuer="agentready", audience="agentready")
    member = await verifier.verify(mint_dev_token(key_path, organization="demo", role="member"))
    member.require("demo", "config:read")
    with pytest.raises(PermissionDenied):
        member.require_operator("provisioner:read")
    operator = await verifier.verify(mint_dev_token(key_path, organization=None, role="operator"))
    assert operator.organization is None
    operator.require_operator("provisioner:read")
    operator.require("demo", "config:read")  # operators act in every organization
    with pytest.raises(PermissionDenied):
        operator.require("demo", "config:purge")  # with their own scopes only
    # A user's token without an organization is no operator's.
    user = await verifier.verify(mint_dev_token(key_path, organization=None, role="owner"))
    with pytest.raises(PermissionDenied) as info:
        user.require_operator("provisioner:read")
    assert info.value.reason == "OPERATOR_REQUIRED"
    with pytest.raises(PermissionDenied):
        user.require("demo", "config:read")
