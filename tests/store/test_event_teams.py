"""Events stored naming the teams of the user they are about (``store.events.with_teams``)
keep every team in the audit entry they make, however many teams the user is in — on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.store import audit as audit_store
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.events import record_event
from spendgate.webhooks.catalog import Event
from spendgate.webhooks.matching import scope_matches

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    audit_store.bind_audit_key(engine, b"event-teams-key")
    await migrate(engine)
    yield engine
    await engine.dispose()


async def test_a_budget_event_of_a_user_in_many_teams_is_audited_for_each_team(
    engine: AsyncEngine,
) -> None:
    """A user in 14 teams (ids as long as the directory makes them): their budget's hard-limit
    event is stored, and its audit entry is readable by each of them."""
    teams = [f"team_{n:024x}" for n in range(14)]
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id="org_1", name="o", created_at=T0))
        await conn.execute(
            schema.teams.insert(),
            [{"id": t, "org_id": "org_1", "name": t, "created_at": T0} for t in teams],
        )
        await conn.execute(
            schema.users.insert().values(
                id="usr_1", org_id="org_1", email="u@x.example", role="member", created_at=T0
            )
        )
        await conn.execute(
            schema.user_teams.insert(), [{"user_id": "usr_1", "team_id": t} for t in teams]
        )
        data = {"budget_id": "bud_1", "scope_type": "user", "scope_id": "usr_1"}
        stored = await record_event(
            conn, "budget.hard_limit_reached", data, T0, org_id="org_1", dedup_key="k1"
        )
    assert stored is not None and stored["data"]["team_ids"] == teams
    entries = [e async for e in audit_store.iter_entries(engine)]
    assert [(e.event.target_id, e.team_ids) for e in entries] == [("bud_1", tuple(teams))]


async def test_a_rejected_ledger_row_concerns_no_team(engine: AsyncEngine) -> None:
    """``ledger.row_rejected`` names the call's key but is the operator's (the database's
    own error text in ``reason``): stored without the key's team, so no team's endpoint,
    member or audit reader hears of it, as README lists it among the org-level events.
    Another event of the same key (``usage.implausible``) is given the team."""
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id="org_1", name="o", created_at=T0))
        await conn.execute(
            schema.teams.insert().values(id="team_1", org_id="org_1", name="t", created_at=T0)
        )
        await conn.execute(
            schema.virtual_keys.insert().values(
                id="key_1",
                org_id="org_1",
                team_id="team_1",
                name="k",
                key_prefix="sk-sg-x",
                key_hash="h",
                tags=[],
                models=[],
                allow_request_tags=False,
                created_at=T0,
            )
        )
        data = {"request_id": "req_1", "key_id": "key_1", "model": "m", "reason": "DBAPIError"}
        rejected = await record_event(
            conn, "ledger.row_rejected", data, T0, org_id="org_1", dedup_key="r1"
        )
        implausible = await record_event(
            conn, "usage.implausible", {"model": "m", "key_id": "key_1"}, T0, org_id="org_1"
        )
    assert rejected is not None and implausible is not None
    assert not scope_matches("team", "team_1", Event.from_row(rejected))
    assert scope_matches("team", "team_1", Event.from_row(implausible))
