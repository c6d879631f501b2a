"""The ``arkctl`` command tree (Click), one asyncio run per command."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import click
from google.protobuf import json_format, struct_pb2

from agentready.cli import ROLLOUT_INCOMPLETE
from agentready.cli.app import ATTEMPTS, App, pass_app
from agentready.cli.output import FORMATS, as_dict, emit, message
from agentready.cli.settings import StoredLogin
from agentready.config.v1 import config_pb2
from agentready.credentials import Session
from agentready.errors import InvalidArgument, Unavailable
from agentready.flags import evaluate_flag
from agentready.provisioner.client import state_name
from agentready.tenant.client import role_name
from agentready.watcher import AsyncConfigWatcher, ConfigEvent, plain_value


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def _time(value: Any) -> str:
    return value.ToDatetime(tzinfo=dt.UTC).isoformat() if value.seconds else ""


# -- the root ------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--tenant-address", metavar="HOST:PORT", help="TenantService [ARKCTL_TENANT_ADDRESS]."
)
@click.option(
    "--config-address", metavar="HOST:PORT", help="ConfigService [ARKCTL_CONFIG_ADDRESS]."
)
@click.option(
    "--provisioner-address",
    metavar="HOST:PORT",
    help="ProvisionerService [ARKCTL_PROVISIONER_ADDRESS].",
)
@click.option("--org", "organization", metavar="SLUG", help="Organization to act in [ARKCTL_ORG].")
@click.option("--token", help="Bearer token to use instead of the stored login [ARKCTL_TOKEN].")
@click.option(
    "-o",
    "--output",
    type=click.Choice(FORMATS),
    help="table (default), json or yaml [ARKCTL_OUTPUT].",
)
@click.option(
    "--config-file",
    metavar="PATH",
    help="Settings file [ARKCTL_CONFIG; default $XDG_CONFIG_HOME/arkctl/config.yaml].",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per call.")
@click.version_option(package_name="agentready")
@click.pass_context
def cli(
    ctx: click.Context,
    tenant_address: str | None,
    config_address: str | None,
    provisioner_address: str | None,
    organization: str | None,
    token: str | None,
    output: str | None,
    config_file: str | None,
    timeout: float,
) -> None:
    """arkctl: operate the agent-ready control plane.

    Settings come from flags, then ARKCTL_* variables, then the config file
    ($XDG_CONFIG_HOME/arkctl/config.yaml: tenant_address, config_address,
    provisioner_address, organization, output, token). `arkctl login` keeps tokens in
    $XDG_CONFIG_HOME/arkctl/credentials.json (mode 0600), whatever --config-file says.

    Exit codes: 0 ok, 1 other failure, 2 invalid input, 3 not found, 4 permission
    denied, 5 not authenticated, 6 unavailable, 7 conflict, 8 rollout incomplete, 130 interrupted.

    \b
    Example:
      arkctl login --email ada@example.com --org acme
      arkctl -o json config get ai threshold
    """
    ctx.obj = App.load(
        tenant_address=tenant_address,
        config_address=config_address,
        provisioner_address=provisioner_address,
        organization=organization,
        output=output,
        token=token,
        config_file=config_file,
        timeout=timeout,
    )


# -- login / logout -----------------------------------------------------------------


@cli.command()
@click.option("--email", required=True, help="The user's email.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input [ARKCTL_PASSWORD].",
)
@pass_app
def login(app: App, email: str, password_stdin: bool) -> None:
    """Logs in and keeps the tokens (scoped to --org, if given) for the next commands.

    The password is read from standard input with --password-stdin, else from
    ARKCTL_PASSWORD, else asked for.

    \b
    Example:
      arkctl --org acme login --email ada@example.com
      echo "$PASSWORD" | arkctl login --email ada@example.com --password-stdin
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = os.environ.get("ARKCTL_PASSWORD") or click.prompt("Password", hide_input=True)

    async def go() -> None:
        session = await Session.login(
            app.tenant_address,
            email,
            password,
            organization=app.organization,
            timeout=app.timeout,
            attempts=ATTEMPTS,
        )
        with app.store.locked():
            app.store.save(StoredLogin(app.tenant_address, email, app.organization, session.tokens))
        await session.close(logout=False)
        scope = f" in {app.organization}" if app.organization else ""
        message(
            f"logged in as {email}{scope}",
            app.output,
            email=email,
            organization=app.organization,
            credentials=str(app.store.path),
        )

    run(go())


