"""The durable outbox: emit events (record + fan out), lease due deliveries to one worker
at a time, log each attempt, schedule retries, resolve PagerDuty incidents on reset.

Leasing. A worker claims due deliveries by setting ``lease_until``/``leased_by``:

- PostgreSQL: one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)``, so
  concurrent replicas take disjoint rows without waiting on each other;
- SQLite: a conditional ``UPDATE … WHERE id = ? AND <still due and unleased>`` per row
  (writes are serialised, so exactly one claimant sees ``rowcount == 1``).

Every later write is fenced on ``leased_by`` (a token unique to the claim); a lease
outlives the HTTP timeout, so a delivery is never sent by two workers at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.budget_windows import window_at
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.events import record_event
from spendgate.webhooks.catalog import Event
from spendgate.webhooks.fanout import FanOut, delivery_values, fan_out
from spendgate.webhooks.retries import retry_delay, should_disable
from spendgate.webhooks.tables import (
    pagerduty_incidents,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
)

DL, EP, PD = webhook_deliveries, webhook_endpoints, pagerduty_incidents
__all__ = [
    "FanOut",
    "claim_due",
    "emit_event",
    "fan_out",
    "pending_deliveries",
    "record_attempt",
    "resolve_incidents",
    "resolve_reset_periods",
]


async def emit_event(
    conn: AsyncConnection,
    type_: str,
    data: dict[str, Any],
    now: datetime,
    *,
    org_id: str | None = None,
    dedup_key: str | None = None,
) -> dict[str, Any] | None:
    """``record_event`` (which fans out), in the caller's transaction."""
    return await record_event(conn, type_, data, now, org_id=org_id, dedup_key=dedup_key)


# -- PagerDuty incidents: resolve when the budget period resets --------------------------
async def _resolve(conn: AsyncConnection, incident: Mapping[str, Any], now: datetime) -> bool:
    done = await conn.execute(
        PD.update()
        .where(
            PD.c.endpoint_id == incident["endpoint_id"],
            PD.c.dedup_key == incident["dedup_key"],
            PD.c.resolved_at.is_(None),
        )
        .values(resolved_at=now)
    )
    if done.rowcount != 1:
        return False
    trigger = (
        await conn.execute(
            sa.select(DL.c.payload)
            .where(
                DL.c.endpoint_id == incident["endpoint_id"], DL.c.event_id == incident["event_id"]
            )
            .limit(1)
        )
    ).first()
    if trigger is None:
        return False
    event = Event.from_envelope(trigger[0])
    await conn.execute(
        DL.insert().values(**delivery_values(incident["endpoint_id"], event, "resolve", now))
    )
    return True


async def resolve_event_incidents(conn: AsyncConnection, event_id: str, now: datetime) -> int:
    """Enqueue a PagerDuty ``resolve`` for each PagerDuty endpoint that was sent the
    trigger of ``event_id`` (an episode that has ended, e.g. a spend anomaly)."""
    sent = (
        await conn.execute(
            sa.select(DL.c.endpoint_id, DL.c.payload)
            .select_from(DL.join(EP, EP.c.id == DL.c.endpoint_id))
            .where(
                DL.c.event_id == event_id,
                DL.c.action == "trigger",
                DL.c.redelivery_of.is_(None),
                EP.c.kind == "pagerduty",
            )
        )
    ).all()
    for endpoint_id, payload in sent:
        event = Event.from_envelope(payload)
        await conn.execute(
            DL.insert().values(**delivery_values(endpoint_id, event, "resolve", now))
        )
    return len(sent)


async def resolve_incidents(
    conn: AsyncConnection, current_periods: Mapping[str, str], now: datetime
) -> int:
    """For budgets whose period changed (budget id → the current period as incidents
    name it, ``formats.incident_period``), enqueue a PagerDuty ``resolve`` for every
    incident still open from an earlier period."""
    if not current_periods:
        return 0
    open_ = (
        await conn.execute(
            sa.select(PD).where(
                PD.c.resolved_at.is_(None), PD.c.budget_id.in_(list(current_periods))
            )
        )
    ).all()
    resolved = 0
    for row in open_:
        stale = row.period != current_periods[row.budget_id]
        if stale and await _resolve(conn, dict(row._mapping), now):
            resolved += 1
    return resolved


