"""The audit log in the database, on SQLite and PostgreSQL: refused UPDATE/DELETE,
tampering caught, one linear chain under concurrency, purge behind a signed checkpoint,
streamed filtered export; and the admin routes on a running gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.admin.audit_trail import actor_of
from spendgate.core.audit_chain import AuditEvent, AuditSettings
from spendgate.errors import Conflict, ValidationFailed
from spendgate.store import audit as store
from spendgate.store.database import create_engine, migrate
from tests.conftest import MASTER_KEY, RunningGateway
from tests.store.triggers import behind_the_triggers

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=900)
KEY = b"audit-test-key"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    store.bind_audit_key(engine, KEY)
    await migrate(engine)
    yield engine
    await engine.dispose()


def event(
    n: int,
    *,
    at: datetime | None = None,
    action: str = "budget.updated",
    actor: str = "master",
    target: str | None = None,
) -> AuditEvent:
    return AuditEvent(
        at or T0 + timedelta(hours=n),
        "admin",
        actor,
        action,
        "budget",
        target or f"bud_{n}",
        before={"amount_usd": "100.00", "n": n},
        after={"amount_usd": "150.00", "n": n},
        request_id=f"req_{n}",
        source_ip="127.0.0.1",
    )


async def fill(engine: AsyncEngine, n: int, **kwargs: Any) -> list[str]:
    ids = []
    for i in range(n):
        ids.append((await store.record(engine, event(i, **kwargs))).id)
    return ids


async def raw(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def test_append_builds_a_verifiable_chain(engine: AsyncEngine) -> None:
    """Entries get seq 1..n, each linked to the one before; the head follows."""
    await fill(engine, 5)
    entries = [e async for e in store.iter_entries(engine, batch=2)]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[1].event.before == {"amount_usd": "100.00", "n": 1}
    assert await store.head(engine) == (5, entries[-1].hash)
    result = await store.verify(engine, KEY, now=NOW)
    assert result.ok and result.checked == 5


async def test_append_rolls_back_with_the_change(engine: AsyncEngine) -> None:
    """No entry without its change: a failed transaction leaves no entry and no gap."""
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await store.append(conn, event(0))
            raise RuntimeError("the change failed")
    await fill(engine, 1)
    assert [e.seq async for e in store.iter_entries(engine)] == [1]
    assert (await store.verify(engine, KEY, now=NOW)).ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET action = 'nothing.happened'",
        "UPDATE audit_log SET actor_id = 'someone-else' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log",
    ],
)
async def test_the_database_refuses_update_and_delete(engine: AsyncEngine, sql: str) -> None:
    await fill(engine, 3)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        await raw(engine, sql)
    assert (await store.verify(engine, KEY, now=NOW)).checked == 3


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_truncate_is_refused_on_postgresql(engine: AsyncEngine) -> None:
    """PostgreSQL's TRUNCATE bypasses row triggers, so a statement trigger refuses it
    (SQLite has no TRUNCATE; its DELETE is guarded above)."""
    await fill(engine, 2)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        await raw(engine, "TRUNCATE audit_log")


async def test_checkpoints_are_append_only_too(engine: AsyncEngine) -> None:
    await fill(engine, 3, at=T0)
    await store.purge(
        engine, T0 + timedelta(seconds=1), KEY, now=T0 + timedelta(days=400), min_retention_days=365
    )
    for sql in ("UPDATE audit_checkpoints SET seq = 1", "DELETE FROM audit_checkpoints"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await raw(engine, sql)


async def tamper(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """Run ``sql`` with the guards dropped, then put them back."""
    await behind_the_triggers(engine, (sql, params))


async def test_an_amount_changed_behind_the_triggers_back_is_named(engine: AsyncEngine) -> None:
    """Drop the trigger, change a JSON amount, restore it: verify names that entry."""
    ids = await fill(engine, 6)
    doctored = json.dumps({"amount_usd": "1500.00", "n": 3})
    cast = "CAST(:after AS JSONB)" if engine.dialect.name == "postgresql" else ":after"
    await tamper(
        engine, f"UPDATE audit_log SET after = {cast} WHERE id = :id", after=doctored, id=ids[3]
    )
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        await raw(engine, "UPDATE audit_log SET action = 'x'")  # guards are back
    result = await store.verify(engine, KEY, now=NOW)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.entry_id == ids[3]
    assert result.first_bad.seq == 4 and "content" in result.first_bad.reason
    assert result.checked == 3


async def test_a_deleted_entry_behind_the_triggers_back_is_named(engine: AsyncEngine) -> None:
    ids = await fill(engine, 5)
    await tamper(engine, "DELETE FROM audit_log WHERE id = :id", id=ids[2])
    bad = (await store.verify(engine, KEY, now=NOW)).first_bad
    assert bad is not None and bad.entry_id == ids[3] and "sequence gap" in bad.reason


async def test_a_deleted_tail_is_caught(engine: AsyncEngine) -> None:
    await fill(engine, 5)
    await tamper(engine, "DELETE FROM audit_log WHERE seq >= 4")
    bad = (await store.verify(engine, KEY, now=NOW)).first_bad
    assert bad is not None and bad.entry_id is None and bad.seq == 4


async def test_concurrent_appends_keep_one_linear_chain(engine: AsyncEngine) -> None:
    """50 appends at once, each in its own transaction (like 50 replicas): seq 1..50."""

    async def one(n: int) -> int:
        async with engine.begin() as conn:
            return (await store.append(conn, event(n))).seq

    seqs = await asyncio.gather(*(one(n) for n in range(50)))
    assert sorted(seqs) == list(range(1, 51))
    result = await store.verify(engine, KEY, now=NOW)
    assert result.ok and result.checked == 50 and result.last_seq == 50


async def test_concurrent_appends_from_separate_engines(
    database_url: str, engine: AsyncEngine
) -> None:
    """Two engines (two replicas' pools) appending at once still make one chain."""
    other = create_engine(database_url)
    store.bind_audit_key(other, KEY)
    try:

        async def one(eng: AsyncEngine, n: int) -> None:
            await store.record(eng, event(n))

        await asyncio.gather(*(one(engine if n % 2 else other, n) for n in range(20)))
    finally:
        await other.dispose()
    result = await store.verify(engine, KEY, now=NOW)
    assert result.ok and result.checked == 20


async def test_purge_keeps_the_chain_verifiable_from_a_signed_checkpoint(
    engine: AsyncEngine,
) -> None:
    old = [(await store.record(engine, event(i, at=T0 + timedelta(days=i)))) for i in range(5)]
    young = [
        (await store.record(engine, event(i, at=T0 + timedelta(days=400 + i)))) for i in range(3)
    ]
    now = T0 + timedelta(days=800)
    result = await store.purge(engine, T0 + timedelta(days=3), KEY, now=now, min_retention_days=365)
    assert result.purged == 3 and result.checkpoint is not None
    assert (result.checkpoint.seq, result.checkpoint.hash) == (3, old[2].hash)
    remaining = [e.seq async for e in store.iter_entries(engine)]
    assert remaining == [4, 5, 6, 7, 8, 9]  # 9: the audit.purged entry
    verified = await store.verify(engine, KEY, now=NOW)
    assert verified.ok and verified.checkpoint_seq == 3 and verified.checked == 6
    assert (await store.verify(engine, b"wrong-key", now=NOW)).first_bad is not None
    again = await store.purge(
        engine, T0 + timedelta(days=100), KEY, now=now, min_retention_days=365
    )
    assert again.purged == 2 and (await store.verify(engine, KEY, now=NOW)).ok
    assert young[0].seq == 6


async def test_purge_refuses_entries_younger_than_the_retention(engine: AsyncEngine) -> None:
    await fill(engine, 3)
    now = T0 + timedelta(days=100)
    with pytest.raises(ValidationFailed, match="365 days"):
        await store.purge(engine, now - timedelta(days=30), KEY, now=now, min_retention_days=365)
    assert (await store.verify(engine, KEY, now=NOW)).checked == 3


async def test_purge_refuses_a_broken_chain(engine: AsyncEngine) -> None:
    """Purging would erase the evidence: it checks what it is about to delete."""
    ids = await fill(engine, 4, at=T0)
    await tamper(engine, "UPDATE audit_log SET actor_id = 'x' WHERE id = :id", id=ids[1])
    with pytest.raises(Conflict, match=ids[1]):
        await store.purge(
            engine,
            T0 + timedelta(days=1),
            KEY,
            now=T0 + timedelta(days=400),
            min_retention_days=365,
        )
    assert [e.seq async for e in store.iter_entries(engine)] == [1, 2, 3, 4]


async def test_a_forged_checkpoint_is_reported(engine: AsyncEngine) -> None:
    await fill(engine, 4, at=T0)
    await store.purge(
        engine, T0 + timedelta(days=1), KEY, now=T0 + timedelta(days=400), min_retention_days=365
    )
    await tamper(engine, "UPDATE audit_checkpoints SET seq = 2")
    bad = (await store.verify(engine, KEY, now=NOW)).first_bad
    assert bad is not None and "signature" in bad.reason


async def test_filters_and_streaming(engine: AsyncEngine) -> None:
    for i in range(30):
        await store.record(
            engine,
            event(
                i,
                action="key.revoked" if i % 3 else "budget.deleted",
                actor="alice" if i < 10 else "bob",
                target=f"key_{i % 2}",
            ),
        )
    by_action = [
        e.seq
        async for e in store.iter_entries(engine, store.AuditFilter(action="budget.*"), batch=4)
    ]
    assert by_action == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]
    window = store.AuditFilter(
        start=T0 + timedelta(hours=5), end=T0 + timedelta(hours=8), actor="admin:bob"
    )
    assert [e.seq async for e in store.iter_entries(engine, window)] == []
    window = store.AuditFilter(
        start=T0 + timedelta(hours=9),
        end=T0 + timedelta(hours=12),
        actor="admin:bob",
        target="budget:key_1",
    )
    assert [e.seq async for e in store.iter_entries(engine, window)] == [12]
    assert await store.count_entries(engine, store.AuditFilter(actor="alice")) == 10
    page = await store.list_entries(engine, store.AuditFilter(actor="bob"), limit=5)
    assert [e.seq for e in page] == [30, 29, 28, 27, 26]
    page = await store.list_entries(engine, limit=3, before_seq=page[-1].seq)
    assert [e.seq for e in page] == [25, 24, 23]


