"""The stores on every backend: migrations, the directory, the ledger and its roll-ups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.access import Standing
from spendgate.errors import Conflict, NotFound, ValidationFailed
from spendgate.security.credentials import hash_secret
from spendgate.store import schema
from spendgate.store.database import alembic_config, create_engine, downgrade, migrate
from spendgate.store.directory import Directory
from spendgate.store.events import list_events, record_event
from spendgate.store.ledger import LedgerEntry, LedgerWriter, insert_entries
from spendgate.store.policies import PolicyStore, Wallet
from spendgate.store.showback import usage_report
from spendgate.webhooks import notifications as notes
from spendgate.webhooks.matching import Preferences
from tests.conftest import pool_watch

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def entry(n: int, *, team: str | None, model: str, cost: int | None, at: datetime) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"req_{n:06d}",
        org_id="org_1",
        team_id=team,
        user_id=None,
        agent_id=None,
        key_id="key_1",
        tags=["t"],
        provider="openai",
        model=model,
        upstream_model=model,
        kind="chat",
        stream=False,
        status="ok" if cost is not None else "upstream_error",
        http_status=200,
        input_tokens=10,
        output_tokens=5,
        cache_read_tokens=2,
        cache_write_tokens=0,
        reasoning_tokens=1,
        cost_nanos=cost,
        price_unknown=False,
        usage_estimated=False,
        latency_ms=3,
        started_at=at,
        finished_at=at,
    )


@pytest.mark.empty_database
async def test_migrations_go_up_down_and_up(database_url: str) -> None:
    """Alembic builds every table, removes them all, and builds them again."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)

        async def tables() -> set[str]:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))

        assert set(schema.metadata.tables) <= await tables()
        await downgrade(engine, "base")
        assert not set(schema.metadata.tables) & await tables()
        await migrate(engine)
        assert set(schema.metadata.tables) <= await tables()
    finally:
        await engine.dispose()


async def test_the_migrated_schema_is_the_models_schema(engine: AsyncEngine) -> None:
    """What the migrations build is what the tables in ``schema.metadata`` declare: no
    table, column, index or constraint autogenerate would add or drop (an index declared
    on one side only, say, would be missing from every database or from the models)."""
    async with engine.connect() as conn:
        drift = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), schema.metadata)
        )
    assert drift == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_processes_migrating_a_fresh_database_together_take_turns(database_url: str) -> None:
    """Three processes (``serve --workers 3``, or three replicas) start on an empty
    PostgreSQL database at once: each migration waits for the one before (an advisory
    lock), so all succeed and the schema is at head once. Without the lock the second
    failed creating ``alembic_version`` and uvicorn stopped the whole server."""
    engines = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        async with engines[0].connect() as conn:
            versions = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).all()
        assert [v[0] for v in versions] == [
            ScriptDirectory.from_config(alembic_config()).get_current_head()
        ]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_directory_keys_lifecycle(engine: AsyncEngine) -> None:
    """Keys are stored hashed, found by hash, revoked once, rotated to a new hash."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    team = await directory.create_team(org["id"], "search", NOW)
    created = await directory.create_key(
        {"name": "k", "org_id": org["id"], "team_id": team["id"], "tags": ["a"]}, NOW
    )
    secret = created["key"]
    assert secret.startswith("sk-sg-") and "key_hash" not in created
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.select(schema.virtual_keys.c.key_hash))).scalar_one()
    assert stored == hash_secret(secret) and secret not in stored
    record = await directory.key_by_hash(hash_secret(secret))
    assert record is not None and record.team_id == team["id"] and record.tags == ("a",)
    _, revoked = await directory.revoke_key(created["id"], NOW + timedelta(minutes=1))
    assert revoked["status"] == "revoked"
    with pytest.raises(Conflict):
        await directory.rotate_key(created["id"])
    with pytest.raises(NotFound):
        await directory.revoke_key("key_missing", NOW)


async def test_directory_refuses_inconsistent_scopes(engine: AsyncEngine) -> None:
    """A team from another org, a missing org, a past expiry: 422-class errors, nothing stored."""
    directory = Directory(engine)
    org_a = await directory.create_org("a", NOW)
    org_b = await directory.create_org("b", NOW)
    team_b = await directory.create_team(org_b["id"], "t", NOW)
    with pytest.raises(ValidationFailed, match="team_id"):
        await directory.create_key(
            {"name": "k", "org_id": org_a["id"], "team_id": team_b["id"]}, NOW
        )
    with pytest.raises(ValidationFailed, match="org_id"):
        await directory.create_team("org_missing", "x", NOW)
    with pytest.raises(ValidationFailed, match="expires_at"):
        await directory.create_key(
            {"name": "k", "org_id": org_a["id"], "expires_at": NOW - timedelta(days=1)}, NOW
        )
    await directory.create_user("a@x.io", "viewer", [], org_a["id"], NOW)
    with pytest.raises(Conflict):
        await directory.create_user("a@x.io", "viewer", [], org_a["id"], NOW)
    assert await directory.list_keys() == []


async def test_directory_writes_in_a_transaction_hold_one_connection(
    engine: AsyncEngine,
) -> None:
    """A directory write given the caller's transaction reads through it too. It used to
    take a second pooled connection for its checks while holding the first: 45 key
    creations or membership changes at once held the whole pool, each waiting for a
    second connection, until the pool timeout answered 503 (30 s later, on PostgreSQL
    too). Counted here: never two connections out at once."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    team = await directory.create_team(org["id"], "search", NOW)
    other = await directory.create_team(org["id"], "other", NOW)
    user = await directory.create_user("a@acme.io", "viewer", [team["id"]], None, NOW)
    agent = await directory.create_agent("crawler", team["id"], None, NOW)
    key = await directory.create_key({"name": "k", "org_id": org["id"]}, NOW)
    with pool_watch(engine) as watch:
        async with engine.begin() as conn:
            await directory.create_team(org["id"], "third", NOW, conn)
            await directory.create_user("b@acme.io", "viewer", [team["id"]], None, NOW, conn)
            await directory.set_standing(
                user["id"], Standing("member", {team["id"]: "team_admin", other["id"]: "viewer"}),
                conn,
            )  # fmt: skip
            await directory.create_agent("indexer", team["id"], None, NOW, conn)
            await directory.create_key(
                {"name": "k2", "org_id": org["id"], "team_id": team["id"],
                 "user_id": user["id"], "agent_id": agent["id"]},
                NOW, conn,
            )  # fmt: skip
            await directory.set_key_expiry(key["id"], NOW + timedelta(days=1), NOW, conn)
            await directory.rotate_key(key["id"], conn)
            await directory.revoke_key(key["id"], NOW, conn)
    assert watch.most == 1
    changed = await directory.get_user(user["id"])
    assert changed["memberships"] == sorted(
        [{"team_id": team["id"], "role": "team_admin"}, {"team_id": other["id"], "role": "viewer"}],
        key=lambda m: m["team_id"],
    )
    assert (await directory.get_key(key["id"]))["status"] == "revoked"


