"""Web searches where the tokens are shown: calls through the real anthropic and openai
SDKs whose server-side search tool ran searches (the fake upstream's ``[[searches:N]]``)
keep them in their ledger rows (whose cost is then the price of their figures), in
``/admin/usage`` (JSON rows and total; the CSV's last column, after
``cumulative_cost_usd`` too), ``spendgate usage`` and the month's chargeback statement
(JSON, CSV last column, page) — on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import anthropic
import openai
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.core.pricing import PriceRef, PriceTable
from spendgate.core.usage import TokenUsage
from tests.conftest import MASTER_KEY, RunningGateway

SEARCH = {"type": "web_search_20250305", "name": "web_search"}
#: the models' price entries (genai-prices: $10 per thousand searches on both)
PRICES = {
    "claude-sonnet-4-5": PriceRef("claude-sonnet-4-5", "anthropic"),
    "gpt-4.1": PriceRef("gpt-4.1", "openai"),
}


def _world(gw: RunningGateway) -> dict[str, Any]:
    """Team ``search`` (key tagged ``prod``): an Anthropic message that ran 2 searches on
    2026-03-10, a streamed Responses call that ran 3 on 2026-03-11 and a chat call with
    none; team ``plain``: one chat call, no search."""
    org = gw.post("/admin/orgs", {"name": "searchers"})
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "search"})
    plain = gw.post("/admin/teams", {"org_id": org["id"], "name": "plain"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"], tags=["prod"])["key"]
    other = gw.create_key(org_id=org["id"], team_id=plain["id"])["key"]
    gw.clock.set(datetime(2026, 3, 10, 9, 5, tzinfo=UTC))
    anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=32,
        tools=[SEARCH],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "news today [[searches:2]]"}],
    )
    gw.clock.set(datetime(2026, 3, 11, 9, 5, tzinfo=UTC))
    oai = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    events = oai.responses.create(
        model="gpt-4.1",
        tools=[{"type": "web_search"}],
        input="what happened [[searches:3]]",
        max_output_tokens=32,
        stream=True,
    )
    assert [e.type for e in events][-1] == "response.completed"
    gw.clock.set(datetime(2026, 3, 11, 10, 5, tzinfo=UTC))
    oai.chat.completions.create(
        model="gpt-4.1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    openai.OpenAI(base_url=gw.url + "/v1", api_key=other, max_retries=0).chat.completions.create(
        model="gpt-4.1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    return {"org": org, "team": team, "plain": plain}


def _csv(gw: RunningGateway, params: dict[str, str]) -> list[list[str]]:
    response = gw.admin.get("/admin/usage", params={**params, "format": "csv"})
    assert response.status_code == 200, response.text
    return list(csv.reader(io.StringIO(response.text)))


def test_a_rows_cost_is_the_price_of_its_figures_searches_included(
    gateway: RunningGateway,
) -> None:
    """Each ledger row keeps the searches its call was billed for, and its cost is what
    its stored figures cost — searches and tokens — at its time."""
    gw = gateway
    org = _world(gw)["org"]
    rows = sorted(
        (r for r in gw.ledger() if r["org_id"] == org["id"]), key=lambda r: r["started_at"]
    )
    assert [(r["model"], r["web_searches"]) for r in rows] == [
        ("claude-sonnet-4-5", 2),
        ("gpt-4.1", 3),
        ("gpt-4.1", 0),
        ("gpt-4.1", 0),
    ]
    for row in rows:
        figures = TokenUsage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cache_read_tokens=row["cache_read_tokens"],
            cache_write_tokens=row["cache_write_tokens"],
            cache_write_1h_tokens=row["cache_write_1h_tokens"],
            reasoning_tokens=row["reasoning_tokens"],
            web_searches=row["web_searches"],
        )
        priced = PriceTable().price(PRICES[row["model"]], figures, row["started_at"])
        assert priced.cost_nanos == row["cost_nanos"], row


def test_usage_reports_show_the_searches(gateway: RunningGateway) -> None:
    """``/admin/usage`` has ``web_searches`` in every row (by day and team: the daily
    rollup; by key, tag, model and not grouped: the wide, tag and narrow ones) and in
    its total (each call once, also grouped by tag); the CSV has it as its last column,
    after ``cumulative_cost_usd`` too; ``spendgate usage`` shows it."""
    gw = gateway
    w = _world(gw)
    org, team = w["org"], w["team"]
    base = {"org_id": org["id"], "start": "2026-03-01", "end": "2026-04-01"}
    days = gw.get("/admin/usage", group_by="day,team", **base)
    assert sorted((r["day"], r["team"], r["web_searches"]) for r in days["rows"]) == sorted(
        [("2026-03-10", team["id"], 2), ("2026-03-11", w["plain"]["id"], 0),
         ("2026-03-11", team["id"], 3)]
    )  # fmt: skip
    assert days["web_searches"] == 5
    models = gw.get("/admin/usage", group_by="model", **base)["rows"]
    assert {r["model"]: r["web_searches"] for r in models} == {
        "claude-sonnet-4-5": 2,
        "gpt-4.1": 3,
    }
    for group_by in ("key", "tag", ""):
        report = gw.get("/admin/usage", group_by=group_by, **base)
        assert sum(r["web_searches"] for r in report["rows"]) == 5, group_by
        assert report["web_searches"] == 5, group_by

    for extra in ({}, {"cumulative": "true"}):
        header, *lines = _csv(gw, {"group_by": "day,team", **base, **extra})
        assert header[-1] == "web_searches", extra
        assert header[-2] == ("cumulative_cost_usd" if extra else "estimated_usd")
        assert sorted((line[0], line[1], line[-1]) for line in lines) == sorted(
            [("2026-03-10", team["id"], "2"), ("2026-03-11", w["plain"]["id"], "0"),
             ("2026-03-11", team["id"], "3")]
        )  # fmt: skip

    env = {"SPENDGATE_MASTER_KEY": MASTER_KEY}
    args = ["usage", "--by", "model", "--org", org["id"], "--start", "2026-03-01"]
    shown = CliRunner().invoke(cli, [*args, "--url", gw.url], env={**env, "COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    # too wide for the terminal: one "column  value" block per row
    blocks = [
        dict(line.split(None, 1) for line in block.splitlines())
        for block in shown.stdout.split("total:")[0].strip().split("\n\n")
    ]
    assert [(b["model"], b["web_searches"]) for b in blocks] == [
        ("claude-sonnet-4-5", "2"),
        ("gpt-4.1", "3"),
    ]
    as_json = CliRunner().invoke(cli, [*args, "--json", "--url", gw.url], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["web_searches"] == 5


def test_statement_lines_count_the_searches(gateway: RunningGateway) -> None:
    """The month's statements say how many searches each team's own calls ran: the
    JSON line (a team with none leaves the figure out, so a month without searches
    draws what it drew before), the CSV's last column (0 there), the page and
    ``spendgate statements show``."""
    gw = gateway
    w = _world(gw)
    org_id, team, plain = w["org"]["id"], w["team"]["id"], w["plain"]["id"]
    st = gw.get("/admin/statements/2026-03", org_id=org_id)["statement"]
    lines = {line["id"]: line for line in st["lines"]}
    assert lines[team]["web_searches"] == 5
    assert "web_searches" not in lines[plain] and lines[plain]["requests"] == 1
    own = gw.get("/admin/statements/2026-03", org_id=org_id, team_id=team)["statement"]
    assert own["lines"][0]["web_searches"] == 5

    text = gw.admin.get("/admin/statements/2026-03", params={"org_id": org_id, "format": "csv"})
    header, *rows = list(csv.reader(io.StringIO(text.text)))
    assert header[-2:] == ["unpriced_requests", "web_searches"]
    searched = {row[1]: row[-1] for row in rows if row[0] == "lines"}
    assert (searched[team], searched[plain], searched["unallocated"]) == ("5", "0", "")

    page = gw.admin.get(
        "/admin/statements/2026-03", params={"org_id": org_id, "team_id": team, "format": "html"}
    ).text
    assert '<th class="num">Web searches</th>' in page
    assert re.search(r'Own spend</td>(<td class="num">[^<]*</td>){6}<td class="num">5</td>', page)
