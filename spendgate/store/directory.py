"""The directory: orgs, teams, users, agents and virtual keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.access import ORG_ROLES, ROLES, TEAM_ROLES, Standing, summary_role
from spendgate.errors import Conflict, NotFound, ValidationFailed
from spendgate.security.credentials import hash_secret, new_id, new_virtual_key, shown_prefix
from spendgate.store import daily, schema
from spendgate.store.database import insert_new, reading, transaction


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the hot path needs to know about a virtual key."""

    id: str
    org_id: str
    team_id: str | None
    user_id: str | None
    agent_id: str | None
    name: str
    tags: tuple[str, ...]
    models: tuple[str, ...]
    allow_request_tags: bool
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable_at(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


def _row(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def standing_of(user: Mapping[str, Any]) -> Standing:
    """A user (as the directory returns it) as a :class:`Standing`."""
    return Standing(user["org_role"], {m["team_id"]: m["role"] for m in user["memberships"]})


def _user_public(row: Mapping[str, Any], teams: Mapping[str, str]) -> dict[str, Any]:
    """A user with their org role, memberships, teams and one summary ``role``."""
    org_role = row.get("org_role", row["role"])
    return {
        "id": row["id"],
        "org_id": row["org_id"],
        "email": row["email"],
        "role": summary_role(org_role, teams.values()),
        "org_role": org_role,
        "team_ids": sorted(teams),
        "memberships": [{"team_id": t, "role": teams[t]} for t in sorted(teams)],
        "created_at": row["created_at"],
    }


def check_key_expiry(expires_at: datetime | None, now: datetime) -> None:
    """A key's expiry, on create or change: none, or a moment still to come."""
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at: must be in the future", param="expires_at")


def _key_public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "key_hash"}
    out["status"] = "revoked" if row["revoked_at"] else "active"
    return out


def _key_record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        org_id=row["org_id"],
        team_id=row["team_id"],
        user_id=row["user_id"],
        agent_id=row["agent_id"],
        name=row["name"],
        tags=tuple(row["tags"] or ()),
        models=tuple(row["models"] or ()),
        allow_request_tags=bool(row["allow_request_tags"]),
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


class Directory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _one(
        self, table: sa.Table, object_id: str, what: str, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        async with reading(self._engine, conn) as reader:
            row = (await reader.execute(sa.select(table).where(table.c.id == object_id))).first()
        if row is None:
            raise NotFound(f"{what} {object_id} not found")
        return _row(row)

    async def _list(self, table: sa.Table, **filters: str | None) -> list[dict[str, Any]]:
        query = sa.select(table).order_by(table.c.created_at, table.c.id)
        for column, value in filters.items():
            if value is not None:
                query = query.where(table.c[column] == value)
        async with self._engine.connect() as conn:
            return [_row(r) for r in await conn.execute(query)]

    def _tx(self, conn: AsyncConnection | None) -> AbstractAsyncContextManager[AsyncConnection]:
        return transaction(self._engine, conn)

    async def _insert(
        self, table: sa.Table, values: dict[str, Any], conn: AsyncConnection | None
    ) -> dict[str, Any]:
        try:
            async with self._tx(conn) as tx:
                await tx.execute(table.insert().values(**values))
        except IntegrityError as exc:
            raise Conflict(f"{table.name[:-1]} conflicts with an existing one") from exc
        return values

    # -- orgs, teams ---------------------------------------------------------------
    async def create_org(
        self, name: str, now: datetime, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        """A new org; 409 naming the org that already has ``name`` (names are unique, so
        ``bootstrap --org NAME`` and people can find an org by its name)."""
        values = {"id": new_id("org"), "name": name, "created_at": now}
        async with self._tx(conn) as tx:
            if await insert_new(tx, schema.orgs, values, ["name"]):
                return values
            existing = (
                await tx.execute(sa.select(schema.orgs.c.id).where(schema.orgs.c.name == name))
            ).scalar_one()
        raise Conflict(f"name: an org named {name!r} already exists ({existing})", param="name")

    async def org_named(self, name: str) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(schema.orgs).where(schema.orgs.c.name == name))
            ).first()
        return None if row is None else dict(row._mapping)

    async def get_org(self, org_id: str) -> dict[str, Any]:
        return await self._one(schema.orgs, org_id, "org")

    async def update_org(
        self, org_id: str, values: dict[str, Any], conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        """Change an org's settings (``reporting_timezone``, ``week_start``)."""
        async with self._tx(conn) as tx:
            t = schema.orgs
            done = await tx.execute(t.update().where(t.c.id == org_id).values(**values))
            if not done.rowcount:
                raise NotFound(f"org {org_id} not found")
            row = (await tx.execute(sa.select(t).where(t.c.id == org_id))).one()
            if "reporting_timezone" in values:  # the daily rollup follows, in this transaction
                await daily.set_daily_zone(tx, org_id, str(row.reporting_timezone))
        return _row(row)

    async def list_orgs(self) -> list[dict[str, Any]]:
        return await self._list(schema.orgs)

    async def create_team(
        self, org_id: str, name: str, now: datetime, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        await self._require(schema.orgs, org_id, "org_id", conn)
        values = {"id": new_id("team"), "org_id": org_id, "name": name, "created_at": now}
        return await self._insert(schema.teams, values, conn)

    async def get_team(self, team_id: str) -> dict[str, Any]:
        return await self._one(schema.teams, team_id, "team")

    async def list_teams(self, org_id: str | None = None) -> list[dict[str, Any]]:
        return await self._list(schema.teams, org_id=org_id)

    async def _require(
        self, table: sa.Table, object_id: str, field: str, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        try:
            return await self._one(table, object_id, field, conn)
        except NotFound as exc:
            raise ValidationFailed(f"{field}: {object_id} does not exist", param=field) from exc

    async def _org_of(
        self, org_id: str | None, team_id: str | None, conn: AsyncConnection | None = None
    ) -> str:
        """Check ``team_id`` belongs to ``org_id``; infer the org from the team if omitted."""
        if team_id is not None:
            team = await self._require(schema.teams, team_id, "team_id", conn)
            if org_id is not None and team["org_id"] != org_id:
                raise ValidationFailed("team_id: team belongs to another org", param="team_id")
            return str(team["org_id"])
        if org_id is None:
            raise ValidationFailed("org_id: required when no team is given", param="org_id")
        await self._require(schema.orgs, org_id, "org_id", conn)
        return org_id

    # -- users, agents -------------------------------------------------------------
    async def create_user(
        self,
        email: str,
        role: str | Standing,
        team_ids: Sequence[str],
        org_id: str | None,
        now: datetime,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        """A user with an org role and a role in each of their teams: a ``Standing``, or
        one ``role`` in ``team_ids`` (``Standing.single``)."""
        standing = role if isinstance(role, Standing) else Standing.single(role, team_ids)
        if standing.role not in ORG_ROLES or not set(standing.teams.values()) <= set(TEAM_ROLES):
            raise ValidationFailed(f"role: must be one of {', '.join(ROLES)}", param="role")
        orgs = {await self._org_of(org_id, t, conn) for t in standing.teams} or {
            await self._org_of(org_id, None, conn)
        }
        if len(orgs) != 1:
            raise ValidationFailed("team_ids: teams belong to different orgs", param="team_ids")
        values = {
            "id": new_id("user"),
            "org_id": orgs.pop(),
            "email": email,
            "role": standing.role,
            "created_at": now,
        }
        try:
            async with self._tx(conn) as tx:
                await tx.execute(schema.users.insert().values(**values))
                await self._set_memberships(tx, str(values["id"]), standing.teams)
        except IntegrityError as exc:
            raise Conflict(f"a user with email {email} already exists in this org") from exc
        return _user_public(values, dict(standing.teams))

    @staticmethod
    async def _set_memberships(
        conn: AsyncConnection, user_id: str, teams: Mapping[str, str]
    ) -> None:
        links = schema.user_teams
        await conn.execute(links.delete().where(links.c.user_id == user_id))
        if teams:
            await conn.execute(
                links.insert(),
                [{"user_id": user_id, "team_id": t, "role": r} for t, r in sorted(teams.items())],
            )

    async def _with_teams(
        self, users: list[dict[str, Any]], conn: AsyncConnection | None = None
    ) -> list[dict[str, Any]]:
        if not users:
            return users
        ids = [u["id"] for u in users]
        async with reading(self._engine, conn) as reader:
            rows = await reader.execute(
                sa.select(schema.user_teams).where(schema.user_teams.c.user_id.in_(ids))
            )
            memberships = [(r.user_id, r.team_id, r.role) for r in rows]
        return [
            _user_public(user, {t: r for u, t, r in memberships if u == user["id"]})
            for user in users
        ]

    async def get_user(self, user_id: str, conn: AsyncConnection | None = None) -> dict[str, Any]:
        user = await self._one(schema.users, user_id, "user", conn)
        return (await self._with_teams([user], conn))[0]

    async def list_users(self, org_id: str | None = None) -> list[dict[str, Any]]:
        return await self._with_teams(await self._list(schema.users, org_id=org_id))

    async def set_standing(
        self, user_id: str, standing: Standing, conn: AsyncConnection, field: str = "team_ids"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Give a user this org role and these memberships (teams of their org only; a
        refusal names ``field``, where the request named the teams). Returns (before,
        after)."""
        before = await self.get_user(user_id, conn)
        for team_id in standing.teams:
            team = await self._require(schema.teams, team_id, field, conn)
            if team["org_id"] != before["org_id"]:
                raise ValidationFailed(
                    f"{field}: team {team_id} belongs to another org", param=field
                )
        await conn.execute(
            schema.users.update().where(schema.users.c.id == user_id).values(role=standing.role)
        )
        await self._set_memberships(conn, user_id, standing.teams)
        return before, _user_public({**before, "org_role": standing.role}, dict(standing.teams))

    async def create_agent(
        self,
        name: str,
        team_id: str | None,
        org_id: str | None,
        now: datetime,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        resolved = await self._org_of(org_id, team_id, conn)
        values = {
            "id": new_id("agent"),
            "org_id": resolved,
            "team_id": team_id,
            "name": name,
            "created_at": now,
        }
        return await self._insert(schema.agents, values, conn)

    async def get_agent(self, agent_id: str) -> dict[str, Any]:
        return await self._one(schema.agents, agent_id, "agent")

    async def list_agents(self, org_id: str | None = None) -> list[dict[str, Any]]:
        return await self._list(schema.agents, org_id=org_id)

    # -- virtual keys --------------------------------------------------------------
    async def create_key(
        self, spec: dict[str, Any], now: datetime, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        """Create a key; the returned dict carries the secret once, as ``key``."""
        org_id = await self._org_of(spec["org_id"], spec.get("team_id"), conn)
        for field, table in (("user_id", schema.users), ("agent_id", schema.agents)):
            if spec.get(field) is not None:
                owner = await self._require(table, spec[field], field, conn)
                if owner["org_id"] != org_id:
                    raise ValidationFailed(f"{field}: belongs to another org", param=field)
        expires_at = spec.get("expires_at")
        check_key_expiry(expires_at, now)
        secret = new_virtual_key()
        values = {
            "id": new_id("key"),
            "org_id": org_id,
            "team_id": spec.get("team_id"),
            "user_id": spec.get("user_id"),
            "agent_id": spec.get("agent_id"),
            "name": spec["name"],
            "key_hash": hash_secret(secret),
            "key_prefix": shown_prefix(secret),
            "tags": list(spec.get("tags") or []),
            "models": list(spec.get("models") or []),
            "allow_request_tags": bool(spec.get("allow_request_tags", False)),
            "expires_at": expires_at,
            "revoked_at": None,
            "created_at": now,
        }
        await self._insert(schema.virtual_keys, values, conn)
        return {**_key_public(values), "key": secret}

    async def get_key(self, key_id: str) -> dict[str, Any]:
        return _key_public(await self._one(schema.virtual_keys, key_id, "key"))

    async def list_keys(
        self, org_id: str | None = None, team_id: str | None = None
    ) -> list[dict[str, Any]]:
        rows = await self._list(schema.virtual_keys, org_id=org_id, team_id=team_id)
        return [_key_public(r) for r in rows]

    async def revoke_key(
        self, key_id: str, now: datetime, conn: AsyncConnection | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Revoke (idempotent: an already revoked key stays as it was). (before, after);
        ``after is before`` unless this call revoked it: of several revokes at once only
        the one whose UPDATE changed the row is told so (and audits it)."""
        table = schema.virtual_keys
        async with self._tx(conn) as tx:
            done = await tx.execute(
                table.update()
                .where(table.c.id == key_id, table.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            current = _key_public(await self._one(table, key_id, "key", tx))
        if done.rowcount != 1:
            return current, current
        return {**current, "revoked_at": None, "status": "active"}, current

    async def rotate_key(
        self, key_id: str, conn: AsyncConnection | None = None
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Give the key a new secret; the old one stops working. Returns (key, old hash,
        the key as it was)."""
        current = await self._one(schema.virtual_keys, key_id, "key", conn)
        if current["revoked_at"] is not None:
            raise Conflict(f"key {key_id} is revoked and cannot be rotated")
        secret = new_virtual_key()
        table = schema.virtual_keys
        async with self._tx(conn) as tx:
            await tx.execute(
                table.update()
                .where(table.c.id == key_id)
                .values(key_hash=hash_secret(secret), key_prefix=shown_prefix(secret))
            )
        rotated = {**current, "key_prefix": shown_prefix(secret)}
        return {**_key_public(rotated), "key": secret}, current["key_hash"], _key_public(current)

    async def set_key_expiry(
        self,
        key_id: str,
        expires_at: datetime | None,
        now: datetime,
        conn: AsyncConnection | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Set (or, with None, clear) when the key stops working. (before, after)."""
        table = schema.virtual_keys
        before = _key_public(await self._one(table, key_id, "key", conn))
        if before["revoked_at"] is not None:
            raise Conflict(f"key {key_id} is revoked; its expiry cannot change")
        check_key_expiry(expires_at, now)
        async with self._tx(conn) as tx:
            await tx.execute(
                table.update().where(table.c.id == key_id).values(expires_at=expires_at)
            )
        return before, {**before, "expires_at": expires_at}

    async def keys_expiring(self, now: datetime, until: datetime) -> list[dict[str, Any]]:
        """Keys not revoked whose expiry is in ``(now, until]``."""
        table = schema.virtual_keys
        query = sa.select(table).where(
            table.c.revoked_at.is_(None), table.c.expires_at > now, table.c.expires_at <= until
        )
        async with self._engine.connect() as conn:
            return [_key_public(_row(r)) for r in await conn.execute(query)]

    async def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        table = schema.virtual_keys
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(table).where(table.c.key_hash == key_hash))).first()
        return None if row is None else _key_record(_row(row))
