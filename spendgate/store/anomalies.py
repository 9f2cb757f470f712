"""Spend anomalies, the I/O side: hourly spend from the ledger, the episodes, their
``spend.anomaly`` / ``spend.anomaly_resolved`` events. The decisions are in
``spendgate.core.anomalies``; the optional pause or rate limit in
``spendgate.store.anomaly_actions``.

    AnomalyWatch.check(now)            (one replica per interval, from housekeeping)
      1. hourly_spend: settled spend per org/team/key/model/tags and UTC hour, from the
         ledger (older hours read once an hour; the last two and the running one each time)
      2. core.anomalies.check_all: every key, team and (org, model) against its band
      3. per finding, in one transaction: open (row + event + the scope's action, if one
         is set), continue (peak figures), or resolve (row + event + PagerDuty resolve)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core import anomalies as an
from spendgate.core.money import format_usd
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.anomaly_actions import apply_action
from spendgate.store.database import insert_for
from spendgate.store.events import record_event
from spendgate.store.forecasts import _bucket
from spendgate.store.ledger import cost_from_sums, exact_cost_sum
from spendgate.store.schema import JSONType, UTCDateTime
from spendgate.webhooks.outbox import resolve_event_incidents

log = logging.getLogger("spendgate")

HOUR = 3600
#: hours before the running one that are read again at every check (late ledger rows)
REREAD_HOURS = 2

anomalies = sa.Table(
    "anomalies",
    schema.metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), nullable=False, index=True),
    #: key | team | model
    sa.Column("scope_type", sa.String(10), nullable=False),
    #: the key or team id, or the model name
    sa.Column("scope_id", sa.String(200), nullable=False),
    #: the team it concerns (a key's team), for who may see it; None: org-wide
    sa.Column("team_id", sa.String(40), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    #: the UTC hour the episode opened in
    sa.Column("hour_start", UTCDateTime(), nullable=False),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
    sa.Column("method", sa.String(20), nullable=False),
    #: the check that opened it: share of the hour gone, figures for that part of the hour
    sa.Column("elapsed", sa.Float(), nullable=False),
    sa.Column("expected_nanos", sa.BigInteger(), nullable=False),
    sa.Column("upper_nanos", sa.BigInteger(), nullable=False),
    sa.Column("actual_nanos", sa.BigInteger(), nullable=False),
    #: the largest excess over expected any check of the episode saw
    sa.Column("peak_excess_nanos", sa.BigInteger(), nullable=False),
    sa.Column("last_checked_at", UTCDateTime(), nullable=False),
    #: [{dimension, id, actual_nanos, expected_nanos, share}]
    sa.Column("contributors", JSONType, nullable=False),
    sa.Column("event_id", sa.String(40), nullable=True),
    sa.Column("acknowledged_by", sa.String(100), nullable=True),
    sa.Column("acknowledged_at", UTCDateTime(), nullable=True),
    sa.Column("ack_note", sa.String(1000), nullable=True),
    #: what was done on opening (pause / rate limit) and its undoing; None: nothing
    sa.Column("action", JSONType, nullable=True),
    #: None (no action), active (in force), lifted
    sa.Column("action_state", sa.String(10), nullable=True),
    sa.Index(
        "uq_anomalies_open_scope",
        "org_id",
        "scope_type",
        "scope_id",
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    ),
    sa.Index("ix_anomalies_started", "started_at"),
)


def hour_number(at: datetime) -> int:
    return int(at.timestamp()) // HOUR


def hour_at(number: int) -> datetime:
    return datetime.fromtimestamp(number * HOUR, UTC)


# -- 1. the ledger: the one function to switch to spend rollups ---------------------------------
async def hourly_spend(engine: AsyncEngine, start: datetime, end: datetime) -> list[an.SpendCell]:
    """Settled spend of calls started in ``[start, end)``, per org, team, key, model, tags and
    UTC hour (calls of unknown price count nothing). Exact: nanos summed in SQL."""
    t = schema.ledger
    hour = _bucket(engine.dialect.name, t.c.started_at, HOUR).label("hour")
    dims = (t.c.org_id, t.c.team_id, t.c.key_id, t.c.model, t.c.tags)
    query = (
        sa.select(*dims, hour, *exact_cost_sum(t.c.cost_nanos))
        .where(t.c.started_at >= start, t.c.started_at < end, t.c.cost_nanos.is_not(None))
        .group_by(*dims, hour)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    cells: dict[tuple[str, str | None, str, str, tuple[str, ...], int], int] = {}
    for org, team, key, model, tags, number, whole, rest in rows:
        cell = (org, team, key, model, tuple(sorted(set(tags or ()))), int(number))
        cells[cell] = cells.get(cell, 0) + cost_from_sums(whole, rest)
    return [
        an.SpendCell(o, tm, k, m, tg, h, nanos) for (o, tm, k, m, tg, h), nanos in cells.items()
    ]


@dataclass(slots=True)
class _History:
    """Complete hours read at the start of this hour (``until``: the first hour not in
    ``cells``); rows that land later for them (a spool replayed after an outage) count
    from the next hour on."""

    first: int = 0
    until: int = 0
    cells: list[an.SpendCell] = field(default_factory=list)


# -- 2 and 3. the check --------------------------------------------------------------------------
PolicyChanged = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CheckResult:
    opened: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()
    open_now: int = 0


class AnomalyWatch:
    """Checks every scope's spend against its band and keeps the episodes."""

    def __init__(
        self,
        engine: AsyncEngine,
        params: an.Params,
        policy_changed: PolicyChanged,
        flush: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._engine = engine
        self.params = params
        self._policy_changed = policy_changed
        self._flush = flush
        self._history = _History()

    async def spend(self, now: datetime) -> an.Grid:
        """The grid of every scope's hourly spend, the running hour last."""
        current = hour_number(now)
        first = current - self.params.history_hours - 1
        reread = current - REREAD_HOURS
        h = self._history
        if (h.first, h.until) != (first, reread):  # a new hour: read the complete hours again
            h.cells = await hourly_spend(self._engine, hour_at(first), hour_at(reread))
            h.first, h.until = first, reread
        recent = await hourly_spend(self._engine, hour_at(reread), now + timedelta(microseconds=1))
        return an.grid([*h.cells, *recent], first, current - first)

    async def check(self, now: datetime) -> CheckResult:
        """One check of every scope at ``now``."""
        if self._flush is not None:
            await self._flush()
        spend = await self.spend(now)
        elapsed = (now.timestamp() % HOUR) / HOUR or 1.0 / HOUR
        open_rows = await open_anomalies(self._engine)
        started = {scope: hour_number(row["hour_start"]) for scope, row in open_rows.items()}
        findings = an.check_all(spend, elapsed, started, self.params)
        opened: list[str] = []
        resolved: list[str] = []
        acted = False
        for finding in findings:
            async with self._engine.begin() as conn:
                if finding.step == "open":
                    anomaly_id, did = await open_episode(conn, finding, now, hour_number(now))
                    if anomaly_id is not None:
                        opened.append(anomaly_id)
                        acted = acted or did
                elif finding.step == "continue":
                    await continue_episode(conn, open_rows[finding.scope], finding.verdict, now)
                elif await resolve_episode(conn, open_rows[finding.scope], finding.verdict, now):
                    resolved.append(open_rows[finding.scope]["id"])
        if acted:
            await self._policy_changed()
        open_now = len(open_rows) + len(opened) - len(resolved)
        return CheckResult(tuple(opened), tuple(resolved), open_now)


# -- episodes ------------------------------------------------------------------------------------
async def open_anomalies(engine: AsyncEngine) -> dict[an.ScopeKey, dict[str, Any]]:
    t = anomalies
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(t).where(t.c.resolved_at.is_(None)))
        return {(r.org_id, r.scope_type, r.scope_id): dict(r._mapping) for r in rows}


