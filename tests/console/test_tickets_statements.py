"""/tickets and /statements in a real browser: the approvers' queue with approve and
deny (errors beside the field), chargeback statements (close, reissue, view, CSV/JSONL,
printable), each as the roles that may, and a team admin kept to their own team by URL
guessing too (404), CSRF on every form."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, form, session, sign_in

MSG = [{"role": "user", "content": "please fund me"}]
SHOTS = Path("/tmp/spendgate-console2-shots")


def _call(console: Console, secret: str) -> httpx.Response:
    return httpx.post(
        console.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 50},
    )


def _ticket(console: Console, team_id: str, name: str) -> tuple[dict[str, Any], str]:
    """A key of the team and an empty team wallet with tickets on: its refused call
    opens a ticket. (key, ticket id)."""
    key = console.gw.post(
        "/admin/keys", {"name": name, "org_id": console.org_id, "team_id": team_id}
    )
    console.gw.post("/admin/wallets", {"scope_type": "team", "scope_id": team_id, "tickets": "on"})
    refused = _call(console, key["key"])
    assert refused.status_code == 402, refused.text
    return key, refused.json()["error"]["ticket"]["id"]


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_team_admin_approves_with_the_api_checks(console: Console, page: Page) -> None:
    """The queue lists the team's open ticket with what was asked; granting more than
    asked without ticking the box comes back beside *Amount* (422, nothing decided);
    approving what was asked funds the key's next call and is audited."""
    key, ticket_id = _ticket(console, console.team_id, "needy")
    asked = console.gw.get(f"/admin/tickets/{ticket_id}")["asked_usd"]
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/tickets")
    row = page.locator(f"#ticket-{ticket_id}")
    expect(row).to_contain_text("needy")
    expect(row).to_contain_text(f"${asked}")
    _shot(page, "tickets-list")
    row.get_by_role("link", name=ticket_id).click()
    page.get_by_label("Amount (USD)").fill("1000")
    page.get_by_label("Reason", exact=True).fill("quarter end")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 422
    expect(page.locator("#approve-amount_usd-error")).to_contain_text("more than the")
    expect(page.locator("#approve-amount_usd-error")).to_contain_text(
        "asked; tick “Grant more than asked” to grant more"
    )
    expect(page.get_by_label("Reason", exact=True)).to_have_value("quarter end")
    _shot(page, "ticket-detail-error")
    assert console.gw.get(f"/admin/tickets/{ticket_id}")["status"] == "open"
    page.get_by_label("Amount (USD)").fill("")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#ticket-status")).to_have_text("approved")
    expect(page.locator("#ticket-decision")).to_contain_text("quarter end")
    assert _call(console, key["key"]).status_code == 200
    actions = [e["action"] for e in console.gw.get("/admin/audit", target=ticket_id)["entries"]]
    assert actions == ["wallet.ticket_approved", "wallet.ticket_opened"]
    page.goto(console.url + "/tickets?status=approved")
    expect(page.locator(f"#ticket-{ticket_id}")).to_contain_text("approved by team_admin@acme.test")


def test_finance_denies_and_the_requester_hears_why(console: Console, page: Page) -> None:
    """Finance denies with a reason (a blank one is refused beside the field); the next
    refusal of the key says denied; the ticket leaves the open queue."""
    key, ticket_id = _ticket(console, console.other_team_id, "sales-bot")
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + f"/tickets/{ticket_id}")
    page.get_by_label("Reason (the requester sees it)").fill("   ")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Deny").click()
    assert answer.value.status == 422
    expect(page.locator("#deny-reason-error")).to_be_visible()
    page.get_by_label("Reason (the requester sees it)").fill("use the batch key")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator("#ticket-status")).to_have_text("denied")
    refusal = _call(console, key["key"])
    assert refusal.status_code == 402 and "use the batch key" in refusal.text
    page.goto(console.url + "/tickets")
    expect(page.locator(f"#ticket-{ticket_id}")).to_have_count(0)


def test_another_team_ticket_is_404_and_roles_without_tickets_403(
    console: Console, page: Page
) -> None:
    """A team admin neither lists, opens nor decides another team's ticket (404 by URL);
    a viewer and a member may not read tickets (403); a decision without the CSRF token
    never reaches the page."""
    _, theirs = _ticket(console, console.other_team_id, "theirs")
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/tickets")
    expect(page.locator(f"#ticket-{theirs}")).to_have_count(0)
    answer = page.goto(console.url + f"/tickets/{theirs}")
    assert answer is not None and answer.status == 404
    with session(console.url, "team_admin@acme.test") as client:
        for action, body in (("approve", {"reason": "x"}), ("deny", {"reason": "x"})):
            assert form(client, f"/tickets/{theirs}/{action}", body).status_code == 404
            assert client.post(f"/tickets/{theirs}/{action}", data=body).status_code == 403
    for role in ("viewer", "member"):
        with session(console.url, f"{role}@acme.test") as client:
            assert client.get("/tickets").status_code == 403
            assert form(client, f"/tickets/{theirs}/deny", {"reason": "x"}).status_code == 403
    assert console.gw.get(f"/admin/tickets/{theirs}")["status"] == "open"


def _spend_in_february(console: Console, name: str = "feb", **fields: Any) -> dict[str, Any]:
    """A call in February on a new key of the console's team (``fields``: more of the
    key's, e.g. its ``user_id``); the key."""
    key = console.gw.post(
        "/admin/keys",
        {"name": name, "org_id": console.org_id, "team_id": console.team_id, **fields},
    )
    now = console.gw.clock.now()
    console.gw.clock.set(datetime(2026, 2, 14, 12, tzinfo=UTC))
    try:
        assert _call(console, key["key"]).status_code == 200
    finally:
        console.gw.clock.set(now)
    return key


