"""Team-scoped endpoints hear about what is in their team: budgets, wallets, rate limits,
keys and calls of the team's keys, and budgets of the team's members — and nothing of
another team's. End to end on every backend: proxied calls, the admin API, the delivery
worker and a receiver verifying each delivery's signature."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from spendgate.store.events import record_event
from spendgate.testing.fake_upstream import ServerHandle
from spendgate.testing.webhook_receiver import Receiver
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "same prompt every time"}]


def call(gateway: RunningGateway, key: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key['key']}"},
        json={"model": "demo-small", "messages": MSG, "max_tokens": 30},
        timeout=60,
    )


def emit(gateway: RunningGateway, type_: str, data: dict[str, Any], org_id: str) -> None:
    """Store an event as the gateway's emitters do (``record_event``, which fans out)."""

    async def store() -> None:
        async with gateway.app.services.engine.begin() as conn:
            await record_event(conn, type_, data, gateway.clock.now(), org_id=org_id)

    gateway.run(store())


def deliver(gateway: RunningGateway) -> None:
    gateway.run(gateway.app.services.drain())
    for _ in range(3):
        gateway.run(gateway.app.services.webhooks.worker.run_once())


def heard(app: Receiver, path: str) -> set[tuple[str, str]]:
    """(type, what it is about) of every verified delivery posted to ``path``."""
    out = set()
    for r in app.received:
        if r.path != path:
            continue
        assert r.verified, r.error
        body = r.json()
        data = body["data"]
        out.add((body["type"], str(data.get("scope_id") or data.get("key_id"))))
    return out