@cli.command()
@pass_app
def logout(app: App) -> None:
    """Logs out: revokes the stored tokens and forgets them.

    \b
    Example:
      arkctl logout
    """

    async def go() -> None:
        with app.store.locked():
            login = app.store.load()
            if login is not None:
                session = Session.resume(
                    login.tenant_address, login.tokens, timeout=app.timeout, attempts=ATTEMPTS
                )
                try:
                    await session.close()
                finally:
                    app.store.delete()
        message("logged out", app.output, logged_out=login is not None)

    run(go())


# -- organizations ------------------------------------------------------------------

ORG_COLUMNS = ["slug", "display_name", "state", "state_reason", "create_time"]


def org_row(org: Any) -> dict[str, Any]:
    row = as_dict(org)
    row["state"] = org.State.Name(org.state).removeprefix("STATE_").lower()
    return row


@cli.group()
def org() -> None:
    """Organizations (tenants).

    \b
    Example:
      arkctl org list
    """


@org.command("create")
@click.argument("slug")
@click.option("--display-name", default="", help="Human-readable name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeatable).")
@pass_app
def org_create(app: App, slug: str, display_name: str, labels: Sequence[str]) -> None:
    """Creates an organization; you become its owner.

    \b
    Example:
      arkctl org create acme --display-name "Acme Inc." --label tier=free
    """

    async def go() -> None:
        async with app.tenant(None) as client:
            created = await client.create_organization(
                slug, display_name=display_name, labels=_pairs(labels, "--label")
            )
        emit(org_row(created), app.output, columns=ORG_COLUMNS)

    run(go())


@org.command("list")
@click.option("--show-deleted", is_flag=True, help="Include deleted organizations.")
@pass_app
def org_list(app: App, show_deleted: bool) -> None:
    """Lists the organizations you are a member of.

    \b
    Example:
      arkctl org list --show-deleted
    """

    async def go() -> None:
        async with app.tenant(None) as client:
            rows = [org_row(o) async for o in client.list_organizations(show_deleted=show_deleted)]
        emit(rows, app.output, columns=ORG_COLUMNS)

    run(go())


@org.command("get")
@click.argument("slug", required=False)
@pass_app
def org_get(app: App, slug: str | None) -> None:
    """Shows an organization (default: --org).

    \b
    Example:
      arkctl org get acme
    """

    async def go() -> None:
        organization = app.org(slug)
        async with app.tenant(organization) as client:
            found = await client.get_organization(organization)
        emit(org_row(found), app.output, columns=[*ORG_COLUMNS, "labels", "uid"])

    run(go())


@org.command("delete")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def org_delete(app: App, slug: str, yes: bool) -> None:
    """Deletes an organization, its environment and configuration (owner only).

    \b
    Example:
      arkctl org delete acme --yes
    """
    if not yes:
        click.confirm(f"Delete organization {slug} and everything in it?", abort=True)

    async def go() -> None:
        async with app.tenant(slug) as client:
            await client.delete_organization(slug)
        message(f"deleting organization {slug}", app.output, organization=slug, deleting=True)

    run(go())


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        result[name] = value
    return result


# -- members ------------------------------------------------------------------------

MEMBER_COLUMNS = ["user_id", "email", "role", "create_time"]
ROLES = click.Choice(["owner", "admin", "member", "viewer"])


def member_row(member: Any) -> dict[str, Any]:
    row = as_dict(member)
    row["role"] = role_name(member.role)
    return row


@cli.group()
def member() -> None:
    """Members of an organization and their roles.

    \b
    Example:
      arkctl --org acme member list
    """


