"""The database: an async SQLAlchemy engine chosen by URL, and its Alembic migrations."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_  # SQLAlchemy 2.1 (2.0 names it await_only)

from spendgate.core.showback import tag_set
from spendgate.errors import Conflict, DatabaseUnavailable, NotFound, SpendgateError
from spendgate.settings import data_directory, normalise_database_url

log = logging.getLogger("spendgate")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@asynccontextmanager
async def transaction(
    engine: AsyncEngine, conn: AsyncConnection | None
) -> AsyncIterator[AsyncConnection]:
    """The caller's transaction (so an audit entry can share it), or a new one."""
    if conn is not None:
        yield conn
    else:
        async with engine.begin() as own:
            yield own


@asynccontextmanager
async def reading(
    engine: AsyncEngine, conn: AsyncConnection | None
) -> AsyncIterator[AsyncConnection]:
    """The caller's connection, or one of its own for reading. A write that holds a
    pooled connection reads through it: taking a second one while holding the first
    starves the pool once enough such requests run at once (each holds one and waits
    for another), and every request then waits out the pool timeout (503)."""
    if conn is not None:
        yield conn
    else:
        async with engine.connect() as own:
            yield own


async def upsert(conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, each replacing the row with its primary key if there is one, in one
    statement: unlike a delete then an insert, two writers at once cannot both insert."""
    if not rows:
        return
    insert = _insert(conn, table)
    keys = [c.name for c in table.primary_key.columns]
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys},
        ),
        rows,
    )


async def insert_new(
    conn: AsyncConnection,
    table: sa.Table,
    values: dict[str, Any],
    unique: Sequence[str],
    where: Any = None,
) -> bool:
    """Insert ``values`` unless a row with the same ``unique`` columns exists (among the
    rows ``where`` holds for, for a partial unique index); True if it was inserted.
    ``ON CONFLICT DO NOTHING``, not a savepoint around the insert: on SQLite a savepoint
    that opens the transaction commits when released, which would have split the caller's
    transaction in two."""
    done = await conn.execute(
        _insert(conn, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(unique), index_where=where)
    )
    return bool(done.rowcount == 1)


async def delete_one(conn: AsyncConnection, table: sa.Table, row_id: str, what: str) -> None:
    """Delete the row with this id in the caller's transaction; 404 unless this statement
    deleted it. Of several deletes of one row at once, the database lets exactly one
    remove it (the others wait for its row lock or SQLite's write lock, then find
    nothing), so exactly one answers 204 and writes the audit entry in the same
    transaction: the others' 404 rolls theirs back."""
    done = await conn.execute(table.delete().where(table.c.id == row_id))
    if done.rowcount != 1:
        raise NotFound(f"{what} {row_id} not found")


def insert_for(conn: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ``ON CONFLICT`` (PostgreSQL and SQLite alike)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


_insert = insert_for


def database_fingerprint(engine: AsyncEngine) -> str:
    """Names the database (not its password) in spool files, so a spool directory shared
    by mistake never replays one database's rows into another."""
    return url_fingerprint(engine.url)


def url_fingerprint(url: str | URL) -> str:
    """``database_fingerprint`` of the engine ``url`` (as ``SPENDGATE_DATABASE_URL``
    gives it, or parsed) would open, without opening one."""
    if isinstance(url, str):
        url = make_url(normalise_database_url(url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=os.path.abspath(url.database))
    rendered = url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)
    return hashlib.sha256(rendered.encode()).hexdigest()[:16]


#: SQL name of ``core.showback.tag_set`` over a JSON array of tags, on SQLite: its string
#: aggregates take no ORDER BY before 3.44 (``group_concat`` over an ordered subquery
#: keeps that order only by chance), so a rebuild names a call's tag set with the
#: writer's own function
SQLITE_TAG_SET = "spendgate_tag_set"


def _tag_set_of_json(tags: str | None) -> str:
    return tag_set(json.loads(tags) if tags else ())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.create_function(SQLITE_TAG_SET, 1, _tag_set_of_json, deterministic=True)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    """``sqlite:///file.db`` or ``postgresql://user@host/db``; the async driver is implied.
    On PostgreSQL the pool keeps ``pool_size`` connections and opens up to
    ``max_overflow`` more under load (a request past both waits for one)."""
    full = normalise_database_url(url)
    if full.startswith("sqlite"):
        engine = create_async_engine(full, poolclass=NullPool if ":memory:" in full else None)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        full, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
    )
    engine.dialect.do_ping = _ping  # type: ignore[method-assign]
    return engine


def _ping(dbapi_connection: Any) -> bool:
    """The pool's check of a connection before handing it out (``pool_pre_ping``): one
    round trip, ``SELECT 1`` as a simple query. asyncpg's own wraps that query in a transaction
    (BEGIN, query, ROLLBACK: three round trips on every checkout, some admin requests
    take six) for pgbouncer's transaction mode, which spendgate's prepared statements
    rule out anyway. A dead connection raises as it did, the pool replacing it."""
    try:
        await_(dbapi_connection.driver_connection.execute("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - re-raised as asyncpg's own ping does
        dbapi_connection._handle_exception(error)  # as a DBAPI error: a disconnect is seen
    return True


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection), revision)


#: the PostgreSQL advisory lock migrations hold: replicas (or ``serve --workers N``)
#: starting together on a fresh database migrate one after another, not side by side
MIGRATION_LOCK = 0x5E9D_6A7E


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic), on SQLite and PostgreSQL alike. On
    PostgreSQL the transaction first takes ``MIGRATION_LOCK``: a process that waited for
    it finds the schema at head and has nothing left to do."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
        await conn.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, revision)


