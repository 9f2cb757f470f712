"""A stored audit entry, checkpoint, frozen statement or closed month cannot be
rewritten by a conflict clause (security review): SQLite's ``INSERT OR REPLACE`` deletes
the stored row without firing its DELETE trigger, so it needs a trigger of its own
(migration 0027); PostgreSQL's ``INSERT … ON CONFLICT DO UPDATE`` fires the UPDATE
trigger. The chain-head row moves only forward: never deleted, never rewound, never a
second one — and, were it gone anyway, an audited change says so instead of a 500."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.audit_chain import AuditEvent
from spendgate.store import audit as store
from spendgate.store.database import create_engine, downgrade, migrate
from tests.conftest import RunningGateway
from tests.store.triggers import behind_the_triggers

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=400)
KEY = b"audit-replace-key"

#: each append-only table: the stored row attacked, and a column the forgery changes
ROWS = {
    "audit_log": ("seq = 5", "actor_id"),
    "audit_checkpoints": ("seq = 3", "hash"),
    "statements": ("id = 'stm_1'", "content"),
    "statement_months": ("org_id = 'org_1'", "closed_by"),
}
#: how the forged row collides with the stored one: its primary key, another unique key
#: (a fresh id), or the hidden rowid (a fresh id and seq)
FRESH: dict[str, dict[str, dict[str, Any]]] = {
    "primary key": {},
    "unique key": {
        "audit_log": {"id": "aud_x"},
        "audit_checkpoints": {"id": "acp_x"},
        "statements": {"id": "stm_x"},
    },
    "rowid": {
        "audit_log": {"id": "aud_x", "seq": 99},
        "audit_checkpoints": {"id": "acp_x", "seq": 99},
        "statements": {"id": "stm_x", "version": 9},
        "statement_months": {"month": "2099-01"},
    },
}


def event(n: int, at: datetime) -> AuditEvent:
    return AuditEvent(at, "admin", "master", "budget.updated", "budget", f"bud_{n}")


async def seed(engine: AsyncEngine) -> None:
    """Entries, a purge's checkpoint, a frozen statement and its closed month."""
    for n in range(3):
        await store.record(engine, event(n, T0))
    await store.purge(engine, T0 + timedelta(seconds=1), KEY, now=NOW, min_retention_days=365)
    for n in range(3):
        await store.record(engine, event(n, NOW))
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO statements (id, org_id, team_id, month, version, content, "
                "content_hash, created_by, created_at, total_whole_usd, total_rest_nanos) "
                "VALUES ('stm_1', 'org_1', 'team_1', '2025-01', 1, '{}', :h, 'admin', :t, 1, 5)"
            ),
            {"h": "0" * 64, "t": NOW},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO statement_months (org_id, month, timezone, closed_by, closed_at) "
                "VALUES ('org_1', '2025-01', 'UTC', 'admin', :t)"
            ),
            {"t": NOW},
        )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    store.bind_audit_key(engine, KEY)
    await migrate(engine)
    await seed(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sqlite_file(engine: AsyncEngine) -> Iterator[sqlite3.Connection]:
    """The database file over a plain sqlite3 connection, as the review used it (no
    pragma set: recursive_triggers is off)."""
    conn = sqlite3.connect(str(engine.url.database), isolation_level=None)
    yield conn
    conn.close()


def snapshot(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid").fetchall()


def forged_replace(conn: sqlite3.Connection, table: str, collide: str) -> str:
    """``INSERT OR REPLACE`` of a copy of the stored row with one column changed."""
    where, column = ROWS[table]
    names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    fresh = {column: "forged", **FRESH[collide].get(table, {})}
    values = [repr(fresh[c]) if c in fresh else f'"{c}"' for c in names]
    into = ", ".join(f'"{c}"' for c in names)
    if collide == "rowid":
        into, values = f"rowid, {into}", ["rowid", *values]
    chosen = ", ".join(values)
    return f"INSERT OR REPLACE INTO {table} ({into}) SELECT {chosen} FROM {table} WHERE {where}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("collide", list(FRESH))
@pytest.mark.parametrize("table", list(ROWS))
def test_sqlite_refuses_a_replace_of_a_stored_row(
    sqlite_file: sqlite3.Connection, table: str, collide: str
) -> None:
    if collide == "unique key" and table == "statement_months":
        return  # its only unique key is its primary key
    before = snapshot(sqlite_file, table)
    for verb in ("INSERT OR REPLACE", "REPLACE"):
        sql = forged_replace(sqlite_file, table, collide).replace("INSERT OR REPLACE", verb, 1)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            sqlite_file.execute(sql)
    assert snapshot(sqlite_file, table) == before


@pytest.mark.parametrize("table", list(ROWS))
async def test_an_upsert_over_a_stored_row_fires_the_update_trigger(
    engine: AsyncEngine, table: str
) -> None:
    """``INSERT … ON CONFLICT DO UPDATE`` (PostgreSQL, and SQLite's upsert) is refused
    by the UPDATE trigger; ``UPDATE OR REPLACE`` (SQLite) likewise."""
    where, column = ROWS[table]
    key = "org_id, month" if table == "statement_months" else "id"
    async with engine.connect() as conn:
        names = [c["name"] for c in await conn.run_sync(lambda c: sa.inspect(c).get_columns(table))]
        before = (await conn.execute(sa.text(f"SELECT * FROM {table} WHERE {where}"))).all()
    upsert = (
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(names)} FROM {table} "
        f"WHERE {where} ON CONFLICT ({key}) DO UPDATE SET {column} = 'forged'"
    )
    attempts = [upsert]
    if engine.dialect.name == "sqlite":
        attempts.append(f"UPDATE OR REPLACE {table} SET {column} = 'forged' WHERE {where}")
    for sql in attempts:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(sa.text(sql))
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text(f"SELECT * FROM {table} WHERE {where}"))).all() == before