@member.command("add")
@click.argument("user")
@click.option("--role", type=ROLES, required=True, help="The member's role.")
@pass_app
def member_add(app: App, user: str, role: str) -> None:
    """Adds an existing user, by email or user id.

    \b
    Example:
      arkctl --org acme member add grace@example.com --role admin
    """

    async def go() -> None:
        organization = app.org()
        by = {"email": user} if "@" in user else {"user_id": user}
        async with app.tenant(organization) as client:
            added = await client.add_member(organization, role=role, **by)
        emit(member_row(added), app.output, columns=MEMBER_COLUMNS)

    run(go())


@member.command("list")
@pass_app
def member_list(app: App) -> None:
    """Lists the members of the organization.

    \b
    Example:
      arkctl --org acme -o json member list
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            rows = [member_row(m) async for m in client.list_members(organization)]
        emit(rows, app.output, columns=MEMBER_COLUMNS)

    run(go())


@member.command("update")
@click.argument("user_id")
@click.option("--role", type=ROLES, required=True, help="The new role.")
@pass_app
def member_update(app: App, user_id: str, role: str) -> None:
    """Changes a member's role.

    \b
    Example:
      arkctl --org acme member update 0b7e2c1a-5d3f-4a8e-9c61-2f4d8b9a1e07 --role viewer
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            updated = await client.update_member(organization, user_id, role=role)
        emit(member_row(updated), app.output, columns=MEMBER_COLUMNS)

    run(go())


@member.command("remove")
@click.argument("user_id")
@pass_app
def member_remove(app: App, user_id: str) -> None:
    """Removes a member (its tokens for the organization stop working).

    \b
    Example:
      arkctl --org acme member remove 0b7e2c1a-5d3f-4a8e-9c61-2f4d8b9a1e07
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            await client.remove_member(organization, user_id)
        message(f"removed {user_id}", app.output, user_id=user_id, removed=True)

    run(go())


# -- projects -----------------------------------------------------------------------

PROJECT_COLUMNS = ["id", "display_name", "description", "create_time"]


@cli.group()
def project() -> None:
    """Projects of an organization.

    \b
    Example:
      arkctl --org acme project list
    """


@project.command("create")
@click.argument("project_id")
@click.option("--display-name", default="", help="Human-readable name.")
@click.option("--description", default="", help="What it is for.")
@pass_app
def project_create(app: App, project_id: str, display_name: str, description: str) -> None:
    """Creates a project (its id is a DNS label, e.g. website).

    \b
    Example:
      arkctl --org acme project create website --display-name Website
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            created = await client.create_project(
                organization, project_id, display_name=display_name, description=description
            )
        emit(as_dict(created), app.output, columns=PROJECT_COLUMNS)

    run(go())


@project.command("list")
@pass_app
def project_list(app: App) -> None:
    """Lists the organization's projects.

    \b
    Example:
      arkctl --org acme project list
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            rows = [as_dict(p) async for p in client.list_projects(organization)]
        emit(rows, app.output, columns=PROJECT_COLUMNS)

    run(go())


@project.command("get")
@click.argument("project_id")
@pass_app
def project_get(app: App, project_id: str) -> None:
    """Shows a project.

    \b
    Example:
      arkctl --org acme project get website
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            found = await client.get_project(organization, project_id)
        emit(as_dict(found), app.output, columns=PROJECT_COLUMNS)

    run(go())


