"""Tampering as the owner of the tables can: every trigger on the audit and statement
tables dropped (read from the catalog, so whichever migration made it), plain SQL run,
the triggers put back as they were."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

GUARDED = ("audit_log", "audit_checkpoints", "audit_chain_head", "statements", "statement_months")


async def behind_the_triggers(engine: AsyncEngine, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run ``statements`` in one transaction with the guarded tables' triggers dropped."""
    tables = ", ".join(f"'{t}'" for t in GUARDED)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            found = await conn.execute(
                sa.text(
                    "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
                    f"JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal "
                    f"AND c.relname IN ({tables})"
                )
            )
            triggers = [(f"DROP TRIGGER {n} ON {t}", ddl) for n, t, ddl in found]
        else:
            found = await conn.execute(
                sa.text(
                    "SELECT name, sql FROM sqlite_master "
                    f"WHERE type = 'trigger' AND tbl_name IN ({tables})"
                )
            )
            triggers = [(f"DROP TRIGGER {n}", ddl) for n, ddl in found]
        for drop, _ in triggers:
            await conn.execute(sa.text(drop))
        for sql, params in statements:
            await conn.execute(sa.text(sql), params)
        for _, create in triggers:
            await conn.execute(sa.text(create))
