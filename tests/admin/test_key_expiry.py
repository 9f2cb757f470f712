"""``PATCH /admin/keys/{id}``: set or clear a key's expiry, with the create's checks,
audited, enforced at the proxy at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from spendgate.services import EventSink
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "hi"}]


def _call(gw: RunningGateway, secret: str) -> int:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5},
    ).status_code


def test_set_and_clear_expiry_is_audited_and_enforced(gateway: RunningGateway) -> None:
    """An expiry an hour ahead is stored; once the clock passes it the key is refused;
    clearing it (``null``) makes the key work again. Each change is ``key.updated`` with
    before and after."""
    key = gateway.create_key()
    soon = (gateway.clock.now() + timedelta(hours=1)).isoformat()
    answer = gateway.admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": soon})
    assert answer.status_code == 200, answer.text
    assert answer.json()["expires_at"].startswith(soon[:16])
    assert "key" not in answer.json()
    assert _call(gateway, key["key"]) == 200
    gateway.clock.advance(3601)
    assert _call(gateway, key["key"]) == 401
    cleared = gateway.admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": None})
    assert cleared.status_code == 200 and cleared.json()["expires_at"] is None
    assert _call(gateway, key["key"]) == 200
    entries = gateway.get("/admin/audit", target=key["id"])["entries"]
    updates = [e for e in entries if e["action"] == "key.updated"]
    assert len(updates) == 2
    assert updates[0]["after"]["expires_at"] is None
    assert updates[0]["before"]["expires_at"] is not None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, "future"),
        ({"expires_at": "not a time"}, "expires_at"),
        ({"expires_at": 1_780_000_000}, "ISO 8601"),
        ({"expires_at": "9999-01-01T00:00:00Z"}, "9000"),
        ({"name": "renamed"}, "name"),
    ],
)
def test_bad_expiry_is_a_422_naming_the_field(
    gateway: RunningGateway, body: dict[str, object], needle: str
) -> None:
    """The past, text that is no time, a number, the far future and unknown fields are
    refused with the field named, and nothing is changed or audited."""
    key = gateway.create_key()
    before = len(gateway.get("/admin/audit", target=key["id"])["entries"])
    answer = gateway.admin.patch(f"/admin/keys/{key['id']}", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert needle in error["message"]
    assert error["param"] == next(iter(body))
    assert gateway.get(f"/admin/keys/{key['id']}")["expires_at"] is None
    assert len(gateway.get("/admin/audit", target=key["id"])["entries"]) == before


def test_a_revoked_key_keeps_its_expiry(gateway: RunningGateway) -> None:
    """409: a revoked key is done; its record is not rewritten."""
    key = gateway.create_key()
    gateway.post(f"/admin/keys/{key['id']}/revoke", {}, status=200)
    soon = (gateway.clock.now() + timedelta(hours=1)).isoformat()
    answer = gateway.admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": soon})
    assert answer.status_code == 409, answer.text


def _expiring(gw: RunningGateway, key_id: str) -> list[dict[str, Any]]:
    gw.run(gw.app.services.drain())
    events = gw.get("/admin/events", type="key.expiring", limit=1000)
    return [e for e in events if e["data"]["key_id"] == key_id]


def test_key_expiring_fires_within_the_lead_time_once_per_expiry(
    gateway: RunningGateway,
) -> None:
    """``key.expiring`` goes out when the expiry comes within ``key_expiring_days`` (7),
    not before; once, even after a restart (a fresh event sink: no in-process memory,
    as on another replica); a new expiry announces again. Its data names the key as a
    scope, like the other key events."""
    app, services = gateway.app, gateway.app.services
    assert gateway.settings.key_expiring_days == 7
    in_ten_days = gateway.clock.now() + timedelta(days=10)
    key = gateway.create_key(expires_at=in_ten_days.isoformat())
    gateway.run(app.announce_expiring_keys())
    assert _expiring(gateway, key["id"]) == []
    gateway.clock.advance(4 * 86400)  # six days left
    for _ in range(2):
        gateway.run(app.announce_expiring_keys())
        gateway.run(services.drain())
        services.events = EventSink(services.engine)  # "restarted": remembers nothing
    [event] = _expiring(gateway, key["id"])
    data = event["data"]
    assert data["scope_type"] == "key" and data["scope_id"] == key["id"]
    assert data["name"] == "test-key" and data["key_prefix"] == key["key_prefix"]
    assert datetime.fromisoformat(data["expires_at"]) == in_ten_days
    assert data["expires_in_seconds"] == 6 * 86400
    later = (in_ten_days + timedelta(days=1)).isoformat()
    assert gateway.admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": later}).is_success
    gateway.run(app.announce_expiring_keys())
    assert len(_expiring(gateway, key["id"])) == 2


def test_key_expiring_skips_revoked_and_expired_keys(gateway: RunningGateway) -> None:
    """A revoked key, or one already past its expiry, is not announced as expiring.
    (Both expire beyond the lead time when made, so the gateway's own sweep, which may
    run at any moment, cannot announce them before the revoke; then the clock moves to
    where one is within it and the other past its expiry.)"""
    now = gateway.clock.now()
    revoked = gateway.create_key(expires_at=(now + timedelta(days=9)).isoformat())
    gateway.post(f"/admin/keys/{revoked['id']}/revoke", {}, status=200)
    gone = gateway.create_key(expires_at=(now + timedelta(days=8)).isoformat())
    gateway.clock.advance(8 * 86400 + 3600)
    assert gateway.run(gateway.app.announce_expiring_keys()) == 0
    assert _expiring(gateway, revoked["id"]) == _expiring(gateway, gone["id"]) == []
