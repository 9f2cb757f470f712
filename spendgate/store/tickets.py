"""Cost tickets, stored: a call its wallet could not fund asks for funding.

A ticket's life (``status``)::

    open ──approve──▶ approved ──expires_at──▶ expired     (unused funding returns)
      │                  └──a newer approval──▶ superseded
      └───deny───▶ denied   (the requester's next refused call is told why)

At most one ``open`` ticket per wallet and requester key (a partial unique index):
every further refusal attaches to it (``refusals`` + 1, ``asked_nanos`` the largest
shortfall seen). An approved ticket is a one-time *grant*: while it lasts it funds the
requester key's calls in place of the wallet (``PolicySnapshot.funding``), held in a
counters bucket of its own whose cap is the grant, so concurrent calls never spend more
than was granted (the wallet hold logic, reused). Its window is ``[decided_at,
closed_at)``; what it paid for is the key's ledger spend in that window, at most the
grant (``PolicyStore.ticket_funded``), so the wallet's balance is not charged for it.

These functions run in the caller's transaction; events and audit entries go in it too
(``spendgate.guard.tickets``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.errors import Conflict, NotFound
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.database import insert_new, transaction

STATUSES = ("open", "approved", "denied", "expired", "superseded")
MODES = ("off", "on", "auto")

T = schema.wallet_tickets
OPEN = T.c.status == "open"


def _one(row: Any) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


async def _fetch(conn: AsyncConnection, ticket_id: str) -> dict[str, Any]:
    row = _one((await conn.execute(sa.select(T).where(T.c.id == ticket_id))).first())
    if row is None:
        raise NotFound(f"ticket {ticket_id} not found")
    return row


async def get_ticket(
    engine: AsyncEngine, ticket_id: str, conn: AsyncConnection | None = None
) -> dict[str, Any]:
    async with transaction(engine, conn) as tx:
        return await _fetch(tx, ticket_id)


async def list_tickets(
    engine: AsyncEngine,
    *,
    org_id: str | None,
    status: str | None,
    wallet_id: str | None = None,
    key_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first: open ones by their latest refusal, the rest by when they were made."""
    query = sa.select(T).order_by(T.c.last_refused_at.desc(), T.c.id).limit(limit)
    if org_id is not None:
        query = query.where(T.c.org_id == org_id)
    if status is not None:
        query = query.where(T.c.status == status)
    if wallet_id is not None:
        query = query.where(T.c.wallet_id == wallet_id)
    if key_id is not None:
        query = query.where(T.c.key_id == key_id)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def open_or_attach(
    conn: AsyncConnection,
    wallet: dict[str, Any],
    key_id: str,
    team_id: str | None,
    shortfall: int,
    model: str | None,
    request_id: str,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """The open ticket of ``wallet`` × ``key_id`` with this refusal attached, and whether
    it was opened by it. Two replicas opening at once: the unique index keeps one, and
    the other attaches to it."""
    values = {
        "id": new_id("tkt"),
        "org_id": wallet["org_id"],
        "wallet_id": wallet["id"],
        "key_id": key_id,
        "team_id": team_id,
        "status": "open",
        "asked_nanos": max(0, shortfall),
        "refusals": 1,
        "model": model,
        "last_request_id": request_id,
        "created_at": now,
        "last_refused_at": now,
    }
    if await insert_new(conn, T, values, ["wallet_id", "key_id"], OPEN):
        return (await _fetch(conn, values["id"])), True
    mine = (T.c.wallet_id == wallet["id"]) & (T.c.key_id == key_id) & OPEN
    await conn.execute(
        T.update()
        .where(mine)
        .values(
            refusals=T.c.refusals + 1,
            asked_nanos=sa.case(
                (T.c.asked_nanos < max(0, shortfall), max(0, shortfall)), else_=T.c.asked_nanos
            ),
            last_refused_at=now,
            last_request_id=request_id,
            model=model,
        )
    )
    row = _one((await conn.execute(sa.select(T).where(mine))).first())
    if row is None:  # decided between the insert and the update: open a fresh one
        return await open_or_attach(
            conn, wallet, key_id, team_id, shortfall, model, request_id, now
        )
    return row, False


async def untold_denial(
    conn: AsyncConnection, wallet_id: str, key_id: str, now: datetime
) -> dict[str, Any] | None:
    """The latest denied ticket of ``wallet_id`` × ``key_id`` its requester has not been
    told of yet, marked told (so exactly one refused call says "denied", then the next
    refusal may ask again)."""
    row = _one(
        (
            await conn.execute(
                sa.select(T)
                .where(
                    T.c.wallet_id == wallet_id,
                    T.c.key_id == key_id,
                    T.c.status == "denied",
                    T.c.denial_told_at.is_(None),
                )
                .order_by(T.c.decided_at.desc())
                .limit(1)
            )
        ).first()
    )
    if row is None:
        return None
    told = await conn.execute(
        T.update()
        .where(T.c.id == row["id"], T.c.denial_told_at.is_(None))
        .values(denial_told_at=now)
    )
    return row if told.rowcount == 1 else None


async def active_grant(
    conn: AsyncConnection, wallet_id: str, key_id: str, now: datetime
) -> dict[str, Any] | None:
    return _one(
        (
            await conn.execute(
                sa.select(T).where(
                    T.c.wallet_id == wallet_id,
                    T.c.key_id == key_id,
                    T.c.status == "approved",
                    T.c.expires_at > now,
                )
            )
        ).first()
    )


async def decide(conn: AsyncConnection, ticket_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """Move an open ticket to ``values['status']`` (approved or denied); 409 if it was
    decided already (by someone else, or by the auto-approval)."""
    done = await conn.execute(T.update().where(T.c.id == ticket_id, OPEN).values(**values))
    if done.rowcount != 1:
        current = await _fetch(conn, ticket_id)
        raise Conflict(f"ticket {ticket_id} is {current['status']}, not open; it was decided")
    return await _fetch(conn, ticket_id)


async def close_grant(
    conn: AsyncConnection, ticket_id: str, status: str, closed_at: datetime, used: int
) -> bool:
    """End an approved ticket's grant (``expired`` or ``superseded``); False if it was
    closed already (another replica's sweep)."""
    done = await conn.execute(
        T.update()
        .where(T.c.id == ticket_id, T.c.status == "approved")
        .values(status=status, closed_at=closed_at, used_nanos=used)
    )
    return bool(done.rowcount == 1)


async def due_to_expire(engine: AsyncEngine, now: datetime) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(T).where(T.c.status == "approved", T.c.expires_at <= now)
        )
        return [dict(r._mapping) for r in rows]
