"""/rate-limits in a real browser: create, edit, delete, use against each limit, and a
team admin kept to their own team's limits."""

from __future__ import annotations

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, sign_in

MSG = [{"role": "user", "content": "hello"}]


def test_create_use_edit_delete(console: Console, page: Page) -> None:
    """A team admin adds 5 rpm on gpt-4o* for their team; two calls show as 2 of 5;
    clearing rpm while setting tpm edits it; delete removes it. All audited."""
    key = console.gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/rate-limits")
    page.get_by_label("For").select_option(label="team research")
    page.get_by_label("Model or pattern").fill("gpt-4o*")
    page.get_by_label("Requests per minute").fill("5")
    page.get_by_role("button", name="Add limit").click()
    limit = console.gw.get("/admin/rate-limits")[0]
    assert (limit["model"], limit["rpm"], limit["tpm"]) == ("gpt-4o*", 5, None)
    for _ in range(2):
        answer = httpx.post(
            console.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key['key']}"},
            json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10},
        )
        assert answer.status_code == 200
    page.reload()
    expect(page.locator(f"#limit-{limit['id']} .rpm")).to_have_text("2 of 5")
    page.get_by_role("link", name="Edit the limit of team research on gpt-4o*").click()
    page.get_by_label("Requests per minute").fill("")
    page.get_by_label("Tokens per minute").fill("1000")
    page.get_by_role("button", name="Save").click()
    edited = console.gw.get(f"/admin/rate-limits/{limit['id']}")
    assert (edited["rpm"], edited["tpm"]) == (None, 1000)
    page.get_by_role("button", name="Delete the limit of team research on gpt-4o*").click()
    assert console.gw.get("/admin/rate-limits") == []
    actions = [e["action"] for e in console.gw.get("/admin/audit", target=limit["id"])["entries"]]
    assert actions == ["rate_limit.deleted", "rate_limit.updated", "rate_limit.created"]


def test_no_limit_at_all_is_a_422(console: Console, page: Page) -> None:
    """The API's rule: a row needs at least one limit; the page says which field."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/rate-limits")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Add limit").click()
    assert answer.value.status == 422
    expect(page.get_by_role("alert")).to_contain_text("rpm")


def test_team_admin_cannot_see_or_change_another_team_limit(console: Console, page: Page) -> None:
    """Another team's limit: not listed, its edit page 404, its delete 404."""
    theirs = console.gw.post(
        "/admin/rate-limits",
        {"scope_type": "team", "scope_id": console.other_team_id, "rpm": 9},
    )
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/rate-limits")
    expect(page.locator(f"#limit-{theirs['id']}")).to_have_count(0)
    answer = page.goto(console.url + f"/rate-limits/{theirs['id']}")
    assert answer is not None and answer.status == 404
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sg_csrf")
    posted = page.request.post(
        console.url + f"/rate-limits/{theirs['id']}/delete", form={"csrf_token": token}
    )
    assert posted.status == 404
    assert console.gw.get(f"/admin/rate-limits/{theirs['id']}")["rpm"] == 9


def test_viewer_reads_without_actions(console: Console, page: Page) -> None:
    """A viewer sees their team's limits, with no form and no edit or delete."""
    mine = console.gw.post(
        "/admin/rate-limits", {"scope_type": "team", "scope_id": console.team_id, "rpm": 3}
    )
    sign_in(page, console.url, "viewer@acme.test")
    page.goto(console.url + "/rate-limits")
    expect(page.locator(f"#limit-{mine['id']}")).to_contain_text("0 of 3")
    expect(page.get_by_role("button", name="Add limit")).to_have_count(0)
    expect(page.locator(f"#limit-{mine['id']}").get_by_role("link")).to_have_count(0)


def test_rate_limit_pages_have_no_serious_axe_violations(
    console: Console, browser: Browser
) -> None:
    """axe-core: nothing serious or critical on the list and the edit page."""
    row = console.gw.post(
        "/admin/rate-limits", {"scope_type": "team", "scope_id": console.team_id, "rpm": 3}
    )
    for path in ("/rate-limits", f"/rate-limits/{row['id']}"):
        violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])