def test_org_admin_closes_views_downloads_and_reissues(console: Console, page: Page) -> None:
    """Closing March (not ended) is refused beside the month field; February closes
    (version 1, audited), its team statement shows the spend with CSV/JSONL downloads
    equal to the API's and a printable view; reissue keeps it (nothing changed)."""
    _spend_in_february(console)
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/statements")
    expect(page.locator("#month-2026-02 .state")).to_contain_text("open")
    page.get_by_label("Month (YYYY-MM)").fill("2026-03")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Close month").click()
    assert answer.value.status == 422
    expect(page.locator("#month-error")).to_contain_text("has not ended")
    page.get_by_label("Month (YYYY-MM)").fill("2026-02")
    page.get_by_role("button", name="Close month").click()
    expect(page.locator("#month-2026-02 .state")).to_contain_text("closed")
    expect(page.locator("#month-2026-02 .state")).to_contain_text("by org_admin@acme.test")
    _shot(page, "statements-list")
    page.locator("#month-2026-02").get_by_role("link", name="team research").click()
    expect(page.locator("#statement-state")).to_contain_text("Version 1")
    api = console.gw.get(
        "/admin/statements/2026-02", org_id=console.org_id, team_id=console.team_id
    )
    expect(page.locator("#statement-total")).to_have_text(api["total_usd"])
    assert api["total_usd"] != "0.00"
    _shot(page, "statement-detail")
    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Download CSV").click()
    csv_bytes = Path(csv_download.value.path()).read_bytes()
    api_csv = console.gw.admin.get(
        "/admin/statements/2026-02",
        params={"org_id": console.org_id, "team_id": console.team_id, "format": "csv"},
    ).content
    assert csv_bytes == api_csv and csv_bytes.startswith(b"section,id,label,requests,cost_usd")
    with page.expect_download() as jsonl_download:
        page.get_by_role("link", name="Download JSONL").click()
    assert '"version":1' in Path(jsonl_download.value.path()).read_text()
    page.get_by_role("link", name="Printable view").click()
    expect(page.get_by_role("heading", name="Statement 2026-02: research")).to_be_visible()
    expect(page.locator("header.top")).to_have_count(0)
    _shot(page, "statement-print")
    page.goto(console.url + "/statements")
    page.get_by_role("button", name="Reissue 2026-02").click()
    actions = [e["action"] for e in console.gw.get("/admin/audit")["entries"]]
    assert "statement.closed" in actions and "statement.reissued" in actions


def test_team_admin_reads_only_their_team_statement(console: Console, page: Page) -> None:
    """A team admin sees their team's statement link only; the other team's and the
    org's are 404 by URL (page, print and downloads); closing is 403; a close without
    the CSRF token never reaches the page."""
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/statements")
    month = page.locator("#month-2026-02")
    expect(month.get_by_role("link", name="team research")).to_be_visible()
    expect(month.get_by_role("link", name="team sales")).to_have_count(0)
    expect(month.get_by_role("link", name="whole org")).to_have_count(0)
    expect(page.get_by_role("button", name="Close month")).to_have_count(0)
    assert page.goto(console.url + f"/statements/2026-02?team_id={console.team_id}").status == 200  # type: ignore[union-attr]
    for path in (
        f"/statements/2026-02?team_id={console.other_team_id}",
        "/statements/2026-02",
        f"/statements/2026-02/print?team_id={console.other_team_id}",
        f"/statements/2026-02/download?format=csv&team_id={console.other_team_id}",
        "/statements/2026-02/download?format=jsonl",
    ):
        answer = page.goto(console.url + path)
        assert answer is not None and answer.status == 404, path
    with session(console.url, "team_admin@acme.test") as client:
        assert form(client, "/statements/close", {"month": "2026-02"}).status_code == 403
    with session(console.url, "org_admin@acme.test") as client:
        for action in ("close", "reissue"):
            bare = client.post(f"/statements/{action}", data={"month": "2026-02"})
            assert bare.status_code == 403
    assert console.gw.get("/admin/statements", org_id=console.org_id) == []


@pytest.mark.parametrize("role", ["org_admin", "team_admin", "finance"])
def test_new_pages_have_no_serious_axe_violations(
    console: Console, browser: Browser, role: str
) -> None:
    """axe-core on the tickets queue, a ticket, the statements list, a statement and its
    printable view."""
    _, ticket_id = _ticket(console, console.team_id, "axe")
    team = f"?team_id={console.team_id}"
    for path in (
        "/tickets",
        f"/tickets/{ticket_id}",
        "/statements",
        f"/statements/2026-02{team}",
        f"/statements/2026-02/print{team}",
    ):
        violations = axe_violations(browser, console.url, f"{role}@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])


def test_a_statement_names_its_keys_and_users(console: Console, page: Page) -> None:
    """A statement's *By key* read "key_0730…": the breakdown rows name the key (and a
    user by email) for a reader who may see the name (a key's needs ``keys.read``:
    finance keeps the id, as on the usage page), the id in the cell's title; the
    downloads keep the ids."""
    key = _spend_in_february(console, "feb-bot", user_id=console.users["member"]["id"])
    sign_in(page, console.url, "team_admin@acme.test")
    for path in ("", "/print"):
        page.goto(console.url + f"/statements/2026-02{path}?team_id={console.team_id}")
        by_key = page.locator("#by-key tbody th")
        expect(by_key).to_have_text(["feb-bot"])
        expect(by_key).to_have_attribute("title", key["id"])
        expect(page.locator("#by-user tbody th")).to_have_text(["member@acme.test"])
    with session(console.url, "finance@acme.test") as client:
        shown = client.get(f"/statements/2026-02?team_id={console.team_id}").text
        assert key["id"] in shown and "feb-bot" not in shown
