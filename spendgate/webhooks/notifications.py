"""In-app notifications and per-user notification preferences, with a daily digest.

A user with ``digest`` on gets low-severity notifications ``queued``; once a UTC day is
over, :func:`build_daily_digests` folds each user's queued rows of that day into one
``digest.daily`` notification (safe to run on several replicas: an atomic update claims
the rows).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.access import NOBODY, Owner
from spendgate.errors import NotFound, ValidationFailed
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.database import transaction, upsert
from spendgate.store.owners import owners_of
from spendgate.webhooks.catalog import Event, is_low_severity, title, valid_pattern
from spendgate.webhooks.formats import console_link, summary
from spendgate.webhooks.matching import SCOPE_TYPES, Preferences, Recipient
from spendgate.webhooks.tables import notification_preferences, notifications, webhook_endpoints

NT = notifications
PREFS = notification_preferences
DIGEST_TYPE = "digest.daily"
MAX_DIGEST_ITEMS = 200


def notification_values(
    user_id: str, event: Event, prefs: Preferences, now: datetime
) -> dict[str, Any]:
    queued = prefs.digest and is_low_severity(event.type, dict(event.data))
    return {
        "id": new_id("ntf"),
        "user_id": user_id,
        "event_id": event.id,
        "type": event.type,
        "severity": event.severity,
        "title": title(event.type),
        "body": summary(event),
        "link": console_link(event, ""),
        "data": dict(event.data),
        "created_at": now,
        "read_at": None,
        "digest_state": "queued" if queued else None,
        "digest_id": None,
    }


def notification_out(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: row[k]
        for k in (
            "id",
            "user_id",
            "event_id",
            "type",
            "severity",
            "title",
            "body",
            "link",
            "data",
            "created_at",
            "read_at",
        )
    } | {"read": row["read_at"] is not None}


async def recipients(
    conn: AsyncConnection, org_id: str, *, user_ids: Collection[str] | None = None
) -> list[tuple[Recipient, Preferences]]:
    """Every user of the org (or those of ``user_ids`` in it) with their teams (and role
    in each) and their preferences (defaults when unset)."""
    users = schema.users
    query = (
        sa.select(users.c.id, users.c.role, PREFS.c.preferences)
        .select_from(users.outerjoin(PREFS, PREFS.c.user_id == users.c.id))
        .where(users.c.org_id == org_id)
    )
    if user_ids is not None:
        query = query.where(users.c.id.in_(list(user_ids)))
    rows = (await conn.execute(query)).all()
    if not rows:
        return []
    teams: dict[str, dict[str, str]] = defaultdict(dict)
    ut = schema.user_teams
    for user_id, team_id, role in await conn.execute(
        sa.select(ut.c.user_id, ut.c.team_id, ut.c.role).where(
            ut.c.user_id.in_([r.id for r in rows])
        )
    ):
        teams[user_id][team_id] = role
    return [
        (
            Recipient(
                r.id,
                org_id,
                r.role,
                frozenset(teams[r.id]),
                tuple(sorted(teams[r.id].items())),
            ),
            Preferences.from_json(r.preferences),
        )
        for r in rows
    ]


async def endpoint_owners(
    conn: AsyncConnection, endpoints: Iterable[Mapping[str, Any]]
) -> dict[str, Owner]:
    """Where each endpoint lives, for :func:`~spendgate.webhooks.matching.may_route`: an
    unfiltered or tag-filtered endpoint spans orgs (nobody's but the master key's); a
    filtered one lives where its scope does. A query per scope type among them; an
    endpoint whose scope is gone is absent."""
    endpoints = list(endpoints)
    by_type: dict[str, list[str]] = defaultdict(list)
    out: dict[str, Owner] = {}
    for endpoint in endpoints:
        scope_type = endpoint["scope_type"]
        if scope_type in (None, "tag"):
            out[endpoint["id"]] = NOBODY
        else:
            by_type[scope_type].append(endpoint["id"])
    scope_ids: dict[str, str] = {e["id"]: e["scope_id"] for e in endpoints}
    for scope_type, ids in by_type.items():
        found = await owners_of(conn, scope_type, (scope_ids[i] for i in ids))
        out.update({i: found[scope_ids[i]] for i in ids if scope_ids[i] in found})
    return out


async def _require_user(conn: AsyncConnection, user_id: str) -> None:
    users = schema.users
    if (await conn.execute(sa.select(users.c.id).where(users.c.id == user_id))).first() is None:
        raise NotFound(f"user {user_id} does not exist")


async def get_preferences(
    engine: AsyncEngine, user_id: str, conn: AsyncConnection | None = None
) -> Preferences:
    """The user's preferences (the defaults when unset); in ``conn``'s transaction when
    given."""
    async with transaction(engine, conn) as tx:
        await _require_user(tx, user_id)
        row = (
            await tx.execute(sa.select(PREFS.c.preferences).where(PREFS.c.user_id == user_id))
        ).first()
    return Preferences.from_json(None if row is None else row[0])


async def put_preferences(
    engine: AsyncEngine,
    user_id: str,
    prefs: Preferences,
    now: datetime,
    conn: AsyncConnection | None = None,
) -> Preferences:
    bad = [t for t in prefs.event_types if not valid_pattern(t)]
    if bad:
        raise ValidationFailed(f"event_types: unknown event type {bad[0]!r}", param="event_types")
    wrong = [t for t, _ in prefs.scopes if t not in SCOPE_TYPES]
    if wrong:
        raise ValidationFailed(f"scopes: unknown scope_type {wrong[0]!r}", param="scopes")
    async with transaction(engine, conn) as tx:
        await _require_user(tx, user_id)
        if prefs.webhook_endpoint_ids:
            ep = webhook_endpoints
            known = {
                r[0]
                for r in await tx.execute(
                    sa.select(ep.c.id).where(ep.c.id.in_(prefs.webhook_endpoint_ids))
                )
            }
            missing = [i for i in prefs.webhook_endpoint_ids if i not in known]
            if missing:
                raise ValidationFailed(
                    f"channels.webhook_endpoint_ids: {missing[0]} does not exist",
                    param="channels.webhook_endpoint_ids",
                )
        await upsert(
            tx, PREFS, [{"user_id": user_id, "preferences": prefs.to_json(), "updated_at": now}]
        )
    return prefs


async def list_notifications(
    engine: AsyncEngine, user_id: str, *, unread_only: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    """Newest first; rows still waiting for (or folded into) a digest are not shown."""
    query = (
        sa.select(NT)
        .where(NT.c.user_id == user_id, NT.c.digest_state.is_(None))
        .order_by(NT.c.created_at.desc(), NT.c.id)
        .limit(limit)
    )
    if unread_only:
        query = query.where(NT.c.read_at.is_(None))
    async with engine.connect() as conn:
        return [notification_out(dict(r._mapping)) for r in await conn.execute(query)]


async def mark_read(
    engine: AsyncEngine, notification_id: str, now: datetime, user_id: str | None = None
) -> dict[str, Any]:
    where = [NT.c.id == notification_id]
    if user_id is not None:
        where.append(NT.c.user_id == user_id)
    async with engine.begin() as conn:
        await conn.execute(NT.update().where(*where, NT.c.read_at.is_(None)).values(read_at=now))
        row = (await conn.execute(sa.select(NT).where(*where))).first()
    if row is None:
        raise NotFound(f"notification {notification_id} does not exist")
    return notification_out(dict(row._mapping))


async def mark_all_read(engine: AsyncEngine, user_id: str, now: datetime) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(
            NT.update()
            .where(NT.c.user_id == user_id, NT.c.read_at.is_(None), NT.c.digest_state.is_(None))
            .values(read_at=now)
        )
    return int(result.rowcount)


async def build_daily_digests(engine: AsyncEngine, now: datetime) -> int:
    """Fold every finished UTC day's queued notifications into one per user and day."""
    today = datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)
    async with engine.connect() as conn:
        groups = (
            await conn.execute(
                sa.select(NT.c.user_id, NT.c.created_at).where(
                    NT.c.digest_state == "queued", NT.c.created_at < today
                )
            )
        ).all()
    days = sorted({(u, c.astimezone(UTC).date()) for u, c in groups})
    made = 0
    for user_id, day in days:
        if await _digest_one(engine, user_id, day, now):
            made += 1
    return made


