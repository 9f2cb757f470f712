"""Chargeback statements through the real HTTP stack: exact sums with allocation rules,
frozen once closed (the database refuses UPDATE and DELETE), reissued with a diff."""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from spendgate.core.money import usd_to_nanos
from spendgate.core.showback import split_exact
from tests.conftest import MASTER_KEY, RunningGateway


def _call(gw: RunningGateway, key: str, at: datetime, words: int = 3) -> None:
    gw.clock.set(at)
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
        model="demo-large", messages=[{"role": "user", "content": "spend " * words}]
    )


def _sum(lines: list[dict[str, Any]]) -> int:
    return sum(int(line["cost_nanos"]) for line in lines)


def _world(gw: RunningGateway) -> dict[str, Any]:
    org = gw.post("/admin/orgs", {"name": "chargeback"})
    gw.admin.patch(f"/admin/orgs/{org['id']}", json={"reporting_timezone": "Asia/Kolkata"})
    a = gw.post("/admin/teams", {"org_id": org["id"], "name": "alpha"})
    b = gw.post("/admin/teams", {"org_id": org["id"], "name": "beta"})
    keys = {
        "a": gw.create_key(org_id=org["id"], team_id=a["id"])["key"],
        "b": gw.create_key(org_id=org["id"], team_id=b["id"])["key"],
        "shared": gw.create_key(org_id=org["id"], tags=["shared"])["key"],
        "loose": gw.create_key(org_id=org["id"], tags=["misc"])["key"],
    }
    gw.post("/admin/allocation-rules", {"org_id": org["id"], "tag": "shared", "method": "even"})
    gw.post(
        "/admin/allocation-rules",
        {"org_id": org["id"], "method": "fixed", "shares": {a["id"]: "30"}, "position": 1},
    )
    # Feb 2026 in Kolkata: Jan 31 18:30 UTC .. Feb 28 18:30 UTC
    _call(gw, keys["a"], datetime(2026, 1, 31, 18, 45, tzinfo=UTC), 5)  # Feb 1 local
    _call(gw, keys["a"], datetime(2026, 1, 31, 18, 0, tzinfo=UTC), 50)  # Jan 31 local
    _call(gw, keys["b"], datetime(2026, 2, 14, 9, 0, tzinfo=UTC), 7)
    _call(gw, keys["shared"], datetime(2026, 2, 20, 9, 0, tzinfo=UTC), 11)
    _call(gw, keys["loose"], datetime(2026, 2, 28, 18, 29, tzinfo=UTC), 13)  # Feb 28 local
    _call(gw, keys["loose"], datetime(2026, 2, 28, 18, 30, tzinfo=UTC), 17)  # Mar 1 local
    return {"org": org, "a": a, "b": b, "keys": keys}


