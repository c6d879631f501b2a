"""JSON Web Tokens: signing (EdDSA with a key id) and offline verification.

TenantService signs tokens with a private Ed25519 key and publishes the public half as
a JWKS (``GetJwks``); every server verifies tokens offline against that JWKS, picking
the key by the token's ``kid`` header. Only access tokens are accepted on RPCs.

Claims: ``sub`` (user id or ``sa:<key id>``), ``org`` (organization slug, absent on a
token not scoped to one), ``role`` (owner, admin, member, viewer), ``scope``
(space-separated, e.g. ``config:read config:write``), ``jti``, ``typ`` (``access`` or
``refresh``), ``iss``, ``aud``, ``iat``, ``exp``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from servicekit.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
# JWK members that hold private key material (RFC 7518): never served.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
CLOCK_SKEW_SECONDS = 30
VERIFIED_CACHE_SIZE = 10_000

# What each role may do, as scopes. A token carries the scopes of its role at minting
# time; service-account tokens carry exactly the scopes their key was created with.
ROLE_SCOPES: Mapping[str, frozenset[str]] = {
    "owner": frozenset(
        {
            "org:admin",
            "org:read",
            "org:write",
            "config:read",
            "config:write",
            "provisioner:read",
            "provisioner:write",
        }
    ),
    "admin": frozenset(
        {
            "org:read",
            "org:write",
            "config:read",
            "config:write",
            "provisioner:read",
            "provisioner:write",
        }
    ),
    "member": frozenset({"org:read", "config:read", "provisioner:read"}),
    "viewer": frozenset({"org:read", "config:read", "provisioner:read"}),
    # Platform operators: act on any organization and on calls that span them. Only an
    # operator credential carries this role; TenantService never grants it to a user.
    "operator": frozenset(
        {
            "org:read",
            "config:read",
            "config:write",
            "provisioner:read",
            "provisioner:write",
        }
    ),
}

# Roles of the platform's own staff and services: not members of any organization,
# they act across organizations with exactly the scopes their token carries. The
# "service" role is what TenantService's sagas call the other services with.
PLATFORM_ROLES = frozenset({"operator", "service"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    subject: str
    organization: str | None
    role: str | None
    scopes: frozenset[str]
    token_id: str
    expires_at: dt.datetime
    issued_at: dt.datetime = dataclasses.field(default=dt.datetime.fromtimestamp(0, dt.UTC))
    key_id: str = ""

    @property
    def is_platform(self) -> bool:
        """Whether the caller is an operator or a platform service (not a tenant)."""
        return self.role in PLATFORM_ROLES and self.organization is None

    @property
    def is_service_account(self) -> bool:
        """Whether the token is a service-account key's (subject ``sa:<id>``)."""
        return self.subject.startswith("sa:")

    def require(self, organization: str, scope: str) -> None:
        """Checks that the caller acts inside ``organization`` with ``scope``.

        Operators and platform services act in every organization, with their scopes.

        Raises:
            PermissionDenied: the token belongs to another organization (or none), or
                lacks the scope.
        """
        if self.organization != organization and not self.is_platform:
            raise PermissionDenied(
                f"the token is not valid for organization {organization!r}",
                reason="WRONG_ORGANIZATION",
                metadata={"organization": organization},
            )
        if scope not in self.scopes:
            raise PermissionDenied(
                f"the token lacks the scope {scope!r}",
                reason="MISSING_SCOPE",
                metadata={"scope": scope},
            )

    def require_operator(self, scope: str) -> None:
        """Checks that the caller is an operator (or a platform service) with
        ``scope``, for calls that span organizations. A user's token without an
        organization is not an operator's: the role must say so.

        Raises:
            PermissionDenied: not an operator's token, or it lacks the scope.
        """
        if not self.is_platform:
            raise PermissionDenied(
                "this call spans organizations and needs an operator token",
                reason="OPERATOR_REQUIRED",
                metadata={"organization": self.organization or ""},
            )
        if scope not in self.scopes:
            raise PermissionDenied(
                f"the token lacks the scope {scope!r}",
                reason="MISSING_SCOPE",
                metadata={"scope": scope},
            )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 thumbprint of an OKP public key: a stable key id."""
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def generate_signing_key() -> tuple[bytes, dict[str, str]]:
    """A new Ed25519 key pair: (private key PEM, public JWK with its ``kid``)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_jwk(pem)


