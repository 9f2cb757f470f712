"""Routing one's notifications to a webhook endpoint (``channels.webhook_endpoint_ids``)
is for those who may manage that endpoint: a viewer cannot send their org's events to
an endpoint they may not see (another org's, or the operator's unscoped one)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import RunningGateway


def _prefs(endpoint_ids: list[str]) -> dict[str, Any]:
    return {"event_types": ["budget.*"], "channels": {"webhook_endpoint_ids": endpoint_ids}}


def test_routing_needs_an_endpoint_the_caller_may_manage(gateway: RunningGateway) -> None:
    """A viewer naming an endpoint (their org's, another org's, an unscoped one), an org
    admin naming another org's, and an org admin or the master key routing the viewer's
    notifications to an endpoint the viewer may not manage (such a route would deliver
    nothing): 422 naming the field, nothing saved; the org admin routes their own to
    their org's endpoint."""
    gw = gateway
    org_a = gw.post("/admin/orgs", {"name": "route-a"})["id"]
    org_b = gw.post("/admin/orgs", {"name": "route-b"})["id"]
    team = gw.post("/admin/teams", {"org_id": org_a, "name": "t"})["id"]
    url = "http://127.0.0.1:9/hook"
    own = gw.post("/admin/webhooks", {"url": url, "scope_type": "org", "scope_id": org_a})["id"]
    foreign = gw.post("/admin/webhooks", {"url": url, "scope_type": "org", "scope_id": org_b})["id"]
    unscoped = gw.post("/admin/webhooks", {"url": url})["id"]

    def caller(role: str, teams: list[str]) -> tuple[str, httpx.Client]:
        user = gw.post(
            "/admin/users",
            {"email": f"{role}@route.example", "role": role, "team_ids": teams, "org_id": org_a},
        )["id"]
        token = gw.post("/admin/tokens", {"user_id": user, "name": role})["token"]
        return user, httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"})

    member, as_member = caller("viewer", [team])
    admin, as_admin = caller("org_admin", [])
    path = "/admin/users/{}/notification-preferences"
    refused = [
        (as_member, member, own),
        (as_member, member, foreign),
        (as_member, member, unscoped),
        (as_admin, admin, foreign),
        (as_admin, admin, unscoped),
        (as_admin, member, own),
        (gw.admin, member, own),
    ]
    for client, user, endpoint in refused:
        answer = client.put(path.format(user), json=_prefs([endpoint]))
        assert answer.status_code == 422, (user, endpoint, answer.text)
        assert answer.json()["error"]["param"] == "channels.webhook_endpoint_ids"
        saved = client.get(path.format(user)).json()
        assert saved["channels"]["webhook_endpoint_ids"] == []
    ok = as_admin.put(path.format(admin), json=_prefs([own]))
    assert ok.status_code == 200, ok.text
    assert ok.json()["channels"]["webhook_endpoint_ids"] == [own]
    # the viewer may still save preferences that route nowhere
    plain = as_member.put(path.format(member), json=_prefs([]))
    assert plain.status_code == 200, plain.text
