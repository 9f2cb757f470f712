"""The webhook and notification admin API on the real gateway (as the lead wires it):
secrets shown once, delivery log, redelivery, rotation, notifications, preferences."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from spendgate.admin.webhooks import install
from spendgate.cli.webhooks import webhooks_app
from spendgate.testing.fake_upstream import serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks.outbox import emit_event
from spendgate.webhooks.runtime import WebhookRuntime, WebhookSettings
from spendgate.webhooks.secrets_box import SecretBox
from spendgate.webhooks.tables import webhook_endpoints
from tests.conftest import MASTER_KEY, RunningGateway

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def hooks(gateway: RunningGateway) -> Iterator[WebhookRuntime]:
    services = gateway.app.services
    runtime = WebhookRuntime(
        services.engine,
        gateway.clock,
        SecretBox("api-test-key"),
        WebhookSettings(allow_private=True),
        worker_id="api-test",
    )
    install(gateway.app.admin, runtime)
    yield runtime
    gateway.run(runtime.stop())


def request(gateway: RunningGateway, method: str, path: str, status: int, **kw: Any) -> Any:
    response = gateway.admin.request(method, path, **kw)
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def test_webhook_admin_api(gateway: RunningGateway, hooks: WebhookRuntime) -> None:
    """Create (secret once), deliver, read the log, redeliver, rotate, disable, delete."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    try:
        org = gateway.post("/admin/orgs", {"name": "acme"})["id"]
        created = request(
            gateway,
            "POST",
            "/admin/webhooks",
            201,
            json={
                "url": f"{handle.url}/hook",
                "event_types": ["budget.*"],
                "scope_type": "org",
                "scope_id": org,
                "description": "ops",
            },
        )
        assert created["secret"].startswith("whsec_")
        receiver.secrets = [created["secret"]]
        shown = gateway.get(f"/admin/webhooks/{created['id']}")
        assert "secret" not in shown and shown["enabled"] is True
        assert [w["id"] for w in gateway.get("/admin/webhooks")] == [created["id"]]

        async def stored() -> str:
            async with hooks.engine.connect() as conn:
                return str((await conn.execute(sa.select(webhook_endpoints))).all())

        assert created["secret"][6:] not in gateway.run(stored())

        for body, param in [
            ({"url": "ftp://x.example/"}, "url"),
            ({"url": handle.url, "event_types": ["budget.nope"]}, "event_types"),
            ({"url": handle.url, "kind": "pagerduty"}, "config.routing_key"),
        ]:
            error = request(gateway, "POST", "/admin/webhooks", 422, json=body)["error"]
            assert error["param"] == param

        async def fire() -> None:
            async with hooks.engine.begin() as conn:
                await emit_event(
                    conn,
                    "budget.threshold_crossed",
                    {"budget_id": "bud_1", "threshold": "alert", "percent": "50"},
                    gateway.clock.now(),
                    org_id=org,
                )

        gateway.run(fire())
        assert gateway.run(hooks.worker.run_once()) == 1
        [delivery] = gateway.get(f"/admin/webhooks/{created['id']}/deliveries")
        assert delivery["status"] == "succeeded"
        assert delivery["attempt_log"][0]["response_code"] == 200

        again = request(
            gateway,
            "POST",
            f"/admin/webhooks/{created['id']}/deliveries/{delivery['id']}/redeliver",
            202,
        )
        assert again["redelivery_of"] == delivery["id"]
        # sending an event again is an admin action like a test send: in the audit log,
        # readable by the endpoint's org
        [entry] = gateway.get("/admin/audit", action="webhook.redelivered")["entries"]
        assert (entry["target_type"], entry["target_id"]) == ("webhook", created["id"])
        assert entry["after"] == {"delivery_id": again["id"], "redelivery_of": delivery["id"]}
        assert entry["org_id"] == org and entry["actor_id"] == "master"
        gateway.run(hooks.worker.run_once())
        assert [r.verified for r in receiver.received] == [True, True]
        assert (
            len(gateway.get(f"/admin/webhooks/{created['id']}/deliveries", status="succeeded")) == 2
        )

        rotated = request(
            gateway,
            "POST",
            f"/admin/webhooks/{created['id']}/rotate-secret",
            200,
            json={"overlap_seconds": 600},
        )
        assert rotated["secret"] != created["secret"]
        assert rotated["previous_secret_valid_until"] is not None
        off = request(
            gateway, "PATCH", f"/admin/webhooks/{created['id']}", 200, json={"enabled": False}
        )
        assert off["enabled"] is False
        request(gateway, "DELETE", f"/admin/webhooks/{created['id']}", 204)
        request(gateway, "GET", f"/admin/webhooks/{created['id']}", 404)
    finally:
        handle.stop()