def test_statements_sum_exactly_freeze_and_reissue_with_a_diff(gateway: RunningGateway) -> None:
    """Lines sum to each statement's total; teams plus Unallocated equal the org's month
    in its zone, which equals the ledger; closing freezes and audits the hashes; a late
    call for the closed month goes into version 2 with a diff."""
    gw = gateway
    w = _world(gw)
    org_id, a, b = w["org"]["id"], w["a"]["id"], w["b"]["id"]
    gw.clock.set(datetime(2026, 2, 27, tzinfo=UTC))
    early = gw.admin.post("/admin/statements/2026-02/close", json={"org_id": org_id})
    assert early.status_code == 422 and early.json()["error"]["param"] == "month"
    live = gw.get("/admin/statements/2026-02", org_id=org_id)
    assert live["provisional"] is True
    gw.clock.set(datetime(2026, 3, 5, tzinfo=UTC))
    feb = [
        r for r in gw.ledger()
        if r["org_id"] == org_id
        and datetime(2026, 1, 31, 18, 30, tzinfo=UTC) <= r["started_at"]
        < datetime(2026, 2, 28, 18, 30, tzinfo=UTC)
    ]  # fmt: skip
    assert len(feb) == 4
    closed = gw.post("/admin/statements/2026-02/close", {"org_id": org_id}, status=200)
    assert {s["team_id"] for s in closed["statements"]} == {None, a, b}
    org_st = gw.get("/admin/statements/2026-02", org_id=org_id)
    assert org_st["provisional"] is False and org_st["version"] == 1
    content = org_st["statement"]
    assert content["total_nanos"] == _sum(content["lines"]) == sum(r["cost_nanos"] for r in feb)
    # each team line says what its own spend was made of (Feb: one call each)
    for line in content["lines"][:2]:
        mine = [r for r in feb if r["team_id"] == line["id"]]
        assert (line["requests"], line["input_tokens"], line["estimated_calls"]) == (
            len(mine),
            sum(r["input_tokens"] for r in mine),
            0,
        )
    team = {t: gw.get("/admin/statements/2026-02", org_id=org_id, team_id=t) for t in (a, b)}
    for st in team.values():
        assert _sum(st["statement"]["lines"]) == st["statement"]["total_nanos"]
    unallocated = next(x for x in content["lines"] if x["id"] == "unallocated")["cost_nanos"]
    assert (
        sum(st["statement"]["total_nanos"] for st in team.values()) + unallocated
        == (content["total_nanos"])
    )
    shared = next(r["cost_nanos"] for r in feb if r["tags"] == ["shared"])
    loose = next(r["cost_nanos"] for r in feb if r["tags"] == ["misc"])
    to_a, left = split_exact(loose, [30, 70])
    assert unallocated == left
    halves = dict(zip(sorted((a, b)), split_exact(shared, [1, 1]), strict=True))
    allocated = {
        t: sum(x["cost_nanos"] for x in st["statement"]["lines"] if x["id"] != "own")
        for t, st in team.items()
    }
    assert allocated == {a: halves[a] + to_a, b: halves[b]}
    audit = gw.get("/admin/audit", limit=1000)
    entries = audit["entries"] if isinstance(audit, dict) else audit
    sealed = [e for e in entries if e["action"] == "statement.closed"]
    assert len(sealed) == 1
    hashes = {s["team_id"]: s["content_hash"] for s in sealed[0]["after"]["statements"]}
    assert hashes[None] == org_st["content_hash"]
    again = gw.admin.post("/admin/statements/2026-02/close", json={"org_id": org_id})
    assert again.status_code == 409
    # a late call for February (a replica's spool replayed days later)
    _call(gw, w["keys"]["a"], datetime(2026, 2, 10, tzinfo=UTC), 3)
    gw.clock.set(datetime(2026, 3, 6, tzinfo=UTC))
    late = [r for r in gw.ledger() if r["started_at"] == datetime(2026, 2, 10, tzinfo=UTC)]
    reissued = gw.post("/admin/statements/2026-02/reissue", {"org_id": org_id}, status=200)
    changed = {s["team_id"]: s for s in reissued["statements"]}
    assert set(changed) == {None, a}  # beta's own spend is unchanged (30% fixed goes to a)
    diff = {d["item"]: d.get("delta_nanos", d.get("delta")) for d in changed[a]["diff"]}
    assert diff["total"] == diff["lines/own"] == late[0]["cost_nanos"]
    # the late call's figures on the line, not only its money
    assert diff["lines/own/requests"] == 1
    assert diff["lines/own/input_tokens"] == late[0]["input_tokens"]
    assert "lines/own/estimated_calls" not in diff  # billed on the provider's usage
    v2 = gw.get("/admin/statements/2026-02", org_id=org_id, team_id=a)
    assert v2["version"] == 2 and v2["diff"] == changed[a]["diff"]
    v1 = gw.get("/admin/statements/2026-02", org_id=org_id, team_id=a, version=1)
    assert v1["content_hash"] == team[a]["content_hash"]
    nothing = gw.post("/admin/statements/2026-02/reissue", {"org_id": org_id}, status=200)
    assert nothing["statements"] == []
    listed = gw.get("/admin/statements", org_id=org_id, month="2026-02")
    assert sorted((s["team_id"] or "", s["version"]) for s in listed) == sorted(
        [("", 1), ("", 2), (a, 1), (a, 2), (b, 1)]
    )


def _at_once(gw: RunningGateway, path: str, body: dict[str, Any], times: int = 8) -> list[int]:
    """``times`` POSTs of ``path`` sent together (each on a connection of its own)."""

    def post(_: int) -> int:
        with httpx.Client(
            base_url=gw.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=60
        ) as http:
            return http.post(path, json=body).status_code

    with ThreadPoolExecutor(times) as pool:
        return sorted(pool.map(post, range(times)))