async def _digest_one(engine: AsyncEngine, user_id: str, day: date, now: datetime) -> bool:
    start = datetime.combine(day, time(), tzinfo=UTC)
    digest_id = new_id("ntf")
    async with engine.begin() as conn:
        claimed = (
            await conn.execute(
                NT.update()
                .where(
                    NT.c.user_id == user_id,
                    NT.c.digest_state == "queued",
                    NT.c.created_at >= start,
                    NT.c.created_at < start + timedelta(days=1),
                )
                .values(digest_state="batched", digest_id=digest_id)
                .returning(NT.c.id, NT.c.type, NT.c.title, NT.c.body, NT.c.created_at)
            )
        ).all()
        if not claimed:
            return False
        items = sorted(claimed, key=lambda r: (r.created_at, r.id))
        lines = [f"- {r.title}: {r.body}" for r in items[:20]]
        if len(items) > 20:
            lines.append(f"- … and {len(items) - 20} more")
        await conn.execute(
            NT.insert().values(
                id=digest_id,
                user_id=user_id,
                event_id=None,
                type=DIGEST_TYPE,
                severity="info",
                title=f"Daily digest for {day.isoformat()}: {len(items)} notifications",
                body="\n".join(lines)[:4000],
                link="/notifications",
                data={
                    "date": day.isoformat(),
                    "count": len(items),
                    "items": [
                        {
                            "id": r.id,
                            "type": r.type,
                            "title": r.title,
                            "created_at": r.created_at.isoformat(),
                        }
                        for r in items[:MAX_DIGEST_ITEMS]
                    ],
                },
                created_at=now,
                read_at=None,
                digest_state=None,
                digest_id=None,
            )
        )
    return True


async def unread_count(engine: AsyncEngine, user_id: str) -> int:
    """How many of the user's notifications are unread (the console's header badge)."""
    query = (
        sa.select(sa.func.count())
        .select_from(NT)
        .where(NT.c.user_id == user_id, NT.c.read_at.is_(None), NT.c.digest_state.is_(None))
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())