async def test_notification_preferences_put_at_once_all_succeed(engine: AsyncEngine) -> None:
    """Concurrent PUTs of one user's preferences (a double-clicked form, two tabs): the
    second insert of a delete-then-insert hit the primary key (answered as 503
    database_unavailable). Each PUT replaces the whole: all succeed, one row stands."""
    directory = Directory(engine)
    org = await directory.create_org("acme", NOW)
    user = (await directory.create_user("e@acme.test", "org_admin", [], org["id"], NOW))["id"]
    choices = [
        Preferences(digest=i % 2 == 0, event_types=(("wallet.*",), ("budget.*",))[i % 2])
        for i in range(20)
    ]
    await asyncio.gather(*(notes.put_preferences(engine, user, p, NOW) for p in choices))
    assert await notes.get_preferences(engine, user) in choices
    async with engine.connect() as conn:
        rows = (await conn.execute(notes.PREFS.select())).all()
    assert [r.user_id for r in rows] == [user]


async def test_ledger_batches_and_rolls_up_exactly(engine: AsyncEngine) -> None:
    """Entries wait in memory until flushed; roll-ups sum nanos exactly per group and day."""
    writer = LedgerWriter(engine, flush_seconds=60, batch_size=7)
    day2 = NOW + timedelta(days=1)
    for n in range(30):
        writer.add(
            entry(
                n,
                team="team_a" if n % 3 else "team_b",
                model="m1" if n % 2 else "m2",
                cost=333_333_333 + n,
                at=NOW if n < 20 else day2,
            )
        )
    writer.add(entry(99, team="team_a", model="m1", cost=None, at=NOW))
    assert writer.pending == 31
    assert await usage_report(engine, [], None, None) == []
    assert await writer.flush() == 31 and writer.pending == 0
    rows = await usage_report(engine, ["team", "model"], None, None)
    by = {(r["team"], r["model"]): r for r in rows}
    expected = sum(333_333_333 + n for n in range(30) if n % 3 and n % 2)
    assert by[("team_a", "m1")]["cost_nanos"] == expected
    assert by[("team_a", "m1")]["errors"] == 1
    assert sum(r["requests"] for r in rows) == 31
    days = await usage_report(engine, ["day"], None, None)
    assert [d["day"] for d in days] == ["2026-05-04", "2026-05-05"]
    assert [d["requests"] for d in days] == [21, 10]
    window = await usage_report(engine, [], day2, day2 + timedelta(hours=1))
    assert window[0]["requests"] == 10


