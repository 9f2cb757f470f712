"""/webhooks in a real browser: create (whsec_ shown once), filters, test send with the
delivery log, rotate with overlap, redeliver; only org admins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from spendgate.testing.fake_upstream import ServerHandle, serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from tests.console.conftest import Console, axe_violations, sign_in


@pytest.fixture
def receiver(console: Console) -> Iterator[tuple[Receiver, ServerHandle]]:
    app = Receiver(now=console.gw.clock.now)
    handle = serve_in_thread(app)
    yield app, handle
    handle.stop()


def _deliver(console: Console) -> None:
    console.gw.run(console.gw.app.services.webhooks.worker.run_once())


def test_create_test_send_rotate_redeliver(
    console: Console, page: Page, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """The secret is shown once and verifies the test message; the log shows the
    attempt; rotating keeps the old secret signing during the overlap; redelivery
    sends the same message again."""
    app, handle = receiver
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/webhooks")
    page.get_by_label("URL").fill(handle.url + "/hook")
    page.get_by_label("budget.*").check()
    page.get_by_label("*", exact=True).uncheck()
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.get_by_role("textbox", name="Secret").input_value()
    assert secret.startswith("whsec_")
    app.secrets.append(secret)
    page.get_by_role("link", name="Go to the endpoint").click()
    assert secret not in page.content()
    expect(page.get_by_label("budget.*")).to_be_checked()
    page.get_by_role("button", name="Send a test").click()
    _deliver(console)
    page.reload()
    row = page.locator("#deliveries-table tbody tr").first
    expect(row).to_contain_text("webhook.test")
    expect(row.locator(".status")).to_have_text("succeeded")
    assert [r.json()["type"] for r in app.verified] == ["webhook.test"]
    page.get_by_label("Old secret keeps signing for (hours)").fill("1")
    page.get_by_role("button", name="Rotate secret").click()
    new_secret = page.get_by_role("textbox", name="Secret").input_value()
    assert new_secret.startswith("whsec_") and new_secret != secret
    expect(page.locator("main")).to_contain_text("previous secret also signs until")
    page.goto(console.url + "/webhooks")
    assert secret not in page.content() and new_secret not in page.content()
    page.locator("#webhooks-table a").first.click()
    page.locator("#deliveries-table").get_by_role("button", name="Redeliver").first.click()
    _deliver(console)
    page.reload()
    expect(page.locator("#deliveries-table tbody tr")).to_have_count(2)
    assert len(app.verified) == 2  # the old secret still verifies during the overlap
    endpoint_id = page.url.split("/webhooks/")[1].split("#")[0]
    actions = {e["action"] for e in console.gw.get("/admin/audit", target=endpoint_id)["entries"]}
    assert {"webhook.created", "webhook.test_sent", "webhook.secret_rotated"} <= actions


def test_a_slack_endpoint_shows_no_secret_to_keep(console: Console, page: Page) -> None:
    """Slack checks no signature: adding a Slack endpoint says there is no secret to keep
    (it showed one "once", with nothing to use it), and its page offers no rotation."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/webhooks")
    page.get_by_label("URL").fill("https://hooks.slack.com/services/T0/B0/x")
    page.get_by_label("Kind").select_option("slack")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator("main")).to_contain_text("No secret to keep: Slack does not check")
    expect(page.get_by_role("textbox", name="Secret")).to_have_count(0)
    assert "whsec_" not in page.content()
    page.get_by_role("link", name="Go to the endpoint").click()
    expect(page.get_by_role("button", name="Rotate secret")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("Previous secret")


@pytest.mark.parametrize("role", ["finance", "team_admin", "viewer"])
def test_only_org_admins_manage_webhooks(console: Console, page: Page, role: str) -> None:
    """Everyone else gets 403 on the list and on an endpoint's page and actions."""
    made = console.gw.post("/admin/webhooks", {"url": "http://127.0.0.1:9/x", "event_types": ["*"]})
    sign_in(page, console.url, f"{role}@acme.test")
    for path in ("/webhooks", f"/webhooks/{made['id']}"):
        answer = page.goto(console.url + path)
        assert answer is not None and answer.status == 403
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sg_csrf")
    posted = page.request.post(
        console.url + f"/webhooks/{made['id']}/rotate", form={"csrf_token": token}
    )
    assert posted.status == 403


def test_webhook_pages_have_no_serious_axe_violations(console: Console, browser: Browser) -> None:
    """axe-core: nothing serious or critical on the list and an endpoint."""
    made = console.gw.post("/admin/webhooks", {"url": "http://127.0.0.1:9/x"})
    for path in ("/webhooks", f"/webhooks/{made['id']}"):
        violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])
