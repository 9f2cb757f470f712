"""Stored events (SPEC §13): facts worth telling someone about, deduplicated by key."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.audit_chain import enforcement_event
from spendgate.security.credentials import new_id
from spendgate.store import audit as audit_store
from spendgate.store import schema
from spendgate.store.database import insert_new
from spendgate.store.owners import owners_of
from spendgate.webhooks.fanout import fan_out
from spendgate.webhooks.matching import event_team_ids, team_subject


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An event decided but not stored yet: it travels with the ledger row of the call
    that caused it (in the spool, then in the same transaction as the row)."""

    type: str
    dedup_key: str | None
    data: dict[str, Any]
    created_at: datetime
    org_id: str | None


_CAPTURED: ContextVar[list[PendingEvent] | None] = ContextVar("spendgate_events", default=None)


@contextmanager
def capture_events(into: list[PendingEvent]) -> Iterator[None]:
    """Events emitted inside this block (by this task) are appended to ``into`` instead of
    being stored on their own: the proxy wraps a call's settle in it, so a threshold the
    settle crossed is stored with the spend that crossed it, exactly once."""
    token = _CAPTURED.set(into)
    try:
        yield
    finally:
        _CAPTURED.reset(token)


def capturing() -> list[PendingEvent] | None:
    """Where events emitted now should go, when inside ``capture_events``."""
    return _CAPTURED.get()


async def record_event(
    conn: AsyncConnection,
    type_: str,
    data: dict[str, Any],
    now: datetime,
    *,
    org_id: str | None = None,
    dedup_key: str | None = None,
) -> dict[str, Any] | None:
    """Insert an event in the caller's transaction; ``None`` if ``dedup_key`` already fired.

    The event's webhook deliveries and in-app notifications (the outbox) are written in
    the same transaction, so a fact, its event and its deliveries stand or fall together.
    An event about a key, agent or user is stored naming its team(s) (:func:`with_teams`).
    """
    data = await with_teams(conn, type_, data)
    values = {
        "id": new_id("evt"),
        "type": type_,
        "created_at": now,
        "org_id": org_id,
        "dedup_key": dedup_key,
        "data": data,
    }
    if dedup_key is None:
        await conn.execute(schema.events.insert().values(**values))
    elif await _fired_under_date(conn, dedup_key, data) or not await insert_new(
        conn, schema.events, values, ["dedup_key"]
    ):
        return None
    await fan_out(conn, values, now=now)
    fact = enforcement_event(type_, data, now)
    if fact is not None:  # threshold, limit, wallet and exception facts are audited too
        await audit_store.append(conn, fact, org_id=org_id, team_ids=sorted(event_team_ids(data)))
    return values


#: a budget's once-per-period key, ``budget:<id>:<window span>:<name>`` (``period_events``)
_SPAN_KEY = re.compile(r"(budget:[^:]+:)\d{8}T\d{6}Z/\d{8}T\d{6}Z:(.+)")
#: a refusal's name (``refusal_name``): before the rule was in it, the cap alone
_REFUSAL = re.compile(r"(refused:\d+):[^:]+")


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


#: a period's key before once-per-period keys named the window's span
#: (``budget_windows._key``): a day's date, a month (``2026-03``), or a week's first day
#: then ``/P1W`` (its slash is not a span's)
_DATE_LABEL = re.compile(r"\d{4}-\d{2}(?:-\d{2}(?:/P1W)?)?")


def dated_name(
    key: str, prefix: str, data: Mapping[str, Any], window: tuple[str | None, str | None]
) -> str | None:
    """The name (``alert:50``, ``refused:<cap>``) of a budget's once-per-period event
    stored under ``key`` before such keys named the window's span, when it counts for
    ``window`` (its ``period_start`` and ``period_end``, ISO): ``key`` is ``prefix``
    (``budget:<id>:``), the period's key (its local date, month, or week:
    ``_DATE_LABEL``), then the name, and the event's ``data`` names that window. None
    for a key under the span, or of another window (a date names other hours after a
    zone move, and these hours another date).

    The one rule for events stored before the upgrade: what a budget's status and the
    sweeper count as fired (``period_events.fired_in_periods``), and what recording the
    same event again finds (:func:`record_event`)."""
    if not key.startswith(prefix):
        return None
    label, colon, name = key[len(prefix) :].partition(":")
    if not colon or _DATE_LABEL.fullmatch(label) is None:  # e.g. a span's
        return None
    if (data.get("period_start"), data.get("period_end")) != window:
        return None
    return name


