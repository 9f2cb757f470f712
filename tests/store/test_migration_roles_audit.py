"""Migration 0011 on SQLite and PostgreSQL: a user's team role moves onto each of their
memberships, org roles stay per user, old audit entries keep verifying next to new
sealed ones, and the downgrade gives one role per user back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.audit_chain import GENESIS, AuditEvent, seal
from spendgate.store import audit as store
from spendgate.store.database import create_engine, downgrade, migrate
from spendgate.store.directory import Directory

# they migrate step by step from an empty database
pytestmark = pytest.mark.empty_database

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KEY = b"migration-test-key"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    store.bind_audit_key(engine, KEY)
    await migrate(engine, "0016_anomalies")
    yield engine
    await engine.dispose()


async def _sql(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def _seed(engine: AsyncEngine) -> None:
    """Users as the code before 0011 stored them: one role per user."""
    await _sql(engine, "INSERT INTO orgs (id, name, created_at) VALUES ('o', 'o', :t)", t=T0)
    for team in ("ta", "tb"):
        await _sql(
            engine,
            "INSERT INTO teams (id, org_id, name, created_at) VALUES (:id, 'o', :id, :t)",
            id=team,
            t=T0,
        )
    for user, role, teams in (
        ("u_viewer", "viewer", ("ta", "tb")),
        ("u_admin", "team_admin", ("ta",)),
        ("u_org", "org_admin", ("tb",)),
        ("u_fin", "finance", ()),
        ("u_member", "member", ("ta",)),
    ):
        await _sql(
            engine,
            "INSERT INTO users (id, org_id, email, role, created_at) "
            "VALUES (:id, 'o', :email, :role, :t)",
            id=user,
            email=f"{user}@o.example",
            role=role,
            t=T0,
        )
        for team in teams:
            await _sql(
                engine, "INSERT INTO user_teams (user_id, team_id) VALUES (:u, :t)", u=user, t=team
            )


async def test_team_roles_move_onto_memberships(engine: AsyncEngine) -> None:
    """Every membership of a team-role user takes that role; org roles stay on the user
    (their memberships become member); members stay members."""
    await _seed(engine)
    await migrate(engine)
    users = {u["id"]: u for u in await Directory(engine).list_users("o")}
    standing = {
        uid: (u["org_role"], {m["team_id"]: m["role"] for m in u["memberships"]}, u["role"])
        for uid, u in users.items()
    }
    assert standing == {
        "u_viewer": ("member", {"ta": "viewer", "tb": "viewer"}, "viewer"),
        "u_admin": ("member", {"ta": "team_admin"}, "team_admin"),
        "u_org": ("org_admin", {"tb": "member"}, "org_admin"),
        "u_fin": ("finance", {}, "finance"),
        "u_member": ("member", {"ta": "member"}, "member"),
    }
    await downgrade(engine, "0016_anomalies")
    async with engine.connect() as conn:
        roles = dict((await conn.execute(sa.text("SELECT id, role FROM users"))).all())
    assert roles == {
        "u_viewer": "viewer",
        "u_admin": "team_admin",
        "u_org": "org_admin",
        "u_fin": "finance",
        "u_member": "member",
    }


async def test_old_entries_keep_verifying_next_to_sealed_ones(engine: AsyncEngine) -> None:
    """Entries written before 0011 (version 1, no MAC, scope outside the hash) verify after
    it; new entries after them are version 2 and sealed; none may go back to version 1."""
    prev = GENESIS
    for n in range(1, 4):  # what the old code wrote
        entry = seal(n, f"aud_{n}", _event(n), prev, version=1)
        await _sql(
            engine,
            "INSERT INTO audit_log (id, seq, at, actor_type, actor_id, action, target_type, "
            "target_id, prev_hash, hash, org_id) VALUES (:id, :seq, :at, 'admin', 'master', "
            "'budget.updated', 'budget', :tid, :prev, :hash, 'o')",
            id=entry.id,
            seq=n,
            at=_event(n).at,
            tid=f"b{n}",
            prev=prev,
            hash=entry.hash,
        )
        await _sql(engine, "UPDATE audit_chain_head SET seq = :s, hash = :h", s=n, h=entry.hash)
        prev = entry.hash
    await migrate(engine)
    assert (await store.verify(engine, KEY, now=T0)).ok
    await store.record(engine, _event(4), org_id="o")
    entries = [e async for e in store.iter_entries(engine)]
    assert [e.version for e in entries] == [1, 1, 1, 2]
    assert entries[-1].mac is not None and entries[0].mac is None
    result = await store.verify(engine, KEY, now=T0)
    assert result.ok and result.checked == 4


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        T0.replace(hour=9 + n), "admin", "master", "budget.updated", "budget", f"b{n}"
    )