@project.command("delete")
@click.argument("project_id")
@pass_app
def project_delete(app: App, project_id: str) -> None:
    """Deletes a project and its notes.

    \b
    Example:
      arkctl --org acme project delete website
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            await client.delete_project(organization, project_id)
        message(f"deleted project {project_id}", app.output, id=project_id, deleted=True)

    run(go())


# -- service-account keys -------------------------------------------------------------

KEY_COLUMNS = ["id", "display_name", "scopes", "expire_time"]


@cli.group("sa-key")
def sa_key() -> None:
    """Service-account keys: tokens for pods, scoped to one organization.

    \b
    Example:
      arkctl --org acme sa-key list
    """


@sa_key.command("create")
@click.option("--scope", "scopes", multiple=True, required=True, help="e.g. config:read.")
@click.option("--name", default="", help="Display name.")
@click.option("--ttl-days", type=click.IntRange(1, 365), help="Lifetime (default 90 days).")
@pass_app
def sa_key_create(app: App, scopes: Sequence[str], name: str, ttl_days: int | None) -> None:
    """Creates a key and prints its token (shown only this once).

    \b
    Example:
      arkctl --org acme sa-key create --scope config:read --name pods --ttl-days 30
    """

    async def go() -> None:
        organization = app.org()
        ttl = dt.timedelta(days=ttl_days) if ttl_days else None
        async with app.tenant(organization) as client:
            created = await client.create_service_account_key(
                organization, scopes=scopes, display_name=name, ttl=ttl
            )
        row = as_dict(created.service_account_key)
        row["token"] = created.token
        if app.output != "table":
            emit(row, app.output)
            return
        emit(row, app.output, columns=KEY_COLUMNS)
        # On a line of its own, whole, to copy: it is shown only this once.
        click.echo(f"token (shown only this once):\n{created.token}")

    run(go())


@sa_key.command("list")
@pass_app
def sa_key_list(app: App) -> None:
    """Lists the organization's keys (without tokens).

    \b
    Example:
      arkctl --org acme sa-key list
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            rows = [as_dict(k) async for k in client.list_service_account_keys(organization)]
        emit(rows, app.output, columns=KEY_COLUMNS)

    run(go())


@sa_key.command("delete")
@click.argument("key_id")
@pass_app
def sa_key_delete(app: App, key_id: str) -> None:
    """Deletes a key; its token stops working at once.

    \b
    Example:
      arkctl --org acme sa-key delete 0b7e2c1a-5d3f-4a8e-9c61-2f4d8b9a1e07
    """

    async def go() -> None:
        organization = app.org()
        async with app.tenant(organization) as client:
            await client.delete_service_account_key(organization, key_id)
        message(f"deleted key {key_id}", app.output, id=key_id, deleted=True)

    run(go())


# -- configuration ------------------------------------------------------------------

ENTRY_COLUMNS = ["service", "key", "value", "revision", "update_time", "update_actor"]
HISTORY_COLUMNS = ["revision", "service", "key", "type", "old_value", "new_value", "actor"]
VALUE_TYPES = ["auto", "string", "int", "float", "bool", "json"]


def _plain(value: config_pb2.Value) -> Any:
    plain = plain_value(value)
    if isinstance(plain, config_pb2.FeatureFlag):
        return {"flag": json_format.MessageToDict(plain, preserving_proto_field_name=True)}
    return plain


def entry_row(entry: config_pb2.ConfigEntry) -> dict[str, Any]:
    return {
        "service": entry.service,
        "key": entry.key,
        "value": _plain(entry.value),
        "revision": entry.revision,
        "is_default": entry.is_default,
        "update_time": _time(entry.update_time),
        "update_actor": entry.update_actor,
        "etag": entry.etag,
    }


def parse_value(text: str, kind: str) -> Any:
    """The Python value of ``text`` read as ``kind`` (auto: JSON if it parses, else a
    string)."""
    try:
        if kind == "string":
            return text
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if kind == "json":
            return {"__json__": json.loads(text)}
    except ValueError as error:
        raise click.BadParameter(f"{text!r} is not a {kind}: {error}", param_hint="VALUE") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def to_config_value(value: Any) -> Any:
    """JSON given with --type json stays JSON, even a bare number."""
    if isinstance(value, dict) and set(value) == {"__json__"}:
        return config_pb2.Value(
            json_value=json_format.ParseDict(value["__json__"], struct_pb2.Value())
        )
    return value


@cli.group()
def config() -> None:
    """Configuration of an organization: keys per service, history, live changes.

    \b
    Example:
      arkctl --org acme config list ai
    """


