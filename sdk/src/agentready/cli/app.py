"""The state every ``arkctl`` command shares: resolved settings, credentials, clients."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import click

from agentready._private.call import TokenSource
from agentready.cli.settings import (
    CredentialStore,
    StoredLogin,
    config_folder,
    read_config_file,
    resolve,
)
from agentready.config.client import ConfigClient
from agentready.credentials import Session
from agentready.errors import Unauthenticated
from agentready.provisioner.client import ProvisionerClient
from agentready.tenant.client import TenantClient
from agentready.tenant.v1 import tenant_pb2

# A CLI should answer soon when a server is down: three tries (0.1 s, 0.2 s apart).
ATTEMPTS = 3


@dataclass
class App:
    """Settings resolved from flags, environment and config file, in that order."""

    tenant_address: str
    config_address: str
    provisioner_address: str
    organization: str
    output: str
    token: str
    timeout: float
    store: CredentialStore
    _sessions: list[Session] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        *,
        tenant_address: str | None,
        config_address: str | None,
        provisioner_address: str | None,
        organization: str | None,
        output: str | None,
        token: str | None,
        config_file: str | None,
        timeout: float,
    ) -> App:
        folder = config_folder()
        path = Path(config_file or os.environ.get("ARKCTL_CONFIG") or folder / "config.yaml")
        try:
            file = read_config_file(path)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        output_format = resolve(output, "ARKCTL_OUTPUT", file, "output")
        if output_format not in ("table", "json", "yaml"):
            raise click.UsageError(f"output must be table, json or yaml, not {output_format!r}")
        return cls(
            tenant_address=resolve(tenant_address, "ARKCTL_TENANT_ADDRESS", file, "tenant_address"),
            config_address=resolve(config_address, "ARKCTL_CONFIG_ADDRESS", file, "config_address"),
            provisioner_address=resolve(
                provisioner_address, "ARKCTL_PROVISIONER_ADDRESS", file, "provisioner_address"
            ),
            organization=resolve(organization, "ARKCTL_ORG", file, "organization"),
            output=output_format,
            token=resolve(token, "ARKCTL_TOKEN", file, "token"),
            timeout=timeout,
            store=CredentialStore(folder),
        )

    # -- organization and credentials -------------------------------------------------

    def org(self, given: str | None = None) -> str:
        """The organization a command acts in: its argument, else ``--org`` (and so on),
        else the one the stored login is scoped to."""
        if given:
            return given
        if self.organization:
            return self.organization
        login = self._stored()
        if login is not None and login.organization:
            return login.organization
        raise click.UsageError("no organization: give --org (or set ARKCTL_ORG)")

    def _stored(self) -> StoredLogin | None:
        try:
            return self.store.load()
        except ValueError as error:
            raise Unauthenticated(str(error)) from None

    async def credentials(self, organization: str | None) -> TokenSource:
        """A token for ``organization`` (None: any scope will do): ``--token`` as
        given, or the stored login, refreshed or re-scoped if need be (the new pair is
        stored at once)."""
        if self.token:
            return self.token
        with self.store.locked():
            login = self._stored()
            if login is None:
                raise Unauthenticated("not logged in: run `arkctl login` or give --token")

            def store(tokens: tenant_pb2.TokenPair, login: StoredLogin = login) -> None:
                login.tokens = tokens
                login.organization = session.organization
                self.store.save(login)

            session = Session.resume(
                login.tenant_address,
                login.tokens,
                organization=login.organization,
                on_refresh=store,
                timeout=self.timeout,
                attempts=ATTEMPTS,
            )
            self._sessions.append(session)
            if organization is not None and organization != session.organization:
                await session.switch(organization)
            else:
                await session.token()
        return session

    async def close(self) -> None:
        """Closes the sessions' channels (they stay logged in)."""
        for session in self._sessions:
            await session.close(logout=False)
        self._sessions.clear()

    # -- clients ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def tenant(self, organization: str | None) -> AsyncIterator[TenantClient]:
        """A TenantClient with a token for ``organization`` (None: any)."""
        token = await self.credentials(organization)
        try:
            async with TenantClient(
                self.tenant_address, token=token, timeout=self.timeout, attempts=ATTEMPTS
            ) as client:
                yield client
        finally:
            await self.close()

    @contextlib.asynccontextmanager
    async def config(self, organization: str) -> AsyncIterator[ConfigClient]:
        """A ConfigClient for ``organization``."""
        token = await self.credentials(organization)
        try:
            async with ConfigClient(
                self.config_address,
                organization,
                token=token,
                timeout=self.timeout,
                attempts=ATTEMPTS,
            ) as client:
                yield client
        finally:
            await self.close()

    @contextlib.asynccontextmanager
    async def provisioner(self, organization: str | None) -> AsyncIterator[ProvisionerClient]:
        """A ProvisionerClient with a token for ``organization`` (None: any)."""
        token = await self.credentials(organization)
        try:
            async with ProvisionerClient(
                self.provisioner_address, token=token, timeout=self.timeout, attempts=ATTEMPTS
            ) as client:
                yield client
        finally:
            await self.close()


pass_app = click.make_pass_decorator(App)