# -- the admin routes on a running gateway -----------------------------------------------------
@pytest.fixture
def audited(gateway: RunningGateway) -> Iterator[RunningGateway]:
    """The gateway with its audit key set to ``KEY``."""
    gateway.app.admin.state.audit_settings = AuditSettings(KEY)
    store.bind_audit_key(gateway.app.services.engine, KEY)
    yield gateway


def record_on(gateway: RunningGateway, n: int, **kwargs: Any) -> None:
    async def go() -> None:
        for i in range(n):
            await store.record(gateway.app.services.engine, event(i, **kwargs))

    gateway.run(go())


def test_http_list_verify_export_and_purge(audited: RunningGateway, tmp_path: Path) -> None:
    record_on(audited, 12)
    page = audited.get("/admin/audit", limit=5, action="budget.*")
    assert [e["seq"] for e in page["entries"]] == [12, 11, 10, 9, 8]
    assert page["next_before_seq"] == 8
    assert audited.get("/admin/audit/verify")["ok"] is True

    response = audited.admin.get("/admin/audit/export", params={"format": "jsonl"})
    assert response.status_code == 200 and response.headers["x-audit-count"] == "12"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, 13))
    assert lines[0]["before"] == {"amount_usd": "100.00", "n": 0}

    response = audited.admin.get("/admin/audit/export", params={"format": "csv", "target": "bud_3"})
    rows = response.text.splitlines()
    assert rows[0].startswith("seq,id,at,actor_type") and len(rows) == 2
    exported = audited.get("/admin/audit", action="audit.exported")["entries"]
    assert len(exported) == 2 and exported[0]["after"]["format"] == "csv"
    assert exported[0]["actor_id"] == "master" and exported[0]["source_ip"] == "127.0.0.1"

    refused = audited.admin.post("/admin/audit/purge", json={"before": "2026-03-01T00:00:00Z"})
    assert refused.status_code == 422, refused.text
    done = audited.post("/admin/audit/purge", {"before": "2025-01-01T18:00:00Z"}, status=200)
    assert done["purged"] == 6 and done["checkpoint_seq"] == 6
    assert audited.get("/admin/audit/verify")["checkpoint_seq"] == 6