def _figures(verdict: an.Verdict) -> dict[str, Any]:
    return {
        "expected_usd": format_usd(verdict.expected),
        "upper_usd": format_usd(verdict.upper),
        "actual_usd": format_usd(verdict.actual),
        "excess_usd": format_usd(max(verdict.excess, 0)),
        "elapsed_percent": round(verdict.elapsed * 100),
        "method": verdict.method,
    }


def contributor_json(c: an.Contributor) -> dict[str, Any]:
    return {
        "dimension": c.dimension,
        "id": c.id,
        "actual_nanos": c.actual,
        "expected_nanos": c.expected,
        "share": round(c.share, 4),
    }


def contributor_out(c: dict[str, Any]) -> dict[str, Any]:
    actual, expected = int(c["actual_nanos"]), int(c["expected_nanos"])
    return {
        "dimension": c["dimension"],
        "id": c["id"],
        "actual_usd": format_usd(actual),
        "expected_usd": format_usd(expected),
        "excess_usd": format_usd(max(actual - expected, 0)),
        "share_percent": round(float(c["share"]) * 100, 1),
    }


def scope_data(org_id: str, scope_type: str, scope_id: str, team_id: str | None) -> dict[str, Any]:
    """What an event says about where: the fields webhook and notification filters match."""
    data: dict[str, Any] = {"org_id": org_id, "scope_type": scope_type, "scope_id": scope_id}
    if team_id is not None:
        data["team_id"] = team_id
    if scope_type == "key":
        data["key_id"] = scope_id
    elif scope_type == "model":
        data["model"] = scope_id
    return data


