"""Leases: one replica of many does a periodic job each time.

Every replica wakes on its own schedule and asks for the job's lease; whoever finds it
missing or expired takes it for ``ttl`` and does the job, the others skip. The lease is
never given back: it simply runs out, so however many replicas there are (and whatever
their phase), the job runs at most once per ``ttl``; with a ``ttl`` a little shorter than
the interval they wake at, that is once per interval, and a replica that dies holding it
delays the job by at most ``ttl``. A job that may outlast its ``ttl`` (a slow refresh on
a loaded machine) keeps the lease with :func:`renew_lease` while it runs, and stops when
a renewal fails (someone else holds it now): two replicas never run it at once.

A lease that runs out later than ``now + ttl + skew`` can only come from a clock running
ahead, so it counts as expired (one fast clock cannot stop the job). ``skew`` is the most
two replicas' ``now`` may differ by, their clocks' difference and the time a ``now`` read
waits for the database alike: without it, a replica whose ``now`` was read a moment
before another took the lease (``now`` behind the holder's) took it again, and the job
ran twice in one interval. Plain SQL on the database every replica already shares: no
Redis needed, and SQLite (one process) works the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.clock import Clock
from spendgate.store.database import insert_new
from spendgate.store.schema import UTCDateTime, metadata

T = TypeVar("T")
log = logging.getLogger("spendgate")

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("holder", sa.String(80), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)


#: the most two replicas' ``now`` may differ by (see the module's doc)
SKEW = timedelta(minutes=5)


async def take_lease(
    engine: AsyncEngine,
    name: str,
    holder: str,
    now: datetime,
    ttl: timedelta,
    skew: timedelta = SKEW,
) -> bool:
    """True if ``holder`` now holds ``name`` until ``now + ttl``: it was free or expired
    (or runs out more than ``skew`` past ``now + ttl``: a clock running ahead).

    The conditional UPDATE is atomic (on PostgreSQL a second writer waits, then finds the
    lease taken); a lease never taken before is inserted by exactly one of those asking."""
    t = leases
    until = now + ttl
    async with engine.begin() as conn:
        taken = await conn.execute(
            t.update()
            .where(t.c.name == name, sa.or_(t.c.expires_at <= now, t.c.expires_at > until + skew))
            .values(holder=holder, expires_at=until)
        )
        if taken.rowcount == 1:
            return True
        return await insert_new(
            conn, t, {"name": name, "holder": holder, "expires_at": until}, ["name"]
        )


async def renew_lease(
    engine: AsyncEngine, name: str, holder: str, now: datetime, ttl: timedelta
) -> bool:
    """True if ``holder`` still holds ``name`` and now holds it until ``now + ttl`` (never
    shortened); False once another replica has taken it: the holder must stop its job."""
    t = leases
    until = now + ttl
    mine = sa.and_(t.c.name == name, t.c.holder == holder)
    async with engine.begin() as conn:
        held = await conn.execute(sa.select(t.c.expires_at).where(mine).with_for_update())
        row = held.first()
        if row is None:
            return False
        if row.expires_at < until:
            await conn.execute(t.update().where(mine).values(expires_at=until))
        return True


class LeaseLost(Exception):
    """Another replica took the lease while this one's job ran: the job was stopped."""


async def while_held(
    engine: AsyncEngine,
    name: str,
    holder: str,
    clock: Clock,
    ttl: timedelta,
    job: Awaitable[T],
    renew_every: float,
) -> T:
    """Run ``job`` (``holder`` has just taken ``name``), renewing the lease for ``ttl``
    from ``clock.now()`` every ``renew_every`` seconds while it runs, so a job slower than
    its lease is not run again beside it. If a renewal finds the lease taken by another
    replica, ``job`` is cancelled and :class:`LeaseLost` raised."""
    task = asyncio.ensure_future(job)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=renew_every)
            if done:
                return task.result()
            if not await renew_lease(engine, name, holder, clock.now(), ttl):
                raise LeaseLost(f"lease {name!r} was taken from {holder!r} while its job ran")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
