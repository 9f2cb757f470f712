"""The two admin routes the console added: a webhook test send, and a console invite
link (a credential, under the admin-token rule)."""

from __future__ import annotations

import json

import httpx

from spendgate.testing.fake_upstream import ServerHandle
from spendgate.testing.webhook_receiver import Receiver
from tests.conftest import RunningGateway


def _world(gw: RunningGateway) -> dict[str, str]:
    org = gw.post("/admin/orgs", {"name": "links-org"})["id"]
    team = gw.post("/admin/teams", {"name": "a", "org_id": org})["id"]
    admin = gw.post("/admin/users", {"email": "oa@x.test", "role": "org_admin", "org_id": org})
    lead = gw.post("/admin/users", {"email": "ta@x.test", "role": "team_admin", "team_ids": [team]})
    member = gw.post("/admin/users", {"email": "m@x.test", "role": "viewer", "team_ids": [team]})
    token = {
        name: gw.post("/admin/tokens", {"user_id": u["id"], "name": name})["token"]
        for name, u in (("oa", admin), ("ta", lead))
    }
    return {"org": org, "oa": token["oa"], "ta": token["ta"], "member": member["id"],
            "lead": lead["id"], "admin": admin["id"]}  # fmt: skip


def _post(gw: RunningGateway, token: str, path: str) -> httpx.Response:
    return httpx.post(gw.url + path, headers={"authorization": f"Bearer {token}"})


def test_invite_link_is_once_and_follows_the_token_rule(gateway: RunningGateway) -> None:
    """An org admin makes a link for a member of the org; it opens the password form;
    a team admin may make one for themselves but not for their team's viewer (404);
    an unknown user is 404; the link's secret is not in the audit entry."""
    w = _world(gateway)
    made = _post(gateway, w["oa"], f"/admin/users/{w['member']}/console-invite")
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    secret = url.rsplit("/invite/", 1)[1]
    assert httpx.get(gateway.url + "/invite/" + secret).status_code == 200
    assert _post(gateway, w["ta"], f"/admin/users/{w['member']}/console-invite").status_code == 404
    assert _post(gateway, w["ta"], f"/admin/users/{w['lead']}/console-invite").status_code == 201
    assert _post(gateway, w["oa"], "/admin/users/user_nope/console-invite").status_code == 404
    entries = gateway.get("/admin/audit", action="console.invite_created")["entries"]
    assert len(entries) == 2 and all(secret not in str(e) for e in entries)


def test_webhook_test_send_is_delivered_signed(
    gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """The test message is queued (202, pending), delivered signed with the endpoint's
    secret, and logged; another org's admin gets 404 for the endpoint."""
    app, handle = receiver
    made = gateway.post("/admin/webhooks", {"url": handle.url + "/h", "event_types": ["key.*"]})
    app.secrets.append(made["secret"])
    queued = gateway.admin.post(f"/admin/webhooks/{made['id']}/test")
    assert queued.status_code == 202, queued.text
    assert (queued.json()["event_type"], queued.json()["status"]) == ("webhook.test", "pending")
    gateway.run(gateway.app.services.webhooks.worker.run_once())
    assert [r.json()["type"] for r in app.verified] == ["webhook.test"]
    log = gateway.get(f"/admin/webhooks/{made['id']}/deliveries")
    assert log[0]["status"] == "succeeded" and log[0]["attempts"] == 1
    w = _world(gateway)
    assert _post(gateway, w["oa"], f"/admin/webhooks/{made['id']}/test").status_code == 404


def test_the_cli_sends_a_test_message_too(
    gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """The README's webhook setup is all CLI (create, deliveries, redeliver, rotate) but
    a test message could only be sent from the console or with curl: `spendgate webhooks
    test whe_…` queues it, and the receiver gets it signed."""
    from typer.testing import CliRunner

    from spendgate.cli import app as cli
    from tests.conftest import MASTER_KEY

    app, handle = receiver
    made = gateway.post("/admin/webhooks", {"url": handle.url + "/h", "event_types": ["key.*"]})
    app.secrets.append(made["secret"])
    result = CliRunner().invoke(
        cli,
        ["webhooks", "test", made["id"], "--url", gateway.url, "--json"],
        env={"SPENDGATE_MASTER_KEY": MASTER_KEY},
    )
    assert result.exit_code == 0, result.output
    queued = json.loads(result.stdout)
    assert (queued["event_type"], queued["status"]) == ("webhook.test", "pending")
    gateway.run(gateway.app.services.webhooks.worker.run_once())
    assert [r.json()["type"] for r in app.verified] == ["webhook.test"]
