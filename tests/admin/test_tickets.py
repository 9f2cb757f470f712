"""Cost tickets through the real HTTP stack (the ``openai`` SDK, the fake upstream), on
SQLite+memory and PostgreSQL+Redis: a wallet that cannot fund a call asks an approver;
approve funds the requester once (also under 100 concurrent calls, across two replicas
on Redis), deny says why, expiry returns what was not used, and only the approvers of
the wallet's scope see the ticket."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import MASTER_KEY, RunningGateway, start_gateway

MODEL = "gpt-4o-mini"
MSG = [{"role": "user", "content": "please fund me"}]


def client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def call(gw: RunningGateway, key: str, ticket: str | None = None) -> httpx.Response:
    """One chat call; the raw HTTP answer, whatever its status."""
    headers = {"x-spendgate-ticket": ticket} if ticket else None
    try:
        raw = client(gw, key).chat.completions.with_raw_response.create(
            model=MODEL, messages=MSG, max_tokens=50, extra_headers=headers
        )
    except openai.APIStatusError as err:
        return err.response
    return raw.http_response


def refused(gw: RunningGateway, key: str, ticket: str | None = None) -> dict[str, Any]:
    """A call that must be refused with 402: its error object (headers checked too)."""
    answer = call(gw, key, ticket)
    assert answer.status_code == 402, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == "insufficient_funds"
    if "ticket" in error:
        assert answer.headers["x-spendgate-ticket-id"] == error["ticket"]["id"]
        assert answer.headers["x-spendgate-ticket-status"] == error["ticket"]["status"]
        assert answer.headers["x-spendgate-missing-usd"] == error["ticket"]["missing_usd"]
    return error


def world(gw: RunningGateway, mode: str = "on", **wallet: Any) -> tuple[str, str, dict[str, Any]]:
    """An org, a team, a key of the team and an empty team wallet with tickets ``mode``."""
    org = gw.post("/admin/orgs", {"name": f"tickets-{id(wallet)}-{mode}"})["id"]
    team = gw.post("/admin/teams", {"name": "research", "org_id": org})["id"]
    key = gw.create_key(org_id=org, team_id=team)
    made = gw.post(
        "/admin/wallets",
        {"scope_type": "team", "scope_id": team, "tickets": mode, **wallet},
    )
    assert made["tickets"] == mode and made["balance_usd"] == "0.00"
    return org, team, {"key": key, "wallet": made}


def events(gw: RunningGateway, type_: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = gw.get("/admin/events", type=type_)
    return rows


def test_life_cycle_ask_approve_use_expire(gateway: RunningGateway) -> None:
    """Refused calls open one ticket (the second attaches to it); it is approved for more
    than asked (explicitly), the key's next calls — and one naming the ticket — are
    funded by it without charging the wallet; at expiry the rest returns and the next
    refusal opens a new ticket. Every step is an event and an audit entry."""
    gw = gateway
    _, team, made = world(gw)
    key, wallet = made["key"], made["wallet"]
    first = refused(gw, key["key"])
    ticket = first["ticket"]
    # the link is for a person: the console's ticket page (the JSON route answers a
    # browser 401), under the public URL
    assert ticket["status"] == "open"
    assert ticket["url"] == f"{gw.settings.public_url}/tickets/{ticket['id']}"
    assert Decimal(ticket["missing_usd"]) > 0 and ticket["id"] in first["message"]
    second = refused(gw, key["key"])
    assert second["ticket"]["id"] == ticket["id"]
    queue = gw.get("/admin/tickets")
    assert [t["id"] for t in queue] == [ticket["id"]]
    row = queue[0]
    assert row["refusals"] == 2 and row["key_id"] == key["id"] and row["team_id"] == team
    assert row["wallet"]["id"] == wallet["id"] and row["wallet"]["balance_usd"] == "0.00"
    assert row["asked_usd"] == ticket["missing_usd"] and row["recent_spend_usd"] == "0.00"
    asked = Decimal(row["asked_usd"])

    too_much = gw.admin.post(
        f"/admin/tickets/{ticket['id']}/approve", json={"reason": "demo", "amount_usd": "5"}
    )
    assert too_much.status_code == 422 and too_much.json()["error"]["param"] == "amount_usd"
    gw.clock.advance(5)
    grant = asked * 4
    approved = gw.post(
        f"/admin/tickets/{ticket['id']}/approve",
        {
            "reason": "quarter-end demo",
            "amount_usd": str(grant),
            "more_than_asked": True,
            "expires_in_hours": 2,
        },
        status=200,
    )
    assert approved["status"] == "approved" and Decimal(approved["granted_usd"]) == grant
    again = gw.admin.post(f"/admin/tickets/{ticket['id']}/deny", json={"reason": "late"})
    assert again.status_code == 409

    ok = call(gw, key["key"])
    assert ok.status_code == 200, ok.text
    named = call(gw, key["key"], ticket=ticket["id"])
    assert named.status_code == 200, named.text
    spent = Decimal(ok.headers["x-spendgate-cost-usd"]) + Decimal(
        named.headers["x-spendgate-cost-usd"]
    )
    assert spent > 0
    seen = gw.get(f"/admin/tickets/{ticket['id']}")
    assert Decimal(seen["used_usd"]) == spent
    assert gw.get(f"/admin/wallets/{wallet['id']}")["balance_usd"] == "0.00"

    gw.clock.advance(3 * 3600)
    assert gw.run(gw.app.services.tickets.expire()) == 1
    assert gw.run(gw.app.services.tickets.expire()) == 0  # closed once
    ended = gw.get(f"/admin/tickets/{ticket['id']}")
    assert ended["status"] == "expired" and Decimal(ended["used_usd"]) == spent
    (expired,) = events(gw, "wallet.ticket_expired")
    assert Decimal(expired["data"]["returned_usd"]) == grant - spent
    # the wallet was not charged for what the grant paid, also after reconciling
    gw.run(gw.app.services.reconciler.reconcile(__import__("datetime").timedelta(0)))
    assert gw.get(f"/admin/wallets/{wallet['id']}")["balance_usd"] == "0.00"
    after = refused(gw, key["key"])
    assert after["ticket"]["status"] == "open" and after["ticket"]["id"] != ticket["id"]
    ended_named = refused(gw, key["key"], ticket=ticket["id"])
    assert "expired" in ended_named["message"]

    for step in ("opened", "approved", "expired"):
        assert events(gw, f"wallet.ticket_{step}"), step
    audit = gw.get("/admin/audit", target=f"ticket:{ticket['id']}", limit=100)["entries"]
    actions = sorted(e["action"] for e in audit)
    assert actions == ["wallet.ticket_approved", "wallet.ticket_expired", "wallet.ticket_opened"]


def test_deny_says_why_then_a_new_ticket_may_be_asked(gateway: RunningGateway) -> None:
    gw = gateway
    _, _, made = world(gw)
    key = made["key"]["key"]
    ticket = refused(gw, key)["ticket"]
    waiting = refused(gw, key, ticket=ticket["id"])
    assert "waiting for an approver" in waiting["message"]
    denied = gw.post(
        f"/admin/tickets/{ticket['id']}/deny", {"reason": "use the batch API"}, status=200
    )
    assert denied["status"] == "denied" and denied["reason"] == "use the batch API"
    told = refused(gw, key)
    assert told["ticket"]["id"] == ticket["id"] and told["ticket"]["status"] == "denied"
    assert "denied" in told["message"] and "use the batch API" in told["message"]
    fresh = refused(gw, key)
    assert fresh["ticket"]["status"] == "open" and fresh["ticket"]["id"] != ticket["id"]
    (event,) = events(gw, "wallet.ticket_denied")
    assert event["data"]["reason"] == "use the batch API"
    assert event["data"]["ticket_id"] == ticket["id"]


def test_auto_approve_below_an_amount_funds_the_call_at_once(gateway: RunningGateway) -> None:
    gw = gateway
    _, _, made = world(gw, "auto", tickets_auto_approve_below_usd="1")
    answer = call(gw, made["key"]["key"])
    assert answer.status_code == 200, answer.text
    (ticket,) = gw.get("/admin/tickets", status="approved")
    assert ticket["decided_by"] == "cost-tickets" and ticket["reason"].startswith("auto")
    assert ticket["granted_usd"] == ticket["asked_usd"]
    missing = gw.admin.post(
        "/admin/wallets",
        json={"scope_type": "key", "scope_id": made["key"]["id"], "tickets": "auto"},
    )
    assert missing.status_code == 422
    assert missing.json()["error"]["param"] == "tickets_auto_approve_below_usd"


def test_off_refuses_as_before_and_a_foreign_ticket_is_404(gateway: RunningGateway) -> None:
    gw = gateway
    _, _, off = world(gw, "off")
    error = refused(gw, off["key"]["key"])
    assert "ticket" not in error
    _, _, on = world(gw, "on")
    ticket = refused(gw, on["key"]["key"])["ticket"]
    foreign = call(gw, off["key"]["key"], ticket=ticket["id"])
    assert foreign.status_code == 404


def _token(gw: RunningGateway, org: str, role: str, team: str | None) -> httpx.Client:
    user = gw.post(
        "/admin/users",
        {
            "email": f"{role}-{team}@t.example",
            "role": role,
            "org_id": org,
            "team_ids": [team] if team else [],
        },
    )["id"]
    token = gw.post("/admin/tokens", {"user_id": user, "name": role})["token"]
    return httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"})


def test_only_the_wallets_approvers_see_and_decide(gateway: RunningGateway) -> None:
    """A team admin of another team gets the 404 a missing ticket gives (and does not
    see it in the queue); a viewer gets 403; the team's own admin approves it."""
    gw = gateway
    org, team, made = world(gw)
    other_team = gw.post("/admin/teams", {"name": "other", "org_id": org})["id"]
    ticket = refused(gw, made["key"]["key"])["ticket"]["id"]
    stranger = _token(gw, org, "team_admin", other_team)
    assert stranger.get(f"/admin/tickets/{ticket}").status_code == 404
    body = {"reason": "mine now"}
    assert stranger.post(f"/admin/tickets/{ticket}/approve", json=body).status_code == 404
    assert stranger.get("/admin/tickets").json() == []
    viewer = _token(gw, org, "viewer", team)
    assert viewer.get("/admin/tickets").status_code == 403
    finance = _token(gw, org, "finance", None)
    assert [t["id"] for t in finance.get("/admin/tickets").json()] == [ticket]
    own = _token(gw, org, "team_admin", team)
    decided = own.post(f"/admin/tickets/{ticket}/approve", json=body)
    assert decided.status_code == 200 and decided.json()["decided_by"].startswith("token:")
    for c in (stranger, viewer, finance, own):
        c.close()


