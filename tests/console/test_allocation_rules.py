"""/allocation-rules in a real browser: an org admin adds a rule of each kind (the API's
own checks, errors beside the field) and deletes one after a confirmation page; the
roles that may only read, or not even that, are refused by page and by URL; another
org's rule is 404; CSRF on every form. And /statements: closing a month already closed
is a message on the page (409), not an error page."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, form, session, sign_in

SHOTS = Path("/tmp/spendgate-console2-shots")


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _add(page: Page, method: str, tag: str = "", position: str = "0", **teams: str) -> int:
    """Fill and send the *Add a rule* form; ``teams``: name -> percentage ("" ticks the
    team's box only). The answer's status."""
    page.get_by_label(method, exact=True).check()
    page.get_by_label("Tag (blank: any call)").fill(tag)
    page.get_by_label("Position", exact=True).fill(position)
    for name, percent in teams.items():
        if percent:
            page.get_by_label(f"Percentage for {name}").fill(percent)
        else:
            page.get_by_label(name, exact=True).check()
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Add rule").click()
    page.wait_for_load_state()
    return answer.value.status


def _rules(console: Console) -> list[dict[str, object]]:
    return console.gw.get("/admin/allocation-rules", org_id=console.org_id)  # type: ignore[no-any-return]


def test_org_admin_adds_each_kind_and_deletes_after_confirming(
    console: Console, page: Page
) -> None:
    """From /statements to the rules page; a proportional rule over every team, a fixed
    60/40 rule for tag ``batch`` and an even rule over two ticked teams are listed as
    the API stores them (audited); deleting asks first, then removes only that rule."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/statements")
    page.get_by_role("link", name="allocation rules").click()
    expect(page.get_by_role("heading", name="Allocation rules", exact=True)).to_be_visible()
    expect(page.locator("#rules-table")).to_contain_text("No rules")
    assert _add(page, "proportional", position="5") == 303
    assert _add(page, "fixed", "batch", "1", research="60", sales="40") == 303
    assert _add(page, "even", "shared", "2", research="", sales="") == 303
    stored = {r["method"]: r for r in _rules(console)}
    assert stored["proportional"]["shares"] == {} and stored["proportional"]["tag"] is None
    assert stored["fixed"]["shares"] == {console.team_id: "60", console.other_team_id: "40"}
    assert stored["even"]["shares"] == {console.team_id: "", console.other_team_id: ""}
    rows = page.locator("#rules-table tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("batch")  # position order: 1, 2, 5
    expect(rows.nth(0).locator(".shares")).to_have_text("research 60%, sales 40%")
    expect(rows.nth(1).locator(".shares")).to_have_text("research, sales")
    expect(rows.nth(2).locator(".tag")).to_have_text("any call")
    expect(rows.nth(2).locator(".shares")).to_have_text("every team")
    _shot(page, "allocation-rules")
    even = str(stored["even"]["id"])
    page.locator(f"#rule-{even}").get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "Delete the even rule for tag shared?"
    )
    _shot(page, "allocation-rule-delete")
    assert {r["id"] for r in _rules(console)} >= {even}  # nothing deleted before confirming
    page.get_by_role("button", name="Yes, delete it").click()
    expect(page.locator(f"#rule-{even}")).to_have_count(0)
    expect(page.locator("#rules-table tbody tr")).to_have_count(2)
    assert sorted(str(r["method"]) for r in _rules(console)) == ["fixed", "proportional"]
    actions = [e["action"] for e in console.gw.get("/admin/audit")["entries"]]
    assert actions.count("allocation_rule.created") == 3
    assert actions.count("allocation_rule.deleted") == 1


