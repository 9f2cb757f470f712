"""Leases: one replica of many does a periodic job each time.

Every replica wakes on its own schedule and asks for the job's lease; whoever finds it
missing or expired takes it for ``ttl`` and does the job, the others skip. The lease is
never given back: it simply runs out, so however many replicas there are (and whatever
their phase), the job runs at most once per ``ttl``; with a ``ttl`` a little shorter than
the interval they wake at, that is once per interval, and a replica that dies holding it
delays the job by at most ``ttl``. A lease that runs out later than ``now + ttl`` can only
come from a clock running ahead, so it counts as expired (one fast clock cannot stop the
job). Plain SQL on the database every replica already shares: no Redis needed, and
SQLite (one process) works the same way.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store.database import insert_new
from spendgate.store.schema import UTCDateTime, metadata

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("holder", sa.String(80), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)


async def take_lease(
    engine: AsyncEngine, name: str, holder: str, now: datetime, ttl: timedelta
) -> bool:
    """True if ``holder`` now holds ``name`` until ``now + ttl``: it was free or expired.

    The conditional UPDATE is atomic (on PostgreSQL a second writer waits, then finds the
    lease taken); a lease never taken before is inserted by exactly one of those asking."""
    t = leases
    until = now + ttl
    async with engine.begin() as conn:
        taken = await conn.execute(
            t.update()
            .where(t.c.name == name, sa.or_(t.c.expires_at <= now, t.c.expires_at > until))
            .values(holder=holder, expires_at=until)
        )
        if taken.rowcount == 1:
            return True
        return await insert_new(
            conn, t, {"name": name, "holder": holder, "expires_at": until}, ["name"]
        )
