"""/audit in a real browser: filters, the before/after view, export of what is filtered,
the chain badge (the same verification as ``spendgate audit verify``), and team scope."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.admin.test_audit_tampering import superuser
from tests.console.conftest import Console, axe_violations, refused_filters, sign_in


def _keys(console: Console) -> tuple[dict, dict]:
    mine = console.gw.post(
        "/admin/keys", {"name": "mine", "org_id": console.org_id, "team_id": console.team_id}
    )
    theirs = console.gw.post(
        "/admin/keys",
        {"name": "theirs", "org_id": console.org_id, "team_id": console.other_team_id},
    )
    return mine, theirs


def test_filter_diff_and_export(console: Console, page: Page) -> None:
    """Filtering by action lists only those entries; an entry shows before and after with
    the changed field; the CSV and JSONL exports hold exactly the filtered entries."""
    mine, _ = _keys(console)
    console.gw.post(f"/admin/keys/{mine['id']}/revoke", {}, status=200)
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/audit")
    expect(page.locator("#chain-badge")).to_contain_text("Chain verified")
    page.get_by_label("Action").fill("key.revoked")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("#audit-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(mine["id"])
    # the instant to the second, in UTC as the column says (not ISO text with microseconds)
    at = console.gw.get("/admin/audit", action="key.revoked")["entries"][0]["at"]
    assert at.endswith("Z"), at  # UTC
    expect(rows.first.locator("td").first).to_have_text(at[:19].replace("T", " "))
    rows.first.get_by_role("link").click()
    expect(page.locator("#changes-table")).to_contain_text("revoked_at")
    expect(page.locator("#before")).to_contain_text('"status": "active"')
    expect(page.locator("#after")).to_contain_text('"status": "revoked"')
    page.goto(console.url + "/audit?action=key.revoked")
    with page.expect_download() as got:
        page.get_by_role("link", name="Export JSONL").click()
    lines = [json.loads(x) for x in Path(got.value.path()).read_text().splitlines()]
    assert [(e["action"], e["target_id"]) for e in lines] == [("key.revoked", mine["id"])]
    with page.expect_download() as got:
        page.get_by_role("link", name="Export CSV").click()
    csv_lines = Path(got.value.path()).read_text().splitlines()
    assert csv_lines[0].startswith("seq,id,at") and len(csv_lines) == 2
    exported = console.gw.get("/admin/audit", action="audit.exported")["entries"]
    assert len(exported) == 2 and exported[0]["actor_type"] == "console"


def test_badge_names_the_first_bad_entry(console: Console, page: Page) -> None:
    """An entry altered in the database turns the badge red and names it, as
    ``spendgate audit verify`` would."""
    mine, _ = _keys(console)
    sign_in(page, console.url, "org_admin@acme.test")
    target = console.gw.get("/admin/audit", target=mine["id"])["entries"][-1]
    console.gw.run(
        superuser(
            console.gw.app.services.engine,
            ("UPDATE audit_log SET action = 'key.tampered' WHERE seq = :s", {"s": target["seq"]}),
        )
    )
    verify = console.gw.get("/admin/audit/verify")
    assert verify["ok"] is False
    page.goto(console.url + "/audit")
    badge = page.locator("#chain-badge")
    expect(badge).to_contain_text("Chain broken")
    expect(badge).to_contain_text(str(verify["first_bad_seq"]))
    assert verify["first_bad_id"] in badge.inner_text()


def test_team_admin_sees_only_their_team_entries(console: Console, page: Page) -> None:
    """Another team's entries are neither listed, nor exported, nor reachable by their
    number (404); no badge (verifying is the org readers')."""
    mine, theirs = _keys(console)
    theirs_seq = console.gw.get("/admin/audit", target=theirs["id"])["entries"][0]["seq"]
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/audit")
    table = page.locator("#audit-table")
    expect(table).to_contain_text(mine["id"])
    expect(table).not_to_contain_text(theirs["id"])
    expect(page.locator("#chain-badge")).to_have_count(0)
    answer = page.goto(console.url + f"/audit/{theirs_seq}")
    assert answer is not None and answer.status == 404
    exported = page.request.get(console.url + "/audit/export?format=jsonl")
    assert exported.status == 200
    assert theirs["id"] not in exported.text() and mine["id"] in exported.text()


def test_bad_filter_is_a_422(console: Console) -> None:
    """A time that is no time: 422 naming the field, not a 500."""
    with httpx.Client(base_url=console.url) as client:
        client.get("/login")
        token = client.cookies["sg_csrf"]
        client.post(
            "/login",
            data={
                "email": "org_admin@acme.test",
                "password": "correct horse battery staple",
                "csrf_token": token,
            },
        )
        answer = client.get("/audit", params={"start": "yesterday"})
        assert answer.status_code == 422 and "start" in answer.text


def test_a_refused_filter_comes_back_as_typed(
    console: Console, page: Page, browser: Browser
) -> None:
    """An end before the start: the audit page again, the filters as typed and the
    message beside the end (it was a bare error page, "Back to usage", the filters gone);
    no serious axe violation on it."""
    sign_in(page, console.url, "org_admin@acme.test")
    fields = {
        "Actor": "console:",
        "Action": "key.*",
        "From (UTC)": "2026-03-09T10:00",
        "To (UTC)": "2026-03-01T10:00",
    }
    wrong = ("To (UTC)", "end", "must be after start")
    refused_filters(page, console.url, "/audit", fields, wrong)
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    path = "/audit?start=2026-03-09T10:00&end=2026-03-01T10:00"
    violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
    assert violations == [], [(v["id"], v["help"]) for v in violations]


def test_audit_pages_have_no_serious_axe_violations(console: Console, browser: Browser) -> None:
    """axe-core: nothing serious or critical on the list and an entry."""
    mine, _ = _keys(console)
    seq = console.gw.get("/admin/audit", target=mine["id"])["entries"][0]["seq"]
    for path in ("/audit", f"/audit/{seq}"):
        violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])
