"""``arkctl`` as a user runs it: the installed console script, as a subprocess, against
real servers. Each command's table and JSON output and its exit code are checked;
settings come from flags, environment and config file in that order; tokens live in
a file only its owner may read."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc
import pytest
from agentready import ConfigClient, TenantClient
from agentready.cli import commands
from agentready.cli.settings import CredentialStore, StoredLogin

from servicekit.devstack import free_port
from servicekit.server import RunningServer
from tests.conftest import Keys
from tests.e2e.tenant_support import PASSWORD, TenantApi, new_email, new_slug
from tests.e2e.test_sdk_tenant_client import expired_pair
from tests.e2e.watching import eventually

Servers = dict[str, RunningServer]


def arkctl_path() -> str:
    """The console script installed with the SDK (beside this interpreter)."""
    beside = Path(sys.executable).parent / "arkctl"
    found = str(beside) if beside.exists() else shutil.which("arkctl")
    assert found, "arkctl is not installed: `pip install ./sdk` installs it"
    return found


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Arkctl:
    """Runs arkctl with a config folder of its own and the servers' addresses."""

    def __init__(self, servers: Servers, home: Path) -> None:
        self.home = home
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "COLUMNS": "200",
            "ARKCTL_TENANT_ADDRESS": f"127.0.0.1:{servers['tenant'].port}",
            "ARKCTL_CONFIG_ADDRESS": f"127.0.0.1:{servers['config'].port}",
            "ARKCTL_PROVISIONER_ADDRESS": f"127.0.0.1:{servers['provisioner'].port}",
        }

    @property
    def credentials(self) -> Path:
        return self.home / "config" / "arkctl" / "credentials.json"

    async def __call__(
        self, *args: str, stdin: str = "", env: Mapping[str, str] | None = None
    ) -> Result:
        # Asynchronous: the servers run on this test's event loop.
        process = await asyncio.create_subprocess_exec(
            arkctl_path(),
            *args,
            env={**self.env, **(env or {})},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, **options: Any) -> Result:
        result = await self(*args, **options)
        assert result.code == 0, f"arkctl {' '.join(args)}: {result}"
        return result


@pytest.fixture
def arkctl(servers: Servers, tmp_path: Path) -> Arkctl:
    return Arkctl(servers, tmp_path)


async def signup(servers: Servers) -> str:
    async with TenantClient(f"127.0.0.1:{servers['tenant'].port}") as public:
        email = new_email()
        await public.create_user(email, PASSWORD)
        return email