HEAD_ATTACKS = [
    "DELETE FROM audit_chain_head",
    "UPDATE audit_chain_head SET seq = seq - 1",
    "UPDATE audit_chain_head SET id = 2",
    "INSERT INTO audit_chain_head (id, seq, hash) VALUES (2, 0, 'x')",
    "INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, 'x') "
    "ON CONFLICT (id) DO UPDATE SET seq = 0, hash = 'x'",
]


@pytest.mark.parametrize("sql", HEAD_ATTACKS)
async def test_the_chain_head_only_moves_forward(engine: AsyncEngine, sql: str) -> None:
    """Deleting the head row made every audited change a 500; rewinding it (or adding
    another) hid deleted entries or broke the next append. Appends still move it."""
    head = await store.sealed_head(engine)
    with pytest.raises(sa.exc.DBAPIError, match="audit_chain_head only moves forward"):
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    assert await store.sealed_head(engine) == head
    await store.record(engine, event(9, NOW))
    assert (await store.head(engine))[0] == head[0] + 1
    assert (await store.verify(engine, KEY, now=NOW)).ok


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_refuses_a_replace_of_the_chain_head(sqlite_file: sqlite3.Connection) -> None:
    before = snapshot(sqlite_file, "audit_chain_head")
    with pytest.raises(sqlite3.IntegrityError, match="audit_chain_head only moves forward"):
        sqlite_file.execute("INSERT OR REPLACE INTO audit_chain_head VALUES (1, 0, 'x', NULL)")
    assert snapshot(sqlite_file, "audit_chain_head") == before


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_truncating_the_chain_head_is_refused_on_postgresql(engine: AsyncEngine) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="audit_chain_head only moves forward"):
        async with engine.begin() as conn:
            await conn.execute(sa.text("TRUNCATE audit_chain_head"))


def test_an_audited_change_without_a_head_row_is_a_clear_503(gateway: RunningGateway) -> None:
    """A head row deleted behind the triggers' back: admin changes and an
    export are refused with a 503 naming the cause (they were a 500); verify reports it."""
    engine = gateway.app.services.engine
    gateway.run(behind_the_triggers(engine, ("DELETE FROM audit_chain_head", {})))
    response = gateway.admin.post("/admin/orgs", json={"name": "after"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "audit_unavailable" and "chain head row is missing" in error["message"]
    assert gateway.admin.get("/admin/orgs").status_code == 200
    assert gateway.admin.get("/admin/audit").status_code == 200  # the list needs no head
    export = gateway.admin.get("/admin/audit/export")
    assert export.status_code == 503 and export.json()["error"]["code"] == "audit_unavailable"
    assert "head row is missing" in gateway.get("/admin/audit/verify")["reason"]


# -- the migration ----------------------------------------------------------------------------
@pytest.mark.empty_database
async def test_upgrade_guards_existing_rows_and_downgrade_removes_only_its_triggers(
    database_url: str,
) -> None:
    """A database at 0026 with entries, a checkpoint and frozen statements: after 0027
    a replace/rewind is refused and appends go on; downgraded, the 0003/0013 triggers
    are still there and only the new ones gone."""
    engine = create_engine(database_url)
    store.bind_audit_key(engine, KEY)
    try:
        await migrate(engine, "0026_rollup_estimates")
        await seed(engine)
        rewind = "UPDATE audit_chain_head SET seq = 0"
        await migrate(engine)
        with pytest.raises(sa.exc.DBAPIError, match="only moves forward"):
            async with engine.begin() as conn:
                await conn.execute(sa.text(rewind))
        if engine.dialect.name == "sqlite":
            conn3 = sqlite3.connect(str(engine.url.database), isolation_level=None)
            try:
                for table in ROWS:
                    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                        conn3.execute(forged_replace(conn3, table, "primary key"))
            finally:
                conn3.close()
        await store.record(engine, event(7, NOW))
        assert (await store.verify(engine, KEY, now=NOW)).ok

        await downgrade(engine, "0026_rollup_estimates")
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(sa.text("UPDATE audit_log SET actor_id = 'x'"))
        async with engine.begin() as conn:
            await conn.execute(sa.text(rewind))  # unguarded again, as before 0027
        await migrate(engine)
    finally:
        await engine.dispose()
