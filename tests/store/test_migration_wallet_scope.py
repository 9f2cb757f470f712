"""Revision 0012 on data written before it: scopes with several open wallets keep the one
with the most top-ups, orgs sharing a name are renamed — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from spendgate.store.database import create_engine, migrate

# they migrate step by step from an empty database
pytestmark = pytest.mark.empty_database

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _at(engine_name: str, minutes: int) -> datetime:
    at = T0 + timedelta(minutes=minutes)
    return at.replace(tzinfo=None) if engine_name == "sqlite" else at


async def test_upgrade_closes_duplicate_wallets_and_renames_duplicate_orgs(
    database_url: str,
) -> None:
    """Two open wallets on team t1 (the later one funded), one on t2; two orgs named acme.
    After the upgrade t1 keeps its funded wallet, the empty one is closed, t2's stays, the
    younger acme is renamed, and a new duplicate is refused by the database."""
    engine = create_engine(database_url)
    try:
        await migrate(engine, "0011_roles_audit")
        dialect = engine.dialect.name
        async with engine.begin() as conn:
            for n, (org, name) in enumerate((("org_a", "acme"), ("org_b", "acme"))):
                await conn.execute(
                    sa.text("INSERT INTO orgs (id, name, created_at) VALUES (:id, :n, :at)"),
                    {"id": org, "n": name, "at": _at(dialect, n)},
                )
            for n, (wallet, team) in enumerate(
                (("w_empty", "t1"), ("w_funded", "t1"), ("w_other", "t2"))
            ):
                await conn.execute(
                    sa.text(
                        "INSERT INTO wallets (id, org_id, name, scope_type, scope_id, "
                        "low_balance_nanos, created_at) VALUES (:id, 'org_a', :id, 'team', "
                        ":team, 0, :at)"
                    ),
                    {"id": wallet, "team": team, "at": _at(dialect, n)},
                )
            await conn.execute(
                sa.text(
                    "INSERT INTO wallet_topups (id, wallet_id, amount_nanos, note, created_by, "
                    "created_at) VALUES ('tu_1', 'w_funded', 5000000000, '', 'master', :at)"
                ),
                {"at": _at(dialect, 5)},
            )
        await migrate(engine)
        async with engine.connect() as conn:
            closed = dict(
                (await conn.execute(sa.text("SELECT id, closed_at IS NOT NULL FROM wallets"))).all()
            )
            names = dict((await conn.execute(sa.text("SELECT id, name FROM orgs"))).all())
        assert {k: bool(v) for k, v in closed.items()} == {
            "w_empty": True,
            "w_funded": False,
            "w_other": False,
        }
        assert names == {"org_a": "acme", "org_b": "acme (org_b)"}
        async with engine.connect() as conn:
            try:
                await conn.execute(
                    sa.text(
                        "INSERT INTO orgs (id, name, created_at) VALUES ('org_c', 'acme', :at)"
                    ),
                    {"at": _at(dialect, 9)},
                )
            except sa.exc.IntegrityError:
                refused = True
            else:
                refused = False
        assert refused
    finally:
        await engine.dispose()
