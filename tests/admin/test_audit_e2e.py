"""The audit trail of a real session through the admin API and the proxy: every change
and enforcement fact recorded once, with before/after, in a chain that verifies."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import RunningGateway


def test_admin_changes_and_enforcement_facts_are_audited(gateway: RunningGateway) -> None:
    """Keys, budgets, webhooks, wallets, a refusal and an export each leave one entry."""
    key = gateway.create_key()
    budget = gateway.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "amount_usd": "0.00005", "hard_limit": True},
    )
    gateway.admin.patch(f"/admin/budgets/{budget['id']}", json={"amount_usd": "0.0001"})
    hook = gateway.post("/admin/webhooks", {"url": "http://127.0.0.1:9/hook"})
    gateway.post(f"/admin/webhooks/{hook['id']}/rotate-secret", {}, status=200)
    wallet = gateway.post("/admin/wallets", {"scope_type": "org", "scope_id": key["org_id"]})
    gateway.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": "10"})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.RateLimitError):  # a few calls fit, then the cap refuses
        for _ in range(20):
            client.chat.completions.create(
                model="demo-small", max_tokens=50, messages=[{"role": "user", "content": "x"}]
            )
    gateway.post(f"/admin/keys/{key['id']}/revoke", {}, status=200)
    assert gateway.admin.get("/admin/usage", params={"format": "csv"}).status_code == 200
    gateway.run(gateway.app.services.drain())
    entries = gateway.get("/admin/audit", limit=100)
    rows = entries["entries"] if isinstance(entries, dict) else entries
    actions = [e["action"] for e in rows]
    for action in (
        "org.created",
        "key.created",
        "budget.created",
        "budget.updated",
        "webhook.created",
        "webhook.secret_rotated",
        "wallet.created",
        "wallet.topped_up",
        "budget.hard_limit_reached",
        "key.revoked",
        "usage.exported",
    ):
        assert actions.count(action) == 1, (action, actions)
    updated = next(e for e in rows if e["action"] == "budget.updated")
    assert updated["before"]["amount_usd"] == "0.00005"
    assert updated["after"]["amount_usd"] == "0.0001"
    assert updated["actor_id"] == "master" and updated["target_id"] == budget["id"]
    created = next(e for e in rows if e["action"] == "key.created")
    assert key["key"] not in str(created) and hook["secret"] not in str(rows)
    verdict = gateway.get("/admin/audit/verify")
    assert verdict["ok"] is True and verdict["checked"] == len(rows)
    response = httpx.get(gateway.url + "/admin/audit/verify")
    assert response.status_code == 401


def test_a_rotation_and_a_preference_change_say_what_was_before(gateway: RunningGateway) -> None:
    """Changes audited with their before as well as their after: the key prefix a rotation
    replaced, and the notification preferences (where a user's alerts go) a change
    replaced — an org admin may set another user's."""
    key = gateway.create_key()
    rotated = gateway.post(f"/admin/keys/{key['id']}/rotate", {}, status=200)
    [entry] = gateway.get("/admin/audit", action="key.rotated")["entries"]
    assert entry["before"]["key_prefix"] == key["key_prefix"] != rotated["key_prefix"]
    assert entry["after"]["key_prefix"] == rotated["key_prefix"]
    assert key["key"] not in str(entry) and rotated["key"] not in str(entry)

    user = gateway.post(
        "/admin/users", {"email": "ops@example.com", "role": "org_admin", "org_id": key["org_id"]}
    )
    path = f"/admin/users/{user['id']}/notification-preferences"
    for types in (["budget.*"], ["wallet.*"]):
        response = gateway.admin.put(path, json={"event_types": types})
        assert response.status_code == 200, response.text
    newest, first = gateway.get("/admin/audit", action="notification_preferences.updated")[
        "entries"
    ]
    assert first["before"]["event_types"] == ["*"] and first["after"]["event_types"] == ["budget.*"]
    assert newest["before"]["event_types"] == ["budget.*"]
    assert newest["after"]["event_types"] == ["wallet.*"]
