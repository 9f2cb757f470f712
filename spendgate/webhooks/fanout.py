"""Fan an event out, in the caller's transaction: one delivery per endpoint that wants it,
one notification per user who wants it, and PagerDuty incidents tracked for resolving.

Imports nothing from ``spendgate.store.events``, so ``record_event`` may call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.security.credentials import new_id
from spendgate.webhooks.catalog import Event
from spendgate.webhooks.formats import incident_period, pagerduty_dedup_key
from spendgate.webhooks.matching import endpoint_wants, may_route, recipients_for
from spendgate.webhooks.notifications import endpoint_owners, notification_values, recipients
from spendgate.webhooks.tables import (
    notifications,
    pagerduty_incidents,
    webhook_deliveries,
    webhook_endpoints,
)

DL, EP, PD = webhook_deliveries, webhook_endpoints, pagerduty_incidents


@dataclass(frozen=True, slots=True)
class FanOut:
    delivery_ids: tuple[str, ...] = ()
    notification_ids: tuple[str, ...] = ()


def due_now(now: datetime) -> dict[str, Any]:
    """The outbox state of a delivery not tried yet (a new one or a redelivery): pending,
    due ``now``, never attempted, leased by no worker."""
    return {
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "leased_by": None,
        "last_response_code": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
    }


def delivery_values(endpoint_id: str, event: Event, action: str, now: datetime) -> dict[str, Any]:
    return {
        "id": new_id("whd"),
        "endpoint_id": endpoint_id,
        "message_id": new_id("msg"),
        "event_id": event.id,
        "event_type": event.type,
        "payload": event.envelope(),
        "action": action,
        "redelivery_of": None,
        **due_now(now),
    }


async def _already_fanned_out(conn: AsyncConnection, event_id: str) -> bool:
    for table in (DL, notifications):
        if (
            await conn.execute(sa.select(table.c.id).where(table.c.event_id == event_id).limit(1))
        ).first() is not None:
            return True
    return False


async def fan_out(
    conn: AsyncConnection, event_row: Mapping[str, Any], *, now: datetime | None = None
) -> FanOut:
    """In the caller's transaction: one delivery per endpoint that wants the event and one
    notification per user who wants it, plus a delivery per endpoint those users route
    their notifications to, while they may manage it (``matching.may_route``, asked now:
    the endpoints' owners are looked up once per event, a query per scope type). Calling
    it twice for one event adds nothing."""
    event = Event.from_row(event_row)
    at = now or event.timestamp
    if await _already_fanned_out(conn, event.id):
        return FanOut()
    endpoints = {
        r.id: dict(r._mapping)
        for r in await conn.execute(sa.select(EP).where(EP.c.enabled.is_(True)))
    }
    targets = [i for i, e in endpoints.items() if endpoint_wants(e, event)]
    notes: list[dict[str, Any]] = []
    if event.org_id is not None:
        wanting = recipients_for(await recipients(conn, event.org_id), event)
        routed = {i for _, p in wanting for i in p.webhook_endpoint_ids if i in endpoints}
        owners = await endpoint_owners(conn, (endpoints[i] for i in routed))
        for user, prefs in wanting:
            if prefs.in_app:
                notes.append(notification_values(user.user_id, event, prefs, at))
            targets += [
                i for i in prefs.webhook_endpoint_ids if i in owners and may_route(user, owners[i])
            ]
    rows = []
    for endpoint_id in dict.fromkeys(targets):
        kind = endpoints[endpoint_id]["kind"]
        rows.append(
            delivery_values(endpoint_id, event, "trigger" if kind == "pagerduty" else "send", at)
        )
        if kind == "pagerduty":
            await _track_incident(conn, endpoint_id, event, at)
    if rows:
        await conn.execute(DL.insert(), rows)
    if notes:
        await conn.execute(notifications.insert(), notes)
    return FanOut(tuple(r["id"] for r in rows), tuple(n["id"] for n in notes))


async def _track_incident(
    conn: AsyncConnection, endpoint_id: str, event: Event, now: datetime
) -> None:
    budget_id, period = event.data.get("budget_id"), incident_period(event.data)
    if not budget_id or not period:
        return
    key = pagerduty_dedup_key(event)
    exists = (
        await conn.execute(
            sa.select(PD.c.dedup_key).where(PD.c.endpoint_id == endpoint_id, PD.c.dedup_key == key)
        )
    ).first()
    if exists is None:
        await conn.execute(
            PD.insert().values(
                endpoint_id=endpoint_id,
                dedup_key=key,
                budget_id=str(budget_id),
                period=period,
                event_id=event.id,
                triggered_at=now,
                resolved_at=None,
            )
        )