def test_closing_or_reissuing_a_month_twice_at_once(gateway: RunningGateway) -> None:
    """Two closes of one month at the same moment: the loser's insert hit the unique
    version and was answered 503 database_unavailable. It is the 409 a second close
    gets; one close is stored and audited. Reissues at once: one takes the late spend,
    the others find nothing left or a 409, never a 5xx."""
    gw = gateway
    w = _world(gw)
    org_id = w["org"]["id"]
    gw.clock.set(datetime(2026, 3, 5, tzinfo=UTC))
    assert _at_once(gw, "/admin/statements/2026-02/close", {"org_id": org_id}) == [200] + [409] * 7
    sealed = [e for e in gw.get("/admin/audit", limit=1000)["entries"]
              if e["action"] == "statement.closed"]  # fmt: skip
    assert len(sealed) == 1
    _call(gw, w["keys"]["a"], datetime(2026, 2, 10, tzinfo=UTC), 3)
    gw.ledger()  # flushed
    reissues = _at_once(gw, "/admin/statements/2026-02/reissue", {"org_id": org_id})
    assert set(reissues) <= {200, 409} and 200 in reissues, reissues
    listed = gw.get("/admin/statements", org_id=org_id, month="2026-02")
    assert sorted((s["team_id"] or "", s["version"]) for s in listed) == sorted(
        [("", 1), ("", 2), (w["a"]["id"], 1), (w["a"]["id"], 2), (w["b"]["id"], 1)]
    )


