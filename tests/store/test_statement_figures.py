"""A statement's team lines say what the team's own spend was made of: calls, tokens,
and the calls billed on an estimate with their cost. A statement stored before lines
carried them still renders (CSV, JSONL, HTML) and is reissued with a diff of its money
only (its calls are unknown, not 0); the next reissue compares them too."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.admin.statement_views import render
from spendgate.core.chargeback import LINE_FIGURES, SPARSE_FIGURES
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import LedgerEntry, Pending, store_batch
from spendgate.store.showback_schema import statement_months
from spendgate.store.statements import _insert, _row, close, draw, reissue, stored

JAN, FEB = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 2, 10, tzinfo=UTC)
ORG = {"id": "o1", "name": "acme", "reporting_timezone": "UTC"}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(schema.orgs.insert().values(id="o1", name="acme", created_at=JAN))
        for team in ("t1", "t2"):
            await conn.execute(
                schema.teams.insert().values(id=team, org_id="o1", name=team, created_at=JAN)
            )
    yield engine
    await engine.dispose()


#: the figures every team line carries
DENSE = [k for k in LINE_FIGURES if k not in SPARSE_FIGURES]


def call(n: int, cost: int, team: str | None, at: datetime, estimated: bool = False) -> LedgerEntry:
    """A call of ``10 + n`` input tokens, 2 output, 3 cache reads, 4 cache writes."""
    return LedgerEntry(
        f"r{n}", "o1", team, None, None, "k1", [], "openai", "m1", "m1", "chat", False, "ok",
        200, 10 + n, 2, 3, 4, 0, cost, False, estimated, 1, at, at,
    )  # fmt: skip


async def _store(engine: AsyncEngine, *calls: LedgerEntry) -> None:
    async with engine.begin() as conn:
        await store_batch(conn, [Pending(c) for c in calls])


async def test_team_lines_carry_calls_tokens_and_estimates(engine: AsyncEngine) -> None:
    """Team t1: two calls, one estimated; t2: one; one call without a team (Unallocated,
    no figures). The org statement's team lines and each team statement's own line say
    so; allocated and Unallocated lines carry no figures; CSV shows them."""
    await _store(
        engine,
        call(1, 1_000, "t1", FEB),
        call(2, 2_000_000_007, "t1", FEB, estimated=True),
        call(3, 300, "t2", FEB),
        call(4, 50, None, FEB),
    )
    async with engine.begin() as conn:
        await close(engine, conn, ORG, "2026-02", "tester", FEB + timedelta(days=40))
    org = await stored(engine, "o1", "2026-02", "", None)
    lines = {line["id"]: line for line in _content(org)["lines"]}
    want_t1 = {
        "requests": 2, "input_tokens": 23, "output_tokens": 4, "cache_read_tokens": 6,
        "cache_write_tokens": 8, "estimated_calls": 1, "estimated_nanos": 2_000_000_007,
    }  # fmt: skip
    # no call searched: the sparse figures are left out (a month drawn as before 0028)
    assert {k: lines["t1"][k] for k in DENSE} == want_t1
    assert not set(SPARSE_FIGURES) & (set(lines["t1"]) | set(lines["t2"]))
    assert {k: lines["t2"][k] for k in DENSE} == {
        **dict.fromkeys(DENSE, 0), "requests": 1, "input_tokens": 13, "output_tokens": 2,
        "cache_read_tokens": 3, "cache_write_tokens": 4,
    }  # fmt: skip
    assert not set(LINE_FIGURES) & set(lines["unallocated"])
    team = _content(await stored(engine, "o1", "2026-02", "t1", None))
    [own] = [line for line in team["lines"] if line["id"] == "own"]
    assert {k: own[k] for k in DENSE} == want_t1
    exported = render("csv", {"provisional": False}, _content(org))
    assert not isinstance(exported, dict)
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(bytes(exported.body).decode()))}
    assert (rows["t1"]["requests"], rows["t1"]["estimated_calls"]) == ("2", "1")
    assert rows["t1"]["estimated_usd"] == "2.000000007"
    assert (rows["t1"]["web_searches"], rows["unallocated"]["web_searches"]) == ("0", "")
    assert rows["unallocated"]["requests"] == rows["unallocated"]["estimated_usd"] == ""


def _content(found: dict[str, Any]) -> dict[str, Any]:
    content = found["content"] if "content" in found else found["statement"]
    return orjson.loads(content) if isinstance(content, str) else dict(content)


async def test_an_old_statement_renders_and_is_reissued_on_its_money(engine: AsyncEngine) -> None:
    """January closed as before (lines without figures, stored as such): it renders; a
    late estimated call reissues it with the money's diff only (no line figure: unknown
    in v1); another late call reissues v3 with the calls, tokens and estimated cost."""
    await _store(engine, call(1, 1_000, "t1", JAN), call(2, 500, "t2", JAN))
    drawn = await draw(engine, ORG, "2026-01", "UTC")
    for content in drawn.values():  # as a statement was stored before lines had figures
        content["lines"] = [{k: v for k, v in x.items() if k not in LINE_FIGURES}
                            for x in content["lines"]]  # fmt: skip
    closed_at = JAN + timedelta(days=30)
    async with engine.begin() as conn:
        await _insert(conn, [_row("o1", t, "2026-01", 1, c, "tester", closed_at)
                             for t, c in sorted(drawn.items())])  # fmt: skip
        await conn.execute(
            statement_months.insert().values(
                org_id="o1", month="2026-01", timezone="UTC", closed_by="tester",
                closed_at=closed_at,
            )
        )  # fmt: skip
    old = _content(await stored(engine, "o1", "2026-01", "t1", 1))
    for fmt in ("csv", "jsonl", "html"):
        shown = render(fmt, {"provisional": False, "version": 1}, old)
        assert not isinstance(shown, dict) and shown.status_code == 200
    csv_rows = list(csv.DictReader(io.StringIO(bytes(render("csv", {}, old).body).decode())))  # type: ignore[union-attr]
    assert csv_rows[0]["id"] == "own" and csv_rows[0]["requests"] == ""

    await _store(engine, call(3, 70, "t1", JAN, estimated=True))
    async with engine.begin() as conn:
        v2 = {r["team_id"]: r for r in await reissue(engine, conn, ORG, "2026-01", "t", FEB)}
    diff = orjson.loads(v2["t1"]["diff"])
    assert {d["item"] for d in diff} == {
        "total", "lines/own", "model/m1", "provider/openai", "key/k1", "user/(none)",
        "agent/(none)", "tag/(none)",
    }  # fmt: skip
    assert all(d["delta_nanos"] == 70 for d in diff)

    await _store(engine, call(4, 9, "t1", JAN, estimated=True))
    async with engine.begin() as conn:
        v3 = {r["team_id"]: r for r in await reissue(engine, conn, ORG, "2026-01", "t", FEB)}
    changes = {d["item"]: d for d in orjson.loads(v3["t1"]["diff"])}
    assert changes["lines/own"]["delta_nanos"] == 9
    assert changes["lines/own/requests"] == {
        "item": "lines/own/requests",
        "before": 2,
        "after": 3,
        "delta": 1,
    }
    assert changes["lines/own/input_tokens"]["delta"] == 14
    assert changes["lines/own/estimated_calls"]["delta"] == 1
    assert changes["lines/own/estimated_nanos"] == {
        "item": "lines/own/estimated_nanos", "before_nanos": 70, "after_nanos": 79,
        "delta_nanos": 9,
    }  # fmt: skip
    org_changes = {d["item"] for d in orjson.loads(v3[""]["diff"])}
    assert "lines/t1/requests" in org_changes and "lines/t2/requests" not in org_changes
