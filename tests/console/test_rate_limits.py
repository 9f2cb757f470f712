"""/rate-limits in a real browser: create, edit, delete, use against each limit, and a
team admin kept to their own team's limits."""

from __future__ import annotations

import httpx
from playwright.sync_api import Browser, Page, expect

from spendgate.core.rate_rules import RateLimit, checks_for
from tests.console.conftest import Console, axe_violations, sign_in

MSG = [{"role": "user", "content": "hello"}]


def _add_team_limit(console: Console, page: Page, model: str) -> None:
    """As the team admin, 5 rpm on ``model`` for team research, through the form."""
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/rate-limits")
    page.get_by_label("For").select_option(label="team research")
    page.get_by_label("Model or pattern").fill(model)
    page.get_by_label("Requests per minute").fill("5")
    page.get_by_role("button", name="Add limit").click()


def test_create_use_edit_delete(console: Console, page: Page) -> None:
    """A team admin adds 5 rpm on gpt-4o* for their team; two calls show as 2 of 5;
    clearing rpm while setting tpm edits it; delete removes it. All audited."""
    key = console.gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    _add_team_limit(console, page, "gpt-4o*")
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
    """The API's rule: a row needs at least one limit; the form comes back (422) with the
    message beside the field it names, in the form's words (its labels, not the API's
    ``rpm``, ``max_spend_usd``), and what was typed still there."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/rate-limits")
    page.get_by_label("Model or pattern").fill("gpt-4o*")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Add limit").click()
    assert answer.value.status == 422
    expect(page.get_by_role("alert")).to_contain_text("not saved")
    expect(page.locator("#rpm-error")).to_have_text(
        "Error: set at least one of Requests per minute, Tokens per minute, Concurrent calls,"
        " Spend per window (USD)"
    )
    expect(page.get_by_label("Requests per minute")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Model or pattern")).to_have_value("gpt-4o*")
    assert console.gw.get("/admin/rate-limits") == []


def test_bad_number_on_edit_is_beside_its_field(console: Console, page: Page) -> None:
    """A negative tpm on the edit form: the edit page again with the API's message
    beside *Tokens per minute*; the row keeps its values."""
    limit = console.gw.post(
        "/admin/rate-limits",
        {"scope_type": "team", "scope_id": console.team_id, "model": "*", "rpm": 5},
    )
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + f"/rate-limits/{limit['id']}")
    page.get_by_label("Tokens per minute").fill("-3")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save").click()
    assert answer.value.status == 422
    expect(page.locator("#tpm-error")).to_be_visible()
    expect(page.get_by_label("Tokens per minute")).to_have_value("-3")
    assert console.gw.get(f"/admin/rate-limits/{limit['id']}")["tpm"] is None


def test_concurrency_shows_calls_in_flight_against_the_limit(console: Console, page: Page) -> None:
    """Two calls holding slots in the proxy's limiter (acquired through the same rate
    gate buckets a call takes) show as 2 in flight of 3; released, 0 of 3."""
    limit = console.gw.post(
        "/admin/rate-limits",
        {"scope_type": "team", "scope_id": console.team_id, "model": "*", "max_concurrent": 3},
    )
    services = console.gw.app.services
    row = RateLimit(limit["id"], "team", console.team_id, "*", max_concurrent=3)
    limiter = services.rate_gate.limiter
    now = console.gw.clock.now().timestamp()
    for rid in ("r1", "r2"):
        console.gw.run(limiter.acquire(rid, checks_for([row], 0, 0), now, now + 600))
    sign_in(page, console.url, "viewer@acme.test")
    page.goto(console.url + "/rate-limits")
    expect(page.locator(f"#limit-{limit['id']} .concurrency")).to_have_text("2 in flight of 3")
    for rid in ("r1", "r2"):
        console.gw.run(limiter.release(rid, now))
    page.reload()
    expect(page.locator(f"#limit-{limit['id']} .concurrency")).to_have_text("0 in flight of 3")


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


def test_a_limit_that_limits_no_call_is_warned_about_on_its_row(
    console: Console, page: Page
) -> None:
    """Added through the form, a pattern that matches no configured model shows the
    API's warning beside its model on the list, and on its edit page."""
    _add_team_limit(console, page, "gpt-9*")
    limit = console.gw.get("/admin/rate-limits")[0]
    warning = "⚠ Warning: model: 'gpt-9*': matches no configured model; this row limits no call"
    expect(page.locator(f"#limit-{limit['id']} .limit-warning")).to_have_text(warning)
    page.get_by_role("link", name="Edit the limit of team research on gpt-9*").click()
    expect(page.locator(".limit-warning")).to_have_text(warning)
