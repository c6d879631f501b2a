"""Reads: single keys (with schema defaults), listings, history and schemas."""

from __future__ import annotations

from config_service.adapters import postgres as pg
from config_service.domain.model import Change, Entry
from config_service.domain.schema import StoredSchema
from servicekit.errors import NotFound


class ConfigReader:
    """The read side of ConfigService."""

    def __init__(self, store: pg.ConfigStore) -> None:
        self._store = store

    async def get(self, organization: str, service: str, key: str) -> Entry:
        """The key's entry; its schema default (``is_default``) when not set.

        Raises:
            NotFound: the key is not set and has no default.
        """
        async with self._store.single() as conn:
            found = await pg.read_entry(conn, organization, service, key)
        if isinstance(found, Entry):
            return found
        key_schema = found.key(key) if found is not None else None
        if key_schema is None or key_schema.default is None:
            raise NotFound("config", f"{organization}/{service}/{key}")
        return Entry(service, key, key_schema.default, 0, None, "", is_default=True)

    async def entries(
        self, organization: str, *, service: str, after: tuple[str, str] | None, limit: int
    ) -> tuple[list[Entry], int]:
        """A page of set keys ordered by (service, key), and the revision it was read at."""
        async with self._store.transaction(organization, snapshot=True) as conn:
            revision, _ = await pg.read_revision(conn, organization)
            entries = await pg.list_entries(
                conn,
                organization,
                services=[service] if service else [],
                after=after,
                limit=limit,
            )
        return entries, revision

    async def usage(self, organization: str) -> tuple[pg.Usage, int, int]:
        """(what the organization stores, its schemas' bytes, its revision)."""
        async with self._store.transaction(organization, snapshot=True) as conn:
            revision, _ = await pg.read_revision(conn, organization)
            usage, schema_bytes = await pg.read_usage(conn, organization)
        return usage, schema_bytes, revision

    async def history(
        self,
        organization: str,
        *,
        service: str,
        key: str,
        start_revision: int,
        end_revision: int,
        after: tuple[int, int],
        limit: int,
        max_bytes: int,
    ) -> tuple[list[Change], int]:
        """A page of history, oldest first, cut by ``limit`` rows and ``max_bytes`` of
        values (see :func:`pg.list_history`)."""
        async with self._store.transaction(organization) as conn:
            return await pg.list_history(
                conn,
                organization,
                service=service,
                key=key,
                start_revision=start_revision,
                end_revision=end_revision,
                after=after,
                limit=limit,
                max_bytes=max_bytes,
            )

    async def schema(self, organization: str, service: str) -> StoredSchema:
        """One service's schema.

        Raises:
            NotFound: the service has none.
        """
        async with self._store.transaction(organization) as conn:
            stored = await pg.load_schema(conn, organization, service)
        if stored is None:
            raise NotFound("config schema", f"{organization}/{service}")
        return stored

    async def schemas(self, organization: str, *, after: str, limit: int) -> list[StoredSchema]:
        """A page of schemas ordered by service."""
        async with self._store.transaction(organization) as conn:
            return await pg.list_schemas(conn, organization, after=after, limit=limit)
