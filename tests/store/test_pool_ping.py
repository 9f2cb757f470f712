"""The PostgreSQL pool's check of a connection before handing it out (``pool_pre_ping``)."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from spendgate.store.database import create_engine


async def _backend_pid(engine: Any) -> int:
    async with engine.connect() as conn:
        pid: int = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
    return pid


async def test_a_pooled_connection_is_checked_in_one_round_trip(pg_database: str) -> None:
    """Every checkout of a pooled connection pings it first: one ``SELECT 1``, not
    asyncpg's BEGIN, query, ROLLBACK (three round trips per checkout; an admin request
    checks out up to six)."""
    engine = create_engine(pg_database)
    sent: list[str] = []
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            raw.driver_connection.add_query_logger(lambda record: sent.append(record.query))
        async with engine.connect():  # the same connection, pinged first
            await asyncio.sleep(0)  # asyncpg hands queries to loggers with call_soon
    finally:
        await engine.dispose()
    assert sent == ["SELECT 1"]


async def test_a_connection_whose_server_went_away_is_replaced_at_checkout(
    pg_database: str,
) -> None:
    """A pooled connection whose backend ended (a database restart, an idle timeout) is
    found dead by the ping and replaced: the next request does not fail on it."""
    engine = create_engine(pg_database)
    try:
        dead = await _backend_pid(engine)
        killer = create_engine(pg_database)
        try:
            async with killer.connect() as conn:
                assert await conn.scalar(
                    sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": dead}
                )
        finally:
            await killer.dispose()
        assert await _backend_pid(engine) != dead
    finally:
        await engine.dispose()
