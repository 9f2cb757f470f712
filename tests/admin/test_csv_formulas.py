"""CSV exports opened in a spreadsheet run no formulas: a tag, team or key name that
starts with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return) is written with a
leading ``'``, in usage, audit and statement CSVs alike; money is not touched, so the
CSV's figures still equal the JSON's exactly."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import openai

from tests.conftest import RunningGateway

FORMULAS = ("=1+2", "+A1", "-2+3", "=cmd:calc")


def _call(gw: RunningGateway, key: str, at: datetime) -> None:
    gw.clock.set(at)
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
        model="demo-small", messages=[{"role": "user", "content": "hello there"}]
    )


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _no_formula(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), (cell, row)
            assert not cell.startswith("-") or _is_number(cell), (cell, row)


def _is_number(cell: str) -> bool:
    try:
        Decimal(cell)
    except ArithmeticError:
        return False
    return True


def test_usage_audit_and_statement_csvs_neutralise_formulas(gateway: RunningGateway) -> None:
    """Tags and a team named like formulas: the usage CSV (by tag and team), the audit
    export (a caller's ``x-request-id``) and the org's statement carry them behind a
    ``'``; usage figures still match the JSON."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "=cmd|'/c calc'!A1"})
    made = gw.admin.post(
        "/admin/teams",
        json={"org_id": org["id"], "name": "+team"},
        headers={"x-request-id": "=1+2"},
    )
    assert made.status_code == 201, made.text
    team = made.json()
    key = gw.create_key(org_id=org["id"], team_id=team["id"], name="@key", tags=list(FORMULAS))
    _call(gw, key["key"], datetime(2026, 2, 10, 9, 0, tzinfo=UTC))
    params = {"group_by": "tag,team", "org_id": org["id"], "start": "2026-02-01"}
    report = gw.get("/admin/usage", **params)
    assert sorted(r["tag"] for r in report["rows"]) == sorted(FORMULAS)
    usage = _rows(gw.admin.get("/admin/usage", params={**params, "format": "csv"}).text)
    _no_formula(usage)
    header = usage[0]
    tagged = usage[1:]  # one line per tag, no total row: a script sums a column
    tags = sorted(r[header.index("tag")] for r in tagged)
    assert tags == sorted("'" + t for t in FORMULAS)
    cost = header.index("cost_usd")
    assert sorted(r[cost] for r in tagged) == sorted(r["cost_usd"] for r in report["rows"])

    audit = gw.admin.get("/admin/audit/export", params={"format": "csv", "target": team["id"]})
    assert audit.status_code == 200, audit.text
    audit_rows = _rows(audit.text)
    _no_formula(audit_rows)
    assert audit_rows[1][audit_rows[0].index("request_id")] == "'=1+2"

    gw.clock.set(datetime(2026, 3, 5, tzinfo=UTC))
    statement = gw.admin.get(
        "/admin/statements/2026-02",
        params={"org_id": org["id"], "format": "csv"},
    )
    assert statement.status_code == 200, statement.text
    lines = _rows(statement.text)
    _no_formula(lines)
    assert lines[1][:3] == ["lines", team["id"], "'+team"]
    as_json = gw.get("/admin/statements/2026-02", org_id=org["id"])
    # the total row: no line figures, 0 calls of unknown price; web_searches (a line
    # figure, the last column) empty too
    assert ["total", "total", "Total", "", as_json["total_usd"], *[""] * 6, "0", ""] in lines