def test_notification_admin_api(gateway: RunningGateway, hooks: WebhookRuntime) -> None:
    """List (by user), read one, read all; preferences round trip and are validated."""
    org = gateway.post("/admin/orgs", {"name": "acme-notes"})["id"]
    user = gateway.post("/admin/users", {"email": "a@x.io", "role": "org_admin", "org_id": org})[
        "id"
    ]
    defaults = gateway.get(f"/admin/users/{user}/notification-preferences")
    assert defaults == {
        "event_types": ["*"],
        "scopes": [],
        "digest": False,
        "channels": {"in_app": True, "webhook_endpoint_ids": []},
    }

    async def fire(type_: str) -> None:
        async with hooks.engine.begin() as conn:
            await emit_event(
                conn,
                type_,
                {"wallet_id": "w_1", "balance_usd": "0.00"},
                gateway.clock.now(),
                org_id=org,
            )

    gateway.run(fire("wallet.depleted"))
    gateway.run(fire("wallet.low_balance"))
    listed = gateway.get("/admin/notifications", user_id=user)
    assert {n["type"] for n in listed} == {"wallet.depleted", "wallet.low_balance"}
    read = request(gateway, "POST", f"/admin/notifications/{listed[0]['id']}/read", 200)
    assert read["read"] is True
    assert len(gateway.get("/admin/notifications", user_id=user, unread="true")) == 1
    assert request(
        gateway, "POST", "/admin/notifications/read-all", 200, params={"user_id": user}
    ) == {"updated": 1}

    prefs = {
        "event_types": ["budget.*"],
        "scopes": [{"scope_type": "org", "scope_id": org}],
        "channels": {"in_app": True, "webhook_endpoint_ids": []},
        "digest": True,
    }
    assert (
        request(gateway, "PUT", f"/admin/users/{user}/notification-preferences", 200, json=prefs)
        == prefs
    )
    assert gateway.get(f"/admin/users/{user}/notification-preferences") == prefs
    bad = request(
        gateway,
        "PUT",
        f"/admin/users/{user}/notification-preferences",
        422,
        json={**prefs, "channels": {"webhook_endpoint_ids": ["whe_missing"]}},
    )
    assert bad["error"]["param"] == "channels.webhook_endpoint_ids"
    request(gateway, "GET", "/admin/users/user_missing/notification-preferences", 404)
    request(gateway, "POST", "/admin/notifications/ntf_missing/read", 404)


def test_notifications_default_to_the_callers_own(gateway: RunningGateway) -> None:
    """Without user_id: an admin token reads its own user's notifications; the master key,
    nobody's, gets 422 naming user_id (not a 404)."""
    org = gateway.post("/admin/orgs", {"name": "own-notes"})["id"]
    user = gateway.post("/admin/users", {"email": "o@x.io", "role": "org_admin", "org_id": org})
    token = gateway.post("/admin/tokens", {"user_id": user["id"], "name": "t"})["token"]
    mine = httpx.get(
        gateway.url + "/admin/notifications", headers={"authorization": f"Bearer {token}"}
    )
    assert mine.status_code == 200 and mine.json() == []
    master = request(gateway, "GET", "/admin/notifications", 422)
    assert master["error"]["param"] == "user_id" and "master key" in master["error"]["message"]