def test_bad_rules_come_back_beside_the_field(console: Console, page: Page) -> None:
    """The API's checks, each beside its field with what was typed kept (422), nothing
    stored: fixed percentages over 100, a ticked fixed team with no percentage, an even
    rule given percentages, a tag with a space, a negative position."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/allocation-rules")
    assert _add(page, "fixed", research="70", sales="40") == 422
    expect(page.locator("#shares-error")).to_contain_text("add up to 110, more than 100")
    expect(page.get_by_label("Percentage for research")).to_have_value("70")
    expect(page.get_by_label("fixed", exact=True)).to_be_checked()
    _shot(page, "allocation-rules-error")
    page.goto(console.url + "/allocation-rules")
    assert _add(page, "fixed", research="") == 422
    expect(page.locator("#shares-error")).to_contain_text("a percentage in (0, 100] is needed")
    expect(page.get_by_label("research", exact=True)).to_be_checked()
    page.goto(console.url + "/allocation-rules")
    assert _add(page, "even", sales="50") == 422
    expect(page.locator("#shares-error")).to_contain_text("even takes no percentages")
    page.goto(console.url + "/allocation-rules")
    assert _add(page, "proportional", tag="two words") == 422
    expect(page.locator("#tag-error")).to_be_visible()
    expect(page.get_by_label("Tag (blank: any call)")).to_have_value("two words")
    page.goto(console.url + "/allocation-rules")
    assert _add(page, "even", position="-1") == 422
    expect(page.locator("#position-error")).to_contain_text("greater than or equal to 0")
    assert _rules(console) == []


def test_roles_without_allocations_write_are_refused(console: Console, page: Page) -> None:
    """A team admin and a viewer read the rules (no form, no Delete) and are 403 on
    every change, by URL too; a member may not read them (403); another org's rule is
    404 to an org admin and absent from the list; nothing changes without the CSRF
    token."""
    ours = console.gw.post("/admin/allocation-rules", {"org_id": console.org_id, "method": "even"})
    other_org = console.gw.post("/admin/orgs", {"name": "elsewhere"})
    theirs = console.gw.post(
        "/admin/allocation-rules", {"org_id": other_org["id"], "method": "proportional"}
    )
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/allocation-rules")
    expect(page.locator(f"#rule-{ours['id']}")).to_contain_text("even")
    expect(page.get_by_role("button", name="Add rule")).to_have_count(0)
    expect(page.get_by_role("link", name="Delete")).to_have_count(0)
    answer = page.goto(console.url + f"/allocation-rules/{ours['id']}/delete")
    assert answer is not None and answer.status == 403
    for role in ("team_admin", "viewer"):
        with session(console.url, f"{role}@acme.test") as client:
            assert client.get("/allocation-rules").status_code == 200
            assert form(client, "/allocation-rules", {"method": "even"}).status_code == 403
            assert form(client, f"/allocation-rules/{ours['id']}/delete", {}).status_code == 403
    with session(console.url, "member@acme.test") as client:
        assert client.get("/allocation-rules").status_code == 403
    with session(console.url, "org_admin@acme.test") as client:
        listed = client.get("/allocation-rules").text
        assert ours["id"] in listed and theirs["id"] not in listed
        assert client.get(f"/allocation-rules/{theirs['id']}/delete").status_code == 404
        assert form(client, f"/allocation-rules/{theirs['id']}/delete", {}).status_code == 404
        assert client.post("/allocation-rules", data={"method": "even"}).status_code == 403
        bare = client.post(f"/allocation-rules/{ours['id']}/delete", data={})
        assert bare.status_code == 403
    assert [r["id"] for r in _rules(console)] == [ours["id"]]
    assert len(console.gw.get("/admin/allocation-rules", org_id=other_org["id"])) == 1


def test_closing_a_closed_month_is_a_message_on_the_page(console: Console, page: Page) -> None:
    """February closed already: closing it again answers 409 with the statements page
    and the API's reason on it, the month still closed once."""
    console.gw.post("/admin/statements/2026-02/close", {"org_id": console.org_id}, 200)
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/statements")
    page.get_by_label("Month (YYYY-MM)").fill("2026-02")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Close month").click()
    assert answer.value.status == 409
    expect(page.get_by_role("alert")).to_contain_text("month 2026-02 is already closed")
    expect(page.get_by_role("heading", name="Chargeback statements")).to_be_visible()
    expect(page.locator("#month-2026-02 .state")).to_contain_text("closed")
    _shot(page, "statements-already-closed")
    closes = [
        e for e in console.gw.get("/admin/audit")["entries"] if e["action"] == "statement.closed"
    ]
    assert len(closes) == 1


@pytest.mark.parametrize("role", ["org_admin", "team_admin", "finance"])
def test_rules_pages_have_no_serious_axe_violations(
    console: Console, browser: Browser, role: str
) -> None:
    """axe-core on the rules page (with a fixed rule listed) and, for those who may
    delete, the confirmation page."""
    rule = console.gw.post(
        "/admin/allocation-rules",
        {"org_id": console.org_id, "method": "fixed", "tag": "batch",
         "shares": {console.team_id: "25"}},
    )  # fmt: skip
    paths = ["/allocation-rules"]
    if role != "team_admin":
        paths.append(f"/allocation-rules/{rule['id']}/delete")
    for path in paths:
        violations = axe_violations(browser, console.url, f"{role}@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])