async def test_a_flush_writes_the_rows_it_found_in_whole_batches(engine: AsyncEngine) -> None:
    """Rows that arrive while a flush writes fill its last batch and wait for the next
    flush: a busy writer writes whole batches, not a tail of small ones (4 owed rows in
    batches of 3; 5 arrive during the first batch: 3 + 3 written, 3 left)."""
    writer = LedgerWriter(engine, flush_seconds=60, batch_size=3)
    for n in range(4):
        writer.add(entry(n, team=None, model="m", cost=1, at=NOW))
    arrived: list[int] = []

    def arrive(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if not arrived and sql.lstrip().upper().startswith("INSERT INTO LEDGER"):
            arrived.extend(range(10, 15))
            for n in arrived:
                writer.add(entry(n, team=None, model="m", cost=1, at=NOW))

    event.listen(engine.sync_engine, "before_cursor_execute", arrive)
    assert await writer.flush() == 6
    assert arrived and writer.pending == 3
    event.remove(engine.sync_engine, "before_cursor_execute", arrive)
    assert await writer.flush() == 3 and writer.pending == 0
    assert (await usage_report(engine, [], None, None))[0]["requests"] == 9


async def test_ledger_batches_of_any_size_use_the_same_statements(engine: AsyncEngine) -> None:
    """Batches of 1 to 12 rows, some rows already stored: the same SQL texts for every
    size, so the driver's per-connection cache of prepared statements stays a handful
    (issue #19: on SQLite the check for stored rows was an ``IN (?, ?, …)`` of the
    batch's size, one more prepared statement per new size on every pooled connection),
    and a row already in the ledger is left out of the batch."""
    statements: set[str] = set()

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.add(sql)

    event.listen(engine.sync_engine, "before_cursor_execute", statement)
    n = 0
    for size in range(1, 13):
        batch = [entry(n + i, team=None, model="m", cost=1, at=NOW) for i in range(size)]
        if size > 1:
            async with engine.begin() as conn:
                assert len(await insert_entries(conn, batch[: size // 2])) == size // 2
        texts = len(statements)
        async with engine.begin() as conn:
            inserted = await insert_entries(conn, batch)
        assert [e.request_id for e in inserted] == [e.request_id for e in batch[size // 2 :]]
        if size > 2:
            assert len(statements) == texts  # no statement text new to this size
        n += size
    async with engine.connect() as conn:
        stored = (
            await conn.execute(sa.select(sa.func.count()).select_from(schema.ledger))
        ).scalar()
    assert stored == n


async def test_spend_sums_past_64_bits_stay_exact(engine: AsyncEngine) -> None:
    """Rows whose costs add up past 2^63 nano-dollars (each fits its column): the usage
    roll-up, by a dimension and by tag, and the spend a budget is seeded with are exact
    — not an overflow (SQLite's integer SUM raises past 2^63; issue 22, item 1)."""
    writer = LedgerWriter(engine, flush_seconds=60)
    costs = [2**62, 2**62, 2**62 + 7, 3]
    for n, cost in enumerate(costs):
        writer.add(entry(n, team="team_a", model="m1", cost=cost, at=NOW))
    assert await writer.flush() == len(costs)
    assert sum(costs) > 2**63
    [total] = await usage_report(engine, [], None, None)
    assert total["cost_nanos"] == sum(costs)
    [by_model] = await usage_report(engine, ["model"], None, None)
    assert by_model["cost_nanos"] == sum(costs)
    [by_tag] = await usage_report(engine, ["tag"], None, None)
    assert (by_tag["tag"], by_tag["cost_nanos"]) == ("t", sum(costs))
    seeded = await PolicyStore(engine).spend_matching(
        "org_1", NOW - timedelta(hours=1), None, lambda subject: True
    )
    assert seeded == sum(costs)


async def test_writer_task_flushes_in_background_and_on_close(engine: AsyncEngine) -> None:
    """The background task writes without being asked; close() writes the rest."""
    writer = LedgerWriter(engine, flush_seconds=0.01, batch_size=1000)
    writer.start()
    writer.add(entry(1, team=None, model="m", cost=1, at=NOW))
    deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
    while not writer.written:
        assert time.monotonic() < deadline, "the background task wrote nothing"
        await asyncio.sleep(0.01)
    assert writer.written == 1
    writer._flush_seconds = 3600
    writer.add(entry(2, team=None, model="m", cost=1, at=NOW))
    await writer.close()
    assert (await usage_report(engine, [], None, None))[0]["requests"] == 2


async def test_events_dedup_key_fires_once(engine: AsyncEngine) -> None:
    """Two inserts with one dedup key store one event, even racing."""

    async def fire() -> object:
        async with engine.begin() as conn:
            return await record_event(
                conn,
                "price.unknown",
                {"model": "x"},
                NOW,
                org_id="org_1",
                dedup_key="price.unknown:x",
            )

    results = await asyncio.gather(*(fire() for _ in range(5)), return_exceptions=True)
    assert sum(1 for r in results if isinstance(r, dict)) == 1
    assert len(await list_events(engine, type_="price.unknown")) == 1


async def test_an_event_stands_or_falls_with_its_transaction(engine: AsyncEngine) -> None:
    """A deduplicated event is part of the caller's transaction: when that fails after the
    event, the event is gone too, so the next attempt records it (and its deliveries). On
    SQLite a savepoint around the insert used to commit it on its own."""

    class Later(Exception):
        pass

    with pytest.raises(Later):
        async with engine.begin() as conn:
            await record_event(
                conn,
                "price.unknown",
                {"model": "y"},
                NOW,
                org_id="org_1",
                dedup_key="price.unknown:y",
            )
            raise Later
    assert await list_events(engine, type_="price.unknown") == []
    async with engine.begin() as conn:
        assert (
            await record_event(
                conn,
                "price.unknown",
                {"model": "y"},
                NOW,
                org_id="org_1",
                dedup_key="price.unknown:y",
            )
            is not None
        )
    assert len(await list_events(engine, type_="price.unknown")) == 1


async def test_the_ledger_writer_ends_when_cancelled_as_it_wakes(engine: AsyncEngine) -> None:
    """The slow teardown of ``test_role_table[sqlite]``: a cancel that reached the writer
    in the loop iteration its wait ended in (a wake-up here, a timeout as well) was lost
    by Python 3.11's ``asyncio.wait_for``, and the writer went on forever; shutdown then
    waited on it until the server thread was given up (10 s). The race, step by step:
    the wake-up completes the inner wait, the cancel lands before the writer resumes."""
    writer = LedgerWriter(engine, flush_seconds=3600)
    writer.start()
    task = writer._task
    assert task is not None
    await asyncio.sleep(0)  # the writer is waiting for a wake-up
    writer._wake.set()
    await asyncio.sleep(0)  # the inner wait is done; the writer has not resumed yet
    task.cancel()
    async with asyncio.timeout(10):  # a guard against hanging, not a measurement
        await asyncio.wait({task})
    assert task.cancelled()


async def test_a_wallets_spend_day_by_day_adds_up_to_its_spend(engine: AsyncEngine) -> None:
    """``wallet_spend`` from ``since`` (a day of the wallet's history): the team's calls
    before the wallet opened and after it closed are not its, nor what a ticket's grant
    paid; a grant used up on the second day pays only what was left of it then, so the
    days add up to the wallet's whole spend."""
    day0 = datetime(2026, 5, 4, tzinfo=UTC)
    day1, day2 = day0 + timedelta(days=1), day0 + timedelta(days=2)
    store = PolicyStore(engine)
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id="org_1", name="acme", created_at=day0))
        row = await store.create_wallet(
            conn,
            {
                "org_id": "org_1",
                "name": "w",
                "scope_type": "team",
                "scope_id": "team_a",
                "low_balance_nanos": 0,
                "created_at": day0 + timedelta(hours=10),
            },
        )
        await conn.execute(
            schema.wallet_tickets.insert().values(
                id="tkt_1",
                org_id="org_1",
                wallet_id=row["id"],
                key_id="key_1",
                status="approved",
                asked_nanos=300,
                refusals=1,
                created_at=day0 + timedelta(hours=12),
                last_refused_at=day0 + timedelta(hours=12),
                decided_at=day0 + timedelta(hours=12),
                granted_nanos=300,
                expires_at=day1 + timedelta(hours=12),
            )
        )
    calls = [
        (day0 + timedelta(hours=9), 100),  # before the wallet opened
        (day0 + timedelta(hours=11), 50),
        (day0 + timedelta(hours=13), 200),  # the grant's
        (day1 + timedelta(hours=8), 250),  # the grant's last 100, the wallet's 150
        (day1 + timedelta(hours=14), 70),  # the grant has expired
        (day2 + timedelta(hours=9), 5),
        (day2 + timedelta(hours=11), 1000),  # after the wallet closed
    ]
    async with engine.begin() as conn:
        await insert_entries(
            conn,
            [entry(n, team="team_a", model="m", cost=c, at=at) for n, (at, c) in enumerate(calls)],
        )
    closed = day2 + timedelta(hours=10)
    wallet = Wallet(row["id"], "org_1", "team", "team_a", 0, row["created_at"])
    whole, _ = await store.wallet_spend(wallet, closed)
    days = [
        (await store.wallet_spend(wallet, min(day + timedelta(days=1), closed), day))[0]
        for day in (day0, day1, day2)
    ]
    assert days == [50, 150 + 70, 5]
    assert whole == sum(days) == 275
