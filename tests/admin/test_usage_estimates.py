"""Calls billed on an estimate in the usage reports: a stream the upstream cuts before
its usage (billed on an estimate) and a whole call, by one team's key, show as
``estimated_calls`` and ``estimated_usd`` per group in ``/admin/usage`` (with the
report's totals), its CSV and ``spendgate usage`` (table and ``--json``) — on SQLite
and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import openai
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.core.money import format_usd
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import MASTER_KEY, RunningGateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def _setup(gw: RunningGateway, fake: FakeUpstream) -> tuple[dict[str, Any], dict[str, Any], int]:
    """A whole call and a cut stream of the org's team on 2026-03-10; the cut one's cost."""
    org = gw.post("/admin/orgs", {"name": "estimates"})
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "agents"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"])["key"]
    gw.clock.set(datetime(2026, 3, 10, 9, 5, tzinfo=UTC))
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
        **CHAT
    )
    gw.cut_stream(key, CHAT, fake)
    ledger = [r for r in gw.ledger() if r["org_id"] == org["id"]]
    [cut] = [r for r in ledger if r["usage_estimated"]]
    assert len(ledger) == 2 and cut["status"] == "incomplete" and cut["cost_nanos"] > 0
    return org, team, cut["cost_nanos"]


def test_estimated_calls_and_cost_per_group(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """By status: the cut stream's row is all estimate, the whole call's none; by team the
    one group holds both calls, one of them estimated; the report's totals say it too;
    the CSV has both columns after ``unpriced_requests``."""
    gw = gateway
    org, team, nanos = _setup(gw, fake)
    base = {"org_id": org["id"], "start": "2026-03-01", "end": "2026-04-01"}
    by_status = gw.get("/admin/usage", group_by="status", **base)
    assert [(r["status"], r["estimated_calls"], r["estimated_usd"]) for r in by_status["rows"]] == [
        ("incomplete", 1, format_usd(nanos)),
        ("ok", 0, format_usd(0)),
    ]
    assert (by_status["estimated_calls"], by_status["total_estimated_usd"]) == (
        1,
        format_usd(nanos),
    )
    for group_by in ("team", "day,team", "key", ""):
        [row] = gw.get("/admin/usage", group_by=group_by, **base)["rows"]
        assert (row["requests"], row["estimated_calls"], row["estimated_usd"]) == (
            2,
            1,
            format_usd(nanos),
        ), group_by
    response = gw.admin.get("/admin/usage", params={**base, "group_by": "team", "format": "csv"})
    assert response.status_code == 200, response.text
    [line] = list(csv.DictReader(io.StringIO(response.text)))
    header = list(line)
    assert header[header.index("unpriced_requests") + 1 :][:2] == [
        "estimated_calls",
        "estimated_usd",
    ]
    assert (line["team"], line["estimated_calls"], line["estimated_usd"]) == (
        team["id"],
        "1",
        format_usd(nanos),
    )


def test_the_cli_shows_the_estimates(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """``spendgate usage`` prints the estimated columns and says how much of the total is
    an estimate; ``--json`` has the API's fields."""
    gw = gateway
    org, _team, nanos = _setup(gw, fake)
    env = {"SPENDGATE_MASTER_KEY": MASTER_KEY, "COLUMNS": "250"}
    args = ["usage", "--by", "status", "--org", org["id"], "--start", "2026-03-01"]
    table = CliRunner().invoke(cli, [*args, "--url", gw.url], env=env)
    assert table.exit_code == 0, table.output
    assert "estimated_calls" in table.stdout and "estimated_usd" in table.stdout
    assert f"${format_usd(nanos)} of it an estimate, 1 calls" in table.stdout
    as_json = CliRunner().invoke(cli, [*args, "--json", "--url", gw.url], env=env)
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)["rows"]
    assert [(r["status"], r["estimated_calls"]) for r in rows] == [("incomplete", 1), ("ok", 0)]
