"""Where objects live (:class:`~spendgate.core.access.Owner`: their org and teams), looked
up a query per kind of object (two for users). The admin API checks callers against
these owners; events use them to name the team(s) of the key, agent or user they are
about; fan-out to check a user's notification routes against the endpoints' owners."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.core.access import Owner
from spendgate.store import schema

OWNED_TABLES: dict[str, sa.Table] = {
    "team": schema.teams,
    "user": schema.users,
    "agent": schema.agents,
    "key": schema.virtual_keys,
    "org": schema.orgs,
}


async def owners_of(conn: AsyncConnection, kind: str, ids: Iterable[str]) -> dict[str, Owner]:
    """The owners of objects of one kind (``org``, ``team``, ``user``, ``agent``,
    ``key``), by id; a missing object (or an unknown kind) is absent: an org owns itself,
    a team is in itself, a user is in each of their teams, an agent or key in its team
    (none: org-wide)."""
    table = OWNED_TABLES.get(kind)
    wanted = sorted(set(ids))
    if table is None or not wanted:
        return {}
    rows = (await conn.execute(sa.select(table).where(table.c.id.in_(wanted)))).all()
    if kind == "org":
        return {row.id: Owner.of(row.id) for row in rows}
    if kind == "team":
        return {row.id: Owner.of(row.org_id, row.id) for row in rows}
    if kind == "user":
        teams: dict[str, list[str]] = {row.id: [] for row in rows}
        ut = schema.user_teams
        links = await conn.execute(
            sa.select(ut.c.user_id, ut.c.team_id).where(ut.c.user_id.in_(wanted))
        )
        for user_id, team_id in links:
            teams[user_id].append(team_id)
        return {row.id: Owner.of(row.org_id, *teams[row.id]) for row in rows}
    return {row.id: Owner.of(row.org_id, row.team_id) for row in rows}


async def names_of(conn: AsyncConnection, kind: str, ids: Iterable[str]) -> dict[str, str]:
    """What a person calls objects of one kind (as ``OWNED_TABLES``), by id, in one
    query: a user's email, any other's name; a missing object is absent."""
    table = OWNED_TABLES.get(kind)
    wanted = sorted(set(ids))
    if table is None or not wanted:
        return {}
    name = table.c.email if kind == "user" else table.c.name
    rows = await conn.execute(sa.select(table.c.id, name).where(table.c.id.in_(wanted)))
    return {row[0]: str(row[1]) for row in rows}