@config.command("set")
@click.argument("service")
@click.argument("key")
@click.argument("value")
@click.option(
    "--type",
    "kind",
    type=click.Choice(VALUE_TYPES),
    default="auto",
    show_default=True,
    help="How to read VALUE (auto: JSON if it parses, else a string).",
)
@click.option("--reason", default="", help="Why, kept in the history.")
@click.option(
    "--expected-revision", type=int, help="Fail (exit 7) unless the key is at this revision."
)
@pass_app
def config_set(
    app: App,
    service: str,
    key: str,
    value: str,
    kind: str,
    reason: str,
    expected_revision: int | None,
) -> None:
    """Sets a key; prints its entry with the new revision.

    \b
    Example:
      arkctl --org acme config set ai threshold 0.75 --reason "tuning"
      arkctl --org acme config set ai model large --type string
    """
    parsed = parse_value(value, kind)

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            entry = await client.set(
                service,
                key,
                to_config_value(parsed),
                reason=reason,
                expected_revision=expected_revision,
            )
        emit(entry_row(entry), app.output, columns=ENTRY_COLUMNS)

    run(go())


@config.command("get")
@click.argument("service")
@click.argument("key")
@pass_app
def config_get(app: App, service: str, key: str) -> None:
    """Shows a key's value (its schema default when unset).

    \b
    Example:
      arkctl --org acme -o json config get ai threshold
    """

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            entry = await client.get(service, key)
        emit(entry_row(entry), app.output, columns=[*ENTRY_COLUMNS, "is_default"])

    run(go())


@config.command("list")
@click.argument("service", required=False, default="")
@pass_app
def config_list(app: App, service: str) -> None:
    """Lists the keys that are set (of one service, if given).

    \b
    Example:
      arkctl --org acme config list ai
    """

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            rows = [entry_row(e) async for e in client.entries(service)]
        emit(rows, app.output, columns=ENTRY_COLUMNS)

    run(go())


@config.command("delete")
@click.argument("service")
@click.argument("key")
@click.option("--reason", default="", help="Why, kept in the history.")
@pass_app
def config_delete(app: App, service: str, key: str, reason: str) -> None:
    """Deletes a key (a new revision).

    \b
    Example:
      arkctl --org acme config delete ai threshold --reason "back to the default"
    """

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            await client.delete(service, key, reason=reason)
        message(f"deleted {service}/{key}", app.output, service=service, key=key, deleted=True)

    run(go())


def history_row(entry: config_pb2.ConfigHistoryEntry) -> dict[str, Any]:
    return {
        "revision": entry.revision,
        "service": entry.service,
        "key": entry.key,
        "type": config_pb2.ChangeType.Name(entry.type).removeprefix("CHANGE_TYPE_").lower(),
        "old_value": _plain(entry.old_value) if entry.HasField("old_value") else None,
        "new_value": _plain(entry.new_value) if entry.HasField("new_value") else None,
        "actor": entry.actor,
        "reason": entry.reason,
        "create_time": _time(entry.create_time),
    }


@config.command("history")
@click.argument("service", required=False, default="")
@click.argument("key", required=False, default="")
@click.option("--since", "start_revision", type=int, default=0, help="From this revision.")
@pass_app
def config_history(app: App, service: str, key: str, start_revision: int) -> None:
    """Shows the change history, oldest first (of a service or key, if given).

    \b
    Example:
      arkctl --org acme config history ai threshold
    """

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            rows = [
                history_row(h)
                async for h in client.history(service, key, start_revision=start_revision)
            ]
        emit(rows, app.output, columns=HISTORY_COLUMNS)

    run(go())


@config.command("rollback")
@click.argument("revision", type=click.IntRange(min=0))
@click.option("--service", default="", help="Only this service.")
@click.option("--key", default="", help="Only this key (with --service).")
@click.option("--reason", default="", help="Why, kept in the history.")
@pass_app
def config_rollback(app: App, revision: int, service: str, key: str, reason: str) -> None:
    """Restores the state at REVISION as a new revision.

    \b
    Example:
      arkctl --org acme config rollback 41 --service ai --reason "bad rollout"
    """

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            result = await client.rollback(revision, service=service, key=key, reason=reason)
        message(
            f"rolled back to revision {revision}: now at revision {result.revision}",
            app.output,
            revision=result.revision,
            restored=revision,
        )

    run(go())


