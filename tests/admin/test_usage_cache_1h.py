"""1-hour cache writes in the usage reports: a message through the fake upstream whose
cache writes are partly for an hour shows that part as ``cache_write_1h_tokens`` in
``/admin/usage`` (every rollup it can be read from), its CSV (with the total row the
console's CSV has too) and ``spendgate usage --json``/``--csv`` — on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
from typer.testing import CliRunner

from spendgate.cli import app as cli
from tests.conftest import MASTER_KEY, RunningGateway

ONE_HOUR = "long prompt " * 200 + "[[cache_write:300]] [[cache_write_1h:200]]"
FIVE_MINUTES = "long prompt " * 200 + "[[cache_write:50]]"


def _message(gw: RunningGateway, key: str, prompt: str, at: datetime) -> None:
    gw.clock.set(at)
    anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": prompt}]
    )


def _csv(gw: RunningGateway, params: dict[str, str]) -> list[dict[str, str]]:
    response = gw.admin.get("/admin/usage", params={**params, "format": "csv"})
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def _setup(gw: RunningGateway) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two calls of the org's team on 2026-03-10 (one with 200 of its 300 cache writes for
    an hour, one with 50 five-minute writes) and one on 2026-03-11 like the first, all
    tagged ``prod``."""
    org = gw.post("/admin/orgs", {"name": "cache-hour"})
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "agents"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"], tags=["prod"])["key"]
    _message(gw, key, ONE_HOUR, datetime(2026, 3, 10, 9, 5, tzinfo=UTC))
    _message(gw, key, FIVE_MINUTES, datetime(2026, 3, 10, 9, 20, tzinfo=UTC))
    _message(gw, key, ONE_HOUR, datetime(2026, 3, 11, 9, 5, tzinfo=UTC))
    ledger = [r for r in gw.ledger() if r["org_id"] == org["id"]]
    assert sorted(r["cache_write_1h_tokens"] for r in ledger) == [0, 200, 200]
    return org, team


def test_one_hour_cache_writes_are_their_own_figure_in_every_report(
    gateway: RunningGateway,
) -> None:
    """Per day (the daily rollup, and the 15-minute one for a range cutting a day), per
    key (the wide rollup), per tag (the tag rollup) and not grouped: cache writes 650 of
    which 400 for an hour, each day's rows adding up to the total."""
    gw = gateway
    org, _team = _setup(gw)
    base = {"org_id": org["id"], "start": "2026-03-01", "end": "2026-04-01"}
    days = gw.get("/admin/usage", group_by="day,team", **base)["rows"]
    assert [(r["day"], r["cache_write_tokens"], r["cache_write_1h_tokens"]) for r in days] == [
        ("2026-03-10", 350, 200),
        ("2026-03-11", 300, 200),
    ]
    cut = gw.get("/admin/usage", group_by="day", **{**base, "start": "2026-03-10T09:15"})["rows"]
    assert [(r["day"], r["cache_write_1h_tokens"]) for r in cut] == [
        ("2026-03-10", 0),
        ("2026-03-11", 200),
    ]
    for group_by in ("key", "tag", "model", ""):
        [row] = gw.get("/admin/usage", group_by=group_by, **base)["rows"]
        assert (row["requests"], row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (
            3,
            650,
            400,
        ), group_by


def test_the_usage_csv_has_the_one_hour_column(gateway: RunningGateway) -> None:
    """The CSV (by day and team) has ``cache_write_1h_tokens`` after ``cache_write_tokens``,
    one line per group and no total row, its columns summing to the JSON's totals;
    ``spendgate usage --csv`` prints the same, ``--json`` the same rows."""
    gw = gateway
    org, team = _setup(gw)
    params = {"group_by": "day,team", "org_id": org["id"], "start": "2026-03-01"}
    rows = _csv(gw, params)
    header = list(rows[0])
    at = header.index("cache_write_tokens")
    assert header[at + 1] == "cache_write_1h_tokens"
    assert [(r["day"], r["team"], r["cache_write_1h_tokens"]) for r in rows] == [
        ("2026-03-10", team["id"], "200"),
        ("2026-03-11", team["id"], "200"),
    ]
    report = gw.get("/admin/usage", **params)
    assert sum(int(r["cache_write_tokens"]) for r in rows) == 650
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(report["total_cost_usd"])

    env = {"SPENDGATE_MASTER_KEY": MASTER_KEY}
    args = ["usage", "--by", "day,team", "--org", org["id"], "--start", "2026-03-01"]
    printed = CliRunner().invoke(cli, [*args, "--csv", "--url", gw.url], env=env)
    assert printed.exit_code == 0, printed.output
    assert list(csv.DictReader(io.StringIO(printed.stdout))) == rows
    as_json = CliRunner().invoke(cli, [*args, "--json", "--url", gw.url], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert [r["cache_write_1h_tokens"] for r in json.loads(as_json.stdout)["rows"]] == [200, 200]