async def resolve_reset_periods(engine: AsyncEngine, now: datetime) -> int:
    """Housekeeping: resolve incidents whose budget has moved to a new period window (or
    is gone): a zone move to other hours under the same date is a new window, one to the
    same hours under another date is not (``formats.incident_period``)."""
    budgets = schema.budgets
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    PD,
                    budgets.c.period.label("budget_period"),
                    budgets.c.timezone,
                    budgets.c.week_start,
                )
                .select_from(PD.outerjoin(budgets, budgets.c.id == PD.c.budget_id))
                .where(PD.c.resolved_at.is_(None))
            )
        ).all()
        resolved = 0
        for row in rows:
            window = (
                None
                if row.budget_period is None
                else window_at(now, row.budget_period, row.timezone, row.week_start)
            )
            # an incident names its window by its UTC bounds; one opened before, by its date
            current = window is not None and row.period in (window.span, window.key)
            if not current and await _resolve(conn, dict(row._mapping), now):
                resolved += 1
    return resolved


# -- leasing -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claim:
    delivery: Mapping[str, Any]
    endpoint: Mapping[str, Any]
    token: str


#: the trigger a PagerDuty ``resolve`` closes (same endpoint, same event)
_TRIGGER = DL.alias("pending_trigger")


def _due(now: datetime) -> list[sa.ColumnElement[bool]]:
    return [
        DL.c.status == "pending",
        DL.c.next_attempt_at <= now,
        sa.or_(DL.c.lease_until.is_(None), DL.c.lease_until < now),
        DL.c.endpoint_id.in_(sa.select(EP.c.id).where(EP.c.enabled.is_(True))),
        # a resolve waits while its trigger is still to be delivered (queued together,
        # or the trigger retrying across the period's reset): PagerDuty drops a resolve
        # of no open incident, and the trigger sent after it opened one nothing resolved
        sa.or_(
            DL.c.action != "resolve",
            ~sa.exists().where(
                _TRIGGER.c.endpoint_id == DL.c.endpoint_id,
                _TRIGGER.c.event_id == DL.c.event_id,
                _TRIGGER.c.action == "trigger",
                _TRIGGER.c.status == "pending",
            ),
        ),
    ]


async def claim_due(
    engine: AsyncEngine, now: datetime, *, worker_id: str, lease: timedelta, limit: int
) -> list[Claim]:
    """Lease up to ``limit`` due deliveries to this worker (see the module docstring)."""
    token = f"{worker_id[:50]}/{new_id('l')[2:18]}"
    values = {"lease_until": now + lease, "leased_by": token}
    pick = sa.select(DL.c.id).where(*_due(now)).order_by(DL.c.next_attempt_at).limit(limit)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            ids = [
                r[0]
                for r in await conn.execute(
                    DL.update()
                    .where(DL.c.id.in_(pick.with_for_update(skip_locked=True)), *_due(now))
                    .values(**values)
                    .returning(DL.c.id)
                )
            ]
    else:
        async with engine.connect() as conn:
            candidates = [r[0] for r in await conn.execute(pick)]
        ids = []
        for delivery_id in candidates:
            async with engine.begin() as conn:
                done = await conn.execute(
                    DL.update().where(DL.c.id == delivery_id, *_due(now)).values(**values)
                )
            if done.rowcount == 1:
                ids.append(delivery_id)
    if not ids:
        return []
    async with engine.connect() as conn:
        deliveries = {
            r.id: dict(r._mapping)
            for r in await conn.execute(
                sa.select(DL).where(DL.c.id.in_(ids), DL.c.leased_by == token)
            )
        }
        endpoints = {
            r.id: dict(r._mapping)
            for r in await conn.execute(
                sa.select(EP).where(EP.c.id.in_({d["endpoint_id"] for d in deliveries.values()}))
            )
        }
    return [
        Claim(d, endpoints[d["endpoint_id"]], token)
        for d in deliveries.values()
        if d["endpoint_id"] in endpoints
    ]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool
    response_code: int | None
    latency_ms: int
    error: str | None = None
    response_excerpt: str | None = None


