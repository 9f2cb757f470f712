"""Every page asks the admin API's questions: viewers read only, members see their own
calls, objects outside one's teams are 404 — in the browser and over plain HTTP."""

from __future__ import annotations

import re
import time
from typing import Any

import openai
from playwright.sync_api import Page, expect

from tests.console.conftest import Console, form, session, sign_in


def _budget(console: Console, team_id: str, name: str) -> dict[str, Any]:
    return console.gw.post(
        "/admin/budgets",
        {"name": name, "scope_type": "team", "scope_id": team_id, "amount_usd": "10"},
    )


def test_viewer_cannot_reach_an_edit_form_or_post_one(console: Console, page: Page) -> None:
    """A viewer sees the budget but no edit, delete or exception controls; the forms
    answer 403 and a forged POST (with a valid CSRF token) changes nothing."""
    budget = _budget(console, console.team_id, "research monthly")
    sign_in(page, console.url, "viewer@acme.test")
    page.goto(f"{console.url}/usage/budgets")
    expect(page.get_by_role("link", name="research monthly")).to_be_visible()
    expect(page.get_by_role("link", name="New budget")).to_have_count(0)
    page.get_by_role("link", name="research monthly").click()
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    expect(page.get_by_role("button", name="Grant exception")).to_have_count(0)
    for path in ("/usage/budgets/new", f"/usage/budgets/{budget['id']}/edit"):
        response = page.goto(console.url + path)
        assert response is not None and response.status == 403
        expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
        expect(page.locator("form[action$='/edit'], form[action$='/new']")).to_have_count(0)
    with session(console.url, "viewer@acme.test") as client:
        edit = form(client, f"/usage/budgets/{budget['id']}/edit", {"amount_usd": "99"})
        assert edit.status_code == 403
        gone = form(client, f"/usage/budgets/{budget['id']}/delete", {})
        assert gone.status_code == 403
    assert console.gw.get(f"/admin/budgets/{budget['id']}")["amount_usd"] == "10.00"


def test_out_of_scope_budget_is_404_for_a_team_admin(console: Console) -> None:
    """A team admin of research edits research's budget; sales' budget answers 404 on
    every page, as a budget that does not exist does."""
    own = _budget(console, console.team_id, "research")
    other = _budget(console, console.other_team_id, "sales")
    with session(console.url, "team_admin@acme.test") as client:
        listed = client.get("/usage/budgets").text
        assert "research" in listed and ">sales<" not in listed
        assert client.get(f"/usage/budgets/{own['id']}/edit").status_code == 200
        for path in ("", "/edit", "/delete"):
            assert client.get(f"/usage/budgets/{other['id']}{path}").status_code == 404
        assert client.get("/usage/budgets/bud_missing").status_code == 404
        assert client.get(f"/usage?budget={other['id']}").status_code == 404
        changed = form(
            client,
            f"/usage/budgets/{own['id']}/edit",
            {
                "name": "research",
                "amount_usd": "12.5",
                "alert_percentages": "50 80",
                "soft_limit_percent": "80",
                "hard_limit_percent": "100",
                "period": "monthly",
                "timezone": "Europe/Berlin",
                "week_start": "monday",
            },
        )
        assert changed.status_code == 303
        assert form(client, f"/usage/budgets/{other['id']}/delete", {}).status_code == 404
    after = console.gw.get(f"/admin/budgets/{own['id']}")
    assert (after["amount_usd"], after["timezone"]) == ("12.50", "Europe/Berlin")
    assert after["alert_percentages"] == ["50", "80"]
    entries = console.gw.get("/admin/audit", action="budget.updated")["entries"]
    assert any(e["actor_type"] == "console" for e in entries), entries


def test_member_sees_only_their_own_calls(console: Console) -> None:
    """A member's /usage counts their own calls only; another user's are not there."""
    gw = console.gw
    member = console.users["member"]
    other = console.users["viewer"]
    for user, calls in ((member, 1), (other, 2)):
        key = gw.post(
            "/admin/keys",
            {"name": f"k-{user['id']}", "org_id": console.org_id, "user_id": user["id"]},
        )
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
        for _ in range(calls):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    by_user = {r["user"]: r for r in gw.get("/admin/usage", group_by="user")["rows"]}
    with session(console.url, "member@acme.test") as client:
        page = client.get("/usage?group_by=user")
        assert page.status_code == 200
        assert "You see the spend of your own calls" in page.text
        assert member["id"] in page.text and other["id"] not in page.text
        assert f"${by_user[member['id']]['cost_usd']}" in page.text
        assert client.get("/usage/budgets").status_code == 403


def test_no_link_leads_a_role_to_a_page_it_may_not_open(console: Console) -> None:
    """A member's nav has no Budgets (403 for them), and a notification links to its key
    or budget only for who may open that page: a member's budget alert and key notice, and
    finance's "key created", linked to 403 pages. Every link left opens (200)."""
    gw = console.gw
    key = gw.post(
        "/admin/keys",
        {
            "name": "mine",
            "org_id": console.org_id,
            "team_id": console.team_id,
            "user_id": console.users["member"]["id"],
        },
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    _budget(console, console.team_id, "tiny")
    gw.admin.patch(
        f"/admin/budgets/{gw.get('/admin/budgets')[0]['id']}", json={"amount_usd": "0.000001"}
    )
    for role, least in (("member", 2), ("finance", 2)):
        with session(console.url, f"{role}@acme.test") as web:
            notes = ""
            deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
            while time.monotonic() < deadline:  # written off the call path: reloaded
                notes = web.get("/notifications").text
                if notes.count('<tr class="unread"') >= least:
                    break
                time.sleep(0.2)
            assert notes.count('<tr class="unread"') >= least, (role, notes)
            assert ('href="/usage/budgets"' in notes) is (role == "finance")
            links = re.findall(r'<td><a href="(/[^"]*)"', notes)
            for link in links:
                assert web.get(link).status_code == 200, (role, link)
            assert "/keys/" not in notes, role


def test_a_team_admin_creates_a_team_budget_from_the_forms_defaults(
    console: Console, page: Page
) -> None:
    """The form offers a team admin only the scopes they may use (no org or tag budgets)
    and starts at team: picking their team and an amount is enough. It started at org, so
    the same steps ended on a 403 page with what was typed gone."""
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(f"{console.url}/usage/budgets/new")
    scopes = page.get_by_label("Scope", exact=True).locator("option").all_inner_texts()
    assert scopes == ["team", "user", "agent", "key"]
    expect(page.get_by_label("Tag (tag scope)")).to_have_count(0)
    page.get_by_label("Target").select_option(console.team_id)
    page.get_by_label("Amount (USD)").fill("25")
    page.get_by_role("button", name="Create budget").click()
    expect(page.get_by_role("heading", name="Budget team research monthly")).to_be_visible()
    [made] = console.gw.get("/admin/budgets")
    assert (made["scope_type"], made["scope_id"]) == ("team", console.team_id)
