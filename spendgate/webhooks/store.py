"""Webhook endpoints (create, change, rotate secrets) and their delivery log.

Secrets are kept as Fernet tokens (``secrets_box``); the plaintext ``whsec_…`` is
returned only by :meth:`WebhookStore.create` and :meth:`WebhookStore.rotate_secret`.
Credentials in ``config`` (PagerDuty's routing key) are encrypted too and shown masked;
so are URLs that are credentials themselves (Slack incoming webhooks, ``secret_urls``):
``url`` holds the masked form, ``url_encrypted`` the real one, read by :meth:`url_of`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.errors import NotFound, ValidationFailed
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.database import delete_one, reading, transaction
from spendgate.webhooks.catalog import valid_pattern
from spendgate.webhooks.fanout import due_now
from spendgate.webhooks.matching import SCOPE_TYPES
from spendgate.webhooks.secret_urls import SECRET_URL_KINDS, is_secret_url, mask_url
from spendgate.webhooks.secrets_box import SecretBox, SecretUnreadable
from spendgate.webhooks.signing import new_secret
from spendgate.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_endpoints
from spendgate.webhooks.targets import Resolver, check_target, system_resolver

KINDS: tuple[str, ...] = ("webhook", "slack", "pagerduty")
SCOPE_TABLES = {
    "org": schema.orgs,
    "team": schema.teams,
    "user": schema.users,
    "agent": schema.agents,
    "key": schema.virtual_keys,
}
DEFAULT_OVERLAP = timedelta(hours=24)
#: every column holding a Fernet token
ENCRYPTED_COLUMNS = (
    "secret_encrypted",
    "previous_secret_encrypted",
    "config_encrypted",
    "url_encrypted",
)
EP = webhook_endpoints
DL = webhook_deliveries


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    url: str
    kind: str = "webhook"
    event_types: tuple[str, ...] = ("*",)
    scope_type: str | None = None
    scope_id: str | None = None
    enabled: bool = True
    description: str = ""
    #: kind-specific credentials: PagerDuty needs ``routing_key``
    config: Mapping[str, str] = field(default_factory=dict)


def _mask(value: str) -> str:
    return "…" + value[-4:] if len(value) > 8 else "…"


def shown_url(kind: str, url: str) -> str:
    """The URL as the API and the audit log show it: masked when it is a credential."""
    return mask_url(url) if is_secret_url(kind, url) else url


@dataclass(frozen=True, slots=True)
class ReencryptReport:
    """What :meth:`WebhookStore.reencrypt` did."""

    endpoints: int
    #: endpoints with at least one token rewritten under the newest key
    rewritten: int
    #: Slack URLs stored in plaintext (before revision 0008) now encrypted
    sealed: int
    #: endpoints with a token no configured key decrypts (left as they are)
    unreadable: list[str]


class WebhookStore:
    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        *,
        allow_private: bool = False,
        resolve: Resolver = system_resolver,
    ) -> None:
        self._engine = engine
        self._box = box
        self._allow_private = allow_private
        self._resolve = resolve

    # -- reading -------------------------------------------------------------------------
    def config_of(self, row: Mapping[str, Any]) -> dict[str, str]:
        token = row["config_encrypted"]
        return {} if token is None else dict(json.loads(self._box.decrypt(token)))

    def url_of(self, row: Mapping[str, Any]) -> str:
        """Where deliveries go: the decrypted URL for Slack, else the ``url`` column."""
        token = row.get("url_encrypted")
        return row["url"] if token is None else self._box.decrypt(token)

    def _url_values(self, kind: str, url: str) -> dict[str, Any]:
        if is_secret_url(kind, url):
            return {"url": mask_url(url), "url_encrypted": self._box.encrypt(url)}
        return {"url": url, "url_encrypted": None}

    def secrets_of(self, row: Mapping[str, Any]) -> tuple[str, str | None]:
        previous = row["previous_secret_encrypted"]
        return (
            self._box.decrypt(row["secret_encrypted"]),
            None if previous is None else self._box.decrypt(previous),
        )

    def public(self, row: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
        """The endpoint as the API shows it: no secrets, credentials masked."""
        until = row["previous_secret_until"]
        rotating = until is not None and (now is None or until > now)
        return {
            "id": row["id"],
            "url": shown_url(row["kind"], row["url"]),
            "kind": row["kind"],
            "description": row["description"],
            "event_types": list(row["event_types"]),
            "scope_type": row["scope_type"],
            "scope_id": row["scope_id"],
            "enabled": row["enabled"],
            "disabled_reason": row["disabled_reason"],
            "failing_since": row["failing_since"],
            "previous_secret_valid_until": until if rotating else None,
            "config": {k: _mask(v) for k, v in self.config_of(row).items()},
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    async def row(self, endpoint_id: str, conn: AsyncConnection | None = None) -> dict[str, Any]:
        async with reading(self._engine, conn) as reader:
            found = (await reader.execute(sa.select(EP).where(EP.c.id == endpoint_id))).first()
        if found is None:
            raise NotFound(f"webhook {endpoint_id} not found")
        return dict(found._mapping)

    async def get(self, endpoint_id: str, now: datetime | None = None) -> dict[str, Any]:
        return self.public(await self.row(endpoint_id), now)

    async def list(self, now: datetime | None = None) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(EP).order_by(EP.c.created_at, EP.c.id))
            return [self.public(dict(r._mapping), now) for r in rows]

    # -- validation ----------------------------------------------------------------------
    async def _validate(self, spec: EndpointSpec, conn: AsyncConnection | None) -> None:
        if spec.kind not in KINDS:
            raise ValidationFailed(f"kind: must be one of {', '.join(KINDS)}", param="kind")
        if not spec.event_types:
            raise ValidationFailed(
                'event_types: give at least one type, or "*"', param="event_types"
            )
        bad = [t for t in spec.event_types if not valid_pattern(t)]
        if bad:
            raise ValidationFailed(
                f"event_types: unknown event type {bad[0]!r}", param="event_types"
            )
        if spec.kind == "pagerduty" and not spec.config.get("routing_key"):
            raise ValidationFailed(
                "config.routing_key: required for pagerduty endpoints", param="config.routing_key"
            )
        await self._validate_scope(spec.scope_type, spec.scope_id, conn)
        await check_target(spec.url, allow_private=self._allow_private, resolve=self._resolve)

    async def _validate_scope(
        self, scope_type: str | None, scope_id: str | None, conn: AsyncConnection | None = None
    ) -> None:
        if scope_type is None and scope_id is None:
            return
        if scope_type not in SCOPE_TYPES or not scope_id:
            raise ValidationFailed(
                f"scope_type: one of {', '.join(SCOPE_TYPES)}, given together with scope_id",
                param="scope_type",
            )
        table = SCOPE_TABLES.get(scope_type)
        if table is None:
            return
        async with reading(self._engine, conn) as reader:
            query = sa.select(table.c.id).where(table.c.id == scope_id)
            found = (await reader.execute(query)).first()
        if found is None:
            raise ValidationFailed(
                f"scope_id: {scope_type} {scope_id} does not exist", param="scope_id"
            )

    # -- writing -------------------------------------------------------------------------
    async def create(
        self, spec: EndpointSpec, now: datetime, conn: AsyncConnection | None = None
    ) -> tuple[dict[str, Any], str]:
        """The new endpoint and its signing secret (``whsec_…``), shown this once."""
        await self._validate(spec, conn)
        secret = new_secret()
        values = {
            "id": new_id("whe"),
            **self._url_values(spec.kind, spec.url),
            "kind": spec.kind,
            "description": spec.description,
            "event_types": list(spec.event_types),
            "scope_type": spec.scope_type,
            "scope_id": spec.scope_id,
            "enabled": spec.enabled,
            "secret_encrypted": self._box.encrypt(secret),
            "previous_secret_encrypted": None,
            "previous_secret_until": None,
            "config_encrypted": (
                self._box.encrypt(json.dumps(dict(spec.config))) if spec.config else None
            ),
            "failing_since": None,
            "disabled_reason": None,
            "created_at": now,
            "updated_at": now,
        }
        async with transaction(self._engine, conn) as tx:
            await tx.execute(EP.insert().values(**values))
        return self.public(values, now), secret

    async def update(
        self,
        endpoint_id: str,
        changes: Mapping[str, Any],
        now: datetime,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        """Change any of the spec's fields; re-enabling clears the failure record.

        A Slack URL given back in its masked form (as read) keeps the stored one; a Slack
        endpoint changed to another kind needs its ``url`` again, or the stored credential
        would be shown from then on."""
        row = await self.row(endpoint_id, conn)
        current = EndpointSpec(
            url=self.url_of(row),
            kind=row["kind"],
            event_types=tuple(row["event_types"]),
            scope_type=row["scope_type"],
            scope_id=row["scope_id"],
            enabled=row["enabled"],
            description=row["description"],
            config=self.config_of(row),
        )
        given = dict(changes)
        if given.get("url") is not None and given["url"] == shown_url(row["kind"], current.url):
            del given["url"]
        new_kind = given.get("kind", current.kind)
        if (
            is_secret_url(current.kind, current.url)
            and not is_secret_url(new_kind, current.url)
            and "url" not in given
        ):
            raise ValidationFailed(
                f"url: give the url again to change a {current.kind} endpoint to {new_kind}",
                param="url",
            )
        if "event_types" in given:
            given["event_types"] = tuple(given["event_types"])
        spec = dataclasses.replace(current, **given)
        await self._validate(spec, conn)
        values: dict[str, Any] = {
            **self._url_values(spec.kind, spec.url),
            "kind": spec.kind,
            "event_types": list(spec.event_types),
            "scope_type": spec.scope_type,
            "scope_id": spec.scope_id,
            "enabled": spec.enabled,
            "description": spec.description,
            "updated_at": now,
            "config_encrypted": (
                self._box.encrypt(json.dumps(dict(spec.config))) if spec.config else None
            ),
        }
        if spec.enabled and not row["enabled"]:
            values.update(failing_since=None, disabled_reason=None)
        async with transaction(self._engine, conn) as tx:
            await tx.execute(EP.update().where(EP.c.id == endpoint_id).values(**values))
        return self.public({**row, **values}, now)

    async def delete(self, endpoint_id: str, conn: AsyncConnection | None = None) -> None:
        async with transaction(self._engine, conn) as tx:
            await tx.execute(
                webhook_attempts.delete().where(webhook_attempts.c.endpoint_id == endpoint_id)
            )
            await tx.execute(DL.delete().where(DL.c.endpoint_id == endpoint_id))
            await delete_one(tx, EP, endpoint_id, "webhook endpoint")

    async def rotate_secret(
        self,
        endpoint_id: str,
        now: datetime,
        overlap: timedelta = DEFAULT_OVERLAP,
        conn: AsyncConnection | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new secret signs from now on; the old one also signs until ``now + overlap``."""
        if overlap < timedelta(0) or overlap > timedelta(days=30):
            raise ValidationFailed(
                "overlap_seconds: between 0 and 30 days", param="overlap_seconds"
            )
        row = await self.row(endpoint_id, conn)
        secret = new_secret()
        values: dict[str, Any] = {"secret_encrypted": self._box.encrypt(secret), "updated_at": now}
        if overlap > timedelta(0):
            values.update(
                previous_secret_encrypted=row["secret_encrypted"],
                previous_secret_until=now + overlap,
            )
        else:
            values.update(previous_secret_encrypted=None, previous_secret_until=None)
        async with transaction(self._engine, conn) as tx:
            await tx.execute(EP.update().where(EP.c.id == endpoint_id).values(**values))
        return self.public({**row, **values}, now), secret

    # -- the encryption key ----------------------------------------------------------------
    async def seal_urls(self) -> int:
        """Encrypt Slack URLs stored in plaintext (written before revision 0008) and URLs
        with user-info (stored in plaintext before they were treated as credentials)."""
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(EP.c.id, EP.c.kind, EP.c.url).where(
                        sa.or_(EP.c.kind.in_(sorted(SECRET_URL_KINDS)), EP.c.url.contains("@")),
                        EP.c.url_encrypted.is_(None),
                    )
                )
            ).all()
            sealed = 0
            for row in rows:
                if not is_secret_url(row.kind, row.url):
                    continue
                done = await conn.execute(
                    EP.update()
                    .where(EP.c.id == row.id, EP.c.url == row.url, EP.c.url_encrypted.is_(None))
                    .values(**self._url_values(row.kind, row.url))
                )
                sealed += done.rowcount
        return sealed

    async def unreadable(self) -> Sequence[str]:
        """The endpoints with a stored token that no configured key decrypts (their
        deliveries could only fail), in id order."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(EP.c.id, *(EP.c[c] for c in ENCRYPTED_COLUMNS)).order_by(EP.c.id)
                )
            ).all()
        return [
            row.id
            for row in rows
            if any(
                token is not None and not self._box.readable(token)
                for token in (row._mapping[c] for c in ENCRYPTED_COLUMNS)
            )
        ]

    async def reencrypt(self) -> ReencryptReport:
        """Seal plaintext Slack URLs, then rewrite every token that is not under the newest
        key (the first of ``SPENDGATE_SECRET_KEY``). Each row is rewritten only if it did
        not change meanwhile; running it again rewrites nothing."""
        sealed = await self.seal_urls()
        async with self._engine.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in await conn.execute(
                    sa.select(EP.c.id, *(EP.c[c] for c in ENCRYPTED_COLUMNS)).order_by(EP.c.id)
                )
            ]
        rewritten, unreadable = 0, []
        for row in rows:
            try:
                changes = {
                    c: self._box.rotate(row[c])
                    for c in ENCRYPTED_COLUMNS
                    if row[c] is not None and not self._box.is_current(row[c])
                }
            except SecretUnreadable:
                unreadable.append(row["id"])
                continue
            if not changes:
                continue
            async with self._engine.begin() as conn:
                done = await conn.execute(
                    EP.update()
                    .where(EP.c.id == row["id"], *(EP.c[c] == row[c] for c in changes))
                    .values(**changes)
                )
            rewritten += done.rowcount
        return ReencryptReport(
            endpoints=len(rows), rewritten=rewritten, sealed=sealed, unreadable=unreadable
        )


# -- the delivery log --------------------------------------------------------------------
def delivery_out(
    row: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    out = {
        k: row[k]
        for k in (
            "id",
            "endpoint_id",
            "message_id",
            "event_id",
            "event_type",
            "action",
            "status",
            "attempts",
            "next_attempt_at",
            "last_response_code",
            "last_error",
            "redelivery_of",
            "created_at",
            "updated_at",
            "finished_at",
        )
    }
    if attempts is not None:
        out["attempt_log"] = [
            {
                k: a[k]
                for k in (
                    "id",
                    "attempt",
                    "started_at",
                    "outcome",
                    "response_code",
                    "latency_ms",
                    "error",
                    "response_excerpt",
                )
            }
            for a in attempts
        ]
    return out


async def list_deliveries(
    engine: AsyncEngine, endpoint_id: str, *, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Newest first, each with its attempts (oldest attempt first)."""
    query = (
        sa.select(DL)
        .where(DL.c.endpoint_id == endpoint_id)
        .order_by(DL.c.created_at.desc(), DL.c.id)
        .limit(limit)
    )
    if status is not None:
        query = query.where(DL.c.status == status)
    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(query)]
        ids = [r["id"] for r in rows]
        attempts: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            att = webhook_attempts
            for a in await conn.execute(
                sa.select(att)
                .where(att.c.delivery_id.in_(ids))
                .order_by(att.c.started_at, att.c.attempt)
            ):
                attempts[a.delivery_id].append(dict(a._mapping))
    return [delivery_out(r, attempts[r["id"]]) for r in rows]


async def redeliver(
    conn: AsyncConnection, endpoint_id: str, delivery_id: str, now: datetime
) -> dict[str, Any]:
    """Send a delivery again as a new outbox row (same ``webhook-id``), due now, in
    ``conn``'s transaction."""
    found = (
        await conn.execute(
            sa.select(DL).where(DL.c.id == delivery_id, DL.c.endpoint_id == endpoint_id)
        )
    ).first()
    if found is None:
        raise NotFound(f"delivery {delivery_id} of endpoint {endpoint_id} does not exist")
    old = found._mapping
    values = {
        "id": new_id("whd"),
        "endpoint_id": endpoint_id,
        "message_id": old["message_id"],
        "event_id": old["event_id"],
        "event_type": old["event_type"],
        "payload": old["payload"],
        "action": old["action"],
        "redelivery_of": delivery_id,
        **due_now(now),
    }
    await conn.execute(DL.insert().values(**values))
    return delivery_out(values, [])
