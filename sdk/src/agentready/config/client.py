"""ConfigClient: ConfigService in Python types, for one organization."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2

from agentready._private.call import TokenSource
from agentready._private.client import ServiceClient
from agentready._private.sync import SyncFace, blocking, blocking_iter
from agentready.config.v1 import config_pb2, config_service_pb2_grpc
from agentready.errors import NotFound
from agentready.watcher import AsyncConfigWatcher, plain_value

# Marks a key for deletion in :meth:`ConfigClient.batch`.
DELETE: Any = object()


def to_value(value: Any) -> config_pb2.Value:
    """A ``Value`` from plain Python: bool, int, float, str, a FeatureFlag, a Value,
    or anything JSON (dict, list, None)."""
    if isinstance(value, config_pb2.Value):
        return value
    if isinstance(value, config_pb2.FeatureFlag):
        return config_pb2.Value(flag_value=value)
    if isinstance(value, bool):
        return config_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return config_pb2.Value(int_value=value)
    if isinstance(value, float):
        return config_pb2.Value(double_value=value)
    if isinstance(value, str):
        return config_pb2.Value(string_value=value)
    return config_pb2.Value(json_value=json_format.ParseDict(value, struct_pb2.Value()))


class ConfigClient(ServiceClient):
    """Typed, retrying access to one organization's configuration.

    Reads and writes carrying a request id (every write here gets one) are retried on
    UNAVAILABLE; errors are :mod:`agentready.errors` types. The generated stub stays
    reachable as :attr:`stub` for anything this class does not cover.

    Args:
        target: the ConfigService address, or pass ``channel``.
        organization: the organization's slug.
        token: a bearer token, or a callable returning the current one.
        channel: an existing ``grpc.aio`` channel (not closed by :meth:`close`).
        timeout: the deadline of each call, in seconds.
        attempts: tries per retryable call (UNAVAILABLE, RESOURCE_EXHAUSTED): reads, and
            writes, which always carry a request id; with the backoff (0.1 s doubling to
            2 s) the default of 8 rides out about 7 s, a database failover included.
    """

    def __init__(
        self,
        target: str | None,
        organization: str,
        *,
        token: TokenSource,
        channel: grpc.aio.Channel | None = None,
        timeout: float = 10.0,
        attempts: int = 8,
    ) -> None:
        super().__init__(target, token=token, channel=channel, timeout=timeout, attempts=attempts)
        self.organization = organization
        self._token = token
        self.stub = config_service_pb2_grpc.ConfigServiceStub(self._channel)

    async def get(self, service: str, key: str) -> config_pb2.ConfigEntry:
        """The key's entry (its schema default, ``is_default``, when unset).

        Raises:
            NotFound: neither set nor defaulted.
        """
        request = config_pb2.GetConfigRequest(
            organization=self.organization, service=service, key=key
        )
        return await self._calls.unary(self.stub.GetConfig, request, idempotent=True)

    async def get_value(self, service: str, key: str, default: Any = None) -> Any:
        """The key's value as plain Python, or ``default`` when it has none."""
        try:
            entry = await self.get(service, key)
        except NotFound:
            return default
        return plain_value(entry.value)

    async def set(
        self,
        service: str,
        key: str,
        value: Any,
        *,
        reason: str = "",
        expected_revision: int | None = None,
        etag: str = "",
        request_id: str | None = None,
    ) -> config_pb2.ConfigEntry:
        """Sets a key (see :func:`to_value` for the Python types accepted).

        Returns:
            The key's new entry; its ``revision`` is the organization revision the
            write committed as: wait for it with
            :meth:`AsyncConfigWatcher.wait_for_revision` to read your write from a
            watcher on any replica.

        Raises:
            Conflict: ``expected_revision`` or ``etag`` did not match.
            InvalidArgument: a bad name or value, or one the schema refuses.
        """
        request = config_pb2.SetConfigRequest(
            organization=self.organization,
            service=service,
            key=key,
            value=to_value(value),
            etag=etag,
            reason=reason,
            request_id=request_id or str(uuid.uuid4()),
        )
        if expected_revision is not None:
            request.expected_revision = expected_revision
        return await self._calls.unary(self.stub.SetConfig, request, idempotent=True)

    async def delete(
        self,
        service: str,
        key: str,
        *,
        reason: str = "",
        expected_revision: int | None = None,
        etag: str = "",
        request_id: str | None = None,
    ) -> None:
        """Deletes a key (a new revision).

        Raises:
            NotFound: the key is not set.
            Conflict: ``expected_revision`` or ``etag`` did not match.
        """
        request = config_pb2.DeleteConfigRequest(
            organization=self.organization,
            service=service,
            key=key,
            etag=etag,
            reason=reason,
            request_id=request_id or str(uuid.uuid4()),
        )
        if expected_revision is not None:
            request.expected_revision = expected_revision
        await self._calls.unary(self.stub.DeleteConfig, request, idempotent=True)

    async def batch(
        self,
        changes: Mapping[tuple[str, str], Any],
        *,
        reason: str = "",
        request_id: str | None = None,
    ) -> config_pb2.BatchSetConfigResponse:
        """Sets (or, with :data:`DELETE`, deletes) several keys as one revision (the
        response's ``revision``)."""
        mutations = []
        for (service, key), value in changes.items():
            if value is DELETE:
                mutations.append(
                    config_pb2.ConfigMutation(service=service, key=key, delete=empty_pb2.Empty())
                )
            else:
                mutations.append(
                    config_pb2.ConfigMutation(service=service, key=key, set_value=to_value(value))
                )
        request = config_pb2.BatchSetConfigRequest(
            organization=self.organization,
            mutations=mutations,
            reason=reason,
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._calls.unary(self.stub.BatchSetConfig, request, idempotent=True)

    async def entries(self, service: str = "") -> AsyncIterator[config_pb2.ConfigEntry]:
        """Every key that is set (optionally of one service), page after page."""
        token = ""
        while True:
            request = config_pb2.ListConfigsRequest(
                organization=self.organization, service=service, page_size=500, page_token=token
            )
            page = await self._calls.unary(self.stub.ListConfigs, request, idempotent=True)
            for entry in page.configs:
                yield entry
            token = page.next_page_token
            if not token:
                return

    def list_configs(self, service: str = "") -> AsyncIterator[config_pb2.ConfigEntry]:
        """The same as :meth:`entries` (the name every client's listings share)."""
        return self.entries(service)

    async def history(
        self, service: str = "", key: str = "", *, start_revision: int = 0, end_revision: int = 0
    ) -> AsyncIterator[config_pb2.ConfigHistoryEntry]:
        """The change history, oldest first, page after page."""
        token = ""
        while True:
            request = config_pb2.ListConfigHistoryRequest(
                organization=self.organization,
                service=service,
                key=key,
                start_revision=start_revision,
                end_revision=end_revision,
                page_size=500,
                page_token=token,
            )
            page = await self._calls.unary(self.stub.ListConfigHistory, request, idempotent=True)
            for entry in page.history_entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def clients(self, label_selector: str = "") -> tuple[int, list[config_pb2.ConfigClient]]:
        """Rollout status: the organization's revision, and every watching client heard
        from within the grace period (optionally those matching ``label_selector``, e.g.
        ``"app=checkout,tier!=canary"``) with the revision it applied, its lag and its
        last refusal."""
        token, found, revision = "", [], 0
        while True:
            request = config_pb2.ListConfigClientsRequest(
                organization=self.organization,
                label_selector=label_selector,
                page_size=500,
                page_token=token,
            )
            page = await self._calls.unary(self.stub.ListConfigClients, request, idempotent=True)
            found += list(page.clients)
            revision = max(revision, page.revision)
            token = page.next_page_token
            if not token:
                return revision, found

    async def usage(self) -> config_pb2.ConfigUsage:
        """What the organization stores against its limits (keys, bytes, schemas)."""
        request = config_pb2.GetConfigUsageRequest(organization=self.organization)
        return await self._calls.unary(self.stub.GetConfigUsage, request, idempotent=True)

    async def rollback(
        self,
        revision: int,
        *,
        service: str = "",
        key: str = "",
        reason: str = "",
        request_id: str | None = None,
    ) -> config_pb2.RollbackConfigResponse:
        """Restores the state at ``revision`` (of one service or key) as a new revision."""
        request = config_pb2.RollbackConfigRequest(
            organization=self.organization,
            revision=revision,
            service=service,
            key=key,
            reason=reason,
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._calls.unary(self.stub.RollbackConfig, request, idempotent=True)

    def list_history(
        self, service: str = "", key: str = "", *, start_revision: int = 0, end_revision: int = 0
    ) -> AsyncIterator[config_pb2.ConfigHistoryEntry]:
        """The same as :meth:`history`."""
        return self.history(service, key, start_revision=start_revision, end_revision=end_revision)

    def watcher(self, **options: Any) -> AsyncConfigWatcher:
        """An :class:`AsyncConfigWatcher` on this client's channel and token."""
        return AsyncConfigWatcher(
            None, self.organization, token=self._token, channel=self._channel, **options
        )


class SyncConfigClient(SyncFace[ConfigClient]):
    """:class:`ConfigClient` for code without an event loop: the same methods,
    blocking, run on a background thread (listings return plain iterators), but for
    :meth:`~ConfigClient.watcher` (code without an event loop uses
    :class:`~agentready.ConfigWatcher`).

    Takes the same arguments as :class:`ConfigClient` (except ``channel``).
    """

    def __init__(
        self,
        target: str,
        organization: str,
        *,
        token: TokenSource,
        timeout: float = 10.0,
        attempts: int = 8,
    ) -> None:
        self.organization = organization
        super().__init__(
            lambda: ConfigClient(
                target, organization, token=token, timeout=timeout, attempts=attempts
            )
        )

    get = blocking(ConfigClient.get)
    get_value = blocking(ConfigClient.get_value)
    set = blocking(ConfigClient.set)
    delete = blocking(ConfigClient.delete)
    batch = blocking(ConfigClient.batch)
    entries = blocking_iter(ConfigClient.entries)
    list_configs = blocking_iter(ConfigClient.entries)
    history = blocking_iter(ConfigClient.history)
    list_history = blocking_iter(ConfigClient.history)
    clients = blocking(ConfigClient.clients)
    usage = blocking(ConfigClient.usage)
    rollback = blocking(ConfigClient.rollback)