async def open_episode(
    conn: AsyncConnection, finding: an.Finding, now: datetime, hour: int
) -> tuple[str | None, bool]:
    """Insert the episode and its ``spend.anomaly`` event, and apply the scope's action;
    (None, False) if another replica opened one for this scope first."""
    org_id, scope_type, scope_id = finding.scope
    v = finding.verdict
    kids = [contributor_json(c) for c in finding.contributors]
    hour_start = hour_at(hour - 1 if finding.last_hour else hour)
    anomaly_id = new_id("anom")
    row: dict[str, Any] = {
        "id": anomaly_id,
        "org_id": org_id,
        "scope_type": scope_type,
        "scope_id": scope_id,
        "team_id": finding.team_id,
        "started_at": now,
        "hour_start": hour_start,
        "resolved_at": None,
        "method": v.method,
        "elapsed": v.elapsed,
        "expected_nanos": v.expected,
        "upper_nanos": v.upper,
        "actual_nanos": v.actual,
        "peak_excess_nanos": max(v.excess, 0),
        "last_checked_at": now,
        "contributors": kids,
        "event_id": None,
        "acknowledged_by": None,
        "acknowledged_at": None,
        "ack_note": None,
        "action": None,
        "action_state": None,
    }
    # the partial unique index (one open episode per scope) decides between replicas
    inserted = await conn.execute(
        insert_for(conn, anomalies).values(**row).on_conflict_do_nothing()
    )
    if inserted.rowcount != 1:
        return None, False
    action = await apply_action(conn, row, now)
    data = {
        "anomaly_id": row["id"],
        **scope_data(org_id, scope_type, scope_id, finding.team_id),
        "hour_start": hour_start.isoformat(),
        **_figures(v),
        "contributors": [contributor_out(c) for c in kids],
        "action": None if action is None else action.get("kind"),
    }
    event = await record_event(
        conn, "spend.anomaly", data, now, org_id=org_id, dedup_key=f"anomaly:{row['id']}"
    )
    values: dict[str, Any] = {"event_id": None if event is None else event["id"]}
    if action is not None:
        values["action"] = action
    await conn.execute(anomalies.update().where(anomalies.c.id == row["id"]).values(**values))
    return anomaly_id, action is not None and bool(action.get("applied"))


async def continue_episode(
    conn: AsyncConnection, row: dict[str, Any], verdict: an.Verdict, now: datetime
) -> None:
    peak = max(int(row["peak_excess_nanos"]), verdict.excess)
    await conn.execute(
        anomalies.update()
        .where(anomalies.c.id == row["id"])
        .values(peak_excess_nanos=peak, last_checked_at=now)
    )


async def resolve_episode(
    conn: AsyncConnection, row: dict[str, Any], verdict: an.Verdict, now: datetime
) -> bool:
    """Mark it resolved and record ``spend.anomaly_resolved`` (once: the row is updated only
    while it is open); PagerDuty incidents the opening event raised are resolved."""
    done = await conn.execute(
        anomalies.update()
        .where(anomalies.c.id == row["id"], anomalies.c.resolved_at.is_(None))
        .values(resolved_at=now, last_checked_at=now)
    )
    if done.rowcount != 1:
        return False
    data = {
        "anomaly_id": row["id"],
        **scope_data(row["org_id"], row["scope_type"], row["scope_id"], row["team_id"]),
        "started_at": row["started_at"].isoformat(),
        "resolved_at": now.isoformat(),
        "peak_excess_usd": format_usd(int(row["peak_excess_nanos"])),
        **_figures(verdict),
    }
    await record_event(
        conn,
        "spend.anomaly_resolved",
        data,
        now,
        org_id=row["org_id"],
        dedup_key=f"anomaly_resolved:{row['id']}",
    )
    if row["event_id"]:
        await resolve_event_incidents(conn, row["event_id"], now)
    return True


# -- reading -------------------------------------------------------------------------------------
async def get_anomaly(engine: AsyncEngine, anomaly_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(anomalies).where(anomalies.c.id == anomaly_id))).first()
    return None if row is None else dict(row._mapping)


async def list_anomalies(
    engine: AsyncEngine,
    *,
    org_id: str | None = None,
    team_ids: Sequence[str] | None = None,
    status: str = "all",
    scope_type: str | None = None,
    scope_id: str | None = None,
    acknowledged: bool | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first. ``team_ids``: only those teams' anomalies (a team role's view)."""
    t = anomalies
    query = sa.select(t).order_by(t.c.started_at.desc(), t.c.id).limit(limit)
    conditions = []
    if org_id is not None:
        conditions.append(t.c.org_id == org_id)
    if team_ids is not None:
        conditions.append(t.c.team_id.in_(sorted(team_ids)))
    if status == "open":
        conditions.append(t.c.resolved_at.is_(None))
    elif status == "resolved":
        conditions.append(t.c.resolved_at.is_not(None))
    if scope_type is not None:
        conditions.append(t.c.scope_type == scope_type)
    if scope_id is not None:
        conditions.append(t.c.scope_id == scope_id)
    if acknowledged is not None:
        ack = t.c.acknowledged_at
        conditions.append(ack.is_not(None) if acknowledged else ack.is_(None))
    if since is not None:
        conditions.append(t.c.started_at >= since)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query.where(*conditions))]