async def record_attempt(
    engine: AsyncEngine,
    claim: Claim,
    result: AttemptResult,
    started_at: datetime,
    now: datetime,
    rand: float,
) -> str:
    """Log the attempt and move the delivery on: ``succeeded``, ``retrying`` or ``failed``
    (or ``lost`` when the lease was taken over meanwhile). Safe to call again with the
    same arguments after a failure (the worker does while the database is unreachable):
    an attempt already logged by this claim is not logged twice."""
    delivery, endpoint_id = claim.delivery, claim.delivery["endpoint_id"]
    attempt_no = int(delivery["attempts"]) + 1
    common: dict[str, Any] = {
        "attempts": attempt_no,
        "lease_until": None,
        "leased_by": None,
        "updated_at": now,
        "last_response_code": result.response_code,
        "last_error": result.error,
    }
    delay = None if result.ok else retry_delay(attempt_no, rand)
    values: dict[str, Any]
    if result.ok:
        outcome, values = (
            "succeeded",
            {"status": "succeeded", "finished_at": now, "next_attempt_at": None},
        )
    elif delay is not None:
        outcome, values = "retrying", {"next_attempt_at": now + delay}
    else:
        outcome, values = (
            "failed",
            {"status": "failed", "finished_at": now, "next_attempt_at": None},
        )
    async with engine.begin() as conn:
        # tried again after a commit whose answer was lost (the worker retries a write
        # the database dropped): the first try may have landed; log the attempt once
        landed = await conn.scalar(
            sa.select(sa.func.count()).where(
                webhook_attempts.c.delivery_id == delivery["id"],
                webhook_attempts.c.attempt == attempt_no,
                webhook_attempts.c.worker == claim.token,
            )
        )
        if landed:
            return outcome
        await conn.execute(
            webhook_attempts.insert().values(
                id=new_id("wha"),
                delivery_id=delivery["id"],
                endpoint_id=endpoint_id,
                attempt=attempt_no,
                started_at=started_at,
                outcome="succeeded" if result.ok else "failed",
                response_code=result.response_code,
                latency_ms=result.latency_ms,
                error=result.error,
                response_excerpt=result.response_excerpt,
                worker=claim.token,
            )
        )
        moved = await conn.execute(
            DL.update()
            .where(DL.c.id == delivery["id"], DL.c.leased_by == claim.token)
            .values(**common, **values)
        )
        if moved.rowcount != 1:
            return "lost"
        await _endpoint_health(conn, claim.endpoint, result.ok, now)
    return outcome


async def _endpoint_health(
    conn: AsyncConnection, endpoint: Mapping[str, Any], ok: bool, now: datetime
) -> None:
    """A success clears the failure run; a failure run of 5 days disables the endpoint."""
    endpoint_id = endpoint["id"]
    if ok:
        await conn.execute(
            EP.update()
            .where(EP.c.id == endpoint_id, EP.c.failing_since.is_not(None))
            .values(failing_since=None)
        )
        return
    await conn.execute(
        EP.update()
        .where(EP.c.id == endpoint_id, EP.c.failing_since.is_(None))
        .values(failing_since=now)
    )
    since = (
        await conn.execute(sa.select(EP.c.failing_since).where(EP.c.id == endpoint_id))
    ).scalar_one_or_none()
    if not should_disable(since, now):
        return
    assert since is not None
    reason = f"every delivery failed since {since.isoformat()}"
    disabled = await conn.execute(
        EP.update()
        .where(EP.c.id == endpoint_id, EP.c.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason, updated_at=now)
    )
    if disabled.rowcount == 1:
        org_id = endpoint["scope_id"] if endpoint["scope_type"] == "org" else None
        await emit_event(
            conn,
            "webhook.endpoint_disabled",
            {
                "endpoint_id": endpoint_id,
                "host": urlsplit(endpoint["url"]).hostname,
                "kind": endpoint["kind"],
                "failing_since": since.isoformat(),
                "reason": reason,
            },
            now,
            org_id=org_id,
            dedup_key=f"webhook:{endpoint_id}:disabled:{since.isoformat()}",
        )


async def pending_deliveries(engine: AsyncEngine) -> int:
    """Deliveries not yet succeeded or given up (due now or waiting for a retry)."""
    async with engine.connect() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).where(DL.c.status == "pending"))
    return int(count or 0)