class CannotConnect(Exception):
    """A command could not open the database (down, refused, no such database, bad
    credentials, no spendgate schema): the reason, to print without a traceback."""


def check_sqlite_path(url: str, *, exists: bool = False) -> None:
    """Before a SQLite connection: its directory must exist (aiosqlite's thread fails
    noisily otherwise), and with ``exists`` the file too (connecting would create it)."""
    if not url.startswith("sqlite") or ":memory:" in url:
        return
    folder = data_directory(url)
    if not folder.is_dir():
        raise CannotConnect(f"the directory {folder} does not exist")
    path = url.split("///", 1)[-1]
    if exists and not Path(path).is_file():
        raise CannotConnect(f"there is no database file {path}: check SPENDGATE_DATABASE_URL")


async def check_connection(engine: AsyncEngine, *, migrated: bool = False) -> None:
    """Open one connection, and with ``migrated`` find the migrated schema, else raise
    ``CannotConnect`` with the driver's reason."""
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda c: sa.inspect(c).has_table("alembic_version"))
    except (DBAPIError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise CannotConnect(str(reason).strip() or type(reason).__name__) from exc
    if migrated and not found:
        raise CannotConnect(
            "it has no spendgate schema: run spendgate db migrate, or check SPENDGATE_DATABASE_URL"
        )


def migrate_url(url: str, revision: str = "head") -> None:
    """Synchronous entry point for ``spendgate db migrate``; raises ``CannotConnect``
    when no connection opens (a migration that fails once connected raises as it is)."""
    check_sqlite_path(url)

    async def run() -> None:
        engine = create_engine(url)
        try:
            await check_connection(engine)
            await migrate(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(run())


#: driver errors that mean the database cannot be reached or used now (retry later)
UNREACHABLE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, OSError)
#: SQLSTATE classes of the same: connection exception, insufficient resources, operator
#: intervention (a server shutting down or starting: asyncpg reports those as plain errors)
UNREACHABLE_SQLSTATES = frozenset({"08", "53", "57"})
#: single SQLSTATEs of the same: a read-only transaction (a hot standby, or a primary
#: demoted by a failover, answers every write so until the failover is done)
UNREACHABLE_CODES = frozenset({"25006"})


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means an outage (connection lost or refused, pool exhausted, server
    shutting down, out of disk, read-only), not that the database refused what was asked
    (a conflict, a bug): only an outage may be answered 503 "database unavailable"."""
    if isinstance(exc, UNREACHABLE_ERRORS):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        state = _sqlstate(exc)
        return state[:2] in UNREACHABLE_SQLSTATES or state in UNREACHABLE_CODES
    return False


def lost_to_the_moment(exc: BaseException) -> bool:
    """A statement refused for when it ran, not for what it asked: cancelled by the
    server's ``statement_timeout`` (57014), a lock not had within ``lock_timeout``
    (55P03), a deadlock or a serialization failure (class 40). The ledger writer splits
    a batch so refused, and a row so refused waits: no row is set aside for it."""
    state = _sqlstate(exc)
    return state in ("57014", "55P03") or state[:2] == "40"


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else ""


def database_failure(exc: Exception, where: str) -> SpendgateError:
    """What a request that hit ``exc`` from the database answers: 503 while the database
    cannot be reached; 409 for a write that conflicts with what is stored (a route's own
    checks raced another request's write); otherwise 500, logged with its traceback:
    a bug, not an outage."""
    if database_unreachable(exc):
        log.warning("%s failed, database unavailable: %s", where, exc)
        return DatabaseUnavailable("the database is unavailable; retry shortly")
    # 40: a serialization failure or deadlock, lost to a concurrent write like a conflict
    if isinstance(exc, IntegrityError) or _sqlstate(exc)[:2] == "40":
        log.warning("%s refused by the database: %s", where, exc)
        return Conflict(
            "this change conflicts with what is stored (a duplicate, or something it names "
            "was changed or removed meanwhile); nothing was changed: reload and retry"
        )
    log.error("%s failed on a database error", where, exc_info=exc)
    return SpendgateError("internal error; the gateway's log has the details")