def test_statement_downloads_and_the_frozen_rows(gateway: RunningGateway) -> None:
    """CSV, JSONL and the printable HTML carry the lines; UPDATE and DELETE of a stored
    statement or a closed month are refused by the database itself."""
    gw = gateway
    w = _world(gw)
    org_id = w["org"]["id"]
    gw.clock.set(datetime(2026, 3, 5, tzinfo=UTC))
    gw.post("/admin/statements/2026-02/close", {"org_id": org_id}, status=200)
    base = "/admin/statements/2026-02"
    csv_text = gw.admin.get(base, params={"org_id": org_id, "format": "csv"}).text
    assert csv_text.splitlines()[0] == (
        "section,id,label,requests,cost_usd,input_tokens,output_tokens,cache_read_tokens,"
        "cache_write_tokens,estimated_calls,estimated_usd,unpriced_requests,web_searches"
    )
    assert "Unallocated" in csv_text
    jsonl = gw.admin.get(base, params={"org_id": org_id, "format": "jsonl"}).text.splitlines()
    head = json.loads(jsonl[0])
    assert head["section"] == "statement" and head["version"] == 1
    html = gw.admin.get(base, params={"org_id": org_id, "team_id": w["a"]["id"], "format": "html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "Statement 2026-02: alpha" in html.text and "Provisional" not in html.text

    async def tamper(sql: str) -> None:
        async with gw.app.services.engine.begin() as conn:
            await conn.execute(sa.text(sql))

    for sql in (
        "UPDATE statements SET total_whole_usd = 0",
        "DELETE FROM statements",
        "UPDATE statement_months SET month = '2026-01'",
        "DELETE FROM statement_months",
    ):
        with pytest.raises(Exception, match="append-only"):
            gw.run(tamper(sql))
    assert gw.get(base, org_id=org_id)["version"] == 1


def test_bad_statement_input(gateway: RunningGateway) -> None:
    """A bad month, fixed shares over 100 % or not a number, a team of another org: 422
    naming the field."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "bad-statements"})
    other = gw.post("/admin/orgs", {"name": "elsewhere"})
    stray = gw.post("/admin/teams", {"org_id": other["id"], "name": "x"})
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "y"})
    bad = gw.admin.get("/admin/statements/2026-13", params={"org_id": org["id"]})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "month"
    for body in (
        {"method": "fixed", "shares": {team["id"]: "101"}},
        {"method": "fixed", "shares": {}},
        {"method": "even", "shares": {stray["id"]: ""}},
    ):
        response = gw.admin.post("/admin/allocation-rules", json={"org_id": org["id"], **body})
        assert response.status_code == 422 and response.json()["error"]["param"] == "shares"
    for raw in ("lots", "NaN", ""):  # not a number: named, never a 500
        response = gw.admin.post(
            "/admin/allocation-rules",
            json={"org_id": org["id"], "method": "fixed", "shares": {team["id"]: raw}},
        )
        assert response.status_code == 422, response.text
        assert "a percentage in (0, 100] is needed" in response.json()["error"]["message"]


def test_an_org_admin_naming_another_org_closes_nothing(gateway: RunningGateway) -> None:
    """An org admin's close, reissue or allocation rule naming another org (or one that
    does not exist) is 422 naming org_id, as in every other body; it used to be taken
    for the caller's own org, so a close meant for another org froze their own month."""
    gw = gateway
    own = gw.post("/admin/orgs", {"name": "own-statements"})
    other = gw.post("/admin/orgs", {"name": "other-statements"})
    admin = gw.post("/admin/users", {"email": "oa@own.example", "role": "org_admin",
                                     "org_id": own["id"]})  # fmt: skip
    token = gw.post("/admin/tokens", {"user_id": admin["id"], "name": "oa"})["token"]
    gw.clock.set(datetime(2026, 3, 5, tzinfo=UTC))
    as_admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"})
    for org_id in (other["id"], "org_missing"):
        for path, body in (
            ("/admin/statements/2026-02/close", {"org_id": org_id}),
            ("/admin/statements/2026-02/reissue", {"org_id": org_id}),
            ("/admin/allocation-rules", {"org_id": org_id, "method": "even"}),
        ):
            refused = as_admin.post(path, json=body)
            assert refused.status_code == 422, (path, refused.text)
            assert refused.json()["error"] == {
                "message": f"org_id: org {org_id} not found",
                "code": "validation_error",
                "param": "org_id",
            }
    for org in (own, other):
        assert gw.get("/admin/statements", org_id=org["id"]) == []
        assert gw.get("/admin/allocation-rules", org_id=org["id"]) == []
    closed = as_admin.post("/admin/statements/2026-02/close", json={"org_id": own["id"]})
    assert closed.status_code == 200 and closed.json()["org_id"] == own["id"]
    as_admin.close()


def test_a_team_budget_outcome_counts_what_the_budget_counts(gateway: RunningGateway) -> None:
    """A team's statement lists its team budgets with what they spent in the month: a
    budget with categories (one model) spent what its status says, not the team's whole
    spend (which made a budget at a few percent read as far over); a monthly budget in
    another zone than the org's gets no percentage (its month is not the statement's)."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "outcomes"})
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "alpha"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"])["key"]
    budget = gw.post(
        "/admin/budgets",
        {"name": "small only", "scope_type": "team", "scope_id": team["id"],
         "amount_usd": "1", "categories": {"models": ["demo-small"]}},
    )  # fmt: skip
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    for model in ("demo-small", "demo-large", "demo-large"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    elsewhere = gw.post(
        "/admin/budgets",
        {"name": "new york", "scope_type": "team", "scope_id": team["id"], "amount_usd": "1",
         "timezone": "America/New_York"},
    )  # fmt: skip
    status = gw.get(f"/admin/budgets/{budget['id']}/status")
    statement = gw.get("/admin/statements/2026-03", org_id=org["id"], team_id=team["id"])
    outcomes = {b["id"]: b for b in statement["statement"]["budgets"]}
    own = statement["statement"]["lines"][0]["cost_nanos"]
    assert 0 < usd_to_nanos(status["spent_usd"]) < own
    assert outcomes[budget["id"]]["spent_nanos"] == usd_to_nanos(status["spent_usd"])
    assert outcomes[budget["id"]]["percent_used"] == status["percent_used"]
    # a month of New York is not the statement's (UTC) month: spent in the statement's
    # month, and no percentage of a budget month it does not cover
    assert outcomes[elsewhere["id"]]["spent_nanos"] == own
    assert outcomes[elsewhere["id"]]["percent_used"] is None


def test_calls_of_unknown_price_are_shown_as_unknown_not_free(gateway: RunningGateway) -> None:
    """Calls on a model without a known price cost $0 in the ledger: the statement says
    how many there are (the statement's ``unpriced_requests``, each breakdown row's), and
    its CSV and printable page mark them unknown instead of showing $0 alone."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "unpriced"})
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "alpha"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"])["key"]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    for model in ("mystery-model", "mystery-model", "demo-small"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    for team_id in (team["id"], None):
        asked = {"org_id": org["id"], **({"team_id": team_id} if team_id else {})}
        content = gw.get("/admin/statements/2026-03", **asked)["statement"]
        assert content["unpriced_requests"] == 2
        models = {row["id"]: row for row in content["breakdown"]["model"]}
        assert models["mystery-model"]["cost_nanos"] == 0
        assert models["mystery-model"]["unpriced_requests"] == 2
        assert models["demo-small"]["unpriced_requests"] == 0
        exported = gw.admin.get("/admin/statements/2026-03", params={**asked, "format": "csv"})
        rows = {(r["section"], r["id"]): r for r in csv.DictReader(io.StringIO(exported.text))}
        assert rows["model", "mystery-model"]["unpriced_requests"] == "2"
        assert rows["total", "total"]["unpriced_requests"] == "2"
        page = gw.admin.get("/admin/statements/2026-03", params={**asked, "format": "html"})
        assert "2 calls of unknown price" in page.text
