"""Revision 0022: the sweep's ``keys_expiring`` is planned on the partial index
``ix_virtual_keys_expiring`` (live keys with an expiry), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from spendgate.store.database import create_engine
from spendgate.store.directory import Directory

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


async def test_the_expiring_keys_sweep_reads_the_expiry_index(database_url: str) -> None:
    """The statement ``announce_expiring_keys`` sends every minute, captured as sent and
    explained with its own parameters, searches ``ix_virtual_keys_expiring`` instead of
    scanning ``virtual_keys``. PostgreSQL is told not to scan (on a table this small a
    scan is cheaper), so its plan says whether the index can serve the query at all:
    the query's ``expires_at > now`` must imply the index's ``expires_at IS NOT NULL``.
    The index leaves out revoked keys and keys without an expiry; the sweep still finds
    exactly the live key due within the week."""
    engine = create_engine(database_url)
    try:
        directory = Directory(engine)
        org = await directory.create_org("acme", NOW)
        made = {
            name: await directory.create_key(
                {"name": name, "org_id": org["id"], "expires_at": expires_at}, NOW
            )
            for name, expires_at in (
                ("due", NOW + timedelta(days=3)),
                ("later", NOW + timedelta(days=30)),
                ("never", None),
                ("revoked", NOW + timedelta(days=2)),
            )
        }
        await directory.revoke_key(made["revoked"]["id"], NOW)
        sent: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if "expires_at >" in statement:
                sent.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        try:
            due = await directory.keys_expiring(NOW, NOW + timedelta(days=7))
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", capture)
        assert [k["id"] for k in due] == [made["due"]["id"]]
        [(statement, parameters)] = sent
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                await conn.exec_driver_sql("SET enable_seqscan = off")
                explain = "EXPLAIN "
            else:
                explain = "EXPLAIN QUERY PLAN "
            rows = (await conn.exec_driver_sql(explain + statement, parameters)).all()
        plan = "\n".join(str(row[-1]) for row in rows)
        assert "ix_virtual_keys_expiring" in plan, plan
    finally:
        await engine.dispose()