def test_http_verify_names_the_tampered_entry(audited: RunningGateway) -> None:
    record_on(audited, 4)
    engine = audited.app.services.engine
    audited.run(tamper(engine, "UPDATE audit_log SET action = 'budget.created' WHERE seq = 3"))
    result = audited.get("/admin/audit/verify")
    assert result["ok"] is False and result["first_bad_seq"] == 3
    assert result["first_bad_id"] == audited.get("/admin/audit", limit=2)["entries"][1]["id"]


def test_http_requires_the_master_key(audited: RunningGateway) -> None:
    response = audited.admin.get("/admin/audit/verify", headers={"authorization": "Bearer no"})
    assert response.status_code == 401


def test_cli_export_and_verify(
    audited: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from spendgate.cli.audit import audit_app

    record_on(audited, 7)
    monkeypatch.setenv("SPENDGATE_MASTER_KEY", MASTER_KEY)
    out = tmp_path / "audit.jsonl"
    runner = CliRunner()
    result = runner.invoke(
        audit_app, ["export", "--url", audited.url, "-o", str(out), "--actor", "master"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == list(range(1, 8))
    # --json (issue 14, item 7): a summary a script reads, the anchor file still written
    again = tmp_path / "again.jsonl"
    result = runner.invoke(
        audit_app, ["export", "--url", audited.url, "-o", str(again), "--json", "--actor", "master"]
    )
    assert result.exit_code == 0, result.output
    lines = again.read_text().splitlines()
    assert len(lines) == 8  # the first export is audited too
    assert json.loads(result.stdout) == {
        "output": str(again),
        "format": "jsonl",
        "entries": len(lines),
        "anchor": f"{again}.anchor.json",
    }
    assert json.loads(Path(f"{again}.anchor.json").read_text())["signature"]
    assert runner.invoke(audit_app, ["export", "--url", audited.url, "--json"]).exit_code == 2
    result = runner.invoke(audit_app, ["verify", "--url", audited.url, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["checked"] == 9  # 7 + 2 exports
    audited.run(
        tamper(
            audited.app.services.engine, "UPDATE audit_log SET source_ip = '6.6.6.6' WHERE seq = 5"
        )
    )
    result = runner.invoke(audit_app, ["verify", "--url", audited.url])
    assert result.exit_code == 1 and "seq 5" in result.stdout


@pytest.mark.parametrize(
    ("principal", "actor"),
    [
        ("master", ("admin", "master")),
        ("token:tok_1", ("token", "tok_1")),
        ("key:key_9", ("key", "key_9")),
    ],
)
def test_admin_principals_become_actors(principal: str, actor: tuple[str, str]) -> None:
    assert actor_of(principal) == actor


def test_purge_never_reaches_entries_younger_than_twelve_months(audited: RunningGateway) -> None:
    """SPEC §7 keeps the audit log at least 12 months. A year with a 29 February in it is
    366 days long: the 365-day floor alone let a purge on 1 March 2028 delete an entry of
    1 March 2027, noon — eleven months and thirty days old."""
    young = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)  # 12 months before now: 2027-03-01
    older = datetime(2027, 2, 28, 12, 0, tzinfo=UTC)
    audited.run(store.record(audited.app.services.engine, event(1, at=older)))
    audited.run(store.record(audited.app.services.engine, event(2, at=young)))
    audited.clock.set(datetime(2028, 3, 1, 0, 0, tzinfo=UTC))

    refused = audited.admin.post("/admin/audit/purge", json={"before": "2027-03-02T00:00:00Z"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "before"

    done = audited.post("/admin/audit/purge", {}, status=200)  # the default: the retention
    assert done["purged"] == 1
    kept = audited.get("/admin/audit", target="bud_2")["entries"]
    assert [e["at"] for e in kept] == ["2027-03-01T12:00:00Z"]
    assert audited.get("/admin/audit/verify")["ok"] is True


def test_http_verify_reports_a_deleted_head_row(audited: RunningGateway) -> None:
    """The head row deleted behind the triggers' back (migration 0027 refuses a plain
    DELETE), with the entries at the end, was a 500 from verify (and from ``spendgate
    audit verify``), not a report of tampering."""
    record_on(audited, 4)
    engine = audited.app.services.engine
    audited.run(tamper(engine, "DELETE FROM audit_chain_head"))
    response = audited.admin.get("/admin/audit/verify")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["ok"] is False and result["checked"] == 4
    assert "head row is missing" in result["reason"] and result["anchor"] is None