@config.command("watch")
@click.option("--service", "services", multiple=True, help="Only this service (repeatable).")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many changes.")
@pass_app
def config_watch(app: App, services: Sequence[str], count: int | None) -> None:
    """Prints each change live, with its revision and delay (commit to arrival).

    Starts with a line for the snapshot; JSON output is one object a line.

    \b
    Example:
      arkctl --org acme config watch --service ai
    """

    async def go() -> None:
        organization = app.org()
        token = await app.credentials(organization)
        events: asyncio.Queue[tuple[ConfigEvent, float]] = asyncio.Queue()
        watcher = AsyncConfigWatcher(
            app.config_address,
            organization,
            token=token,
            services=services,
            on_change=lambda event: events.put_nowait((event, time.time())),
            report_status=False,  # an operator looking on is not a client of the rollout
        )
        try:
            await watcher.start(timeout=app.timeout)
            seen = 0
            while count is None or seen < count:
                event, arrived = await events.get()
                if event.snapshot:
                    _print_line(
                        app.output,
                        f"snapshot at revision {event.revision}: {len(watcher.entries())} keys",
                        type="snapshot",
                        revision=event.revision,
                        keys=len(watcher.entries()),
                    )
                    continue
                seen += 1
                for change in event.changes:
                    _print_change(app.output, event.revision, change, arrived)
        finally:
            await watcher.stop()
            await app.close()

    try:
        run(go())
    except TimeoutError:
        raise Unavailable(f"no snapshot from {app.config_address} within {app.timeout} s") from None


def client_row(client: config_pb2.ConfigClient, target: int) -> dict[str, Any]:
    if client.applied_revision >= target:
        status = "applied"
    elif client.rejected_revision >= target:
        status = "refused"
    else:
        status = "behind"
    return {
        "client": client.client_id,
        "labels": ",".join(f"{k}={v}" for k, v in sorted(client.labels.items())),
        "status": status,
        "applied": client.applied_revision,
        "lag": client.lag,
        "refused": client.rejected_revision or "",
        "reason": client.rejection_reason,
        "last_seen": _time(client.last_seen),
    }


CLIENT_COLUMNS = ["client", "labels", "status", "applied", "lag", "refused", "reason", "last_seen"]


@config.command("rollout")
@click.option(
    "-l", "--selector", default="", help="Only clients with these labels: app=web,tier!=canary."
)
@click.option(
    "--revision",
    type=click.IntRange(min=0),
    help="The revision to roll out (default: the organization's current one).",
)
@click.option("--wait", is_flag=True, help="Wait until every client has applied it.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds --wait waits before giving up (exit 8).",
)
@pass_app
def config_rollout(
    app: App, selector: str, revision: int | None, wait: bool, wait_timeout: float
) -> int:
    """Shows which watching client (pod) has applied which revision, with its lag and
    its last refusal. With --wait, blocks until every client (of --selector) has
    applied the revision and exits 0; a client that refuses it, no client at all, or a
    wait past --wait-timeout ends with the stragglers listed and exit code 8.

    \b
    Example:
      arkctl --org acme config set ai threshold 0.8
      arkctl --org acme config rollout --selector app=checkout --wait --wait-timeout 120
    """

    async def go() -> int:
        organization = app.org()
        async with app.config(organization) as client:
            current, clients = await client.clients(selector)
            target = current if revision is None else revision
            deadline = time.monotonic() + wait_timeout
            while wait:
                rows = [client_row(c, target) for c in clients]
                if rows and all(r["status"] == "applied" for r in rows):
                    break
                if any(r["status"] == "refused" for r in rows) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
                _, clients = await client.clients(selector)
        rows = [client_row(c, target) for c in clients]
        stragglers = [r for r in rows if r["status"] != "applied"]
        if app.output == "table":
            emit(rows, app.output, columns=CLIENT_COLUMNS)
            done = len(rows) - len(stragglers)
            click.echo(f"revision {target}: {done} of {len(rows)} clients applied it")
        else:
            emit(
                {"revision": target, "clients": rows, "complete": bool(rows) and not stragglers},
                app.output,
                columns=[],
            )
        # No client at all (a mistyped selector, pods not up) is no finished rollout.
        return ROLLOUT_INCOMPLETE if wait and (stragglers or not rows) else 0

    return asyncio.run(go())  # the exit code (arkctl's main returns it)