async def _fired_under_date(conn: AsyncConnection, dedup_key: str, data: dict[str, Any]) -> bool:
    """Whether a budget's once-per-period event ``dedup_key`` fired before such keys named
    the window's span (:func:`dated_name`: under ``budget:<id>:<any date>:<name>``, a
    refusal's name then its cap alone, its data naming the window of ``data``). Without
    this a level fired before the upgrade fired again on the settle path when crossed
    again (an exception, a raised amount), and a refusal was told again. One query, for
    budget period events only (a few per budget and period)."""
    found = _SPAN_KEY.fullmatch(dedup_key)
    if found is None:
        return False
    prefix, name = found.groups()
    refusal = _REFUSAL.fullmatch(name)
    names = (name, refusal.group(1)) if refusal is not None else (name,)
    table = schema.events
    query = sa.select(table.c.dedup_key, table.c.data).where(
        sa.or_(
            *(table.c.dedup_key.like(f"{_like(prefix)}%:{_like(n)}", escape="\\") for n in names)
        )
    )
    window = (data.get("period_start"), data.get("period_end"))
    return any(
        dated_name(key, prefix, old or {}, window) in names
        for key, old in await conn.execute(query)
    )


async def with_teams(conn: AsyncConnection, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a copy) naming the team(s) of the key, agent or user it is about
    (``webhooks.matching.team_subject``): ``team_id`` for a key or agent (``null``: an
    org-wide one), ``team_ids`` for a user (their teams now). One query, two for a user;
    none for an event about anything else or naming its team already."""
    subject = team_subject(type_, data)
    if subject is None:
        return data
    kind, object_id = subject
    owner = (await owners_of(conn, kind, [object_id])).get(object_id)
    if owner is None:  # gone meanwhile: the event concerns no team
        return data
    if kind == "user":
        return {**data, "team_ids": sorted(owner.team_ids)}
    return {**data, "team_id": min(owner.team_ids, default=None)}


async def list_events(
    engine: AsyncEngine, *, type_: str | None = None, org_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    table = schema.events
    query = sa.select(table).order_by(table.c.created_at.desc(), table.c.id).limit(limit)
    if type_ is not None and type_.endswith(".*"):  # a family: budget.* (the webhooks' kind)
        query = query.where(table.c.type.startswith(type_[:-1], autoescape=True))
    elif type_ is not None and type_ != "*":
        query = query.where(table.c.type == type_)
    if org_id is not None:
        query = query.where(table.c.org_id == org_id)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


@dataclass(frozen=True, slots=True)
class Fired:
    """An event stored under a dedup key: the key, when, and its data."""

    key: str
    at: datetime
    data: dict[str, Any]


async def fired_many(engine: AsyncEngine, prefixes: Collection[str]) -> dict[str, list[Fired]]:
    """The events stored under dedup keys starting with each of ``prefixes``, in one query
    (a page of budgets): each prefix's, oldest first (one under two prefixes is under both)."""
    out: dict[str, list[Fired]] = {p: [] for p in prefixes}
    if not out:
        return out
    table = schema.events
    matches = [table.c.dedup_key.like(_like(p) + "%", escape="\\") for p in out]
    query = (
        sa.select(table.c.dedup_key, table.c.created_at, table.c.data)
        .where(sa.or_(*matches))
        .order_by(table.c.created_at)
    )
    async with engine.connect() as conn:
        rows = [Fired(r[0], r[1], dict(r[2] or {})) for r in await conn.execute(query)]
    for row in rows:
        for prefix, found in out.items():
            if row.key.startswith(prefix):
                found.append(row)
    return out
