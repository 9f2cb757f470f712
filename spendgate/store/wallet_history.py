"""A wallet's spend span by span (the wallet page's daily debits), in a few reads.

What the wallet paid in a span is ``core.wallet_paid``'s rule over two sums per span:
its scope's spend while it was open, and each ticket grant's key's spend while the
grant lasted. Each is one grouped query over all the spans, each row put in its span by
a ``CASE`` over the span bounds, instead of one query per span:

- a key's or a team's calls (a key wallet, a team wallet, a grant's key): the ledger
  rows of that key or team, by its own ``(key_id | team_id, started_at)`` index;
- an org's calls: whole UTC days from the daily rollup (``usage_team_daily``) when the
  org's daily zone is UTC (the default reporting zone), whole quarter hours of the other
  days from the narrow rollup (``usage_team_rollup``), and from the ledger only the
  quarter hours a bound cuts in two (the wallet's opening and close). The rollups are
  written in the same transaction as the ledger rows they sum, so they hold exactly
  their cost; a busy org's month of ledger rows is never read.

The figures are exactly ``PolicyStore.wallet_spend``'s for the same span.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.showback import (
    BUCKET_SECONDS,
    BUCKETS_PER_DAY,
    bucket_of,
    bucket_start,
    offset_segments,
    on_boundary,
)
from spendgate.core.wallet_paid import GrantSpend, wallet_paid
from spendgate.store import schema
from spendgate.store.cost_sums import cost_from_sums, exact_cost_sum, split_cost_sum
from spendgate.store.rollups import usage_daily_zone, usage_team_daily, usage_team_rollup

if TYPE_CHECKING:
    from spendgate.store.policies import Wallet


def _clip(at: datetime, start: datetime, end: datetime | None) -> datetime:
    at = max(at, start)
    return at if end is None else min(at, end)


async def wallet_history(
    engine: AsyncEngine,
    wallet: Wallet,
    closed_at: datetime | None,
    bounds: Sequence[datetime],
    grants: Sequence[dict[str, Any]],
) -> list[int]:
    """What ``wallet`` paid in each span ``[bounds[i], bounds[i + 1])`` (its approved
    ticket ``grants`` rows given): nothing before it opened or after ``closed_at``."""
    spans = [_clip(b, wallet.created_at, closed_at) for b in bounds]
    led = schema.ledger.c
    async with engine.connect() as conn:
        if wallet.scope_type == "org":
            scope = await _org_spent(conn, wallet.scope_id, spans)
        elif wallet.scope_type in ("team", "key"):
            column = led.team_id if wallet.scope_type == "team" else led.key_id
            scope = await _ledger_spent(conn, column == wallet.scope_id, spans)
        else:
            scope = [0] * (len(spans) - 1)
        uses = []
        for row in grants:
            start, end = row["decided_at"], row["closed_at"] or row["expires_at"]
            within = [_clip(b, start, end) for b in spans]
            spent = await _ledger_spent(conn, led.key_id == row["key_id"], [start, *within])
            uses.append(GrantSpend(int(row["granted_nanos"]), spent[0], spent[1:]))
    return wallet_paid(scope, uses)


def _span_of(column: Any, ends: Sequence[Any]) -> Any:
    """``CASE``: the index of the first of ``ends`` that ``column`` is below."""
    return sa.case(*((column < end, i) for i, end in enumerate(ends)), else_=len(ends) - 1)


async def _ledger_spent(
    conn: AsyncConnection, which: sa.ColumnElement[bool], spans: Sequence[datetime]
) -> list[int]:
    """The spend of the ledger rows ``which`` selects, per span, from one query (a key's
    and a team's ids are unique across orgs: their index alone finds their rows)."""
    totals = [0] * (len(spans) - 1)
    if not totals or spans[0] >= spans[-1]:
        return totals
    t = schema.ledger
    rows = (
        sa.select(_span_of(t.c.started_at, spans[1:]).label("span"), t.c.cost_nanos)
        .where(which, t.c.started_at >= spans[0], t.c.started_at < spans[-1])
        .subquery()
    )
    query = sa.select(rows.c.span, *exact_cost_sum(rows.c.cost_nanos)).group_by(rows.c.span)
    for span, whole, rest in await conn.execute(query):
        totals[int(span)] += cost_from_sums(whole, rest)
    return totals


async def _org_spent(conn: AsyncConnection, org_id: str, spans: Sequence[datetime]) -> list[int]:
    """An org's spend per span: whole UTC days from the daily rollup while the org's
    daily zone is UTC there, whole quarter hours of the other days from the narrow
    rollup, the quarter hours a bound falls inside of from the ledger."""
    totals = [0] * (len(spans) - 1)
    if not totals or spans[0] >= spans[-1]:
        return totals
    first, last = spans[0], spans[-1]
    rest = [(first, last)]
    if await _days_are_utc(conn, org_id, first, last):
        cut = sorted({_day_of(b) for b in spans if _day_of(b) * DAY_SECONDS != b.timestamp()})
        d = usage_team_daily
        query = (
            sa.select(d.c.day, *split_cost_sum(d.c.cost_usd, d.c.cost_nanos))
            .where(d.c.org_id == org_id, d.c.day >= _day_of(first), d.c.day < _day_of(last))
            .where(d.c.day.not_in(cut))
            .group_by(d.c.day)
        )
        ends = [_day_of(b) for b in spans[1:]]
        for day, whole, part in await conn.execute(query):
            totals[bisect_right(ends, day)] += cost_from_sums(whole, part)
        rest = [(max(first, _midnight(day)), min(last, _midnight(day + 1))) for day in cut]
    for start, end in rest:
        piece = [_clip(b, start, end) for b in spans]
        for i, spent in enumerate(await _buckets_spent(conn, org_id, piece)):
            totals[i] += spent
    return totals


DAY_SECONDS = BUCKETS_PER_DAY * BUCKET_SECONDS


def _day_of(at: datetime) -> int:
    """The UTC day number (days since 1970-01-01) of ``at``."""
    return int(at.timestamp()) // DAY_SECONDS


def _midnight(day: int) -> datetime:
    return datetime.fromtimestamp(day * DAY_SECONDS, UTC)


async def _days_are_utc(
    conn: AsyncConnection, org_id: str, first: datetime, last: datetime
) -> bool:
    """Whether the org's daily rollup rows between ``first`` and ``last`` are UTC days
    (its daily zone is UTC there: the default reporting zone, or one at UTC's offset)."""
    z = usage_daily_zone
    zone = (await conn.execute(sa.select(z.c.timezone).where(z.c.org_id == org_id))).scalar()
    if zone is None:
        return False
    segments = offset_segments(bucket_of(first), bucket_of(last) + 1, zone)
    return all(s.offset == 0 for s in segments)


async def _buckets_spent(
    conn: AsyncConnection, org_id: str, spans: Sequence[datetime]
) -> list[int]:
    """An org's spend per span: whole quarter hours from the narrow rollup, the quarter
    hours a bound falls inside of from the ledger."""
    totals = [0] * (len(spans) - 1)
    if not totals or spans[0] >= spans[-1]:
        return totals
    first, last = spans[0], spans[-1]
    cut = sorted({bucket_of(b) for b in spans if not on_boundary(b)})
    of_org = schema.ledger.c.org_id == org_id
    for bucket in cut:
        start, end = max(first, bucket_start(bucket)), min(last, bucket_start(bucket + 1))
        piece = [_clip(b, start, end) for b in spans]
        for i, spent in enumerate(await _ledger_spent(conn, of_org, piece)):
            totals[i] += spent
    r = usage_team_rollup
    query = (
        sa.select(r.c.bucket, *split_cost_sum(r.c.cost_usd, r.c.cost_nanos))
        .where(r.c.org_id == org_id, r.c.bucket >= bucket_of(first))
        .where(r.c.bucket < bucket_of(last) + (0 if on_boundary(last) else 1))
        .where(r.c.bucket.not_in(cut))
        .group_by(r.c.bucket)
    )
    ends = [bucket_of(b) for b in spans[1:]]
    for bucket, whole, part in await conn.execute(query):
        totals[bisect_right(ends, bucket)] += cost_from_sums(whole, part)
    return totals
