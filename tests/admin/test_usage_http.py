"""``/admin/usage`` through the real HTTP stack: answered from the rollups, in the org's
reporting zone, equal to the ledger; bad input is a 422 naming the field."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import openai
import sqlalchemy as sa

from tests.conftest import RunningGateway


def _call(gw: RunningGateway, key: str, at: datetime) -> None:
    gw.clock.set(at)
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
        model="demo-small", messages=[{"role": "user", "content": "hello there"}]
    )


def test_usage_days_follow_the_org_reporting_zone(gateway: RunningGateway) -> None:
    """Two calls 15 minutes apart straddle midnight in Kathmandu (+5:45): two days there,
    one in UTC; every view sums to the ledger's nanos."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "nepal"})
    assert org["reporting_timezone"] == "UTC" and org["week_start"] == "monday"
    patched = gw.admin.patch(
        f"/admin/orgs/{org['id']}", json={"reporting_timezone": "Asia/Kathmandu"}
    )
    assert patched.status_code == 200 and patched.json()["reporting_timezone"] == "Asia/Kathmandu"
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "search"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"])["key"]
    _call(gw, key, datetime(2026, 3, 10, 18, 14, tzinfo=UTC))  # 23:59 local
    _call(gw, key, datetime(2026, 3, 10, 18, 15, tzinfo=UTC))  # 00:00 local, next day
    ledger_nanos = sum(r["cost_nanos"] for r in gw.ledger() if r["org_id"] == org["id"])
    assert ledger_nanos > 0
    local = gw.get("/admin/usage", group_by="day,team", org_id=org["id"])
    assert local["timezone"] == "Asia/Kathmandu"
    assert [r["day"] for r in local["rows"]] == ["2026-03-10", "2026-03-11"]
    assert all(r["team"] == team["id"] for r in local["rows"])
    utc = gw.get("/admin/usage", group_by="day", org_id=org["id"], timezone="UTC")
    assert [(r["day"], r["requests"]) for r in utc["rows"]] == [("2026-03-10", 2)]
    total = gw.get("/admin/usage", org_id=org["id"])
    for report in (local, utc, total):
        usd = sum(Decimal(r["cost_usd"]) for r in report["rows"])
        assert usd * 10**9 == ledger_nanos
    cum = gw.get(
        "/admin/usage", group_by="day", org_id=org["id"], cumulative="true", start="2026-03-10"
    )
    assert cum["rows"][-1]["cumulative_cost_usd"] == total["total_cost_usd"]
    csv_text = gw.admin.get(
        "/admin/usage", params={"group_by": "day,model", "org_id": org["id"], "format": "csv"}
    ).text
    assert csv_text.splitlines()[0].startswith("day,model,requests,errors")
    lines = csv_text.splitlines()
    assert len(lines) == 3  # the header and a row per day: no total row for scripts to add
    summed = sum(Decimal(r["cost_usd"]) for r in csv.DictReader(io.StringIO(csv_text)))
    assert summed == Decimal(total["total_cost_usd"])


def test_bad_usage_input_is_a_422_naming_the_field(gateway: RunningGateway) -> None:
    """Unknown dimension or zone, two grains, end before start, a range over the limit,
    a bound off the quarter hour, a bad org zone: each a 422 naming its field."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "bad-input"})
    cases = [
        ({"group_by": "team,colour"}, "group_by"),
        ({"group_by": "day,month"}, "group_by"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "localtime"}, "timezone"),
        ({"start": "2026-03-10", "end": "2026-03-01"}, "end"),
        ({"start": "2020-01-01", "end": "2026-03-01"}, "end"),
        ({"group_by": "hour", "start": "2026-01-01", "end": "2026-06-01"}, "end"),
        ({"start": "2026-03-10T10:07:00Z"}, "start"),
        ({"week_start": "someday"}, "week_start"),
    ]
    for params, field in cases:
        response = gw.admin.get("/admin/usage", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["param"] == field, (params, response.text)
    bad_zone = gw.admin.patch(f"/admin/orgs/{org['id']}", json={"reporting_timezone": "Nowhere"})
    assert bad_zone.status_code == 422
    assert gw.get(f"/admin/orgs/{org['id']}")["reporting_timezone"] == "UTC"


def test_rebuild_finds_a_planted_difference_and_purge_keeps_rollups(
    gateway: RunningGateway,
) -> None:
    """A rollup row changed behind the gateway's back (in the narrow rollup, the one a
    total reads) is found by a dry-run rebuild and put right by a real one; purging the
    raw ledger past retention keeps the rollups, and a rebuild reaching into purged time
    is refused."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "rebuild"})
    key = gw.create_key(org_id=org["id"])["key"]
    _call(gw, key, datetime(2026, 3, 10, 9, 5, tzinfo=UTC))
    _call(gw, key, datetime(2026, 3, 11, 9, 5, tzinfo=UTC))
    before = gw.get("/admin/usage", org_id=org["id"])["total_cost_usd"]
    window = {"start": "2026-03-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"}
    clean = gw.post("/admin/usage/rebuild", {**window, "dry_run": True}, status=200)
    assert clean["difference_count"] == 0 and clean["ledger_rows"] >= 2

    async def plant() -> None:
        async with gw.app.services.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "UPDATE usage_team_rollup SET cost_nanos = cost_nanos + 7 WHERE org_id = :o "
                    "AND bucket = :b"
                ),
                {"o": org["id"], "b": int(datetime(2026, 3, 11, 9, tzinfo=UTC).timestamp()) // 900},
            )

    gw.run(plant())
    assert gw.get("/admin/usage", org_id=org["id"])["total_cost_usd"] != before
    found = gw.post("/admin/usage/rebuild", {**window, "dry_run": True}, status=200)
    assert found["difference_count"] == 1 and not found["fixed"]
    diff = found["differences"][0]
    assert diff["table"] == "usage_team_rollup" and diff["bucket_start"].startswith(
        "2026-03-11T09:00"
    )
    assert diff["rollup"]["cost_nanos"] == diff["ledger"]["cost_nanos"] + 7
    fixed = gw.post("/admin/usage/rebuild", window, status=200)
    assert fixed["difference_count"] == 1 and fixed["fixed"]
    assert gw.get("/admin/usage", org_id=org["id"])["total_cost_usd"] == before
    gw.clock.set(datetime(2027, 4, 20, tzinfo=UTC))  # 13 months on: March 2026 is past
    too_new = gw.admin.post("/admin/ledger/purge", json={"before": "2027-04-01T00:00:00Z"})
    assert too_new.status_code == 422 and too_new.json()["error"]["param"] == "before"
    purged = gw.post("/admin/ledger/purge", {}, status=200)
    assert purged["purged"] >= 2
    assert not [r for r in gw.ledger() if r["org_id"] == org["id"]]
    assert gw.get("/admin/usage", org_id=org["id"])["total_cost_usd"] == before
    refused = gw.admin.post("/admin/usage/rebuild", json=window)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "start"
