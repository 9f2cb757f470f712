"""Wallets through HTTP with the openai SDK: one open wallet per scope, what an empty one
does said plainly, changes and closing (history kept) — on SQLite+memory and
PostgreSQL+Redis."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "wallet call"}]


def call(gw: RunningGateway, key: str) -> Decimal:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="demo-small", messages=MSG, max_tokens=30
    )
    return Decimal(raw.headers["x-spendgate-cost-usd"])


def audit_actions(gw: RunningGateway, wallet_id: str) -> list[str]:
    entries = gw.get("/admin/audit", target=f"wallet:{wallet_id}", limit=100)["entries"]
    return [e["action"] for e in reversed(entries)]


def test_a_second_wallet_for_a_scope_is_a_conflict_naming_the_first(
    gateway: RunningGateway,
) -> None:
    """The issue's trap: a team with a funded wallet gets a second, empty one and all its
    calls 402. Now the second POST is 409 naming the existing wallet, and calls go on."""
    org = gateway.post("/admin/orgs", {"name": "wallet-org"})["id"]
    team = gateway.post("/admin/teams", {"name": "search", "org_id": org})["id"]
    key = gateway.create_key(org_id=org, team_id=team)
    first = gateway.post(
        "/admin/wallets",
        {"scope_type": "team", "scope_id": team, "initial_topup_usd": "10", "name": "search"},
    )
    assert first["status"] == "open" and first["notice"] is None
    second = gateway.admin.post("/admin/wallets", json={"scope_type": "team", "scope_id": team})
    assert second.status_code == 409, second.text
    message = second.json()["error"]["message"]
    assert first["id"] in message and "search" in message and "close" in message
    assert [w["id"] for w in gateway.get("/admin/wallets")] == [first["id"]]
    assert call(gateway, key["key"]) > 0  # still funded by the first wallet


def test_a_wallet_without_a_top_up_says_it_refuses_the_scopes_calls(
    gateway: RunningGateway,
) -> None:
    """No initial top-up: the answer's notice says the scope's calls get 402 until a top-up
    (naming the scope), and they do; after a top-up the notice is gone and calls flow."""
    org = gateway.post("/admin/orgs", {"name": "notice-org"})["id"]
    team = gateway.post("/admin/teams", {"name": "research", "org_id": org})["id"]
    key = gateway.create_key(org_id=org, team_id=team)
    made = gateway.post("/admin/wallets", {"scope_type": "team", "scope_id": team})
    assert made["balance_usd"] == "0.00"
    assert made["notice"] == (
        f'balance $0.00: calls from team "research" ({team}) get 402 insufficient_funds until '
        f"wallet {made['id']} is topped up (POST /admin/wallets/{made['id']}/topups)"
    )
    with pytest.raises(openai.APIStatusError) as info:
        call(gateway, key["key"])
    assert info.value.status_code == 402
    gateway.post(f"/admin/wallets/{made['id']}/topups", {"amount_usd": "5"})
    assert gateway.get(f"/admin/wallets/{made['id']}")["notice"] is None
    assert call(gateway, key["key"]) > 0


def test_a_wallet_with_money_left_says_a_smaller_call_may_fit(gateway: RunningGateway) -> None:
    """A call without max_tokens is held at the model's 4096 output tokens: against a
    wallet with money left its 402 said only "top it up". It says a call with a lower
    max_tokens may fit, and one does; an empty wallet still says to top it up."""
    key = gateway.create_key()
    made = gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "0.001"},
    )
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="demo-small", messages=MSG)
    said = info.value.body["message"]  # type: ignore[index]
    assert info.value.status_code == 402 and made["id"] in said
    assert said.endswith(
        "a call with a lower max_tokens may fit (the worst case counts the whole output cap: "
        "the model's default_max_tokens when the request sets none), or top it up"
    )
    assert call(gateway, key["key"]) > 0
    empty = gateway.create_key()
    gateway.post("/admin/wallets", {"scope_type": "key", "scope_id": empty["id"]})
    with pytest.raises(openai.APIStatusError) as refused:
        call(gateway, empty["key"])
    assert refused.value.body["message"].endswith("; top it up to continue")  # type: ignore[index]


def test_a_wallet_is_changed_and_closed_and_its_history_stays(gateway: RunningGateway) -> None:
    """PATCH renames and moves the low-balance level (audited with before and after). Close:
    the empty wallet stops refusing calls, takes no top-up and no change (409), stays
    readable with its top-ups and spend, and the scope may get a new wallet."""
    key = gateway.create_key()
    made = gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "0.000001"},
    )
    path = f"/admin/wallets/{made['id']}"
    changed = gateway.admin.patch(path, json={"name": "launch fund", "low_balance_usd": "2.5"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["low_balance_usd"]) == ("launch fund", "2.50")
    assert gateway.admin.patch(path, json={"name": None}).status_code == 422
    with pytest.raises(openai.APIStatusError) as info:
        call(gateway, key["key"])
    assert info.value.status_code == 402

    closed = gateway.post(f"{path}/close", {}, status=200)
    assert closed["status"] == "closed" and closed["closed_at"] is not None
    assert closed["notice"] is None  # a closed wallet refuses nothing
    cost = call(gateway, key["key"])
    assert cost > 0
    assert gateway.admin.post(f"{path}/topups", json={"amount_usd": "1"}).status_code == 409
    assert gateway.admin.patch(path, json={"name": "x"}).status_code == 409
    assert gateway.admin.post(f"{path}/close").status_code == 409
    history = gateway.get(path)
    assert (history["status"], history["topped_up_usd"]) == ("closed", "0.000001")
    assert [t["amount_usd"] for t in gateway.get(f"{path}/topups")] == ["0.000001"]
    gateway.run(gateway.app.services.drain())  # enforcement facts are written off the call
    actions = audit_actions(gateway, made["id"])
    assert "wallet.depleted" in actions  # the refused call, an enforcement fact
    assert [a for a in actions if a != "wallet.depleted"] == [
        "wallet.created",
        "wallet.updated",
        "wallet.closed",
    ]
    updated = gateway.get("/admin/audit", target=made["id"], action="wallet.updated")
    [entry] = updated["entries"]
    assert entry["before"]["name"] != "launch fund" and entry["after"]["name"] == "launch fund"

    again = gateway.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "3"}
    )
    assert again["id"] != made["id"] and again["status"] == "open"
    statuses: dict[str, Any] = {w["id"]: w["status"] for w in gateway.get("/admin/wallets")}
    assert statuses == {made["id"]: "closed", again["id"]: "open"}
    assert call(gateway, key["key"]) > 0


def test_a_closed_wallets_spend_stops_at_its_close(gateway: RunningGateway, tmp_path: Any) -> None:
    """A closed wallet keeps the spend it funded: calls its scope makes after the close are
    not its spend, also for a process that reads it afresh (a restart re-seeds wallets
    from the ledger) — its balance no longer drifts down after it was closed."""
    from tests.conftest import start_gateway

    key = gateway.create_key()
    made = gateway.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "1"}
    )
    path = f"/admin/wallets/{made['id']}"
    funded = call(gateway, key["key"])
    gateway.clock.advance(1)
    gateway.post(f"{path}/close", {}, status=200)
    gateway.clock.advance(1)
    assert call(gateway, key["key"]) > 0  # after the close: not the wallet's
    gateway.ledger()  # every row written
    second = start_gateway(gateway.settings.database_url, gateway.url, tmp_path, demo=True)
    try:
        for gw in (gateway, second):
            seen = gw.get(path)
            assert Decimal(seen["spent_usd"]) == funded, gw.url
            assert Decimal(seen["balance_usd"]) == 1 - funded
    finally:
        second.admin.close()
        second.handle.stop()


def test_default_names_use_the_scopes_names(gateway: RunningGateway) -> None:
    """A budget or wallet created without a name is named after its scope's name (the
    team's, the org's), not its id: `team search monthly`, `org <name>`."""
    org = gateway.post("/admin/orgs", {"name": f"named-{uuid.uuid4().hex[:8]}"})
    team = gateway.post("/admin/teams", {"name": "search", "org_id": org["id"]})
    budgets = [
        gateway.post(
            "/admin/budgets",
            {"scope_type": kind, "scope_id": made["id"], "amount_usd": "5", "period": period},
        )
        for kind, made, period in (("team", team, "monthly"), ("org", org, "daily"))
    ]
    assert [b["name"] for b in budgets] == ["team search monthly", f"org {org['name']} daily"]
    wallets = [
        gateway.post("/admin/wallets", {"scope_type": kind, "scope_id": made["id"]})
        for kind, made in (("team", team), ("org", org))
    ]
    assert [w["name"] for w in wallets] == ["team search", f"org {org['name']}"]
    named = gateway.post(
        "/admin/budgets",
        {"scope_type": "team", "scope_id": team["id"], "amount_usd": "5", "name": "mine"},
    )
    assert named["name"] == "mine"