async def test_every_command_with_table_and_json_output(arkctl: Arkctl, servers: Servers) -> None:
    email = await signup(servers)
    friend = await signup(servers)
    slug, other = new_slug(), new_slug()

    # login / logout; the tokens' file is its owner's alone.
    login = await arkctl.ok("login", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")
    assert f"logged in as {email}" in login.out
    assert stat.S_IMODE(arkctl.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(arkctl.credentials.parent.stat().st_mode) == 0o700

    # org create | list | get | delete
    assert slug in (await arkctl.ok("org", "create", slug, "--display-name", "Acme")).out
    created = (await arkctl.ok("-o", "json", "org", "create", other)).json()
    assert created["slug"] == other
    listed = (await arkctl.ok("-o", "json", "org", "list")).json()
    assert {o["slug"] for o in listed} == {slug, other}
    table = (await arkctl.ok("org", "list")).out
    assert "SLUG" in table
    assert slug in table
    assert other in table
    got = (await arkctl.ok("-o", "json", "org", "get", slug)).json()
    assert (got["slug"], got["display_name"]) == (slug, "Acme")
    assert "Acme" in (await arkctl.ok("--org", slug, "org", "get")).out
    yaml_out = (await arkctl.ok("-o", "yaml", "org", "get", slug)).out
    assert f"slug: {slug}" in yaml_out

    org = ("--org", slug)
    # member add | list | update | remove
    added = (
        await arkctl.ok(*org, "-o", "json", "member", "add", friend, "--role", "viewer")
    ).json()
    assert added["role"] == "viewer"
    user_id = added["user_id"]
    assert friend in (await arkctl.ok(*org, "member", "list")).out
    members = (await arkctl.ok(*org, "-o", "json", "member", "list")).json()
    assert sorted(m["role"] for m in members) == ["owner", "viewer"]
    updated = (
        await arkctl.ok(*org, "-o", "json", "member", "update", user_id, "--role", "admin")
    ).json()
    assert updated["role"] == "admin"
    assert "removed" in (await arkctl.ok(*org, "member", "remove", user_id)).out
    assert len((await arkctl.ok(*org, "-o", "json", "member", "list")).json()) == 1

    # project create | list | get | delete
    assert "website" in (await arkctl.ok(*org, "project", "create", "website")).out
    assert (await arkctl.ok(*org, "-o", "json", "project", "list")).json()[0]["id"] == "website"
    assert "website" in (await arkctl.ok(*org, "project", "list")).out
    assert (await arkctl.ok(*org, "-o", "json", "project", "get", "website")).json()["id"]
    await arkctl.ok(*org, "project", "delete", "website")
    assert (await arkctl(*org, "project", "get", "website")).code == 3

    # sa-key create | list | delete
    key = (await arkctl.ok(*org, "-o", "json", "sa-key", "create", "--scope", "config:read")).json()
    assert key["token"]
    assert key["scopes"] == ["config:read"]
    assert key["id"] in (await arkctl.ok(*org, "sa-key", "list")).out
    shown = (await arkctl.ok(*org, "sa-key", "create", "--scope", "config:read")).out
    token = shown.split("shown only this once):\n")[1].strip()
    assert len(token.split(".")) == 3  # a whole JWT, not cut to the terminal's width
    assert token.split(".")[2]
    await arkctl.ok(*org, "sa-key", "delete", key["id"])
    assert len((await arkctl.ok(*org, "-o", "json", "sa-key", "list")).json()) == 1

    # config set | get | list | delete | history | rollback
    entry = (await arkctl.ok(*org, "-o", "json", "config", "set", "ai", "threshold", "0.75")).json()
    assert (entry["value"], entry["revision"]) == (0.75, 1)
    await arkctl.ok(*org, "config", "set", "ai", "model", "large", "--reason", "bigger")
    await arkctl.ok(*org, "config", "set", "ai", "limits", '{"rpm": 600}', "--type", "json")
    got = (await arkctl.ok(*org, "-o", "json", "config", "get", "ai", "threshold")).json()
    assert got["value"] == 0.75
    assert "large" in (await arkctl.ok(*org, "config", "get", "ai", "model")).out
    entries = (await arkctl.ok(*org, "-o", "json", "config", "list", "ai")).json()
    assert {e["key"]: e["value"] for e in entries} == {
        "threshold": 0.75,
        "model": "large",
        "limits": {"rpm": 600},
    }
    assert "threshold" in (await arkctl.ok(*org, "config", "list")).out
    await arkctl.ok(*org, "config", "delete", "ai", "threshold")
    history = (await arkctl.ok(*org, "-o", "json", "config", "history", "ai")).json()
    assert [(h["revision"], h["key"], h["type"]) for h in history] == [
        (1, "threshold", "set"),
        (2, "model", "set"),
        (3, "limits", "set"),
        (4, "threshold", "delete"),
    ]
    assert "threshold" in (await arkctl.ok(*org, "config", "history")).out
    rolled = (await arkctl.ok(*org, "-o", "json", "config", "rollback", "1")).json()
    assert rolled == {"restored": 1, "revision": 5}
    assert "revision 6" in (await arkctl.ok(*org, "config", "rollback", "3")).out
    assert (await arkctl.ok(*org, "-o", "json", "config", "get", "ai", "threshold")).json()[
        "value"
    ] == 0.75

    # flag set | eval
    await arkctl.ok(
        *org, "flag", "set", "ai", "new-model", "--on", "--percent", "0", "--allow", "u1"
    )
    on = (await arkctl.ok(*org, "-o", "json", "flag", "eval", "ai", "new-model", "u1")).json()
    assert (on["enabled"], on["reason"]) == (True, "allowed")
    off = await arkctl.ok(*org, "flag", "eval", "ai", "new-model", "u2")
    assert "excluded" in off.out
    not_a_flag = await arkctl(*org, "flag", "eval", "ai", "model", "u1")
    assert not_a_flag.code == 2
    assert "not a feature flag" in not_a_flag.err

    # tenant status | quota
    status = (await arkctl.ok("-o", "json", "tenant", "status", slug)).json()
    assert (status["organization"], status["state"]) == (slug, "ready")
    assert set(status["conditions"].values()) == {"true"}
    assert f"org-{slug}" in (await arkctl.ok(*org, "tenant", "status")).out
    quota = (await arkctl.ok("-o", "json", "tenant", "quota", slug, "--cpu", "4")).json()
    assert {q["resource"]: q["quota"] for q in quota}["cpu"] == "4"
    assert "RESOURCE" in (await arkctl.ok("tenant", "quota", slug)).out

    # org delete, then logout: the stored tokens are revoked and forgotten.
    assert "deleting" in (await arkctl.ok("org", "delete", other, "--yes")).out
    assert (await arkctl("org", "delete", other)).code == 130  # asks; no answer: aborted
    await arkctl.ok("logout")
    assert not arkctl.credentials.exists()
    assert (await arkctl("org", "list")).code == 5


async def test_exit_codes_tell_what_went_wrong(
    arkctl: Arkctl, servers: Servers, keys: Keys
) -> None:
    organization = new_slug()
    owner = ("--org", organization, "--token", keys.token(organization))
    await arkctl.ok(*owner, "config", "set", "ai", "k", "1")
    not_found = await arkctl(*owner, "config", "get", "ai", "missing")
    assert not_found.code == 3
    assert "NOT_FOUND" in not_found.err
    invalid = await arkctl(*owner, "config", "set", "AI", "k", "1")
    assert invalid.code == 2
    assert "service" in invalid.err  # the field violation is shown
    assert (await arkctl(*owner, "config", "set", "ai")).code == 2  # usage
    assert (await arkctl(*owner, "config", "set", "ai", "k", "x", "--type", "int")).code == 2
    viewer = ("--org", organization, "--token", keys.token(organization, "viewer"))
    assert (await arkctl(*viewer, "config", "set", "ai", "k", "2")).code == 4
    assert (await arkctl("--org", organization, "--token", "garbage", "config", "list")).code == 5
    assert (await arkctl("--org", organization, "config", "list")).code == 5  # not logged in
    conflict = await arkctl(*owner, "config", "set", "ai", "k", "3", "--expected-revision", "7")
    assert conflict.code == 7
    down = await arkctl(*owner, "--config-address", f"127.0.0.1:{free_port()}", "config", "list")
    assert down.code == 6
    assert "UNAVAILABLE" in down.err
    assert (await arkctl("--token", "x", "config", "list")).code == 2  # no organization


async def test_settings_come_from_flags_then_environment_then_file(
    arkctl: Arkctl, keys: Keys, servers: Servers
) -> None:
    wanted, other = new_slug(), new_slug()
    folder = arkctl.home / "config" / "arkctl"
    folder.mkdir(parents=True)
    # The file names the wrong organization and a dead ConfigService ...
    (folder / "config.yaml").write_text(
        f"organization: {other}\nconfig_address: 127.0.0.1:{free_port()}\n"
        f"token: {keys.token(wanted)}\noutput: json\n"
    )
    no_address = {"ARKCTL_CONFIG_ADDRESS": ""}
    assert (await arkctl("config", "list", env=no_address)).code == 6  # the file's address
    # ... the environment corrects the address; the file's organization is not the token's.
    assert (await arkctl("config", "list")).code == 4
    # The environment's organization wins over the file's; the file's output format holds.
    assert (await arkctl.ok("config", "list", env={"ARKCTL_ORG": wanted})).json() == []
    # A flag wins over the environment.
    assert (await arkctl("--org", other, "config", "list", env={"ARKCTL_ORG": wanted})).code == 4
    table = await arkctl.ok("-o", "table", "config", "list", env={"ARKCTL_ORG": wanted})
    assert "(none)" in table.err
    # A broken file is a usage error.
    (folder / "config.yaml").write_text("colour: blue\n")
    assert (await arkctl("config", "list")).code == 2


async def test_config_watch_prints_each_change_live(
    arkctl: Arkctl, servers: Servers, keys: Keys
) -> None:
    organization = new_slug()
    token = keys.token(organization)
    process = await asyncio.create_subprocess_exec(
        arkctl_path(),
        "--org",
        organization,
        "--token",
        token,
        "-o",
        "json",
        "config",
        "watch",
        "--count",
        "2",
        env=arkctl.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        # The snapshot line says the stream is open: changes from now on are live.
        snapshot = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert snapshot == {"type": "snapshot", "revision": 0, "keys": 0}
        async with ConfigClient(
            f"127.0.0.1:{servers['config'].port}", organization, token=token
        ) as client:
            await client.set("ai", "threshold", 0.5)
            await client.batch({("ai", "model"): "large", ("web", "theme"): "dark"})
        lines = [
            json.loads(line)
            for line in (await asyncio.wait_for(process.stdout.read(), 30)).splitlines()
        ]
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert [(c["revision"], c["service"], c["key"], c["value"]) for c in lines] == [
        (1, "ai", "threshold", 0.5),
        (2, "ai", "model", "large"),
        (2, "web", "theme", "dark"),
    ]
    assert all(c["type"] == "set" and c["delay_ms"] >= 0 for c in lines)


def walk(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*path, name))
        if isinstance(command, click.Group):
            found.extend(walk(command, (*path, name)))
    return found


def test_every_command_has_help_with_an_example() -> None:
    paths = walk(commands.cli)
    expected = {
        ("login",),
        ("logout",),
        *(("org", c) for c in ("create", "list", "get", "delete")),
        *(("member", c) for c in ("add", "list", "update", "remove")),
        *(("project", c) for c in ("create", "list", "get", "delete")),
        *(("sa-key", c) for c in ("create", "list", "delete")),
        *(("config", c) for c in ("set", "get", "list", "delete", "history", "rollback", "watch")),
        *(("flag", c) for c in ("set", "eval")),
        *(("tenant", c) for c in ("status", "quota")),
    }
    assert expected <= set(paths)
    for path in [(), *paths]:
        command: click.Command = commands.cli
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        assert command.help is not None
        assert "Example:" in command.help, f"arkctl {' '.join(path)} has no example"
        assert "arkctl" in command.help.split("Example:")[1]


async def test_help_runs_as_a_subprocess(arkctl: Arkctl) -> None:
    result = await arkctl.ok("config", "watch", "--help")
    assert "Example:" in result.out
    assert "--count" in result.out
    assert "Exit codes" in (await arkctl.ok("--help")).out


def lock_waiters(path: Path) -> int:
    """How many processes wait for the flock on ``path`` (from /proc/locks)."""
    inode = path.stat().st_ino
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(f.endswith(f":{inode}") for f in fields):
            count += 1
    return count


async def test_concurrent_runs_refresh_the_stored_login_one_at_a_time(
    arkctl: Arkctl, servers: Servers, keys: Keys
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['tenant'].port}") as channel:
        person, slug = await TenantApi(channel).owner_of_new_org()
    # A stored login whose access token has expired: every run must refresh first, and
    # the refresh token works once (a second use revokes the whole login).
    pair = expired_pair(keys, person.id, slug, person.refresh, believed=True)
    store = CredentialStore(arkctl.credentials.parent)
    store.save(StoredLogin(arkctl.env["ARKCTL_TENANT_ADDRESS"], person.email, slug, pair))
    lock = arkctl.credentials.parent / "credentials.lock"
    held = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # the runs line up behind this
        runs = [
            asyncio.create_task(arkctl("-o", "json", "--org", slug, "member", "list"))
            for _ in range(4)
        ]
        try:
            await eventually(lambda: lock_waiters(lock) == 4, timeout=30)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        results = await asyncio.gather(*runs)
    finally:
        os.close(held)
    assert [r.code for r in results] == [0] * 4, results
    stored = store.load()
    assert stored is not None
    assert stored.tokens.refresh_token != person.refresh
    assert (await arkctl.ok("-o", "json", "org", "list")).json()[0]["slug"] == slug