def public_jwk(private_pem: bytes) -> dict[str, str]:
    """The public JWK (with ``kid``) of an Ed25519 private key in PEM."""
    private = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("the signing key must be an Ed25519 key")
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "alg": ALGORITHM, "use": "sig"}
    jwk["kid"] = jwk_thumbprint(jwk)
    return jwk


class TokenSigner:
    """Mints signed tokens with one private key, naming it by ``kid``."""

    def __init__(self, private_pem: bytes, *, issuer: str, audience: str) -> None:
        key = serialization.load_pem_private_key(private_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key must be an Ed25519 key")
        self._key = key
        self.jwk = public_jwk(private_pem)
        self._issuer = issuer
        self._audience = audience

    def mint(
        self,
        *,
        subject: str,
        organization: str | None,
        role: str | None,
        scopes: Iterable[str],
        ttl: dt.timedelta,
        token_type: str = "access",  # noqa: S107 - a claim value, not a secret
        now: dt.datetime | None = None,
        token_id: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Returns (token, claims). EdDSA signatures are deterministic: the same claims
        and key give the same token (a retried key creation returns the same token)."""
        issued = now or dt.datetime.now(dt.UTC)
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "jti": token_id or str(uuid.uuid4()),
            "typ": token_type,
            "iat": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
            "scope": " ".join(sorted(set(scopes))),
        }
        if organization is not None:
            claims["org"] = organization
        if role is not None:
            claims["role"] = role
        token = jwt.encode(
            claims,
            self._key,
            algorithm=ALGORITHM,
            headers={"kid": self.jwk["kid"]},
        )
        return token, claims


class KeySet:
    """Public keys by ``kid``, from a JWKS file, a JWKS URL or a fixed document.

    The source is read again when it may have changed: a file when its modification
    time, inode or size changes (checked every second by the server), a URL every
    ``JWT_JWKS_RELOAD_SECONDS``, and either when a token names an unknown ``kid`` (at
    most every ``min_reload_seconds``). So a new key is picked up without a restart, and
    a key removed from the source stops verifying (see :meth:`TokenVerifier.refresh_keys`).
    """

    def __init__(
        self,
        *,
        jwks: Mapping[str, Any] | None = None,
        file: Path | None = None,
        url: str | None = None,
        min_reload_seconds: float = 10.0,
    ) -> None:
        self._file = file
        self._url = url
        self._min_reload = min_reload_seconds
        self._last_reload = float("-inf")
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._documents: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None
        if jwks is not None:
            self._keys, self._documents = self._parse(jwks)
        elif file is not None or url is not None:
            self.reload()

    @staticmethod
    def _parse(
        document: Mapping[str, Any],
    ) -> tuple[dict[str, jwt.PyJWK], dict[str, dict[str, Any]]]:
        keys: dict[str, jwt.PyJWK] = {}
        documents: dict[str, dict[str, Any]] = {}
        for entry in document.get("keys", []):
            kid = entry.get("kid")
            if not kid:
                continue
            try:
                keys[kid] = jwt.PyJWK(entry)
            except jwt.PyJWKError:
                continue  # A key of a kind we cannot use verifies nothing; skip it.
            # Public members only, whatever the file held.
            documents[kid] = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
        return keys, documents

    def public_keys(self) -> list[dict[str, Any]]:
        """The usable keys as public JWKs (for GetJwks)."""
        return list(self._documents.values())

    def reload(self) -> None:
        """Re-reads the source now (blocking: call it off the event loop)."""
        with self._lock:
            self._last_reload = time.monotonic()
            if self._file is not None:
                stamp = self._file_stamp()
                document = json.loads(self._file.read_text())
                self._stamp = stamp
            elif self._url is not None:
                with urllib.request.urlopen(self._url, timeout=5) as response:  # noqa: S310
                    document = json.loads(response.read())
            else:
                return
            self._keys, self._documents = self._parse(document)

    def _file_stamp(self) -> tuple[int, int, int]:
        assert self._file is not None
        stat = self._file.stat()
        return stat.st_mtime_ns, stat.st_ino, stat.st_size

    @property
    def from_url(self) -> bool:
        """Whether the keys come from a URL (reloaded on a schedule)."""
        return self._file is None and self._url is not None

    def file_changed(self) -> bool:
        """Whether the JWKS file differs from the one last read (blocking: a stat)."""
        if self._file is None:
            return False
        try:
            return self._file_stamp() != self._stamp
        except OSError:
            return False

    def kids(self) -> frozenset[str]:
        """The ids of the keys in force."""
        return frozenset(self._keys)

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The key named ``kid``, if known."""
        return self._keys.get(kid)

    def may_reload(self) -> bool:
        """Whether an unknown ``kid`` may trigger a reload now."""
        return (
            self._file is not None or self._url is not None
        ) and time.monotonic() - self._last_reload >= self._min_reload


# Returns True when a verified token has been revoked (see servicekit.revocation: an
# in-memory list kept current from Redis, so no call leaves the process).
RevocationCheck = Callable[["Principal"], bool]


class TokenVerifier:
    """Verifies access tokens offline and turns them into a :class:`Principal`."""

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        is_revoked: RevocationCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self.is_revoked = is_revoked
        self._clock = clock
        # Verified tokens, so a client's every call does not pay for the signature
        # check again; expiry and revocation are still checked on every call.
        self._verified: collections.OrderedDict[str, Principal] = collections.OrderedDict()

    @property
    def keys(self) -> KeySet:
        """The public keys tokens are verified with."""
        return self._keys

    async def refresh_keys(self) -> None:
        """Re-reads the keys (off the event loop) and forgets every cached verification
        made with a key that is gone: a key removed from the JWKS verifies nothing more,
        not even tokens it verified before."""
        try:
            await asyncio.to_thread(self._keys.reload)
        except (OSError, ValueError) as exc:
            log.warning("cannot reload the token verification keys, keeping them: %s", exc)
            return
        kids = self._keys.kids()
        stale = [token for token, p in self._verified.items() if p.key_id not in kids]
        for token in stale:
            del self._verified[token]
        if stale:
            log.info("dropped %d verified tokens of removed keys", len(stale))

    async def run_key_refresh(self, *, url_every: float, file_every: float = 1.0) -> None:
        """Forever (a background task): reloads a JWKS file when it changes, a JWKS URL
        every ``url_every`` seconds."""
        loop = asyncio.get_running_loop()
        next_url = loop.time() + url_every
        while True:
            await asyncio.sleep(file_every)
            if self._keys.from_url:
                if loop.time() >= next_url:
                    next_url = loop.time() + url_every
                    await self.refresh_keys()
            elif await asyncio.to_thread(self._keys.file_changed):
                await self.refresh_keys()

    async def verify(self, token: str) -> Principal:
        """Checks signature, key id, issuer, audience, expiry, type and revocation.

        Raises:
            Unauthenticated: the token is unusable; the message says why.
        """
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._verify_signature(token)
            self._verified[token] = principal
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        elif principal.expires_at.timestamp() + CLOCK_SKEW_SECONDS < self._clock():
            del self._verified[token]
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        if self.is_revoked is not None and self.is_revoked(principal):
            raise Unauthenticated("the token has been revoked", reason="TOKEN_REVOKED")
        return principal

    async def _verify_signature(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token", reason="TOKEN_MALFORMED") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no key id (kid)", reason="TOKEN_NO_KID")
        key = self._keys.get(kid)
        if key is None and self._keys.may_reload():
            # On a failed reload the old keys stay in force and judge the token.
            with contextlib.suppress(OSError, ValueError):
                await asyncio.to_thread(self._keys.reload)
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(f"unknown signing key {kid!r}", reason="TOKEN_UNKNOWN_KEY")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}", reason="TOKEN_INVALID") from None
        if claims.get("typ") != "access":
            raise Unauthenticated("not an access token", reason="TOKEN_WRONG_TYPE")
        scope = claims.get("scope", "")
        return Principal(
            subject=str(claims["sub"]),
            organization=claims.get("org"),
            role=claims.get("role"),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            token_id=str(claims["jti"]),
            expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
            issued_at=dt.datetime.fromtimestamp(int(claims["iat"]), dt.UTC),
            key_id=kid,
        )
