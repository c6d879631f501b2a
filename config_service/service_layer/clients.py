"""Rollout status: what each watching client has applied or refused, reported by the
clients themselves and listed across replicas (the reports live in PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from config_service.adapters import postgres as pg
from servicekit.errors import InvalidArgument, ResourceExhausted


@dataclasses.dataclass(frozen=True)
class ClientStatus:
    """One client's last report."""

    client_id: str
    labels: Mapping[str, str]
    applied_revision: int
    rejected_revision: int
    rejection_reason: str
    rejected_at: dt.datetime | None
    last_seen: dt.datetime


# Kubernetes label values are at most 63 characters (reports are held to it).
MAX_LABEL_VALUE = 63


@dataclasses.dataclass(frozen=True)
class Selector:
    """A Kubernetes-style equality label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``
    (has the label), ``!k`` (has it not), joined by commas."""

    equal: Mapping[str, str] = dataclasses.field(default_factory=dict)
    not_equal: Mapping[str, str] = dataclasses.field(default_factory=dict)
    present: Sequence[str] = ()
    absent: Sequence[str] = ()

    @classmethod
    def parse(cls, text: str, field: str = "label_selector") -> Selector:
        """Raises: InvalidArgument: not a selector of that form."""
        equal: dict[str, str] = {}
        not_equal: dict[str, str] = {}
        present: list[str] = []
        absent: list[str] = []
        for raw in text.split(","):
            term = raw.strip()
            if not term:
                continue
            value = ""
            if "!=" in term:
                key, value = (p.strip() for p in term.split("!=", 1))
                not_equal[key] = value
            elif "=" in term:
                key, value = (p.strip() for p in term.replace("==", "=", 1).split("=", 1))
                equal[key] = value
            elif term.startswith("!"):
                key = term[1:].strip()
                absent.append(key)
            else:
                key = term
                present.append(key)
            # NUL: no label holds one, and PostgreSQL's jsonb cannot either.
            if not key or any(c in key for c in " =!\x00") or len(key) > 317:
                raise InvalidArgument.field(field, f"{raw.strip()!r} is not a selector term")
            if "\x00" in value or len(value) > MAX_LABEL_VALUE:
                raise InvalidArgument.field(
                    field,
                    f"{raw.strip()!r}: a label value is at most {MAX_LABEL_VALUE} characters, "
                    "without NUL",
                )
        return cls(equal, not_equal, present, absent)


class ConfigClients:
    """Reports in, listings out."""

    def __init__(
        self, store: pg.ConfigStore, *, grace_seconds: float, max_clients: int = 10_000
    ) -> None:
        self._store = store
        self.grace_seconds = grace_seconds
        self.max_clients = max_clients

    async def report(
        self,
        organization: str,
        client_id: str,
        *,
        labels: Mapping[str, str],
        applied_revision: int,
        rejected_revision: int,
        rejection_reason: str,
    ) -> None:
        """Records a client's report (its heartbeat too).

        Raises:
            ResourceExhausted: a client not known yet, while the organization has
                ``max_clients`` already (reason CLIENT_LIMIT); the ones that went away
                are pruned after the grace period.
        """
        # A report lost in a crash is repaired by the next one: no need to wait for
        # the disk. A new client is counted against the limit (clients known already
        # never are: CASE keeps the count from running for them); concurrent first
        # reports may pass it by as many as are in flight.
        async with self._store.transaction(organization, durable=False) as conn:
            status = await conn.execute(
                "INSERT INTO config.clients AS c (organization, client_id, labels, "
                "  applied_revision, rejected_revision, rejection_reason, rejected_at, "
                "  last_seen) "
                "SELECT $1, $2, $3::jsonb, $4::bigint, $5::bigint, $6, "
                "  CASE WHEN $5::bigint > 0 THEN now() END, now() "
                "WHERE CASE WHEN EXISTS (SELECT 1 FROM config.clients "
                "                        WHERE organization = $1 AND client_id = $2) "
                "  THEN true "
                "  ELSE (SELECT count(*) FROM config.clients WHERE organization = $1) < $7 "
                "END "
                "ON CONFLICT (organization, client_id) DO UPDATE SET "
                "  labels = EXCLUDED.labels, applied_revision = EXCLUDED.applied_revision, "
                "  rejected_revision = EXCLUDED.rejected_revision, "
                "  rejection_reason = EXCLUDED.rejection_reason, "
                "  rejected_at = CASE "
                "    WHEN EXCLUDED.rejected_revision = 0 THEN NULL "
                "    WHEN EXCLUDED.rejected_revision = c.rejected_revision THEN c.rejected_at "
                "    ELSE now() END, "
                "  last_seen = now()",
                organization,
                client_id,
                dict(labels),
                applied_revision,
                rejected_revision,
                rejection_reason,
                self.max_clients,
            )
        if status == "INSERT 0 0":
            raise ResourceExhausted(
                f"organization {organization!r} has {self.max_clients} watching clients "
                "already; a new one is counted once others have gone quiet for "
                f"{self.grace_seconds:g} s",
                reason="CLIENT_LIMIT",
                retry_after_seconds=self.grace_seconds,
                metadata={"organization": organization, "limit_clients": str(self.max_clients)},
            )

    async def list(
        self, organization: str, *, selector: Selector, after: str, limit: int
    ) -> tuple[list[ClientStatus], int]:
        """A page of the clients heard from within the grace period, by client id, and
        the organization's revision."""
        async with self._store.transaction(organization, snapshot=True) as conn:
            revision, _ = await pg.read_revision(conn, organization)
            rows = await conn.fetch(
                "SELECT client_id, labels, applied_revision, rejected_revision, "
                "  rejection_reason, rejected_at, last_seen FROM config.clients "
                "WHERE organization = $1 "
                "  AND last_seen >= now() - make_interval(secs => $2) "
                "  AND client_id > $3 "
                "  AND labels @> $4::jsonb "
                "  AND NOT EXISTS (SELECT 1 FROM jsonb_each_text($5::jsonb) AS n "
                "                  WHERE labels ->> n.key = n.value) "
                "  AND labels ?& $6::text[] AND NOT labels ?| $7::text[] "
                "ORDER BY client_id LIMIT $8",
                organization,
                self.grace_seconds,
                after,
                dict(selector.equal),
                dict(selector.not_equal),
                list(selector.present),
                list(selector.absent),
                limit,
            )
        clients = [
            ClientStatus(
                client_id=row["client_id"],
                labels=row["labels"],
                applied_revision=int(row["applied_revision"]),
                rejected_revision=int(row["rejected_revision"]),
                rejection_reason=row["rejection_reason"],
                rejected_at=row["rejected_at"],
                last_seen=row["last_seen"],
            )
            for row in rows
        ]
        return clients, revision