def _print_line(fmt: str, text: str, **fields: Any) -> None:
    if fmt == "table":
        click.echo(text)
    elif fmt == "json":
        click.echo(json.dumps(fields, sort_keys=True, default=str))
    else:
        import yaml  # type: ignore[import-untyped, unused-ignore]

        click.echo("---\n" + yaml.safe_dump(json.loads(json.dumps(fields, default=str))).rstrip())
    sys.stdout.flush()


def _print_change(fmt: str, revision: int, change: config_pb2.ConfigChange, arrived: float) -> None:
    deleted = change.type == config_pb2.CHANGE_TYPE_DELETE
    delay_ms: float | None = None
    if not deleted and change.entry.update_time.seconds:
        committed = change.entry.update_time.ToDatetime(tzinfo=dt.UTC).timestamp()
        delay_ms = round(max(0.0, arrived - committed) * 1000, 1)
    value = None if deleted else _plain(change.entry.value)
    shown = "deleted" if deleted else f"= {json.dumps(value)}"
    delay = "" if delay_ms is None else f"  ({delay_ms} ms)"
    _print_line(
        fmt,
        f"revision {revision}  {change.service}/{change.key} {shown}{delay}",
        type="delete" if deleted else "set",
        revision=revision,
        service=change.service,
        key=change.key,
        value=value,
        delay_ms=delay_ms,
    )


# -- feature flags ------------------------------------------------------------------


@cli.group()
def flag() -> None:
    """Feature flags: set them, evaluate them for a subject as every pod would.

    \b
    Example:
      arkctl --org acme flag eval ai new-model user-42
    """


@flag.command("set")
@click.argument("service")
@click.argument("key")
@click.option("--on/--off", "enabled", default=True, show_default=True, help="Master switch.")
@click.option("--percent", type=click.FloatRange(0, 100), help="Share of subjects (default all).")
@click.option("--allow", multiple=True, help="A subject always on (repeatable).")
@click.option("--deny", multiple=True, help="A subject always off (repeatable).")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME=WEIGHT",
    help="A variant and its weight (repeatable).",
)
@click.option("--default-variant", default="", help="The variant of subjects that are off.")
@click.option("--reason", default="", help="Why, kept in the history.")
@pass_app
def flag_set(
    app: App,
    service: str,
    key: str,
    enabled: bool,
    percent: float | None,
    allow: Sequence[str],
    deny: Sequence[str],
    variants: Sequence[str],
    default_variant: str,
    reason: str,
) -> None:
    """Sets a feature flag.

    \b
    Example:
      arkctl --org acme flag set ai new-model --on --percent 10 --allow user-1
    """
    weights = []
    for name, weight in _pairs(variants, "--variant").items():
        try:
            weights.append(config_pb2.FlagVariant(name=name, weight=int(weight)))
        except ValueError:
            raise click.BadParameter(
                f"weight {weight!r} is not a number", param_hint="--variant"
            ) from None
    feature = config_pb2.FeatureFlag(
        enabled=enabled,
        allow_list=list(allow),
        deny_list=list(deny),
        variants=weights,
        default_variant=default_variant,
    )
    if percent is not None:
        feature.rollout_percent = percent

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            entry = await client.set(service, key, feature, reason=reason)
        emit(entry_row(entry), app.output, columns=ENTRY_COLUMNS)

    run(go())


