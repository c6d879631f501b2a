"""Who may call what: TenantService's permission matrix, in one place.

Each RPC that needs a token has a :class:`Rule`. A user token scoped to the RPC's
organization passes when its role is at least ``role``; a service-account token passes
when it carries ``scope`` (``scope`` None: keys may not make the call); an operator or
platform service passes with ``scope`` too (reads only: they carry no ``org:write``).
Some RPCs add a rule of their own on top (only an owner grants or removes the owner
role; any member may leave); those are checked where they apply, with
:func:`require_role`. The README's table is generated from :data:`RULES` and a test
checks they agree.
"""

from __future__ import annotations

import dataclasses

from servicekit.auth import Principal
from servicekit.errors import PermissionDenied
from tenant_service.domain.model import Role


@dataclasses.dataclass(frozen=True)
class Rule:
    """What an RPC needs.

    Attributes:
        role: least role of a user token scoped to the organization; None for RPCs
            that name no organization (any user token passes).
        scope: what a service-account or platform token must carry; None refuses them.
    """

    role: Role | None
    scope: str | None


READ, WRITE = "org:read", "org:write"
RULES: dict[str, Rule] = {
    "GetUser": Rule(None, None),
    "Logout": Rule(None, None),
    "CreateOrganization": Rule(None, None),
    "ListOrganizations": Rule(None, None),
    "GetOrganization": Rule(Role.VIEWER, READ),
    "UpdateOrganization": Rule(Role.ADMIN, WRITE),
    "DeleteOrganization": Rule(Role.OWNER, None),
    "CreateMember": Rule(Role.ADMIN, WRITE),
    "GetMember": Rule(Role.VIEWER, READ),
    "ListMembers": Rule(Role.VIEWER, READ),
    "UpdateMember": Rule(Role.ADMIN, WRITE),
    "DeleteMember": Rule(Role.ADMIN, WRITE),
    "CreateProject": Rule(Role.MEMBER, WRITE),
    "GetProject": Rule(Role.VIEWER, READ),
    "ListProjects": Rule(Role.VIEWER, READ),
    "UpdateProject": Rule(Role.MEMBER, WRITE),
    "DeleteProject": Rule(Role.MEMBER, WRITE),
    "CreateNote": Rule(Role.MEMBER, WRITE),
    "GetNote": Rule(Role.VIEWER, READ),
    "ListNotes": Rule(Role.VIEWER, READ),
    "UpdateNote": Rule(Role.MEMBER, WRITE),
    "DeleteNote": Rule(Role.MEMBER, WRITE),
    "CreateServiceAccountKey": Rule(Role.ADMIN, None),
    "ListServiceAccountKeys": Rule(Role.ADMIN, None),
    "DeleteServiceAccountKey": Rule(Role.ADMIN, None),
}
# Served without a token.
PUBLIC = ("CreateUser", "Login", "RefreshToken", "GetJwks")


@dataclasses.dataclass(frozen=True)
class Caller:
    """The caller of an RPC, once authorized.

    Attributes:
        subject: user id, ``sa:<key id>`` or a platform subject.
        role: the member's role for user tokens; None for keys and platform tokens.
        user: whether it is a person's token (not a key's or the platform's).
    """

    subject: str
    role: Role | None
    user: bool


def caller_of(principal: Principal) -> Caller:
    """The caller a verified token describes."""
    user = not principal.is_service_account and not principal.is_platform
    role = Role(principal.role) if user and principal.role in _ROLE_NAMES else None
    return Caller(principal.subject, role, user)


_ROLE_NAMES = frozenset(r.value for r in Role)


def check(method: str, principal: Principal, organization: str | None) -> Caller:
    """Checks ``principal`` against the rule of ``method``.

    Raises:
        PermissionDenied: with reason WRONG_ORGANIZATION, MISSING_SCOPE, ROLE_TOO_LOW or
            USER_TOKEN_REQUIRED.
    """
    rule = RULES[method]
    caller = caller_of(principal)
    if rule.role is None or organization is None:
        if not caller.user:
            raise PermissionDenied(f"{method} needs a user's token", reason="USER_TOKEN_REQUIRED")
        return caller
    if not caller.user:
        if rule.scope is None:
            raise PermissionDenied(
                f"{method} needs a user's token; service-account and platform tokens "
                "cannot make it",
                reason="USER_TOKEN_REQUIRED",
            )
        principal.require(organization, rule.scope)
        return caller
    if principal.organization != organization:
        raise PermissionDenied(
            f"the token is not valid for organization {organization!r}; switch with RefreshToken",
            reason="WRONG_ORGANIZATION",
            metadata={"organization": organization},
        )
    require_role(caller, rule.role)
    return caller


def require_role(caller: Caller, role: Role) -> None:
    """Checks that a user caller's role is at least ``role``.

    Raises:
        PermissionDenied: reason ROLE_TOO_LOW (or USER_TOKEN_REQUIRED for keys).
    """
    if caller.role is None:
        raise PermissionDenied(
            f"this needs the role {role.value}, which only a user's token carries",
            reason="USER_TOKEN_REQUIRED",
        )
    if not caller.role.at_least(role):
        raise PermissionDenied(
            f"this needs the role {role.value} or higher (the token's role is {caller.role.value})",
            reason="ROLE_TOO_LOW",
            metadata={"required_role": role.value, "role": caller.role.value},
        )


def markdown_table() -> str:
    """The matrix as the README shows it."""
    lines = [
        "| RPC | user token: least role | service-account key: scope |",
        "|---|---|---|",
    ]
    for name in PUBLIC:
        lines.append(f"| `{name}` | public (no token) | public |")
    for name, rule in RULES.items():
        role = "any user" if rule.role is None else rule.role.value
        scope = f"`{rule.scope}`" if rule.scope else "refused"
        lines.append(f"| `{name}` | {role} | {scope} |")
    return "\n".join(lines)
