"""Console passwords, sessions and invites on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.access import FINANCE, VIEWER, Standing
from spendgate.errors import ValidationFailed
from spendgate.store import schema
from spendgate.store.console_auth import ConsoleAuth
from spendgate.store.database import create_engine, migrate
from spendgate.store.directory import Directory

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
PASSWORD = "a long enough password"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


async def test_password_session_and_expiry(engine: AsyncEngine) -> None:
    """The right email (any case) and password give the user; a session stands for the
    user's roles as they are, ends at its expiry, on sign-out and on a new password;
    only hashes are stored."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    team = await directory.create_team(org["id"], "research", NOW)
    user = await directory.create_user("Ann@Acme.test", VIEWER, [team["id"]], org["id"], NOW)
    auth = ConsoleAuth(engine, timedelta(hours=1))
    with pytest.raises(ValidationFailed):
        await auth.set_password(user["id"], "short", NOW)
    await auth.set_password(user["id"], PASSWORD, NOW)
    assert await auth.check_password("ann@acme.test", PASSWORD) == user["id"]
    assert await auth.check_password("ann@acme.test", PASSWORD + "x") is None
    assert await auth.check_password("bob@acme.test", PASSWORD) is None
    secret, expires = await auth.open_session(user["id"], NOW)
    assert expires == NOW + timedelta(hours=1)
    found = await auth.session(secret, NOW + timedelta(minutes=59))
    assert found is not None and found.principal.role_in(team["id"]) == VIEWER
    async with engine.begin() as conn:
        await directory.set_standing(user["id"], Standing(FINANCE, {team["id"]: "member"}), conn)
    found = await auth.session(secret, NOW)
    assert found is not None and found.principal.role == FINANCE
    assert await auth.session(secret, NOW + timedelta(hours=1)) is None
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(schema.console_passwords))).one()
        sessions = (await conn.execute(sa.select(schema.console_sessions))).all()
    assert PASSWORD not in stored.password_hash and stored.password_hash.startswith("$argon2id$")
    assert all(secret not in s.session_hash for s in sessions)
    other, _ = await auth.open_session(user["id"], NOW)
    await auth.end_session(other, NOW)
    assert await auth.session(other, NOW) is None
    third, _ = await auth.open_session(user["id"], NOW)
    await auth.set_password(user["id"], "another long password", NOW)
    assert await auth.session(third, NOW) is None


async def test_passwords_set_at_once_all_succeed(engine: AsyncEngine) -> None:
    """Two admins setting one user's password at the same moment: the second insert of
    a delete-then-insert hit the primary key (an IntegrityError the admin API answers
    as 503 database_unavailable). Each is a replacement: every one succeeds, the last
    written stands, and one row is kept."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    user = await directory.create_user("d@acme.test", FINANCE, [], org["id"], NOW)
    auth = ConsoleAuth(engine)
    passwords = [f"{PASSWORD} number {i}" for i in range(20)]
    await asyncio.gather(*(auth.set_password(user["id"], p, NOW) for p in passwords))
    async with engine.connect() as conn:
        assert len((await conn.execute(sa.select(schema.console_passwords))).all()) == 1
    assert [p for p in passwords if await auth.check_password("d@acme.test", p)] != []


async def test_invite_is_used_once(engine: AsyncEngine) -> None:
    """An invite sets a password once, before it expires; then it is dead."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    user = await directory.create_user("c@acme.test", FINANCE, [], org["id"], NOW)
    auth = ConsoleAuth(engine)
    secret, expires = await auth.create_invite(user["id"], "master", NOW)
    assert await auth.invite_user(secret, expires) is None  # expired
    assert await auth.invite_user(secret, NOW) == (user["id"], "c@acme.test")
    with pytest.raises(ValidationFailed):
        await auth.accept_invite(secret, "short", NOW)
    assert await auth.accept_invite(secret, PASSWORD, NOW) == user["id"]
    assert await auth.accept_invite(secret, PASSWORD, NOW) is None
    assert await auth.check_password("c@acme.test", PASSWORD) == user["id"]