@flag.command("eval")
@click.argument("service")
@click.argument("key")
@click.argument("subject")
@pass_app
def flag_eval(app: App, service: str, key: str, subject: str) -> None:
    """Evaluates a flag for SUBJECT, by the same stable hash as the SDK in every pod.

    \b
    Example:
      arkctl --org acme -o json flag eval ai new-model user-42
    """

    async def go() -> None:
        organization = app.org()
        async with app.config(organization) as client:
            entry = await client.get(service, key)
        if entry.value.WhichOneof("kind") != "flag_value":
            raise InvalidArgument(f"{service}/{key} is not a feature flag")
        result = evaluate_flag(entry.value.flag_value, subject, service=service, key=key)
        emit(
            {
                "subject": subject,
                "enabled": result.enabled,
                "variant": result.variant,
                "value": result.value,
                "reason": result.reason,
                "revision": entry.revision,
            },
            app.output,
        )

    run(go())


# -- tenant environments ------------------------------------------------------------

ENV_COLUMNS = ["organization", "namespace", "state", "quota", "quota_used", "last_error"]


def env_row(environment: Any) -> dict[str, Any]:
    row = as_dict(environment)
    row["state"] = state_name(environment.state)
    row["backend"] = environment.Backend.Name(environment.backend).removeprefix("BACKEND_").lower()
    return row


@cli.group()
def tenant() -> None:
    """Tenant environments: namespace, guards and quota of each organization.

    \b
    Example:
      arkctl tenant status acme
    """


@tenant.command("status")
@click.argument("organization", required=False)
@pass_app
def tenant_status(app: App, organization: str | None) -> None:
    """Shows an organization's environment and its observed status (default: --org).

    \b
    Example:
      arkctl -o yaml tenant status acme
    """

    async def go() -> None:
        slug = app.org(organization)
        async with app.provisioner(slug) as client:
            environment = await client.get_environment(slug)
        row = env_row(environment)
        row["conditions"] = {
            c["type"]: c.get("status", "").removeprefix("STATUS_").lower()
            for c in row.get("conditions", [])
        }
        emit(
            row, app.output, columns=[*ENV_COLUMNS, "backend", "conditions", "last_reconcile_time"]
        )

    run(go())


@tenant.command("quota")
@click.argument("organization", required=False)
@click.option("--cpu", help="New CPU quota, e.g. 4.")
@click.option("--memory", help="New memory quota, e.g. 8Gi.")
@click.option("--storage", help="New storage quota, e.g. 20Gi.")
@click.option("--reason", default="", help="Why, kept in the quota history.")
@pass_app
def tenant_quota(
    app: App,
    organization: str | None,
    cpu: str | None,
    memory: str | None,
    storage: str | None,
    reason: str,
) -> None:
    """Shows the quota (hard and used), or changes the parts given.

    \b
    Example:
      arkctl tenant quota acme
      arkctl tenant quota acme --cpu 4 --memory 8Gi --reason "bigger plan"
    """

    async def go() -> None:
        slug = app.org(organization)
        async with app.provisioner(slug) as client:
            if cpu is None and memory is None and storage is None:
                environment = await client.get_environment(slug)
            else:
                environment = await client.update_quota(
                    slug, cpu=cpu, memory=memory, storage=storage, reason=reason
                )
        quota = environment.quota
        rows = [
            {
                "resource": name,
                "quota": getattr(quota, name),
                "hard": dict(environment.quota_hard).get(f"requests.{name}", ""),
                "used": dict(environment.quota_used).get(f"requests.{name}", ""),
            }
            for name in ("cpu", "memory", "storage")
        ]
        emit(rows, app.output, columns=["resource", "quota", "hard", "used"])

    run(go())


@tenant.command("list")
@click.option(
    "--state", type=click.Choice(["provisioning", "ready", "failed", "deleting", "deleted"])
)
@pass_app
def tenant_list(app: App, state: str | None) -> None:
    """Lists every environment (an operator's token).

    \b
    Example:
      arkctl --token "$OPERATOR_TOKEN" tenant list --state failed
    """

    async def go() -> None:
        async with app.provisioner(None) as client:
            rows = [env_row(e) async for e in client.list_environments(state=state)]
        emit(rows, app.output, columns=ENV_COLUMNS)

    run(go())
