"""An object of another org answers exactly as a missing one does — status *and* body —
so an admin of one org cannot learn from an error which ids exist in another (README,
Roles: "an object outside it answers exactly like a missing one")."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway


def _answer(client: httpx.Client, method: str, path: str, object_id: str) -> tuple[int, Any]:
    response = client.request(method, path.format(id=object_id))
    return response.status_code, response.text.replace(object_id, "<id>")


@pytest.fixture
def outsider(gateway: RunningGateway) -> httpx.Client:
    """An admin client of the org admin of an org of their own."""
    org = gateway.post("/admin/orgs", {"name": "outsiders"})["id"]
    user = gateway.post(
        "/admin/users", {"email": "admin@outsiders.test", "role": "org_admin", "org_id": org}
    )
    token = gateway.post("/admin/tokens", {"user_id": user["id"], "name": "t"})["token"]
    return httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {token}"})


def test_another_orgs_objects_answer_like_missing_ones(
    gateway: RunningGateway, outsider: httpx.Client
) -> None:
    key = gateway.create_key()
    org = key["org_id"]
    team = gateway.post("/admin/teams", {"name": "t", "org_id": org})["id"]
    theirs = {
        "key": key["id"],
        "team": team,
        "budget": gateway.create_budget(scope_type="org", scope_id=org, amount_usd="10")["id"],
        "wallet": gateway.post("/admin/wallets", {"scope_type": "org", "scope_id": org})["id"],
        "rate limit": gateway.post(
            "/admin/rate-limits", {"scope_type": "team", "scope_id": team, "rpm": 5}
        )["id"],
        "webhook": gateway.post(
            "/admin/webhooks",
            {"url": "http://127.0.0.1:9/hook", "scope_type": "org", "scope_id": org},
        )["id"],
    }
    routes = {
        "key": [("GET", "/admin/keys/{id}"), ("POST", "/admin/keys/{id}/rotate")],
        "team": [("GET", "/admin/teams/{id}")],
        "budget": [("GET", "/admin/budgets/{id}"), ("DELETE", "/admin/budgets/{id}")],
        "wallet": [("GET", "/admin/wallets/{id}"), ("GET", "/admin/wallets/{id}/topups")],
        "rate limit": [("GET", "/admin/rate-limits/{id}")],
        "webhook": [
            ("GET", "/admin/webhooks/{id}"),
            ("GET", "/admin/webhooks/{id}/deliveries"),
            ("POST", "/admin/webhooks/{id}/test"),
            ("DELETE", "/admin/webhooks/{id}"),
        ],
    }
    for kind, object_id in theirs.items():
        missing = object_id[:-6] + "000000"
        for method, path in routes[kind]:
            other_org = _answer(outsider, method, path, object_id)
            nothing = _answer(outsider, method, path, missing)
            assert other_org[0] == 404, (kind, method, path, other_org)
            assert other_org == nothing, (kind, method, path)
