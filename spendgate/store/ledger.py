"""The ledger: one row per proxied call, written in batches off the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.store import schema

log = logging.getLogger("spendgate.ledger")

GROUP_COLUMNS = (
    "org",
    "team",
    "user",
    "agent",
    "key",
    "provider",
    "model",
    "kind",
    "status",
    "day",
)


class LedgerEntry(NamedTuple):
    """One proxied call. A named tuple: built on every call, so it must be cheap."""

    request_id: str
    org_id: str
    team_id: str | None
    user_id: str | None
    agent_id: str | None
    key_id: str
    tags: list[str]
    provider: str
    model: str
    upstream_model: str
    kind: str
    stream: bool
    status: str
    http_status: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_nanos: int | None
    price_unknown: bool
    usage_estimated: bool
    latency_ms: int
    started_at: datetime
    finished_at: datetime


_SQLITE_INSERT = (
    f"INSERT INTO ledger ({', '.join(LedgerEntry._fields)}) "
    f"VALUES ({', '.join('?' for _ in LedgerEntry._fields)})"
)
_TAGS = LedgerEntry._fields.index("tags")
_TIMES = (LedgerEntry._fields.index("started_at"), LedgerEntry._fields.index("finished_at"))


def _sqlite_time(value: datetime) -> str:
    """The text form SQLAlchemy's SQLite DATETIME stores (UTC, naive)."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.isoformat(sep=" ", timespec="microseconds")[:26]


def sqlite_row(entry: LedgerEntry) -> tuple[Any, ...]:
    row: list[Any] = list(entry)
    row[_TAGS] = json.dumps(entry.tags)
    for index in _TIMES:
        row[index] = _sqlite_time(row[index])
    return tuple(row)


async def insert_entries(conn: AsyncConnection, entries: list[LedgerEntry]) -> None:
    """Insert a batch. SQLite takes the driver's executemany directly: the per-row
    parameter processing of SQLAlchemy Core doubled the cost of a ledger row there."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql(_SQLITE_INSERT, [sqlite_row(e) for e in entries])
    else:
        await conn.execute(schema.ledger.insert(), [e._asdict() for e in entries])


class LedgerWriter:
    """Buffers entries and inserts them in batches from a background task.

    ``add`` is synchronous and O(1) so the proxy never waits on the database. A batch
    that fails to insert stays in the buffer and is retried; ``close`` flushes all.
    """

    def __init__(
        self, engine: AsyncEngine, *, flush_seconds: float = 0.2, batch_size: int = 500
    ) -> None:
        self._engine = engine
        self._flush_seconds = flush_seconds
        self._batch_size = batch_size
        self._buffer: list[LedgerEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0

    def add(self, entry: LedgerEntry) -> None:
        self._buffer.append(entry)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except SQLAlchemyError:
                log.exception("ledger flush failed; %d entries kept for retry", self.pending)
                await asyncio.sleep(min(5.0, self._flush_seconds * 10))

    async def flush(self) -> int:
        """Write everything buffered now; returns the number of rows written."""
        async with self._lock:
            written = 0
            while self._buffer:
                batch = self._buffer[: self._batch_size]
                async with self._engine.begin() as conn:
                    await insert_entries(conn, batch)
                del self._buffer[: len(batch)]
                written += len(batch)
            self.written += written
            return written

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


def _group_expr(name: str, dialect: str) -> sa.ColumnElement[Any]:
    table = schema.ledger
    if name == "day":
        if dialect == "sqlite":
            return sa.func.substr(sa.cast(table.c.started_at, sa.String), 1, 10)
        return sa.func.to_char(sa.func.timezone("UTC", table.c.started_at), "YYYY-MM-DD")
    column = {
        "org": "org_id",
        "team": "team_id",
        "user": "user_id",
        "agent": "agent_id",
        "key": "key_id",
    }.get(name, name)
    return table.c[column]


async def usage_report(
    engine: AsyncEngine,
    group_by: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    org_id: str | None = None,
    *,
    team_ids: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Spend rolled up by the given dimensions over ``[start, end)``; ``team_ids`` limits it
    to calls made with those teams' keys (a team role's view)."""
    table = schema.ledger
    dims = [_group_expr(g, engine.dialect.name).label(g) for g in group_by]
    ok = table.c.status == "ok"
    query = sa.select(
        *dims,
        sa.func.count().label("requests"),
        sa.func.sum(sa.case((ok, 0), else_=1)).label("errors"),
        sa.func.sum(table.c.input_tokens).label("input_tokens"),
        sa.func.sum(table.c.output_tokens).label("output_tokens"),
        sa.func.sum(table.c.cache_read_tokens).label("cache_read_tokens"),
        sa.func.sum(table.c.cache_write_tokens).label("cache_write_tokens"),
        sa.func.sum(table.c.reasoning_tokens).label("reasoning_tokens"),
        sa.func.coalesce(sa.func.sum(table.c.cost_nanos), 0).label("cost_nanos"),
        sa.func.sum(sa.case((table.c.price_unknown, 1), else_=0)).label("unpriced_requests"),
    )
    if start is not None:
        query = query.where(table.c.started_at >= start)
    if end is not None:
        query = query.where(table.c.started_at < end)
    if org_id is not None:
        query = query.where(table.c.org_id == org_id)
    if team_ids is not None:
        query = query.where(table.c.team_id.in_(sorted(team_ids)))
    if dims:
        query = query.group_by(*dims).order_by(*dims)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {
            k: (int(v) if isinstance(v, int | float) and k not in group_by else v)
            for k, v in row._mapping.items()
        }
        for row in rows
        if row.requests
    ]


async def ledger_rows(engine: AsyncEngine, limit: int = 100) -> list[dict[str, Any]]:
    table = schema.ledger
    query = sa.select(table).order_by(table.c.started_at.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]