def test_webhooks_cli(
    gateway: RunningGateway, hooks: WebhookRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spendgate webhooks …`` drives the same API: create (secret once), list, log, rotate."""
    monkeypatch.setenv("SPENDGATE_MASTER_KEY", MASTER_KEY)
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(webhooks_app, [*args, "--url", gateway.url, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    created = run("create", "http://127.0.0.1:9/hook", "--events", "budget.*,wallet.depleted")
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["budget.*", "wallet.depleted"]
    assert [w["id"] for w in run("list")] == [created["id"]]
    assert run("deliveries", created["id"]) == []
    assert (
        run("rotate-secret", created["id"], "--overlap-seconds", "0")["secret"]
        != (created["secret"])
    )
    assert run("update", created["id"], "--disable")["enabled"] is False


def test_webhooks_cli_prints_a_secret_only_for_a_receiver_that_checks_it(
    gateway: RunningGateway, hooks: WebhookRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slack or PagerDuty endpoint's signing secret was printed with "store the secret
    now", though neither service checks a signature: the CLI leaves it out for them and
    says why; a ``webhook`` endpoint's is printed once, as before. The API (and ``--json``,
    its answer) still returns ``secret`` for every kind."""
    monkeypatch.setenv("SPENDGATE_MASTER_KEY", MASTER_KEY)

    def run(*args: str) -> tuple[str, str]:
        result = CliRunner().invoke(webhooks_app, [*args, "--url", gateway.url])
        assert result.exit_code == 0, result.output
        return result.stdout, result.stderr

    out, err = run("create", "http://127.0.0.1:9/hook")
    assert "secret: whsec_" in out and "store the secret now" in err
    for target, kind, extra in (
        ("https://hooks.slack.com/services/T0/B0/XXXXcli", "slack", ()),
        ("https://events.pagerduty.com/v2/enqueue", "pagerduty", ("--routing-key", "R0UT1NG")),
    ):
        out, err = run("create", target, "--kind", kind, *extra)
        assert "whsec_" not in out + err and "store the secret" not in err, out + err
        service = {"slack": "Slack", "pagerduty": "PagerDuty"}[kind]
        assert f"no secret to keep: {service} does not check" in " ".join(err.split())
        (made,) = [w for w in gateway.get("/admin/webhooks") if w["kind"] == kind]
        out, err = run("rotate-secret", made["id"])
        assert "whsec_" not in out + err and "no secret to keep" in err
        answer = CliRunner().invoke(webhooks_app, ["rotate-secret", made["id"], "--url",
                                                   gateway.url, "--json"])  # fmt: skip
        assert json.loads(answer.stdout)["secret"].startswith("whsec_")


def test_slack_url_never_returned(gateway: RunningGateway, hooks: WebhookRuntime) -> None:
    """A Slack endpoint's URL comes back masked from every route (create, get, list, patch,
    rotate, the audit log); a PATCH carrying the masked URL keeps the real one."""
    secret_part = "XXXXapiSLACKsecret"
    url = f"https://hooks.slack.com/services/T0API/B0API/{secret_part}"
    masked = "https://hooks.slack.com/services/T…/B…/…"
    org = gateway.post("/admin/orgs", {"name": "acme"})["id"]
    created = request(
        gateway,
        "POST",
        "/admin/webhooks",
        201,
        json={
            "url": url,
            "kind": "slack",
            "event_types": ["budget.*"],
            "scope_type": "org",
            "scope_id": org,
        },
    )
    assert created["url"] == masked
    answers = [
        created,
        gateway.get(f"/admin/webhooks/{created['id']}"),
        gateway.get("/admin/webhooks"),
        request(
            gateway,
            "PATCH",
            f"/admin/webhooks/{created['id']}",
            200,
            json={"url": masked, "description": "alerts"},
        ),
        request(gateway, "POST", f"/admin/webhooks/{created['id']}/rotate-secret", 200),
        gateway.get("/admin/audit"),
    ]
    assert all(secret_part not in json.dumps(a) for a in answers)
    assert answers[3]["url"] == masked and answers[3]["description"] == "alerts"
    row = gateway.run(hooks.store.row(created["id"]))
    assert hooks.store.url_of(row) == url and secret_part not in str(row)
    error = request(
        gateway, "PATCH", f"/admin/webhooks/{created['id']}", 422, json={"kind": "webhook"}
    )["error"]
    assert error["param"] == "url"


def test_a_url_with_user_info_is_never_echoed(
    gateway: RunningGateway, hooks: WebhookRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook URL with ``user:password@`` is a credential: stored encrypted and shown
    masked by every route, the CLI and the audit log (a PATCH with the masked form keeps
    it), while deliveries still go to the real URL with its basic auth."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    try:
        password = "pw-5ecret-77"
        url = handle.url.replace("http://", f"http://hookuser:{password}@") + "/in/hook"
        org = gateway.post("/admin/orgs", {"name": "userinfo"})["id"]
        created = request(
            gateway,
            "POST",
            "/admin/webhooks",
            201,
            json={"url": url, "event_types": ["*"], "scope_type": "org", "scope_id": org},
        )
        receiver.secrets.append(created["secret"])
        masked = created["url"]
        assert "hookuser" not in masked and password not in masked
        assert masked.startswith(handle.url) and masked.endswith("/in/…")
        patched = request(
            gateway,
            "PATCH",
            f"/admin/webhooks/{created['id']}",
            200,
            json={"url": masked, "description": "basic auth"},
        )
        monkeypatch.setenv("SPENDGATE_MASTER_KEY", MASTER_KEY)
        cli = CliRunner().invoke(webhooks_app, ["list", "--url", gateway.url, "--json"])
        assert cli.exit_code == 0, cli.output
        answers = [
            created,
            patched,
            gateway.get(f"/admin/webhooks/{created['id']}"),
            gateway.get("/admin/webhooks"),
            gateway.get("/admin/audit", limit=1000),
            cli.stdout,
        ]
        for answer in answers:
            text = json.dumps(answer)
            assert password not in text and "hookuser" not in text, text[:300]
        row = gateway.run(hooks.store.row(created["id"]))
        assert hooks.store.url_of(row) == url and password not in str(row)

        gateway.post("/admin/keys", {"name": "k", "org_id": org})  # key.created: one delivery
        for _ in range(3):
            gateway.run(hooks.worker.run_once())
        [got] = receiver.received
        assert got.verified and got.path == "/in/hook"
        assert (
            got.headers["authorization"]
            == "Basic " + base64.b64encode(f"hookuser:{password}".encode()).decode()
        )
        log = gateway.get(f"/admin/webhooks/{created['id']}/deliveries")
        assert password not in json.dumps(log)
    finally:
        handle.stop()