def test_team_endpoints_hear_about_their_keys_and_members_only(
    gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """Endpoints scoped to team A and team B. Events about a key of A (its budget, wallet,
    rate limit, creation, an unpriced call), a member of A (their budget, a forecast of
    it) reach A's endpoint; B's likewise; a member of both teams is heard by both; an
    org-wide key (no team) by neither. No event of one team reaches the other's."""
    gw, (app, handle) = gateway, receiver
    org = gw.post("/admin/orgs", {"name": "teams-match"})["id"]
    team_a = gw.post("/admin/teams", {"org_id": org, "name": "a"})["id"]
    team_b = gw.post("/admin/teams", {"org_id": org, "name": "b"})["id"]
    for team, path in ((team_a, "/a"), (team_b, "/b")):
        endpoint = gw.post(
            "/admin/webhooks",
            {"url": handle.url + path, "scope_type": "team", "scope_id": team},
        )
        app.secrets.append(endpoint["secret"])

    def user(name: str, teams: list[str]) -> str:
        body = {"email": f"{name}@teams.example", "team_ids": teams, "org_id": org}
        return str(gw.post("/admin/users", body)["id"])

    ua, ub, both = user("ua", [team_a]), user("ub", [team_b]), user("both", [team_a, team_b])
    ka = gw.create_key(org_id=org, team_id=team_a, user_id=ua)
    kb = gw.create_key(org_id=org, team_id=team_b, user_id=ub)
    k_org = gw.create_key(org_id=org, user_id=both)  # an org-wide key of a member of both
    k_limited = gw.create_key(org_id=org, team_id=team_a)

    measured = gw.create_key()  # another org: what one call costs
    cost = Decimal(call(gw, measured).headers["x-spendgate-cost-usd"])
    budget = {"amount_usd": str(cost * 3), "alert_percentages": [25], "soft_limit_percent": 100}
    for scope_type, scope_id in [
        ("key", ka["id"]),
        ("user", ua),
        ("key", kb["id"]),
        ("user", ub),
        ("key", k_org["id"]),
        ("user", both),
    ]:
        gw.create_budget(scope_type=scope_type, scope_id=scope_id, **budget)
    gw.post(
        "/admin/wallets",
        {
            "scope_type": "key",
            "scope_id": ka["id"],
            "initial_topup_usd": "1.00",
            "low_balance_usd": str(Decimal(1) - cost),
        },
    )
    gw.post("/admin/rate-limits", {"scope_type": "key", "scope_id": k_limited["id"], "rpm": 1})
    for key in (ka, kb, k_org):
        assert call(gw, key).status_code == 200
    assert [call(gw, k_limited).status_code for _ in range(2)] == [200, 429]
    emit(gw, "price.unknown", {"model": "m", "key_id": ka["id"], "refused": True}, org)
    emit(gw, "usage.implausible", {"model": "m", "key_id": kb["id"]}, org)
    emit(
        gw,
        "budget.forecast_overrun",
        {"budget_id": "bud_x", "scope_type": "user", "scope_id": ua, "period_key": "2026-03"},
        org,
    )
    gw.admin.post(f"/admin/keys/{kb['id']}/revoke").raise_for_status()
    deliver(gw)

    assert heard(app, "/a") == {
        ("key.created", ka["id"]),
        ("key.created", k_limited["id"]),
        ("budget.threshold_crossed", ka["id"]),
        ("budget.threshold_crossed", ua),
        ("budget.threshold_crossed", both),
        ("wallet.low_balance", ka["id"]),
        ("ratelimit.exceeded", k_limited["id"]),
        ("price.unknown", ka["id"]),
        ("budget.forecast_overrun", ua),
    }
    assert heard(app, "/b") == {
        ("key.created", kb["id"]),
        ("budget.threshold_crossed", kb["id"]),
        ("budget.threshold_crossed", ub),
        ("budget.threshold_crossed", both),
        ("usage.implausible", kb["id"]),
        ("key.revoked", kb["id"]),
    }
    # what a receiver is told: the team of a key, every team of a user
    bodies = [r.json() for r in app.received]
    [user_a] = [
        b["data"] for b in bodies if b["data"].get("scope_id") == ua and "period" in b["data"]
    ]
    assert user_a["team_ids"] == [team_a]
    [key_a] = [
        b["data"] for b in bodies if b["data"].get("scope_id") == ka["id"] and "period" in b["data"]
    ]
    assert key_a["team_id"] == team_a


def test_routes_are_checked_when_events_happen(gateway: RunningGateway) -> None:
    """An org admin routes their budget notifications to their org's endpoint (which
    itself subscribes to nothing of the kind). Demoted to a team viewer, they still get
    the in-app notification of their team's budget, but the endpoint no longer gets it;
    promoted again, it does."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "routes-recheck"})["id"]
    team = gw.post("/admin/teams", {"org_id": org, "name": "t"})["id"]
    endpoint = gw.post(
        "/admin/webhooks",
        {
            "url": "http://127.0.0.1:9/hook",
            "scope_type": "org",
            "scope_id": org,
            "event_types": ["key.revoked"],
        },
    )["id"]
    admin = gw.post(
        "/admin/users", {"email": "boss@routes.example", "role": "org_admin", "org_id": org}
    )["id"]
    token = gw.post("/admin/tokens", {"user_id": admin, "name": "t"})["token"]
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}) as mine:
        saved = mine.put(
            f"/admin/users/{admin}/notification-preferences",
            json={"event_types": ["budget.*"], "channels": {"webhook_endpoint_ids": [endpoint]}},
        )
        assert saved.status_code == 200, saved.text

    def threshold(n: int) -> None:
        data = {"budget_id": f"bud_{n}", "scope_type": "team", "scope_id": team}
        emit(gw, "budget.threshold_crossed", {**data, "period": "2026-03"}, org)

    def deliveries() -> int:
        return len(gw.get(f"/admin/webhooks/{endpoint}/deliveries"))

    def notified() -> list[str]:
        found = gw.get("/admin/notifications", user_id=admin)
        return sorted(n["data"]["budget_id"] for n in found)

    threshold(1)
    assert deliveries() == 1 and notified() == ["bud_1"]
    demoted = gw.admin.patch(f"/admin/users/{admin}", json={"role": "viewer", "team_ids": [team]})
    assert demoted.status_code == 200, demoted.text
    threshold(2)
    assert deliveries() == 1  # the route is no longer theirs to use
    assert notified() == ["bud_1", "bud_2"]  # in-app: still their team's budget
    promoted = gw.admin.patch(f"/admin/users/{admin}", json={"role": "org_admin"})
    assert promoted.status_code == 200, promoted.text
    threshold(3)
    assert deliveries() == 2 and notified() == ["bud_1", "bud_2", "bud_3"]