async def _burst(urls: list[str], key: str, calls: int) -> list[int]:
    """``calls`` concurrent chat calls spread over the replicas; their statuses."""

    async def one(n: int) -> int:
        sdk = openai.AsyncOpenAI(base_url=urls[n % len(urls)] + "/v1", api_key=key, max_retries=0)
        try:
            await sdk.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50)
            return 200
        except openai.APIStatusError as err:
            return err.status_code
        finally:
            await sdk.close()

    return list(await asyncio.gather(*(one(n) for n in range(calls))))


def test_100_concurrent_calls_spend_at_most_the_grant(
    gateway: RunningGateway,
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> None:
    """A grant of 3.5 worst cases; 100 concurrent calls (on PostgreSQL+Redis spread over
    two replicas sharing the counters): what they spend stays within the grant, and every
    refused one is a 402 (the grant ran short), never an overdraft."""
    gw = gateway
    _, _, made = world(gw)
    key = made["key"]
    ticket = refused(gw, key["key"])["ticket"]
    grant = Decimal(ticket["missing_usd"]) * Decimal("3.5")
    gw.clock.advance(5)
    gw.post(
        f"/admin/tickets/{ticket['id']}/approve",
        {"reason": "load test", "amount_usd": str(grant), "more_than_asked": True},
        status=200,
    )
    replicas = [gw]
    if database_url.startswith("postgresql"):
        (tmp_path / "second").mkdir()
        second = start_gateway(
            database_url,
            upstream[1].url,
            tmp_path / "second",
            demo=True,
            env_extra={"SPENDGATE_REDIS_PREFIX": gw.settings.redis_prefix},
        )
        second.clock.set(gw.clock.now())
        replicas.append(second)
    fake.delay_seconds = 0.05
    try:
        statuses = asyncio.run(_burst([r.url for r in replicas], key["key"], 100))
    finally:
        fake.delay_seconds = 0.0
        for extra in replicas[1:]:
            extra.admin.close()
            extra.handle.stop()
    assert set(statuses) <= {200, 402}, statuses
    assert 1 <= statuses.count(200) < 100
    rows = [r for r in gw.ledger() if r["key_id"] == key["id"]]
    assert len(rows) == statuses.count(200)
    spent = Decimal(sum(int(r["cost_nanos"]) for r in rows)).scaleb(-9)
    assert 0 < spent <= grant
    seen = gw.get(f"/admin/tickets/{ticket['id']}")
    assert Decimal(seen["used_usd"]) == spent
    # the refused calls asked for more on one new ticket
    (asking,) = gw.get("/admin/tickets", status="open")
    assert asking["refusals"] == statuses.count(402)


@pytest.mark.parametrize("field", ["amount_usd", "expires_at"])
def test_bad_approvals_are_422(gateway: RunningGateway, field: str) -> None:
    gw = gateway
    _, _, made = world(gw)
    ticket = refused(gw, made["key"]["key"])["ticket"]["id"]
    body: dict[str, Any] = {"reason": "r"}
    body[field] = "-1" if field == "amount_usd" else "2020-01-01T00:00:00Z"
    answer = gw.admin.post(f"/admin/tickets/{ticket}/approve", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == field


def test_cli_sets_the_wallet_lists_approves_and_denies(gateway: RunningGateway) -> None:
    """``spendgate wallets update --tickets``, ``tickets list|get|approve|deny`` over the
    admin API, as tables and ``--json``."""
    gw = gateway
    env = {"SPENDGATE_MASTER_KEY": MASTER_KEY}

    def run(*args: str, as_json: bool = True) -> Any:
        extra = ["--json"] if as_json else []
        result = CliRunner().invoke(cli, [*args, "--url", gw.url, *extra], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output) if as_json else result.output

    _, _, made = world(gw, "off")
    wallet = made["wallet"]["id"]
    assert run("wallets", "update", wallet, "--tickets", "on")["tickets"] == "on"
    first = refused(gw, made["key"]["key"])["ticket"]["id"]
    table = run("tickets", "list", as_json=False)
    assert first[:12] in table and "open" in table
    assert [t["id"] for t in run("tickets", "list")] == [first]
    approved = run("tickets", "approve", first, "--reason", "eval run", "--hours", "1")
    assert approved["status"] == "approved" and approved["granted_usd"] == approved["asked_usd"]
    assert call(gw, made["key"]["key"]).status_code == 200  # the grant is the worst case
    gw.clock.advance(2 * 3600)
    gw.run(gw.app.services.tickets.expire())
    second = refused(gw, made["key"]["key"])["ticket"]["id"]
    denied = run("tickets", "deny", second, "--reason", "not this month")
    assert denied["status"] == "denied"
    assert run("tickets", "get", second)["reason"] == "not this month"
    assert {t["status"] for t in run("tickets", "list", "--status", "all")} == {
        "expired",
        "denied",
    }
    again = CliRunner().invoke(
        cli, ["tickets", "deny", second, "--reason", "x", "--url", gw.url], env=env
    )
    assert again.exit_code == 1 and "409" in again.output
